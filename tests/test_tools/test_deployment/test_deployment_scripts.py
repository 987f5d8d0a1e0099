"""tools/deployment/pytorch2onnx.py and onnx_demo.py, run in this process
on the toy RetinaNet: the verification table, the file at other sizes (odd
ones included) against PyTorch and mmdet's own ``predict``, the refusals
as one paragraph, and the demo's picture against tools/image_demo.py's.
The one dynamic export of a one-stage detector in the suite is made here,
by the tool. As a user runs them (a process of their own): a Mask R-CNN
that detects nothing, exported and run by the demo, and the log level."""
import contextlib
import io
import os
import sys

import cv2
import numpy as np
import pytest
import torch

from deployment_models import (OTHER_SIZES, RETINANET_CONFIG,
                               assert_gives_mmdets_detections, output_names,
                               run, save_checkpoint, scores_below_threshold)
from helpers import assert_refusal
from toy_runs import DET_CONFIG, SEG_CONFIG, run_process, run_tool, tool

pytestmark = pytest.mark.slow


def val_image(workspace):
    val = workspace / 'data' / 'toy_coco' / 'val'
    return str(val / sorted(os.listdir(val))[0])


@pytest.fixture(scope='module')
def exported(tmp_path_factory, toy_workspace):
    """The toy RetinaNet's checkpoint and its dynamic export by the tool,
    checked on a toy COCO image (--image), with what the tool printed, and
    the model."""
    folder = tmp_path_factory.mktemp('exported')
    checkpoint = str(folder / 'model.pth')
    model = save_checkpoint(RETINANET_CONFIG, checkpoint)
    out = str(folder / 'retinanet.onnx')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_tool('deployment/pytorch2onnx.py',
                          [RETINANET_CONFIG, checkpoint, '--out', out,
                           '--dynamic', '--image', val_image(toy_workspace)],
                          cwd=str(folder))
    return checkpoint, out, result, printed.getvalue(), model


def test_export_prints_the_verification_table(exported, toy_workspace):
    _, out, result, printed, _ = exported
    assert result.code == 0, result.stderr
    assert os.path.isfile(out)
    assert ('| model | part | size | difference (ONNX Runtime vs PyTorch) |'
            in printed)
    rows = [line for line in printed.splitlines()
            if line.startswith('| retinanet_wavevit_toy_coco | detector, '
                               'dynamic |')]
    assert [row.split(' | ')[2] for row in rows] == ['128x128', '161x97']
    assert all('detections matched 100 of 100' in row for row in rows)
    assert printed.splitlines()[-2] == (
        f'Checked on {val_image(toy_workspace)}.')


def test_the_file_runs_at_other_sizes_as_pytorch(exported):
    """Exported once, run at three other sizes, odd ones and one larger
    than any it was traced or checked at: the backbone's, the neck's and
    the head's raw outputs as PyTorch's."""
    model, out = exported[4], exported[1]
    names = output_names(out)
    for size in OTHER_SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model.bbox_head(model.extract_feat(x))
        expected = [t for group in expected for t in group]
        outputs = run(out, x)
        assert len(outputs) == len(expected) == len(names)
        for output, reference in zip(outputs, expected):
            assert output.shape == reference.shape
            torch.testing.assert_close(output, reference, atol=1e-4,
                                       rtol=1e-4)


def test_the_file_gives_mmdets_detections(exported):
    """At an odd size: ONNX Runtime's raw outputs decoded by the head's
    own predict_by_feat, against mmdet's predict() on the model."""
    assert_gives_mmdets_detections(exported[4], exported[1], (111, 149))


def test_fuse_writes_onnxruntimes_operators_with_mmdets_detections(
        exported, tmp_path):
    """--fuse: the same check and table; the file has ONNX Runtime's
    MultiHeadAttention and says it is fused; its outputs decode to mmdet's
    detections."""
    checkpoint, model = exported[0], exported[4]
    out = str(tmp_path / 'fused.onnx')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_tool('deployment/pytorch2onnx.py',
                          [RETINANET_CONFIG, checkpoint, '--out', out,
                           '--shape', '128', '128', '--fuse'],
                          cwd=str(tmp_path))
    assert result.code == 0, result.stderr
    (row, ) = [line for line in printed.getvalue().splitlines()
               if line.startswith('| retinanet_wavevit_toy_coco | detector, '
                                  'fixed | 128x128 |')]
    assert 'detections matched 100 of 100' in row
    # no --image, no toy COCO under the working directory
    assert 'Checked on a picture of shapes the package draws' in (
        printed.getvalue())
    import onnx
    onnx_file = onnx.load(out)
    ops = {node.op_type for node in onnx_file.graph.node}
    assert ops >= {'MultiHeadAttention', 'Gelu', 'LayerNormalization'}
    assert 'SkipLayerNormalization' not in ops
    assert {p.key: p.value for p in onnx_file.metadata_props}[
        'wavevit_mm.fused'] == 'True'
    assert_gives_mmdets_detections(model, out, (128, 128))


