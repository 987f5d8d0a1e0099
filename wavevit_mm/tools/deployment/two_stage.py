"""Mask R-CNN exported whole: mmdet's test path rebuilt from the model's own
heads, coders and test config on the image batch alone, with non-maximum
suppression and RoIAlign as the operators of :mod:`wavevit_mm.ops.detection`
(ONNX NonMaxSuppression and RoiAlign in the file), and no branch on the
image size, so one file serves every height and width."""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...ops import detection  # noqa: F401  (registers the operators)
from .runtime import ExportError

#: ONNX RoiAlign's pixel model for mmcv's ``aligned``: aligned=True shifts
#: the boxes by half a pixel, as 'half_pixel' does; aligned=False keeps
#: them and makes them at least 1x1, as 'output_half_pixel' does.
ROI_ALIGN_MODES = {True: 'half_pixel', False: 'output_half_pixel'}


def onnx_translations() -> dict:
    """The ONNX translations of ``wavevit_mm::nms`` and
    ``wavevit_mm::roi_align`` for ``torch.onnx.export``'s
    ``custom_translation_table`` (onnxscript is imported only here)."""
    from onnxscript import opset18 as op

    def nms(boxes, scores, iou_threshold: float, score_threshold: float):
        # one batch, one class: (N, 3) rows of (0, 0, box index), best first
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, op.Constant(value_ints=[0])),
            op.Unsqueeze(scores, op.Constant(value_ints=[0, 1])),
            op.Shape(boxes, start=0, end=1),
            op.Constant(value_float=iou_threshold),
            op.Constant(value_float=score_threshold), center_point_box=0)
        return op.Reshape(
            op.Slice(selected, op.Constant(value_ints=[2]),
                     op.Constant(value_ints=[3]),
                     op.Constant(value_ints=[1])),
            op.Constant(value_ints=[-1]))

    def roi_align(features, rois, output_size: Sequence[int],
                  spatial_scale: float, sampling_ratio: int, aligned: bool):
        def columns(start, end):
            return op.Slice(rois, op.Constant(value_ints=[start]),
                            op.Constant(value_ints=[end]),
                            op.Constant(value_ints=[1]))
        indices = op.Cast(op.Reshape(columns(0, 1),
                                     op.Constant(value_ints=[-1])), to=7)
        return op.RoiAlign(
            features, columns(1, 5), indices, mode='avg',
            coordinate_transformation_mode=ROI_ALIGN_MODES[bool(aligned)],
            output_height=output_size[0], output_width=output_size[1],
            sampling_ratio=sampling_ratio, spatial_scale=spatial_scale)

    return {torch.ops.wavevit_mm.nms.default: nms,
            torch.ops.wavevit_mm.roi_align.default: roi_align}


_OTHER_ROI_HEAD_REFUSAL = (
    '{config}: {detector} with {head} is not exported: the whole-model '
    'export rebuilds the test path of a single-stage StandardRoIHead with a '
    'mask head (Mask R-CNN); {why} Export the backbone alone '
    '(--backbone-only) and run the heads in PyTorch, or deploy Mask R-CNN '
    'or a one-stage detector (RetinaNet, ATSS, GFL), which export whole.')


def check_mask_rcnn(model: nn.Module, config: str) -> None:
    """An ExportError of one paragraph unless ``model`` is what
    :class:`MaskRCNNOutputs` reproduces exactly."""
    roi_head = model.roi_head
    head = type(roi_head).__name__
    why = None
    if head == 'CascadeRoIHead':
        why = (f'its {roi_head.num_stages} bbox and mask stages refine the '
               f'boxes one after the other and average the stages\' class '
               f'scores, which that rebuild does not carry.')
    elif head == 'SparseRoIHead':
        why = ('its DIIHead stages update learned proposal features by '
               'dynamic convolution and keep the top scores without '
               'suppression, which that rebuild does not carry.')
    elif head != 'StandardRoIHead' or not roi_head.with_mask:
        why = 'this head is not one.'
    elif type(model.rpn_head).__name__ != 'RPNHead':
        why = (f'its proposals come from {type(model.rpn_head).__name__}, '
               f'not from an RPNHead.')
    elif roi_head.with_shared_head or getattr(
            roi_head.bbox_head, 'custom_cls_channels', False):
        why = 'this one has a shared head or custom class scores.'
    elif any(layer.pool_mode != 'avg'
             for extractor in (roi_head.bbox_roi_extractor,
                               roi_head.mask_roi_extractor)
             for layer in extractor.roi_layers):
        why = 'its RoI extractors pool by maximum, not by average.'
    if why:
        raise ExportError(_OTHER_ROI_HEAD_REFUSAL.format(
            config=config, detector=type(model).__name__, head=head, why=why))


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor,
                iou_threshold: float, score_threshold: float) -> Tensor:
    """mmdet's ``batched_nms`` on the boxes that are ``valid`` and score
    above ``score_threshold``: each group's boxes shifted by the largest
    coordinate of those boxes + 1, so that groups never overlap, then one
    suppression. Returns the kept indices, best score first."""
    largest = torch.where(valid[:, None], boxes, 0).max()
    shifted = boxes + (groups.to(boxes) * (largest + 1))[:, None]
    # invalid boxes score below any threshold the operator is given
    scores = torch.where(valid, scores, score_threshold - 1)
    return torch.ops.wavevit_mm.nms(shifted, scores, iou_threshold,
                                    score_threshold)


