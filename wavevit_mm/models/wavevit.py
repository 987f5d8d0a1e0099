"""Wave-ViT backbone for dense prediction.

Yao et al., "Wave-ViT: Unifying Wavelet and Transformers for Visual
Representation Learning", ECCV 2022.

The network, bottom-up: FFN -> Attention / WaveletAttention -> Block ->
Stem / Downsample -> Stage -> WaveViT, then the arch presets. Tokens travel
as (B, N, C) sequences with the spatial size (H, W) passed alongside; a
(B, N, C) sequence seen as (B, C, H, W) is a channels-last view, so the
convolutions inside the blocks need no copies. How it runs fast (weight
layouts, checkpointing, compiling) is in :mod:`.runtime`.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import initialize
from mmengine.registry import MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import DWT2D, IDWT2D
from . import runtime
from .init_cfg import check_init_cfg, official_init, split_init_cfg
from .pretrained import format_summary, load_pretrained

#: Wave-ViT has four stages; the first two use wavelet attention.
NUM_STAGES = 4
NUM_WAVELET_STAGES = 2
# LayerNorm eps of the official implementation: 1e-6 in the blocks and after
# each stage, PyTorch's default 1e-5 after the stem/downsampling convolutions
# and before the wavelet attention's key/value projection.
BLOCK_NORM_EPS = 1e-6
EMBED_NORM_EPS = 1e-5


def tokens_to_map(x: Tensor, hw: Tuple[int, int]) -> Tensor:
    """(B, N, C) -> (B, C, H, W), a channels-last view without copying
    (split, then permuted: canonical channels-last strides even for B=1)."""
    return x.unflatten(1, hw).permute(0, 3, 1, 2)


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, N, C); a view for channels-last maps."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def attend(q: Tensor, k: Tensor, v: Tensor, fused: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) tensors; ``fused``:
    ``F.scaled_dot_product_attention``, which keeps no (N, M) matrix, else
    the official formulation (scores scaled after the product)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1]**-0.5
    return attn.softmax(dim=-1) @ v


class FFN(nn.Module):
    """PVTv2's feed-forward: Linear -> depthwise 3x3 conv -> GELU -> Linear.
    The depthwise convolution gives every token its neighbours' positions.

    Args:
        dim (int): The token feature dimension.
        hidden_dim (int): The hidden dimension (``dim * mlp_ratio``).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(
            hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        x = self.fc1(x)                                     # (B, N, hidden)
        x = map_to_tokens(self.dwconv(tokens_to_map(x, hw)))
        return self.fc2(self.act(x))                        # (B, N, C)


class Attention(nn.Module):
    """Global multi-head self-attention, in stages 3 and 4: their maps are
    small enough (stride 16 and 32) for every token to attend to all.

    Args:
        dim (int): The token feature dimension.
        num_heads (int): The number of attention heads.
        fused_attn (bool): Fused attention (:func:`attend`). Default: True.
    """

    def __init__(self, dim: int, num_heads: int, fused_attn: bool = True
                 ) -> None:
        super().__init__()
        self.num_heads, self.fused_attn = num_heads, fused_attn
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        batch, num_tokens, dim = x.shape
        heads = self.num_heads
        q = self.q(x).view(batch, num_tokens, heads, -1).transpose(1, 2)
        k, v = self.kv(x).view(batch, num_tokens, 2, heads, -1).permute(
            2, 0, 3, 1, 4).unbind(0)                     # (B, heads, N, d)
        x = attend(q, k, v, self.fused_attn)
        return self.proj(x.transpose(1, 2).reshape(batch, num_tokens, dim))


class WaveletAttention(nn.Module):
    """Wavelet attention (stages 1, 2): keys and values from a Haar DWT,
    downsampled without the information pooling loses; the inverse DWT of
    the filtered bands adds a full-resolution local branch to the output.

    Args:
        dim (int): The token feature dimension (divisible by 4).
        num_heads (int): The number of attention heads.
        sr_ratio (int): The stride of the key/value embedding over the
            wavelet bands, which are already at half resolution.
        norm_cfg (dict): The norm of the channel reduction and of the band
            filter. Default: ``dict(type='BN', requires_grad=True)``.
        fused_attn (bool): Fused attention (:func:`attend`). Default: True.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int,
                 norm_cfg: Dict = dict(type='BN', requires_grad=True),
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.fused_attn = fused_attn
        reduced = dim // 4
        self.q = nn.Linear(dim, dim)
        self.reduce = nn.Sequential(
            nn.Conv2d(dim, reduced, 1),
            build_norm_layer(norm_cfg, reduced)[1],
            nn.ReLU(inplace=True))
        self.dwt = DWT2D('haar')
        self.filter = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            build_norm_layer(norm_cfg, dim)[1],
            nn.ReLU(inplace=True))
        self.idwt = IDWT2D('haar')
        self.kv_embed = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
        self.kv = nn.Sequential(
            nn.LayerNorm(dim, eps=EMBED_NORM_EPS), nn.Linear(dim, dim * 2))
        self.proj = nn.Linear(dim + reduced, dim)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        batch, num_tokens, dim = x.shape
        heads, sr = self.num_heads, self.sr_ratio
        q = self.q(x).view(batch, num_tokens, heads, -1).transpose(1, 2)

        reduced = self.reduce(tokens_to_map(x, hw))          # (B, C/4, H, W)
        bands = self.filter(self.dwt(reduced))               # (B, C, H/2, W/2)
        local = self.idwt(bands, hw)                         # (B, C/4, H, W)

        # sizes not divisible by 32: pad (by 0 elsewhere) to keep every band
        # pixel; padding by a computed amount, never behind a branch on the
        # size, exports as one graph for every input size
        bands = F.pad(bands, (0, -bands.shape[3] % sr,
                              0, -bands.shape[2] % sr))
        kv = self.kv(map_to_tokens(self.kv_embed(bands)))    # (B, M, 2C)
        k, v = kv.view(batch, -1, 2, heads, dim // heads).permute(
            2, 0, 3, 1, 4).unbind(0)                         # (B, heads, M, d)

        x = attend(q, k, v, self.fused_attn)                 # (B, heads, N, d)
        x = x.transpose(1, 2).reshape(batch, num_tokens, dim)
        return self.proj(torch.cat([x, map_to_tokens(local)], dim=-1))


class Block(nn.Module):
    """Pre-norm transformer block, x + attn(norm1(x)) then x + mlp(norm2(x)),
    with wavelet attention in the first stages and global attention later.

    Args:
        dim (int): The token feature dimension.
        num_heads (int): The number of attention heads.
        mlp_ratio (float): The FFN's hidden dimension over ``dim``.
        sr_ratio (int): The key/value stride of wavelet attention.
        wavelet (bool): Wavelet attention if True, global attention if not.
        drop_path (float): The stochastic depth rate. Default: 0.
        norm_cfg (dict): The norm of the wavelet attention's convolutions.
            Default: ``dict(type='BN', requires_grad=True)``.
        with_cp (bool): Recompute the block for the backward pass instead
            of keeping its activations. Default: False.
        fused_attn (bool): Fused attention (:func:`attend`). Default: True.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float,
                 sr_ratio: int, wavelet: bool, drop_path: float = 0.,
                 norm_cfg: Dict = dict(type='BN', requires_grad=True),
                 with_cp: bool = False, fused_attn: bool = True) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = (
            WaveletAttention(dim, num_heads, sr_ratio, norm_cfg, fused_attn)
            if wavelet else Attention(dim, num_heads, fused_attn))
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = FFN(dim, int(dim * mlp_ratio))
        self.drop_path = (DropPath(drop_path) if drop_path > 0
                          else nn.Identity())

    def _inner_forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))  # (B, N, C)
        return x + self.drop_path(self.mlp(self.norm2(x), hw))

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        if self.with_cp and torch.is_grad_enabled() and (
                x.requires_grad
                or any(p.requires_grad for p in self.parameters())):
            return runtime.checkpoint(self, self._inner_forward, x, hw)
        return self._inner_forward(x, hw)


