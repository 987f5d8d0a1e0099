"""mmdet's and mmseg's own ``tools/train.py`` and ``tools/test.py`` (the
copies installed with those packages) train, resume and test the toy
configs and read the checkpoints they write, with torch's default
weights-only loading: the configs import wavevit_mm, which registers its
allow-list and reader."""
import os
import re

import mmdet
import mmseg
import pytest

from toy_runs import DET_CONFIG, ENV, SEG_CONFIG, run_process

pytestmark = pytest.mark.slow


def openmmlab_tool(package, name):
    path = os.path.join(os.path.dirname(package.__file__), '.mim', 'tools',
                        name)
    assert os.path.isfile(path), path
    return path


def run(args, cwd):
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in ENV
    result = run_process(args, cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.mark.parametrize('package,config,schedule,steps,resumed', [
    (mmdet, DET_CONFIG,
     ['param_scheduler.0.end=2', 'train_cfg.val_interval=100'],
     [('train_cfg.max_epochs=1', 'epoch_1.pth'),
      ('train_cfg.max_epochs=2', 'epoch_2.pth')],
     'resumed epoch: 1, iter: 2'),  # 8 images, 4 a batch
    (mmseg, SEG_CONFIG,
     ['param_scheduler.0.end=2', 'param_scheduler.1.begin=2',
      'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=2'],
     [('train_cfg.max_iters=2', 'iter_2.pth'),
      ('train_cfg.max_iters=4', 'iter_4.pth')],
     'resumed epoch: 0, iter: 2'),
], ids=['mmdet', 'mmseg'])
def test_their_tools_train_resume_and_test_our_configs(
        toy_workspace, tmp_path, package, config, schedule, steps, resumed):
    train = openmmlab_tool(package, 'train.py')
    work_dir = tmp_path / 'work'
    (first_length, first), (second_length, second) = steps
    python = ENV['PYTHON']
    run([python, train, config, '--work-dir', work_dir, '--cfg-options',
         *schedule, first_length], toy_workspace)
    assert (work_dir / first).is_file()

    output = run([python, train, config, '--work-dir', work_dir, '--resume',
                  '--cfg-options', *schedule, second_length], toy_workspace)
    assert resumed in output, output[-3000:]
    assert (work_dir / second).is_file()

    output = run([python, openmmlab_tool(package, 'test.py'), config,
                  work_dir / second, '--work-dir', tmp_path / 'test'],
                 toy_workspace)
    assert f'Load checkpoint from {work_dir / second}' in output
    metric = 'bbox_mAP' if package is mmdet else 'mIoU'
    assert re.search(rf'{metric}', output), output[-3000:]
