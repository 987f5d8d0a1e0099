"""wavevit_mm.tools.deployment: each shipped model family's toy model
exported to ONNX, run in ONNX Runtime and compared with eager PyTorch
(mmdet's and mmseg's own ``predict``); the refusals, each one paragraph.
"""
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from mmseg.structures import SegDataSample

from helpers import ROOT
from deployment_models import (RETINANET_CONFIG, TOY_ARCH, TOY_SIZE,
                               assert_gives_mmdets_detections,
                               one_class_everywhere, run, save_checkpoint,
                               toy_one_stage_config)
from toy_runs import SEG_CONFIG
from wavevit_mm.errors import CheckpointError
from wavevit_mm.tools import predict_image
from wavevit_mm.tools.deployment import (ExportError, export_onnx,
                                        predict_image_onnx)
from wavevit_mm.tools.inference import draw_prediction, read_image


@pytest.fixture(scope='module')
def retinanet(tmp_path_factory):
    folder = tmp_path_factory.mktemp('retinanet')
    model = save_checkpoint(RETINANET_CONFIG, folder / 'model.pth')
    return model, str(folder / 'model.pth')


@pytest.mark.slow
@pytest.mark.parametrize('family', ['atss', 'gfl'])
def test_one_stage_detectors_give_mmdets_detections(family, tmp_path):
    """ATSS's and GFL's heads exported and decoded as RetinaNet's. At a
    fixed size: a dynamic export costs five times as much, and the dynamic
    sizes are the backbone's and the neck's, which the dynamic RetinaNet of
    tests/test_tools/test_deployment/test_deployment_scripts.py checks at odd sizes."""
    config = toy_one_stage_config(tmp_path, family)
    checkpoint = str(tmp_path / 'model.pth')
    model = save_checkpoint(config, checkpoint)
    out = str(tmp_path / 'model.onnx')
    report = export_onnx(config, checkpoint, out, TOY_SIZE,
                         log=lambda _: None)
    assert report.part == 'detector' and not report.dynamic
    # one check, at the export's size; top 100 unless the suppression
    # leaves fewer (GFL's, on this model)
    assert [c.size for c in report.checks] == [TOY_SIZE]
    (check, ) = report.checks
    assert check.passed and check.elements > 0
    assert check.detections[0] == check.detections[1] > 20

    # on another input: ONNX Runtime's raw outputs decoded by the head,
    # against mmdet's own predict() on the model
    assert_gives_mmdets_detections(model, out, TOY_SIZE)


@pytest.fixture(scope='module')
def upernet(tmp_path_factory):
    folder = tmp_path_factory.mktemp('upernet')
    model = save_checkpoint(SEG_CONFIG, folder / 'model.pth')
    return model, str(folder / 'model.pth')


@pytest.fixture(scope='module')
def upernet_file(upernet, tmp_path_factory):
    """The toy UperNet exported at its crop size over an earlier file."""
    model, checkpoint = upernet
    out = tmp_path_factory.mktemp('upernet_file') / 'upernet.onnx'
    out.write_bytes(b'an earlier export')
    report = export_onnx(SEG_CONFIG, checkpoint, str(out), force=True,
                         log=lambda _: None)
    return model, checkpoint, str(out), report


@pytest.mark.slow
def test_upernet_exports_at_its_crop_size_and_gives_mmsegs_classes(
        upernet_file):
    model, _, out, report = upernet_file
    assert report.part == 'segmentor' and not report.dynamic
    assert [c.size for c in report.checks] == [TOY_SIZE]

    x = torch.randn(1, 3, *TOY_SIZE)
    sample = SegDataSample(metainfo=dict(img_shape=TOY_SIZE,
                                         ori_shape=TOY_SIZE))
    with torch.no_grad():
        expected = model.predict(x, [sample])[0]
    logits = run(out, x)[0]
    torch.testing.assert_close(logits[0], expected.seg_logits.data,
                               atol=1e-4, rtol=1e-4)
    agreement = (logits.argmax(1)[0] == expected.pred_sem_seg.data[0])
    assert agreement.double().mean() >= 0.999
    with pytest.raises(Exception, match='dimensions|shape'):
        run(out, torch.randn(1, 3, 96, 160))  # the size is fixed


