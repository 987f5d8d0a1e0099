"""The backbones a run compares, and the one training step of a backbone.

A row is named after its network and, for another library's network, the
library in brackets (``PVTv2-b2 (mmdet)``). mmdet's models need mmcv's
compiled ops; where they do not import, timm's and torchvision's copies of
the same networks stand in.
"""
import importlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.registry import init_default_scope
from torch import Tensor, nn

from wavevit_mm import WaveViT
from wavevit_mm.errors import InputError

from .official_formulation import OfficialFormulation
from .timing import precision


def _mmdet_backbone(cfg: Dict) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from mmdet.registry import MODELS  # needs mmcv's compiled ops
        init_default_scope('mmdet')
        return MODELS.build(cfg)
    return build


def _official(arch: str) -> nn.Module:
    model = WaveViT(arch)
    model.init_weights()  # as build_backbone does for the other rows
    return OfficialFormulation(model)


def _timm_pvt_v2_b2() -> nn.Module:
    """timm's PVTv2-b2, the same network as mmdet's, as a backbone (the
    four stages' feature maps)."""
    import timm
    return timm.create_model('pvt_v2_b2', pretrained=False,
                             features_only=True)


class TorchvisionResNetStages(nn.Module):
    """torchvision's ResNet-50 as a backbone: the feature maps of its four
    stages, as mmdet's ``ResNet(depth=50)`` gives them (no pooling, no
    classifier)."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision
        net = torchvision.models.resnet50()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList(
            [net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


BACKBONES: Dict[str, Callable[[], nn.Module]] = {
    'Wave-ViT-S': lambda: WaveViT('s'),
    'Wave-ViT-S (compiled)': lambda: WaveViT('s', compile=True),
    'Wave-ViT-S (official formulation)': lambda: _official('s'),
    'Wave-ViT-B': lambda: WaveViT('b'),
    'Wave-ViT-B (official formulation)': lambda: _official('b'),
    'Swin-T (mmdet)': _mmdet_backbone(dict(type='SwinTransformer')),
    'PVTv2-b2 (mmdet)': _mmdet_backbone(dict(
        type='PyramidVisionTransformerV2', embed_dims=64,
        num_layers=[3, 4, 6, 3])),
    'PVTv2-b2 (timm)': _timm_pvt_v2_b2,
    'ResNet-50 (mmdet)': _mmdet_backbone(dict(type='ResNet', depth=50)),
    'ResNet-50 (torchvision)': TorchvisionResNetStages,
}

#: The rows of a run without --backbones; a network's name alone stands for
#: the first of its rows whose library can be imported here.
DEFAULT_BACKBONES = ('Wave-ViT-S', 'Wave-ViT-S (official formulation)',
                     'Wave-ViT-B', 'Wave-ViT-B (official formulation)',
                     'Swin-T', 'PVTv2-b2', 'ResNet-50')

#: What a row from another library needs to build (mmdet's models import
#: mmcv's compiled ops).
_LIBRARIES = {'mmdet': 'mmdet.models', 'timm': 'timm',
              'torchvision': 'torchvision'}


def _library(row: str) -> Optional[str]:
    return _LIBRARIES.get(row.rpartition(' (')[2].rstrip(')'))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve_backbones(names: Sequence[str]) -> List[str]:
    """Row names for ``names``: each a row name as printed, or a network's
    name alone (``PVTv2-b2``), which picks the first of its rows whose
    library imports here (mmdet's, else timm's or torchvision's), or else
    the first, whose row then shows why it failed."""
    rows = []
    for name in names:
        variants = [name] if name in BACKBONES else [
            row for row in BACKBONES
            if row.startswith(name + ' (') and _library(row)]
        if not variants:
            raise InputError(
                f'unknown backbone {name!r}: give one of {sorted(BACKBONES)} '
                f'or a network name alone (Swin-T, PVTv2-b2, ResNet-50)')
        usable = [row for row in variants
                  if _library(row) is None or _importable(_library(row))]
        rows.append((usable or variants)[0])
    return rows


def build_backbone(name: str, seed: int = 0, with_cp: bool = False
                   ) -> nn.Module:
    """The backbone of row ``name``, initialised from ``seed``; ``with_cp``
    turns on activation checkpointing in every module that offers it."""
    if name not in BACKBONES:
        raise InputError(f'unknown backbone {name!r}; one of '
                         f'{sorted(BACKBONES)}')
    torch.manual_seed(seed)
    model = BACKBONES[name]()
    if hasattr(model, 'init_weights'):
        model.init_weights()
    if with_cp:
        for module in model.modules():
            if hasattr(module, 'with_cp'):
                module.with_cp = True
    return model


def train_step(model: nn.Module, image: Tensor, dtype: str = 'fp32') -> None:
    """One training step of a backbone alone, as every table measures it:
    the forward in ``dtype`` (see :func:`~.timing.precision`), the sum of
    the outputs as the loss, backward. Gradients accumulate into ``.grad``
    as in training; callers release them first where a step must start
    without them. Behind a final LayerNorm the gradients of this loss are
    zero in value, but autograd computes them all the same."""
    with precision(dtype, image.device):
        loss = sum(out.float().sum() for out in model(image))
    loss.backward()
