"""Predict on one image with a detector or segmentor exported by
pytorch2onnx.py, in ONNX Runtime, and save a drawing of the result: the
config's test pipeline and mmdet's/mmseg's decoding and visualizer, as
tools/image_demo.py does with the checkpoint."""
import argparse

from wavevit_mm.errors import report_errors
from wavevit_mm.tools import describe
from wavevit_mm.tools.deployment import (LOG_LEVELS, log_level,
                                        predict_image_onnx)
from wavevit_mm.tools.inference import (add_drawing_arguments, draw_prediction,
                                      read_image)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='the config the model was exported '
                        'from')
    parser.add_argument('model', help='the .onnx file')
    add_drawing_arguments(parser)
    parser.add_argument('--log-level', default='WARNING', choices=LOG_LEVELS,
                        help='what of mmengine\'s log reaches the console '
                        '(INFO: its initialisation report too)')
    return parser.parse_args()


def main():
    args = parse_args()
    with log_level(args.log_level), report_errors('onnx_demo.py'):
        image = read_image(args.image)
        result, model = predict_image_onnx(image, args.config, args.model)
        draw_prediction(model, image, result, args.out_file,
                        args.score_thr, args.opacity)
    print(f'{describe(result, args.score_thr)}; drawing saved to '
          f'{args.out_file}')


if __name__ == '__main__':
    main()
