"""Wave-ViT as the official implementation computes it, written once: the
benchmark's official formulation and the test suite's float64 oracle.

The network is a function of a state dict in the official layout
(``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``post_network.0``,
``head``, ``aux_head``): tokens are permuted to NCHW around every
convolution, the Haar transforms are strided (transposed) convolutions with
fixed filters, and the attention matrices are materialised with an
explicit softmax. It computes in the dtype it is given (the tests give
float64). Sizes the official code cannot take are computed by the rule the
backbone documents: a map of odd height (width) is zero-padded by one row
(column) at the bottom (right) before the DWT, as pytorch_wavelets does in
``'zero'`` mode, and the inverse is cropped back; the bands are zero-padded
at the bottom/right to a multiple of the reduction ratio before the
key/value embedding.

Nothing here imports ``wavevit_mm``: :class:`OfficialFormulation` takes a
backbone object and feeds its own weights, renamed to the official keys,
to the same functions, so the benchmark shows what the formulation alone
costs.
"""
import functools
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: LayerNorm eps of the official code: patch embeddings and the key/value
#: norm, blocks and stage norms.
EMBED_EPS, BLOCK_EPS = 1e-5, 1e-6


# ------------------------------------------------------------- the Haar DWT

def _haar_filters(like: Tensor) -> Tensor:
    """(4, 1, 2, 2) orthonormal Haar analysis filters, LL LH HL HH."""
    lo = torch.tensor([0.5**0.5, 0.5**0.5], dtype=like.dtype,
                      device=like.device)
    hi = torch.tensor([0.5**0.5, -0.5**0.5], dtype=like.dtype,
                      device=like.device)
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))   # (rows, columns)
    return torch.stack([r[:, None] * c[None, :] for r, c in pairs])[:, None]


def conv_haar_dwt(x: Tensor) -> Tensor:
    """Haar DWT as four strided depthwise convolutions: (B, C, H, W) ->
    (B, 4C, ceil(H/2), ceil(W/2)), the bands one after another; an odd
    side is zero-padded by one at the bottom/right first."""
    height, width = x.shape[-2:]
    x = F.pad(x, (0, width % 2, 0, height % 2)).contiguous()
    channels = x.shape[1]
    bands = [F.conv2d(x, f.expand(channels, -1, -1, -1), stride=2,
                      groups=channels) for f in _haar_filters(x)]
    return torch.cat(bands, dim=1)


def conv_haar_idwt(x: Tensor, size: Optional[Tuple[int, int]] = None
                   ) -> Tensor:
    """Haar inverse DWT as a grouped transposed convolution: (B, 4C, h, w)
    bands -> (B, C, 2h, 2w), cropped to ``size`` when given."""
    batch, channels4, height, width = x.shape
    channels = channels4 // 4
    x = x.view(batch, 4, channels, height, width).transpose(1, 2)
    x = x.reshape(batch, channels4, height, width)
    filters = _haar_filters(x).repeat(channels, 1, 1, 1)
    out = F.conv_transpose2d(x, filters, stride=2, groups=channels)
    if size is not None:
        out = out[..., :size[0], :size[1]]
    return out


# ------------------------------------------------------------ the network

def _ln(x: Tensor, sd: Dict[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], eps)


def _bn(x: Tensor, sd: Dict[str, Tensor], name: str, training: bool
        ) -> Tensor:
    """BatchNorm; in training the batch's statistics, and the running ones
    updated in place (momentum 0.1)."""
    return F.batch_norm(x, sd[f'{name}.running_mean'],
                        sd[f'{name}.running_var'], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], training=training, momentum=0.1,
                        eps=1e-5)


def _lin(x: Tensor, sd: Dict[str, Tensor], name: str) -> Tensor:
    return F.linear(x, sd[f'{name}.weight'], sd[f'{name}.bias'])


def _conv(x: Tensor, sd: Dict[str, Tensor], name: str, **kwargs) -> Tensor:
    return F.conv2d(x, sd[f'{name}.weight'], sd.get(f'{name}.bias'),
                    **kwargs)


