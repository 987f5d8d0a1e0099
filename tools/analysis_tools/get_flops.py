"""Multiply-adds and parameters of a detector or segmentor from its config,
counted by mmengine's analysis tools on one input of the given size."""
import argparse

from mmengine.config import Config, DictAction

from wavevit_mm.tools import model_complexity


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=[1280, 800],
                        help='input size: H W, or one value for a square')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def main():
    args = parse_args()
    if len(args.shape) == 1:
        shape = (args.shape[0], args.shape[0])
    elif len(args.shape) == 2:
        shape = tuple(args.shape)
    else:
        raise SystemExit('--shape takes H W or a single size')
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    info = model_complexity(cfg, shape)
    line = '=' * 30
    print(f'{line}\nInput shape: (3, {shape[0]}, {shape[1]})\n'
          f'Flops: {info["flops_str"]}\nParams: {info["params_str"]}\n'
          f'{line}\nFlops are multiply-adds, counted by mmengine for this '
          f'input size; they vary with the image size and, for detectors, '
          f'with the number of proposals.')


if __name__ == '__main__':
    main()
