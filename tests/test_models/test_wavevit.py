"""wavevit_mm.models.wavevit, the WaveViT backbone: architecture, fidelity
to the official network, both Haar implementations, reduced precision,
training switches."""
import copy
import types
import warnings

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import TINY
from official_layout import (backbone_state_dict, official_stage_outputs,
                             official_state_dict)
from wavevit_mm import WaveViT
from wavevit_mm.ops import wavelet

DIMS = {'s': (64, 128, 320, 448), 'b': (64, 128, 320, 512),
        'l': (96, 192, 384, 512)}


def trainable_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('arch,millions', [('s', 19.38), ('b', 29.34),
                                           ('l', 53.30)])
def test_parameter_count_matches_paper(arch, millions):
    assert round(trainable_params(WaveViT(arch)) / 1e6, 2) == millions


@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_four_maps_at_strides_4_to_32(arch):
    model = WaveViT(arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(DIMS[arch], (4, 8, 16, 32))]


@pytest.mark.parametrize('shape', [
    (1, 3, 33, 47), pytest.param((2, 3, 511, 767), marks=pytest.mark.slow),
    (1, 3, 17, 23), (1, 3, 1, 1), (1, 3, 16, 500)])
def test_any_input_size(shape):
    model = WaveViT('s').eval()
    with torch.no_grad():
        outs = model(torch.randn(shape))
    height, width = shape[2:]
    for out, dim in zip(outs, DIMS['s']):
        height, width = (height + 1) // 2, (width + 1) // 2
        if out is outs[0]:
            height, width = (height + 1) // 2, (width + 1) // 2
        assert out.shape == (shape[0], dim, height, width)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('arch,size', [
    ('s', (64, 96)), pytest.param('b', (64, 64), marks=pytest.mark.slow),
    pytest.param('l', (32, 64), marks=pytest.mark.slow)])
