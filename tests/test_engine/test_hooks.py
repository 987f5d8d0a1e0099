"""wavevit_mm.engine.hooks, on a small model trained by mmengine's Runner:
checkpoints that survive a failed write or a full disk, exact resumption,
a stop at the first non-finite loss or weight, a refused checkpoint of
another model, fine-tuning from what fits of one, and one training run
per work dir."""
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

from helpers import ROOT
from wavevit_mm.checkpoint import CheckpointError, load_checkpoint
from wavevit_mm.errors import CheckpointWriteError, TrainingDivergedError
from wavevit_mm.tools import find_resume_checkpoint

# 8 samples, 2 per batch: 4 iterations per epoch
DATA = [dict(inputs=torch.full((4, ), float(i))) for i in range(8)]


class Noisy(BaseModel):
    """A linear model whose loss draws from the Python, NumPy and torch
    generators, so its training depends on their states."""

    def __init__(self, nan_loss_at=None, inf_weight_at=None, outputs=1):
        super().__init__()
        self.linear = nn.Linear(4, outputs)
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
    custom_hooks = [dict(type='CheckpointFitHook'),
                    dict(type='FiniteCheckHook')]
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
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01,
                                          momentum=0.9)),
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
    """The last checkpoint of a 3-epoch run stopped after epoch 1 and
    resumed."""
    work_dir = tmp_path / f'resumed_{seed_hook}'
    train(make_runner(work_dir, max_epochs=1, seed_hook=seed_hook))
    train(make_runner(work_dir, seed_hook=seed_hook, resume=True,
                      load_from=find_resume_checkpoint(str(work_dir))))
    return load_checkpoint(str(work_dir / 'epoch_3.pth'))


def logged(checkpoint, name):
    """The values of ``name`` logged at every iteration (the message hub's
    history, which a resumed run continues)."""
    return checkpoint['message_hub']['log_scalars'][name].data[0]


def test_resumed_run_repeats_the_uninterrupted_run_exactly(tmp_path):
    """The same weights, the same loss and learning rate logged at each of
    the 12 iterations, the same optimizer state."""
    train(make_runner(tmp_path / 'whole'))
    whole = load_checkpoint(str(tmp_path / 'whole' / 'epoch_3.pth'))
    resumed = interrupted_then_resumed(tmp_path, seed_hook=True)
    assert whole['state_dict'].keys() == resumed['state_dict'].keys()
    assert all(torch.equal(whole['state_dict'][k], resumed['state_dict'][k])
               for k in whole['state_dict'])
    for name in ('train/loss', 'train/lr'):
        assert len(logged(whole, name)) == 12
        np.testing.assert_array_equal(logged(resumed, name),
                                      logged(whole, name))
    assert len(set(logged(whole, 'train/loss'))) == 12  # a real history
    # SGD's momentum buffers, one per parameter in the loss
    state = whole['optimizer']['state']
    assert len(state) == 2
    assert resumed['optimizer']['param_groups'] == \
        whole['optimizer']['param_groups']
    assert resumed['optimizer']['state'].keys() == state.keys()
    assert all(torch.equal(resumed['optimizer']['state'][k]['momentum_buffer'],
                           state[k]['momentum_buffer']) for k in state)
    assert resumed['meta']['iter'] == whole['meta']['iter'] == 12


def test_without_reseeding_a_resumed_run_draws_other_numbers(tmp_path):
    """What EpochSeedHook fixes: mmengine seeds once per process."""
    train(make_runner(tmp_path / 'whole', seed_hook=False))
    whole = weights(tmp_path / 'whole' / 'epoch_3.pth')
    resumed = interrupted_then_resumed(tmp_path, seed_hook=False)
    assert not torch.equal(whole['linear.weight'],
                           resumed['state_dict']['linear.weight'])


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
    with pytest.raises(CheckpointWriteError, match='No space left'):
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


class PointerSeen(Hook):
    """After epoch 1 (and its checkpoint), hard-links last_checkpoint:
    the link keeps the file as it was unless it is rewritten in place."""

    priority = 'LOWEST'

    def after_train_epoch(self, runner):
        if runner.epoch == 0:
            os.link(os.path.join(runner.work_dir, 'last_checkpoint'),
                    os.path.join(runner.work_dir, 'pointer_after_epoch_1'))


def test_last_checkpoint_is_replaced_never_rewritten_in_place(tmp_path):
    """mmengine truncates last_checkpoint and writes it again: killed in
    between, the pointer is empty."""
    runner = make_runner(tmp_path)
    runner.register_hook(PointerSeen())
    train(runner)
    assert last_checkpoint(tmp_path) == str(tmp_path / 'epoch_3.pth')
    assert (tmp_path / 'pointer_after_epoch_1').read_text() == str(
        tmp_path / 'epoch_1.pth')


