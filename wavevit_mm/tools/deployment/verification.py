"""The check that keeps an exported file: ONNX Runtime against PyTorch on
the same input (an image through the config's test pipeline, see
:mod:`.probe`), raw outputs compared, detections decoded by mmdet's own
code and matched (Mask R-CNN's with their masks, and its proposals with
their class scores before the score threshold), segmentation classes
compared pixel by pixel. Empty outputs are compared as empty; a check
that compared nothing keeps no file."""
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
#: Fewer detections than this and the check says that it rests on the
#: tensors before the score threshold (Mask R-CNN's proposals and their
#: class scores), which it compares in any case.
ENOUGH_DETECTIONS = 10


def thresholds() -> str:
    """What a kept file must reach, in words."""
    return (f'relative differences up to {MAX_RELATIVE_DIFFERENCE:g}, '
            f'{100 * MIN_DETECTIONS_MATCHED:g}% of the top {TOP_DETECTIONS} '
            f'detections (and of Mask R-CNN\'s proposals) matched, '
            f'{100 * MIN_MASK_AGREEMENT:g}% mask agreement and '
            f'{100 * MIN_PIXEL_AGREEMENT:g}% pixel agreement')


class Check(NamedTuple):
    """ONNX Runtime against PyTorch on one input."""
    size: Tuple[int, int]
    max_abs: float
    max_rel: float
    detections: Optional[Tuple[int, int]] = None  # matched, of
    pixel_agreement: Optional[float] = None
    mask_agreement: Optional[float] = None
    proposals: Optional[Tuple[int, int]] = None  # matched, of
    elements: int = 1  # output elements compared

    @property
    def passed(self) -> bool:
        if self.elements == 0 or not self.max_rel <= MAX_RELATIVE_DIFFERENCE:
            return False
        for counts in (self.detections, self.proposals):
            if counts is not None and (
                    counts[0] < MIN_DETECTIONS_MATCHED * counts[1]):
                return False
        if not (self.mask_agreement is None
                or self.mask_agreement >= MIN_MASK_AGREEMENT):
            return False
        return (self.pixel_agreement is None
                or self.pixel_agreement >= MIN_PIXEL_AGREEMENT)

    def describe(self) -> str:
        if self.elements == 0:
            return 'nothing to compare: every output is empty in both'
        text = (f'max abs difference {self.max_abs:.2e}, relative '
                f'{self.max_rel:.2e}')
        if self.detections is not None:
            text += (f', detections matched {self.detections[0]} of '
                     f'{self.detections[1]}')
        if self.proposals is not None:
            text += (f', proposals before the score threshold matched '
                     f'{self.proposals[0]} of {self.proposals[1]} (their '
                     f'class scores compared)')
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
        if reference.numel() == 0:  # empty in both: nothing differs
            continue
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


def _instances(boxes: Tensor, labels: Tensor, scores=None):
    """Boxes and labels (and scores) as an InstanceData."""
    from mmengine.structures import InstanceData
    instances = InstanceData(bboxes=boxes, labels=labels.long())
    if scores is not None:
        instances.scores = scores
    return instances


def _elements(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def check_instances(module: nn.Module, size: Tuple[int, int],
                     outputs: Sequence[Tensor], expected: Sequence[Tensor]
                     ) -> Check:
    """Mask R-CNN's detections of the file and of PyTorch matched, and the
    raw differences of the matched ones' boxes, scores and masks (a
    detection kept by one side only counts as unmatched, not as a
    difference); then the same of the proposals and their class scores,
    before the score threshold."""
    (dets, labels, masks, proposals, scores) = outputs
    (ref_dets, ref_labels, ref_masks, ref_proposals, ref_scores) = expected
    found = _instances(dets[:, :4], labels, dets[:, 4])
    reference = _instances(ref_dets[:, :4], ref_labels, ref_dets[:, 4])
    pairs = matched_pairs(found, reference)
    mine, theirs = [i for i, _ in pairs], [j for _, j in pairs]
    top = max(len(proposals), len(ref_proposals))
    proposal_pairs = matched_pairs(
        _instances(proposals, proposals.new_zeros(len(proposals))),
        _instances(ref_proposals, ref_proposals.new_zeros(
            len(ref_proposals))), top)
    p_mine = [i for i, _ in proposal_pairs]
    p_theirs = [j for _, j in proposal_pairs]
    compared = [dets[mine], masks[mine], proposals[p_mine], scores[p_mine]]
    max_abs, max_rel = differences(
        compared, [ref_dets[theirs], ref_masks[theirs],
                   ref_proposals[p_theirs], ref_scores[p_theirs]])
    threshold = module.rcnn_cfg.get('mask_thr_binary', 0.5)
    return Check(
        size, max_abs, max_rel,
        detections=(len(pairs), _compared(found, reference)),
        mask_agreement=(matched_masks(masks, ref_masks, pairs, threshold)
                        if pairs else None),
        proposals=(len(proposal_pairs), top), elements=_elements(compared))


def _check_score_free(head: nn.Module) -> Config:
    """The head's test config keeping the top detections whatever their
    score: a check must compare boxes even of a barely trained model."""
    cfg = copy.deepcopy(head.test_cfg)
    cfg.score_thr = 0.
    cfg.max_per_img = TOP_DETECTIONS
    return cfg


def predicted_classes(logits: Tensor, head: nn.Module) -> Tensor:
    """The class of each pixel from a decode head's logits (1xCxHxW), as
    mmseg's ``postprocess_result`` takes it: the largest logit, or for one
    channel the sigmoid above the head's ``threshold``."""
    if logits.shape[1] > 1:
        return logits.argmax(1)
    return (logits.sigmoid() > head.threshold)[:, 0]


def check_file(session, module: nn.Module, x: Tensor) -> Check:
    """Run the file and ``module`` (PyTorch) on the batch ``x`` (1x3xHxW)
    and compare: raw outputs, and the decoded detections or the predicted
    classes."""
    size = tuple(x.shape[2:])
    with torch.no_grad():
        expected = module(x)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    outputs = run_session(session, x)
    if module.part == 'instance segmentor':
        return check_instances(module, size, outputs, expected)
    max_abs, max_rel = differences(outputs, expected)
    elements = _elements(expected)
    if not np.isfinite(max_abs):
        return Check(size, max_abs, max_rel, elements=elements)
    if module.part == 'detector':
        head = module.model.bbox_head
        cfg, metas = _check_score_free(head), image_metas(size)
        with torch.no_grad():
            found = decode_detections(head, outputs, module.output_names,
                                      metas, cfg)[0]
            reference = decode_detections(head, expected,
                                          module.output_names, metas, cfg)[0]
        return Check(size, max_abs, max_rel, elements=elements,
                     detections=matched_detections(found, reference))
    if module.part == 'segmentor':
        head = module.model.decode_head
        agreement = (predicted_classes(outputs[0], head)
                     == predicted_classes(expected[0], head))
        return Check(size, max_abs, max_rel, elements=elements,
                     pixel_agreement=agreement.double().mean().item())
    return Check(size, max_abs, max_rel, elements=elements)
