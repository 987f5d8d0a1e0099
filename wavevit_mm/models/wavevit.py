"""Wave-ViT backbone for dense prediction.

Yao et al., "Wave-ViT: Unifying Wavelet and Transformers for Visual
Representation Learning", ECCV 2022.

The network, bottom-up: FFN -> Attention / WaveletAttention -> Block ->
Stem / Downsample -> Stage -> WaveViT, then the arch presets. Tokens travel
as (B, N, C) sequences with the spatial size (H, W) passed alongside; a
(B, N, C) sequence seen as (B, C, H, W) is a channels-last view, so the
convolutions inside the blocks need no copies.
"""
import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.model.weight_init import (constant_init, initialize,
                                        trunc_normal_init)
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import compat
from ..ops import DWT2D, IDWT2D
from .init_cfg import check_init_cfg, split_init_cfg
from .official import NUM_STAGES
from .pretrained import load_pretrained

# LayerNorm eps of the official implementation: 1e-6 in the blocks and after
# each stage, PyTorch's default 1e-5 after the stem/downsampling convolutions
# and before the wavelet attention's key/value projection.
BLOCK_NORM_EPS = 1e-6
EMBED_NORM_EPS = 1e-5


def tokens_to_map(x: Tensor, hw: Tuple[int, int]) -> Tensor:
    """(B, N, C) -> (B, C, H, W), a channels-last view without copying.

    Split, then permuted: the strides are the canonical channels-last ones
    even for B = 1, which is what the convolution libraries read to keep
    the channels-last layout.
    """
    return x.unflatten(1, hw).permute(0, 3, 1, 2)


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, N, C); a view for channels-last maps."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def channels_last_weights(module: nn.Module) -> None:
    """Give the depthwise and 1x1 convolution weights of ``module``
    channels-last strides.

    For these kernels both layouts are "contiguous" (``is_contiguous()``
    holds and ``view(-1)`` works, so pruning, ``fuse_conv_bn`` and
    parametrizations see an ordinary weight), but the strides are what
    oneDNN and cuDNN read when they choose a layout: with channels-last
    strides they convolve the channels-last token maps in place of first
    copying them to NCHW (which costs more than the depthwise convolution
    itself), and their output is again channels-last, a free (B, N, C)
    token view. Dense kernels stay NCHW, as everywhere in PyTorch: the
    backends reorder them per call, which costs a copy of the weight,
    not of the activation. Loading a state dict copies into these
    layouts, and ``.to()``/``.half()`` keep them.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and (
                m.groups == m.in_channels or m.kernel_size == (1, 1)):
            m.weight = nn.Parameter(
                m.weight.detach().to(memory_format=torch.channels_last),
                requires_grad=m.weight.requires_grad)


class GELU(nn.GELU):
    """``nn.GELU`` that overwrites its input where no gradient flows, so
    inference keeps one copy of the FFN's largest activation, not two."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def attend(q: Tensor, k: Tensor, v: Tensor, fused: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) tensors.

    ``fused`` uses ``F.scaled_dot_product_attention``, which never keeps the
    (N, M) attention matrix; the explicit form is the official formulation
    (scores scaled after the product), kept for inspection and comparison.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1]**-0.5
    return attn.softmax(dim=-1) @ v


