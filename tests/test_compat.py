"""wavevit_mm.compat: the package on a torch without the newer APIs.

The pinned torch has them all, so an older one is simulated by removing
them (``torch.library.custom_op``/``register_fake``/``register_autograd``,
torch 2.4; ``torch.compiler.is_exporting`` and ``torch.export.Dim.DYNAMIC``,
2.6; ``torch.compiler.is_compiling``, 2.3) before the package is imported,
in a fresh interpreter. A real torch 2.1 is ``make test-matrix``'s job.
"""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import ROOT, TINY
from wavevit_mm import WaveViT, compat
from wavevit_mm.errors import InputError
from wavevit_mm.tools.deployment import export_onnx, onnx_model

ODD_SIZE = (45, 61)  # odd at every stage


# removing an API simulates an older torch only where this one has it
has_is_exporting = pytest.mark.skipif(
    not hasattr(torch.compiler, 'is_exporting'),
    reason='simulating a torch without torch.compiler.is_exporting needs '
    'torch 2.6 or newer')
has_is_compiling = pytest.mark.skipif(
    not hasattr(torch.compiler, 'is_compiling'),
    reason='simulating a torch without torch.compiler.is_compiling needs '
    'torch 2.3 or newer')


@pytest.mark.onnx_export
def test_pinned_torch_has_every_api_of_the_onnx_export():
    assert compat.onnx_export_missing() == []
    compat.require_onnx_export()


@has_is_exporting
def test_export_without_the_newer_apis_is_refused_in_one_paragraph(
        monkeypatch, tmp_path):
    monkeypatch.delattr(torch.compiler, 'is_exporting')
    monkeypatch.delattr(torch.export.Dim, 'DYNAMIC')
    out = tmp_path / 'model.onnx'
    for export in (lambda: export_onnx('missing.py', 'missing.pth', out),
                   lambda: onnx_model(torch.nn.Identity(), (64, 64), True)):
        with pytest.raises(compat.TorchFeatureError) as error:
            export()
        message = str(error.value)
        assert isinstance(error.value, InputError)  # the tools' one line
        assert '\n' not in message
        assert message.startswith('Exporting to ONNX needs torch 2.6 or '
                                  'newer')
        assert (f'torch {torch.__version__} lacks torch.export.Dim.DYNAMIC, '
                f'torch.compiler.is_exporting.') in message
    assert not out.exists()


@pytest.mark.onnx_export
def test_torch_onnx_export_without_the_exporter_options_is_named(
        monkeypatch):
    def torch21_export(model, args, f, export_params=True, verbose=False,
                       opset_version=None, dynamic_axes=None):
        raise AssertionError('not to be called')
    monkeypatch.setattr(torch.onnx, 'export', torch21_export)
    assert compat.onnx_export_missing() == [
        'torch.onnx.export(dynamo=, custom_translation_table=, optimize=, '
        'external_data=)']


@has_is_compiling
def test_is_compiling_falls_back_to_dynamos_own(monkeypatch):
    """Before torch 2.3 there is no torch.compiler.is_compiling; dynamo's
    own function is then the one, False eagerly, True in a graph."""
    import torch._dynamo  # before: the pinned torch's imports the newer
    monkeypatch.delattr(torch.compiler, 'is_compiling')
    is_compiling = compat._is_compiling_function()
    assert is_compiling is torch._dynamo.is_compiling
    monkeypatch.undo()  # the pinned torch's dynamo calls the newer one

    def add_one_when_compiled(x):
        return x + 1 if is_compiling() else x

    x = torch.zeros(3)
    assert torch.equal(add_one_when_compiled(x), x)
    torch._dynamo.reset()
    compiled = torch.compile(add_one_when_compiled, backend='eager',
                             fullgraph=True)
    assert torch.equal(compiled(x), x + 1)


@has_is_exporting
def test_is_exporting_without_torch_support_is_never(monkeypatch):
    monkeypatch.delattr(torch.compiler, 'is_exporting')
    assert compat._is_exporting_function()() is False


def test_compiling_the_backbone_without_custom_op_is_refused(monkeypatch):
    monkeypatch.setattr(compat, 'has_custom_ops', lambda: False)
    WaveViT(TINY)  # not compiled: built as on any torch
    with pytest.raises(compat.TorchFeatureError) as error:
        WaveViT(TINY, compile=True)
    message = str(error.value)
    assert isinstance(error.value, InputError) and '\n' not in message
    assert message.startswith('Compiling the backbone (compile=True, '
                              '--compile) needs torch 2.4 or newer')
    assert f'torch {torch.__version__} lacks' in message


