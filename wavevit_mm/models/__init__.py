from .official import convert_official, describe_arch, infer_arch
from .pretrained import load_pretrained, read_backbone_weights
from .wavevit import WaveViT

__all__ = [
    'WaveViT', 'convert_official', 'describe_arch', 'infer_arch',
    'load_pretrained', 'read_backbone_weights'
]
