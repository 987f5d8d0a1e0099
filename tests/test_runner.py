"""What tools/train.py and tools/test.py set up before a run: the checkpoint
--resume picks, input checks, the safeguard hooks."""
import logging
import os
import time

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from wavevit_mm.checkpoint import CheckpointError
from wavevit_mm.errors import ConfigError, DataError
from wavevit_mm.runner import (add_safeguards, apply_train_options,
                               check_backbone_config, check_data_paths,
                               find_resume_checkpoint, load_config)


def checkpoint(folder, name, broken=False):
    path = folder / name
    torch.save(dict(state_dict={'w': torch.zeros(64)}, meta=dict(epoch=1)),
               path)
    if broken:  # cut short, as by a process killed while writing it
        path.write_bytes(path.read_bytes()[:200])
    time.sleep(0.01)  # distinct modification times
    return str(path)


def point_to(folder, path):
    (folder / 'last_checkpoint').write_text(path)


@pytest.fixture
def warnings_logged():
    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


# ------------------------------------------------------------ --resume

def test_resume_picks_the_last_checkpoint(tmp_path):
    checkpoint(tmp_path, 'epoch_1.pth')
    last = checkpoint(tmp_path, 'epoch_2.pth')
    point_to(tmp_path, last)
    assert find_resume_checkpoint(str(tmp_path)) == last


def test_resume_never_picks_a_truncated_checkpoint(tmp_path,
                                                    warnings_logged):
    good = checkpoint(tmp_path, 'epoch_2.pth')
    broken = checkpoint(tmp_path, 'epoch_3.pth', broken=True)
    point_to(tmp_path, broken)
    checkpoint(tmp_path, '.epoch_4.pth.tmp')  # temporary: no candidate
    assert find_resume_checkpoint(str(tmp_path)) == good
    warning, = warnings_logged
    assert f'{broken} could not be read' in warning
    assert f'Resuming from {good} instead' in warning


@pytest.mark.parametrize('pointer', ['missing', 'empty', 'deleted_file'])
def test_resume_without_a_usable_pointer_takes_the_newest_readable(
        tmp_path, pointer):
    checkpoint(tmp_path, 'epoch_1.pth')
    newest = checkpoint(tmp_path, 'epoch_10.pth')  # numbers, not names
    checkpoint(tmp_path, 'epoch_9.pth')
    if pointer == 'empty':
        point_to(tmp_path, '')
    elif pointer == 'deleted_file':
        point_to(tmp_path, str(tmp_path / 'epoch_11.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == newest


def test_resume_with_only_broken_checkpoints_is_an_error(tmp_path):
    broken = checkpoint(tmp_path, 'iter_500.pth', broken=True)
    (tmp_path / 'iter_1000.pth').write_bytes(b'')
    with pytest.raises(CheckpointError) as error:
        find_resume_checkpoint(str(tmp_path))
    message = str(error.value)
    assert message.startswith(f'Cannot resume from {tmp_path}: no checkpoint '
                              f'there reads back.')
    assert broken in message and 'iter_1000.pth is empty' in message
    assert '\n' not in message


def test_resume_in_an_empty_work_dir_trains_from_the_start(tmp_path):
    cfg = Config(dict(work_dir=str(tmp_path / 'new')))
    apply_train_options(cfg, resume='auto')
    assert cfg.load_from is None and cfg.resume is False


def test_resume_auto_sets_the_picked_checkpoint(tmp_path):
    last = checkpoint(tmp_path, 'epoch_3.pth')
    cfg = Config(dict(work_dir=str(tmp_path)))
    apply_train_options(cfg, resume='auto')
    assert cfg.load_from == last and cfg.resume is True


def test_load_from_is_read_before_the_run(tmp_path):
    cfg = Config(dict(work_dir=str(tmp_path),
                      load_from=str(tmp_path / 'nowhere.pth')))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        apply_train_options(cfg)


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

def test_safeguards_replace_the_checkpoint_hook_and_add_hooks_once():
    cfg = Config(dict(
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2,
                                           max_keep_ckpts=3)),
        custom_hooks=[dict(type='EMAHook')]))
    add_safeguards(cfg)
    add_safeguards(cfg)
    assert cfg.default_hooks.checkpoint == dict(
        type='AtomicCheckpointHook', interval=2, max_keep_ckpts=3)
    assert [h['type'] for h in cfg.custom_hooks] == [
        'EMAHook', 'EpochSeedHook', 'FiniteCheckHook', 'LabelMapCheckHook']


def test_tools_do_not_switch_weights_only_loading_off():
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in ('wavevit_mm', 'tools'):
        for base, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(('.py', '.sh')):
                    with open(os.path.join(base, name)) as f:
                        assert 'TORCH_FORCE_NO_WEIGHTS_ONLY' not in f.read()