class MaskRCNNOutputs(nn.Module):
    """Mask R-CNN's detections on the normalised image batch (1x3xHxW):
    ``dets`` (Kx5, x1 y1 x2 y2 score in input pixels, best first),
    ``labels`` (K) and ``masks`` (Kx28x28 probabilities of each detection's
    class, in its box), as mmdet's ``predict(rescale=False)`` finds them
    before pasting the masks into the image; and what comes before the
    score threshold, for a check that still means something when no
    detection passes it: ``proposals`` (Nx4, the RPN's boxes) and
    ``proposal_scores`` (NxC, the bbox head's class probabilities of each,
    background left out)."""

    part = 'instance segmentor'
    output_names = ['dets', 'labels', 'masks', 'proposals',
                    'proposal_scores']

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rpn_cfg = model.rpn_head.test_cfg
        self.rcnn_cfg = model.roi_head.test_cfg

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        feats = self.model.extract_feat(x)
        shape = x.shape[2:]
        proposals = self.proposals(feats, shape)
        dets, labels, scores = self.detections(feats, proposals, shape)
        return (dets, labels, self.masks(feats, dets[:, :4], labels),
                proposals, scores)

    def proposals(self, feats: Sequence[Tensor], shape) -> Tensor:
        """The RPN's boxes (Nx4), as ``RPNHead.predict_by_feat`` keeps
        them: per level the ``nms_pre`` best sigmoid scores, decoded and
        clipped, those above ``min_bbox_size``, suppression per level."""
        head, cfg = self.model.rpn_head, self.rpn_cfg
        cls_scores, bbox_preds = head(feats)
        priors = head.prior_generator.grid_priors(
            [score.shape[-2:] for score in cls_scores],
            dtype=cls_scores[0].dtype, device=cls_scores[0].device)
        nms_pre = cfg.get('nms_pre', -1)
        all_scores, all_deltas, all_priors, levels = [], [], [], []
        for level, (score, delta, prior) in enumerate(
                zip(cls_scores, bbox_preds, priors)):
            delta = delta[0].permute(1, 2, 0).reshape(
                -1, head.bbox_coder.encode_size)
            score = score[0].permute(1, 2, 0).reshape(
                -1, head.cls_out_channels)
            score = (score.sigmoid() if head.use_sigmoid_cls else
                     score.softmax(-1)[:, :-1]).reshape(-1)
            if nms_pre > 0:
                # the best nms_pre of every level, in any order: the
                # suppression sorts them; no branch on the level's size
                score, best = score.topk(torch.sym_min(nms_pre,
                                                       score.shape[0]))
                delta, prior = delta[best], prior[best]
            all_scores.append(score)
            all_deltas.append(delta)
            all_priors.append(prior)
            levels.append(torch.full_like(score, level, dtype=torch.long))
        scores = torch.cat(all_scores)
        boxes = head.bbox_coder.decode(torch.cat(all_priors),
                                       torch.cat(all_deltas),
                                       max_shape=shape)
        min_size = cfg.get('min_bbox_size', -1)
        valid = torch.ones_like(scores, dtype=torch.bool)
        if min_size >= 0:
            valid = ((boxes[:, 2] - boxes[:, 0] > min_size)
                     & (boxes[:, 3] - boxes[:, 1] > min_size))
        keep = batched_nms(boxes, scores, torch.cat(levels), valid,
                           cfg.nms.iou_threshold, -1.)
        if torch.compiler.is_exporting():
            # mmdet's box decoding asks whether there are proposals; a
            # traced graph assumes some (with none, the file's tensors are
            # empty all the way down, as mmdet's results are)
            torch._check(keep.shape[0] > 0)
        return boxes[keep[:cfg.max_per_img]]

    def roi_features(self, extractor: nn.Module, feats: Sequence[Tensor],
                     rois: Tensor) -> Tensor:
        """``SingleRoIExtractor``'s features of ``rois`` (Kx5): each RoI
        pooled from the level ``map_roi_levels`` gives it; every level is
        pooled and the RoI's own level selected, so the graph has no
        data-dependent gather."""
        feats = feats[:extractor.num_inputs]
        levels = extractor.map_roi_levels(rois, len(feats))
        pooled = None
        for level, (feat, layer) in enumerate(zip(feats,
                                                  extractor.roi_layers)):
            level_pooled = torch.ops.wavevit_mm.roi_align(
                feat, rois, list(layer.output_size),
                float(layer.spatial_scale), int(layer.sampling_ratio),
                bool(layer.aligned))
            pooled = level_pooled if pooled is None else torch.where(
                (levels == level)[:, None, None, None], level_pooled, pooled)
        return pooled

    def detections(self, feats: Sequence[Tensor], proposals: Tensor, shape
                   ) -> Tuple[Tensor, Tensor, Tensor]:
        """The bbox head on the proposals, as ``BBoxHead.predict_by_feat``
        and ``multiclass_nms``: softmax scores, boxes decoded per class and
        clipped, those above ``score_thr`` suppressed per class, the
        ``max_per_img`` best. Returns (dets Kx5, labels K, the class
        scores NxC of every proposal)."""
        roi_head, cfg = self.model.roi_head, self.rcnn_cfg
        head = roi_head.bbox_head
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1),
                          proposals], dim=1)
        cls_score, bbox_pred = head(self.roi_features(
            roi_head.bbox_roi_extractor, feats, rois))
        scores = torch.softmax(cls_score, dim=-1)
        num_classes = scores.shape[1] - 1
        box_classes = 1 if head.reg_class_agnostic else head.num_classes
        boxes = head.bbox_coder.decode(
            proposals.repeat_interleave(box_classes, dim=0),
            bbox_pred.reshape(-1, head.bbox_coder.encode_size),
            max_shape=shape)
        boxes = boxes.reshape(proposals.shape[0], box_classes, 4).expand(
            -1, num_classes, 4).reshape(-1, 4)
        class_scores = scores[:, :-1]
        scores = class_scores.reshape(-1)
        labels = torch.arange(num_classes, device=scores.device).repeat(
            proposals.shape[0])
        keep = batched_nms(boxes, scores, labels, scores > cfg.score_thr,
                           cfg.nms.iou_threshold, float(cfg.score_thr))
        keep = keep[:cfg.max_per_img]
        return (torch.cat([boxes[keep], scores[keep, None]], 1),
                labels[keep], class_scores)

    def masks(self, feats: Sequence[Tensor], boxes: Tensor,
              labels: Tensor) -> Tensor:
        """The mask head on the detections' boxes: the sigmoid of each
        detection's class channel (of the only channel if class-agnostic),
        as ``FCNMaskHead.predict_by_feat`` takes it before pasting."""
        roi_head = self.model.roi_head
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        logits = roi_head.mask_head(self.roi_features(
            roi_head.mask_roi_extractor, feats, rois))
        if roi_head.mask_head.class_agnostic:
            return logits[:, 0].sigmoid()
        index = labels[:, None, None, None].expand(-1, 1, *logits.shape[2:])
        return logits.gather(1, index)[:, 0].sigmoid()


