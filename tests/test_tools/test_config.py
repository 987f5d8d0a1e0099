"""wavevit_mm.tools.config: configs load with clear errors, the backbone
settings and dataset paths are checked before any work is done, and the
safeguard hooks a run uses are the ones its config shows."""
import os

import pytest
from mmengine.config import Config

from helpers import ROOT
from wavevit_mm.errors import ConfigError, DataError
from wavevit_mm.tools import (apply_train_options, check_backbone_config,
                             check_data_paths, load_config, setup_work_dir)


# --------------------------------------------------------- input checks

def test_backbone_errors_name_the_config_key():
    cfg = Config(dict(model=dict(type='MaskRCNN', backbone=dict(
        type='WaveViT', arch='s', frozen_stages=9))))
    with pytest.raises(ConfigError, match=r'^model\.backbone: frozen_stages '
                       r'must be in \[-1, 4\]'):
        check_backbone_config(cfg)
    tta = Config(dict(model=dict(type='DetTTAModel', module=dict(
        backbone=dict(type='mmdet.WaveViT', arch='xl')))))
    with pytest.raises(ConfigError, match=r"^model\.module\.backbone: "
                       r"Unknown Wave-ViT arch 'xl'"):
        check_backbone_config(tta)


def test_missing_data_paths_are_named_through_dataset_wrappers(tmp_path):
    (tmp_path / 'images').mkdir()
    dataset = dict(type='CocoDataset', data_root=str(tmp_path),
                   ann_file='train.json', data_prefix=dict(img='images/'))
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(
            type='RepeatDataset', times=2,
            dataset=dict(type='ConcatDataset', datasets=[
                dataset, dict(dataset, data_prefix=dict(img='more/'))]))),
        val_dataloader=dict(dataset=dict(dataset, ann_file='val.json')),
        val_cfg=None))
    with pytest.raises(DataError) as error:
        check_data_paths(cfg, ['train', 'val'])
    message = str(error.value)
    assert (f'train_dataloader.dataset.dataset.datasets[0]: annotation file '
            f'{tmp_path}/train.json does not exist') in message
    assert (f'train_dataloader.dataset.dataset.datasets[1]: data_prefix.img '
            f'folder {tmp_path}/more/ does not exist') in message
    assert 'val.json' not in message  # no val_cfg: no validation loop
    (tmp_path / 'train.json').write_text('{}')
    (tmp_path / 'more').mkdir()
    check_data_paths(cfg, ['train', 'val'])


def test_config_that_cannot_inherit_or_apply_is_a_config_error(tmp_path):
    (tmp_path / 'base.py').write_text('model = dict(init_cfg=None)\n')
    (tmp_path / 'child.py').write_text(
        "_base_ = ['base.py']\nmodel = dict(init_cfg=dict(type='x'))\n")
    with pytest.raises(ConfigError, match=f'^{tmp_path}/child.py: init_cfg='):
        load_config(str(tmp_path / 'child.py'))
    with pytest.raises(ConfigError, match='^--cfg-options: init_cfg='):
        load_config(str(tmp_path / 'base.py'),
                    {'model.init_cfg.checkpoint': 'x'})


# ----------------------------------------------------------- safeguards

def test_train_setup_runs_the_hooks_the_config_shows(tmp_path):
    """The safeguard hooks come from the config; the tools add none."""
    path = os.path.join(ROOT, 'configs', 'mask_rcnn_wavevit_s_coco.py')
    written = Config.fromfile(path)
    cfg = load_config(path)
    setup_work_dir(cfg, path, str(tmp_path))
    apply_train_options(cfg, amp=True, auto_scale_lr=True)
    assert cfg.default_hooks == written.default_hooks
    assert cfg.get('custom_hooks') == written.get('custom_hooks')
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert {'EpochSeedHook', 'FiniteCheckHook', 'LabelMapCheckHook'} <= {
        hook['type'] for hook in cfg.default_hooks.values()}
