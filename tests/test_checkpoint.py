"""Backbone weights from checkpoint files: official ImageNet checkpoints in
every wrapping the official scripts save, converted files, whole mmengine
models; strict, safe loading and errors that name the file and the problem.
"""
import argparse
import functools
import logging
import os
import pathlib

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch import nn

from official_layout import official_stage_outputs, official_state_dict
from wavevit_mm import WaveViT
from wavevit_mm.checkpoint import (SAFE_GLOBALS, CheckpointError,
                                   UnsafeCheckpointError, convert_checkpoint,
                                   convert_official, describe_arch,
                                   infer_arch, safe_load)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = {'s': 1, 'b': 2, 'l': 3}
WRAPPINGS = ['bare', 'state_dict', 'training', 'model', 'ddp_state_dict',
             'ddp_model']


@functools.lru_cache(maxsize=None)
def official(arch):
    return official_state_dict(arch, seed=SEEDS[arch])


@functools.lru_cache(maxsize=None)
def expected_backbone(arch):
    return convert_official(official(arch))[0]


def wrap(state_dict, wrapping):
    """A state dict as the official training scripts save it."""
    ddp = {'module.' + k: v for k, v in state_dict.items()}
    if wrapping == 'bare':
        return state_dict
    if wrapping == 'training':
        ema = {k: v + 1 if v.is_floating_point() else v
               for k, v in state_dict.items()}
        return dict(
            epoch=309, arch='wavevit_s', state_dict=state_dict,
            state_dict_ema=ema, metric=82.7, version=2,
            optimizer=dict(state={0: dict(step=torch.tensor(5.),
                                          exp_avg=torch.zeros(3))},
                           param_groups=[dict(lr=1e-3, params=[0])]),
            args=argparse.Namespace(model='wavevit_s', lr=1e-3, epochs=310,
                                    data_dir='/data/imagenet', amp=True))
    return {
        'state_dict': dict(state_dict=state_dict),
        'model': dict(model=state_dict),
        'ddp_state_dict': dict(state_dict=ddp),
        'ddp_model': dict(model=ddp),
    }[wrapping]


def save(folder, obj, name='checkpoint.pth', **kwargs):
    path = os.path.join(str(folder), name)
    torch.save(obj, path, **kwargs)
    return path


def pretrained(arch, path, **init_cfg):
    model = WaveViT(arch, init_cfg=dict(type='Pretrained', checkpoint=path,
                                        **init_cfg))
    model.init_weights()
    return model


def assert_backbone_equals(model, expected):
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


@pytest.fixture
def log_messages():
    """What the current MMLogger logs during a test."""
    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


# ------------------------------------------------ official checkpoints

@pytest.mark.parametrize('arch,wrapping', [('s', 'training'),
                                           ('b', 'state_dict'),
                                           ('l', 'bare')])
def test_official_checkpoint_loads_directly_for_every_arch(
        tmp_path, arch, wrapping):
    path = save(tmp_path, wrap(official(arch), wrapping))
    assert_backbone_equals(pretrained(arch, path), expected_backbone(arch))


@pytest.mark.parametrize('wrapping', WRAPPINGS)
def test_every_official_wrapping_loads(tmp_path, wrapping):
    """Bare, {'state_dict'}, a full training checkpoint (EMA, optimizer,
    args, ...; the EMA copy differs and must not be taken), {'model'}, and
    DistributedDataParallel's 'module.' prefix."""
    path = save(tmp_path, wrap(official('s'), wrapping))
    assert_backbone_equals(pretrained('s', path), expected_backbone('s'))


def test_loaded_backbone_gives_the_official_stage_outputs(tmp_path):
    path = save(tmp_path, wrap(official('s'), 'training'))
    model = pretrained('s', path).eval()
    image = torch.randn(2, 3, 64, 64,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = model(image)
    expected = official_stage_outputs(official('s'), 's', image)
    assert len(outs) == len(expected) == 4
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out.double(), ref, atol=5e-5, rtol=1e-5)


def test_batchnorm_statistics_of_stem_and_wavelet_branches_come_across(
        tmp_path):
    path = save(tmp_path, wrap(official('s'), 'state_dict'))
    model = pretrained('s', path)
    for ours, theirs in [('stages.0.downsample.conv.1', 'patch_embed1.conv.1'),
                         ('stages.0.blocks.0.attn.reduce.1',
                          'block1.0.attn.reduce.1'),
                         ('stages.1.blocks.3.attn.filter.1',
                          'block2.3.attn.filter.1')]:
        norm = model.get_submodule(ours)
        for stat in ('running_mean', 'running_var', 'num_batches_tracked'):
            assert torch.equal(getattr(norm, stat),
                               official('s')[f'{theirs}.{stat}'])
        assert not torch.equal(norm.running_var, torch.ones_like(
            norm.running_var))


