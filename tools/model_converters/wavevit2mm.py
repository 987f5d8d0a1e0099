"""Convert an official Wave-ViT ImageNet checkpoint (or any file with Wave-ViT
backbone weights) into a backbone-only checkpoint for mmdet/mmseg configs.

    python tools/model_converters/wavevit2mm.py wavevit_s.pth.tar \\
        checkpoints/wavevit_s.pth

The arch is inferred from the weight shapes unless --arch is given. A DST
ending in .safetensors is written in that format. The result is verified
(strict load into the backbone, forward pass) before it replaces DST.
"""
import argparse
import sys

from wavevit_mm.errors import CheckpointError
from wavevit_mm.models.pretrained import format_summary
from wavevit_mm.tools import convert_checkpoint


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint to convert')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--arch', choices=['s', 'b', 'l'],
                        help='Wave-ViT arch (default: inferred from shapes)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    parser.add_argument('--trusted', action='store_true',
                        help='unpickle SRC even if that could run code '
                        '(only for files from a trusted source)')
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        report = convert_checkpoint(args.src, args.dst, arch=args.arch,
                                    force=args.force, trusted=args.trusted)
    except (CheckpointError, OSError) as error:
        sys.exit(f'wavevit2mm: error: {error}')
    print(format_summary(report))
    print(f'Wrote {args.dst}: verified by a strict load into the backbone '
          f'(0 missing, 0 unexpected keys) and a forward pass.')


if __name__ == '__main__':
    main()
