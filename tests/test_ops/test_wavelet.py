"""wavevit_mm.ops.wavelet: DWT2D / IDWT2D against pytorch_wavelets, the
oracle.

Every test runs twice: with the compiled CPU kernels and with the
pure-PyTorch formulation (used on GPUs and where the kernels are not built).
"""
import importlib.machinery
import uuid
import warnings

import pytest
import torch
from pytorch_wavelets import DWTForward, DWTInverse

from wavevit_mm import compat
from wavevit_mm.ops import DWT2D, IDWT2D, haar_dwt2d, haar_idwt2d, wavelet

needs_custom_ops = pytest.mark.skipif(
    not compat.has_custom_ops(),
    reason='torch.library.custom_op needs torch 2.4 or newer')


@pytest.fixture(autouse=True, params=['compiled', 'pytorch'])
def implementation(request, monkeypatch):
    if request.param == 'compiled':
        assert wavelet.compiled_haar_available(), (
            'the compiled Haar kernels are not built; install with '
            '`pip install --no-build-isolation -e .`')
    else:
        monkeypatch.setattr(wavelet, '_compiled', None)
    return request.param

SHAPES = [(2, 3, 8, 10), (1, 5, 7, 9), (2, 4, 6, 1), (1, 2, 1, 1),
          (2, 16, 50, 76), (1, 3, 33, 47)]


