"""How a call is timed, and in which precision.

Every table times its calls with :func:`time_call` inside
:func:`precision`, so rows measured in one run, and the machine's matmul
rate in the same precision, compare free of machine-to-machine noise. On a
GPU, times come from CUDA events after each configuration has been warmed
up on its own.
"""
import contextlib
import time
from typing import Callable, Iterator, List, Optional, Sequence

import torch

from wavevit_mm.errors import InputError

#: autocast dtypes; fp32 and tf32 compute in float32, TF32 off or on.
_AUTOCAST = {'bf16': torch.bfloat16, 'fp16': torch.float16}
DTYPES = ('fp32', 'tf32', 'bf16', 'fp16')
CPU_DTYPES = ('fp32', 'bf16')


def check_dtypes(dtypes: Sequence[str], device: torch.device) -> None:
    """Refuse precisions the device cannot run: TF32 is a GPU mode, and the
    CPU measurements are of float32 and bfloat16 only."""
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise InputError(f'unknown dtype {dtype!r}; one of {DTYPES}')
        if device.type == 'cpu' and dtype not in CPU_DTYPES:
            raise InputError(f'--dtype {dtype} needs a CUDA device: on the '
                             f'CPU only {" and ".join(CPU_DTYPES)} are '
                             f'measured')


@contextlib.contextmanager
def precision(dtype: str, device: torch.device) -> Iterator[None]:
    """Run the block in ``dtype``: fp32 is float32 with TF32 off for
    matmuls and cuDNN convolutions, tf32 the same with TF32 on, bf16 and
    fp16 are ``torch.autocast`` to that dtype (TF32 off for what stays in
    float32). The TF32 switches are restored afterwards."""
    check_dtypes([dtype], device)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = dtype == 'tf32'
    autocast = (torch.autocast(device.type, dtype=_AUTOCAST[dtype])
                if dtype in _AUTOCAST else contextlib.nullcontext())
    try:
        with autocast:
            yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


#: Warm-up before timing, per device type: at least this many calls, and
#: calls for at least this many seconds (a GPU's first calls of a new
#: configuration include cuDNN's algorithm search and the clocks rising).
WARMUP = {'cpu': (1, 0.0), 'cuda': (3, 0.5)}


def time_call(fn: Callable[[], object], repeat: int, device: torch.device,
              warmup: Optional[int] = None) -> List[float]:
    """Seconds taken by each of ``repeat`` calls of ``fn`` after warm-up
    calls (``warmup`` of them if given, else as :data:`WARMUP` says).

    On CUDA each call is timed between two CUDA events with the GPU idle
    before it, so the time covers the kernels it issued and any gaps in
    which the GPU waited for the host: a launch-bound call is timed as it
    runs. On the CPU it is wall-clock time.
    """
    calls, seconds = (WARMUP.get(device.type, (1, 0.0)) if warmup is None
                      else (warmup, 0.0))
    start, done = time.perf_counter(), 0
    while done < calls or time.perf_counter() - start < seconds:
        fn()
        if device.type == 'cuda':  # no queue of warm-up work left behind
            torch.cuda.synchronize(device)
        done += 1
    times = []
    for _ in range(repeat):
        if device.type == 'cuda':
            stream = torch.cuda.current_stream(device)
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return times


def matmul_rate(device: torch.device, dtype: str = 'fp32', size: int = 4096,
                repeat: int = 5, seconds: float = 2.0) -> float:
    """FLOP/s of an n^3 matmul in ``dtype`` (as :func:`precision`), best
    of ``repeat``: the yardstick of a row's "of matmul rate". n doubles
    from 256 up to ``size`` unless a call of the next size would take over
    ``seconds``, as bf16 does on a CPU without bfloat16 instructions (a
    hundred times slower than fp32 there)."""
    tensor_dtype = _AUTOCAST.get(dtype, torch.float32)
    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=tensor_dtype)
        b = torch.randn(n, n, device=device, dtype=tensor_dtype)
        with precision(dtype, device):
            best = min(time_call(lambda: a @ b, repeat, device))
        if n >= size or 8 * best > seconds:
            return 2 * n**3 / best
        n *= 2
