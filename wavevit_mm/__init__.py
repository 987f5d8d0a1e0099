"""Wave-ViT backbone for OpenMMLab dense prediction (mmdet, mmseg)."""
from . import amp, hooks  # noqa: F401  (register the optim wrapper, hooks)
from .models import WaveViT
from .ops import DWT2D, IDWT2D
from .registry import register_all_modules

__version__ = '0.1.0'

register_all_modules()

__all__ = ['WaveViT', 'DWT2D', 'IDWT2D', 'register_all_modules']
