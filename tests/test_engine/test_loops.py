"""wavevit_mm.engine.loops: a resumed iteration-based run starts its data
where the checkpoint left off, loads no skipped batch, and ends with the
weights of the uninterrupted run; checked against mmengine's own sampler,
with a small model on mmengine's Runner, and with the real tools on the
toy UperNet killed mid-run."""
import itertools
import random
import re
import sys
import uuid

import numpy as np
import pytest
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

from toy_runs import SEG_CONFIG, kill_when_logged, run_process, tool
from wavevit_mm.checkpoint import load_checkpoint
from wavevit_mm.engine import ResumableInfiniteSampler
from wavevit_mm.errors import ConfigError
from wavevit_mm.tools import find_resume_checkpoint

# ---------------------------------------------------------------- sampler


def mmengine_stream(size, shuffle, seed, length):
    """The first ``length`` indices of mmengine's InfiniteSampler in a
    single process: the stream that the ranks of a distributed run are
    dealt in turn."""
    sampler = InfiniteSampler(list(range(size)), shuffle=shuffle, seed=seed)
    return list(itertools.islice(iter(sampler), length))


@pytest.mark.parametrize('world_size', [1, 2])
@pytest.mark.parametrize('shuffle', [True, False])
@pytest.mark.parametrize('start', [0, 3, 7, 8, 13, 40])
def test_sampler_from_a_start_yields_the_rest_of_mmengines_stream(
        world_size, shuffle, start):
    """7 samples, so starts fall inside a pass as well as on its end."""
    size, seed, length = 7, 3, 30
    stream = mmengine_stream(size, shuffle, seed,
                             (start + length) * world_size)
    for rank in range(world_size):
        sampler = ResumableInfiniteSampler(list(range(size)), shuffle, seed)
        sampler.rank, sampler.world_size = rank, world_size  # as on a rank
        sampler.set_start(start)
        expected = stream[rank::world_size][start:start + length]
        assert list(itertools.islice(iter(sampler), length)) == expected


def test_sampler_starts_far_into_its_stream():
    """The passes before the start are shuffled, not loaded."""
    size, start = 5, 200_000  # 40k passes
    stream = mmengine_stream(size, True, 0, start + 12)
    sampler = ResumableInfiniteSampler(list(range(size)), seed=0)
    sampler.set_start(start)
    assert list(itertools.islice(iter(sampler), 12)) == stream[start:]


def test_sampler_iterates_from_its_start_each_time():
    sampler = ResumableInfiniteSampler(list(range(5)), seed=1)
    first = list(itertools.islice(iter(sampler), 6))
    assert list(itertools.islice(iter(sampler), 6)) == first
    sampler.set_start(2)
    assert list(itertools.islice(iter(sampler), 4)) == first[2:]


# ------------------------------------------------- loop on a small Runner

class Augmented(torch.utils.data.Dataset):
    """8 samples; loading one draws from the Python, NumPy and torch
    generators, as a random augmentation does, and is recorded."""

    def __init__(self):
        self.loaded = []

    def __len__(self):
        return 8

    def __getitem__(self, index):
        self.loaded.append(index)
        noise = random.random() + np.random.rand() + torch.rand(()).item()
        return dict(inputs=torch.full((4, ), index + noise))


