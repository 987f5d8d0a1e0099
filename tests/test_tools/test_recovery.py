"""Training that is interrupted or goes wrong, with the real tools in real
processes on the toy COCO set: a run killed with SIGKILL resumes to the
result of an uninterrupted one, a process dying while it writes a
checkpoint leaves one that --resume can use, a dead rank ends a
distributed job, a non-finite loss stops the run, and mmengine's own
checkpoints load with weights-only unpickling."""
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from helpers import globals_torch_refuses
from toy_runs import DET_CONFIG, ENV, kill_when_logged, run_process, tool
from wavevit_mm.checkpoint import CheckpointError, load_checkpoint
from wavevit_mm.tools import find_resume_checkpoint

pytestmark = pytest.mark.slow

# 8 training images, 2 per batch: 4 iterations per epoch, 2 epochs, a
# checkpoint after each epoch, validation (4 images) at the end
SCHEDULE = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=2',
            'param_scheduler.0.end=4', 'train_dataloader.batch_size=2',
            'default_hooks.logger.interval=1',
            'default_hooks.checkpoint.interval=1']


def train_command(work_dir, *args, options=()):
    return [sys.executable, tool('train.py'), DET_CONFIG,
            '--work-dir', str(work_dir), *args,
            '--cfg-options', *SCHEDULE, *options]


