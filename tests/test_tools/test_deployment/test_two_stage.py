"""Mask R-CNN exported whole (wavevit_mm.tools.deployment.two_stage): the
rebuilt test path against mmdet's own ``predict``, the file in ONNX Runtime
against it at the export size and at odd ones, and the two-stage detectors
that stay refused, each with one paragraph."""
import os

import pytest
import torch
from mmdet.structures import DetDataSample

from deployment_models import TOY_SIZE, run, save_checkpoint, toy_config
from toy_runs import DET_CONFIG
from wavevit_mm.tools import build_model, load_config
from wavevit_mm.tools.deployment import (ExportError, export_onnx, exportable,
                                        image_metas)
from wavevit_mm.tools.deployment.two_stage import (MaskRCNNOutputs,
                                                  predicted_instances)
from wavevit_mm.tools.deployment.verification import matched_pairs

#: the untrained toy's class scores are near 1/4, above the test
#: config's score_thr of 0.05: every image gives max_per_img detections


@pytest.fixture(scope='module')
def mask_rcnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp('mask_rcnn')
    model = save_checkpoint(DET_CONFIG, folder / 'model.pth')
    return model, str(folder / 'model.pth')


def mmdet_predict(model, x):
    """mmdet's own test path on a batch that was neither resized nor
    padded: boxes in input pixels, masks pasted into the input."""
    sample = DetDataSample(metainfo=image_metas(tuple(x.shape[2:]))[0])
    with torch.no_grad():
        return model.predict(x, [sample], rescale=False)[0].pred_instances


