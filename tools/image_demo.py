"""Predict on one image and save a drawing of the boxes and masks, the
segmentation overlay or the predicted class."""
import argparse

from wavevit_mm.errors import report_errors
from wavevit_mm.tools import describe, predict_image
from wavevit_mm.tools.inference import add_drawing_arguments


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    add_drawing_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    with report_errors('image_demo.py'):
        result = predict_image(args.image, args.config, args.checkpoint,
                               args.out_file, args.device, args.score_thr,
                               args.opacity)
    print(f'{describe(result, args.score_thr)}; drawing saved to '
          f'{args.out_file}')


if __name__ == '__main__':
    main()
