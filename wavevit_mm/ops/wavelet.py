"""One-level 2D discrete wavelet transforms, DWT2D and IDWT2D.

The four sub-bands are concatenated on the channel axis, band-major:
``[LL, LH, HL, HH]``, each with the C input channels, i.e. the layout of
``pytorch_wavelets.DWTForward(J=1, mode='zero')`` output
``cat([yl, yh[:, :, 0], yh[:, :, 1], yh[:, :, 2]], dim=1)``. Wave-ViT's
3x3 filter convolution is trained on exactly this channel order.

The Haar transform is computed with strided slicing and additions. Because
the orthonormal Haar DWT is its own adjoint's inverse, the backward pass of
the DWT is the IDWT of the incoming gradient and vice versa, so both
directions cost a few element-wise passes and no convolution. Odd sizes are
zero-padded at the bottom/right, as pytorch_wavelets does in ``'zero'`` mode.
Other wavelets are delegated to pytorch_wavelets.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _haar_dwt(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2)), no autograd logic."""
    batch, channels, height, width = x.shape
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2))
    # (B, C, h, 2, w, 2): row parity on dim 3, column parity on dim 5.
    x = x.reshape(batch, channels, x.shape[2] // 2, 2, x.shape[3] // 2, 2)
    top, bottom = x[:, :, :, 0], x[:, :, :, 1]            # (B, C, h, w, 2)
    row_sum, row_diff = (top + bottom) * 0.5, (top - bottom) * 0.5
    bands = torch.stack(
        (
            row_sum[..., 0] + row_sum[..., 1],    # LL
            row_diff[..., 0] + row_diff[..., 1],  # LH: high-pass along H
            row_sum[..., 0] - row_sum[..., 1],    # HL: high-pass along W
            row_diff[..., 0] - row_diff[..., 1],  # HH
        ),
        dim=1)                                     # (B, 4, C, h, w)
    return bands.flatten(1, 2)


def _haar_idwt(x: Tensor) -> Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w), the inverse of :func:`_haar_dwt`."""
    batch, channels4, height, width = x.shape
    if channels4 % 4:
        raise ValueError(
            f'IDWT2D expects 4*C channels (LL, LH, HL, HH bands), got '
            f'{channels4} channels')
    ll, lh, hl, hh = x.view(batch, 4, channels4 // 4, height, width).unbind(1)
    low_sum, low_diff = (ll + hl) * 0.5, (ll - hl) * 0.5    # columns even/odd
    high_sum, high_diff = (lh + hh) * 0.5, (lh - hh) * 0.5
    top = torch.stack((low_sum + high_sum, low_diff + high_diff), dim=-1)
    bottom = torch.stack((low_sum - high_sum, low_diff - high_diff), dim=-1)
    out = torch.stack((top, bottom), dim=3)       # (B, C, h, 2, w, 2)
    return out.reshape(batch, channels4 // 4, 2 * height, 2 * width)


class _HaarDWTFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.input_size = x.shape[-2:]
        return _haar_dwt(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        height, width = ctx.input_size
        return _HaarIDWTFunction.apply(grad)[..., :height, :width]


class _HaarIDWTFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _haar_idwt(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _HaarDWTFunction.apply(grad)


def haar_dwt2d(x: Tensor) -> Tensor:
    """Haar DWT: (B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2))."""
    return _HaarDWTFunction.apply(x)


def haar_idwt2d(x: Tensor) -> Tensor:
    """Haar inverse DWT: (B, 4C, h, w) -> (B, C, 2h, 2w)."""
    return _HaarIDWTFunction.apply(x)


def _check_4d(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f'{name} expects a (B, C, H, W) tensor, got shape '
                         f'{tuple(x.shape)}')


class DWT2D(nn.Module):
    """One-level 2D DWT with bands concatenated on channels (LL, LH, HL, HH).

    Args:
        wave: wavelet name. ``'haar'`` uses the fast built-in transform; any
            other name known to pytorch_wavelets is delegated to
            ``pytorch_wavelets.DWTForward(J=1, mode='zero')``.
    """

    def __init__(self, wave: str = 'haar') -> None:
        super().__init__()
        self.wave = wave
        self._delegate = None
        if wave != 'haar':
            from pytorch_wavelets import DWTForward
            self._delegate = DWTForward(J=1, wave=wave, mode='zero')

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, 'DWT2D')
        if self._delegate is None:
            return haar_dwt2d(x)
        low, (high, ) = self._delegate(x)      # high: (B, C, 3, h, w)
        return torch.cat([low, high.transpose(1, 2).flatten(1, 2)], dim=1)

    def extra_repr(self) -> str:
        return f"wave='{self.wave}'"


class IDWT2D(nn.Module):
    """Inverse of :class:`DWT2D`: (B, 4C, h, w) -> (B, C, 2h, 2w).

    Args:
        wave: wavelet name, as for :class:`DWT2D`.
    """

    def __init__(self, wave: str = 'haar') -> None:
        super().__init__()
        self.wave = wave
        self._delegate = None
        if wave != 'haar':
            from pytorch_wavelets import DWTInverse
            self._delegate = DWTInverse(wave=wave, mode='zero')

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, 'IDWT2D')
        if self._delegate is None:
            return haar_idwt2d(x)
        batch, channels4, height, width = x.shape
        if channels4 % 4:
            raise ValueError(
                f'IDWT2D expects 4*C channels (LL, LH, HL, HH bands), got '
                f'{channels4} channels')
        bands = x.view(batch, 4, channels4 // 4, height, width)
        return self._delegate((bands[:, 0], [bands[:, 1:].transpose(1, 2)]))

    def extra_repr(self) -> str:
        return f"wave='{self.wave}'"


__all__: Tuple[str, ...] = ('DWT2D', 'IDWT2D', 'haar_dwt2d', 'haar_idwt2d')