def test_an_existing_file_needs_force(exported, tmp_path):
    checkpoint, out, _, _, _ = exported
    before = os.path.getmtime(out)
    result = run_tool('deployment/pytorch2onnx.py',
                      [RETINANET_CONFIG, checkpoint, '--out', out,
                       '--backbone-only'], cwd=str(tmp_path))
    assert_refusal(result, 'pytorch2onnx.py', f'{out} already exists',
                         'pass --force')
    assert os.path.getmtime(out) == before


def test_without_onnxruntime_the_tool_says_what_to_install(
        exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    out = tmp_path / 'model.onnx'
    result = run_tool('deployment/pytorch2onnx.py',
                      [RETINANET_CONFIG, exported[0], '--out', out],
                      cwd=str(tmp_path))
    assert_refusal(result, 'pytorch2onnx.py',
                         'pip install -e .[deploy]')
    assert not out.exists()


def test_a_config_that_does_not_export_is_one_paragraph(exported, tmp_path):
    checkpoint = tmp_path / 'upernet.pth'
    save_checkpoint(SEG_CONFIG, checkpoint)
    result = run_tool('deployment/pytorch2onnx.py',
                      [SEG_CONFIG, checkpoint, '--out', tmp_path / 'm.onnx',
                       '--dynamic'], cwd=str(tmp_path))
    assert_refusal(result, 'pytorch2onnx.py', 'a dynamic export of '
                         'EncoderDecoder with UPerHead would be wrong')


def test_a_config_without_a_test_pipeline_is_one_paragraph(exported,
                                                           tmp_path):
    """mmengine takes ``test_dataloader = None``; the check, which brings
    its picture to the model through the test pipeline, says so before
    any export."""
    config = tmp_path / 'no_test_data.py'
    config.write_text(f"_base_ = ['{RETINANET_CONFIG}']\n"
                      f"test_dataloader = None\n")
    out = tmp_path / 'model.onnx'
    result = run_tool('deployment/pytorch2onnx.py',
                      [config, exported[0], '--out', out], cwd=str(tmp_path))
    assert_refusal(result, 'pytorch2onnx.py',
                   f'{config} has no test_dataloader.dataset.pipeline')
    assert not out.exists()


def test_a_classification_config_is_one_paragraph(exported, toy_workspace,
                                                  tmp_path):
    """The export and the demo take detectors and segmentors: an mmpretrain
    config is named as such before any checkpoint or file is read."""
    config = tmp_path / 'classifier.py'
    config.write_text(
        "default_scope = 'mmpretrain'\n"
        "model = dict(type='ImageClassifier', backbone=dict(type='WaveViT'))\n"
        "test_dataloader = dict(dataset=dict(type='CustomDataset', "
        "data_prefix='val', pipeline=[dict(type='LoadImageFromFile'), "
        "dict(type='PackInputs')]))\n")
    checkpoint, model_file = exported[:2]
    out = tmp_path / 'model.onnx'
    for prog, args in (('pytorch2onnx.py', [config, checkpoint, '--out', out]),
                       ('onnx_demo.py', [val_image(toy_workspace), config,
                                         model_file])):
        result = run_tool(f'deployment/{prog}', args, cwd=str(tmp_path))
        assert_refusal(result, prog, f'{config} is a classification config',
                       "export and run mmdet's detectors and mmseg's "
                       'segmentors')
    assert not out.exists()


def test_demo_draws_what_image_demo_draws(exported, toy_workspace, tmp_path):
    checkpoint, out, _, _, _ = exported
    image = val_image(toy_workspace)
    from_onnx, from_checkpoint = tmp_path / 'onnx.png', tmp_path / 'pth.png'
    result = run_tool('deployment/onnx_demo.py',
                      [image, RETINANET_CONFIG, out, '--out-file', from_onnx],
                      cwd=str(toy_workspace))
    assert result.code == 0, result.stderr
    result = run_tool('image_demo.py', [image, RETINANET_CONFIG, checkpoint,
                                        '--out-file', from_checkpoint],
                      cwd=str(toy_workspace))
    assert result.code == 0, result.stderr
    drawn, expected = cv2.imread(str(from_onnx)), cv2.imread(
        str(from_checkpoint))
    original = cv2.resize(cv2.imread(image), expected.shape[1::-1])
    assert np.mean(expected != original) > 0.01  # boxes were drawn
    assert drawn.shape == expected.shape
    # the boxes agree to far below a pixel; a few edge pixels may round apart
    assert np.mean(drawn != expected) < 5e-3


def python_tool(name, *args):
    return [sys.executable, tool(name)] + [str(a) for a in args]


@pytest.fixture(scope='module')
def nothing_detected(tmp_path_factory):
    """The toy Mask R-CNN with every class score near e^-30, far below its
    test score threshold of 0.05, exported with dynamic sizes by the tool
    in a process of its own, as a user runs it."""
    folder = tmp_path_factory.mktemp('nothing_detected')
    checkpoint = folder / 'model.pth'
    model = save_checkpoint(DET_CONFIG, checkpoint,
                            edit=scores_below_threshold)
    out = folder / 'mask_rcnn.onnx'
    result = run_process(python_tool(
        'deployment/pytorch2onnx.py', DET_CONFIG, checkpoint, '--out', out,
        '--dynamic', '--shape', 128, 128), cwd=str(folder))
    return model, checkpoint, out, result


def test_a_model_that_detects_nothing_is_checked_before_the_threshold(
        nothing_detected):
    """No detection on either side: the table, with the proposals and
    their class scores compared, a line saying so, and the file; no
    traceback, no initialisation log."""
    from mmdet.structures import DetDataSample
    from wavevit_mm.tools import load_config
    from wavevit_mm.tools.deployment import (check_input, image_metas,
                                            synthetic_image)
    model, _, out, result = nothing_detected
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr
    assert 'Initialized by' not in result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines()
            if line.startswith('| mask_rcnn_wavevit_toy_coco | instance '
                               'segmentor, dynamic |')]
    assert [row.split(' | ')[2] for row in rows] == ['128x128', '161x97']
    for row in rows:
        assert 'detections matched 0 of 0' in row
        matched, total = (int(n) for n in row.split(
            'proposals before the score threshold matched ')[1].split(
                ' (')[0].split(' of '))
        assert total > 100 and matched >= 0.98 * total
    assert result.stdout.count('the check rests on the') == 2
    assert os.path.isfile(out)
    # mmdet's own predict keeps nothing on the check's input either
    cfg = load_config(DET_CONFIG)
    x = check_input(model, cfg, synthetic_image(), (128, 128))
    sample = DetDataSample(metainfo=image_metas((128, 128))[0])
    with torch.no_grad():
        assert len(model.predict(x, [sample])[0].pred_instances) == 0


