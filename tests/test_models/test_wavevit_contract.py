"""WaveViT under the tests mmdet, mmseg and mmpretrain write for their own
transformer backbones, and under the tools that act on any backbone
through ``nn.Module.__call__`` (hooks, pruning, parametrizations,
``fuse_conv_bn``) or copy it (pickle, ``torch.save(model)``, deepcopy).

Each test names the peer test it adapts."""
import copy
import io
import pickle

import pytest
import torch
from mmcv.cnn import fuse_conv_bn
from mmengine.model.weight_init import initialize
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrizations, prune

from helpers import TINY
from wavevit_mm import WaveViT
from wavevit_mm.errors import CheckpointError, ConfigError

LAYERS = (nn.Conv2d, nn.Linear, nn.LayerNorm, _BatchNorm)


def tiny(**kwargs) -> WaveViT:
    torch.manual_seed(0)
    model = WaveViT(TINY, **kwargs)
    model.init_weights()
    return model


def image(height=64, width=96, batch=1):
    return torch.randn(batch, 3, height, width,
                       generator=torch.Generator().manual_seed(1))


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def assert_same_outputs(got, want, atol=1e-5):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


# ---------------------------------------------------------- shapes, norms

@pytest.mark.parametrize('height,width', [(32, 32), (31, 31), (112, 137)])
def test_abnormal_input_sizes(height, width):
    """mmdet tests/test_models/test_backbones/test_pvt.py::test_pvtv2
    ('Test abnormal inference size'): every stage halves, rounding up."""
    shapes = [o.shape[2:] for o in outputs(tiny().eval(),
                                           image(height, width))]
    expected = []
    h, w = -(-height // 4), -(-width // 4)
    for _ in range(4):
        expected.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    assert [tuple(s) for s in shapes] == expected


def test_group_norm_in_place_of_batch_norm():
    """mmdet tests/test_models/test_backbones/test_resnet.py::
    test_resnet_backbone ('Test ResNet50 with GroupNorm forward')."""
    model = tiny(norm_cfg=dict(type='GN', num_groups=2, requires_grad=True))
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    # the stem has 3, each of the 3 wavelet blocks of TINY 2
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 9
    model.train()
    outs = model(image(batch=2))
    assert [o.shape[1] for o in outs] == TINY['embed_dims']


# --------------------------------------------------------------- init_cfg

def test_init_cfg_of_another_type_than_dict_or_list_is_refused():
    """mmseg tests/test_models/test_backbones/test_mit.py::test_mit_init
    ('init_cfg=123, whose type is unsupported'); mmdet's test_swin/test_pvt
    (``pretrained=123`` raises TypeError). Refused when the model is built,
    not after the datasets are loaded."""
    with pytest.raises(ConfigError, match='init_cfg must be a dict or a '
                       'list of dicts.*got 123'):
        WaveViT(TINY, init_cfg=123)
    with pytest.raises(ConfigError, match='a dict or a list of dicts'):
        WaveViT(TINY, init_cfg=['Pretrained'])


@pytest.mark.parametrize('entry,message', [
    (dict(type='Nonexistent'), 'names no weight initialiser: type must be '
     "one of .*'Constant'"),
    (dict(type='Constant', layer='Conv2d'), 'cannot be built by mmengine: '
     '.*val'),
    (dict(type='Constant', val=1, layer=3), 'cannot be built by mmengine'),
    (dict(type='Pretrained'), "a Pretrained entry needs 'checkpoint'"),
    (dict(type='Pretrained', checkpoint='x.pth', strict=False),
     'unknown: strict'),
    (dict(type='Constant', val=1, layer='Linear',
          override=dict(name='head', type='Constant', val=2)),
     "override names 'head', which is no submodule of WaveViT \\(its "
     'submodules: stages\\)'),
    (dict(type='Constant', val=1, override=dict(val=2)),
     "override must be a dict or a list of dicts, each with the 'name'"),
    (dict(type='Constant', val=1, override=dict(name='stages', val=2)),
     "an override with arguments needs its own 'type'"),
])
def test_init_cfg_mmengine_would_refuse_is_refused_when_built(entry,
                                                              message):
    """mmseg test_mit.py::test_mit_init (unsupported init_cfg); what
    mmengine's ``initialize`` raises for the same entry only once
    ``init_weights`` runs."""
    with pytest.raises(ConfigError, match=message):
        WaveViT(TINY, init_cfg=entry)
    with pytest.raises(ConfigError, match=message):
        WaveViT(TINY, init_cfg=[dict(type='Constant', val=1.0,
                                     layer='LayerNorm'), entry])


@pytest.mark.parametrize('init_cfg', [
    dict(type='Constant', layer='Conv2d', val=0.5, bias=0.25),
    dict(type='Xavier', layer=['Conv2d', 'Linear'], distribution='uniform'),
    dict(type='Normal', layer='Linear', std=0.3, bias=0.1),
    dict(type='TruncNormal', layer='Linear', std=0.5, a=-0.2, b=0.2),
    dict(type='Uniform', layer='LayerNorm', a=2.0, b=3.0),
    dict(type='Kaiming', layer='Conv2d', mode='fan_in'),
    [dict(type='Constant', layer='LayerNorm', val=0.0),
     dict(type='Normal', layer='Linear', std=1.0,
          override=dict(name='stages', type='Constant', val=0.5))],
], ids=['constant', 'xavier', 'normal', 'trunc_normal', 'uniform',
        'kaiming', 'list_with_override'])
def test_init_cfg_initialisers_apply_as_mmengine_applies_them(init_cfg):
    """mmpretrain tests/test_models/test_backbones/
    test_swin_transformer.py::TestSwinTransformer::test_init_weights; mmseg
    test_mit.py::test_mit_init. The same seed gives exactly the weights of
    the official initialisation followed by mmengine's ``initialize``."""
    model = WaveViT(TINY, init_cfg=init_cfg)
    torch.manual_seed(5)
    model.init_weights()

    reference = WaveViT(TINY)
    torch.manual_seed(5)
    reference.init_weights()
    initialize(reference, copy.deepcopy(init_cfg))

    official = WaveViT(TINY)
    torch.manual_seed(5)
    official.init_weights()
    changed = 0
    own, before = model.state_dict(), official.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(own[name], value), name
        changed += not torch.equal(own[name], before[name])
    assert changed > 0  # the init_cfg was not ignored


def test_constant_init_cfg_sets_every_convolution():
    """mmdet/mmseg users' ``init_cfg=dict(type='Constant', layer='Conv2d',
    val=0.5)``: every convolution weight, whatever its layout, and nothing
    else."""
    model = tiny(init_cfg=dict(type='Constant', layer='Conv2d', val=0.5))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 21
    assert all(bool((m.weight == 0.5).all()) for m in convs)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(m.weight.std() < 0.1 for m in linears)  # official, std .02


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
    torch.manual_seed(7)
    source = WaveViT(TINY)
    source.init_weights()
    path = tmp_path_factory.mktemp('weights') / 'tiny.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in
                                source.state_dict().items()}), path)
    return str(path), source.state_dict()


