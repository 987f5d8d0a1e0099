"""Speed and memory measurements behind ``tools/analysis_tools/benchmark.py``.

Everything a table row needs is measured in the same process (peak memory
on the CPU in a fresh child process), so ratios between rows, and against
the machine's matmul rate, are free of machine-to-machine noise.

The *reference formulation* is this network computed the way the official
implementation does it: attention matrices materialised with an explicit
softmax, and the Haar transforms as grouped (transposed) convolutions with
fixed filters. It has the same weights and outputs, so it shows what the
formulation alone costs.
"""
import multiprocessing
import resource
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import WaveViT
from .ops import DWT2D, IDWT2D


# ------------------------------------------------ reference formulation

def _haar_filters(like: Tensor) -> Tensor:
    """(4, 1, 2, 2) orthonormal Haar analysis filters, LL LH HL HH."""
    lo = torch.tensor([0.5**0.5, 0.5**0.5], dtype=like.dtype,
                      device=like.device)
    hi = torch.tensor([0.5**0.5, -0.5**0.5], dtype=like.dtype,
                      device=like.device)
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))   # (rows, columns)
    return torch.stack([r[:, None] * c[None, :] for r, c in pairs])[:, None]


class ConvHaarDWT(nn.Module):
    """Haar DWT as four strided depthwise convolutions (even sizes)."""

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        filters = _haar_filters(x)
        bands = [F.conv2d(x, f.expand(channels, -1, -1, -1), stride=2,
                          groups=channels) for f in filters]
        return torch.cat(bands, dim=1)


class ConvHaarIDWT(nn.Module):
    """Haar inverse DWT as a grouped transposed convolution."""

    def forward(self, x: Tensor) -> Tensor:
        batch, channels4, height, width = x.shape
        channels = channels4 // 4
        x = x.view(batch, 4, channels, height, width).transpose(1, 2)
        x = x.reshape(batch, channels4, height, width)
        filters = _haar_filters(x).repeat(channels, 1, 1, 1)
        return F.conv_transpose2d(x, filters, stride=2, groups=channels)


def reference_formulation(model: WaveViT) -> WaveViT:
    """``model`` recomputed as the official code does (explicit attention,
    convolutional Haar transforms), sharing its weights."""
    for module in model.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = False
        for name, child in module.named_children():
            if isinstance(child, DWT2D):
                setattr(module, name, ConvHaarDWT())
            elif isinstance(child, IDWT2D):
                setattr(module, name, ConvHaarIDWT())
    return model


# ------------------------------------------------------------- backbones

def _mmdet_backbone(cfg: Dict) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from mmdet.registry import MODELS
        from mmengine.registry import init_default_scope
        init_default_scope('mmdet')
        return MODELS.build(cfg)
    return build


def _reference(arch: str) -> nn.Module:
    return reference_formulation(WaveViT(arch))


BACKBONES: Dict[str, Callable[[], nn.Module]] = {
    'Wave-ViT-S': lambda: WaveViT('s'),
    'Wave-ViT-S (reference formulation)': lambda: _reference('s'),
    'Wave-ViT-B': lambda: WaveViT('b'),
    'Wave-ViT-B (reference formulation)': lambda: _reference('b'),
    'Swin-T (mmdet)': _mmdet_backbone(dict(type='SwinTransformer')),
    'PVTv2-b2 (mmdet)': _mmdet_backbone(dict(
        type='PyramidVisionTransformerV2', embed_dims=64,
        num_layers=[3, 4, 6, 3])),
    'ResNet-50 (mmdet)': _mmdet_backbone(dict(type='ResNet', depth=50)),
}


def build_backbone(name: str, seed: int = 0) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f'unknown backbone {name!r}; one of '
                         f'{sorted(BACKBONES)}')
    torch.manual_seed(seed)
    model = BACKBONES[name]()
    if hasattr(model, 'init_weights'):
        model.init_weights()
    return model


# ----------------------------------------------------------------- timing

def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeat: int, device: torch.device,
              warmup: int = 1) -> List[float]:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_rate(device: torch.device, size: int = 4096, repeat: int = 5,
                dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a size^3 matmul, best of ``repeat``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = min(time_call(lambda: a @ b, repeat, device))
    return 2 * size**3 / best


def multiply_adds(model: nn.Module, image: Tensor) -> int:
    from .analysis import count_complexity
    with torch.no_grad():
        return int(count_complexity(model, (image, ))['flops'])


# ----------------------------------------------------------------- memory

def _train_step(model: nn.Module, image: Tensor) -> None:
    outputs = model(image)
    sum(o.float().square().mean() for o in outputs).backward()


def _resident_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_child(name: str, shape: Tuple[int, ...], with_cp: bool,
                    queue) -> None:
    """Peak resident memory above the baseline during one training step,
    sampled every 0.2 ms by a thread (large tensors are mmap'ed, so the
    resident size follows the live tensors)."""
    model = build_backbone(name)
    model.train()
    if with_cp:
        for module in model.modules():
            if hasattr(module, 'with_cp'):
                module.with_cp = True
    image = torch.randn(shape)
    _train_step(model, image)  # warm up: one-time allocations, grads
    model.zero_grad(set_to_none=False)
    baseline = peak = _resident_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes())
            time.sleep(0.0002)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _train_step(model, image)
    done.set()
    sampler.join()
    queue.put(peak - baseline)


