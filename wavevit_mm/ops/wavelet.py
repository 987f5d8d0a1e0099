"""One-level 2D discrete wavelet transforms, DWT2D and IDWT2D.

The four sub-bands are concatenated on the channel axis, band-major:
``[LL, LH, HL, HH]``, each with the C input channels, i.e. the layout of
``pytorch_wavelets.DWTForward(J=1, mode='zero')`` output
``cat([yl, yh[:, :, 0], yh[:, :, 1], yh[:, :, 2]], dim=1)``. Wave-ViT's
3x3 filter convolution is trained on exactly this channel order.

The Haar transforms are the custom operators ``wavevit_mm::haar_dwt2d``
and ``wavevit_mm::haar_idwt2d`` (``torch.library``), with fake kernels and
gradients registered, so ``torch.compile`` traces a network through them
without graph breaks; a torch without ``custom_op`` (before 2.4) gets them
as ``autograd.Function``s. On the CPU they run a compiled one-pass kernel
(``csrc/haar.cpp``, built by ``pip install --no-build-isolation -e .``);
elsewhere, or when it is not built (or was built for another torch: one
warning), the same transform is computed with
strided slicing and additions. Because the orthonormal Haar DWT is its own
adjoint's inverse, the backward pass of the DWT is the IDWT of the incoming
gradient and vice versa, so both directions cost about one copy of the data
and no convolution. Under ``torch.compile``, where the one-pass kernel does
not serve the tensor (a GPU), the transforms are traced as element-wise
operations instead, which inductor fuses with the operations around them.
Odd sizes are zero-padded at the bottom/right, as
pytorch_wavelets does in ``'zero'`` mode. Other wavelets are delegated to
pytorch_wavelets.
"""
import importlib
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import compat


def _load_compiled(name: str = __name__.rpartition('.')[0] + '._haar'):
    """The one-pass CPU kernels, or None where they were not built, or
    were built for another torch (a stale in-place build: one warning, and
    the pure-PyTorch transforms, which compute the same, instead)."""
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == name:
            return None  # not built: nothing to warn about
        reason = f'it does not load ({error})'
    else:
        built_for = getattr(module, 'torch_version', lambda: 'unknown')()
        if built_for == torch.__version__:
            return module
        reason = f'it was built for torch {built_for}'
    warnings.warn(
        f'The compiled Haar transforms ({name}) are not used: {reason}, '
        f'and this is torch {torch.__version__}. The pure-PyTorch '
        f'transforms compute the same, slower on the CPU; rebuild with '
        f'`pip install --no-build-isolation -e .`.', stacklevel=2)
    return None


_compiled = _load_compiled()

_COMPILED_DTYPES = (torch.float32, torch.float64, torch.bfloat16,
                    torch.float16)


def compiled_haar_available() -> bool:
    """Whether the one-pass CPU Haar kernels were built with the package."""
    return _compiled is not None


def _use_compiled(x: Tensor) -> bool:
    return (_compiled is not None and x.device.type == 'cpu'
            and x.dtype in _COMPILED_DTYPES)


