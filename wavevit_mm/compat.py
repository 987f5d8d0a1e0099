"""What the installed torch offers, found by feature detection.

The package runs on torch 2.1 and newer: a newer API is used where it
exists and a plain fallback where it does not (the Haar transforms as
``autograd.Function``s without ``torch.library.custom_op``; dynamo's own
``is_compiling`` before ``torch.compiler.is_compiling``). What truly needs
a newer torch, ONNX export, is refused by :func:`require_onnx_export` in
one paragraph naming the version.
"""
import importlib
import inspect
from typing import Callable, List

import torch

from .errors import InputError

#: The first torch with every API the ONNX export uses.
ONNX_EXPORT_TORCH = '2.6'
#: The first torch that compiles the backbone: the Haar transforms enter
#: its graph as torch.library operators.
COMPILE_TORCH = '2.4'
# the torch.onnx.export options of the torch.export-based exporter
_ONNX_EXPORT_OPTIONS = ('dynamo', 'custom_translation_table', 'optimize',
                        'external_data')


class TorchFeatureError(InputError):
    """A feature that the installed torch does not offer."""


def has_custom_ops() -> bool:
    """Whether ``torch.library`` defines operators from Python functions
    with fake kernels and gradients (``custom_op``, torch 2.4)."""
    return all(hasattr(torch.library, name)
               for name in ('custom_op', 'register_fake',
                            'register_autograd'))


def _is_compiling_function() -> Callable[[], bool]:
    found = getattr(torch.compiler, 'is_compiling', None)
    if found is None:  # before torch 2.3: dynamo's own, traced as True
        dynamo = importlib.import_module('torch._dynamo')
        found = getattr(dynamo, 'is_compiling', None)
    return found or (lambda: False)


def _is_exporting_function() -> Callable[[], bool]:
    # before torch 2.6 torch.export runs dynamo: is_compiling is True there
    return getattr(torch.compiler, 'is_exporting', None) or (lambda: False)


#: ``torch.compiler.is_compiling`` or its older equivalent.
is_compiling = _is_compiling_function()
#: ``torch.compiler.is_exporting``, or never where torch has none.
is_exporting = _is_exporting_function()


def onnx_export_missing() -> List[str]:
    """The torch APIs of the ONNX export that the installed torch lacks."""
    missing = []
    try:
        dim = getattr(importlib.import_module('torch.export'), 'Dim', None)
    except ImportError:
        dim = None
    if not hasattr(dim, 'DYNAMIC'):
        missing.append('torch.export.Dim.DYNAMIC')
    if not hasattr(torch.compiler, 'is_exporting'):
        missing.append('torch.compiler.is_exporting')
    if not has_custom_ops():
        missing.append('torch.library.custom_op')
    options = inspect.signature(torch.onnx.export).parameters
    absent = [name for name in _ONNX_EXPORT_OPTIONS if name not in options]
    if absent:
        missing.append(f'torch.onnx.export({"=, ".join(absent)}=)')
    return missing


def onnx_export_refusal() -> str:
    """Why ONNX export cannot run on the installed torch, or ''."""
    missing = onnx_export_missing()
    if not missing:
        return ''
    return (f'Exporting to ONNX needs torch {ONNX_EXPORT_TORCH} or newer '
            f'(torch.export with dynamic sizes and its ONNX exporter); '
            f'torch {torch.__version__} lacks {", ".join(missing)}. '
            f'Training, testing and inference in PyTorch work on this '
            f'torch; export in an environment with a newer one.')


def require_backbone_compile() -> None:
    """Raise a TorchFeatureError where the installed torch cannot compile
    the backbone (``compile=True``, the tools' ``--compile``)."""
    if not has_custom_ops():
        raise TorchFeatureError(
            f'Compiling the backbone (compile=True, --compile) needs torch '
            f'{COMPILE_TORCH} or newer: its Haar transforms enter the graph '
            f'as torch.library operators (torch.library.custom_op), which '
            f'torch {torch.__version__} lacks. Train and test without '
            f'compiling on this torch; the results are the same.')


def require_onnx_export() -> None:
    """Raise a TorchFeatureError where the installed torch cannot export
    to ONNX."""
    refusal = onnx_export_refusal()
    if refusal:
        raise TorchFeatureError(refusal)
