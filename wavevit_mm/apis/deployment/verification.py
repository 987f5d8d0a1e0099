"""The check that keeps an exported file: ONNX Runtime against PyTorch on
the same input, raw outputs compared, detections decoded by mmdet's own
code and matched (Mask R-CNN's with their masks), segmentation classes
compared pixel by pixel."""
import copy
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from torch import Tensor, nn

from .exportable import head_output_groups
from .two_stage import matched_masks
from .runtime import run_session

#: What a kept file must reach against PyTorch: the largest difference of
#: a raw output relative to that output's largest magnitude; the share of
#: the top detections found again (same label, IoU >= 0.99); the share of
#: pixels given the same class; the share of mask cells of matched
#: detections on the same side of the mask threshold.
MAX_RELATIVE_DIFFERENCE = 1e-3
MIN_DETECTIONS_MATCHED = 0.98
MIN_PIXEL_AGREEMENT = 0.999
MIN_MASK_AGREEMENT = 0.999
MATCH_IOU = 0.99
TOP_DETECTIONS = 100


def thresholds() -> str:
    """What a kept file must reach, in words."""
    return (f'relative differences up to {MAX_RELATIVE_DIFFERENCE:g}, '
            f'{100 * MIN_DETECTIONS_MATCHED:g}% of the top {TOP_DETECTIONS} '
            f'detections matched, {100 * MIN_MASK_AGREEMENT:g}% mask '
            f'agreement and {100 * MIN_PIXEL_AGREEMENT:g}% pixel agreement')


class Check(NamedTuple):
    """ONNX Runtime against PyTorch on one input."""
    size: Tuple[int, int]
    max_abs: float
    max_rel: float
    detections: Optional[Tuple[int, int]] = None  # matched, of
    pixel_agreement: Optional[float] = None
    mask_agreement: Optional[float] = None

    @property
    def passed(self) -> bool:
        if not self.max_rel <= MAX_RELATIVE_DIFFERENCE:
            return False
        if self.detections is not None:
            matched, total = self.detections
            if matched < MIN_DETECTIONS_MATCHED * total:
                return False
        if not (self.mask_agreement is None
                or self.mask_agreement >= MIN_MASK_AGREEMENT):
            return False
        return (self.pixel_agreement is None
                or self.pixel_agreement >= MIN_PIXEL_AGREEMENT)

    def describe(self) -> str:
        text = (f'max abs difference {self.max_abs:.2e}, relative '
                f'{self.max_rel:.2e}')
        if self.detections is not None:
            text += (f', detections matched {self.detections[0]} of '
                     f'{self.detections[1]}')
        if self.mask_agreement is not None:
            text += f', mask agreement {100 * self.mask_agreement:.3f}%'
        if self.pixel_agreement is not None:
            text += f', pixel agreement {100 * self.pixel_agreement:.3f}%'
        return text


def differences(outputs: Sequence[Tensor],
                expected: Sequence[Tensor]) -> Tuple[float, float]:
    """Largest absolute difference, and the largest relative to each
    expected output's largest magnitude."""
    max_abs = max_rel = 0.
    for output, reference in zip(outputs, expected):
        if output.shape != reference.shape:
            return float('inf'), float('inf')
        difference = (output.double() - reference.double()).abs().max().item()
        scale = reference.double().abs().max().item() or 1.
        max_abs, max_rel = max(max_abs, difference), max(max_rel,
                                                        difference / scale)
    return max_abs, max_rel


def image_metas(shape: Tuple[int, int]) -> List[Dict]:
    """Meta data of one image of ``shape`` that was neither resized nor
    padded, as the heads' ``predict_by_feat`` reads them."""
    return [dict(img_shape=tuple(shape), ori_shape=tuple(shape),
                 pad_shape=tuple(shape), batch_input_shape=tuple(shape),
                 scale_factor=(1., 1.))]


def decode_detections(head: nn.Module, outputs: Sequence[Tensor],
                      names: Sequence[str], metas: List[Dict],
                      cfg: Optional[Config] = None, rescale: bool = False):
    """mmdet's own decoding (``predict_by_feat``) of raw head outputs:
    one InstanceData of boxes, scores and labels per image."""
    return head.predict_by_feat(*head_output_groups(outputs, names),
                                batch_img_metas=metas, cfg=cfg,
                                rescale=rescale)


