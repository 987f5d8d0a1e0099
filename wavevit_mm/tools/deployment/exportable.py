"""What of a model exports, as modules taking the normalised image batch
and returning raw tensors (Mask R-CNN's detections and masks, see
:mod:`.two_stage`), the refusals of what does not, and the sizes an export
is made and checked at."""
from typing import Dict, List, Sequence, Tuple

from mmengine.config import Config
from torch import Tensor, nn

from ...errors import ConfigError
from ..config import inference_dataset, scope_of
from .runtime import ExportError
from .two_stage import MaskRCNNOutputs, check_mask_rcnn

#: One-stage detection heads whose raw outputs are exported and decoded by
#: their own ``predict_by_feat``.
DENSE_HEADS = ('RetinaHead', 'ATSSHead', 'GFLHead')
#: Names of the head outputs, in the order of ``predict_by_feat``'s
#: arguments.
HEAD_OUTPUTS = ('cls_score', 'bbox_pred', 'score_factor')


class BackboneFeatures(nn.Module):
    """The backbone's feature maps, ``stage{i}`` for each out index."""

    part = 'backbone'

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = getattr(model, 'backbone', model)
        self.output_names = [f'stage{i}' for i in self.backbone.out_indices]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.backbone(x))


class DenseHeadOutputs(nn.Module):
    """A one-stage detector's head outputs, flattened level by level: the
    arguments of ``bbox_head.predict_by_feat``."""

    part = 'detector'

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = model.bbox_head
        levels = len(head.prior_generator.strides)
        groups = 3 if type(head).__name__ == 'ATSSHead' else 2
        self.output_names = [f'{name}_{level}'
                             for name in HEAD_OUTPUTS[:groups]
                             for level in range(levels)]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        outputs = self.model.bbox_head(self.model.extract_feat(x))
        return tuple(t for group in outputs for t in group)


class SegmentationLogits(nn.Module):
    """A segmentor's class logits at the input size, as its decode head's
    ``predict_by_feat`` resizes them."""

    part = 'segmentor'
    output_names = ['seg_logits']

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        head = self.model.decode_head
        logits = head(self.model.extract_feat(x))
        return head.predict_by_feat(logits, [dict(img_shape=x.shape[2:])])


def head_output_groups(outputs: Sequence[Tensor], names: Sequence[str]
                       ) -> List[List[Tensor]]:
    """Flat head outputs back into ``predict_by_feat``'s per-level lists."""
    groups: Dict[str, List[Tensor]] = {}
    for name, output in zip(names, outputs):
        groups.setdefault(name.rsplit('_', 1)[0], []).append(output)
    return [groups[name] for name in HEAD_OUTPUTS if name in groups]


_PYRAMID_POOLING_REFUSAL = (
    '{config}: a dynamic export of {segmentor} would be wrong at every size '
    'but the export size, silently: its pyramid pooling '
    '(nn.AdaptiveAvgPool2d to {sizes} cells) is written into ONNX as '
    'average pooling with kernels computed from the export size, and the '
    'graph keeps no check of the size. Export it at a fixed size instead '
    '(without --dynamic: the crop size by default, or --shape H W), and '
    'resize or pad images to that size.')


def _adaptive_pool_sizes(model: nn.Module) -> List[str]:
    """Output sizes of adaptive poolings other than global ones."""
    sizes = []
    for module in model.modules():
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = module.output_size
            if size not in (1, (1, 1)):
                sizes.append(str(size))
    return sizes


def check_deployable(cfg: Config, config: str) -> None:
    """A ConfigError of one paragraph for a config whose models the
    deployment tools do not take: mmpretrain's classifiers (their test
    pipeline, outputs and decoding are none of the detectors' and
    segmentors'), and a config of no known scope."""
    if scope_of(cfg) == 'mmpretrain':
        raise ConfigError(
            f'{config} is a classification config (default_scope '
            f"'mmpretrain'): the deployment tools export and run mmdet's "
            f"detectors and mmseg's segmentors (and their backbones with "
            f'--backbone-only), not classifiers.')


def exportable(model: nn.Module, config: str, backbone_only: bool = False,
               dynamic: bool = False) -> nn.Module:
    """The module to export for ``model`` (built from ``config``), or an
    ExportError of one paragraph saying why it cannot be."""
    if backbone_only:
        return BackboneFeatures(model).eval()
    name = type(model).__name__
    if hasattr(model, 'decode_head'):
        sizes = _adaptive_pool_sizes(model)
        if dynamic and sizes:
            raise ExportError(_PYRAMID_POOLING_REFUSAL.format(
                config=config, segmentor=f'{name} with '
                f'{type(model.decode_head).__name__}',
                sizes=', '.join(sizes)))
        return SegmentationLogits(model).eval()
    if hasattr(model, 'roi_head'):
        check_mask_rcnn(model, config)
        return MaskRCNNOutputs(model).eval()
    head = getattr(model, 'bbox_head', None)
    if type(head).__name__ in DENSE_HEADS:
        return DenseHeadOutputs(model).eval()
    raise ExportError(
        f'{config}: {name} with {type(head).__name__} is not among the '
        f'models that export (one-stage detectors with '
        f'{", ".join(DENSE_HEADS)}; Mask R-CNN; segmentors; any backbone '
        f'with --backbone-only).')


def default_shape(cfg: Config) -> Tuple[int, int]:
    """The export size (H, W): a segmentor's crop size, else the test
    pipeline's resize scale padded to the preprocessor's size divisor."""
    if cfg.get('crop_size') is not None:
        height, width = cfg.crop_size
        return int(height), int(width)
    preprocessor = cfg.model.get('data_preprocessor') or {}
    divisor = preprocessor.get('pad_size_divisor') or 32
    for step in inference_dataset(cfg)['pipeline']:
        if step.get('type', '').split('.')[-1] == 'Resize' and 'scale' in step:
            width, height = sorted(step['scale'], reverse=True)
            return (-(-height // divisor) * divisor,
                    -(-width // divisor) * divisor)
    raise ConfigError('the config has no crop_size and no Resize step in '
                      'its test pipeline to take the export size from; '
                      'pass --shape H W')


def second_size(shape: Tuple[int, int]) -> Tuple[int, int]:
    """An odd size, neither side a multiple of 2, to check a dynamic file
    at a size other than the export size."""
    height, width = shape
    return (height + height // 4) | 1, (width - width // 4) | 1
