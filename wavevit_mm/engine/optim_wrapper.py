"""Mixed-precision training without a GPU (``tools/train.py --amp``).

mmengine's ``AmpOptimWrapper`` refuses to run on the CPU, and mmcv's CPU
kernels (NMS, RoIAlign, ...) have no bfloat16 versions, so autocasting a
whole detector fails inside its heads. Here the backbone runs under
``torch.autocast('cpu', dtype=torch.bfloat16)`` and hands float32 maps to
the neck and heads. bfloat16 has float32's exponent range, so no loss
scaling is needed; gradients and the optimizer step stay in float32.
"""
import contextlib
from typing import Iterator

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

from ..models.pretrained import bare_model


@contextlib.contextmanager
def autocast_module(module: nn.Module, dtype: torch.dtype = torch.bfloat16
                    ) -> Iterator[None]:
    """Within the context, ``module``'s forward runs under CPU autocast and
    its floating-point outputs are cast back to float32."""
    forward = module.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast('cpu', dtype=dtype):
            output = forward(*args, **kwargs)
        return _to_float32(output)

    module.forward = autocast_forward  # an instance attribute shadows it
    try:
        yield
    finally:
        del module.forward


def _to_float32(output):
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (tuple, list)):
        return type(output)(_to_float32(o) for o in output)
    return output


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` that runs the model's backbone (the whole model if it
    has none) in bfloat16 on the CPU; what ``--amp`` selects without a GPU.
    Takes the same arguments as ``OptimWrapper``."""

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        inner = bare_model(model)
        with super().optim_context(model), \
                autocast_module(getattr(inner, 'backbone', inner)):
            yield
