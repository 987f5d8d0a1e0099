"""Export a detector, a segmentor or a backbone to ONNX, checked in ONNX
Runtime against PyTorch before the file is kept.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out FILE \\
        [--shape H W] [--dynamic] [--backbone-only] [--fuse] [--force] \\
        [--image IMAGE] [--log-level LEVEL]

The input of the file is the normalised, padded image batch (1x3xHxW);
the outputs are raw tensors that mmdet's and mmseg's own code decodes, for
Mask R-CNN its detections and 28x28 masks, pasted by mmdet's own code
(tools/deployment/onnx_demo.py shows how). The file holds standard ONNX
operators (opset 18) for any runtime; --fuse writes ONNX Runtime's fused
attention and GELU operators instead, faster there but read by ONNX
Runtime alone. The check runs the file and PyTorch on IMAGE through
the config's test pipeline (by default the config's first validation
image, else a picture the package draws). Needs `pip install -e .[deploy]`.
"""
import argparse

from mmengine.config import DictAction

from wavevit_mm.errors import report_errors
from wavevit_mm.tools.deployment import (LOG_LEVELS, export_onnx,
                                        format_checks, log_level)


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint of the whole model')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='export size (default: the crop size of a '
                        'segmentor, the test resize scale of a detector)')
    parser.add_argument('--dynamic', action='store_true',
                        help='any height and width (checked at a second, '
                        'odd size too)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='export the backbone alone (feature maps)')
    parser.add_argument('--fuse', action='store_true',
                        help='ONNX Runtime\'s fused operators '
                        '(MultiHeadAttention, Gelu): '
                        'faster in ONNX Runtime, not read by other runtimes')
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT if it exists')
    parser.add_argument('--image', help='the picture the file is checked on '
                        '(default: the config\'s first validation image if '
                        'its folder exists, else a picture the package '
                        'draws)')
    parser.add_argument('--log-level', default='WARNING', choices=LOG_LEVELS,
                        help='what of mmengine\'s log reaches the console '
                        '(INFO: its initialisation report too)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def main():
    args = parse_args()
    with log_level(args.log_level), report_errors('pytorch2onnx.py'):
        report = export_onnx(args.config, args.checkpoint, args.out,
                             args.shape, args.dynamic, args.backbone_only,
                             args.force, args.cfg_options,
                             fuse=args.fuse, image=args.image)
    print(format_checks(report))
    print(f'Wrote {report.out}: checked in ONNX Runtime against PyTorch.')


if __name__ == '__main__':
    main()