class Stem(nn.Module):
    """Convolutional stem, 7x7/2 and two 3x3 conv-BN-ReLU then a 3x3/2
    projection with LayerNorm (stride 4): local features before attention.

    Args:
        in_channels (int): The input image channels.
        stem_width (int): The channels of the three conv-BN-ReLU layers.
        embed_dim (int): The first stage's token dimension.
        norm_cfg (dict): The norm after each convolution.
            Default: ``dict(type='BN', requires_grad=True)``.
    """

    def __init__(self, in_channels: int, stem_width: int, embed_dim: int,
                 norm_cfg: Dict = dict(type='BN', requires_grad=True)
                 ) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for i, kernel in enumerate((7, 3, 3)):
            layers += [
                nn.Conv2d(in_channels if i == 0 else stem_width, stem_width,
                          kernel, stride=2 if i == 0 else 1,
                          padding=kernel // 2, bias=False),
                build_norm_layer(norm_cfg, stem_width)[1],
                nn.ReLU(inplace=True),
            ]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(stem_width, embed_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim, eps=EMBED_NORM_EPS)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        # channels-last from here on: the tokens are views of the maps
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.proj(self.conv(x))                    # (B, C, H/4, W/4)
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class Downsample(nn.Module):
    """Overlapping 3x3/2 convolution to the next stage's dimension, then
    LayerNorm: each stage halves the resolution, as in a CNN pyramid.

    Args:
        in_dim (int): The previous stage's token dimension.
        out_dim (int): This stage's token dimension.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim, eps=EMBED_NORM_EPS)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.proj(x)                               # (B, C, H/2, W/2)
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class Stage(nn.Module):
    """One level of the pyramid: downsampling (the stem for stage 1), the
    blocks at that resolution, then a LayerNorm before the map leaves.

    Args:
        downsample (nn.Module): :class:`Stem` or :class:`Downsample`.
        blocks (Sequence[Block]): The stage's blocks.
        dim (int): The stage's token dimension.
        norm (bool): End with a LayerNorm (an identity if False).
            Default: True.
    """

    def __init__(self, downsample: nn.Module, blocks: Sequence[Block],
                 dim: int, norm: bool = True) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.norm = (nn.LayerNorm(dim, eps=BLOCK_NORM_EPS) if norm
                     else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        x, hw = self.downsample(x)                     # (B, N, C)
        for block in self.blocks:
            x = block(x, hw)
        return tokens_to_map(self.norm(x), hw)         # (B, C, H, W)


@MODELS.register_module()
class WaveViT(BaseModule):
    """Wave-ViT backbone: a four-stage pyramid (strides 4 to 32), wavelet
    attention in the first two stages, global attention in the last two.

    Args:
        arch (str | dict): ``'s'``, ``'b'``, ``'l'`` (any case) or a dict
            with exactly the keys of :attr:`arch_zoo`'s. Default: ``'s'``.
        in_channels (int): The input image channels. Default: 3.
        out_indices (Sequence[int]): The stages (0-3) whose maps are
            returned. Default: ``(0, 1, 2, 3)``.
        drop_path_rate (float): Stochastic depth, rising linearly over the
            blocks. Default: 0.
        frozen_stages (int): -1 trains everything, 0 freezes the stem, k >= 1
            also stages 1..k (eval mode, no gradients). Default: -1.
        norm_eval (bool): BatchNorms in eval mode in training. Default: False.
        with_cp (bool): Checkpoint each block's activations. Default: False.
        norm_cfg (dict): The norm of the stem's and the wavelet attention's
            convolutions. Default: ``dict(type='BN', requires_grad=True)``.
        final_norm (bool): End the last stage with its LayerNorm (False:
            ``WaveViTClsHead`` holds it, as the official classifier).
            Default: True.
        fused_attn (bool): Fused attention (:func:`attend`). Default: True.
        compile (bool | dict): The stages through ``torch.compile`` (True,
            or its arguments), as one graph. Default: False.
        init_cfg (dict | list[dict], optional): ``Pretrained`` entries load
            strictly (:mod:`.pretrained`); mmengine's initialisers apply
            after the official initialisation (:mod:`.init_cfg`).
            Default: None.
    """

    arch_zoo: Dict[str, Dict] = {
        's': dict(stem_width=32, embed_dims=(64, 128, 320, 448),
                  num_heads=(2, 4, 10, 14), mlp_ratios=(8, 8, 4, 4),
                  depths=(3, 4, 6, 3), sr_ratios=(4, 2, 1, 1)),
        'b': dict(stem_width=64, embed_dims=(64, 128, 320, 512),
                  num_heads=(2, 4, 10, 16), mlp_ratios=(8, 8, 4, 4),
                  depths=(3, 4, 12, 3), sr_ratios=(4, 2, 1, 1)),
        'l': dict(stem_width=64, embed_dims=(96, 192, 384, 512),
                  num_heads=(3, 6, 12, 16), mlp_ratios=(8, 8, 4, 4),
                  depths=(3, 6, 18, 3), sr_ratios=(4, 2, 1, 1)),
    }
    num_stages = NUM_STAGES

    def __init__(self, arch: Union[str, Dict] = 's', in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0., frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False,
                 norm_cfg: Dict = dict(type='BN', requires_grad=True),
                 final_norm: bool = True, fused_attn: bool = True,
                 compile: Union[bool, Dict] = False,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = arch = self.parse_arch(arch)
        self.out_indices = self._check_out_indices(out_indices)
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'frozen_stages must be in [-1, {NUM_STAGES}] '
                             f'(-1 freezes nothing, 0 the stem, k the stem '
                             f'and stages 1..k), got {frozen_stages}')
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.with_cp = with_cp
        self.embed_dims = dims = list(arch['embed_dims'])
        drop_rates = iter(torch.linspace(0, drop_path_rate,
                                         sum(arch['depths'])).tolist())
        stages = []
        for i in range(NUM_STAGES):
            blocks = [Block(dims[i], arch['num_heads'][i],
                            arch['mlp_ratios'][i], arch['sr_ratios'][i],
                            i < NUM_WAVELET_STAGES, next(drop_rates),
                            norm_cfg, with_cp, fused_attn)
                      for _ in range(arch['depths'][i])]
            downsample = (
                Stem(in_channels, arch['stem_width'], dims[0], norm_cfg)
                if i == 0 else Downsample(dims[i - 1], dims[i]))
            stages.append(Stage(downsample, blocks, dims[i],
                                norm=final_norm or i < NUM_STAGES - 1))
        self.stages = nn.ModuleList(stages)
        check_init_cfg(init_cfg, self)
        runtime.channels_last_weights(self)
        self._freeze_stages()
        self.stage_runner = runtime.StageRunner(WaveViT.forward_stages,
                                                compile)

    @classmethod
    def parse_arch(cls, arch: Union[str, Dict]) -> Dict:
        """The arch dict of a preset name, or a custom one checked once."""
        keys = sorted(cls.arch_zoo['s'])
        if isinstance(arch, str) and arch.lower() not in cls.arch_zoo:
            raise ValueError(
                f'Unknown Wave-ViT arch {arch!r}; choose one of '
                f'{sorted(cls.arch_zoo)} or pass a dict with keys {keys}')
        if isinstance(arch, str):
            arch = cls.arch_zoo[arch.lower()]
        elif not isinstance(arch, dict):
            raise TypeError(f'arch must be a preset name or a dict, got '
                            f'{type(arch).__name__}')
        elif sorted(arch) != keys:
            raise ValueError(
                f'Custom Wave-ViT arch must have exactly the keys {keys}; '
                f'missing {sorted(set(keys) - set(arch))}, unexpected '
                f'{sorted(set(arch) - set(keys))}')
        arch = {k: v if k == 'stem_width' else list(v)
                for k, v in arch.items()}
        problems = [f'every per-stage entry needs {NUM_STAGES} values, but '
                    f'{k} has {len(v)} ({v})' for k, v in arch.items()
                    if k != 'stem_width' and len(v) != NUM_STAGES]
        for i, (dim, heads) in enumerate(zip(arch['embed_dims'],
                                             arch['num_heads'])):
            if dim % heads:
                problems.append(f'stage {i + 1} embed dim {dim} is not '
                                f'divisible by its {heads} heads')
            if i < NUM_WAVELET_STAGES and dim % 4:
                problems.append(f'stage {i + 1} uses wavelet attention, '
                                f'which needs an embed dim divisible by 4 '
                                f'(got {dim})')
        if problems:
            raise ValueError(f'Custom Wave-ViT arch: {problems[0]}')
        return arch

    @staticmethod
    def _check_out_indices(out_indices: Sequence[int]) -> Tuple[int, ...]:
        out_indices = tuple([out_indices] if isinstance(out_indices, int)
                            else out_indices)
        if not out_indices or len(set(out_indices)) != len(out_indices) or any(
                not isinstance(i, int) or not 0 <= i < NUM_STAGES
                for i in out_indices):
            raise ValueError(
                f'out_indices must be distinct stage indices in [0, '
                f'{NUM_STAGES - 1}], got {out_indices}')
        return tuple(sorted(out_indices))

    def init_weights(self) -> None:
        """Initialise as ``init_cfg`` says, in mmengine's order: the official
        initialisation, then the weight initialisers (``layer``,
        ``override``), then the ``Pretrained`` entries, loaded strictly.
        With a ``Pretrained`` entry every weight comes from the file."""
        initializers, pretrained = split_init_cfg(self.init_cfg)
        if not pretrained:
            official_init(self)
        if initializers:
            initialize(self, initializers)
        for entry in pretrained:
            report = load_pretrained(self, entry['checkpoint'],
                                     entry.get('prefix'),
                                     entry.get('trusted', False))
            MMLogger.get_current_instance().info(format_summary(report))

    @property
    def stem(self) -> Stem:
        """The convolutional stem, the downsampling of stage 1."""
        return self.stages[0].downsample

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        for module in [self.stem, *self.stages[:self.frozen_stages]]:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'WaveViT':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, C, H, W) image -> feature maps of the stages in out_indices,
        (B, embed_dims[i], ~H / 2**(i+2), ~W / 2**(i+2)), any H and W."""
        if x.dim() != 4:
            raise ValueError(f'WaveViT expects a (B, C, H, W) image batch, '
                             f'got shape {tuple(x.shape)}')
        return self.stage_runner(self, x)

    def forward_stages(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The stages (through ``torch.compile`` with ``compile``)."""
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)                      # (B, C_i, H / 2**(i+2), ...)
            if i in self.out_indices:
                # x is a channels-last view; necks and mmcv ops (RoIAlign's
                # CPU kernel reads raw NCHW memory) expect contiguous maps
                outs.append(x.contiguous())
            if i == self.out_indices[-1]:
                break
        return tuple(outs)
