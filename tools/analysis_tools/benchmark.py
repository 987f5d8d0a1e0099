"""Side-by-side speed and memory of Wave-ViT and other backbones, of the
Haar transforms against pytorch_wavelets, and of detector training steps,
measured in one run; ``--json`` keeps every figure in a file."""
import argparse
import json
from typing import Dict, List, Optional

import torch
from mmengine.logging import MMLogger

import measure  # beside this file: the measurements
from wavevit_mm.checkpoint import write_text_atomically
from wavevit_mm.errors import report_errors

#: Inputs of the DWT2D + IDWT2D table (B, C, H, W): stage-1 and stage-2
#: sizes of an 800x1216 image, and stage 1 at batch 8 with 32 channels.
WAVELET_SHAPES = [(2, 16, 200, 304), (2, 32, 100, 152), (8, 32, 200, 304)]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'), help='input size for latency')
    parser.add_argument('--batch-size', type=int, nargs='+', default=[1],
                        help='one or more batch sizes for latency')
    parser.add_argument('--dtype', '--dtypes', dest='dtypes', nargs='+',
                        action='extend', choices=measure.DTYPES,
                        help='precision(s) of the backbone measurements '
                        '(default fp32): fp32 with TF32 off, tf32 with it '
                        'on, bf16/fp16 under torch.autocast; the CPU takes '
                        'fp32 and bf16')
    parser.add_argument('--repeat', type=int, default=5,
                        help='timed repeats per measurement (after the '
                        'warm-up: 1 call on the CPU, 3 calls and 0.5 s on '
                        'a GPU)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--backbones', nargs='+', default=None,
                        help='rows (names as printed, or a network name '
                        'alone such as PVTv2-b2 for the first of its rows '
                        'that builds here)')
    parser.add_argument('--memory-shape', type=int, nargs=3, default=None,
                        metavar=('B', 'H', 'W'),
                        help='also measure the peak memory of one '
                        'forward+backward at this size, e.g. 2 512 512')
    parser.add_argument('--train-step-shape', type=int, nargs=3,
                        default=None, metavar=('B', 'H', 'W'),
                        help='also time the training step of each backbone '
                        'alone (forward, sum of outputs, backward) at this '
                        'size in each dtype, with the peak memory on CUDA, '
                        'e.g. 2 800 1216')
    parser.add_argument('--count-ops', action='store_true',
                        help='also count the aten operators of a forward '
                        '(eval) and of a forward+backward (train) of each '
                        'backbone')
    parser.add_argument('--count-shape', type=int, nargs=4,
                        default=[1, 3, 224, 320], metavar=('B', 'C', 'H', 'W'))
    parser.add_argument('--compile', action='store_true',
                        help='with --count-ops: also count them for '
                        'torch.compile(Wave-ViT-S); with --train-config: '
                        'the backbone compiled, as tools/train.py --compile')
    parser.add_argument('--skip-wavelets', action='store_true',
                        help='leave out the DWT/IDWT table')
    parser.add_argument('--skip-backbones', action='store_true',
                        help='leave out the backbone latency table')
    parser.add_argument('--train-config', default=None,
                        help='also time training steps of this detector '
                        'config (e.g. configs/mask_rcnn_wavevit_s_coco.py) on '
                        'a synthetic batch')
    parser.add_argument('--train-shape', type=int, nargs=2,
                        default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--train-batch-size', type=int, default=2)
    parser.add_argument('--amp', action='store_true',
                        help='training steps in mixed precision, as '
                        'tools/train.py --amp')
    parser.add_argument('--malloc', choices=['default', 'retain'],
                        default='default',
                        help='CPU only: "retain" keeps freed memory for '
                        'reuse instead of page-faulting fresh memory for '
                        'every large tensor (applies to every row alike; '
                        'memory is always measured with the default)')
    parser.add_argument('--json', default=None, metavar='OUT',
                        help='also write every figure of the run to this '
                        'JSON file (rewritten after each table)')
    return parser.parse_args(argv)


def environment(device: torch.device) -> Dict:
    """What the figures were measured on."""
    info = dict(device=str(device), torch=torch.__version__,
                threads=torch.get_num_threads())
    if device.type == 'cuda':
        info.update(name=torch.cuda.get_device_name(device),
                    cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def write_json(path: Optional[str], results: Dict) -> None:
    if path:
        write_text_atomically(path, json.dumps(results, indent=1))


def ms(seconds: float) -> str:
    return f'{seconds * 1e3:.1f}'


def gb(value: Optional[int]) -> str:
    return f'{value / 2**30:.2f}' if value is not None else '-'


def print_failures(rows: List[Dict]) -> None:
    for row in rows:
        if 'error' in row:
            print(f'{row["name"]} {row.get("dtype", "")}: not measured: '
                  f'{row["error"]}')


def print_wavelet_table(rows: List[Dict]) -> None:
    print('Haar DWT2D + IDWT2D, forward + backward, min / median times:')
    print('| input | wavevit_mm | wavevit_mm, torch.compile | '
          'convolutional (official) | pytorch_wavelets | speed-up vs '
          'pytorch_wavelets (eager, compiled) | max |diff| |')
    print('|---|---|---|---|---|---|---|')
    labels = ('wavevit_mm DWT2D+IDWT2D', 'wavevit_mm, torch.compile',
              'convolutional (official)', 'pytorch_wavelets')
    for row in rows:
        times = ' | '.join(f'{row[k] * 1e3:.2f} / '
                           f'{row[k + " median"] * 1e3:.2f} ms'
                           for k in labels)
        print(f'| {"x".join(map(str, row["shape"]))} | {times} | '
              f'{row["speedup"]:.1f}x, {row["speedup compiled"]:.1f}x | '
              f'{row["max_abs_diff"]:.1e} |')


def print_backbone_table(rates: Dict[str, float], rows: List[Dict]) -> None:
    print('matmul rate (4096^3): ' + ', '.join(
        f'{dtype} {rate / 1e12:.2f} TFLOP/s' for dtype, rate in rates.items()))
    print('| backbone | dtype | batch | latency min (ms) | median (ms) | '
          'params (M) | multiply-adds (G) | of matmul rate | '
          'peak train mem (GB) | with with_cp (GB) |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        if 'error' not in row:
            print(f'| {row["name"]} | {row["dtype"]} | {row["batch"]} | '
                  f'{ms(row["min"])} | {ms(row["median"])} | '
                  f'{row["params"] / 1e6:.2f} | {row["macs"] / 1e9:.1f} | '
                  f'{100 * row["matmul_fraction"]:.0f}% | '
                  f'{gb(row.get("peak_mem"))} | '
                  f'{gb(row.get("peak_mem_cp"))} |')
    print_failures(rows)
    for row in rows:
        for key, value in row.items():
            if key.startswith('max_abs_diff_to_'):
                print(f'{row["name"]}, {row["dtype"]}, batch {row["batch"]}: '
                      f'max |difference| to '
                      f'{key[len("max_abs_diff_to_"):]} outputs = {value:.2e}')


def print_train_step_table(rows: List[Dict]) -> None:
    print('| backbone | dtype | input | step min (ms) | median (ms) | '
          'peak memory (GB) |')
    print('|---|---|---|---|---|---|')
    for row in rows:
        if 'error' not in row:
            print(f'| {row["name"]} | {row["dtype"]} | '
                  f'{"x".join(map(str, row["input"]))} | {ms(row["min"])} | '
                  f'{ms(row["median"])} | {gb(row["peak_mem"])} |')
    print_failures(rows)


def print_operator_counts(rows: List[Dict]) -> None:
    print('| backbone | input | aten ops, eval forward | '
          'aten ops, train forward + backward | graph breaks (eval, '
          'train) |')
    print('|---|---|---|---|---|')
    for row in rows:
        if 'error' not in row:
            breaks = (f'{row["eval_graph_breaks"]}, '
                      f'{row["train_graph_breaks"]}'
                      if 'eval_graph_breaks' in row else '-')
            print(f'| {row["name"]} | {"x".join(map(str, row["input"]))} | '
                  f'{row["eval"]} | {row["train"]} | {breaks} |')
    print_failures(rows)


def run(args: argparse.Namespace) -> None:
    # the tables only: no per-parameter initialisation reports from mmdet
    MMLogger.get_instance('benchmark', log_level='WARNING')
    device = torch.device(args.device)
    dtypes = args.dtypes or ['fp32']
    measure.check_dtypes(dtypes, device)
    results = dict(environment=environment(device), args=vars(args))
    env = results['environment']
    print(' | '.join(f'{key} {value}' for key, value in env.items()))
    malloc = 'default'
    if args.malloc == 'retain' and device.type == 'cpu':
        malloc = 'retain' if measure.retain_freed_memory() else \
            'default (mallopt unavailable)'
    env['malloc'] = malloc
    print(f'malloc: {malloc}\n')
    write_json(args.json, results)
    if not (args.skip_backbones and args.train_step_shape is None
            and not args.count_ops):
        names = measure.resolve_backbones(args.backbones
                                          or measure.DEFAULT_BACKBONES)

    if not args.skip_wavelets:
        results['wavelets'] = measure.wavelet_table(
            WAVELET_SHAPES, max(args.repeat, 50), device)
        print_wavelet_table(results['wavelets'])
        write_json(args.json, results)
    if args.train_config:
        result = measure.train_throughput(
            args.train_config, tuple(args.train_shape), args.train_batch_size,
            args.repeat, device, args.amp, args.compile)
        results['train_throughput'] = dict(
            result, config=args.train_config, amp=args.amp,
            compile=args.compile, batch=args.train_batch_size,
            shape=args.train_shape)
        print(f'\ntraining {args.train_config} on {device} '
              f'({"amp" if args.amp else "fp32"}'
              f'{", backbone compiled" if args.compile else ""}), batch '
              f'{args.train_batch_size} x {tuple(args.train_shape)}: '
              f'{result["images_per_second"]:.3f} images/s (step median '
              f'{result["median"]:.3f} s, min {result["min"]:.3f} s over '
              f'{args.repeat} steps after the warm-up)')
        write_json(args.json, results)
    if not args.skip_backbones:
        memory_shape = ((args.memory_shape[0], 3, *args.memory_shape[1:])
                        if args.memory_shape else None)
        rates, rows = measure.backbone_table(
            names, args.batch_size, tuple(args.shape), args.repeat, device,
            dtypes, memory_shape)
        results['matmul_rates'], results['backbones'] = rates, rows
        print(f'\nbackbone inference, input {tuple(args.shape)}, batch '
              f'{args.batch_size}, median of {args.repeat} repeats')
        print_backbone_table(rates, rows)
        write_json(args.json, results)
    if args.train_step_shape:
        batch, height, width = args.train_step_shape
        rows = measure.train_step_table(names, (batch, 3, height, width),
                                        args.repeat, device, dtypes)
        results['train_step'] = rows
        print(f'\nbackbone training step (forward, sum of outputs, '
              f'backward), median of {args.repeat} repeats')
        print_train_step_table(rows)
        write_json(args.json, results)
    if args.count_ops:
        rows = measure.operator_counts(
            names, tuple(args.count_shape), device,
            ['Wave-ViT-S'] if args.compile else [])
        results['operator_counts'] = rows
        print('\naten operators per call (profiler events named aten::*, '
              'nested included)')
        print_operator_counts(rows)
        write_json(args.json, results)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    with report_errors('benchmark.py'):
        run(args)


if __name__ == '__main__':
    main()