@pytest.mark.parametrize('init_cfg', [
    'list', 'list_after_initialiser', 'list_before_initialiser',
    'with_prefix'])
def test_pretrained_loads_strictly_wherever_it_stands(weights_file,
                                                      init_cfg):
    """mmseg test_mit.py::test_mit_init ('init_cfg loads pretrain'),
    mmpretrain test_swin_transformer.py::test_init_weights (the loaded
    weights equal the file's). mmengine applies Pretrained entries last,
    so they win over initialisers before or after them in the list."""
    path, expected = weights_file
    pretrained = dict(type='Pretrained', checkpoint=path)
    constant = dict(type='Constant', layer='LayerNorm', val=3.0)
    init_cfg = {
        'list': [pretrained],
        'list_after_initialiser': [constant, pretrained],
        'list_before_initialiser': [pretrained, constant],
        'with_prefix': [dict(pretrained, prefix='backbone.')],
    }[init_cfg]
    model = tiny(init_cfg=init_cfg)
    own = model.state_dict()
    assert own.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(own[name], value), name


@pytest.mark.parametrize('damage,problem', [
    ('missing', '1 backbone weights are missing from the file (e.g. '
     'stages.0.norm.weight)'),
    ('extra', '1 are not in the backbone (e.g. stages.0.norm.extra)')])
def test_pretrained_refuses_a_file_with_a_missing_or_extra_key(
        weights_file, tmp_path, damage, problem):
    """Strictly: one key too few or too many and nothing loads; the
    refusal names the key."""
    _, weights = weights_file
    state_dict = {f'backbone.{k}': v for k, v in weights.items()}
    if damage == 'missing':
        del state_dict['backbone.stages.0.norm.weight']
    else:
        state_dict['backbone.stages.0.norm.extra'] = torch.zeros(16)
    path = str(tmp_path / f'{damage}.pth')
    torch.save(dict(state_dict=state_dict), path)
    model = WaveViT(TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError) as error:
        model.init_weights()
    message = str(error.value)
    assert path in message and problem in message
    assert 'Nothing was loaded' in message


def test_pretrained_file_that_does_not_exist_is_an_error(tmp_path):
    """mmseg test_mit.py::test_mit_init ('Test loading a checkpoint from an
    non-existent file' raises OSError): never silently random."""
    model = WaveViT(TINY, init_cfg=[
        dict(type='Constant', layer='LayerNorm', val=1.0),
        dict(type='Pretrained', checkpoint=str(tmp_path / 'missing.pth'))])
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        model.init_weights()