def matched_detections(found, expected, top: int = TOP_DETECTIONS
                       ) -> Tuple[int, int]:
    """How many of the ``top`` best detections of ``found`` have one among
    the ``top`` of ``expected`` with the same label and IoU >= 0.99, and of
    how many (the longer of the two lists, up to ``top``)."""
    return (len(matched_pairs(found, expected, top)),
            _compared(found, expected, top))


def _compared(found, expected, top: int = TOP_DETECTIONS) -> int:
    """How many detections a match is counted against: the longer of the
    two lists, up to ``top``."""
    return max(min(len(found), top), min(len(expected), top))


def matched_pairs(found, expected, top: int = TOP_DETECTIONS
                  ) -> List[Tuple[int, int]]:
    """(index in ``found``, index in ``expected``) of each of the ``top``
    best detections of ``found`` with its best match among the ``top`` of
    ``expected`` (same label, IoU >= 0.99)."""
    from mmdet.structures.bbox import bbox_overlaps
    found, expected = found[:top], expected[:top]
    if len(found) == 0 or len(expected) == 0:
        return []
    overlaps = bbox_overlaps(found.bboxes, expected.bboxes)
    overlaps[found.labels[:, None] != expected.labels[None, :]] = -1
    best, index = overlaps.max(dim=1)
    return [(i, int(index[i])) for i in range(len(found))
            if best[i] >= MATCH_IOU]


def _instances(dets: Tensor, labels: Tensor):
    """Mask R-CNN's file outputs as an InstanceData of boxes and labels."""
    from mmengine.structures import InstanceData
    return InstanceData(bboxes=dets[:, :4], scores=dets[:, 4],
                        labels=labels.long())


def _check_instances(module: nn.Module, size: Tuple[int, int],
                     outputs: Sequence[Tensor], expected: Sequence[Tensor]
                     ) -> Check:
    """Mask R-CNN's detections of the file and of PyTorch matched, and the
    raw differences of the matched ones' boxes, scores and masks (a
    detection kept by one side only counts as unmatched, not as a
    difference)."""
    (dets, labels, masks), (ref_dets, ref_labels, ref_masks) = (
        outputs, expected)
    found, reference = _instances(dets, labels), _instances(ref_dets,
                                                            ref_labels)
    pairs = matched_pairs(found, reference)
    mine = [i for i, _ in pairs]
    theirs = [j for _, j in pairs]
    max_abs, max_rel = differences(
        [dets[mine], masks[mine]], [ref_dets[theirs], ref_masks[theirs]])
    threshold = module.rcnn_cfg.get('mask_thr_binary', 0.5)
    detections = len(pairs), _compared(found, reference)
    return Check(size, max_abs, max_rel, detections=detections,
                 mask_agreement=matched_masks(masks, ref_masks, pairs,
                                              threshold))


def _check_score_free(head: nn.Module) -> Config:
    """The head's test config keeping the top detections whatever their
    score: a check must compare boxes even of a barely trained model."""
    cfg = copy.deepcopy(head.test_cfg)
    cfg.score_thr = 0.
    cfg.max_per_img = TOP_DETECTIONS
    return cfg


def check_file(session, module: nn.Module, size: Tuple[int, int],
               seed: int = 0) -> Check:
    """Run the file and ``module`` (PyTorch) on one random input of
    ``size`` and compare: raw outputs, and the decoded detections or the
    predicted classes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *size, generator=generator)
    with torch.no_grad():
        expected = module(x)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    outputs = run_session(session, x)
    if module.part == 'instance segmentor':
        return _check_instances(module, tuple(size), outputs, expected)
    max_abs, max_rel = differences(outputs, expected)
    if not np.isfinite(max_abs):
        return Check(tuple(size), max_abs, max_rel)
    if module.part == 'detector':
        head = module.model.bbox_head
        cfg, metas = _check_score_free(head), image_metas(size)
        with torch.no_grad():
            found = decode_detections(head, outputs, module.output_names,
                                      metas, cfg)[0]
            reference = decode_detections(head, expected,
                                          module.output_names, metas, cfg)[0]
        return Check(tuple(size), max_abs, max_rel,
                     detections=matched_detections(found, reference))
    if module.part == 'segmentor':
        agreement = (outputs[0].argmax(1) == expected[0].argmax(1))
        return Check(tuple(size), max_abs, max_rel,
                     pixel_agreement=agreement.double().mean().item())
    return Check(tuple(size), max_abs, max_rel)