@pytest.mark.slow
def test_prediction_from_the_file_draws_what_the_checkpoint_draws(
        upernet_file, toy_workspace, tmp_path, warnings_logged):
    """What onnx_demo.py runs (predict_image_onnx, draw_prediction) on a
    toy ADE20K image, 128x128 as the file, against what image_demo.py runs
    on the checkpoint (predict_image): the same class at each pixel, the
    same picture."""
    _, checkpoint, out, _ = upernet_file
    val = toy_workspace / 'data' / 'toy_ade20k' / 'images' / 'validation'
    path = str(val / sorted(os.listdir(val))[0])
    image = read_image(path)
    found, model = predict_image_onnx(image, SEG_CONFIG, out)
    draw_prediction(model, image, found, str(tmp_path / 'onnx.png'))
    expected = predict_image(path, SEG_CONFIG, checkpoint,
                             str(tmp_path / 'pth.png'))
    assert found.pred_sem_seg.shape == expected.pred_sem_seg.shape == (
        128, 128)
    agreement = (found.pred_sem_seg.data == expected.pred_sem_seg.data)
    assert agreement.double().mean() >= 0.999
    drawn, reference = (cv2.imread(str(tmp_path / name))
                        for name in ('onnx.png', 'pth.png'))
    assert drawn.shape == reference.shape == image.shape
    assert np.mean(drawn != reference) < 5e-3
    assert not warnings_logged


@pytest.mark.slow
def test_a_smaller_image_is_padded_to_the_fixed_size_with_a_warning(
        upernet_file, toy_workspace, tmp_path, warnings_logged):
    """Stretched to 96x160, the image is 77x128 after the test pipeline:
    zero-padded to the file's 128x128, the logits cropped back to the
    image, and one warning says the padding changes the prediction."""
    val = toy_workspace / 'data' / 'toy_ade20k' / 'images' / 'validation'
    image = cv2.resize(read_image(str(val / sorted(os.listdir(val))[0])),
                       (160, 96))
    found, _ = predict_image_onnx(image, SEG_CONFIG, upernet_file[2])
    assert found.pred_sem_seg.shape == (96, 160)
    (warning, ) = warnings_logged
    assert warning.startswith('The image is 77x128 after the test pipeline '
                              'and the file was exported at 128x128: it is '
                              'zero-padded')
    assert '--shape 77 128' in warning


@pytest.mark.slow
def test_a_segmentor_that_gives_one_class_exports_and_draws(
        toy_workspace, tmp_path):
    """Class 0 at every pixel: the check compares the logits and the one
    class, the demo's prediction and drawing are made, all class 0."""
    checkpoint = str(tmp_path / 'model.pth')
    save_checkpoint(SEG_CONFIG, checkpoint, edit=one_class_everywhere)
    out = str(tmp_path / 'upernet.onnx')
    report = export_onnx(SEG_CONFIG, checkpoint, out, log=lambda _: None)
    (check, ) = report.checks
    assert check.passed and check.pixel_agreement == 1.
    assert check.max_rel < 1e-3 and check.elements > 0
    val = toy_workspace / 'data' / 'toy_ade20k' / 'images' / 'validation'
    image = read_image(str(val / sorted(os.listdir(val))[0]))
    found, model = predict_image_onnx(image, SEG_CONFIG, out)
    assert torch.all(found.pred_sem_seg.data == 0)
    draw_prediction(model, image, found, str(tmp_path / 'drawn.png'))
    assert cv2.imread(str(tmp_path / 'drawn.png')).shape == image.shape


@pytest.mark.slow
def test_dynamic_upernet_is_refused_explaining_the_pyramid_pooling(
        upernet, tmp_path):
    out = tmp_path / 'upernet.onnx'
    with pytest.raises(ExportError) as error:
        export_onnx(SEG_CONFIG, upernet[1], str(out), dynamic=True,
                    log=lambda _: None)
    message = str(error.value)
    assert 'pyramid pooling' in message and '--dynamic' in message
    assert 'nn.AdaptiveAvgPool2d to 2, 3, 6 cells' in message
    assert not out.exists()


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(upernet, tmp_path):
    out = tmp_path / 'model.onnx'
    with pytest.raises(CheckpointError, match='does not fit the model built '
                       'from the config'):
        export_onnx(RETINANET_CONFIG, upernet[1], str(out),
                    log=lambda _: None)
    assert not out.exists()