def in_float64(transform, **kwargs):
    """pytorch_wavelets makes its filters in the default dtype; made in
    float32, 1/sqrt(2) is rounded 1.7e-8 off, which float64 comparisons at
    torch's 1e-7 tolerance would see."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return transform(**kwargs)
    finally:
        torch.set_default_dtype(default)


def oracle_dwt(x, wave='haar'):
    dwt = in_float64(DWTForward, J=1, wave=wave, mode='zero')
    low, (high, ) = dwt.to(x)(x)
    return torch.cat([low, high[:, :, 0], high[:, :, 1], high[:, :, 2]], 1)


def oracle_idwt(y, wave='haar'):
    c = y.shape[1] // 4
    high = torch.stack([y[:, c * k:c * (k + 1)] for k in (1, 2, 3)], dim=2)
    idwt = in_float64(DWTInverse, wave=wave, mode='zero')
    return idwt.to(y)((y[:, :c], [high]))


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_dwt_matches_pytorch_wavelets(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    out = DWT2D()(x)
    expected = oracle_dwt(x)
    assert out.shape == (shape[0], 4 * shape[1], (shape[2] + 1) // 2,
                         (shape[3] + 1) // 2)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_idwt_matches_pytorch_wavelets(shape, dtype):
    y = torch.randn(shape[0], 4 * shape[1], shape[2], shape[3], dtype=dtype)
    out = IDWT2D()(y)
    assert out.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(out, oracle_idwt(y), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('shape', SHAPES)
def test_idwt_reconstructs_dwt_input(shape):
    x = torch.randn(shape, dtype=torch.float64)
    rec = IDWT2D()(DWT2D()(x))
    torch.testing.assert_close(rec[..., :shape[2], :shape[3]], x)
    # the zero padding of odd sizes comes back as zeros
    assert rec[..., shape[2]:, :].abs().sum() < 1e-12
    assert rec[..., :, shape[3]:].abs().sum() < 1e-12


def test_bfloat16_stays_bfloat16_and_close_to_float64():
    x = torch.randn(2, 8, 12, 14, dtype=torch.float64)
    y = DWT2D()(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), oracle_dwt(x), atol=3e-2,
                               rtol=2e-2)
    z = IDWT2D()(y)
    assert z.dtype == torch.bfloat16
    torch.testing.assert_close(z.double(), x, atol=6e-2, rtol=3e-2)


@pytest.mark.parametrize('shape', [(2, 3, 6, 4), (1, 2, 5, 7)])
def test_dwt_gradients(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(haar_dwt2d, (x, ))
    assert torch.autograd.gradgradcheck(haar_dwt2d, (x, ))
    # the same gradient as the oracle's autograd
    weight = torch.randn(oracle_dwt(x).shape, dtype=torch.float64)
    (grad, ) = torch.autograd.grad((haar_dwt2d(x) * weight).sum(), x)
    (expected, ) = torch.autograd.grad((oracle_dwt(x) * weight).sum(), x)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize('shape', [(2, 12, 3, 4), (1, 8, 5, 1)])
def test_idwt_gradients(shape):
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(haar_idwt2d, (y, ))
    assert torch.autograd.gradgradcheck(haar_idwt2d, (y, ))
    weight = torch.randn(shape[0], shape[1] // 4, 2 * shape[2], 2 * shape[3],
                         dtype=torch.float64)
    (grad, ) = torch.autograd.grad((haar_idwt2d(y) * weight).sum(), y)
    (expected, ) = torch.autograd.grad((oracle_idwt(y) * weight).sum(), y)
    torch.testing.assert_close(grad, expected)


def test_channels_last_input_keeps_its_layout():
    x = torch.randn(2, 10, 12, 6).permute(0, 3, 1, 2)  # channels-last view
    y = DWT2D()(x)
    torch.testing.assert_close(y, oracle_dwt(x.contiguous()),
                               atol=1e-6, rtol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    z = IDWT2D()(y)
    assert z.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(z, x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('shape', [(2, 3, 7, 5), (1, 4, 1, 6), (2, 6, 8, 8)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_idwt_crops_to_the_dwt_input_size(shape, channels_last):
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rec = IDWT2D()(DWT2D()(x), output_size=shape[2:])
    assert rec.shape == shape
    torch.testing.assert_close(rec, x)
    with pytest.raises(ValueError, match='does not fit bands'):
        IDWT2D()(DWT2D()(x), output_size=(shape[2] + 2, shape[3]))


@pytest.mark.parametrize('shape', [(2, 5, 7, 9), (1, 16, 12, 10)])
def test_channels_last_odd_sizes_and_gradients(shape):
    x = torch.randn(shape, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    y = haar_dwt2d(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, oracle_dwt(x.detach().contiguous()))
    weight = torch.randn(y.shape, dtype=torch.float64)
    (grad, ) = torch.autograd.grad((y * weight).sum(), x)
    x_ref = x.detach().contiguous().requires_grad_()
    (expected, ) = torch.autograd.grad((oracle_dwt(x_ref) * weight).sum(),
                                       x_ref)
    torch.testing.assert_close(grad, expected)


def test_float16_keeps_its_dtype():
    x = torch.randn(1, 4, 6, 8)
    y = DWT2D()(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), oracle_dwt(x), atol=1e-2,
                               rtol=1e-2)


def test_empty_batch():
    x = torch.randn(0, 3, 8, 8)
    assert DWT2D()(x).shape == (0, 12, 4, 4)
    assert IDWT2D()(DWT2D()(x)).shape == (0, 3, 8, 8)


def test_other_strided_input():
    x = torch.randn(2, 3, 16, 20)[:, :, ::2, 1:13]
    torch.testing.assert_close(DWT2D()(x), oracle_dwt(x.contiguous()),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('wave', ['db2', 'sym3'])
def test_other_wavelets_delegate_to_pytorch_wavelets(wave):
    x = torch.randn(2, 3, 16, 20, dtype=torch.float64)
    y = DWT2D(wave).double()(x)
    torch.testing.assert_close(y, oracle_dwt(x, wave))
    torch.testing.assert_close(IDWT2D(wave).double()(y), oracle_idwt(y, wave))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match='4\\*C channels'):
        IDWT2D()(torch.randn(1, 6, 4, 4))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        DWT2D()(torch.randn(3, 8, 8))


@needs_custom_ops
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('shape', [(2, 3, 6, 4), (1, 2, 5, 7)])
def test_transforms_are_registered_operators(shape, channels_last):
    # torch.library's own checks: schema, fake (meta) kernel with the real
    # output's shape and strides, autograd registration
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, dtype=torch.float64).contiguous(
        memory_format=layout).requires_grad_()
    torch.library.opcheck(torch.ops.wavevit_mm.haar_dwt2d.default, (x, ))
    bands = torch.randn(shape[0], 4 * shape[1], (shape[2] + 1) // 2,
                        (shape[3] + 1) // 2, dtype=torch.float64).contiguous(
                            memory_format=layout).requires_grad_()
    for size in (None, list(shape[2:])):
        torch.library.opcheck(torch.ops.wavevit_mm.haar_idwt2d.default,
                              (bands, size))


@pytest.mark.parametrize('channels_last', [False, True])
def test_compiled_transforms_match_pytorch_wavelets(implementation,
                                                    channels_last):
    """torch.compile (inductor) of a DWT, a scaling and a cropping IDWT in
    one graph. With the one-pass kernels the graph calls the operators;
    without (as on a GPU) it holds element-wise operations that inductor
    fuses with the scaling."""
    graphs = []

    def inductor_recording(graph_module, example_inputs):
        graphs.append(graph_module)
        return torch._inductor.compile(graph_module, example_inputs)

    def round_trip(x):
        bands = haar_dwt2d(torch.relu(x))
        return bands, haar_idwt2d(bands * 2, x.shape[2:])

    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64).contiguous(
        memory_format=layout).requires_grad_()
    torch._dynamo.reset()
    bands, image = torch.compile(round_trip, fullgraph=True,
                                 backend=inductor_recording)(x)
    expected_bands = oracle_dwt(torch.relu(x))
    expected_image = oracle_idwt(expected_bands * 2)[..., :9, :7]
    torch.testing.assert_close(bands, expected_bands)
    torch.testing.assert_close(image, expected_image)
    weights = torch.randn_like(bands), torch.randn_like(image)
    grad, expected = (torch.autograd.grad(
        (b * weights[0]).sum() + (i * weights[1]).sum(), x)[0]
        for b, i in ((bands, image), (expected_bands, expected_image)))
    torch.testing.assert_close(grad, expected)
    (graph, ) = graphs
    operators = {str(node.target) for node in graph.graph.nodes
                 if 'wavevit_mm' in str(node.target)}
    if implementation == 'compiled' and wavelet._OPERATORS:
        assert operators == {'wavevit_mm.haar_dwt2d.default',
                             'wavevit_mm.haar_idwt2d.default'}
    else:  # and where torch has no custom_op
        assert operators == set()


@pytest.fixture
def autograd_functions(monkeypatch):
    """The transforms as on a torch without torch.library.custom_op."""
    def not_called(*args):
        raise AssertionError('an operator was called')
    monkeypatch.setattr(wavelet, '_OPERATORS', False)
    monkeypatch.setattr(wavelet, '_dwt_op', not_called, raising=False)
    monkeypatch.setattr(wavelet, '_idwt_op', not_called, raising=False)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('shape', [(2, 3, 6, 4), (1, 2, 5, 7)])
def test_autograd_functions_without_custom_op(autograd_functions, shape,
                                              channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, dtype=torch.float64).contiguous(
        memory_format=layout).requires_grad_()
    bands = haar_dwt2d(x)
    torch.testing.assert_close(bands, oracle_dwt(x.detach()))
    assert bands.is_contiguous(memory_format=layout)
    image = haar_idwt2d(bands, shape[2:])
    torch.testing.assert_close(image, x.detach())
    assert image.is_contiguous(memory_format=layout)
    assert torch.autograd.gradcheck(haar_dwt2d, (x, ))
    assert torch.autograd.gradgradcheck(haar_dwt2d, (x, ))
    y = bands.detach().requires_grad_()
    for size in (None, shape[2:]):
        assert torch.autograd.gradcheck(haar_idwt2d, (y, size))
        assert torch.autograd.gradgradcheck(haar_idwt2d, (y, size))
    weight = torch.randn(oracle_dwt(x.detach()).shape, dtype=torch.float64)
    (grad, ) = torch.autograd.grad((haar_dwt2d(x) * weight).sum(), x)
    x_ref = x.detach().contiguous().requires_grad_()
    (expected, ) = torch.autograd.grad((oracle_dwt(x_ref) * weight).sum(),
                                       x_ref)
    torch.testing.assert_close(grad, expected)


def test_autograd_functions_compile_in_one_graph(autograd_functions):
    """Without custom_op, torch.compile traces the element-wise form."""
    def round_trip(x):
        bands = haar_dwt2d(torch.relu(x))
        return bands, haar_idwt2d(bands * 2, x.shape[2:])

    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    torch._dynamo.reset()
    bands, image = torch.compile(round_trip, fullgraph=True,
                                 backend='eager')(x)
    torch.testing.assert_close(bands, oracle_dwt(torch.relu(x)))
    torch.testing.assert_close(image, 2 * torch.relu(x))


def _package(root, name, files):
    package = root / name
    package.mkdir()
    (package / '__init__.py').write_text('')
    for filename, content in files.items():
        (package / filename).write_bytes(content)
    return name


def _load_with_warnings(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        module = wavelet._load_compiled(name)
    return module, [str(w.message) for w in caught]


def test_the_built_kernels_are_for_this_torch():
    module, warned = _load_with_warnings('wavevit_mm.ops._haar')
    assert module is not None and warned == []
    assert module.torch_version() == torch.__version__


def test_kernels_built_for_another_torch_fall_back_with_one_warning(
        tmp_path, monkeypatch):
    """A stale in-place build: the pure-PyTorch transforms instead, said
    once; not built at all: silence."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    # a name of its own: a package imported by another run of this test
    # stays in sys.modules
    name = _package(tmp_path, f'stale_build_{uuid.uuid4().hex}', {
        '_other_torch.py': b"def torch_version():\n    return '1.13.1+cu117'\n",
        '_unmarked.py': b'def haar_dwt2d(x):\n    return x\n',
        f'_unloadable{suffix}': b'not a shared object',
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    module, warned = _load_with_warnings(f'{name}._other_torch')
    assert module is None
    (message, ) = warned
    assert message.startswith(
        f'The compiled Haar transforms ({name}._other_torch) are not used: '
        f'it was built for torch 1.13.1+cu117, and this is torch '
        f'{torch.__version__}. The pure-PyTorch transforms compute the same')
    module, warned = _load_with_warnings(f'{name}._unmarked')
    assert module is None and len(warned) == 1
    assert 'built for torch unknown' in warned[0]
    module, warned = _load_with_warnings(f'{name}._unloadable')
    assert module is None and len(warned) == 1
    assert 'it does not load (' in warned[0]
    assert _load_with_warnings(f'{name}._not_built') == (None, [])


class HaarRoundTrip(torch.nn.Module):
    """A DWT and the IDWT of its bands, cropped back to the input size."""

    def __init__(self):
        super().__init__()
        self.dwt, self.idwt = DWT2D(), IDWT2D()

    def forward(self, x):
        bands = self.dwt(x)
        return bands, self.idwt(bands * 2, x.shape[2:])


@pytest.mark.onnx_export  # skipped where torch cannot export
@pytest.mark.slow
def test_transforms_export_to_onnx_and_run_at_any_size(tmp_path):
    """Exported once at an even size with dynamic sizes (torch.onnx's
    default exporter), the transforms run in ONNX Runtime at odd and even
    sizes as pytorch_wavelets computes them: no custom operator in the
    file, and the padding and cropping follow the input size."""
    import onnx
    import onnxruntime
    dim = torch.export.Dim
    path = str(tmp_path / 'haar.onnx')
    program = torch.export.export(
        HaarRoundTrip(), (torch.randn(2, 3, 16, 20), ),
        dynamic_shapes=({0: dim.DYNAMIC, 2: dim.DYNAMIC, 3: dim.DYNAMIC}, ))
    torch.onnx.export(program, f=path, dynamo=True, input_names=['x'],
                      output_names=['bands', 'image'])
    domains = {node.domain for node in onnx.load(path).graph.node}
    assert not any('wavevit' in domain for domain in domains)
    session = onnxruntime.InferenceSession(path)
    for shape in [(2, 3, 16, 20), (1, 3, 7, 9), (3, 3, 33, 46),
                  (1, 3, 50, 75)]:
        x = torch.randn(shape)
        bands, image = session.run(None, {'x': x.numpy()})
        expected_bands = oracle_dwt(x)
        torch.testing.assert_close(torch.from_numpy(bands), expected_bands,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(image), 2 * x,
                                   atol=1e-5, rtol=1e-5)