def _to_map(x: Tensor, height: int, width: int) -> Tensor:
    """(B, N, C) tokens -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, height, width)


def _to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, heads: int
                      ) -> Tensor:
    """q: (B, N, C), k/v: (B, M, C) -> (B, N, C): softmax(q k^T / sqrt(d))
    v per head, the attention matrix materialised."""
    b, n, c = q.shape
    d = c // heads
    q = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    k = k.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    v = v.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    attn = (q @ k.transpose(-2, -1)) * d ** -0.5
    return (attn.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, c)


def _ffn(x: Tensor, sd: Dict[str, Tensor], b: str, height: int, width: int
         ) -> Tensor:
    x = _lin(x, sd, f'{b}.mlp.fc1')
    hidden = x.shape[-1]
    x = _conv(_to_map(x, height, width), sd, f'{b}.mlp.dwconv.dwconv',
              padding=1, groups=hidden)
    return _lin(F.gelu(_to_tokens(x)), sd, f'{b}.mlp.fc2')


def _wavelet_attention(x: Tensor, sd: Dict[str, Tensor], b: str, height: int,
                       width: int, heads: int, training: bool) -> Tensor:
    """Queries from the tokens; keys and values from the Haar bands of a
    reduced map, filtered by a 3x3 convolution and downsampled by the
    ``kv_embed`` convolution (kernel = stride = the reduction ratio); the
    inverse DWT of the filtered bands is concatenated as a local branch."""
    c = x.shape[-1]
    q = _lin(x, sd, f'{b}.attn.q')
    y = _conv(_to_map(x, height, width), sd, f'{b}.attn.reduce.0')
    y = F.relu(_bn(y, sd, f'{b}.attn.reduce.1', training))
    y = _conv(conv_haar_dwt(y), sd, f'{b}.attn.filter.0', padding=1)
    bands = F.relu(_bn(y, sd, f'{b}.attn.filter.1', training))
    local = _to_tokens(conv_haar_idwt(bands, (height, width)))
    sr = int(sd[f'{b}.attn.kv_embed.weight'].shape[-1])  # an int when traced
    band_h, band_w = bands.shape[-2:]
    bands = F.pad(bands, (0, math.ceil(band_w / sr) * sr - band_w,
                          0, math.ceil(band_h / sr) * sr - band_h))
    kv = _to_tokens(_conv(bands, sd, f'{b}.attn.kv_embed', stride=sr))
    kv = _lin(_ln(kv, sd, f'{b}.attn.kv.0', EMBED_EPS), sd, f'{b}.attn.kv.1')
    out = softmax_attention(q, kv[..., :c], kv[..., c:], heads)
    return _lin(torch.cat([out, local], dim=-1), sd, f'{b}.attn.proj')


def _global_attention(x: Tensor, sd: Dict[str, Tensor], b: str, heads: int
                      ) -> Tensor:
    c = x.shape[-1]
    q = _lin(x, sd, f'{b}.attn.q')
    kv = _lin(x, sd, f'{b}.attn.kv')
    return _lin(softmax_attention(q, kv[..., :c], kv[..., c:], heads), sd,
                f'{b}.attn.proj')


def forward_stages(sd: Dict[str, Tensor], num_heads: Sequence[int],
                   image: Tensor, training: bool = False
                   ) -> Tuple[List[Tensor], Tensor]:
    """The official ``forward_tokens`` over the weights ``sd`` (official
    keys, in the dtype of ``image``): the four (B, C, H, W) stage outputs
    after ``norm1..norm4`` (the last without its norm where ``sd`` has no
    ``norm4``), and the last stage's (B, N, C) tokens before ``norm4``,
    which the classifier applies later. ``training`` uses and updates the
    batch statistics of the BatchNorms. The depths and reduction ratios are
    read from the keys and shapes of ``sd``; a block of the first two
    stages (with a ``kv_embed``) uses wavelet attention."""
    x, outs = image, []
    for i in range(len(num_heads)):
        if i == 0:
            for k, stride in ((0, 2), (3, 1), (6, 1)):
                size = int(sd[f'patch_embed1.conv.{k}.weight'].shape[-1])
                x = _conv(x, sd, f'patch_embed1.conv.{k}', stride=stride,
                          padding=size // 2)
                x = F.relu(_bn(x, sd, f'patch_embed1.conv.{k + 1}', training))
        x = _conv(x, sd, f'patch_embed{i + 1}.proj', stride=2, padding=1)
        height, width = x.shape[-2:]
        x = _ln(_to_tokens(x), sd, f'patch_embed{i + 1}.norm', EMBED_EPS)
        j = 0
        while f'block{i + 1}.{j}.norm1.weight' in sd:
            b = f'block{i + 1}.{j}'
            y = _ln(x, sd, f'{b}.norm1', BLOCK_EPS)
            if f'{b}.attn.kv_embed.weight' in sd:
                y = _wavelet_attention(y, sd, b, height, width, num_heads[i],
                                       training)
            else:
                y = _global_attention(y, sd, b, num_heads[i])
            x = x + y
            x = x + _ffn(_ln(x, sd, f'{b}.norm2', BLOCK_EPS), sd, b, height,
                         width)
            j += 1
        tokens = x
        if f'norm{i + 1}.weight' in sd:
            x = _ln(x, sd, f'norm{i + 1}', BLOCK_EPS)
        x = _to_map(x, height, width).contiguous()
        outs.append(x)
    return outs, tokens


def _class_block(x: Tensor, sd: Dict[str, Tensor], heads: int) -> Tensor:
    """CaiT's class attention block of ``post_network.0``: the first token
    attends to all, then its MLP; the other tokens are left as they are."""
    p = 'post_network.0'
    c = x.shape[-1]
    y = _ln(x, sd, f'{p}.norm1', BLOCK_EPS)
    q = _lin(y[:, :1], sd, f'{p}.attn.q')
    kv = _lin(y, sd, f'{p}.attn.kv')
    cls = x[:, :1] + _lin(softmax_attention(q, kv[..., :c], kv[..., c:],
                                            heads), sd, f'{p}.attn.proj')
    hidden = F.gelu(_lin(_ln(cls, sd, f'{p}.norm2', BLOCK_EPS), sd,
                         f'{p}.mlp.fc1'))
    cls = cls + _lin(hidden, sd, f'{p}.mlp.fc2')
    return torch.cat([cls, x[:, 1:]], dim=1)


def classify(sd: Dict[str, Tensor], num_heads: Sequence[int],
             tokens: Tensor) -> Tensor:
    """The official classifier's eval-mode output (``token_label=True``)
    from the last stage's tokens before ``norm4``: the mean token
    prepended, the class block, ``norm4``, then ``head(cls) + 0.5 * max
    over tokens of aux_head``; (B, num_classes)."""
    x = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    x = _ln(_class_block(x, sd, num_heads[-1]), sd, 'norm4', BLOCK_EPS)
    aux = _lin(x[:, 1:], sd, 'aux_head').max(dim=1).values
    return _lin(x[:, 0], sd, 'head') + 0.5 * aux


# ------------------------------------------------ the benchmark's wrapper

#: A backbone's module names -> the official ones, in order.
_OFFICIAL_NAMES = (
    (r'^stages\.0\.downsample\.conv\.', 'patch_embed1.conv.'),
    (r'^stages\.(\d)\.downsample\.',
     lambda m: f'patch_embed{int(m[1]) + 1}.'),
    (r'^stages\.(\d)\.blocks\.(\d+)\.',
     lambda m: f'block{int(m[1]) + 1}.{m[2]}.'),
    (r'^stages\.(\d)\.norm\.', lambda m: f'norm{int(m[1]) + 1}.'),
    (r'\.mlp\.dwconv\.', '.mlp.dwconv.dwconv.'),
)


@functools.lru_cache(maxsize=None)
def official_key(key: str) -> str:
    """The official key of a Wave-ViT backbone's state-dict entry
    (``stages.{i}.downsample / blocks.{j} / norm`` -> ``patch_embed{i+1} /
    block{i+1}.{j} / norm{i+1}``)."""
    for pattern, official in _OFFICIAL_NAMES:
        key = re.sub(pattern, official, key)
    return key


class OfficialFormulation(nn.Module):
    """A Wave-ViT backbone computed by :func:`forward_stages`, the way the
    official implementation computes it, with the backbone's own weights
    (gradients reach them) and outputs (those of its ``out_indices``).
    Inputs must be divisible by 32, as the official code requires; no drop
    path. It exists to measure what the formulation costs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f'the official formulation needs sizes '
                             f'divisible by 32, got {tuple(x.shape[2:])}')
        weights = {official_key(key): value for key, value in
                   self.model.state_dict(keep_vars=True).items()}
        heads = [stage.blocks[0].attn.num_heads
                 for stage in self.model.stages]
        outs, _ = forward_stages(weights, heads, x, self.training)
        return tuple(outs[i] for i in self.model.out_indices)
