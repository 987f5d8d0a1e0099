"""Checkpoints in the layout of the official Wave-ViT classification code,
the backbone weights they should load as, and an independent functional
forward over them, used as test oracles.

Nothing here imports the package under test: key names, shapes and dtypes
are written down from the official ``classification/wavevit.py`` model
(``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, the float16 DWT/IDWT
filter buffers, ``post_network``, ``head``, ``aux_head``), each beside the
name this package's backbone gives it (``stages.{i}.downsample``,
``stages.{i}.blocks.{j}``, ``stages.{i}.norm``); the forward pass uses
pytorch_wavelets for the transforms and explicit softmax attention; the
classifier's head (class-attention block, norm4, ``head`` and
``aux_head`` combined as the official code does at test time) and the
official evaluation transform (PIL) are written the same way.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import pywt
import torch
import torch.nn.functional as F
from pytorch_wavelets import DWTForward, DWTInverse
from torch import Tensor

ARCHS = {
    's': dict(stem=32, dims=[64, 128, 320, 448], heads=[2, 4, 10, 14],
              mlp=[8, 8, 4, 4], depths=[3, 4, 6, 3], sr=[4, 2, 1, 1]),
    'b': dict(stem=64, dims=[64, 128, 320, 512], heads=[2, 4, 10, 16],
              mlp=[8, 8, 4, 4], depths=[3, 4, 12, 3], sr=[4, 2, 1, 1]),
    'l': dict(stem=64, dims=[96, 192, 384, 512], heads=[3, 6, 12, 16],
              mlp=[8, 8, 4, 4], depths=[3, 6, 18, 3], sr=[4, 2, 1, 1]),
}


def _haar_filter_buffers() -> Dict[str, Tensor]:
    wave = pywt.Wavelet('haar')
    lo, hi = torch.tensor(wave.dec_lo[::-1]), torch.tensor(wave.dec_hi[::-1])
    rlo, rhi = torch.tensor(wave.rec_lo), torch.tensor(wave.rec_hi)
    outer = lambda a, b: (b[:, None] * a[None, :])[None, None]  # noqa: E731
    filters = torch.cat([outer(rlo, rlo), outer(rlo, rhi), outer(rhi, rlo),
                         outer(rhi, rhi)], dim=0)
    return {
        'dwt.w_ll': outer(lo, lo).half(), 'dwt.w_lh': outer(lo, hi).half(),
        'dwt.w_hl': outer(hi, lo).half(), 'dwt.w_hh': outer(hi, hi).half(),
        'idwt.filters': filters.half(),
    }


def _build(arch, seed: int, num_classes: int, random_bn: bool
           ) -> 'OrderedDict[str, Tuple[Tensor, Optional[str]]]':
    """Official key -> (random value, the key this package gives it, or
    None for what a dense backbone drops). Each entry is written with both
    names side by side: the second is stated here, not computed by
    renaming rules."""
    cfg = ARCHS[arch] if isinstance(arch, str) else arch
    gen = torch.Generator().manual_seed(seed)
    entries: 'OrderedDict[str, Tuple[Tensor, Optional[str]]]' = OrderedDict()

    def add(name, ours, suffix, value):
        entries[f'{name}.{suffix}'] = (
            value, None if ours is None else f'{ours}.{suffix}')

    def rand(*shape, scale=None):
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        scale = scale if scale is not None else fan_in ** -0.5
        return torch.randn(*shape, generator=gen) * scale

    def linear(name, ours, out_f, in_f):
        add(name, ours, 'weight', rand(out_f, in_f))
        add(name, ours, 'bias', rand(out_f, scale=0.02))

    def conv(name, ours, out_c, in_c, k, groups=1, bias=True):
        add(name, ours, 'weight', rand(out_c, in_c // groups, k, k))
        if bias:
            add(name, ours, 'bias', rand(out_c, scale=0.02))

    def layer_norm(name, ours, c):
        add(name, ours, 'weight', 1 + rand(c, scale=0.1))
        add(name, ours, 'bias', rand(c, scale=0.1))

    def batch_norm(name, ours, c):
        layer_norm(name, ours, c)
        if random_bn:
            add(name, ours, 'running_mean', rand(c, scale=0.1))
            add(name, ours, 'running_var',
                0.5 + torch.rand(c, generator=gen))
        else:
            add(name, ours, 'running_mean', torch.zeros(c))
            add(name, ours, 'running_var', torch.ones(c))
        add(name, ours, 'num_batches_tracked', torch.tensor(1000))

    dims, stem = cfg['dims'], cfg['stem']
    ours = 'stages.0.downsample'
    conv('patch_embed1.conv.0', f'{ours}.conv.0', stem, 3, 7, bias=False)
    batch_norm('patch_embed1.conv.1', f'{ours}.conv.1', stem)
    conv('patch_embed1.conv.3', f'{ours}.conv.3', stem, stem, 3, bias=False)
    batch_norm('patch_embed1.conv.4', f'{ours}.conv.4', stem)
    conv('patch_embed1.conv.6', f'{ours}.conv.6', stem, stem, 3, bias=False)
    batch_norm('patch_embed1.conv.7', f'{ours}.conv.7', stem)
    conv('patch_embed1.proj', f'{ours}.proj', dims[0], stem, 3)
    layer_norm('patch_embed1.norm', f'{ours}.norm', dims[0])
    haar = _haar_filter_buffers()
    for i in range(4):
        dim, hidden = dims[i], dims[i] * cfg['mlp'][i]
        if i > 0:
            ours = f'stages.{i}.downsample'
            conv(f'patch_embed{i + 1}.proj', f'{ours}.proj', dim,
                 dims[i - 1], 3)
            layer_norm(f'patch_embed{i + 1}.norm', f'{ours}.norm', dim)
        for j in range(cfg['depths'][i]):
            b, o = f'block{i + 1}.{j}', f'stages.{i}.blocks.{j}'
            layer_norm(f'{b}.norm1', f'{o}.norm1', dim)
            layer_norm(f'{b}.norm2', f'{o}.norm2', dim)
            linear(f'{b}.attn.q', f'{o}.attn.q', dim, dim)
            if i < 2:
                for name, value in haar.items():  # derived, not learned
                    module, suffix = name.split('.')
                    add(f'{b}.attn.{module}', None, suffix, value.clone())
                conv(f'{b}.attn.reduce.0', f'{o}.attn.reduce.0', dim // 4,
                     dim, 1)
                batch_norm(f'{b}.attn.reduce.1', f'{o}.attn.reduce.1',
                           dim // 4)
                conv(f'{b}.attn.filter.0', f'{o}.attn.filter.0', dim, dim, 3)
                batch_norm(f'{b}.attn.filter.1', f'{o}.attn.filter.1', dim)
                conv(f'{b}.attn.kv_embed', f'{o}.attn.kv_embed', dim, dim,
                     cfg['sr'][i])
                layer_norm(f'{b}.attn.kv.0', f'{o}.attn.kv.0', dim)
                linear(f'{b}.attn.kv.1', f'{o}.attn.kv.1', 2 * dim, dim)
                linear(f'{b}.attn.proj', f'{o}.attn.proj', dim,
                       dim + dim // 4)
            else:
                linear(f'{b}.attn.kv', f'{o}.attn.kv', 2 * dim, dim)
                linear(f'{b}.attn.proj', f'{o}.attn.proj', dim, dim)
            linear(f'{b}.mlp.fc1', f'{o}.mlp.fc1', hidden, dim)
            conv(f'{b}.mlp.dwconv.dwconv', f'{o}.mlp.dwconv', hidden, hidden,
                 3, groups=hidden)
            linear(f'{b}.mlp.fc2', f'{o}.mlp.fc2', dim, hidden)
        layer_norm(f'norm{i + 1}', f'stages.{i}.norm', dim)
    # the classification network's last block and heads
    dim = dims[-1]
    p = 'post_network.0'
    layer_norm(f'{p}.norm1', None, dim)
    layer_norm(f'{p}.norm2', None, dim)
    linear(f'{p}.attn.kv', None, 2 * dim, dim)
    linear(f'{p}.attn.q', None, dim, dim)
    linear(f'{p}.attn.proj', None, dim, dim)
    linear(f'{p}.mlp.fc1', None, dim * cfg['mlp'][-1], dim)
    linear(f'{p}.mlp.fc2', None, dim, dim * cfg['mlp'][-1])
    linear('head', None, num_classes, dim)
    linear('aux_head', None, num_classes, dim)
    return entries


def official_state_dict(arch, seed: int = 0, num_classes: int = 1000,
                        random_bn: bool = True) -> 'OrderedDict[str, Tensor]':
    """A state dict with the keys, shapes and dtypes of the official
    classification WaveViT (``token_label=True``), random values."""
    return OrderedDict(
        (key, value) for key, (value, _) in
        _build(arch, seed, num_classes, random_bn).items())


def backbone_state_dict(arch, seed: int = 0, num_classes: int = 1000,
                        random_bn: bool = True) -> Dict[str, Tensor]:
    """What the dense backbone should hold after loading
    ``official_state_dict`` with the same arguments: the same tensors under
    this package's ``stages.{i}.downsample / blocks.{j} / norm`` names, the
    classification head and the derived wavelet filter buffers left out."""
    return {ours: value for value, ours in
            _build(arch, seed, num_classes, random_bn).values()
            if ours is not None}


def backbone_names(arch) -> 'OrderedDict[str, Optional[str]]':
    """Official key -> the backbone's name for it, or None for what a
    dense backbone does not use (classification head, filter buffers)."""
    return OrderedDict((key, ours) for key, (_, ours) in
                       _build(arch, 0, 1000, False).items())


# ---------------------------------------------------------------- forward

def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], eps)


def _bn(x, sd, name):
    return F.batch_norm(x, sd[f'{name}.running_mean'],
                        sd[f'{name}.running_var'], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], training=False, eps=1e-5)


def _lin(x, sd, name):
    return F.linear(x, sd[f'{name}.weight'], sd[f'{name}.bias'])


def _softmax_attention(q, k, v, heads):
    """q: (B, N, C), k/v: (B, M, C) -> (B, N, C), explicit softmax."""
    b, n, c = q.shape
    d = c // heads
    q = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    k = k.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    v = v.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    attn = (q @ k.transpose(-2, -1)) * d ** -0.5
    return (attn.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, c)


def _ffn(x, sd, b, h, w):
    x = _lin(x, sd, f'{b}.mlp.fc1')
    bsz, n, c = x.shape
    x = x.transpose(1, 2).reshape(bsz, c, h, w)
    x = F.conv2d(x, sd[f'{b}.mlp.dwconv.dwconv.weight'],
                 sd[f'{b}.mlp.dwconv.dwconv.bias'], padding=1, groups=c)
    x = F.gelu(x.reshape(bsz, c, n).transpose(1, 2))
    return _lin(x, sd, f'{b}.mlp.fc2')


def _wave_attention(x, sd, b, h, w, heads, sr, dwt, idwt):
    bsz, n, c = x.shape
    q = _lin(x, sd, f'{b}.attn.q')
    y = x.transpose(1, 2).reshape(bsz, c, h, w)
    y = F.conv2d(y, sd[f'{b}.attn.reduce.0.weight'],
                 sd[f'{b}.attn.reduce.0.bias'])
    y = F.relu(_bn(y, sd, f'{b}.attn.reduce.1'))
    low, (high, ) = dwt(y)
    y = torch.cat([low] + [high[:, :, k] for k in range(3)], dim=1)
    y = F.conv2d(y, sd[f'{b}.attn.filter.0.weight'],
                 sd[f'{b}.attn.filter.0.bias'], padding=1)
    y = F.relu(_bn(y, sd, f'{b}.attn.filter.1'))
    quarter = c // 4
    local = idwt((y[:, :quarter], [torch.stack(
        [y[:, quarter * (k + 1):quarter * (k + 2)] for k in range(3)],
        dim=2)]))
    local = local.reshape(bsz, quarter, h * w).transpose(1, 2)
    kv = F.conv2d(y, sd[f'{b}.attn.kv_embed.weight'],
                  sd[f'{b}.attn.kv_embed.bias'], stride=sr)
    kv = kv.reshape(bsz, c, -1).transpose(1, 2)
    kv = _lin(_ln(kv, sd, f'{b}.attn.kv.0', 1e-5), sd, f'{b}.attn.kv.1')
    out = _softmax_attention(q, kv[..., :c], kv[..., c:], heads)
    return _lin(torch.cat([out, local], dim=-1), sd, f'{b}.attn.proj')


def _global_attention(x, sd, b, heads):
    c = x.shape[-1]
    q = _lin(x, sd, f'{b}.attn.q')
    kv = _lin(x, sd, f'{b}.attn.kv')
    return _lin(_softmax_attention(q, kv[..., :c], kv[..., c:], heads), sd,
                f'{b}.attn.proj')


def _stages(sd: Dict[str, Tensor], cfg, image: Tensor
            ) -> Tuple[List[Tensor], Tensor]:
    """The official ``forward_tokens`` in float64: the four (B, C, H, W)
    stage outputs after norm1..norm4, and the last stage's (B, N, C)
    tokens before norm4 (which the classifier applies later)."""
    dwt = DWTForward(J=1, wave='haar', mode='zero').double()
    idwt = DWTInverse(wave='haar', mode='zero').double()
    x = image.double()
    outs = []
    for i in range(4):
        if i == 0:
            for k, stride in ((0, 2), (3, 1), (6, 1)):
                wgt = sd[f'patch_embed1.conv.{k}.weight']
                x = F.conv2d(x, wgt, stride=stride, padding=wgt.shape[-1] // 2)
                x = F.relu(_bn(x, sd, f'patch_embed1.conv.{k + 1}'))
        x = F.conv2d(x, sd[f'patch_embed{i + 1}.proj.weight'],
                     sd[f'patch_embed{i + 1}.proj.bias'], stride=2, padding=1)
        bsz, c, h, w = x.shape
        x = _ln(x.flatten(2).transpose(1, 2), sd, f'patch_embed{i + 1}.norm',
                1e-5)
        for j in range(cfg['depths'][i]):
            b = f'block{i + 1}.{j}'
            y = _ln(x, sd, f'{b}.norm1', 1e-6)
            if i < 2:
                y = _wave_attention(y, sd, b, h, w, cfg['heads'][i],
                                    cfg['sr'][i], dwt, idwt)
            else:
                y = _global_attention(y, sd, b, cfg['heads'][i])
            x = x + y
            x = x + _ffn(_ln(x, sd, f'{b}.norm2', 1e-6), sd, b, h, w)
        tokens = x
        x = _ln(x, sd, f'norm{i + 1}', 1e-6)
        x = x.transpose(1, 2).reshape(bsz, c, h, w)
        outs.append(x)
    return outs, tokens


def _double(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {k: v.double() if v.is_floating_point() else v
            for k, v in sd.items()}


@torch.no_grad()
def official_stage_outputs(sd: Dict[str, Tensor], arch, image: Tensor
                           ) -> List[Tensor]:
    """The four (B, C, H, W) stage outputs (after norm1..norm4) of the
    official network with weights ``sd`` in eval mode; sizes divisible by
    32 as the official code requires."""
    cfg = ARCHS[arch] if isinstance(arch, str) else arch
    return _stages(_double(sd), cfg, image)[0]


# ------------------------------------------------------- classification

#: The official classifier's entries after the stages -> the name the
#: whole mmpretrain classifier gives them.
HEAD_NAMES = {
    'post_network.0.norm1': 'head.class_block.norm1',
    'post_network.0.norm2': 'head.class_block.norm2',
    'post_network.0.attn.q': 'head.class_block.attn.q',
    'post_network.0.attn.kv': 'head.class_block.attn.kv',
    'post_network.0.attn.proj': 'head.class_block.attn.proj',
    'post_network.0.mlp.fc1': 'head.class_block.mlp.fc1',
    'post_network.0.mlp.fc2': 'head.class_block.mlp.fc2',
    'norm4': 'head.norm',
    'head': 'head.fc',
    'aux_head': 'head.aux_fc',
}


def classifier_names(arch) -> 'OrderedDict[str, Optional[str]]':
    """Official key -> the whole classifier's name for it (None for the
    derived filter buffers, which it rebuilds)."""
    names = OrderedDict()
    for key, ours in backbone_names(arch).items():
        module, suffix = key.rsplit('.', 1)
        if module in HEAD_NAMES:
            names[key] = f'{HEAD_NAMES[module]}.{suffix}'
        else:
            names[key] = None if ours is None else f'backbone.{ours}'
    return names


def classifier_state_dict(arch, seed: int = 0, num_classes: int = 1000
                          ) -> Dict[str, Tensor]:
    """What the whole classifier (backbone with ``final_norm=False`` and
    the official head) should hold after loading ``official_state_dict``
    with the same arguments."""
    official = official_state_dict(arch, seed, num_classes)
    return {ours: official[key]
            for key, ours in classifier_names(arch).items() if ours}


def _class_block(x, sd, heads):
    """CaiT's class attention block of ``post_network.0``: the first token
    attends to all, then its MLP; the other tokens are left as they are."""
    p = 'post_network.0'
    c = x.shape[-1]
    y = _ln(x, sd, f'{p}.norm1', 1e-6)
    q = _lin(y[:, :1], sd, f'{p}.attn.q')
    kv = _lin(y, sd, f'{p}.attn.kv')
    cls = x[:, :1] + _lin(_softmax_attention(q, kv[..., :c], kv[..., c:],
                                             heads), sd, f'{p}.attn.proj')
    hidden = F.gelu(_lin(_ln(cls, sd, f'{p}.norm2', 1e-6), sd,
                         f'{p}.mlp.fc1'))
    cls = cls + _lin(hidden, sd, f'{p}.mlp.fc2')
    return torch.cat([cls, x[:, 1:]], dim=1)


@torch.no_grad()
def official_logits(sd: Dict[str, Tensor], arch, image: Tensor) -> Tensor:
    """The official classifier's eval-mode output (``token_label=True``):
    the mean token prepended to the last stage's tokens, the class block,
    norm4, then ``head(cls) + 0.5 * max over tokens of aux_head``;
    (B, num_classes), float64."""
    cfg = ARCHS[arch] if isinstance(arch, str) else arch
    sd = _double(sd)
    tokens = _stages(sd, cfg, image)[1]
    x = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    x = _ln(_class_block(x, sd, cfg['heads'][-1]), sd, 'norm4', 1e-6)
    aux = _lin(x[:, 1:], sd, 'aux_head').max(dim=1).values
    return _lin(x[:, 0], sd, 'head') + 0.5 * aux


def official_eval_input(image, size: int) -> Tensor:
    """The official evaluation transform of an RGB PIL image: the shorter
    side resized to int(size / 0.96) (bicubic; the longer one in
    proportion, truncated), a centre crop of ``size`` (offsets rounded),
    ImageNet mean and std; (1, 3, size, size), float64."""
    short = int(size / 0.96)
    width, height = image.size
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    image = image.resize(new, resample=3)  # PIL.Image.BICUBIC
    left = int(round((new[0] - size) / 2.))
    top = int(round((new[1] - size) / 2.))
    image = image.crop((left, top, left + size, top + size))
    x = torch.tensor(list(image.getdata()), dtype=torch.float64)
    x = x.reshape(size, size, 3).permute(2, 0, 1)[None] / 255.
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)
    return (x - mean[:, None, None]) / std[:, None, None]
