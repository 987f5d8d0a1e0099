"""Inference from an exported file: the config's test pipeline and data
preprocessor, the file in ONNX Runtime, mmdet's or mmseg's decoding (for
Mask R-CNN, its masks pasted by mmdet's own code), and their visualizers
to draw the result."""
import copy
import logging
from typing import Dict, Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor

from ...errors import InputError
from ..complexity import build_model
from ..config import inference_dataset, load_config, scope_of
from .exportable import check_deployable
from .runtime import onnx_session, run_session
from .two_stage import predicted_instances
from .verification import decode_detections


def inference_pipeline(cfg: Config):
    """The config's test pipeline on an image array, without the
    annotation loading (as mmdet's and mmseg's inference APIs build it)."""
    from mmcv.transforms import Compose
    scope = scope_of(cfg)
    steps = [step for step in copy.deepcopy(inference_dataset(cfg)['pipeline'])
             if step['type'].split('.')[-1] != 'LoadAnnotations']
    steps[0]['type'] = f'{scope}.LoadImageFromNDArray'
    return Compose(steps)


def dataset_meta(cfg: Config) -> Dict:
    """Class names and palette of the config's test set: the dataset
    class's, with the config's ``metainfo`` over them."""
    from mmengine.registry import DATASETS
    dataset = inference_dataset(cfg)
    meta = dict(DATASETS.get(f'{scope_of(cfg)}.{dataset.type}').METAINFO)
    meta.update(dataset.get('metainfo') or {})
    return meta


def _fit_fixed_input(session, inputs: Tensor, sample) -> Tensor:
    """Zero-pad ``inputs`` at the bottom/right to a fixed-size file's size
    (noting the padding for mmseg's post-processing), with a warning: the
    padding changes the prediction. Dynamic files take any size."""
    height, width = session.get_inputs()[0].shape[2:]
    if not (isinstance(height, int) and isinstance(width, int)):
        return inputs
    pad_h, pad_w = height - inputs.shape[2], width - inputs.shape[3]
    if pad_h < 0 or pad_w < 0:
        raise InputError(
            f'the image is {inputs.shape[2]}x{inputs.shape[3]} after the '
            f'test pipeline, larger than the {height}x{width} the file was '
            f'exported at; export it at this size (--shape) or resize the '
            f'image.')
    if pad_h or pad_w:
        print_log(
            f'The image is {inputs.shape[2]}x{inputs.shape[3]} after the '
            f'test pipeline and the file was exported at {height}x{width}: '
            f'it is zero-padded at the bottom and right, which changes the '
            f'prediction from the one PyTorch makes on the unpadded image; '
            f'export at this size (--shape {inputs.shape[2]} '
            f'{inputs.shape[3]}) for that one.', logger='current',
            level=logging.WARNING)
    sample.set_metainfo(dict(padding_size=[0, pad_w, 0, pad_h]))
    return torch.nn.functional.pad(inputs, (0, pad_w, 0, pad_h))


def predict_image_onnx(image: np.ndarray, config: str, model_file: str,
                       cfg_options: Optional[dict] = None):
    """Predict on an RGB image with an exported detector or segmentor:
    the config's test pipeline and data preprocessor, the file in ONNX
    Runtime, then mmdet's or mmseg's own decoding. Returns
    ``(prediction, model)``: a DetDataSample or SegDataSample, and the
    model built from the config (not its weights, which are in the file),
    with the config as ``model.cfg`` and the test set's classes as
    ``model.dataset_meta`` (as mmdet's ``init_detector`` sets them), for
    :func:`~wavevit_mm.tools.inference.draw_prediction`."""
    cfg = load_config(config, cfg_options)
    check_deployable(cfg, config)  # before the file is opened
    session = onnx_session(model_file)
    part = session.get_modelmeta().custom_metadata_map.get('wavevit_mm.part')
    if part not in ('detector', 'instance segmentor', 'segmentor'):
        raise InputError(
            f'{model_file} holds {"a " + part if part else "no model"} '
            f'exported by pytorch2onnx.py; the demo runs detectors and '
            f'segmentors exported by it (without --backbone-only).')
    model = build_model(cfg)
    model.cfg, model.dataset_meta = cfg, dataset_meta(cfg)
    data = inference_pipeline(cfg)(dict(img=image[..., ::-1].copy(), img_id=0))
    with torch.no_grad():
        data = model.data_preprocessor(
            dict(inputs=[data['inputs']], data_samples=[data['data_samples']]),
            False)
        sample = data['data_samples'][0]
        if part == 'segmentor':
            if not hasattr(model, 'decode_head'):
                raise InputError(f'{model_file} holds a segmentor, {config} '
                                 f'a detector.')
            inputs = _fit_fixed_input(session, data['inputs'], sample)
            logits = run_session(session, inputs)[0]
            return model.postprocess_result(logits, [sample])[0], model
        if part == 'instance segmentor':
            if not hasattr(model, 'roi_head'):
                raise InputError(f'{model_file} holds Mask R-CNN, {config} '
                                 f'another model.')
            # boxes clipped to the image before its padding, as mmdet's
            dets, labels, masks = run_session(
                session, _fit_fixed_input(session, data['inputs'],
                                          sample))[:3]
            height, width = sample.metainfo['img_shape'][:2]
            dets[:, 0:4:2] = dets[:, 0:4:2].clamp(0, width)
            dets[:, 1:4:2] = dets[:, 1:4:2].clamp(0, height)
            results = predicted_instances(
                dets, labels, masks, sample.metainfo,
                model.roi_head.test_cfg.get('mask_thr_binary', 0.5))
            return model.add_pred_to_datasample([sample], [results])[0], model
        if not hasattr(model, 'bbox_head'):
            raise InputError(f'{model_file} holds a detector, {config} a '
                             f'segmentor.')
        outputs = run_session(session, data['inputs'])
        names = [output.name for output in session.get_outputs()]
        results = decode_detections(model.bbox_head, outputs, names,
                                    [sample.metainfo], rescale=True)
        return model.add_pred_to_datasample([sample], results)[0], model
