"""Side-by-side speed and memory of Wave-ViT and mmdet backbones, and of the
Haar transforms against pytorch_wavelets, measured in one run."""
import argparse

import torch
from mmengine.logging import MMLogger

import measure  # beside this file: the measurements


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1216],
                        metavar=('H', 'W'), help='input size for latency')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=5,
                        help='timed repeats per measurement (after 1 warmup)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--backbones', nargs='+', default=None,
                        help='subset of rows (names as printed)')
    parser.add_argument('--memory-shape', type=int, nargs=3, default=None,
                        metavar=('B', 'H', 'W'),
                        help='also measure the peak memory of one '
                        'forward+backward at this size, e.g. 2 512 512')
    parser.add_argument('--skip-wavelets', action='store_true',
                        help='leave out the DWT/IDWT table')
    parser.add_argument('--skip-backbones', action='store_true',
                        help='leave out the backbone table')
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
    return parser.parse_args()


def main():
    args = parse_args()
    # the tables only: no per-parameter initialisation reports from mmdet
    MMLogger.get_instance('benchmark', log_level='WARNING')

    device = torch.device(args.device)
    malloc = 'default'
    if args.malloc == 'retain' and device.type == 'cpu':
        malloc = 'retain' if measure.retain_freed_memory() else \
            'default (mallopt unavailable)'
    print(f'malloc: {malloc}\n')
    names = args.backbones or list(measure.BACKBONES)
    shape = (args.batch_size, 3, *args.shape)
    memory_shape = ((args.memory_shape[0], 3, *args.memory_shape[1:])
                    if args.memory_shape else None)
    if not args.skip_wavelets:
        wave_rows = measure.wavelet_table(
            [(2, 16, 200, 304), (2, 32, 100, 152)], max(args.repeat, 50),
            device)
        print('Haar DWT2D + IDWT2D, forward + backward, min / median times:')
        print('| input | wavevit_mm | convolutional (official) | '
              'pytorch_wavelets | speed-up vs pytorch_wavelets | '
              'max |diff| |')
        print('|---|---|---|---|---|---|')
        labels = ('wavevit_mm DWT2D+IDWT2D', 'convolutional (official)',
                  'pytorch_wavelets')
        for row in wave_rows:
            times = ' | '.join(
                f'{row[k] * 1e3:.2f} / {row[k + " median"] * 1e3:.2f} ms'
                for k in labels)
            print(f'| {row["shape"]} | {times} | {row["speedup"]:.1f}x | '
                  f'{row["max_abs_diff"]:.1e} |')
    if args.train_config:
        result = measure.train_throughput(
            args.train_config, tuple(args.train_shape), args.train_batch_size,
            args.repeat, device, args.amp)
        print(f'\ntraining {args.train_config} on {device} '
              f'({"amp" if args.amp else "fp32"}), batch '
              f'{args.train_batch_size} x {tuple(args.train_shape)}: '
              f'{result["images_per_second"]:.3f} images/s (step median '
              f'{result["median"]:.2f} s, min {result["min"]:.2f} s over '
              f'{args.repeat} steps after 1 warm-up)')
    if args.skip_backbones:
        return

    rate, rows = measure.backbone_table(names, shape, args.repeat, device,
                                          memory_shape)
    print(f'\ndevice: {device}, threads: {torch.get_num_threads()}, fp32, '
          f'input {tuple(shape)}, {args.repeat} repeats')
    print(f'matmul rate (4096^3, fp32): {rate / 1e9:.1f} GFLOP/s\n')
    print('| backbone | latency min (s) | median (s) | params (M) | '
          'multiply-adds (G) | of matmul rate | peak train mem (GB) | '
          'with with_cp (GB) |')
    print('|---|---|---|---|---|---|---|---|')
    gb = lambda value: f'{value / 2**30:.2f}' if value is not None else '-'  # noqa
    for row in rows:
        print(f'| {row["name"]} | {row["min"]:.3f} | {row["median"]:.3f} | '
              f'{row["params"] / 1e6:.2f} | {row["macs"] / 1e9:.1f} | '
              f'{100 * row["matmul_fraction"]:.0f}% | '
              f'{gb(row.get("peak_mem"))} | {gb(row.get("peak_mem_cp"))} |')
    for row in rows:
        for key, value in row.items():
            if key.startswith('max_abs_diff_to_'):
                print(f'{row["name"]}: max |difference| to '
                      f'{key[len("max_abs_diff_to_"):]} outputs = {value:.2e}')


if __name__ == '__main__':
    main()
