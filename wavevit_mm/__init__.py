"""Wave-ViT backbone for OpenMMLab dense prediction (mmdet, mmseg).

Importing the package (configs do it through ``custom_imports``) registers
the backbone, the safeguard hooks, the CPU mixed-precision optimizer
wrapper, and the weights-only checkpoint reader with its allow-list in
mmengine's root registries, and the classifier in mmpretrain's where it
is installed (:mod:`wavevit_mm.registry`).
"""
from . import engine  # noqa: F401  (hooks, optimizer wrapper)
from .checkpoint import load_checkpoint
from .models import WaveViT
from .ops import DWT2D, IDWT2D
from .registry import register_classifier

__version__ = '0.1.0'

register_classifier()

__all__ = ['WaveViT', 'DWT2D', 'IDWT2D', 'load_checkpoint',
           'register_classifier']