def test_the_demo_of_a_model_that_detects_nothing_draws_the_image(
        nothing_detected, toy_workspace, tmp_path):
    out_file = tmp_path / 'drawn.png'
    image = val_image(toy_workspace)
    result = run_process(python_tool(
        'deployment/onnx_demo.py', image, DET_CONFIG, nothing_detected[2],
        '--out-file', out_file), cwd=str(toy_workspace))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f'0 objects with score >= 0.3; drawing saved to {out_file}')
    assert 'Initialized by' not in result.stdout + result.stderr
    drawn, original = cv2.imread(str(out_file)), cv2.imread(image)
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original).max() <= 1


@pytest.mark.parametrize('level, shown', [(None, False), ('INFO', True)])
def test_mmengines_initialisation_log_only_at_the_level_asked(
        nothing_detected, tmp_path, level, shown):
    """A size the tool refuses, after the model is built (and mmengine has
    logged its initialisation): one paragraph, and the initialisation
    report only with --log-level INFO."""
    _, checkpoint, _, _ = nothing_detected
    args = ['--log-level', level] if level else []
    result = run_process(python_tool(
        'deployment/pytorch2onnx.py', DET_CONFIG, checkpoint, '--out',
        tmp_path / 'm.onnx', '--shape', 16, 16, *args), cwd=str(tmp_path))
    assert assert_refusal(
        result, 'pytorch2onnx.py', after_other_output=True) == (
            'pytorch2onnx.py: error: --shape 16 16: each side must be at '
            'least 32 pixels')
    assert ('Initialized by' in result.stdout) == shown
