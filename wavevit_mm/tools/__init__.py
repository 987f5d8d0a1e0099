"""The library behind ``tools/``, one module per concern the scripts share:
config checks, command-line options, distributed setup, whole-model
checkpoints, the image demo's inference, complexity, conversion,
publishing and (``deployment``) ONNX export. The scripts parse their
arguments and call these; tests import them. For inference from Python,
mmdet's and mmseg's own APIs (``init_detector``, ``DetInferencer``,
``init_model``) read this package's configs and checkpoints."""
from ..models.pretrained import check_fits, read_model_weights
from .complexity import build_model, model_complexity, synthetic_inputs
from .config import (add_run_arguments, check_backbone_config,
                     check_data_paths, load_config, load_run_config, scope_of,
                     setup_work_dir)
from .convert import convert_checkpoint
from .distributed import setup_cpu_distributed, shut_down_distributed
from .inference import describe, predict_image
from .options import (apply_test_options, apply_train_options,
                      find_resume_checkpoint)

__all__ = [
    'add_run_arguments', 'build_model', 'model_complexity', 'synthetic_inputs',
    'check_backbone_config', 'check_data_paths', 'load_config', 'scope_of',
    'setup_work_dir', 'load_run_config', 'convert_checkpoint',
    'setup_cpu_distributed', 'shut_down_distributed', 'describe',
    'predict_image', 'check_fits', 'read_model_weights',
    'apply_test_options', 'apply_train_options', 'find_resume_checkpoint'
]