class FFN(nn.Module):
    """PVTv2 feed-forward: Linear -> depthwise 3x3 conv -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(
            hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        x = self.fc1(x)                                     # (B, N, hidden)
        x = map_to_tokens(self.dwconv(tokens_to_map(x, hw)))
        return self.fc2(self.act(x))                        # (B, N, C)


class Attention(nn.Module):
    """Global multi-head self-attention (Wave-ViT stages 3 and 4)."""

    def __init__(self, dim: int, num_heads: int, fused_attn: bool = True
                 ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.fused_attn = fused_attn
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
    """Wavelet attention (Wave-ViT stages 1 and 2).

    Keys and values come from a Haar DWT of the (channel-reduced) input, so
    they are downsampled without the information loss of pooling; an
    inverse DWT of the same bands gives a full-resolution local branch that
    is concatenated to the attention output before the projection.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 sr_ratio: int,
                 norm_cfg: Dict = dict(type='BN', requires_grad=True),
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
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

        reduced = self.reduce(tokens_to_map(x, hw))           # (B, C/4, H, W)
        bands = self.filter(self.dwt(reduced))                # (B, C, H/2, W/2)
        local = self.idwt(bands, hw)                          # (B, C/4, H, W)

        # sizes not divisible by 32: pad (by 0 elsewhere) to keep every band
        # pixel; padding by a computed amount, never behind a branch on the
        # size, exports as one graph for every input size
        bands = F.pad(bands, (0, -bands.shape[3] % sr, 0, -bands.shape[2] % sr))
        kv = self.kv(map_to_tokens(self.kv_embed(bands)))     # (B, M, 2C)
        k, v = kv.view(batch, -1, 2, heads, dim // heads).permute(
            2, 0, 3, 1, 4).unbind(0)                          # (B, heads, M, d)

        x = attend(q, k, v, self.fused_attn)                  # (B, heads, N, d)
        x = x.transpose(1, 2).reshape(batch, num_tokens, dim)
        return self.proj(torch.cat([x, map_to_tokens(local)], dim=-1))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), x + mlp(norm2(x))."""

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 mlp_ratio: float,
                 sr_ratio: int,
                 wavelet: bool,
                 drop_path: float = 0.,
                 norm_cfg: Dict = dict(type='BN', requires_grad=True),
                 with_cp: bool = False,
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = (
            WaveletAttention(dim, num_heads, sr_ratio, norm_cfg, fused_attn)
            if wavelet else Attention(dim, num_heads, fused_attn))
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = FFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _inner_forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        if self.with_cp and torch.is_grad_enabled() and (
                x.requires_grad
                or any(p.requires_grad for p in self.parameters())):
            if compat.is_compiling():
                # traced once: the recomputation torch.compile places in
                # the backward graph updates no BatchNorm statistics
                return cp.checkpoint(self._inner_forward, x, hw,
                                     use_reentrant=False)
            return cp.checkpoint(
                self._inner_forward, x, hw, use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(),
                                    _batchnorm_stats_frozen(self)))
        return self._inner_forward(x, hw)


@contextlib.contextmanager
def _batchnorm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged while a block is
    recomputed for activation checkpointing, so ``with_cp`` updates them
    once per step, exactly as without checkpointing."""
    norms = [m for m in module.modules()
             if isinstance(m, _BatchNorm) and m.training
             and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class Stem(nn.Module):
    """Convolutional stem: 7x7/2 and two 3x3 conv-BN-ReLU, then a 3x3/2
    projection to the first embedding dim with LayerNorm (stride 4)."""

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
        x = self.proj(self.conv(x.contiguous(memory_format=torch.channels_last)))
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class Downsample(nn.Module):
    """3x3/2 convolution to the next stage's dim, then LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim, eps=EMBED_NORM_EPS)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.proj(x)
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class Stage(nn.Module):
    """Downsampling (the stem for stage 1), blocks, then a LayerNorm
    (none with ``norm=False``).

    (B, C_in, H_in, W_in) map -> (B, C, H, W) map, H = ceil(H_in / 2).
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


class WaveViT(BaseModule):
    """Wave-ViT backbone returning four feature maps at strides 4-32.

    Args:
        arch: ``'s'``, ``'b'``, ``'l'`` or a dict with exactly the keys of
            :attr:`arch_zoo` entries.
        in_channels: input image channels.
        out_indices: stages whose outputs are returned (0-3).
        drop_path_rate: stochastic depth rate, increased linearly over
            all blocks.
        frozen_stages: -1 trains everything; 0 freezes the stem; k >= 1
            freezes the stem and stages 1..k (eval mode, no gradients).
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: activation checkpointing per block to save memory.
        norm_cfg: BatchNorm config of the stem and the wavelet branches.
        final_norm: end the last stage with its LayerNorm. The official
            classifier applies that norm after its class-attention block
            instead: ``WaveViTClsHead`` holds it, with ``final_norm=False``
            here.
        fused_attn: fused attention (``F.scaled_dot_product_attention``);
            False computes the attention matrix explicitly.
        compile: run the stages through ``torch.compile`` (True, or a dict
            of its keyword arguments, e.g. ``dict(mode='max-autotune')``).
            The whole backbone is one graph, without breaks, on the CPU
            and on GPUs; the heads stay eager. The first iterations compile.
        init_cfg: mmengine init config, a dict or a list of dicts;
            ``dict(type='Pretrained', checkpoint=PATH)`` loads backbone
            weights strictly from an official ImageNet checkpoint, a
            converted one or a whole mmdet/mmseg model, a path or a URL
            (see :mod:`wavevit_mm.models.pretrained`; ``trusted=True``
            also unpickles files that could run code); mmengine's weight
            initialisers (``Constant``, ``TruncNormal``, ... with
            ``layer``/``override``) apply after the official
            initialisation (:mod:`wavevit_mm.models.init_cfg`).
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
    num_wavelet_stages = 2  # stages 1-2 use wavelet attention, 3-4 global

    def __init__(self,
                 arch: Union[str, Dict] = 's',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 norm_cfg: Dict = dict(type='BN', requires_grad=True),
                 final_norm: bool = True,
                 fused_attn: bool = True,
                 compile: Union[bool, Dict] = False,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = self.parse_arch(arch)
        self.out_indices = self._check_out_indices(out_indices)
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(
                f'frozen_stages must be in [-1, {self.num_stages}] (-1 '
                f'freezes nothing, 0 the stem, k the stem and stages 1..k), '
                f'got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        arch = self.arch
        dims = arch['embed_dims']
        self.embed_dims = list(dims)
        drop_rates = torch.linspace(0, drop_path_rate,
                                    sum(arch['depths'])).tolist()
        stages = []
        for i in range(self.num_stages):
            first = sum(arch['depths'][:i])
            blocks = [
                Block(dims[i], arch['num_heads'][i], arch['mlp_ratios'][i],
                      arch['sr_ratios'][i], i < self.num_wavelet_stages,
                      drop_rates[first + j], norm_cfg, with_cp, fused_attn)
                for j in range(arch['depths'][i])
            ]
            downsample = (
                Stem(in_channels, arch['stem_width'], dims[0], norm_cfg)
                if i == 0 else Downsample(dims[i - 1], dims[i]))
            stages.append(Stage(downsample, blocks, dims[i],
                                norm=final_norm or i < self.num_stages - 1))
        self.stages = nn.ModuleList(stages)
        check_init_cfg(init_cfg, self)
        channels_last_weights(self)
        self._freeze_stages()
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f'compile must be a bool or a dict of '
                            f'torch.compile arguments, got {compile!r}')
        self.compile_options = (
            None if compile is False
            else dict(compile) if isinstance(compile, dict) else {})
        if self.compile_options is not None:
            compat.require_backbone_compile()
        self._run_stages = self._stage_runner()

    def _stage_runner(self):
        """``WaveViT._forward_stages``, through ``torch.compile`` when asked.

        Compiled as a function of (self, x): nothing tied to this instance
        is stored in it, so copies of the model stay independent. The
        compiled function cannot be pickled; copies (pickle,
        ``torch.save(model)``, ``copy.deepcopy``) compile their own.
        """
        if self.compile_options is None:
            return WaveViT._forward_stages
        return torch.compile(WaveViT._forward_stages, **self.compile_options)

    def __getstate__(self) -> Dict:
        state = super().__getstate__()
        state.pop('_run_stages', None)
        return state

    def __setstate__(self, state: Dict) -> None:
        super().__setstate__(state)
        self._run_stages = self._stage_runner()

    @classmethod
    def parse_arch(cls, arch: Union[str, Dict]) -> Dict:
        """Return the arch dict for a preset name or validate a custom one."""
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(
                    f'Unknown Wave-ViT arch {arch!r}; choose one of '
                    f'{sorted(cls.arch_zoo)} or pass a dict with keys '
                    f'{sorted(cls.arch_zoo["s"])}')
            return {k: list(v) if isinstance(v, tuple) else v
                    for k, v in cls.arch_zoo[key].items()}
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a preset name or a dict, got '
                            f'{type(arch).__name__}')
        required = set(cls.arch_zoo['s'])
        if set(arch) != required:
            missing, extra = required - set(arch), set(arch) - required
            raise ValueError(
                f'Custom Wave-ViT arch must have exactly the keys '
                f'{sorted(required)}; missing {sorted(missing)}, '
                f'unexpected {sorted(extra)}')
        arch = {k: (list(v) if k != 'stem_width' else v)
                for k, v in arch.items()}
        for key, value in arch.items():
            if key == 'stem_width':
                continue
            if len(value) != cls.num_stages:
                raise ValueError(
                    f'Custom Wave-ViT arch: every per-stage entry needs '
                    f'{cls.num_stages} values, but {key} has {len(value)} '
                    f'({value})')
        for i, (dim, heads) in enumerate(
                zip(arch['embed_dims'], arch['num_heads'])):
            if dim % heads:
                raise ValueError(
                    f'Custom Wave-ViT arch: stage {i + 1} embed dim {dim} '
                    f'is not divisible by its {heads} heads')
            if i < cls.num_wavelet_stages and dim % 4:
                raise ValueError(
                    f'Custom Wave-ViT arch: stage {i + 1} uses wavelet '
                    f'attention, which needs an embed dim divisible by 4 '
                    f'(got {dim})')
        return arch

    def _check_out_indices(self, out_indices: Sequence[int]) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices
               if not isinstance(i, int) or not 0 <= i < self.num_stages]
        if bad or not out_indices or len(set(out_indices)) != len(out_indices):
            raise ValueError(
                f'out_indices must be distinct stage indices in [0, '
                f'{self.num_stages - 1}], got {out_indices}')
        return tuple(sorted(out_indices))

    def init_weights(self) -> None:
        """Initialise as ``init_cfg`` says, the way mmengine's
        ``BaseModule.init_weights`` does: the official initialisation,
        then the weight initialisers of ``init_cfg`` in order (``layer``,
        ``override``), then its ``Pretrained`` entries, loaded strictly.
        With a ``Pretrained`` entry every weight comes from the file."""
        initializers, pretrained = split_init_cfg(self.init_cfg)
        if not pretrained:
            self._official_init()
        if initializers:
            initialize(self, initializers)
        for entry in pretrained:
            load_pretrained(self, entry['checkpoint'],
                            prefix=entry.get('prefix'),
                            trusted=entry.get('trusted', False))

    def _official_init(self) -> None:
        """Truncated-normal Linear weights (std 0.02), unit LayerNorms,
        He-normal convolutions (fan out), zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=.02, bias=0.)
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * \
                    m.out_channels // m.groups
                # drawn in (out, in, kh, kw) order, as for an NCHW weight,
                # then stored in the layout of the parameter: the same
                # initial weights whatever the layout
                drawn = torch.empty(m.weight.shape, dtype=m.weight.dtype,
                                    device=m.weight.device)
                nn.init.normal_(drawn, mean=0., std=(2.0 / fan_out)**0.5)
                with torch.no_grad():
                    m.weight.copy_(drawn)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def stem(self) -> Stem:
        """The convolutional stem, the downsampling of stage 1."""
        return self.stages[0].downsample

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem] + list(self.stages[:self.frozen_stages])

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
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
        if torch.jit.is_tracing():  # e.g. counting FLOPs: never compiled
            return self._forward_stages(x)
        return self._run_stages(self, x)

    def _forward_stages(self, x: Tensor) -> Tuple[Tensor, ...]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                # x is a channels-last view; necks and mmcv ops (RoIAlign's
                # CPU kernel reads raw NCHW memory) expect contiguous maps
                outs.append(x.contiguous())
            if i == self.out_indices[-1]:
                break
        return tuple(outs)
