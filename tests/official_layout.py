"""Checkpoints in the layout of the official Wave-ViT classification code,
the backbone weights they should load as, and an independent functional
forward over them, used as test oracles.

Nothing here imports the package under test: key names, shapes and dtypes
are written down from the official ``classification/wavevit.py`` model
(``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, the float16 DWT/IDWT
filter buffers, ``post_network``, ``head``, ``aux_head``), each beside the
name this package's backbone gives it (``stages.{i}.downsample``,
``stages.{i}.blocks.{j}``, ``stages.{i}.norm``). The forward pass, the
stages and the classifier's head (class-attention block, norm4, ``head``
and ``aux_head`` combined as the official code does at test time), is the
benchmark's official formulation (``benchmarking.official_formulation``,
beside tools/analysis_tools/benchmark.py, which imports nothing from the
package either) run in float64: convolutional Haar transforms, which the
tests hold against pytorch_wavelets, and explicit softmax attention. The
official evaluation transform (PIL) is written here.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import pywt
import torch
from benchmarking.official_formulation import classify, forward_stages
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
# The network itself is the benchmark's official formulation
# (tools/analysis_tools/benchmarking/official_formulation.py), run here in
# float64.

def _double(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {k: v.double() if v.is_floating_point() else v
            for k, v in sd.items()}


@torch.no_grad()
def official_stage_outputs(sd: Dict[str, Tensor], arch, image: Tensor
                           ) -> List[Tensor]:
    """The four (B, C, H, W) stage outputs (after norm1..norm4) of the
    official network with weights ``sd`` in eval mode, float64; any size
    (an odd map is zero-padded at the bottom/right before each DWT and the
    inverse cropped back, as the backbone documents)."""
    cfg = ARCHS[arch] if isinstance(arch, str) else arch
    return forward_stages(_double(sd), cfg['heads'], image.double())[0]


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


@torch.no_grad()
def official_logits(sd: Dict[str, Tensor], arch, image: Tensor) -> Tensor:
    """The official classifier's eval-mode output (``token_label=True``):
    the mean token prepended to the last stage's tokens, the class block,
    norm4, then ``head(cls) + 0.5 * max over tokens of aux_head``;
    (B, num_classes), float64."""
    cfg = ARCHS[arch] if isinstance(arch, str) else arch
    sd = _double(sd)
    tokens = forward_stages(sd, cfg['heads'], image.double())[1]
    return classify(sd, cfg['heads'], tokens)


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
