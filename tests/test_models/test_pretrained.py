"""wavevit_mm.models.pretrained: backbone weights from checkpoint files
through ``init_cfg=dict(type='Pretrained', ...)``. Official ImageNet
checkpoints in every wrapping the official scripts save, whole mmengine
models; strict, safe loading and errors that name the file and the
problem. Expected weights come from tests/official_layout.py. And the
checkpoint of a whole model (tools/test.py, tools/image_demo.py), which
must fit the model built from the config: when it does not, the error
says what the file holds."""
import os
import pathlib

import pytest
import torch
from mmengine.config import Config
from torch import nn

from helpers import (BAD_FILES, ROOT, TINY, WRAPPINGS, RunsCode,
                     assert_backbone_equals, expected_backbone,
                     globals_torch_refuses, official, pretrained, save, wrap,
                     write_bad_file)
from official_layout import official_stage_outputs
from wavevit_mm import WaveViT
from wavevit_mm.checkpoint import CheckpointError, UnsafeCheckpointError
from wavevit_mm.models.pretrained import check_fits, read_model_weights


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


@pytest.mark.slow  # as tests/test_models/test_wavevit.py does without a file
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

@pytest.mark.parametrize('kind,error_type,message', BAD_FILES + [
    ('no_state_dict', CheckpointError,
     "holds no state dict of tensors.*found the entries 'epoch', 'arch'"),
])
def test_bad_file_gets_a_one_paragraph_error_naming_it(
        tmp_path, kind, error_type, message):
    path = os.path.join(str(tmp_path), 'wavevit_s.pth')
    if kind == 'no_state_dict':
        save(tmp_path, dict(epoch=3, arch='wavevit_s'), 'wavevit_s.pth')
    else:
        write_bad_file(kind, path)
    with pytest.raises(error_type, match=message) as error:
        pretrained('s', path)
    assert path in str(error.value)
    assert '\n' not in str(error.value)


# ------------------------------------------------------------ safety

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


# ----------------------------------------------------- whole models

def test_whole_model_checkpoint_from_mmengine_runner_loads(
        runner_checkpoint, log_messages):
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in \
        globals_torch_refuses(runner_checkpoint)
    model = pretrained('s', runner_checkpoint)
    # read by torch.load itself, not by the backbone's reader
    checkpoint = torch.load(runner_checkpoint, weights_only=True)
    expected = {k[len('backbone.'):]: v
                for k, v in checkpoint['state_dict'].items()
                if k.startswith('backbone.')}
    assert_backbone_equals(model, expected)
    assert 'dropped 2 entries outside the backbone: neck (2)' in \
        log_messages[-1]


@pytest.mark.slow
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


# ---------------------------- whole-model checkpoints (check_fits)

class Detector(nn.Module):
    def __init__(self, arch=TINY):
        super().__init__()
        self.backbone = WaveViT(arch)
        self.neck = nn.Conv2d(64, 4, 1)


def whole_model_weights(backbone):
    return dict({'backbone.' + k: v for k, v in backbone.items()},
                **{'neck.' + k: v for k, v in nn.Conv2d(64, 4, 1)
                   .state_dict().items()})


def test_checkpoint_of_the_same_model_fits(tmp_path):
    """The file's weights are read as saved (every key, every value) and
    fit the model."""
    model = Detector()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = save(tmp_path, dict(state_dict=saved, meta={}))
    weights, _ = read_model_weights(path)
    check_fits(weights, model, path)
    assert set(weights) == set(saved)
    for key, value in saved.items():
        assert weights[key].dtype == value.dtype, key
        assert torch.equal(weights[key], value), key


@pytest.mark.parametrize('weights,note', [
    (lambda: whole_model_weights(WaveViT('s').state_dict()),
     "Its backbone is Wave-ViT-S (stem width 32, embed dims 64/128/320/448, "
     "depths 3/4/6/3), the config's is custom Wave-ViT (stem width 8, embed "
     "dims 16/32/48/64, depths 1/2/1/1)."),
    (lambda: whole_model_weights(nn.Conv2d(3, 8, 3).state_dict()),
     'Its backbone is not a Wave-ViT (its weights start with weight, '
     'bias).'),
    (lambda: official('s'),
     'It holds backbone weights only: use it as '
     'model.backbone.init_cfg.checkpoint to train from it.'),
    (lambda: {'classifier.weight': torch.zeros(2, 2)},
     'It has no backbone weights at all (its weights start with '
     'classifier.weight)'),
], ids=['other_arch', 'other_backbone', 'backbone_only', 'no_backbone'])
def test_checkpoint_that_does_not_fit_says_what_it_holds(weights, note):
    with pytest.raises(CheckpointError) as error:
        check_fits(weights(), Detector(), 'model.pth')
    message = str(error.value)
    assert message.startswith('model.pth does not fit the model built from '
                              'the config: ')
    assert note in message
    assert message.endswith('It was not used. Pass a checkpoint saved by '
                            'training this config.')


def test_file_without_a_state_dict_is_an_error_naming_it(tmp_path):
    path = save(tmp_path, dict(epoch=3))
    with pytest.raises(CheckpointError,
                       match=f'^{path} holds no state dict of tensors'):
        read_model_weights(path)