def test_same_weights_give_official_feature_maps(arch, size):
    """Official-layout weights, converted, reproduce the official network's
    four stage outputs (fp32 eval vs an fp64 reference implementation)."""
    official = official_state_dict(arch, seed=1)
    model = WaveViT(arch).eval()
    model.load_state_dict(backbone_state_dict(arch, seed=1), strict=True)
    image = torch.randn(2, 3, *size,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = model(image)
    expected = official_stage_outputs(official, arch, image)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out.double(), ref, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize('size', [(33, 47), (97, 131)])
def test_odd_sizes_give_the_reference_networks_feature_maps(size):
    """At sizes the official code cannot take, the backbone gives the four
    stage outputs of the reference network (float64 both; 1e-14 apart,
    measured), which zero-pads an odd map at the bottom/right before each
    DWT, crops the inverse and pads the bands to a multiple of the
    reduction ratio."""
    official = official_state_dict('s', seed=1)
    model = WaveViT('s').double().eval()
    model.load_state_dict(backbone_state_dict('s', seed=1), strict=True)
    image = torch.randn(1, 3, *size, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = model(image)
    expected = official_stage_outputs(official, 's', image)
    assert len(outs) == len(expected) == 4
    for out, ref in zip(outs, expected):
        assert out.dtype == torch.float64 and out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_outputs_are_contiguous_nchw():
    """mmcv's CPU RoIAlign reads raw NCHW memory: a channels-last view
    would give the RoI heads scrambled features."""
    from mmcv.ops import roi_align
    model = WaveViT(TINY).eval()
    rois = torch.tensor([[0., 2., 3., 10., 12.]])
    for out in model(torch.randn(1, 3, 64, 64)):
        assert out.is_contiguous()
        pooled = roi_align(out, rois, (3, 3), 0.25, 2, 'avg', True)
        expected = roi_align(out.clone(memory_format=torch.contiguous_format),
                             rois, (3, 3), 0.25, 2, 'avg', True)
        torch.testing.assert_close(pooled, expected)


def test_explicit_attention_gives_the_same_outputs():
    fused = WaveViT(TINY).eval()
    explicit = WaveViT(TINY, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(fused(image), explicit(image)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_inference_and_autograd_forward_agree():
    """Inference (no autograd) gives the maps the autograd forward gives,
    and the autograd forward back-propagates."""
    model = WaveViT(TINY).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        inference = model(image)
    tracked = model(image)
    sum(o.sum() for o in tracked).backward()
    for a, b in zip(inference, tracked):
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)
    assert model.stages[0].blocks[0].mlp.fc1.weight.grad is not None


def test_no_attention_matrix_is_kept_for_backward():
    """Fused attention saves (N, d)-sized tensors, never (N, M) scores."""
    model = WaveViT(TINY).train()
    tokens_stage3 = (128 // 16) * (160 // 16)

    def largest_square(fused_attn):
        model.apply(lambda m: setattr(m, 'fused_attn', fused_attn)
                    if hasattr(m, 'fused_attn') else None)
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(1, 3, 128, 160))
        return any(len(s) >= 2 and s[-1] == s[-2] == tokens_stage3
                   for s in shapes)
    assert largest_square(False)   # the check sees explicit score matrices
    assert not largest_square(True)


def test_bfloat16_autocast_close_to_float32():
    """With the backbone's own initialisation (PyTorch's defaults give
    near-degenerate features, 15-37% apart in bfloat16), the stages stay
    within about 1.5% of float32 (measured over seeds 0-3)."""
    torch.manual_seed(0)
    model = WaveViT(TINY)
    model.init_weights()
    model.eval()
    image = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        reference = model(image)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            mixed = model(image)
    for ref, out in zip(reference, mixed):
        assert out.dtype == torch.bfloat16
        error = (out.float() - ref).abs().max() / ref.abs().max()
        assert error < 0.03
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = sum(o.float().square().mean() for o in model(image))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters()
               if p.grad is not None)


def _cpu_float16_autocast() -> bool:
    """Whether this torch autocasts to float16 on the CPU."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with torch.autocast('cpu', dtype=torch.float16):
                return torch.mm(torch.ones(1, 1),
                                torch.ones(1, 1)).dtype == torch.float16
    except RuntimeError:  # "AutocastCPU only support Bfloat16"
        return False


@pytest.mark.skipif(not _cpu_float16_autocast(),
                    reason='float16 autocast on the CPU needs a newer torch '
                    '(not in 2.1 or 2.2)')
def test_float16_autocast_runs_in_float16_close_to_float32():
    """torch.autocast('cpu', dtype=torch.float16): convolutions, linear
    layers, attention and the wavelet transforms run in float16, weights
    stay float32. float16 keeps 11 significant bits (bfloat16: 8), so each
    rounding is within 2**-11 of the value; the maps differ from float32
    by a few such roundings of their largest value (about 2.5 measured),
    and by less than 8: 0.4%, where bfloat16 gives about 1%."""
    torch.manual_seed(0)
    model = WaveViT(TINY).eval()
    image = torch.randn(2, 3, 96, 128)
    attention = model.stages[0].blocks[0].attn
    dtypes = {}

    def record(name):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else out  # stem: (x, hw)
            dtypes.setdefault(name, (args[0].dtype, out.dtype))
        return hook
    for name, module in [('stem', model.stem), ('query', attention.q),
                         ('dwt', attention.dwt), ('idwt', attention.idwt),
                         ('global_attention', model.stages[3].blocks[0].attn),
                         ('ffn', model.stages[2].blocks[0].mlp.fc2)]:
        module.register_forward_hook(record(name))
    with torch.no_grad():
        reference = model(image)
        dtypes.clear()
        with torch.autocast('cpu', dtype=torch.float16):
            mixed = model(image)
    assert dtypes == {
        'stem': (torch.float32, torch.float16),  # the image comes as is
        **{name: (torch.float16, torch.float16) for name in (
            'query', 'dwt', 'idwt', 'global_attention', 'ffn')}}
    for ref, out in zip(reference, mixed):
        assert out.dtype == torch.float16
        assert torch.isfinite(out).all()
        error = (out.float() - ref).abs().max() / ref.abs().max()
        assert error < 8 * 2**-11
    model.train()
    with torch.autocast('cpu', dtype=torch.float16):
        loss = sum(o.float().square().mean() for o in model(image))
    loss.backward()
    for param in model.parameters():
        assert param.dtype == torch.float32
        if param.grad is not None:
            assert param.grad.dtype == torch.float32
            assert torch.isfinite(param.grad).all()


def _counting(compiled, calls):
    """The compiled kernels, counting their calls."""
    def counted(name):
        def kernel(*args):
            calls.append(name)
            return getattr(compiled, name)(*args)
        return kernel
    return types.SimpleNamespace(haar_dwt2d=counted('haar_dwt2d'),
                                 haar_idwt2d=counted('haar_idwt2d'))


@pytest.mark.parametrize('size', [(64, 96), (33, 47)])
def test_pure_pytorch_haar_path_gives_the_compiled_results(monkeypatch,
                                                           size):
    """The whole backbone on the two Haar implementations (the compiled CPU
    kernels; the strided-slicing formulation used on GPUs and where the
    kernels are not built): the same maps, input and weight gradients, in
    float64 to 1e-12, odd sizes at every stage included."""
    assert wavelet.compiled_haar_available(), (
        'the compiled Haar kernels are not built; install with '
        '`pip install --no-build-isolation -e .`')
    torch.manual_seed(0)
    model = WaveViT(TINY, drop_path_rate=0.0).double().train()
    image = torch.randn(2, 3, *size, dtype=torch.float64)
    weights = [torch.randn(o.shape, dtype=torch.float64)
               for o in model(image)]

    def forward_backward():
        net = copy.deepcopy(model)
        x = image.clone().requires_grad_()
        outs = net(x)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        return outs, x.grad, {n: p.grad for n, p in net.named_parameters()}
    calls = []
    monkeypatch.setattr(wavelet, '_compiled',
                        _counting(wavelet._compiled, calls))
    outs_c, grad_c, params_c = forward_backward()
    # TINY's 3 wavelet-attention blocks: a DWT and an IDWT each, forward
    # and (as each other's gradients) backward
    assert calls.count('haar_dwt2d') == calls.count('haar_idwt2d') == 6
    monkeypatch.setattr(wavelet, '_compiled', None)
    outs_p, grad_p, params_p = forward_backward()
    tight = dict(atol=1e-12, rtol=1e-12)
    for a, b in zip(outs_c, outs_p):
        torch.testing.assert_close(a, b, **tight)
    torch.testing.assert_close(grad_c, grad_p, **tight)
    assert set(params_c) == set(params_p)
    for name, grad in params_c.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, params_p[name], msg=name, **tight)


def test_out_indices_selects_stages():
    model = WaveViT(TINY, out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64]


def test_without_final_norm_the_last_stage_leaves_its_tokens_unnormed():
    """final_norm=False (the classifier's backbone) drops the last stage's
    LayerNorm and nothing else."""
    full = WaveViT(TINY).eval()
    bare = WaveViT(TINY, final_norm=False).eval()
    weights = {k: v for k, v in full.state_dict().items()
               if not k.startswith('stages.3.norm.')}
    assert set(bare.state_dict()) == set(weights)
    bare.load_state_dict(weights)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = bare(image)[-1].permute(0, 2, 3, 1)
        want = full(image)[-1].permute(0, 2, 3, 1)
        torch.testing.assert_close(full.stages[3].norm(tokens), want)
    assert not torch.allclose(tokens, want, atol=1e-3)


def test_frozen_stages_freeze_stem_and_first_stages():
    model = WaveViT(TINY, frozen_stages=2)
    model.train()
    for i, stage in enumerate(model.stages):
        frozen = i < 2
        assert all(p.requires_grad != frozen for p in stage.parameters())
        assert all(m.training != frozen for m in stage.modules())
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is None for p in model.stages[0].parameters())
    assert all(p.grad is not None for p in model.stages[3].parameters())


def test_frozen_stem_only():
    model = WaveViT(TINY, frozen_stages=0).train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not model.stem.training
    assert all(p.requires_grad for p in model.stages[0].blocks.parameters())


def test_norm_eval_keeps_batchnorm_statistics():
    model = WaveViT(TINY, norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert norms and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    model(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    assert model.stages[2].training


def test_with_cp_same_outputs_gradients_and_statistics():
    torch.manual_seed(0)
    plain = WaveViT(TINY, drop_path_rate=0.2)
    plain.init_weights()
    checkpointed = WaveViT(TINY, drop_path_rate=0.2, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(2, 3, 64, 64)
    results = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(1)
        x = image.clone().requires_grad_()
        outs = model(x)
        sum((o * o).mean() for o in outs).backward()
        results.append((outs, x.grad,
                        {n: p.grad for n, p in model.named_parameters()},
                        copy.deepcopy(model.state_dict())))
    (outs_a, gx_a, grads_a, state_a), (outs_b, gx_b, grads_b, state_b) = \
        results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(gx_a, gx_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    # BatchNorm running statistics are updated once, not again on recompute
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], msg=name)


def test_with_cp_saves_activation_memory():
    """Checkpointed blocks keep only their inputs for backward."""
    def saved_bytes(with_cp):
        model = WaveViT(TINY, with_cp=with_cp).train()
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(2, 3, 128, 128))
        return total
    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_init_weights_follows_official_scheme():
    torch.manual_seed(0)
    model = WaveViT(TINY)
    model.init_weights()
    # truncated normal, std 0.02, estimated from 48 x 48 draws to 1.5%
    # (one standard error): within 10%
    linear = model.stages[2].blocks[0].attn.q
    assert linear.bias.abs().sum() == 0
    assert abs(linear.weight.std().item() - 0.02) < 0.002
    # He initialisation by fan-out: std sqrt(2 / (7 * 7 * 8)) = 0.071 over
    # 8 x 3 x 7 x 7 draws (standard error 2%); within 10%
    conv = model.stem.conv[0]
    fan_out = 7 * 7 * TINY['stem_width']
    assert abs(conv.weight.std().item() / (2 / fan_out)**0.5 - 1) < 0.1


@pytest.mark.parametrize('kwargs,message', [
    (dict(arch='xl'), "Unknown Wave-ViT arch 'xl'"),
    (dict(arch={**TINY, 'depths': [1, 1, 1]}), 'depths has 3'),
    (dict(arch={**TINY, 'num_heads': [3, 2, 3, 4]}),
     'stage 1 embed dim 16 is not divisible by its 3 heads'),
    (dict(arch={k: v for k, v in TINY.items() if k != 'sr_ratios'}),
     "missing \\['sr_ratios'\\]"),
    (dict(arch='s', out_indices=(0, 4)), 'out_indices must be'),
    (dict(arch='s', frozen_stages=5), 'frozen_stages must be in'),
])
def test_bad_config_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WaveViT(**kwargs)


def test_arch_presets_are_case_insensitive_and_not_shared():
    a = WaveViT('S')
    a.arch['depths'][0] = 99
    assert WaveViT('s').arch['depths'][0] == 3


@pytest.mark.backbone_compile
@pytest.mark.parametrize('mode,with_cp', [('eval', False), ('train', False),
                                          ('train', True)])
def test_backbone_traces_without_graph_breaks(mode, with_cp):
    model = getattr(WaveViT(TINY, drop_path_rate=0.1, with_cp=with_cp),
                    mode)()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 96))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.slow
@pytest.mark.backbone_compile
@pytest.mark.parametrize('with_cp,haar_kernels', [(False, True),
                                                  (True, True),
                                                  (False, False)])
def test_compiled_backbone_gives_the_eager_results(monkeypatch, with_cp,
                                                   haar_kernels):
    """Without the one-pass Haar kernels (as on a GPU) the compiled
    backbone traces the transforms as element-wise operations."""
    if not haar_kernels:
        monkeypatch.setattr(wavelet, '_compiled', None)
    torch.manual_seed(0)
    eager = WaveViT(TINY, with_cp=with_cp)
    compiled = WaveViT(TINY, with_cp=with_cp, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 70, 90, requires_grad=True)
    expected = eager(x)
    outputs = compiled(x)
    for want, got in zip(expected, outputs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    want = torch.autograd.grad(sum(o.square().mean() for o in expected), x)
    got = torch.autograd.grad(sum(o.square().mean() for o in outputs), x)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    # BatchNorm statistics updated once per step, recomputation or not
    compiled_buffers = dict(compiled.named_buffers())
    for name, buffer in eager.named_buffers():
        torch.testing.assert_close(compiled_buffers[name], buffer)
    # a deep copy (e.g. an EMA model) computes with its own weights and
    # leaves the original's alone
    twin = copy.deepcopy(compiled).eval()
    compiled.eval()
    with torch.no_grad():
        before = compiled(x)
        for parameter in twin.parameters():
            parameter.mul_(0.5)
        halved = twin(x)
        for want, got in zip(before, compiled(x)):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        eager.load_state_dict(twin.state_dict())
        for want, got in zip(eager.eval()(x), halved):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(halved[-1], before[-1], atol=1e-3)


def test_compile_setting_must_be_a_bool_or_torch_compile_arguments():
    with pytest.raises(TypeError, match='compile must be a bool or a dict'):
        WaveViT(TINY, compile='max-autotune')


def test_convolutions_work_on_channels_last_maps_without_copying_them():
    """Token maps are channels-last views: every convolution keeps that
    layout (no NCHW copy of an activation), and the depthwise and 1x1
    weights keep channels-last strides through loading and casting."""
    model = WaveViT(TINY).eval()
    model.load_state_dict(WaveViT(TINY).state_dict())  # loading keeps them
    model.half().float()
    layouts = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(
                lambda m, args, out, name=name: layouts.__setitem__(
                    name, out.is_contiguous(
                        memory_format=torch.channels_last)))
            if module.groups == module.in_channels or \
                    module.kernel_size == (1, 1):
                assert module.weight.stride()[1] == 1, name
            assert module.weight.is_contiguous(), name  # e.g. for pruning
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert len(layouts) == 21
    assert [name for name, last in layouts.items() if not last] == []


def test_initial_weights_do_not_depend_on_the_weight_layout():
    # depthwise and 1x1 weights have channels-last strides; drawn in NCHW
    # order, a seed gives the weights it gives an NCHW model
    nchw, model = WaveViT(TINY), WaveViT(TINY)
    for m in nchw.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight = torch.nn.Parameter(m.weight.detach().contiguous())
    torch.manual_seed(3)
    nchw.init_weights()
    torch.manual_seed(3)
    model.init_weights()
    own = model.state_dict()
    for name, value in nchw.state_dict().items():
        assert torch.equal(own[name], value), name