def train(work_dir, cwd, *args, options=()):
    result = run_process(train_command(work_dir, *args, options=options),
                         cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def val_metrics(log):
    """The metrics of the last validation, as logged."""
    line = re.findall(r'Epoch\(val\).*', log)[-1]
    return dict(re.findall(r'(coco/\w+): (-?[\d.]+)', line))


def epoch_losses(log, epoch):
    return re.findall(rf'Epoch\(train\) \[{epoch}\]\[(\d)/4\].*? '
                      rf'loss: ([\d.]+)', log)


def state_dict(path):
    return load_checkpoint(str(path))['state_dict']


@pytest.fixture(scope='module')
def uninterrupted(toy_workspace, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('uninterrupted')
    return work_dir, train(work_dir, toy_workspace)


def test_killed_run_resumes_to_the_uninterrupted_result(
        toy_workspace, uninterrupted, tmp_path):
    work_dir = tmp_path / 'killed'
    # killed as epoch 2 is half done
    kill_when_logged(train_command(work_dir), toy_workspace,
                     'Epoch(train) [2][2/4]')
    assert not (work_dir / 'epoch_2.pth').exists()
    assert (work_dir / 'last_checkpoint').read_text() == str(
        work_dir / 'epoch_1.pth')

    log = train(work_dir, toy_workspace, '--resume')
    assert 'resumed epoch: 1, iter: 4' in log
    assert 'Epoch(train) [1]' not in log
    reference_dir, reference_log = uninterrupted
    # the same losses, metrics and weights, to the last bit
    assert epoch_losses(log, 2) == epoch_losses(reference_log, 2)
    assert len(epoch_losses(log, 2)) == 4
    assert val_metrics(log) == val_metrics(reference_log)
    assert len(val_metrics(log)) == 12
    resumed = state_dict(work_dir / 'epoch_2.pth')
    reference = state_dict(reference_dir / 'epoch_2.pth')
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_load_from_reads_an_mmengine_checkpoint(toy_workspace,
                                                uninterrupted, tmp_path):
    """load_from goes through torch.load(weights_only=True), which refuses
    the message hub's HistoryBuffer unless it is allow-listed. tools/test.py
    loads the last checkpoint of the uninterrupted run through load_from:
    every weight (no key left out) and the metrics that run's last
    validation logged on the same images, to the last digit."""
    checkpoint = uninterrupted[0] / 'epoch_2.pth'
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in \
        globals_torch_refuses(str(checkpoint))
    result = run_process([sys.executable, tool('test.py'), DET_CONFIG,
                          checkpoint, '--work-dir', tmp_path], toy_workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout
    assert f'Load checkpoint from {checkpoint}' in log
    assert 'do not match exactly' not in log + result.stderr
    line = re.findall(r'Epoch\(test\).*', log)[-1]
    metrics = dict(re.findall(r'(coco/\w+): (-?[\d.]+)', line))
    assert len(metrics) == 12
    assert metrics == val_metrics(uninterrupted[1])


RETINANET_CONFIG = DET_CONFIG.replace('mask_rcnn', 'retinanet')


@pytest.mark.parametrize('how,config,options,refusal', [
    ('--resume', DET_CONFIG, ['model.roi_head.bbox_head.num_classes=4'],
     ('does not fit the model built from the config: ',
      'It was not used. Pass a checkpoint saved by training this config.')),
    ('load_from', RETINANET_CONFIG, ['model.backbone.arch.depths=[1,1,1,1]'],
     ('does not fit the backbone built from the config: ',
      'Nothing was loaded: fine-tuning starts from a checkpoint with the '
      'same backbone.')),
], ids=['resume_other_number_of_classes', 'load_from_other_backbone'])
def test_checkpoint_of_another_model_stops_before_training(
        toy_workspace, uninterrupted, tmp_path, how, config, options,
        refusal):
    """mmengine loads with strict=False and would train a model partly
    loaded, partly random; the run stops with one paragraph instead:
    --resume needs the model the checkpoint was saved from, load_from at
    least its backbone (fine-tuning, tests/test_tools/test_workflows.py)."""
    checkpoint = uninterrupted[0] / 'epoch_2.pth'
    args = ['--resume', str(checkpoint)] if how == '--resume' else []
    options = options + ([f'load_from={checkpoint}']
                         if how == 'load_from' else [])
    command = train_command(tmp_path, *args, options=options)
    command[2] = config
    result = run_process(command, toy_workspace)
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    message = result.stderr.strip().split('\n')[-1]
    assert message.startswith(f'train.py: error: {checkpoint} {refusal[0]}')
    assert message.endswith(refusal[1])
    assert 'Epoch(train)' not in result.stdout
    assert not list(tmp_path.glob('*.pth'))


DIES_WHILE_SAVING = textwrap.dedent('''
    """Train a small model for 3 epochs, keeping one checkpoint; with
    'die', the process kills itself halfway through writing epoch 2."""
    import os, signal, sys
    import torch
    from mmengine.fileio import LocalBackend
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from wavevit_mm.tools import find_resume_checkpoint

    hook, work_dir, mode = sys.argv[1:]
    put, writes = LocalBackend.put, []

    def put_half_then_die(self, obj, filepath):
        writes.append(filepath)
        if len(writes) == 2:
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        put(self, obj, filepath)

    if mode == 'die':
        LocalBackend.put = put_half_then_die

    class Line(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, 64)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return dict(loss=self.linear(inputs).pow(2).mean())

    resume_from = find_resume_checkpoint(work_dir) if mode == 'resume' \\
        else None
    runner = Runner(
        model=Line(), work_dir=work_dir,
        train_dataloader=dict(
            dataset=[dict(inputs=torch.randn(64)) for _ in range(4)],
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'), batch_size=2),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type=hook, interval=1,
                                           max_keep_ckpts=1)),
        resume=resume_from is not None, load_from=resume_from)
    runner.train()
''')


@pytest.mark.parametrize('hook', ['AtomicCheckpointHook', 'CheckpointHook'])
def test_death_while_writing_a_checkpoint(tmp_path, hook):
    """With mmengine's CheckpointHook the work dir is left with a truncated
    epoch_2.pth and epoch_1.pth already deleted (max_keep_ckpts=1): --resume
    refuses the truncated file. With AtomicCheckpointHook epoch_1.pth is
    intact and --resume continues from it."""
    script = tmp_path / 'dies_while_saving.py'
    script.write_text(DIES_WHILE_SAVING)
    work_dir = tmp_path / 'work'

    def run(mode):
        return subprocess.run(
            [sys.executable, str(script), hook, str(work_dir), mode],
            env=ENV, capture_output=True, text=True, timeout=300)

    assert run('die').returncode == -signal.SIGKILL
    names = sorted(os.listdir(work_dir))
    if hook == 'CheckpointHook':
        assert 'epoch_1.pth' not in names and 'epoch_2.pth' in names
        with pytest.raises(CheckpointError,
                           match='epoch_2.pth could not be read'):
            find_resume_checkpoint(str(work_dir))
        return
    # the half-written file is a hidden temporary one beside it
    assert 'epoch_2.pth' not in names
    assert any(re.fullmatch(r'\.epoch_2\.pth\.\w+\.tmp', n) for n in names)
    assert (work_dir / 'last_checkpoint').read_text() == str(
        work_dir / 'epoch_1.pth')
    assert state_dict(work_dir / 'epoch_1.pth')
    result = run('resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'resumed epoch: 1, iter: 2' in result.stdout
    assert [n for n in os.listdir(work_dir) if 'pth' in n] == ['epoch_3.pth']


KILLS_ITS_RANK = textwrap.dedent('''
    import os
    import signal

    from mmengine.dist import get_rank
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS


    @HOOKS.register_module()
    class KillRankHook(Hook):
        """SIGKILL the process of one rank after an iteration."""

        def __init__(self, rank, iteration):
            self.rank, self.iteration = rank, iteration

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            if get_rank() == self.rank and runner.iter + 1 == self.iteration:
                os.kill(os.getpid(), signal.SIGKILL)
''')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_dead_rank_ends_the_distributed_job(toy_workspace, tmp_path):
    (tmp_path / 'kill_rank_hook.py').write_text(KILLS_ITS_RANK)
    config = tmp_path / 'dies.py'
    config.write_text(textwrap.dedent(f'''
        _base_ = ['{DET_CONFIG}']
        custom_imports = dict(imports=['wavevit_mm', 'kill_rank_hook'],
                              allow_failed_imports=False)
        custom_hooks = [dict(type='KillRankHook', rank=1, iteration=3)]
        '''))
    env = dict(ENV, PORT=str(free_port()), PYTHONPATH=os.pathsep.join(
        [str(tmp_path), ENV.get('PYTHONPATH', '')]))
    start = time.monotonic()
    process = subprocess.Popen(
        ['bash', tool('dist_train.sh'), str(config), '2', '--work-dir',
         str(tmp_path / 'work'), '--cfg-options', 'train_cfg.max_epochs=20',
         'train_dataloader.batch_size=2'],
        cwd=toy_workspace, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError('the job hangs after a rank died')
    elapsed = time.monotonic() - start
    assert process.returncode != 0
    assert elapsed < 120
    # torchrun's summary names the killed rank and how it ended (as the
    # first observed failure, or, where the other rank's lost connection
    # is observed first, as torch 2.1 may, among the failures)
    summary = output[output.rindex('train.py FAILED'):]
    assert re.search(r'rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: -9 .*?'
                     r'\(SIGKILL\)', summary, re.S), output[-3000:]
    assert 'Root Cause (first observed failure)' in summary


@pytest.mark.parametrize('lr,stopped_by', [
    # the weights overflow within one step: the loss of the next is NaN
    ('1e6', r'Training stopped at iteration (\d+) \(epoch 1, batch \d\): '
            r'the loss is not finite \(loss=nan'),
    # the weights overflow while the loss that led there is still finite:
    # caught when they are about to be saved
    ('2e2', r'Training stopped at the checkpoint after iteration (\d+): '
            r'\d+ weights are not finite'),
], ids=['nan_loss', 'inf_weights'])
def test_learning_rate_far_too_high_stops_the_run(toy_workspace, tmp_path,
                                                  lr, stopped_by):
    """The run stops at the first non-finite loss or weights with one
    paragraph; the checkpoints written before (one per iteration here)
    hold finite weights, and no later one is written."""
    result = run_process(train_command(tmp_path, options=[
        f'optim_wrapper.optimizer.lr={lr}',
        'default_hooks.checkpoint.by_epoch=False']), toy_workspace)
    assert result.returncode == 1
    message = result.stderr.strip().split('\n')[-1]
    assert 'Traceback' not in result.stderr
    stopped = re.match('train.py: error: ' + stopped_by, message)
    assert stopped, result.stderr[-3000:]
    iteration = int(stopped[1])
    assert iteration > 1
    checkpoints = sorted(p.name for p in tmp_path.glob('iter_*.pth'))
    assert checkpoints[-1] == f'iter_{iteration - 1}.pth'
    last = tmp_path / checkpoints[-1]
    assert (tmp_path / 'last_checkpoint').read_text() == str(last)
    assert f'The last checkpoint, {last}, is from before.' in message
    assert all(torch.isfinite(v).all() for v in state_dict(last).values()
               if v.is_floating_point())
