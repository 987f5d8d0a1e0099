"""Each checkpoint file is deserialized once per run: the tools check a
file before the run, then hand what they read to mmengine's Runner (or
mmdet's init_detector) instead of reading it again. Counted on the real
tools, in this process, on the train, resume, test and demo paths."""
import collections
import os

import pytest
import torch

from toy_runs import DET_CONFIG, run_tool
from wavevit_mm import WaveViT
from wavevit_mm.tools import load_config

pytestmark = pytest.mark.slow


@pytest.fixture
def reads(monkeypatch):
    """How often torch.load read each file (by real path) since the last
    ``clear()``."""
    counts = collections.Counter()
    load = torch.load

    def counting_load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            counts[os.path.realpath(f)] += 1
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', counting_load)
    return counts


def test_train_resume_test_and_demo_read_each_checkpoint_once(
        toy_workspace, tmp_path, reads):
    # a converted (backbone-only) file of the toy backbone to start from
    arch = load_config(DET_CONFIG).model.backbone.arch
    pretrained = tmp_path / 'toy_backbone.pth'
    torch.save(dict(state_dict=WaveViT(arch).state_dict()), pretrained)
    config = tmp_path / 'toy_pretrained.py'
    config.write_text(
        f"_base_ = [{DET_CONFIG!r}]\n"
        f"model = dict(backbone=dict(init_cfg=dict(_delete_=True,\n"
        f"    type='Pretrained', checkpoint={str(pretrained)!r})))\n")
    work_dir = tmp_path / 'work'
    schedule = ['--cfg-options', 'param_scheduler.0.end=2']

    result = run_tool('train.py', [config, '--work-dir', work_dir, *schedule,
                                   'train_cfg.max_epochs=1'], toy_workspace)
    assert result.code == 0, result.stderr
    assert reads[str(pretrained)] == 1
    first = os.path.realpath(work_dir / 'epoch_1.pth')
    assert os.path.isfile(first)

    reads.clear()
    result = run_tool('train.py', [config, '--work-dir', work_dir, '--resume',
                                   *schedule, 'train_cfg.max_epochs=2'],
                      toy_workspace)
    assert result.code == 0, result.stderr
    assert reads[first] == 1 and reads[str(pretrained)] == 1
    second = os.path.realpath(work_dir / 'epoch_2.pth')
    assert os.path.isfile(second)

    reads.clear()
    result = run_tool('test.py', [config, second, '--work-dir', work_dir],
                      toy_workspace)
    assert result.code == 0, result.stderr
    assert reads[second] == 1

    reads.clear()
    image = toy_workspace / 'data' / 'toy_coco' / 'val' / '000000.jpg'
    result = run_tool('image_demo.py', [image, config, second, '--out-file',
                                        tmp_path / 'demo.png'], toy_workspace)
    assert result.code == 0, result.stderr
    assert reads[second] == 1
    assert (tmp_path / 'demo.png').is_file()