def assert_same_instances(found, expected, exact=True):
    assert len(expected) == 100 and len(found) == len(expected)
    if exact:
        assert torch.equal(found.bboxes, expected.bboxes)
        assert torch.equal(found.scores, expected.scores)
        assert torch.equal(found.labels, expected.labels)
        assert torch.equal(found.masks, expected.masks)
        return
    pairs = matched_pairs(found, expected)
    assert len(pairs) >= 98
    i, j = (list(side) for side in zip(*pairs))
    torch.testing.assert_close(found.scores[i], expected.scores[j],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(found.bboxes[i], expected.bboxes[j],
                               atol=1e-3, rtol=1e-4)
    differing = (found.masks[i] != expected.masks[j]).double().mean()
    assert differing < 1e-3


def outputs_as_instances(outputs, size, model):
    dets, labels, masks = outputs[:3]
    meta = image_metas(size)[0]
    return predicted_instances(dets, labels, masks, meta,
                               model.roi_head.test_cfg.mask_thr_binary,
                               rescale=False)


@pytest.mark.parametrize('size', [TOY_SIZE, (97, 131)])
def test_the_rebuilt_test_path_gives_mmdets_detections_and_masks(
        mask_rcnn, size):
    model = mask_rcnn[0]
    module = exportable(model, DET_CONFIG)
    assert isinstance(module, MaskRCNNOutputs)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = module(x)
    assert [o.shape[1:] for o in outputs] == [(5, ), (), (28, 28), (4, ),
                                              (3, )]
    assert_same_instances(outputs_as_instances(outputs, size, model),
                          mmdet_predict(model, x))
    # before the score threshold: the RPN's proposals, as mmdet's
    # RPNHead.predict gives them, and the class scores of each
    proposals, scores = outputs[3:]
    sample = DetDataSample(metainfo=image_metas(size)[0])
    with torch.no_grad():
        feats = model.extract_feat(x)
        expected = model.rpn_head.predict(feats, [sample], rescale=False)[0]
    # the same boxes; equal scores may come in another order
    torch.testing.assert_close(*(torch.tensor(sorted(boxes.tolist()))
                                 for boxes in (proposals, expected.bboxes)))
    assert torch.all(scores.sum(1) < 1) and torch.all(scores >= 0)


@pytest.fixture(scope='module')
def exported(mask_rcnn, tmp_path_factory):
    """The toy Mask R-CNN exported once, with dynamic height and width."""
    model, checkpoint = mask_rcnn
    out = str(tmp_path_factory.mktemp('exported') / 'mask_rcnn.onnx')
    printed = []
    report = export_onnx(DET_CONFIG, checkpoint, out, TOY_SIZE,
                         dynamic=True, log=printed.append)
    return model, out, report, printed


@pytest.mark.slow
def test_the_file_has_onnx_nms_and_roialign_and_passes_its_check(exported):
    import onnx
    _, out, report, printed = exported
    assert report.part == 'instance segmentor' and report.dynamic
    assert [c.size for c in report.checks] == [TOY_SIZE, (161, 97)]
    for check in report.checks:
        assert check.passed and check.detections == (100, 100)
        assert check.mask_agreement == 1.
        assert check.max_rel < 1e-4
        matched, proposals = check.proposals
        assert matched >= 0.98 * proposals and proposals > 100
    assert 'mask agreement 100.000%' in printed[-1]
    graph = onnx.load(out).graph
    ops = {node.op_type for node in graph.node}
    assert {'NonMaxSuppression', 'RoiAlign'} <= ops
    assert [o.name for o in graph.output] == [
        'dets', 'labels', 'masks', 'proposals', 'proposal_scores']


@pytest.mark.slow
@pytest.mark.parametrize('size', [(111, 149), (250, 330)])
def test_the_file_gives_mmdets_detections_and_masks_at_other_sizes(
        exported, size):
    model, out, _, _ = exported
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    found = outputs_as_instances(run(out, x), size, model)
    assert_same_instances(found, mmdet_predict(model, x), exact=False)


@pytest.mark.slow
def test_a_fused_file_gives_mmdets_detections_and_masks(mask_rcnn, tmp_path):
    """``fuse``: ONNX Runtime's attention and GELU operators in the
    backbone leave the heads' graph whole (NMS, RoIAlign)."""
    import onnx
    model, checkpoint = mask_rcnn
    out = str(tmp_path / 'fused.onnx')
    report = export_onnx(DET_CONFIG, checkpoint, out, TOY_SIZE, fuse=True,
                         log=lambda _: None)
    (check, ) = report.checks
    assert check.passed and check.detections == (100, 100)
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {'MultiHeadAttention', 'Gelu', 'LayerNormalization',
            'NonMaxSuppression', 'RoiAlign'} <= ops
    x = torch.randn(1, 3, *TOY_SIZE,
                    generator=torch.Generator().manual_seed(3))
    found = outputs_as_instances(run(out, x), TOY_SIZE, model)
    assert_same_instances(found, mmdet_predict(model, x), exact=False)


@pytest.mark.parametrize('name, says', [
    ('cascade_mask_rcnn_wavevit_s_3x_coco',
     'CascadeRoIHead is not exported: the whole-model export rebuilds the '
     'test path of a single-stage StandardRoIHead with a mask head (Mask '
     'R-CNN); its 3 bbox and mask stages refine the boxes one after the '
     'other'),
    ('sparse_rcnn_wavevit_s_3x_coco',
     'SparseRoIHead is not exported: the whole-model export rebuilds the '
     'test path of a single-stage StandardRoIHead with a mask head (Mask '
     'R-CNN); its DIIHead stages update learned proposal features')])
def test_other_two_stage_detectors_are_refused_in_one_paragraph(
        tmp_path, name, says):
    config = toy_config(tmp_path, name)
    model = build_model(load_config(config))
    with pytest.raises(ExportError) as error:
        exportable(model, config, dynamic=True)
    message = str(error.value)
    assert says in message and '\n' not in message
    assert '--backbone-only' in message


@pytest.mark.slow
def test_the_demo_draws_what_image_demo_draws(exported, mask_rcnn,
                                              toy_workspace, tmp_path):
    import cv2
    import numpy as np
    from toy_runs import run_tool
    _, out, _, _ = exported
    val = toy_workspace / 'data' / 'toy_coco' / 'val'
    image = str(val / sorted(os.listdir(val))[0])
    from_onnx, from_checkpoint = tmp_path / 'onnx.png', tmp_path / 'pth.png'
    # mmdet's visualizer jitters each mask's colour with numpy's generator
    np.random.seed(0)
    result = run_tool('deployment/onnx_demo.py',
                      [image, DET_CONFIG, out, '--out-file', from_onnx],
                      cwd=str(toy_workspace))
    assert result.code == 0, result.stderr
    np.random.seed(0)
    result = run_tool('image_demo.py', [image, DET_CONFIG, mask_rcnn[1],
                                        '--out-file', from_checkpoint],
                      cwd=str(toy_workspace))
    assert result.code == 0, result.stderr
    drawn, expected = (cv2.imread(str(path))
                       for path in (from_onnx, from_checkpoint))
    original = cv2.resize(cv2.imread(image), expected.shape[1::-1])
    assert np.mean(expected != original) > 0.01  # boxes and masks drawn
    assert drawn.shape == expected.shape
    assert np.mean(drawn != expected) < 5e-3


def test_detections_of_one_runtime_only_fail_the_check_in_words(mask_rcnn):
    """Detections found on one side only: matched 0 of 100, not kept; with
    none on either side the proposals and their class scores carry the
    check; with nothing at all, nothing was compared and nothing is kept."""
    from wavevit_mm.tools.deployment.verification import check_instances
    model = mask_rcnn[0]
    module = exportable(model, DET_CONFIG)
    x = torch.randn(1, 3, *TOY_SIZE,
                    generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        outputs = list(module(x))
    no_detections = [o[:0] for o in outputs[:3]] + outputs[3:]
    for found, expected in ((no_detections, outputs),
                            (outputs, no_detections)):
        check = check_instances(module, TOY_SIZE, found, expected)
        assert not check.passed and check.detections == (0, 100)
        assert 'detections matched 0 of 100' in check.describe()
    check = check_instances(module, TOY_SIZE, no_detections, no_detections)
    proposals = len(outputs[3])
    assert check.passed and check.detections == (0, 0)
    assert check.proposals == (proposals, proposals) and proposals > 100
    nothing = [o[:0] for o in outputs]
    check = check_instances(module, TOY_SIZE, nothing, nothing)
    assert not check.passed
    assert check.describe() == ('nothing to compare: every output is empty '
                                'in both')
