"""Wave-ViT backbone for OpenMMLab dense prediction (mmdet, mmseg).

Importing the package (configs do it through ``custom_imports``) registers
the backbone, the safeguard hooks, the CPU mixed-precision optimizer
wrapper, and the weights-only checkpoint reader with its allow-list.
"""
from . import engine  # noqa: F401  (hooks, optimizer wrapper)
from .checkpoint import load_checkpoint
from .models import WaveViT
from .ops import DWT2D, IDWT2D
from .registry import register_backbone

__version__ = '0.1.0'

register_backbone()

__all__ = ['WaveViT', 'DWT2D', 'IDWT2D', 'load_checkpoint',
           'register_backbone']
