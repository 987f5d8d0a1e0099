from .wavevit import WaveViT

__all__ = ['WaveViT']
