"""The official formulation of Wave-ViT, kept for comparison.

:class:`OfficialFormulation` is a :class:`~wavevit_mm.WaveViT` computed the
way the official implementation computes it, with the same weights and
outputs, so it shows what the formulation alone costs; no official code is
needed. The Haar transforms are convolutions with fixed filters, as there.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavevit_mm import WaveViT
from wavevit_mm.models.wavevit import attend


def _haar_filters(like: Tensor) -> Tensor:
    """(4, 1, 2, 2) orthonormal Haar analysis filters, LL LH HL HH."""
    lo = torch.tensor([0.5**0.5, 0.5**0.5], dtype=like.dtype,
                      device=like.device)
    hi = torch.tensor([0.5**0.5, -0.5**0.5], dtype=like.dtype,
                      device=like.device)
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))   # (rows, columns)
    return torch.stack([r[:, None] * c[None, :] for r, c in pairs])[:, None]


def conv_haar_dwt(x: Tensor) -> Tensor:
    """Haar DWT as four strided depthwise convolutions (even sizes)."""
    x = x.contiguous()
    channels = x.shape[1]
    bands = [F.conv2d(x, f.expand(channels, -1, -1, -1), stride=2,
                      groups=channels) for f in _haar_filters(x)]
    return torch.cat(bands, dim=1)


def conv_haar_idwt(x: Tensor) -> Tensor:
    """Haar inverse DWT as a grouped transposed convolution."""
    batch, channels4, height, width = x.shape
    channels = channels4 // 4
    x = x.view(batch, 4, channels, height, width).transpose(1, 2)
    x = x.reshape(batch, channels4, height, width)
    filters = _haar_filters(x).repeat(channels, 1, 1, 1)
    return F.conv_transpose2d(x, filters, stride=2, groups=channels)


class OfficialFormulation(nn.Module):
    """A :class:`WaveViT` computed step by step the way the official
    implementation computes it, with the same weights and outputs.

    Tokens are permuted to NCHW around every convolution, the Haar
    transforms are grouped (transposed) convolutions with fixed filters on
    contiguous copies, and the attention matrices are materialised with an
    explicit softmax. Inputs must be divisible by 32 (the official code has
    no padding). It exists to measure what the formulation costs.
    """

    def __init__(self, model: WaveViT) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def _ffn(ffn, x: Tensor, height: int, width: int) -> Tensor:
        batch = x.shape[0]
        x = ffn.fc1(x)
        x = x.transpose(1, 2).view(batch, -1, height, width)
        x = ffn.dwconv(x).flatten(2).transpose(1, 2)
        return ffn.fc2(ffn.act(x))

    @staticmethod
    def _attend(attn, x: Tensor, kv_tokens: Tensor) -> Tensor:
        """Multi-head attention of x's queries over kv_tokens, (B, N, C)."""
        batch, num_tokens, dim = x.shape
        heads = attn.num_heads
        q = attn.q(x).reshape(batch, num_tokens, heads, -1).permute(0, 2, 1, 3)
        kv = attn.kv(kv_tokens).reshape(batch, -1, 2, heads, dim // heads)
        k, v = kv.permute(2, 0, 3, 1, 4)
        x = attend(q, k, v, fused=False).transpose(1, 2)
        return x.reshape(batch, num_tokens, dim)

    def _global_attention(self, attn, x: Tensor, height: int, width: int
                          ) -> Tensor:
        return attn.proj(self._attend(attn, x, x))

    def _wavelet_attention(self, attn, x: Tensor, height: int, width: int
                           ) -> Tensor:
        batch, _, dim = x.shape
        bands = x.view(batch, height, width, dim).permute(0, 3, 1, 2)
        bands = attn.filter(conv_haar_dwt(attn.reduce(bands)))
        local = conv_haar_idwt(bands)
        local = local.view(batch, -1, height * width).transpose(1, 2)
        kv = attn.kv_embed(bands).reshape(batch, dim, -1).permute(0, 2, 1)
        return attn.proj(torch.cat([self._attend(attn, x, kv), local], -1))

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f'the official formulation needs sizes '
                             f'divisible by 32, got {tuple(x.shape[2:])}')
        outs = []
        for i, stage in enumerate(self.model.stages):
            down = stage.downsample
            if i == 0:
                x = down.conv(x)
            x = down.proj(x)
            batch, _, height, width = x.shape
            x = down.norm(x.flatten(2).transpose(1, 2))
            for block in stage.blocks:
                attention = (self._wavelet_attention
                             if hasattr(block.attn, 'kv_embed') else
                             self._global_attention)
                x = x + block.drop_path(
                    attention(block.attn, block.norm1(x), height, width))
                x = x + block.drop_path(
                    self._ffn(block.mlp, block.norm2(x), height, width))
            x = stage.norm(x).reshape(batch, height, width, -1)
            x = x.permute(0, 3, 1, 2).contiguous()
            if i in self.model.out_indices:
                outs.append(x)
        return tuple(outs)