@pytest.mark.slow
def test_a_file_that_fails_its_check_is_not_left(retinanet, tmp_path,
                                                 monkeypatch):
    from wavevit_mm.tools.deployment import verification
    monkeypatch.setattr(verification, 'MAX_RELATIVE_DIFFERENCE', -1.)
    out = tmp_path / 'backbone.onnx'
    out.write_bytes(b'an earlier export')
    with pytest.raises(ExportError, match='does not reproduce PyTorch at '
                       '128x128'):
        export_onnx(RETINANET_CONFIG, retinanet[1], str(out), TOY_SIZE,
                    backbone_only=True, force=True, log=lambda _: None)
    assert os.listdir(tmp_path) == ['backbone.onnx']
    assert out.read_bytes() == b'an earlier export'


def test_missing_onnxruntime_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(ExportError) as error:
        export_onnx(RETINANET_CONFIG, 'model.pth', str(tmp_path / 'm.onnx'))
    message = str(error.value)
    assert 'pip install -e .[deploy]' in message
    assert 'onnxruntime' in message and '\n' not in message


def test_the_package_and_training_need_no_onnx():
    """With onnx, onnxscript and onnxruntime unimportable, the package, its
    APIs (deployment included) and the training tool still import."""
    code = textwrap.dedent('''
        import runpy, sys
        for name in ('onnx', 'onnxruntime', 'onnxscript'):
            sys.modules[name] = None
        import wavevit_mm, wavevit_mm.tools, wavevit_mm.tools.deployment
        sys.argv = ['train.py', '--help']
        try:
            runpy.run_path('tools/train.py', run_name='__main__')
        except SystemExit as exit_:
            assert exit_.code == 0
        assert not any(sys.modules.get(name) for name in
                       ('onnx', 'onnxruntime', 'onnxscript'))
        ''')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'usage: train.py' in result.stdout


def toy_backbone():
    from wavevit_mm.tools.deployment import BackboneFeatures
    from wavevit_mm.models import WaveViT
    torch.manual_seed(0)
    return BackboneFeatures(WaveViT(TOY_ARCH)).eval()


@pytest.mark.slow
def test_a_plain_export_holds_standard_operators_only():
    """What TensorRT and OpenVINO read: the default ONNX domain, opset 18,
    attention as MatMul and Softmax."""
    from wavevit_mm.tools.deployment import OPSET, onnx_model
    model = onnx_model(toy_backbone(), (64, 64), dynamic=False)
    assert {node.domain for node in model.graph.node} == {''}
    assert [(o.domain, o.version) for o in model.opset_import] == [('', OPSET)]
    assert 'Softmax' in {node.op_type for node in model.graph.node}


