"""How the Wave-ViT backbone runs, apart from what it computes: the weight
layout its convolutions read, activation checkpointing that keeps
BatchNorm statistics exact, and the stages through ``torch.compile``.

The network (:mod:`.wavevit`) calls each in one line; every submodule is
still called as ``module(x)``, so hooks, ``fuse_conv_bn`` and
parametrizations see the network as it is written.
"""
import contextlib
from typing import Callable, Dict, Iterator, Optional, Union

import torch
import torch.utils.checkpoint as cp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import compat


def channels_last_weights(module: nn.Module) -> None:
    """Give the depthwise and 1x1 convolution weights of ``module``
    channels-last strides, for the GPU and the CPU.

    The token maps the blocks convolve are channels-last views; with
    weights of the same layout cuDNN and oneDNN convolve them in place of
    first copying them to NCHW, and return channels-last maps, again free
    (B, N, C) views. For these kernels both layouts are contiguous, so
    pruning, ``fuse_conv_bn`` and parametrizations see an ordinary weight;
    ``load_state_dict``, ``.to()`` and ``.half()`` keep the strides.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and (
                m.groups == m.in_channels or m.kernel_size == (1, 1)):
            m.weight = nn.Parameter(
                m.weight.detach().to(memory_format=torch.channels_last),
                requires_grad=m.weight.requires_grad)


def checkpoint(block: nn.Module, function: Callable, *args):
    """``function(*args)`` under activation checkpointing, the BatchNorm
    statistics inside ``block`` updated once per step, as without it."""
    if compat.is_compiling():
        # traced once: the recomputation torch.compile places in the
        # backward graph updates no BatchNorm statistics
        return cp.checkpoint(function, *args, use_reentrant=False)
    return cp.checkpoint(
        function, *args, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(),
                            _batchnorm_stats_frozen(block)))


@contextlib.contextmanager
def _batchnorm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Keep the running statistics of the BatchNorms in ``module``
    unchanged while it is recomputed for the backward pass."""
    norms = [m for m in module.modules()
             if isinstance(m, _BatchNorm) and m.training
             and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class StageRunner:
    """Calls ``function(model, x)``, through ``torch.compile`` when
    ``compile`` asks (True, or a dict of its keyword arguments).

    ``function`` is compiled as a function of the model, on the first call:
    nothing of one instance is kept in the compiled code, and copies of the
    model (pickle, ``torch.save(model)``, ``copy.deepcopy``) compile their
    own. Under ``torch.jit`` tracing (e.g. counting FLOPs) it runs eager.
    """

    def __init__(self, function: Callable,
                 compile: Union[bool, Dict] = False) -> None:
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f'compile must be a bool or a dict of '
                            f'torch.compile arguments, got {compile!r}')
        self.function = function
        #: None: eager; else the keyword arguments of ``torch.compile``
        self.options: Optional[Dict] = (
            None if compile is False
            else dict(compile) if isinstance(compile, dict) else {})
        if self.options is not None:
            compat.require_backbone_compile()
        self.compiled: Optional[Callable] = None

    def __call__(self, model: nn.Module, x):
        if self.options is None or torch.jit.is_tracing():
            return self.function(model, x)
        if self.compiled is None:
            self.compiled = torch.compile(self.function, **self.options)
        return self.compiled(model, x)

    def __getstate__(self) -> Dict:
        return dict(self.__dict__, compiled=None)
