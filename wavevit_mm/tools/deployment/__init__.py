"""Export to ONNX and the check in ONNX Runtime that keeps a file, behind
``tools/deployment/pytorch2onnx.py`` and ``tools/deployment/onnx_demo.py``.

What is exported takes the normalised, padded image batch the model's data
preprocessor makes (``input``, 1x3xHxW) and returns raw tensors, decoded
afterwards by mmdet's and mmseg's own code:

- the backbone alone: its feature maps (``stage0`` ... ``stage3``);
- one-stage detectors (RetinaNet, ATSS, GFL): the dense head's outputs per
  pyramid level (``cls_score_0`` ..., ``bbox_pred_0`` ..., ATSS also
  ``score_factor_0`` ...), decoded by the head's ``predict_by_feat``;
- Mask R-CNN whole: its detections (``dets``, Kx5 boxes and scores),
  ``labels`` and ``masks`` (Kx28x28 probabilities of each detection's
  class), with ONNX NonMaxSuppression and RoiAlign in the graph; the masks
  are pasted into the image by mmdet's own code; and, for the check,
  ``proposals`` and their class scores before the score threshold;
- segmentors: the decode head's logits at the input size (``seg_logits``).

A plain file holds standard ONNX operators only (opset 18), for any
runtime; a fused one (:mod:`.fusion`) ONNX Runtime's own fused attention
and GELU operators, for ONNX Runtime alone.

The graph comes from ``torch.onnx.export`` (torch.export underneath), so
the network exports through the code it runs in PyTorch; a file is kept
only after ONNX Runtime reproduces PyTorch on it (on a picture through the
config's test pipeline, :mod:`.probe`), at the export size and, for a
dynamic file, at a second, odd size.
"""
from .export import (LOG_LEVELS, OPSET, ExportReport, export_onnx,
                     format_checks, load_model, log_level, onnx_model)
from .exportable import (BackboneFeatures, DenseHeadOutputs,
                         SegmentationLogits, default_shape, exportable,
                         second_size)
from .inference import predict_image_onnx
from .probe import Probe, check_input, probe_image, synthetic_image
from .runtime import (DEPLOY_INSTALL, ExportError, import_onnxruntime,
                      onnx_session, run_session, session_options)
from .two_stage import MaskRCNNOutputs, predicted_instances
from .verification import (Check, check_file, decode_detections, differences,
                           image_metas, matched_detections)

__all__ = [
    'LOG_LEVELS', 'OPSET', 'ExportReport', 'export_onnx', 'format_checks',
    'load_model', 'log_level', 'onnx_model', 'Probe', 'check_input',
    'probe_image', 'synthetic_image',
    'BackboneFeatures', 'DenseHeadOutputs', 'MaskRCNNOutputs',
    'SegmentationLogits', 'predicted_instances',
    'default_shape', 'exportable', 'second_size',
    'predict_image_onnx', 'DEPLOY_INSTALL', 'ExportError',
    'import_onnxruntime', 'onnx_session', 'run_session', 'session_options',
    'Check', 'check_file',
    'decode_detections', 'differences', 'image_metas', 'matched_detections'
]