def paste_masks(masks: Tensor, boxes: Tensor, shape: Tuple[int, int],
                threshold: float) -> Tensor:
    """Masks (Kx28x28 probabilities) pasted into an image of ``shape`` at
    ``boxes`` by mmdet's own ``_do_paste_mask``, one at a time as mmdet does
    on the CPU, and binarised at ``threshold`` (``mask_thr_binary``)."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import \
        _do_paste_mask
    height, width = (int(side) for side in shape)
    pasted = torch.zeros(len(masks), height, width, dtype=torch.bool)
    for i in range(len(masks)):
        chunk, region = _do_paste_mask(masks[i:i + 1, None], boxes[i:i + 1],
                                       height, width, skip_empty=True)
        pasted[(slice(i, i + 1), ) + region] = chunk >= threshold
    return pasted


def predicted_instances(dets: Tensor, labels: Tensor, masks: Tensor,
                        meta: dict, threshold: float, rescale: bool = True):
    """An InstanceData of the file's outputs as mmdet's ``predict`` gives
    it: boxes (in the original image if ``rescale``), scores, labels and
    the masks pasted into the image."""
    from mmengine.structures import InstanceData
    boxes = dets[:, :4].clone()
    shape = meta['img_shape'][:2]
    if rescale:
        boxes /= boxes.new_tensor(meta['scale_factor']).repeat(2)
        shape = meta['ori_shape'][:2]
    results = InstanceData(metainfo=meta)
    results.bboxes, results.scores = boxes, dets[:, 4]
    results.labels = labels.long()
    results.masks = paste_masks(masks, boxes, shape, threshold)
    return results


def matched_masks(found, expected, pairs: List[Tuple[int, int]],
                  threshold: float) -> float:
    """The share of 28x28 mask cells on the same side of ``threshold`` in
    the matched detections (``pairs`` of indices), 1 if none."""
    if not pairs:
        return 1.
    i, j = (torch.tensor(side) for side in zip(*pairs))
    same = (found[i] >= threshold) == (expected[j] >= threshold)
    return same.double().mean().item()