@pytest.mark.parametrize('resume', [True, False], ids=['resume', 'load_from'])
def test_checkpoint_of_another_model_is_refused_before_training(tmp_path,
                                                                resume):
    """mmengine loads with strict=False: it would train a model that is
    partly the file's and partly random. Resuming needs the exact model;
    a start for fine-tuning at least half of its weights (here 1 of 11
    fits)."""
    train(make_runner(tmp_path / 'first', max_epochs=1))
    checkpoint = tmp_path / 'first' / 'epoch_1.pth'
    runner = make_runner(tmp_path / 'second', model=Noisy(outputs=2),
                         resume=resume, load_from=str(checkpoint))
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        train(runner)
    assert str(error.value) == (
        f'{checkpoint} does not fit the model built from the config: 2 have '
        f'another shape (e.g. linear.bias: (1,) in the file, (2,) in the '
        f'model). It was not used. Pass a checkpoint saved by training this '
        f'config.' if resume else
        f'{checkpoint} cannot start this model: only 9% of its weights (1 of '
        f'3 tensors) have a tensor of that name and shape in the file, under '
        f'the 50% that a checkpoint to fine-tune from shares with the model '
        f'(a detector of the same config on other classes differs in its '
        f'class-specific layers only, a few percent): it is a checkpoint of '
        f'another model. Nothing was loaded. To start from backbone weights '
        f'alone, use model.backbone.init_cfg.checkpoint.')
    assert runner.iter == 0 and not list((tmp_path / 'second').glob('*.pth'))
    after = runner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class Classifier(BaseModel):
    """A backbone and a head for ``classes`` classes, as a detector."""

    def __init__(self, classes, width=8):
        super().__init__()
        self.backbone = nn.Linear(4, width)
        self.head = nn.Linear(width, classes)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.head(self.backbone(inputs))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class WeightsAtStart(Hook):
    """The model's weights when training starts, after loading."""

    def before_train(self, runner):
        self.weights = {k: v.clone()
                        for k, v in runner.model.state_dict().items()}


