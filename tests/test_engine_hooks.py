"""wavevit_mm.engine.hooks, on a small model trained by mmengine's Runner:
checkpoints that survive a failed write, exact resumption, and a stop at
the first non-finite loss or weight."""
import os
import random
import uuid

import numpy as np
import pytest
import torch
from mmengine.fileio import LocalBackend
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

from wavevit_mm.apis import find_resume_checkpoint
from wavevit_mm.checkpoint import load_checkpoint
from wavevit_mm.errors import TrainingDivergedError

# 8 samples, 2 per batch: 4 iterations per epoch
DATA = [dict(inputs=torch.full((4, ), float(i))) for i in range(8)]


class Noisy(BaseModel):
    """A linear model whose loss draws from the Python, NumPy and torch
    generators, so its training depends on their states."""

    def __init__(self, nan_loss_at=None, inf_weight_at=None):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.spare = nn.Parameter(torch.zeros(1))  # not in the loss
        self.nan_loss_at, self.inf_weight_at = nan_loss_at, inf_weight_at
        self.calls = 0

    def forward(self, inputs, data_samples=None, mode='tensor'):
        if mode != 'loss':
            return self.linear(inputs)
        self.calls += 1
        noise = torch.rand(()) + np.random.rand() + random.random()
        loss = (self.linear(inputs) - noise).pow(2).mean()
        if self.calls == self.nan_loss_at:
            loss = loss * float('nan')
        if self.calls == self.inf_weight_at:
            with torch.no_grad():
                self.spare.fill_(float('inf'))
        return dict(loss=loss)


def make_runner(work_dir, max_epochs=3, seed_hook=True, model=None,
                max_keep_ckpts=-1, **kwargs):
    custom_hooks = [dict(type='FiniteCheckHook')]
    if seed_hook:
        custom_hooks.append(dict(type='EpochSeedHook'))
    if model is None:
        torch.manual_seed(0)  # the Runner seeds only after this
        model = Noisy()
    return Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f'hooks_{uuid.uuid4().hex[:8]}',
        train_dataloader=dict(
            dataset=DATA, batch_size=2, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(
            type='AtomicCheckpointHook', interval=1,
            max_keep_ckpts=max_keep_ckpts)),
        custom_hooks=custom_hooks,
        randomness=dict(seed=0),
        **kwargs)


def train(runner):
    return runner.train()


def weights(path):
    return load_checkpoint(str(path))['state_dict']


def last_checkpoint(work_dir):
    return (work_dir / 'last_checkpoint').read_text()


def interrupted_then_resumed(tmp_path, seed_hook):
    """Weights of a 3-epoch run stopped after epoch 1 and resumed."""
    work_dir = tmp_path / f'resumed_{seed_hook}'
    train(make_runner(work_dir, max_epochs=1, seed_hook=seed_hook))
    train(make_runner(work_dir, seed_hook=seed_hook, resume=True,
                      load_from=find_resume_checkpoint(str(work_dir))))
    return weights(work_dir / 'epoch_3.pth')


def test_resumed_run_repeats_the_uninterrupted_run_exactly(tmp_path):
    train(make_runner(tmp_path / 'whole'))
    whole = weights(tmp_path / 'whole' / 'epoch_3.pth')
    resumed = interrupted_then_resumed(tmp_path, seed_hook=True)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_without_reseeding_a_resumed_run_draws_other_numbers(tmp_path):
    """What EpochSeedHook fixes: mmengine seeds once per process."""
    train(make_runner(tmp_path / 'whole', seed_hook=False))
    whole = weights(tmp_path / 'whole' / 'epoch_3.pth')
    resumed = interrupted_then_resumed(tmp_path, seed_hook=False)
    assert not torch.equal(whole['linear.weight'], resumed['linear.weight'])


def test_keeps_max_keep_ckpts_newest_and_points_to_the_last(tmp_path):
    train(make_runner(tmp_path, max_keep_ckpts=2))
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == [
        'epoch_2.pth', 'epoch_3.pth']
    assert last_checkpoint(tmp_path) == str(tmp_path / 'epoch_3.pth')
    assert not list(tmp_path.glob('.*.tmp'))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The disk fills up while epoch 2 is written, with max_keep_ckpts=1:
    mmengine's hook would already have deleted epoch 1."""
    put = LocalBackend.put
    writes = []

    def put_half_then_fail(self, obj, filepath):
        writes.append(filepath)
        if len(writes) == 2:
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(28, 'No space left on device')
        put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', put_half_then_fail)
    with pytest.raises(OSError, match='No space left'):
        train(make_runner(tmp_path, max_keep_ckpts=1))
    monkeypatch.setattr(LocalBackend, 'put', put)
    assert [p.name for p in tmp_path.glob('*.pth')] == ['epoch_1.pth']
    assert last_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')
    assert find_resume_checkpoint(str(tmp_path)) == str(
        tmp_path / 'epoch_1.pth')
    weights(tmp_path / 'epoch_1.pth')  # reads back

    train(make_runner(tmp_path, max_keep_ckpts=1, resume=True,
                      load_from=str(tmp_path / 'epoch_1.pth')))
    assert [p.name for p in tmp_path.glob('*.pth')] == ['epoch_3.pth']
    assert not list(tmp_path.glob('.*.tmp'))  # the half file is gone


def test_non_finite_loss_stops_at_its_iteration(tmp_path):
    runner = make_runner(tmp_path, model=Noisy(nan_loss_at=6))
    with pytest.raises(TrainingDivergedError) as error:
        train(runner)
    message = str(error.value)
    assert message.startswith('Training stopped at iteration 6 (epoch 2, '
                              'batch 2): the loss is not finite (loss=nan)')
    assert f'The last checkpoint, {tmp_path / "epoch_1.pth"}, is from ' \
        f'before' in message
    assert [p.name for p in tmp_path.glob('*.pth')] == ['epoch_1.pth']


def test_non_finite_weights_are_never_saved(tmp_path):
    runner = make_runner(tmp_path, model=Noisy(inf_weight_at=5))
    with pytest.raises(TrainingDivergedError,
                       match=r'at the checkpoint after iteration 8: 1 '
                       r'weights are not finite \(e\.g\. spare\), so they '
                       r'were not saved'):
        train(runner)
    assert [p.name for p in tmp_path.glob('*.pth')] == ['epoch_1.pth']
    assert last_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')
    assert not list(tmp_path.glob('.*.tmp'))
    assert os.path.getsize(tmp_path / 'epoch_1.pth') > 0