@pytest.mark.slow
def test_a_fused_export_runs_onnxruntimes_operators_at_any_size(tmp_path):
    """``fuse``: each block's attention is one MultiHeadAttention (a flash
    attention in ONNX Runtime), GELU one Gelu, the residual Add and the
    LayerNorm two nodes (ONNX Runtime's SkipLayerNormalization is slower
    on the CPU); exported with dynamic sizes, the file gives eager
    PyTorch's feature maps at the export size and at odd ones."""
    from wavevit_mm.tools.deployment import onnx_model, onnx_session
    module = toy_backbone()
    model = onnx_model(module, (64, 64), dynamic=True, fuse=True)
    ops = [node.op_type for node in model.graph.node]
    blocks = sum(TOY_ARCH['depths'])
    assert ops.count('MultiHeadAttention') == blocks
    assert ops.count('Gelu') == blocks
    assert 'SkipLayerNormalization' not in ops
    assert 'LayerNormalization' in ops
    assert not {'Softmax', 'Erf'} & set(ops)
    assert ('com.microsoft', 1) in [(o.domain, o.version)
                                    for o in model.opset_import]
    path = str(tmp_path / 'fused.onnx')
    with open(path, 'wb') as file:
        file.write(model.SerializeToString())
    onnx_session(path, 1)  # every graph optimisation accepts it
    for size in [(64, 64), (61, 97), (97, 131)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = module(x)
        for out, ref in zip(run(path, x), expected):
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def producers_and_consumers(graph):
    """Each tensor's producing node and its consuming nodes."""
    producer, consumers = {}, {}
    for node in graph.node:
        for name in node.output:
            producer[name] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def depthwise_convolutions(graph):
    return [node for node in graph.node if node.op_type == 'Conv' and any(
        a.name == 'group' and a.i > 1 for a in node.attribute)]


@pytest.mark.slow
def test_a_fused_export_runs_each_feed_forward_in_one_layout(tmp_path):
    """The fused file convolves each block's hidden map between the FFN's
    Linear layers as 1x1 convolutions, with no Transpose in between; so
    ONNX Runtime's CPU, which convolves in its blocked NCHWc layout, keeps
    the hidden map in that layout: no reorder reads or writes it."""
    import onnx
    import onnxruntime
    from wavevit_mm.tools.deployment import onnx_model, session_options
    module = toy_backbone()
    model = onnx_model(module, (64, 96), dynamic=False, fuse=True)
    producer, consumers = producers_and_consumers(model.graph)
    depthwise = depthwise_convolutions(model.graph)
    assert len(depthwise) == sum(TOY_ARCH['depths'])
    for conv in depthwise:
        (gelu, ) = consumers[conv.output[0]]
        assert producer[conv.input[0]].op_type == 'Conv'
        assert gelu.op_type == 'Gelu'
        assert [n.op_type for n in consumers[gelu.output[0]]] == ['Conv']
    path, optimized = str(tmp_path / 'fused.onnx'), str(tmp_path / 'ort.onnx')
    onnx.save(model, path)
    options = session_options(1)  # what every session here is given
    options.optimized_model_filepath = optimized
    onnxruntime.InferenceSession(path, options,
                                 providers=['CPUExecutionProvider'])
    graph = onnx.load(optimized).graph
    layout = [node for node in graph.node
              if node.domain == 'com.microsoft.nchwc']
    if not layout:
        pytest.skip('ONNX Runtime convolves in NCHW on this CPU')
    producer, consumers = producers_and_consumers(graph)
    depthwise = [node for node in depthwise_convolutions(graph)
                 if node.domain == 'com.microsoft.nchwc']
    assert len(depthwise) == sum(TOY_ARCH['depths'])
    for conv in depthwise:
        neighbours = [producer[conv.input[0]], *consumers[conv.output[0]]]
        assert not {n.op_type for n in neighbours} & {'ReorderInput',
                                                       'ReorderOutput'}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = module(x)
    for out, ref in zip(run(path, x), expected):
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_a_cpu_session_keeps_the_residual_add_and_layernorm_apart(
        tmp_path, monkeypatch):
    """ONNX Runtime's session fuses a residual Add and the LayerNorm after
    it into SkipLayerNormalization, whose CPU kernel is slower than the
    two; the sessions here leave them apart on the CPU. Seen in the graph
    the session optimised, against a session with the default rewrites."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    from wavevit_mm.tools.deployment import onnx_session, runtime
    tokens = [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                            [1, 16, 8]) for name in 'xyz']
    graph = helper.make_graph(
        [helper.make_node('Add', ['x', 'y'], ['sum']),
         helper.make_node('LayerNormalization', ['sum', 'gamma', 'beta'],
                          ['z'], axis=-1, epsilon=1e-6)],
        'residual_norm', tokens[:2], tokens[2:],
        [numpy_helper.from_array(np.ones(8, np.float32), 'gamma'),
         numpy_helper.from_array(np.zeros(8, np.float32), 'beta')])
    path = str(tmp_path / 'residual_norm.onnx')
    onnx.save(helper.make_model(graph, opset_imports=[
        helper.make_opsetid('', 18)]), path)

    def optimised_ops(open_session):
        optimised = str(tmp_path / 'optimised.onnx')
        options = runtime.session_options(1)
        options.optimized_model_filepath = optimised
        monkeypatch.setattr(runtime, 'session_options',
                            lambda threads=None: options)
        open_session()
        monkeypatch.undo()
        return {node.op_type for node in onnx.load(optimised).graph.node}

    default = optimised_ops(lambda: onnxruntime.InferenceSession(
        path, runtime.session_options(1), providers=['CPUExecutionProvider']))
    if 'SkipLayerNormalization' not in default:
        pytest.skip('this ONNX Runtime does not fuse Add and LayerNorm')
    assert {'Add', 'LayerNormalization'} <= optimised_ops(
        lambda: onnx_session(path, 1))
