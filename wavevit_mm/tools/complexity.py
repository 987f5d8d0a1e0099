"""Model complexity (multiply-adds and parameters) with mmengine's
analysis tools, for whole detectors/segmentors built from configs."""
import copy
from typing import Dict, Tuple

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from .config import scope_of


def build_model(cfg: Config, load_pretrained: bool = False) -> nn.Module:
    """The config's model in eval mode; the backbone's pretrained weights
    are only loaded when asked for."""
    cfg = copy.deepcopy(cfg)
    scope = scope_of(cfg)
    init_default_scope(scope)
    if not load_pretrained:
        cfg.model.backbone.init_cfg = None
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)
    model.init_weights()
    return model.eval()


def _attention_flop_jit(inputs, outputs) -> int:
    """Multiply-adds of scaled_dot_product_attention: Q K^T and A V."""
    q_shape, k_shape = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, queries, head_dim = q_shape
    keys = k_shape[-2]
    value_dim = get_shape(inputs[2])[-1]
    count = 1
    for size in batch:
        count *= size
    return count * queries * keys * (head_dim + value_dim)


def count_complexity(model: nn.Module, inputs: tuple) -> Dict:
    """mmengine's counter, plus fused attention, which it does not know."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(
        'aten::scaled_dot_product_attention', _attention_flop_jit)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    flops = analyzer.total()
    params = parameter_count(model)['']
    return dict(flops=flops, params=params, flops_str=format_count(flops),
                params_str=format_count(params), analyzer=analyzer)


#: Powers of ten and their suffixes, largest first.
UNITS = ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K'))


def format_count(count: int) -> str:
    """A count for people, e.g. ``4.126G`` or ``27.9M``: written as
    mmengine's complexity tables write counts (in the largest unit of
    which it is more than a tenth, at most three decimals), whose
    formatter is private to mmengine."""
    for unit, suffix in UNITS:
        if abs(count) > unit / 10:
            return f'{count / unit:.3f}'.rstrip('0').rstrip('.') + suffix
    return str(count)


class _TensorForward(nn.Module):
    """The model's tensor mode, ``model(inputs, data_samples,
    mode='tensor')``, with fixed data samples, so the tracer sees a single
    tensor argument."""

    def __init__(self, model: nn.Module, data_samples) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        return self.model(inputs, self.data_samples, mode='tensor')


def synthetic_inputs(scope: str, shape: Tuple[int, int],
                     batch_size: int = 1, num_objects: int = 0,
                     num_classes: int = 1, seed: int = 0
                     ) -> Tuple[torch.Tensor, list]:
    """A random image batch of ``shape`` (H, W) and matching data samples.

    Detection samples carry ``num_objects`` random boxes per image with
    labels and box-filled masks, as a Mask R-CNN training step consumes
    them (none: only the empty targets query-based heads read).
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, *shape, generator=generator)
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape,
                batch_input_shape=shape, scale_factor=(1.0, 1.0))
    if scope == 'mmpretrain':
        from mmpretrain.structures import DataSample
        return inputs, [DataSample(metainfo=meta) for _ in range(batch_size)]
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return inputs, [SegDataSample(metainfo=meta)
                        for _ in range(batch_size)]
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    height, width = shape
    samples = []
    for _ in range(batch_size):
        corner = torch.rand(num_objects, 2, generator=generator)
        size = 0.1 + 0.4 * torch.rand(num_objects, 2, generator=generator)
        scale = torch.tensor([width, height])
        top_left = (corner * (1 - size) * scale).floor()
        bottom_right = (top_left + size * scale).ceil()
        bboxes = torch.cat([top_left, bottom_right], dim=1)
        masks = torch.zeros(num_objects, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, bboxes.long().tolist()):
            mask[y1:y2, x1:x2] = 1
        sample = DetDataSample(metainfo=meta)
        sample.gt_instances = InstanceData(
            bboxes=bboxes,
            labels=torch.randint(num_classes, (num_objects, ),
                                 generator=generator),
            masks=BitmapMasks(masks.numpy(), height, width))
        samples.append(sample)
    return inputs, samples


def model_complexity(cfg: Config, shape: Tuple[int, int]) -> Dict:
    """Multiply-adds ('flops' in mmengine's naming) and parameters of the
    whole model for one image of ``shape`` (H, W)."""
    model = build_model(cfg)
    inputs, samples = synthetic_inputs(scope_of(cfg), shape)
    with torch.no_grad():
        return count_complexity(_TensorForward(model, samples), (inputs, ))
