"""Non-maximum suppression and RoIAlign as torch operators
(``torch.ops.wavevit_mm.nms`` and ``torch.ops.wavevit_mm.roi_align``).

Eagerly they run mmcv's compiled ``nms`` and ``roi_align``, the ones mmdet's
heads call, so results equal mmdet's; their fake implementations let
torch.export trace through them (NMS keeps a number of boxes known only at
run time), and ``tools.deployment`` translates them to ONNX
NonMaxSuppression and RoiAlign. A torch without ``torch.library.custom_op``
(before 2.4) gets them as plain operators, without fake implementations:
they run eagerly, and the ONNX export they serve needs torch 2.6 anyway.
"""
from typing import List

import torch
from torch import Tensor

from .. import compat


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float,
        score_threshold: float) -> Tensor:
    """Indices of the boxes (Nx4, x1 y1 x2 y2) kept by non-maximum
    suppression among those scoring above ``score_threshold``, best score
    first: mmcv's ``nms`` (a box goes when its IoU with a better kept one
    exceeds ``iou_threshold``)."""
    from mmcv.ops import nms as mmcv_nms
    candidates = (scores > score_threshold).nonzero().view(-1)
    if candidates.numel() == 0:
        return candidates
    _, keep = mmcv_nms(boxes[candidates], scores[candidates], iou_threshold)
    return candidates[keep]


def roi_align(features: Tensor, rois: Tensor, output_size: List[int],
              spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> Tensor:
    """Average RoIAlign of ``features`` (NxCxHxW) in each of ``rois``
    (Kx5: batch index, x1 y1 x2 y2 in input pixels): mmcv's ``roi_align``,
    KxCx``output_size``; ``sampling_ratio`` 0 samples adaptively,
    ``aligned`` shifts the boxes by half a pixel."""
    from mmcv.ops import roi_align as mmcv_roi_align
    return mmcv_roi_align(features, rois, tuple(output_size), spatial_scale,
                          sampling_ratio, 'avg', aligned).contiguous()


def _nms_fake(boxes, scores, iou_threshold, score_threshold):
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept, ), dtype=torch.long)


def _roi_align_fake(features, rois, output_size, spatial_scale,
                    sampling_ratio, aligned):
    return features.new_empty((rois.shape[0], features.shape[1],
                               *output_size))


if compat.has_custom_ops():
    nms = torch.library.custom_op('wavevit_mm::nms', mutates_args=())(nms)
    nms.register_fake(_nms_fake)
    roi_align = torch.library.custom_op('wavevit_mm::roi_align',
                                        mutates_args=())(roi_align)
    roi_align.register_fake(_roi_align_fake)
else:
    _library = torch.library.Library('wavevit_mm', 'FRAGMENT')
    _library.define('nms(Tensor boxes, Tensor scores, float iou_threshold, '
                    'float score_threshold) -> Tensor')
    _library.impl('nms', nms, 'CompositeExplicitAutograd')
    _library.define('roi_align(Tensor features, Tensor rois, '
                    'int[] output_size, float spatial_scale, '
                    'int sampling_ratio, bool aligned) -> Tensor')
    _library.impl('roi_align', roi_align, 'CompositeExplicitAutograd')
