"""mmdet's and mmseg's own ``tools/train.py`` and ``tools/test.py`` (the
copies installed with those packages) train, resume and test the toy
configs and read the checkpoints they write, with torch's default
weights-only loading: the configs import wavevit_mm, which registers its
allow-list and reader."""
import os

import mmdet
import mmseg
import numpy as np
import pytest
import torch

from toy_runs import DET_CONFIG, ENV, SEG_CONFIG, final_metrics, run_process
from wavevit_mm.checkpoint import load_checkpoint

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


def logged(checkpoint, name):
    """The values of ``name`` logged at every iteration (the message hub's
    history, which a resumed run continues)."""
    return checkpoint['message_hub']['log_scalars'][name].data[0]


@pytest.mark.parametrize('package,config,schedule,steps,resumed,metrics', [
    (mmdet, DET_CONFIG,
     ['param_scheduler.0.end=2', 'train_cfg.val_interval=100',
      'default_hooks.checkpoint.interval=1'],
     [('train_cfg.max_epochs=1', 'epoch_1.pth'),
      ('train_cfg.max_epochs=2', 'epoch_2.pth', 'train_cfg.val_interval=2')],
     'resumed epoch: 1, iter: 2',  # 8 images, 4 a batch
     ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP']),
    (mmseg, SEG_CONFIG,
     ['param_scheduler.0.end=2', 'param_scheduler.1.begin=2',
      'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=2'],
     [('train_cfg.max_iters=2', 'iter_2.pth'),
      ('train_cfg.max_iters=4', 'iter_4.pth', 'train_cfg.val_interval=4')],
     'resumed epoch: 0, iter: 2', ['aAcc', 'mIoU', 'mAcc']),
], ids=['mmdet', 'mmseg'])
def test_their_tools_train_resume_and_test_our_configs(
        toy_workspace, tmp_path, package, config, schedule, steps, resumed,
        metrics):
    """An uninterrupted run, validated at its end, writes the first
    checkpoint on its way; a run resumed from that checkpoint in another
    work dir ends with the same weights and the same losses logged at every
    iteration, and their test.py gives its final checkpoint the metrics of
    the uninterrupted run's validation (the same images)."""
    train = openmmlab_tool(package, 'train.py')
    whole_dir, work_dir = tmp_path / 'whole', tmp_path / 'work'
    (_, first), (second_length, second, validate) = steps
    python = ENV['PYTHON']
    output = run([python, train, config, '--work-dir', whole_dir,
                  '--cfg-options', *schedule, second_length, validate],
                 toy_workspace)
    expected = final_metrics(output, 'val')
    assert (whole_dir / first).is_file()

    work_dir.mkdir()  # resumed from the uninterrupted run's first file
    (work_dir / 'last_checkpoint').write_text(str(whole_dir / first))
    output = run([python, train, config, '--work-dir', work_dir, '--resume',
                  '--cfg-options', *schedule, second_length], toy_workspace)
    assert resumed in output, output[-3000:]
    whole = load_checkpoint(str(whole_dir / second))
    again = load_checkpoint(str(work_dir / second))
    assert again['state_dict'].keys() == whole['state_dict'].keys()
    assert all(torch.equal(again['state_dict'][k], whole['state_dict'][k])
               for k in whole['state_dict'])
    assert len(logged(whole, 'train/loss')) == 4
    np.testing.assert_array_equal(logged(again, 'train/loss'),
                                  logged(whole, 'train/loss'))

    output = run([python, openmmlab_tool(package, 'test.py'), config,
                  work_dir / second, '--work-dir', tmp_path / 'test'],
                 toy_workspace)
    assert f'Load checkpoint from {work_dir / second}' in output
    found = final_metrics(output, 'test')
    for name in metrics:
        assert 0 <= float(found[name]) <= 100, found
    assert found == expected
