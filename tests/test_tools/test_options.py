"""wavevit_mm.tools.options, what tools/train.py and tools/test.py set up
from their switches before a run: the checkpoint --resume picks (never one
that does not read back), load_from read first, --amp, --tta (mmdet's
default where a config has none)."""
import os
import time

import pytest
import torch
from mmengine.config import Config

from toy_runs import TOY
from wavevit_mm.checkpoint import CheckpointError
from wavevit_mm.errors import ConfigError
from wavevit_mm.tools import (apply_test_options, apply_train_options,
                             find_resume_checkpoint)


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


# ---------------------------------------------------------------- --amp

def test_amp_switch_selects_the_cpu_wrapper_without_a_gpu():
    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))))
    apply_train_options(cfg, amp=True)
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    else:
        assert cfg.optim_wrapper.type == 'CPUAutocastOptimWrapper'
        assert 'loss_scale' not in cfg.optim_wrapper


def gpu_amp(monkeypatch, bf16, **wrapper):
    """The optim_wrapper ``--amp`` gives on a GPU with or without bfloat16
    support (the GPU's answers stubbed: the switch only reads them)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: bf16)
    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4),
        **wrapper)))
    apply_train_options(cfg, amp=True)
    return cfg.optim_wrapper


def test_amp_on_a_gpu_with_bfloat16_needs_no_loss_scaling(monkeypatch):
    wrapper = gpu_amp(monkeypatch, bf16=True)
    assert wrapper.type == 'AmpOptimWrapper'
    assert wrapper.dtype == 'bfloat16'
    assert wrapper.loss_scale == dict(enabled=False)


def test_amp_on_an_older_gpu_is_float16_with_dynamic_loss_scaling(
        monkeypatch):
    wrapper = gpu_amp(monkeypatch, bf16=False)
    assert (wrapper.type, wrapper.dtype, wrapper.loss_scale) == (
        'AmpOptimWrapper', 'float16', 'dynamic')


def test_amp_keeps_the_dtype_and_loss_scale_the_config_states(monkeypatch):
    wrapper = gpu_amp(monkeypatch, bf16=True, dtype='float16',
                      loss_scale=512.)
    assert (wrapper.dtype, wrapper.loss_scale) == ('float16', 512.)
    wrapper = gpu_amp(monkeypatch, bf16=True, dtype='float16')
    assert wrapper.loss_scale == 'dynamic'


# ---------------------------------------------------------------- --tta

def toy_config(name):
    return Config.fromfile(os.path.join(TOY, 'configs', name))


def test_tta_without_settings_takes_mmdets_flip_default(log_messages):
    """A detection config without tta_model and tta_pipeline (every shipped
    one) gets mmdet's tools/test.py default, and the run says so."""
    cfg = toy_config('retinanet_wavevit_toy_coco.py')
    assert 'tta_model' not in cfg and 'tta_pipeline' not in cfg
    test_pipeline = cfg.test_dataloader.dataset.pipeline
    apply_test_options(cfg, 'model.pth', tta=True)
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.model.tta_cfg == dict(nms=dict(type='nms', iou_threshold=0.5),
                                     max_per_img=100)
    assert cfg.model.module.type == 'RetinaNet'
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert pipeline[:-1] == test_pipeline[:-1]
    assert pipeline[-1].type == 'TestTimeAug'
    flips, (pack, ) = pipeline[-1].transforms
    assert [flip.prob for flip in flips] == [1., 0.]
    assert pack.type == 'PackDetInputs' and 'flip' in pack.meta_keys
    line, = [m for m in log_messages if m.startswith('--tta')]
    assert 'no tta_model and no tta_pipeline' in line
    assert "mmdet's tools/test.py --tta" in line
    assert 'DetTTAModel' in cfg.pretty_text


def test_tta_of_classification_takes_mmpretrains_flip_default(log_messages):
    """A classification config without tta_model and tta_pipeline gets
    what mmpretrain's tools/test.py --tta (1.2) writes then: the scores of
    the image and its flip averaged, the packing kept after the flips."""
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=233, edge='short'),
        dict(type='CenterCrop', crop_size=224),
        dict(type='PackInputs')]
    cfg = Config(dict(
        default_scope='mmpretrain', model=dict(type='ImageClassifier'),
        test_dataloader=dict(dataset=dict(type='CustomDataset',
                                          pipeline=test_pipeline))))
    apply_test_options(cfg, 'model.pth', tta=True)
    assert cfg.model == dict(type='AverageClsScoreTTA',
                             module=dict(type='ImageClassifier'))
    assert cfg.test_dataloader.dataset.pipeline == test_pipeline[:-1] + [
        dict(type='TestTimeAug',
             transforms=[[dict(type='RandomFlip', prob=1.),
                          dict(type='RandomFlip', prob=0.)],
                         [dict(type='PackInputs')]])]
    line, = [m for m in log_messages if m.startswith('--tta')]
    assert "no tta_model and no tta_pipeline; using what mmpretrain's " \
        'tools/test.py --tta uses then' in line


def test_show_dir_of_classification_is_mmpretrains():
    """--show-dir with a classification config sets mmpretrain's
    VisualizationHook as its tools/test.py does (enable, out_dir, every
    image); the hook hands unknown keys such as mmdet's draw=True to the
    visualizer, which refuses them."""
    cfg = Config(dict(
        default_scope='mmpretrain', model=dict(type='ImageClassifier'),
        default_hooks=dict(visualization=dict(type='VisualizationHook',
                                              enable=False))))
    apply_test_options(cfg, 'model.pth', show_dir='vis')
    assert cfg.default_hooks.visualization == dict(
        type='VisualizationHook', enable=True, out_dir='vis', interval=1)


def test_tta_keeps_the_settings_the_config_has(log_messages):
    cfg = toy_config('upernet_wavevit_toy_ade20k.py')
    tta_pipeline = cfg.tta_pipeline
    apply_test_options(cfg, 'model.pth', tta=True)
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.type == 'EncoderDecoder'
    assert cfg.test_dataloader.dataset.pipeline == tta_pipeline
    assert not [m for m in log_messages if m.startswith('--tta')]


def test_tta_of_instance_segmentation_is_refused_in_one_paragraph():
    cfg = toy_config('mask_rcnn_wavevit_toy_coco.py')
    with pytest.raises(ConfigError) as error:
        apply_test_options(cfg, 'model.pth', tta=True)
    message = str(error.value)
    assert 'mmdet has no test-time augmentation for instance segmentation' \
        in message and '\n' not in message
    assert cfg.model.type == 'MaskRCNN'  # the config is left as it was


def test_tta_of_segmentation_without_a_pipeline_names_mmsegs_bases():
    cfg = toy_config('upernet_wavevit_toy_ade20k.py')
    cfg.pop('tta_pipeline')
    with pytest.raises(ConfigError, match='mmseg::_base_/datasets'):
        apply_test_options(cfg, 'model.pth', tta=True)