def test_load_logs_one_summary_of_what_was_dropped(tmp_path, log_messages):
    path = save(tmp_path, wrap(official('s'), 'training'))
    pretrained('s', path)
    assert len(log_messages) == 1
    summary = log_messages[0]
    for part in [path, 'Wave-ViT-S', 'official ImageNet classification',
                 'dropped 18 classification-only entries: post_network (14),'
                 ' head (2), aux_head (2)',
                 'dropped 35 derived buffers (wavelet filters',
                 'dwt.w_ll (7)', 'idwt.filters (7)', "'state_dict_ema'"]:
        assert part in summary


@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_arch_is_inferred_from_shapes(arch):
    state_dict = expected_backbone(arch)
    assert infer_arch(state_dict) == arch
    assert infer_arch(WaveViT(arch).state_dict()) == arch
    assert describe_arch(state_dict).startswith(f'Wave-ViT-{arch.upper()} ')


# ------------------------------------------------------ mismatches

def test_b_checkpoint_into_s_backbone_says_the_file_is_b(tmp_path):
    path = save(tmp_path, wrap(official('b'), 'state_dict'), 'wavevit_b.pth')
    model = WaveViT('s', init_cfg=dict(type='Pretrained', checkpoint=path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        model.init_weights()
    message = str(error.value)
    for part in [path, 'holds Wave-ViT-B (stem width 64, embed dims '
                 '64/128/320/512, depths 3/4/12/3)', 'backbone is Wave-ViT-S',
                 "arch='b'", 'another shape']:
        assert part in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_missing_backbone_weight_is_an_error(tmp_path):
    state_dict = dict(official('s'))
    del state_dict['block3.1.mlp.fc1.weight']
    path = save(tmp_path, wrap(state_dict, 'state_dict'))
    with pytest.raises(CheckpointError,
                       match=r'1 backbone weights are missing from the file '
                       r'\(e\.g\. stages\.2\.blocks\.1\.mlp\.fc1\.weight\)'):
        pretrained('s', path)


def test_mis_shaped_backbone_weight_is_an_error(tmp_path):
    state_dict = dict(official('s'))
    state_dict['block1.0.attn.kv_embed.weight'] = torch.zeros(64, 64, 2, 2)
    path = save(tmp_path, state_dict)
    with pytest.raises(CheckpointError,
                       match=r'stages\.0\.blocks\.0\.attn\.kv_embed\.weight: '
                       r'\(64, 64, 2, 2\) in the file, \(64, 64, 4, 4\)'):
        pretrained('s', path)


@pytest.mark.parametrize('whole_model', [False, True])
def test_other_network_is_not_a_wavevit_checkpoint(tmp_path, whole_model):
    from mmdet.models.backbones import ResNet
    resnet = ResNet(depth=50).state_dict()
    if whole_model:  # a Faster R-CNN R-50 checkpoint
        resnet = dict(state_dict={'backbone.' + k: v
                                  for k, v in resnet.items()},
                      meta=dict(epoch=12))
    path = save(tmp_path, resnet, 'resnet50.pth')
    with pytest.raises(CheckpointError,
                       match='is not a Wave-ViT checkpoint') as error:
        pretrained('s', path)
    assert path in str(error.value) and 'conv1.weight' in str(error.value)


# ------------------------------------------------------- bad files

def _first_half(path):
    data = open(path, 'rb').read()
    os.remove(path)
    return data[:len(data) // 2]


def _truncated(folder, **save_kwargs):
    return _first_half(save(folder, {'weight': torch.randn(4096)},
                            'whole.pth', **save_kwargs))


def _truncated_safetensors(folder):
    from safetensors.torch import save_file
    path = os.path.join(str(folder), 'whole.safetensors')
    save_file({'weight': torch.randn(4096)}, path)
    return _first_half(path)


BAD_CONTENT = {
    'empty': lambda folder: b'',
    'truncated': _truncated,
    'truncated_legacy': functools.partial(
        _truncated, _use_new_zipfile_serialization=False),
    'truncated_safetensors': _truncated_safetensors,
    'text': lambda folder: (b'version https://git-lfs.github.com/spec/v1\n'
                            b'oid sha256:4d7a\nsize 78123456\n'),
    'html': lambda folder: b'<!DOCTYPE html>\n<html>Not Found</html>',
    'png': lambda folder: cv2.imencode(
        '.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
    'jpeg': lambda folder: cv2.imencode(
        '.jpg', np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
}


@pytest.mark.parametrize('kind,error_type,message', [
    ('missing', FileNotFoundError, 'Checkpoint file not found'),
    ('directory', CheckpointError, 'is a directory'),
    ('empty', CheckpointError, r'is empty \(0 bytes\)'),
    ('truncated', CheckpointError, 'truncated or corrupt'),
    ('truncated_legacy', CheckpointError, 'truncated or corrupt'),
    ('truncated_safetensors', CheckpointError, 'truncated or corrupt'),
    ('text', CheckpointError, r"looks like text \('version https://git-lfs"),
    ('html', CheckpointError, r"looks like text \('<!DOCTYPE html>"),
    ('png', CheckpointError, 'looks like a PNG image'),
    ('jpeg', CheckpointError, 'looks like a JPEG image'),
    ('no_state_dict', CheckpointError,
     "holds no state dict of tensors.*found the entries 'epoch', 'arch'"),
])
def test_bad_file_gets_a_one_paragraph_error_naming_it(
        tmp_path, kind, error_type, message):
    path = os.path.join(str(tmp_path), 'wavevit_s.pth')
    if kind == 'directory':
        os.mkdir(path)
    elif kind == 'no_state_dict':
        save(tmp_path, dict(epoch=3, arch='wavevit_s'), 'wavevit_s.pth')
    elif kind in BAD_CONTENT:
        with open(path, 'wb') as file:
            file.write(BAD_CONTENT[kind](tmp_path))
    with pytest.raises(error_type, match=message) as error:
        pretrained('s', path)
    assert path in str(error.value)
    assert '\n' not in str(error.value)


# ------------------------------------------------------------ safety

class RunsCode:
    """Unpickles to os.system(command): what a malicious file does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command, )


@pytest.mark.parametrize('legacy', [False, True])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, legacy):
    marker = tmp_path / 'payload_ran'
    checkpoint = wrap(official('s'), 'state_dict')
    checkpoint['args'] = RunsCode(f'touch {marker}')
    path = save(tmp_path, checkpoint,
                _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as error:
        pretrained('s', path)
    message = str(error.value)
    assert path in message and f'{os.system.__module__}.system' in message
    assert 'trusted=True' in message
    assert not marker.exists()


def test_trusted_opt_in_loads_a_legacy_file(tmp_path):
    """A harmless object outside the allow-list (a path in the saved
    command line) is refused by default and loads when trusted."""
    checkpoint = wrap(official('s'), 'training')
    checkpoint['args'].data_dir = pathlib.PurePosixPath('/data/imagenet')
    path = save(tmp_path, checkpoint)
    with pytest.raises(UnsafeCheckpointError, match='pathlib.PurePosixPath'):
        pretrained('s', path)
    assert_backbone_equals(pretrained('s', path, trusted=True),
                           expected_backbone('s'))


class DetectorLike(BaseModel):
    """A whole model with a Wave-ViT backbone, as mmdet/mmseg hold it."""

    def __init__(self):
        super().__init__()
        self.backbone = WaveViT('s')
        self.neck = nn.Conv2d(448, 4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.neck(self.backbone(inputs)[-1])
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint saved by mmengine's Runner after a short training run:
    message hub with HistoryBuffers, numpy scalars, optimizer, schedulers."""
    work_dir = tmp_path_factory.mktemp('runner')
    runner = Runner(
        model=DetectorLike(),
        work_dir=str(work_dir),
        experiment_name='wavevit_checkpoint_test',
        train_dataloader=dict(
            dataset=[dict(inputs=torch.randn(3, 32, 32)) for _ in range(4)],
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'), batch_size=2),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                 end=2),
            dict(type='MultiStepLR', milestones=[8, 11], by_epoch=True)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=1)))
    runner.train()
    return str(work_dir / 'epoch_1.pth')


def test_whole_model_checkpoint_from_mmengine_runner_loads(
        runner_checkpoint, log_messages):
    found = torch.serialization.get_unsafe_globals_in_checkpoint(
        runner_checkpoint)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in found
    model = pretrained('s', runner_checkpoint)
    checkpoint = safe_load(runner_checkpoint)
    expected = {k[len('backbone.'):]: v
                for k, v in checkpoint['state_dict'].items()
                if k.startswith('backbone.')}
    assert_backbone_equals(model, expected)
    assert 'dropped 2 entries outside the backbone: neck (2)' in \
        log_messages[-1]


def test_safe_load_restores_mmengine_objects(runner_checkpoint):
    checkpoint = safe_load(runner_checkpoint)
    lr = checkpoint['message_hub']['log_scalars']['train/lr']
    assert isinstance(lr, HistoryBuffer) and lr.mean() > 0
    assert isinstance(checkpoint['message_hub']['runtime_info']['eta'],
                      np.floating)
    assert checkpoint['meta']['epoch'] == 1


def test_allow_list_is_not_registered_process_wide(runner_checkpoint):
    safe_load(runner_checkpoint)
    assert not set(map(repr, SAFE_GLOBALS)) & set(
        map(repr, torch.serialization.get_safe_globals()))
    with pytest.raises(Exception, match='HistoryBuffer|numpy'):
        torch.load(runner_checkpoint, weights_only=True)


# --------------------------------------------------------- conversion

@pytest.mark.parametrize('arch', ['s', 'b'])
def test_converted_file_loads_with_no_missing_or_unexpected_keys(
        tmp_path, arch):
    src = save(tmp_path, wrap(official(arch), 'ddp_state_dict'))
    dst = os.path.join(str(tmp_path), 'converted', f'wavevit_{arch}.pth')
    report = convert_checkpoint(src, dst)  # arch inferred from shapes
    assert report.arch.startswith(f'Wave-ViT-{arch.upper()} ')
    assert torch.load(dst, weights_only=True)['meta']['arch'] == arch
    model = WaveViT(arch)
    load_checkpoint(model, dst, strict=True)  # mmengine's own loader
    assert_backbone_equals(model, expected_backbone(arch))
    assert_backbone_equals(pretrained(arch, dst), expected_backbone(arch))


def test_whole_model_checkpoint_converts_to_backbone_only(
        tmp_path, runner_checkpoint):
    dst = os.path.join(str(tmp_path), 'backbone.pth')
    convert_checkpoint(runner_checkpoint, dst)
    state_dict = torch.load(dst, weights_only=True)['state_dict']
    assert set(state_dict) == set(WaveViT('s').state_dict())


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file
    src = save(tmp_path, wrap(official('s'), 'training'))
    dst = os.path.join(str(tmp_path), 'wavevit_s.safetensors')
    convert_checkpoint(src, dst)
    assert set(load_file(dst)) == set(WaveViT('s').state_dict())
    assert_backbone_equals(pretrained('s', dst), expected_backbone('s'))


def test_conversion_with_wrong_arch_writes_nothing(tmp_path):
    src = save(tmp_path, wrap(official('b'), 'state_dict'), 'wavevit_b.pth')
    dst = os.path.join(str(tmp_path), 'out.pth')
    with pytest.raises(CheckpointError, match="arch='b'"):
        convert_checkpoint(src, dst, arch='s')
    assert sorted(os.listdir(tmp_path)) == ['wavevit_b.pth']


def test_conversion_refuses_to_overwrite_without_force(tmp_path):
    src = save(tmp_path, official('s'), 'src.pth')
    dst = tmp_path / 'wavevit_s.pth'
    dst.write_bytes(b'keep me')
    with pytest.raises(FileExistsError, match='already exists.*--force'):
        convert_checkpoint(src, str(dst))
    assert dst.read_bytes() == b'keep me'
    convert_checkpoint(src, str(dst), force=True)
    assert_backbone_equals(pretrained('s', str(dst)), expected_backbone('s'))


def test_failed_write_leaves_destination_as_it_was(tmp_path, monkeypatch):
    src = save(tmp_path, official('s'), 'src.pth')
    out = tmp_path / 'out'
    out.mkdir()
    dst = out / 'wavevit_s.pth'
    dst.write_bytes(b'previous weights')

    def disk_full(obj, path, *args, **kwargs):
        with open(path, 'wb') as file:
            file.write(b'PK\x03\x04 half a checkpoint')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(OSError, match='No space left'):
        convert_checkpoint(src, str(dst), force=True)
    assert dst.read_bytes() == b'previous weights'
    assert os.listdir(out) == ['wavevit_s.pth']


# ----------------------------------------------------- whole detector

def test_mask_rcnn_config_starts_from_the_checkpoint_weights(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    path = save(tmp_path, wrap(official('s'), 'training'), 'wavevit_s.pth')
    cfg = Config.fromfile(
        os.path.join(ROOT, 'configs', 'mask_rcnn_wavevit_s_coco.py'))
    cfg.model.backbone.init_cfg.checkpoint = path
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert_backbone_equals(model.backbone, expected_backbone('s'))
