"""Inference on one image and a drawing of the result, for
``tools/image_demo.py``: boxes and masks with mmdet's visualizer, the
segmentation overlay with mmseg's, or the predicted class with
mmpretrain's (imported for the config's scope only: each package may be
absent)."""
import argparse
import os
from typing import Optional

import mmcv
import numpy as np
from torch import nn

from ..checkpoint import read_once
from ..errors import DataError
from ..models.pretrained import check_fits, read_model_weights
from .config import (check_backbone_config, inference_dataset, load_config,
                     scope_of)


def read_image(path: str) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image; grayscale and RGBA files are converted.

    Raises FileNotFoundError / DataError naming the file when it is
    missing or not a readable image.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'image file not found: {path}')
    try:
        image = mmcv.imread(path, flag='color', channel_order='rgb')
    except Exception:  # OpenCV and Pillow raise their own errors
        image = None
    if image is None or image.size == 0:
        raise DataError(f'{path} is not an image file that OpenCV can read '
                        f'({os.path.getsize(path)} bytes)')
    return image


def predict_image(image_path: str, config: str, checkpoint: str,
                  out_file: str, device: str = 'cpu', score_thr: float = 0.3,
                  opacity: float = 0.5) -> object:
    """Predict on ``image_path`` and write the drawing to ``out_file``.

    Returns the prediction (a DetDataSample, SegDataSample or mmpretrain
    DataSample).
    """
    image = read_image(image_path)
    with read_once():  # checked here, then loaded by init_detector/model
        return _predict(image, config, checkpoint, out_file, device,
                        score_thr, opacity)


def _predict(image: np.ndarray, config: str, checkpoint: str,
             out_file: str, device: str, score_thr: float,
             opacity: float) -> object:
    weights, _ = read_model_weights(checkpoint)
    cfg = load_config(config)
    check_backbone_config(cfg)
    inference_dataset(cfg)  # the pipeline the packages' inference use
    scope = scope_of(cfg)
    if scope == 'mmdet':
        from mmdet.apis import inference_detector, init_detector
        model = init_detector(cfg, checkpoint, device=device)
        check_fits(weights, model, checkpoint)
        result = inference_detector(model, image[..., ::-1].copy())  # BGR
    elif scope == 'mmpretrain':
        from mmpretrain.apis import ImageClassificationInferencer
        inferencer = ImageClassificationInferencer(cfg, checkpoint, device)
        model = inferencer.model
        check_fits(weights, model, checkpoint)
        # as mmdet's init_detector and mmseg's init_model set them
        model.cfg = cfg
        model.dataset_meta = dict(classes=inferencer.classes)
        (result, ) = inferencer(image[..., ::-1].copy(),  # BGR
                                return_datasamples=True)
    else:
        from mmseg.apis import inference_model, init_model
        model = init_model(cfg, checkpoint, device=device)
        check_fits(weights, model, checkpoint)
        result = inference_model(model, image[..., ::-1].copy())
    draw_prediction(model, image, result, out_file, score_thr, opacity)
    return result


def draw_prediction(model: nn.Module, image: np.ndarray, prediction,
                    out_file: str, score_thr: float = 0.3,
                    opacity: float = 0.5) -> None:
    """Draw a prediction on the RGB image into ``out_file``: boxes and
    masks with mmdet's visualizer, the class and its score with
    mmpretrain's, the overlay with mmseg's. ``model`` carries ``cfg`` and
    ``dataset_meta``, as mmdet's ``init_detector`` and mmseg's
    ``init_model`` set them."""
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    scope = scope_of(model.cfg)
    if scope == 'mmdet':
        from mmdet.registry import VISUALIZERS
        visualizer = VISUALIZERS.build(model.cfg.visualizer)
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample(
            'result', image, data_sample=prediction, draw_gt=False,
            show=False, out_file=out_file, pred_score_thr=score_thr)
    elif scope == 'mmpretrain':
        from mmpretrain.registry import VISUALIZERS

        # mmpretrain's configs leave its name to the Runner
        visualizer = VISUALIZERS.build(
            {'name': 'visualizer', **model.cfg.visualizer})
        visualizer.visualize_cls(
            image, prediction, classes=model.dataset_meta.get('classes'),
            draw_gt=False, out_file=out_file)
    else:
        from mmseg.apis import show_result_pyplot
        show_result_pyplot(model, image, prediction, opacity=opacity,
                           show=False, draw_gt=False, out_file=out_file,
                           save_dir=None)


def add_drawing_arguments(parser: argparse.ArgumentParser) -> None:
    """The demos' options for the drawing: ``--out-file``, ``--score-thr``
    (detection) and ``--opacity`` (segmentation)."""
    parser.add_argument('--out-file', default='result.png',
                        help='where to save the drawing')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score drawn')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: overlay opacity in (0, 1]')


def describe(result: object, score_thr: Optional[float] = 0.3) -> str:
    """One line about a prediction, for the command line."""
    if hasattr(result, 'pred_instances'):
        scores = result.pred_instances.scores
        kept = int((scores >= score_thr).sum()) if score_thr else len(scores)
        return f'{kept} objects with score >= {score_thr}'
    if hasattr(result, 'pred_score'):  # mmpretrain's classification
        return (f'class {int(result.pred_label)} with score '
                f'{float(result.pred_score.max()):.4f}')
    labels = result.pred_sem_seg.data.unique().tolist()
    return f'classes present: {labels}'