# ------------------------------------------------- every module __call__ed

@pytest.mark.parametrize('arch', [TINY, 's'], ids=['tiny', 's'])
def test_forward_hooks_fire_on_every_submodule(arch):
    """What feature visualisers, activation statistics, quantization
    observers and mmcv's ``fuse_conv_bn`` rely on: each submodule runs
    through ``__call__``, so a forward hook on any of them fires."""
    model = WaveViT(arch).eval()
    fired = set()
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(
                lambda m, args, out, name=name: fired.add(name))
    outputs(model, image(32, 32))
    never = [name for name, m in model.named_modules() if name
             and name not in fired and not isinstance(m, nn.ModuleList)]
    assert never == []
    layers = sum(isinstance(m, LAYERS) for m in model.modules())
    assert layers == (188 if arch == 's' else 76)


def test_l1_pruning_of_the_convolutions_changes_the_output():
    """``torch.nn.utils.prune.l1_unstructured`` on every convolution: the
    output is the one of the model whose smallest 30% of each kernel
    are zeros."""
    model = tiny().eval()
    expected_model = copy.deepcopy(model)
    before = outputs(model, image())
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            prune.l1_unstructured(module, 'weight', amount=0.3)
    for module in expected_model.modules():
        if isinstance(module, nn.Conv2d):
            weight = module.weight.detach()
            count = round(0.3 * weight.numel())
            threshold = weight.abs().flatten().kthvalue(count).values
            with torch.no_grad():
                module.weight.mul_((weight.abs() > threshold).to(weight))
    got = outputs(model, image())
    assert_same_outputs(got, outputs(expected_model, image()))
    assert (got[-1] - before[-1]).abs().max() > 1e-3


def test_fuse_conv_bn_keeps_the_outputs():
    """mmdet tools/analysis_tools/benchmark.py --fuse-conv-bn (mmcv
    tests/test_cnn/test_fuse_conv_bn.py): every BatchNorm after a
    convolution is folded into it, and the outputs stay."""
    model = tiny().eval()
    for m in model.modules():  # statistics that are not the identity
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    want = outputs(model, image())
    fused = fuse_conv_bn(copy.deepcopy(model))
    assert not any(isinstance(m, _BatchNorm) for m in fused.modules())
    assert_same_outputs(outputs(fused, image()), want, atol=1e-4)


@pytest.mark.parametrize('parametrization',
                         ['weight_norm', 'spectral_norm'])
def test_weight_parametrizations_act_on_the_forward(parametrization):
    """``torch.nn.utils.parametrizations``: the forward uses the
    parametrized weights (weight norm starts at the same weights, spectral
    norm divides them by their largest singular value)."""
    model = tiny().eval()
    plain = copy.deepcopy(model)
    apply = getattr(parametrizations, parametrization)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            apply(module)
    plain_modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # reading the weight evaluates the parametrization
                plain_modules[name].weight.copy_(module.weight)
    got = outputs(model, image())
    assert_same_outputs(got, outputs(plain, image()), atol=1e-4)
    if parametrization == 'spectral_norm':
        original = outputs(tiny().eval(), image())
        assert (got[-1] - original[-1]).abs().max() > 1e-2


# ----------------------------------------------------------------- copies

@pytest.mark.parametrize('compile', [
    False, pytest.param(True, marks=pytest.mark.backbone_compile)],
    ids=['eager', 'compiled'])
def test_copies_keep_weights_and_settings(compile):
    """mmpretrain/mmdet models are deep-copied for EMA and pickled by
    ``torch.save(model)`` and multiprocessing: a model built with
    ``compile=True`` too, and the copy compiles its own stages."""
    model = tiny(compile=compile, out_indices=(1, 3))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
              torch.load(buffer, weights_only=False)]
    own = model.state_dict()
    for duplicate in copies:
        assert duplicate.out_indices == (1, 3)
        assert duplicate.stage_runner.options == (
            {} if compile else None)
        assert duplicate.stage_runner.compiled is None
        for name, value in duplicate.state_dict().items():
            assert torch.equal(own[name], value), name


@pytest.mark.backbone_compile
@pytest.mark.slow  # traces the backbone with dynamo
def test_copy_of_a_compiled_model_computes_the_same():
    """The copy traces its own stages (dynamo's eager backend keeps this
    test quick; the compiled backbone's own tests use inductor)."""
    model = tiny(compile=dict(backend='eager')).eval()
    duplicate = pickle.loads(pickle.dumps(model))
    assert duplicate.stage_runner.options == dict(backend='eager')
    want = outputs(tiny().eval(), image())
    assert_same_outputs(outputs(duplicate, image()), want)
    assert_same_outputs(outputs(model, image()), want)
