"""Peak memory of a backbone's training step, and the CPU allocator.

On CUDA the allocator's peak is exact. On the CPU the peak resident size
of a fresh child process is sampled instead: large tensors are mmap'ed, so
the resident size follows the live tensors.
"""
import ctypes
import ctypes.util
import multiprocessing
import resource
import threading
import time
from typing import Tuple

import torch

from .backbones import build_backbone, train_step


def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse (this process only).

    By default every large CPU tensor is a fresh ``mmap`` that the kernel
    page-faults in and zeroes on first touch, and hands back when freed; at
    800x1216 that costs Wave-ViT-S about a fifth of its forward time in
    page faults. With mmap off and heap trimming raised, freed blocks are
    reused instead (what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``
    do for a whole program, and what jemalloc/tcmalloc do better). The heap
    may then hold somewhat more than the live tensors, which suits a
    benchmark rather than a long job. Returns False where the C library has
    no ``mallopt`` (not glibc).
    """
    m_trim_threshold, m_mmap_max = -1, -4
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(m_mmap_max, 0)
                and mallopt(m_trim_threshold, 2**31 - 1))


def _resident_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_child(name: str, shape: Tuple[int, ...], with_cp: bool,
                    queue) -> None:
    """Peak resident memory above the baseline during one training step,
    sampled every 0.2 ms by a thread, after a warm-up step that allocates
    the gradients."""
    model = build_backbone(name, with_cp=with_cp)
    model.train()  # not chained: some mmdet backbones' train() returns None
    image = torch.randn(shape)
    train_step(model, image)
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
    train_step(model, image)
    done.set()
    sampler.join()
    queue.put(peak - baseline)


def peak_train_memory(name: str, shape: Tuple[int, ...], with_cp: bool,
                      device: torch.device) -> int:
    """Bytes above the baseline at the peak of one fp32 training step of
    backbone ``name`` at ``shape`` (B, 3, H, W).

    CUDA: the allocator's peak above what was allocated before the step.
    CPU: the peak resident size of a fresh process during the step, above
    its size just before (after a warm-up step, with the gradients
    allocated).
    """
    if device.type == 'cuda':
        model = build_backbone(name, with_cp=with_cp).to(device)
        model.train()
        image = torch.randn(shape, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train_step(model, image)
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