def _is_channels_last(x: Tensor) -> bool:
    return (not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def _butterfly(a: Tensor, b: Tensor, c: Tensor, d: Tensor,
               out: Optional[Sequence[Tensor]] = None
               ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 2D Haar butterfly of four tensors of one shape:
    ``((a+b) + (c+d)) / 2, ((a+b) - (c+d)) / 2, ((a-b) + (c-d)) / 2,
    ((a-b) - (c-d)) / 2``.

    Of the 2x2 pixel blocks ``(a b / c d)`` these are the LL, LH, HL and HH
    bands; the matrix is its own inverse, so of the bands (LL, LH, HL, HH)
    they are the pixels (top left, top right, bottom left, bottom right).
    With ``out`` (four tensors, no autograd) the results are written there;
    otherwise they are new tensors. The 1/2 is folded into
    ``lerp(p, q, 0.5) = (p + q) / 2``.
    """
    sums = torch.lerp(a, b, 0.5), torch.lerp(c, d, 0.5)
    if out is None:
        first, second = sums[0] + sums[1], sums[0] - sums[1]
        high_diff = c - d
        third = torch.lerp(a - b, high_diff, 0.5)
        return first, second, third, third - high_diff
    first, second, third, fourth = out
    torch.add(*sums, out=first)
    torch.sub(*sums, out=second)
    del sums
    high_diff = c - d
    torch.lerp(a - b, high_diff, 0.5, out=third)
    torch.sub(third, high_diff, out=fourth)
    return first, second, third, fourth


def _pad_to_even(x: Tensor) -> Tensor:
    """Zero-pad an odd height (width) with one row (column) at the bottom
    (right), to 2 * ceil(H / 2) x 2 * ceil(W / 2). The amounts are computed,
    never branched on, and written so that an exporter can prove the padded
    size even for every input size: the exported graph pads correctly at
    all of them."""
    height, width = x.shape[2], x.shape[3]
    return F.pad(x, (0, 2 * ((width + 1) // 2) - width,
                     0, 2 * ((height + 1) // 2) - height))


def _pixel_blocks(x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The top-left, top-right, bottom-left and bottom-right pixels of the
    2x2 blocks of ``x`` (even height and width), strided views of shape
    (B, C, H/2, W/2)."""
    blocks = x.unflatten(2, (x.shape[2] // 2, 2)).unflatten(
        4, (x.shape[3] // 2, 2))                          # (B, C, h, 2, w, 2)
    return (blocks[:, :, :, 0, :, 0], blocks[:, :, :, 0, :, 1],
            blocks[:, :, :, 1, :, 0], blocks[:, :, :, 1, :, 1])


def _haar_dwt(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2)), no autograd logic.

    A channels-last input gives a channels-last output. Without the compiled
    kernel, the bands are written into one preallocated buffer.
    """
    if _use_compiled(x):
        return _compiled.haar_dwt2d(x)
    batch, channels, height, width = x.shape
    h, w = (height + 1) // 2, (width + 1) // 2
    if _is_channels_last(x):
        out = x.new_empty(batch, h, w, 4, channels).permute(0, 3, 4, 1, 2)
    else:
        out = x.new_empty(batch, 4, channels, h, w)
    if height % 2 or width % 2:  # concrete sizes here: even ones not copied
        x = _pad_to_even(x)
    _butterfly(*_pixel_blocks(x), out=out.unbind(1))
    return out.flatten(1, 2)


def _haar_idwt(x: Tensor, size: Optional[Tuple[int, int]] = None
               ) -> Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w), the inverse of :func:`_haar_dwt`,
    cropped to ``size`` (at most one row/column less) when given."""
    if _use_compiled(x):
        return _compiled.haar_idwt2d(x, *(size or (-1, -1)))
    full = _haar_idwt_sliced(x)
    return full if size is None else full[..., :size[0], :size[1]]


def _check_idwt_size(x: Tensor, size: Optional[Tuple[int, int]]) -> None:
    batch, channels4, height, width = x.shape
    if channels4 % 4:
        raise ValueError(
            f'IDWT2D expects 4*C channels (LL, LH, HL, HH bands), got '
            f'{channels4} channels')
    if size is not None and not (
            2 * height - 1 <= size[0] <= 2 * height
            and 2 * width - 1 <= size[1] <= 2 * width):
        raise ValueError(
            f'IDWT2D output size {tuple(size)} does not fit bands of '
            f'{height}x{width} (each side 2n or 2n - 1)')


def _haar_idwt_sliced(x: Tensor) -> Tensor:
    batch, channels4, height, width = x.shape
    channels = channels4 // 4
    if _is_channels_last(x):
        memory = x.new_empty(batch, height, 2, width, 2, channels)
        blocks = memory.permute(0, 5, 1, 2, 3, 4)    # (B, C, h, 2, w, 2)
    else:
        blocks = x.new_empty(batch, channels, height, 2, width, 2)
    _butterfly(*x.unflatten(1, (4, channels)).unbind(1),
               out=(blocks[:, :, :, 0, :, 0], blocks[:, :, :, 0, :, 1],
                    blocks[:, :, :, 1, :, 0], blocks[:, :, :, 1, :, 1]))
    if _is_channels_last(x):
        return memory.view(batch, 2 * height, 2 * width,
                           channels).permute(0, 3, 1, 2)
    return blocks.view(batch, channels, 2 * height, 2 * width)


# Under torch.compile, where no one-pass kernel serves the tensor (a GPU),
# the transforms are traced as the element-wise operations below instead of
# calling the operators: inductor then fuses each with the operations next
# to it (the BatchNorm and ReLU before the DWT, the concatenation after the
# IDWT) and derives the gradients. An export (torch.export, and so
# torch.onnx's exporter) always takes this form, which any runtime can run:
# slices, additions, padding and a crop whose amounts follow the input size.

def _haar_dwt_traced(x: Tensor) -> Tensor:
    return torch.cat(_butterfly(*_pixel_blocks(_pad_to_even(x))), dim=1)


def _haar_idwt_traced(x: Tensor, size: Optional[Tuple[int, int]]
                      ) -> Tensor:
    top_left, top_right, bottom_left, bottom_right = _butterfly(
        *x.unflatten(1, (4, -1)).unbind(1))
    blocks = torch.stack([torch.stack([top_left, top_right], dim=-1),
                          torch.stack([bottom_left, bottom_right], dim=-1)],
                         dim=3)                       # (B, C, h, 2, w, 2)
    full = blocks.flatten(4).flatten(2, 3)            # (B, C, 2h, 2w)
    return full if size is None else full[..., :size[0], :size[1]]


def _bands_layout(x: Tensor) -> torch.memory_format:
    return (torch.channels_last if _is_channels_last(x)
            else torch.contiguous_format)


def _empty_like_output(x: Tensor, shape: Tuple) -> Tensor:
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=_bands_layout(x))


def _dwt_eager(x: Tensor) -> Tensor:
    return _haar_dwt(x).contiguous(memory_format=_bands_layout(x))


def _idwt_eager(x: Tensor, size: Optional[List[int]]) -> Tensor:
    out = _haar_idwt(x, None if size is None else (size[0], size[1]))
    return out.contiguous(memory_format=_bands_layout(x))


# The transforms are custom operators, so torch.compile traces the backbone
# through them in one graph (their fake kernels give the output's shape and
# layout without computing it) and autograd knows their gradients: the DWT's
# is the IDWT of the incoming gradient and vice versa. Every output is a
# fresh tensor, channels-last for a channels-last input, else contiguous.
# A torch without custom_op (before 2.4) gets the same transforms and
# gradients as autograd.Functions; torch.compile then traces the
# element-wise form instead.

class _HaarDWT(torch.autograd.Function):
    """The DWT with the IDWT as its gradient, where torch has no
    ``torch.library.custom_op``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.input_size = [x.shape[2], x.shape[3]]
        return _dwt_eager(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _HaarIDWT.apply(grad, ctx.input_size)


class _HaarIDWT(torch.autograd.Function):
    """The IDWT with the DWT as its gradient (the crop's is zero-padding,
    which the DWT does itself)."""

    @staticmethod
    def forward(ctx, x: Tensor, size: Optional[List[int]]) -> Tensor:
        return _idwt_eager(x, size)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:
        return _HaarDWT.apply(grad), None


#: Whether the transforms are torch.library operators (else Functions).
_OPERATORS = compat.has_custom_ops()

if _OPERATORS:
    @torch.library.custom_op('wavevit_mm::haar_dwt2d', mutates_args=())
    def _dwt_op(x: Tensor) -> Tensor:
        return _dwt_eager(x)

    @_dwt_op.register_fake
    def _(x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        return _empty_like_output(
            x, (batch, 4 * channels, (height + 1) // 2, (width + 1) // 2))

    @torch.library.custom_op('wavevit_mm::haar_idwt2d', mutates_args=())
    def _idwt_op(x: Tensor, size: Optional[List[int]]) -> Tensor:
        return _idwt_eager(x, size)

    @_idwt_op.register_fake
    def _(x: Tensor, size: Optional[List[int]]) -> Tensor:
        batch, channels4, height, width = x.shape
        height, width = size if size is not None else (2 * height,
                                                       2 * width)
        return _empty_like_output(x, (batch, channels4 // 4, height, width))

    def _keep_input_size(ctx, inputs: Tuple[Tensor], output: Tensor) -> None:
        ctx.input_size = [inputs[0].shape[2], inputs[0].shape[3]]

    _dwt_op.register_autograd(
        lambda ctx, grad: _idwt_op(grad, ctx.input_size),
        setup_context=_keep_input_size)
    _idwt_op.register_autograd(lambda ctx, grad: (_dwt_op(grad), None),
                               setup_context=lambda ctx, inputs, output: None)


def _dwt(x: Tensor) -> Tensor:
    return _dwt_op(x) if _OPERATORS else _HaarDWT.apply(x)


def _idwt(x: Tensor, size: Optional[List[int]]) -> Tensor:
    return _idwt_op(x, size) if _OPERATORS else _HaarIDWT.apply(x, size)


def _exporting() -> bool:
    """Whether the network is being exported: torch.export (what
    ``torch.onnx.export`` runs by default) or the TorchScript-based ONNX
    exporter."""
    return compat.is_exporting() or torch.onnx.is_in_onnx_export()


def _traced(x: Tensor) -> bool:
    # the one-pass kernel serves a compiled graph only as an operator
    return _exporting() or (compat.is_compiling()
                            and not (_OPERATORS and _use_compiled(x)))


def haar_dwt2d(x: Tensor) -> Tensor:
    """Haar DWT: (B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2))."""
    if _traced(x):
        return _haar_dwt_traced(x)
    return _dwt(x)


def haar_idwt2d(x: Tensor, size: Optional[Tuple[int, int]] = None
                ) -> Tensor:
    """Haar inverse DWT: (B, 4C, h, w) -> (B, C, 2h, 2w), or cropped to
    ``size`` = (H, W) of the DWT input (each side 2n or 2n - 1)."""
    if _exporting():
        # an exported graph gets its sizes from the network; an exporter
        # cannot prove the bounds of the check for every input size, and
        # would fix the size of the graph instead
        return _haar_idwt_traced(x, size)
    _check_idwt_size(x, size)
    if _traced(x):
        return _haar_idwt_traced(x, size)
    if size is not None and torch.jit.is_tracing():
        # sizes are traced values there, which an operator cannot take
        return _idwt(x, None)[..., :size[0], :size[1]]
    return _idwt(x, None if size is None else [size[0], size[1]])


def _check_4d(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f'{name} expects a (B, C, H, W) tensor, got shape '
                         f'{tuple(x.shape)}')


class DWT2D(nn.Module):
    """One-level 2D DWT with bands concatenated on channels (LL, LH, HL, HH).

    Args:
        wave: wavelet name. ``'haar'`` uses the fast built-in transform; any
            other name known to pytorch_wavelets is delegated to
            ``pytorch_wavelets.DWTForward(J=1, mode='zero')``.
    """

    def __init__(self, wave: str = 'haar') -> None:
        super().__init__()
        self.wave = wave
        self._delegate = None
        if wave != 'haar':
            from pytorch_wavelets import DWTForward
            self._delegate = DWTForward(J=1, wave=wave, mode='zero')

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, 'DWT2D')
        if self._delegate is None:
            return haar_dwt2d(x)
        low, (high, ) = self._delegate(x)      # high: (B, C, 3, h, w)
        return torch.cat([low, high.transpose(1, 2).flatten(1, 2)], dim=1)

    def extra_repr(self) -> str:
        return f"wave='{self.wave}'"


class IDWT2D(nn.Module):
    """Inverse of :class:`DWT2D`: (B, 4C, h, w) -> (B, C, 2h, 2w), or
    ``output_size`` (the DWT input's (H, W), for odd sizes) when given.

    Args:
        wave: wavelet name, as for :class:`DWT2D`.
    """

    def __init__(self, wave: str = 'haar') -> None:
        super().__init__()
        self.wave = wave
        self._delegate = None
        if wave != 'haar':
            from pytorch_wavelets import DWTInverse
            self._delegate = DWTInverse(wave=wave, mode='zero')

    def forward(self, x: Tensor,
                output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        _check_4d(x, 'IDWT2D')
        if self._delegate is None:
            return haar_idwt2d(x, output_size)
        batch, channels4, height, width = x.shape
        if channels4 % 4:
            raise ValueError(
                f'IDWT2D expects 4*C channels (LL, LH, HL, HH bands), got '
                f'{channels4} channels')
        bands = x.view(batch, 4, channels4 // 4, height, width)
        out = self._delegate((bands[:, 0], [bands[:, 1:].transpose(1, 2)]))
        return out if output_size is None else \
            out[..., :output_size[0], :output_size[1]]

    def extra_repr(self) -> str:
        return f"wave='{self.wave}'"


__all__: Tuple[str, ...] = ('DWT2D', 'IDWT2D', 'haar_dwt2d', 'haar_idwt2d')
