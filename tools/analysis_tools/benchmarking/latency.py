"""Backbone inference latency, and the time of a backbone's training step.

Each row is measured in the same process as the others and as the matmul
rate it is compared with; an official formulation's row also says how far
its outputs are from its network's in the same setting.
"""
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from wavevit_mm.tools.complexity import count_complexity

from .backbones import build_backbone, train_step
from .memory import peak_train_memory
from .report import failed_row, format_shape, gb, ms, print_markdown
from .timing import matmul_rate, precision, time_call

OFFICIAL = ' (official formulation)'


def backbone_table(names: Sequence[str], batch_sizes: Sequence[int],
                   size: Tuple[int, int], repeat: int, device: torch.device,
                   dtypes: Sequence[str] = ('fp32', ),
                   memory_shape: Optional[Tuple] = None
                   ) -> Tuple[Dict[str, float], List[Dict]]:
    """Inference latency of each backbone for each batch size and dtype.

    A row: name, dtype, batch, input, min and median seconds, params,
    multiply-adds, the fraction of the matmul rate in the same dtype
    achieved, for an official formulation the largest difference from the
    outputs of its network, and, with ``memory_shape`` (B, 3, H, W), the
    peak memory of one fp32 training step of the Wave-ViT rows (with and
    without ``with_cp``). Returns the matmul rate per dtype and the rows.
    """
    rates = {dtype: matmul_rate(device, dtype) for dtype in dtypes}
    rows = []
    reference_outputs: Dict[Tuple, Tuple[Tensor, ...]] = {}
    for name in names:
        try:
            model = build_backbone(name).to(device)
        except (ImportError, RuntimeError) as error:
            rows.append(failed_row(dict(name=name), error, device))
            continue
        model.eval()
        # linear in the batch size: counted once, at batch 1, on the CPU
        with torch.no_grad():
            macs_per_image = int(count_complexity(
                model.cpu(), (torch.randn(1, 3, *size), ))['flops'])
        model.to(device)
        params = sum(p.numel() for p in model.parameters())
        base = name.removesuffix(OFFICIAL)
        for batch in batch_sizes:
            image = torch.randn(batch, 3, *size, device=device)
            for dtype in dtypes:
                row = dict(name=name, dtype=dtype, batch=batch,
                           input=[batch, 3, *size])
                try:
                    with torch.no_grad(), precision(dtype, device):
                        times = time_call(lambda: model(image), repeat,
                                          device)
                        outputs = model(image)
                except RuntimeError as error:
                    rows.append(failed_row(row, error, device))
                    continue
                macs = macs_per_image * batch
                row.update(min=min(times), median=statistics.median(times),
                           params=params, macs=macs, matmul_fraction=2 *
                           macs / min(times) / rates[dtype])
                reference = reference_outputs.get((base, batch, dtype))
                if name != base and reference is not None:
                    row['max_abs_diff_to_' + base] = max(
                        (a.float() - b.float()).abs().max().item()
                        for a, b in zip(reference, outputs))
                if name + OFFICIAL in names:
                    reference_outputs[(name, batch, dtype)] = outputs
                del outputs
                rows.append(row)
        del model
        if memory_shape is not None and name.startswith('Wave-ViT'):
            peaks = dict(peak_mem=peak_train_memory(name, memory_shape, False,
                                                    device))
            if name == base:
                peaks['peak_mem_cp'] = peak_train_memory(
                    name, memory_shape, True, device)
            for row in rows:
                if row['name'] == name and 'error' not in row:
                    row.update(peaks)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return rates, rows


def print_backbone_table(rates: Dict[str, float], rows: List[Dict]) -> None:
    print('matmul rate (4096^3, or smaller where a call would take over '
          '2 s): ' + ', '.join(
        f'{dtype} {rate / 1e12:.2f} TFLOP/s' for dtype, rate in rates.items()))
    print_markdown(
        ['backbone', 'dtype', 'batch', 'latency min (ms)', 'median (ms)',
         'params (M)', 'multiply-adds (G)', 'of matmul rate',
         'peak train mem (GB)', 'with with_cp (GB)'], rows,
        lambda row: [row['name'], row['dtype'], str(row['batch']),
                     ms(row['min']), ms(row['median']),
                     f'{row["params"] / 1e6:.2f}', f'{row["macs"] / 1e9:.1f}',
                     f'{100 * row["matmul_fraction"]:.0f}%',
                     gb(row.get('peak_mem')), gb(row.get('peak_mem_cp'))])
    for row in rows:
        for key, value in row.items():
            if key.startswith('max_abs_diff_to_'):
                print(f'{row["name"]}, {row["dtype"]}, batch {row["batch"]}: '
                      f'max |difference| to '
                      f'{key[len("max_abs_diff_to_"):]} outputs = {value:.2e}')


def time_train_step(model: nn.Module, image: Tensor, repeat: int,
                    device: torch.device, dtype: str = 'fp32') -> Dict:
    """Seconds (min, median) of :func:`~.backbones.train_step` in ``dtype``,
    the gradients of the previous step released first (as ``zero_grad``
    does); on CUDA also ``peak_mem``, the most memory allocated during the
    timed steps (weights, gradients and activations; None on the CPU)."""
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        train_step(model, image, dtype)

    time_call(step, 0, device)  # warm-up only, before the peak is reset
    peak = None
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = time_call(step, repeat, device, warmup=0)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device)
    return dict(min=min(times), median=statistics.median(times),
                peak_mem=peak)


def train_step_table(names: Sequence[str], shape: Tuple[int, ...],
                     repeat: int, device: torch.device,
                     dtypes: Sequence[str] = ('fp32', )) -> List[Dict]:
    """:func:`time_train_step` of each backbone in each dtype at ``shape``
    (B, 3, H, W), each configuration built afresh."""
    rows = []
    for name in names:
        for dtype in dtypes:
            row = dict(name=name, dtype=dtype, input=list(shape))
            try:
                model = build_backbone(name).to(device)
                image = torch.randn(shape, device=device)
                row.update(time_train_step(model, image, repeat, device,
                                           dtype))
            except (ImportError, RuntimeError) as error:
                row = failed_row(row, error, device)
            model = image = None  # the next configuration starts empty
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            rows.append(row)
    return rows


def print_train_step_table(rows: List[Dict]) -> None:
    print_markdown(
        ['backbone', 'dtype', 'input', 'step min (ms)', 'median (ms)',
         'peak memory (GB)'], rows,
        lambda row: [row['name'], row['dtype'], format_shape(row['input']),
                     ms(row['min']), ms(row['median']),
                     gb(row['peak_mem'])])