# Run in a fresh interpreter where torch lacks the newer APIs: the import,
# the backbone's forward and backward (odd sizes, with_cp, a frozen stage)
# equal to what the pinned torch computed, the detection operators eagerly,
# torch.compile in one graph through the transforms, the export refused.
OLDER_TORCH = textwrap.dedent('''
    import sys
    import torch
    import torch.export
    # what the package imports from others first: the pinned torch's own
    # modules use the APIs removed below
    import mmcv.ops, mmdet.models, mmengine.runner, mmseg.models  # noqa
    import pytorch_wavelets, torch._dynamo  # noqa
    DIM = getattr(torch.export, 'Dim', None)
    HIDDEN = [(owner, name) for owner, name in [
        (torch.library, 'custom_op'), (torch.library, 'register_fake'),
        (torch.library, 'register_autograd'),
        (torch.compiler, 'is_exporting'), (DIM, 'DYNAMIC')]
        if hasattr(owner, name)]  # an older torch has none of them
    KEPT = [getattr(owner, name) for owner, name in HIDDEN]

    def hide():
        for owner, name in HIDDEN:
            delattr(owner, name)

    def restore():  # the pinned torch's own code calls them at run time
        for (owner, name), value in zip(HIDDEN, KEPT):
            setattr(owner, name, value)

    hide()
    import wavevit_mm
    from mmcv.ops import nms as mmcv_nms
    from wavevit_mm import WaveViT, compat
    from wavevit_mm.ops import detection, haar_dwt2d, haar_idwt2d, wavelet
    restore()

    assert not wavelet._OPERATORS, 'the operators were registered'
    assert not hasattr(detection.nms, 'register_fake')
    saved = torch.load(sys.argv[1])
    model = WaveViT(saved['arch'], drop_path_rate=0.0, with_cp=True,
                    frozen_stages=1).double().train()
    model.load_state_dict(saved['state'])
    x = saved['image'].clone().requires_grad_()
    outs = model(x)
    sum((o * w).sum() for o, w in zip(outs, saved['weights'])).backward()
    tight = dict(atol=1e-12, rtol=1e-12)
    for out, expected in zip(outs, saved['outs']):
        torch.testing.assert_close(out, expected, **tight)
    torch.testing.assert_close(x.grad, saved['grad'], **tight)
    for name, param in model.named_parameters():
        expected = saved['param_grads'][name]
        assert (param.grad is None) == (expected is None), name
        if expected is not None:
            torch.testing.assert_close(param.grad, expected, **tight)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, saved['buffers'][name], **tight)

    boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30],
                          [0, 0, 9, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.05])
    keep = torch.ops.wavevit_mm.nms(boxes, scores, 0.5, 0.1)
    assert keep.tolist() == [0, 2], keep
    _, expected = mmcv_nms(boxes[:3], scores[:3], 0.5)
    assert keep.tolist() == expected.tolist()

    def round_trip(x):
        bands = haar_dwt2d(torch.relu(x))
        return haar_idwt2d(bands * 2, x.shape[2:])
    image = torch.randn(1, 2, 9, 7, dtype=torch.float64)
    compiled = torch.compile(round_trip, backend='eager', fullgraph=True)
    torch.testing.assert_close(compiled(image), 2 * torch.relu(image))

    assert compat.is_exporting is not getattr(torch.compiler,
                                              'is_exporting', None)
    hide()
    try:
        compat.require_onnx_export()
    except compat.TorchFeatureError as error:
        print(error)
    else:
        raise AssertionError('the export was not refused')
''')


def _pinned_results(path):
    torch.manual_seed(0)
    model = WaveViT(TINY, drop_path_rate=0.0, with_cp=True,
                    frozen_stages=1).double().train()
    state = copy.deepcopy(model.state_dict())
    image = torch.randn(1, 3, *ODD_SIZE, dtype=torch.float64)
    weights = [torch.randn(o.shape, dtype=torch.float64)
               for o in model.eval()(image)]
    model.train()
    x = image.clone().requires_grad_()
    outs = model(x)
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    torch.save(dict(
        arch=TINY, state=state, image=image, weights=weights,
        outs=[o.detach() for o in outs], grad=x.grad,
        param_grads={n: p.grad for n, p in model.named_parameters()},
        buffers=dict(model.named_buffers())), path)


@pytest.mark.slow
def test_package_on_a_torch_without_the_newer_apis(tmp_path):
    saved = str(tmp_path / 'pinned.pth')
    _pinned_results(saved)
    result = subprocess.run(
        [sys.executable, '-c', OLDER_TORCH, saved], cwd=ROOT,
        capture_output=True, text=True,
        env={**os.environ, 'PYTHONPATH': ROOT, 'PYTHONWARNINGS': 'ignore'})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith(
        'Exporting to ONNX needs torch 2.6 or newer (torch.export with '
        'dynamic sizes and its ONNX exporter); torch ')
    assert ('lacks torch.export.Dim.DYNAMIC, torch.compiler.is_exporting, '
            'torch.library.custom_op') in result.stdout
