"""Speed and memory measurements behind ``benchmark.py`` (beside it).

Everything a table row needs is measured in the same process (peak memory
on the CPU in a fresh child process), so ratios between rows, and against
the machine's matmul rate, are free of machine-to-machine noise.
"""
import ctypes
import ctypes.util
import multiprocessing
import resource
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from pytorch_wavelets import DWTForward, DWTInverse
from torch import Tensor, nn

from official_formulation import (OfficialFormulation, conv_haar_dwt,
                                  conv_haar_idwt)
from wavevit_mm import DWT2D, IDWT2D, WaveViT
from wavevit_mm.apis import apply_train_options, build_model, synthetic_inputs
from wavevit_mm.apis.complexity import count_complexity


# ------------------------------------------------------------- backbones

def _mmdet_backbone(cfg: Dict) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from mmdet.registry import MODELS  # needs mmcv's compiled ops
        init_default_scope('mmdet')
        return MODELS.build(cfg)
    return build


def _official(arch: str) -> nn.Module:
    model = WaveViT(arch)
    model.init_weights()  # as build_backbone does for the other rows
    return OfficialFormulation(model)


BACKBONES: Dict[str, Callable[[], nn.Module]] = {
    'Wave-ViT-S': lambda: WaveViT('s'),
    'Wave-ViT-S (official formulation)': lambda: _official('s'),
    'Wave-ViT-B': lambda: WaveViT('b'),
    'Wave-ViT-B (official formulation)': lambda: _official('b'),
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

def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse (this process only).

    By default every large CPU tensor is a fresh ``mmap`` that the kernel
    page-faults in and zeroes on first touch, and hands back when freed; at
    800x1216 that costs Wave-ViT-S about a fifth of its forward time in
    page faults. With mmap off and heap trimming raised, freed blocks are
    reused instead (what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``
    do for a whole program, and what jemalloc/tcmalloc do better). The heap
    may then hold somewhat more than the live tensors (a freed block is not
    always reusable for the next aligned request), which suits a benchmark
    rather than a long job. Returns False where the C library has no
    ``mallopt`` (not glibc).
    """
    m_trim_threshold, m_mmap_max = -1, -4
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(m_mmap_max, 0)
                and mallopt(m_trim_threshold, 2**31 - 1))


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
        base = name.split(' (official')[0]
        if name != base and base in reference_outputs:
            row['max_abs_diff_to_' + base] = max(
                (a.float() - b.float()).abs().max().item()
                for a, b in zip(reference_outputs[base], outputs))
        reference_outputs[name] = outputs
        if memory_shape is not None and name.startswith('Wave-ViT'):
            row['peak_mem'] = peak_train_memory(name, memory_shape, False,
                                                device)
            if 'official' not in name:
                row['peak_mem_cp'] = peak_train_memory(
                    name, memory_shape, True, device)
        rows.append(row)
        del model
    return rate, rows


def wavelet_table(shapes: List[Tuple[int, ...]], repeat: int,
                  device: torch.device) -> List[Dict]:
    """DWT2D + IDWT2D forward and backward against pytorch_wavelets and the
    convolutional formulation (min and median seconds; the speed-up compares
    minima, the least noisy), and the max deviation from pytorch_wavelets.

    At these sizes a step is a few large allocations and a few passes over
    memory, so the times depend on how the allocator recycles memory as
    much as on the kernels."""
    oracle_dwt = DWTForward(J=1, wave='haar', mode='zero').to(device)
    oracle_idwt = DWTInverse(wave='haar', mode='zero').to(device)

    def pytorch_wavelets_pair(x: Tensor) -> Tensor:
        low, (high, ) = oracle_dwt(x)
        return oracle_idwt((low, [high]))

    ours_dwt, ours_idwt = DWT2D(), IDWT2D()
    candidates = {
        'wavevit_mm DWT2D+IDWT2D': lambda x: ours_idwt(ours_dwt(x)),
        'convolutional (official)': lambda x: conv_haar_idwt(
            conv_haar_dwt(x)),
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
            times = time_call(step, repeat, device)
            row[label] = min(times)
            row[label + ' median'] = statistics.median(times)
        # equality of the transform itself against the oracle
        low, (high, ) = oracle_dwt(x)
        expected = torch.cat([low] + [high[:, :, k] for k in range(3)], 1)
        row['max_abs_diff'] = (ours_dwt(x) - expected).abs().max().item()
        row['speedup'] = row['pytorch_wavelets'] / row[
            'wavevit_mm DWT2D+IDWT2D']
        rows.append(row)
    return rows


# ------------------------------------------------------ training throughput

def train_throughput(config: str, shape: Tuple[int, int], batch_size: int,
                     repeat: int, device: torch.device, amp: bool = False
                     ) -> Dict:
    """Images per second of full training steps (forward, losses, backward,
    optimizer step) of the detector in ``config`` on a synthetic batch, with
    the config's optimizer; ``amp`` as ``tools/train.py --amp``."""
    cfg = Config.fromfile(config)
    apply_train_options(cfg, amp=amp)
    model = build_model(cfg).to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    head = cfg.model.get('roi_head', cfg.model).get('bbox_head')
    if head is None or 'num_classes' not in head:
        raise ValueError(f'{config}: no bbox_head with num_classes in the '
                         f'model (model.roi_head.bbox_head or '
                         f'model.bbox_head); is it a detector config?')
    num_classes = head.num_classes
    inputs, samples = synthetic_inputs('mmdet', shape, batch_size,
                                       num_objects=8, num_classes=num_classes)
    inputs = inputs.to(device)
    samples = [sample.to(device) for sample in samples]
    losses = []

    def step() -> None:
        with optim_wrapper.optim_context(model):
            loss, _ = model.parse_losses(model.loss(inputs, samples))
        optim_wrapper.update_params(loss)
        losses.append(loss.item())

    times = time_call(step, repeat, device)
    return dict(images_per_second=batch_size / statistics.median(times),
                median=statistics.median(times), min=min(times),
                losses=losses)