class Dropout(BaseModel):
    """A linear model with dropout: its training depends on the torch
    generator as well as on the data."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(nn.functional.dropout(inputs, 0.5, self.training))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


def make_runner(work_dir, max_iters, exact=True, seed=0, loader=None,
                **kwargs):
    """7-iteration runs save iter_3.pth and iter_6.pth; ``loader``
    overrides settings of the training data loader."""
    loop, sampler = ('ResumableIterBasedTrainLoop',
                     'ResumableInfiniteSampler') if exact else (
                         'IterBasedTrainLoop', 'InfiniteSampler')
    train_dataloader = dict(
        dataset=Augmented(), batch_size=3, num_workers=0,
        sampler=dict(type=sampler, shuffle=True),
        collate_fn=dict(type='default_collate'))
    train_dataloader.update(loader or {})
    torch.manual_seed(0)  # the Runner seeds only after the model is built
    return Runner(
        model=Dropout(),
        work_dir=str(work_dir),
        experiment_name=f'loops_{uuid.uuid4().hex[:8]}',
        train_dataloader=train_dataloader,
        train_cfg=dict(type=loop, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=dict(
            type='CheckpointHook', by_epoch=False, interval=3)),
        randomness=dict(seed=seed),
        **kwargs)


def weights(path):
    return load_checkpoint(str(path))['state_dict']


def stopped_then_resumed(work_dir, exact=True, resumed_seed=0):
    """A 7-iteration run stopped after iteration 3 and resumed; the
    resumed runner (its dataset records what was loaded)."""
    make_runner(work_dir, 3, exact).train()
    runner = make_runner(work_dir, 7, exact, seed=resumed_seed, resume=True,
                         load_from=find_resume_checkpoint(str(work_dir)))
    runner.train()
    return runner


def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    """Resumed at iteration 3 (sample 9 of 8-sample passes), the run loads
    the batches of iterations 4-7 only, the same ones as the uninterrupted
    run, and ends bit for bit where it ends."""
    whole = make_runner(tmp_path / 'whole', 7)
    whole.train()
    resumed = stopped_then_resumed(tmp_path / 'resumed')
    assert resumed.train_dataloader.dataset.loaded == \
        whole.train_dataloader.dataset.loaded[9:]
    assert len(resumed.train_dataloader.dataset.loaded) == 4 * 3
    expected = weights(tmp_path / 'whole' / 'iter_7.pth')
    got = weights(tmp_path / 'resumed' / 'iter_7.pth')
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_follows_the_seed_of_the_checkpoint(tmp_path):
    """Resumed by a runner with another seed (e.g. none in the config, so
    a random one), the run goes on with the seed the checkpoint stores."""
    make_runner(tmp_path / 'whole', 7).train()
    stopped_then_resumed(tmp_path / 'resumed', resumed_seed=12345)
    expected = weights(tmp_path / 'whole' / 'iter_7.pth')
    got = weights(tmp_path / 'resumed' / 'iter_7.pth')
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_mmengines_loop_replays_the_skipped_batches_and_draws_others(
        tmp_path):
    """What the loop fixes: IterBasedTrainLoop loads the 3 batches done
    again, and its augmentations and dropout masks differ afterwards."""
    make_runner(tmp_path / 'whole', 7, exact=False).train()
    resumed = stopped_then_resumed(tmp_path / 'resumed', exact=False)
    assert len(resumed.train_dataloader.dataset.loaded) == 7 * 3
    expected = weights(tmp_path / 'whole' / 'iter_7.pth')
    got = weights(tmp_path / 'resumed' / 'iter_7.pth')
    assert not torch.equal(expected['linear.weight'], got['linear.weight'])


def test_loop_with_another_sampler_is_a_config_error(tmp_path):
    runner = make_runner(tmp_path, 3,
                         loader=dict(sampler=dict(type='InfiniteSampler')))
    with pytest.raises(ConfigError, match=(
            r"ResumableIterBasedTrainLoop' needs train_dataloader.sampler="
            r"dict\(type='ResumableInfiniteSampler'\).*got the sampler "
            r"InfiniteSampler\.")):
        runner.train()


def test_resume_with_workers_ends_with_the_uninterrupted_weights(tmp_path):
    """Persistent workers, as in the shipped configs: every sample is
    augmented from its own seed in whichever process loads it, so the run
    resumed with 2 workers ends where the uninterrupted run without
    workers ends."""
    workers = dict(num_workers=2, persistent_workers=True)
    make_runner(tmp_path / 'whole', 7).train()
    make_runner(tmp_path / 'resumed', 3, loader=workers).train()
    make_runner(tmp_path / 'resumed', 7, loader=workers, resume=True,
                load_from=find_resume_checkpoint(str(tmp_path / 'resumed'))
                ).train()
    expected = weights(tmp_path / 'whole' / 'iter_7.pth')
    got = weights(tmp_path / 'resumed' / 'iter_7.pth')
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ------------------------------------- the toy UperNet, killed and resumed

# 8 training images, 4 a batch: a pass every 2 iterations. 8 iterations,
# a checkpoint every 3 (killed after iteration 5, resumed from iteration
# 3, in the middle of a pass), validation at the end.
SCHEDULE = ['train_cfg.max_iters=8', 'train_cfg.val_interval=8',
            'param_scheduler.0.end=2', 'param_scheduler.1.begin=2',
            'param_scheduler.1.end=8', 'default_hooks.logger.interval=1',
            'default_hooks.checkpoint.interval=3']


def train_command(work_dir, *args, options=('randomness.seed=7', )):
    return [sys.executable, tool('train.py'), SEG_CONFIG,
            '--work-dir', str(work_dir), *args,
            '--cfg-options', *SCHEDULE, *options]


def train(work_dir, cwd, *args, options=('randomness.seed=7', )):
    result = run_process(train_command(work_dir, *args, options=options),
                         cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def iteration_losses(log):
    return re.findall(r'Iter\(train\) \[(\d)/8\].*? loss: ([\d.]+)', log)


@pytest.mark.slow
def test_killed_toy_upernet_resumes_to_the_uninterrupted_weights(
        toy_workspace, tmp_path):
    """Both runs seeded with 7; the resumed one is given no seed (none in
    the config, so a random one) and takes the one stored in the
    checkpoint. It also loads its data with 2 persistent workers (as the
    shipped configs do, with 4) where the others load in their own
    process."""
    reference_log = train(tmp_path / 'uninterrupted', toy_workspace)
    work_dir = tmp_path / 'killed'
    kill_when_logged(train_command(work_dir), toy_workspace,
                     'Iter(train) [5/8]')
    assert (work_dir / 'last_checkpoint').read_text() == str(
        work_dir / 'iter_3.pth')

    log = train(work_dir, toy_workspace, '--resume', options=(
        'train_dataloader.num_workers=2',
        'train_dataloader.persistent_workers=True'))
    assert 'resumed epoch: 0, iter: 3' in log
    assert 'The training data continues at iteration 3 (sample 12' in log
    assert 'Advance dataloader' not in log  # mmengine's replay
    resumed = weights(work_dir / 'iter_8.pth')
    reference = weights(tmp_path / 'uninterrupted' / 'iter_8.pth')
    assert resumed.keys() == reference.keys()
    largest = max((resumed[k].double() - reference[k].double()).abs().max()
                  for k in reference if reference[k].is_floating_point())
    assert largest == 0.0, f'weights differ by up to {largest}'
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert iteration_losses(log) == iteration_losses(reference_log)[3:]
    assert len(iteration_losses(log)) == 5
    assert re.findall(r'mIoU: ([\d.]+)', log) == \
        re.findall(r'mIoU: ([\d.]+)', reference_log)