def peak_train_memory(name: str, shape: Tuple[int, ...], with_cp: bool,
                      device: torch.device) -> int:
    """Bytes above the baseline at the peak of one forward + backward.

    CUDA: the allocator's peak. CPU: the peak resident size of a fresh
    process during the step, above its size just before (after a warm-up
    step, with the gradients allocated).
    """
    if device.type == 'cuda':
        model = build_backbone(name).to(device)
        model.train()
        if with_cp:
            for module in model.modules():
                if hasattr(module, 'with_cp'):
                    module.with_cp = True
        image = torch.randn(shape, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _train_step(model, image)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    process = context.Process(target=_peak_rss_child,
                              args=(name, tuple(shape), with_cp, queue))
    process.start()
    result = queue.get(timeout=1800)
    process.join()
    return result


# ----------------------------------------------------------------- tables

def backbone_table(names: List[str], shape: Tuple[int, ...], repeat: int,
                   device: torch.device, memory_shape: Optional[Tuple] = None
                   ) -> Tuple[float, List[Dict]]:
    """One row per backbone: latency min/median (s), params, multiply-adds,
    fraction of the matmul rate, peak training memory; and the rate."""
    rate = matmul_rate(device)
    image = torch.randn(shape, device=device)
    rows = []
    reference_outputs: Dict[str, Tuple[Tensor, ...]] = {}
    for name in names:
        model = build_backbone(name).to(device)
        model.eval()  # some mmdet backbones' train() returns None
        with torch.no_grad():
            times = time_call(lambda: model(image), repeat, device)
            outputs = model(image)
        macs = multiply_adds(model.cpu(), image.cpu())
        model.to(device)
        row = dict(name=name, min=min(times), median=statistics.median(times),
                   params=sum(p.numel() for p in model.parameters()),
                   macs=macs, matmul_fraction=2 * macs / min(times) / rate)
        base = name.split(' (reference')[0]
        if name != base and base in reference_outputs:
            row['max_abs_diff_to_' + base] = max(
                (a.float() - b.float()).abs().max().item()
                for a, b in zip(reference_outputs[base], outputs))
        reference_outputs[name] = outputs
        if memory_shape is not None and name.startswith('Wave-ViT'):
            row['peak_mem'] = peak_train_memory(name, memory_shape, False,
                                                device)
            if 'reference' not in name:
                row['peak_mem_cp'] = peak_train_memory(
                    name, memory_shape, True, device)
        rows.append(row)
        del model
    return rate, rows


def wavelet_table(shapes: List[Tuple[int, ...]], repeat: int,
                  device: torch.device) -> List[Dict]:
    """DWT2D + IDWT2D forward and backward against pytorch_wavelets and the
    convolutional formulation; the max deviation from pytorch_wavelets."""
    from pytorch_wavelets import DWTForward, DWTInverse
    oracle_dwt = DWTForward(J=1, wave='haar', mode='zero').to(device)
    oracle_idwt = DWTInverse(wave='haar', mode='zero').to(device)

    def pytorch_wavelets_pair(x: Tensor) -> Tensor:
        low, (high, ) = oracle_dwt(x)
        return oracle_idwt((low, [high]))

    ours_dwt, ours_idwt = DWT2D(), IDWT2D()
    conv_dwt, conv_idwt = ConvHaarDWT(), ConvHaarIDWT()
    candidates = {
        'wavevit_mm DWT2D+IDWT2D': lambda x: ours_idwt(ours_dwt(x)),
        'convolutional (official)': lambda x: conv_idwt(conv_dwt(x)),
        'pytorch_wavelets': pytorch_wavelets_pair,
    }
    rows = []
    for shape in shapes:
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        row = dict(shape=tuple(shape))
        for label, pair in candidates.items():
            def step() -> None:
                x.grad = None
                pair(x).backward(grad)
            row[label] = statistics.median(time_call(step, repeat, device))
        # equality of the transform itself against the oracle
        low, (high, ) = oracle_dwt(x)
        expected = torch.cat([low] + [high[:, :, k] for k in range(3)], 1)
        row['max_abs_diff'] = (ours_dwt(x) - expected).abs().max().item()
        row['speedup'] = row['pytorch_wavelets'] / row[
            'wavevit_mm DWT2D+IDWT2D']
        rows.append(row)
    return rows
