"""The Haar transforms: wavevit_mm's DWT2D + IDWT2D, eager and compiled,
against the official convolutional formulation and pytorch_wavelets.

At these sizes a step is a few large allocations and a few passes over
memory, so the times depend on how the allocator recycles memory as much
as on the kernels.
"""
import statistics
from typing import Dict, List, Sequence, Tuple

import torch
from pytorch_wavelets import DWTForward, DWTInverse
from torch import Tensor

from wavevit_mm import DWT2D, IDWT2D

from .official_formulation import conv_haar_dwt, conv_haar_idwt
from .report import format_shape, print_markdown
from .timing import time_call

#: Inputs of the table (B, C, H, W): stage-1 and stage-2 sizes of an
#: 800x1216 image, and stage 1 at batch 8 with 32 channels.
SHAPES = [(2, 16, 200, 304), (2, 32, 100, 152), (8, 32, 200, 304)]

OURS, COMPILED = 'wavevit_mm DWT2D+IDWT2D', 'wavevit_mm, torch.compile'
OFFICIAL, ORACLE = 'convolutional (official)', 'pytorch_wavelets'


def wavelet_table(shapes: Sequence[Tuple[int, ...]], repeat: int,
                  device: torch.device) -> List[Dict]:
    """DWT2D + IDWT2D forward and backward of each implementation (min and
    median seconds; the speed-ups compare minima, the least noisy), and the
    max deviation of DWT2D from pytorch_wavelets."""
    oracle_dwt = DWTForward(J=1, wave='haar', mode='zero').to(device)
    oracle_idwt = DWTInverse(wave='haar', mode='zero').to(device)

    def pytorch_wavelets_pair(x: Tensor) -> Tensor:
        low, (high, ) = oracle_dwt(x)
        return oracle_idwt((low, [high]))

    ours_dwt, ours_idwt = DWT2D(), IDWT2D()

    def ours(x: Tensor) -> Tensor:
        return ours_idwt(ours_dwt(x))

    candidates = {
        OURS: ours,
        # what a compiled backbone runs: the operators where the one-pass
        # CPU kernels serve the tensor, else one fused kernel per transform
        COMPILED: torch.compile(ours),
        OFFICIAL: lambda x: conv_haar_idwt(conv_haar_dwt(x)),
        ORACLE: pytorch_wavelets_pair,
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
        low, (high, ) = oracle_dwt(x)
        expected = torch.cat([low] + [high[:, :, k] for k in range(3)], 1)
        row['max_abs_diff'] = (ours_dwt(x) - expected).abs().max().item()
        row['speedup'] = row[ORACLE] / row[OURS]
        row['speedup compiled'] = row[ORACLE] / row[COMPILED]
        rows.append(row)
    return rows


def print_wavelet_table(rows: List[Dict]) -> None:
    print('Haar DWT2D + IDWT2D, forward + backward, min / median times:')
    print_markdown(
        ['input', 'wavevit_mm', COMPILED, OFFICIAL, ORACLE,
         'speed-up vs pytorch_wavelets (eager, compiled)', 'max |diff|'],
        rows,
        lambda row: [format_shape(row['shape'])] + [
            f'{row[key] * 1e3:.2f} / {row[key + " median"] * 1e3:.2f} ms'
            for key in (OURS, COMPILED, OFFICIAL, ORACLE)] + [
            f'{row["speedup"]:.1f}x, {row["speedup compiled"]:.1f}x',
            f'{row["max_abs_diff"]:.1e}'])
