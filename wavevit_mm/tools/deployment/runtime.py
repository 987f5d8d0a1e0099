"""ONNX Runtime: importing it (an optional dependency), sessions with every
graph optimisation, and running a file on a tensor."""
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError

#: How to install what export and inference need.
DEPLOY_INSTALL = 'pip install -e .[deploy]'


class ExportError(InputError):
    """A model or file that cannot be exported, or whose exported file does
    not reproduce PyTorch."""


def import_onnxruntime():
    """The ``onnxruntime`` module, or an ExportError saying what to
    install. onnx and onnxscript (the exporter's) are checked too."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(
            f'Exporting to ONNX and running the file need the optional '
            f'packages onnx, onnxscript and onnxruntime ({error}). Install '
            f'them with `{DEPLOY_INSTALL}` (the versions pinned in '
            f'requirements.txt); training, testing and the other tools do '
            f'not need them.') from None
    return onnxruntime


def session_options(threads: Optional[int] = None):
    """The options of every session here: every graph optimisation,
    ``threads`` CPU threads (torch's thread count by default)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return options


#: Graph rewrites a CPU session leaves out: ONNX Runtime's CPU
#: SkipLayerNormalization kernel is several times slower than the Add and
#: LayerNormalization it replaces (ONNX Runtime 1.32).
CPU_DISABLED_OPTIMIZERS = ('SkipLayerNormFusion', )


def onnx_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime session on ``path`` with :func:`session_options`,
    on the GPU where onnxruntime-gpu offers one, else the CPU (without
    :data:`CPU_DISABLED_OPTIMIZERS`)."""
    ort = import_onnxruntime()
    providers = [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider')
                 if p in ort.get_available_providers()]
    disabled = (list(CPU_DISABLED_OPTIMIZERS)
                if providers[0] == 'CPUExecutionProvider' else [])
    return ort.InferenceSession(path, session_options(threads),
                                providers=providers,
                                disabled_optimizers=disabled)


def run_session(session, x: Tensor) -> List[Tensor]:
    """The session's outputs on ``x`` as CPU tensors, in graph order."""
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: x.detach().cpu().numpy()})
    return [torch.from_numpy(np.asarray(output)) for output in outputs]
