from .wavelet import DWT2D, IDWT2D, haar_dwt2d, haar_idwt2d

__all__ = ['DWT2D', 'IDWT2D', 'haar_dwt2d', 'haar_idwt2d']
