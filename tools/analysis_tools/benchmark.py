"""Side-by-side speed and memory of Wave-ViT and other backbones, of the
Haar transforms against pytorch_wavelets, of detector training steps, and
of ONNX Runtime against PyTorch, measured in one run; ``--json`` keeps
every figure in a file. The measurements are in ``benchmarking/`` beside
this file, one module per table."""
import argparse
from typing import List, Optional

import torch
from mmengine.logging import MMLogger

from benchmarking import (backbones, detector, haar, latency, memory,
                          onnx_runtime, operators, report, timing)
from wavevit_mm.errors import report_errors
from wavevit_mm.tools import deployment


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'), help='input size for latency')
    parser.add_argument('--batch-size', type=int, nargs='+', default=[1],
                        help='one or more batch sizes for latency')
    parser.add_argument('--dtype', '--dtypes', dest='dtypes', nargs='+',
                        action='extend', choices=timing.DTYPES,
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
    parser.add_argument('--wavelet-shape', dest='wavelet_shapes', type=int,
                        nargs=4, action='append', metavar=('B', 'C', 'H', 'W'),
                        help='an input of the DWT/IDWT table, repeated for '
                        'several (default: the three of benchmarking/haar.py)')
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
    parser.add_argument('--onnxruntime', action='store_true',
                        help='also time ONNX Runtime against PyTorch eager '
                        'on the Wave-ViT-S backbone (--onnx-shape) and the '
                        'RetinaNet Wave-ViT-S detector (--onnx-detector-'
                        'shape), with the outputs compared (needs the '
                        'deploy extras: onnx, onnxscript, onnxruntime)')
    parser.add_argument('--onnx-shape', type=int, nargs=2,
                        default=[800, 1216], metavar=('H', 'W'),
                        help='input size of the backbone row')
    parser.add_argument('--onnx-detector-shape', type=int, nargs=2,
                        default=None, metavar=('H', 'W'),
                        help='image size of the detector row, padded as '
                        'its preprocessor pads (default: the test '
                        'pipeline\'s 800x1333, padded to 800x1344)')
    parser.add_argument('--onnx-threads', type=int, default=2,
                        help='threads of PyTorch and of ONNX Runtime in '
                        'that table')
    parser.add_argument('--onnx-variants', nargs='+',
                        default=list(onnx_runtime.DEFAULT_VARIANTS),
                        choices=onnx_runtime.VARIANTS,
                        help='exports to time: dynamic (as pytorch2onnx.py '
                        '--dynamic), fixed (the size fixed), fused (fixed, '
                        'with ONNX Runtime\'s fused operators, as '
                        'pytorch2onnx.py --fuse)')
    parser.add_argument('--json', default=None, metavar='OUT',
                        help='also write every figure of the run to this '
                        'JSON file (rewritten after each table)')
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    # the tables only: no per-parameter initialisation reports from mmdet
    MMLogger.get_instance('benchmark', log_level='WARNING')
    device = torch.device(args.device)
    dtypes = args.dtypes or ['fp32']
    timing.check_dtypes(dtypes, device)
    results = dict(environment=report.environment(device), args=vars(args))

    def record(**figures) -> None:
        results.update(figures)
        report.write_json(args.json, results)

    env = results['environment']
    print(' | '.join(f'{key} {value}' for key, value in env.items()))
    env['malloc'] = 'default'
    if args.malloc == 'retain' and device.type == 'cpu':
        env['malloc'] = ('retain' if memory.retain_freed_memory() else
                         'default (mallopt unavailable)')
    print(f'malloc: {env["malloc"]}\n')
    record()
    if args.onnxruntime:  # before any table: a missing package, at once
        deployment.import_onnxruntime()
    if not (args.skip_backbones and args.train_step_shape is None
            and not args.count_ops):
        names = backbones.resolve_backbones(
            args.backbones or backbones.DEFAULT_BACKBONES)

    if not args.skip_wavelets:
        rows = haar.wavelet_table(args.wavelet_shapes or haar.SHAPES,
                                  max(args.repeat, 50), device)
        haar.print_wavelet_table(rows)
        record(wavelets=rows)
    if args.train_config:
        result = detector.train_throughput(
            args.train_config, tuple(args.train_shape), args.train_batch_size,
            args.repeat, device, args.amp, args.compile)
        print()
        detector.print_train_throughput(result, device, args.repeat)
        record(train_throughput=result)
    if not args.skip_backbones:
        memory_shape = ((args.memory_shape[0], 3, *args.memory_shape[1:])
                        if args.memory_shape else None)
        rates, rows = latency.backbone_table(
            names, args.batch_size, tuple(args.shape), args.repeat, device,
            dtypes, memory_shape)
        print(f'\nbackbone inference, input {tuple(args.shape)}, batch '
              f'{args.batch_size}, median of {args.repeat} repeats')
        latency.print_backbone_table(rates, rows)
        record(matmul_rates=rates, backbones=rows)
    if args.train_step_shape:
        batch, height, width = args.train_step_shape
        rows = latency.train_step_table(names, (batch, 3, height, width),
                                        args.repeat, device, dtypes)
        print(f'\nbackbone training step (forward, sum of outputs, '
              f'backward), median of {args.repeat} repeats')
        latency.print_train_step_table(rows)
        record(train_step=rows)
    if args.count_ops:
        rows = operators.operator_counts(
            names, tuple(args.count_shape), device,
            ['Wave-ViT-S'] if args.compile else [])
        print('\naten operators per call (profiler events named aten::*, '
              'nested included)')
        operators.print_operator_counts(rows)
        record(operator_counts=rows)
    if args.onnxruntime:
        rows = onnx_runtime.onnxruntime_table(
            args.onnx_shape, args.onnx_detector_shape, args.repeat,
            args.onnx_threads, device, args.onnx_variants)
        print(f'\nONNX Runtime against PyTorch eager, min / median of '
              f'{args.repeat} interleaved repeats')
        onnx_runtime.print_onnxruntime_table(rows)
        record(onnxruntime=rows)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    with report_errors('benchmark.py'):
        run(args)


if __name__ == '__main__':
    main()