def test_load_from_fine_tunes_what_fits_and_reports_the_rest(tmp_path,
                                                            capsys):
    """A 3-class model's checkpoint starts a 2-class one: the backbone is
    loaded, the head keeps its initial weights, one block says so."""
    train(make_runner(tmp_path / 'first', max_epochs=1,
                      model=Classifier(classes=3)))
    checkpoint = tmp_path / 'first' / 'epoch_1.pth'
    torch.manual_seed(1)
    model = Classifier(classes=2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    runner = make_runner(tmp_path / 'second', max_epochs=1, model=model,
                         load_from=str(checkpoint))
    start = WeightsAtStart()
    runner.register_hook(start)
    train(runner)
    saved = weights(checkpoint)
    for key in ('backbone.weight', 'backbone.bias'):
        assert torch.equal(start.weights[key], saved[key])
    for key in ('head.weight', 'head.bias'):
        assert torch.equal(start.weights[key], initial[key])
    output = capsys.readouterr().out
    assert (
        f"load_from {checkpoint}: 2 of the model's 4 tensors loaded (69.0% "
        f"of its weights); not loaded (the model keeps the values its "
        f"config initialised; tensors in the file only are ignored):\n"
        f"  head: 2 tensors of another shape (weight: (3, 8) in the file, "
        f"(2, 8) in the model)\n") in output
    assert 'do not match exactly' not in output  # mmengine's own warning


def test_load_from_with_another_backbone_is_refused(tmp_path):
    train(make_runner(tmp_path / 'first', max_epochs=1,
                      model=Classifier(classes=2)))
    checkpoint = tmp_path / 'first' / 'epoch_1.pth'
    runner = make_runner(tmp_path / 'second', max_epochs=1,
                         model=Classifier(classes=2, width=6),
                         load_from=str(checkpoint))
    with pytest.raises(CheckpointError) as error:
        train(runner)
    assert str(error.value).startswith(
        f'{checkpoint} does not fit the backbone built from the config: 2 '
        f'have another shape (e.g. bias: (8,) in the file, (6,) in the '
        f'backbone).')
    assert 'Nothing was loaded' in str(error.value)
    assert runner.iter == 0


# ------------------------------------------- real processes: locks, limits

RUN = textwrap.dedent('''
    """Train a 128x128 linear layer (about 66 kB per checkpoint) for 2
    epochs of 2 iterations, validating after each with a score that rises,
    keeping 1 checkpoint and the best one. MODE: 'train'; 'hold' stalls in
    iteration 1 until killed; 'full_periodic' / 'full_best' limit the size
    of files this process writes to 32 KiB before epoch 2's checkpoint /
    before epoch 2's best checkpoint is written."""
    import resource, signal, sys, time
    import torch
    from mmengine.evaluator import BaseMetric, Evaluator
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    import wavevit_mm  # registers the hooks
    from wavevit_mm.errors import report_errors

    work_dir, mode = sys.argv[1:]

    class Line(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(128, 128)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.linear(inputs)
            return dict(loss=out.pow(2).mean()) if mode == 'loss' else [1]

    class RisingScore(BaseMetric):
        calls = 0

        def process(self, data_batch, data_samples):
            self.results.append(0)

        def compute_metrics(self, results):
            RisingScore.calls += 1
            return dict(score=float(RisingScore.calls))

    class Stage(Hook):
        priority = 'LOWEST'  # after the checkpoint hook

        def limit(self):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            if mode == 'hold':
                print('holding the work dir', flush=True)
                time.sleep(600)

        def before_train_epoch(self, runner):
            if mode == 'full_periodic' and runner.epoch == 1:
                self.limit()

        def after_train_epoch(self, runner):
            if mode == 'full_best' and runner.epoch == 1:
                self.limit()

    data = dict(dataset=[dict(inputs=torch.randn(128)) for _ in range(4)],
                sampler=dict(type='DefaultSampler', shuffle=False),
                collate_fn=dict(type='default_collate'), batch_size=2)
    torch.manual_seed(0)
    with report_errors('run.py'):
        runner = Runner(
            model=Line(), work_dir=work_dir, train_dataloader=data,
            train_cfg=dict(by_epoch=True, max_epochs=2), val_dataloader=data,
            val_cfg=dict(), val_evaluator=Evaluator(RisingScore()),
            optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
            default_hooks=dict(checkpoint=dict(
                type='AtomicCheckpointHook', interval=1, max_keep_ckpts=1,
                save_best='score', rule='greater')),
            custom_hooks=[dict(type='WorkDirLockHook'), Stage()])
        runner.train()
''')


def run_script(tmp_path, work_dir, mode, **kwargs):
    script = tmp_path / 'run.py'
    script.write_text(RUN)
    args = [sys.executable, str(script), str(work_dir), mode]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore',
               PYTHONUNBUFFERED='1', PYTHONPATH=ROOT)  # this checkout
    if kwargs.pop('background', False):
        return subprocess.Popen(args, env=env, cwd=ROOT, text=True,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    return subprocess.run(args, env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=300)


def error_paragraph(result):
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    return result.stderr.strip().split('\n')[-1]


@pytest.mark.slow
def test_second_run_on_a_work_dir_is_refused_until_the_first_dies(tmp_path):
    work_dir = tmp_path / 'work'
    first = run_script(tmp_path, work_dir, 'hold', background=True)
    try:
        for line in first.stdout:
            if 'holding the work dir' in line:
                break
        assert first.poll() is None
        message = error_paragraph(run_script(tmp_path, work_dir, 'train'))
        assert re.fullmatch(
            rf'run\.py: error: {work_dir} is in use by another training run '
            rf'\(pid {first.pid} on host \S+, running since '
            rf'\d{{4}}-\d\d-\d\dT[\d:]{{8}}[+-][\d:]+; lock file '
            rf'{work_dir}/train\.lock\)\. Two runs in one work dir would '
            rf'overwrite each other\'s checkpoints: wait for it to end, stop '
            rf'it, or train into another --work-dir\.', message), message
        # the refused run wrote no checkpoint
        assert not list(work_dir.glob('*.pth'))
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL

    result = run_script(tmp_path, work_dir, 'train')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'ended without releasing it; taking it over' in result.stdout
    assert f'(pid {first.pid} on host' in result.stdout
    assert sorted(p.name for p in work_dir.glob('*.pth')) == [
        'best_score_epoch_2.pth', 'epoch_2.pth']
    assert (work_dir / 'train.lock').read_text() == ''  # released


@pytest.mark.slow
@pytest.mark.parametrize('mode,failed,kept', [
    ('full_periodic', 'epoch_2.pth', ['best_score_epoch_1.pth',
                                      'epoch_1.pth']),
    ('full_best', 'best_score_epoch_2.pth', ['best_score_epoch_1.pth',
                                             'epoch_2.pth']),
], ids=['periodic', 'best'])
def test_full_disk_keeps_the_previous_checkpoints(tmp_path, mode, failed,
                                                  kept):
    """A real refused write: RLIMIT_FSIZE (32 KiB) makes writing a 66 kB
    checkpoint fail with EFBIG, as a full disk fails with ENOSPC."""
    work_dir = tmp_path / 'work'
    message = error_paragraph(run_script(tmp_path, work_dir, mode))
    match = re.fullmatch(
        rf'run\.py: error: Could not write {work_dir}/{failed} \((\d+) '
        rf'bytes\) into {work_dir}: File too large \[EFBIG\], \d+ bytes '
        rf'free there\. The files there are as they were \(nothing '
        rf'replaced or deleted, no partial file left\): .*', message)
    assert match, message
    # the bytes needed: about what the checkpoint before took
    written = os.path.getsize(work_dir / kept[0])
    assert abs(int(match[1]) - written) < 0.02 * written
    assert not [n for n in os.listdir(work_dir) if n.startswith('.')]
    assert sorted(p.name for p in work_dir.glob('*.pth')) == kept
    assert last_checkpoint(work_dir) == str(work_dir / kept[1])
    for name in kept:
        assert weights(work_dir / name)['linear.weight'].shape == (128, 128)
