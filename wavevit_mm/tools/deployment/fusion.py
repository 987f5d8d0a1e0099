"""ONNX Runtime's fused operators and layout, for a file meant for ONNX
Runtime alone (``pytorch2onnx.py --fuse``).

Attention is exported as ``com.microsoft`` ``MultiHeadAttention``, whose
CPU kernel is a flash attention that never holds the N x M scores (the
plain export computes them: at 800x1216, 115 million per head in stage 1);
then onnxruntime.transformers' GELU fusion rewrites GELU's Erf form to
one ``Gelu`` node. These are ONNX Runtime's own operators, with CPU and
CUDA kernels: TensorRT and OpenVINO read the plain export. A residual Add
followed by LayerNormalization stays two nodes: ONNX Runtime's CPU
``SkipLayerNormalization`` kernel takes 2.5-4x the pair's time
(docs/deployment.md; :func:`~.runtime.onnx_session` keeps the session
from fusing them on the CPU, CUDA sessions still do).

Each block's feed-forward is exported on (B, C, H, W) maps
(:class:`ConvolutionFFN`), so that ONNX Runtime's CPU runs it whole in its
blocked NCHWc layout: the layout changes at its narrow input and output
instead of on both sides of the depthwise convolution, where the map is
``mlp_ratio`` times wider.
"""
import contextlib
from typing import Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.wavevit import FFN, map_to_tokens, tokens_to_map
from .runtime import ExportError

#: ONNX Runtime's operator domain.
RUNTIME_DOMAIN = 'com.microsoft'


def _register_attention_schema() -> None:
    """Make com.microsoft MultiHeadAttention known to onnx's registry,
    which onnxscript reads to build a node (onnx itself knows the standard
    domain only): the inputs and attributes the export writes."""
    import onnx.defs as defs
    try:
        defs.get_schema('MultiHeadAttention', 1, RUNTIME_DOMAIN)
        return
    except defs.SchemaError:
        pass
    param, attribute = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute
    defs.register_schema(defs.OpSchema(
        'MultiHeadAttention', RUNTIME_DOMAIN, 1,
        doc='ONNX Runtime contrib operator: softmax(q k^T * scale) v per '
        'head, over (B, N, heads * d) query and (B, M, heads * d) key and '
        'value.',
        inputs=[param('query', 'T'), param('key', 'T'), param('value', 'T')],
        outputs=[param('output', 'T')],
        type_constraints=[('T', ['tensor(float)', 'tensor(float16)'], '')],
        attributes=[
            attribute('num_heads', defs.OpSchema.AttrType.INT,
                      'number of heads'),
            attribute('scale', defs.OpSchema.AttrType.FLOAT,
                      'score scale, 1 / sqrt(d) when absent', required=False)
        ]))


def attention_translations() -> dict:
    """The translation of ``F.scaled_dot_product_attention`` to
    MultiHeadAttention, for ``torch.onnx.export``'s
    ``custom_translation_table`` (onnxscript is imported only here)."""
    from onnxscript import opset18 as op
    from onnxscript.values import Opset
    _register_attention_schema()
    runtime = Opset(RUNTIME_DOMAIN, 1)

    def attention(query, key, value, attn_mask=None, dropout_p=0.0,
                  is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or is_causal or dropout_p or enable_gqa:
            raise ExportError(
                'MultiHeadAttention is written for attention without a '
                'mask, causality, dropout or grouped heads.')
        heads = query.shape[1]

        def tokens(x):  # (B, heads, N, d) -> (B, N, heads * d)
            return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]),
                              op.Constant(value_ints=[0, 0, -1]))

        extra = {} if scale is None else dict(scale=float(scale))
        out = runtime.MultiHeadAttention(tokens(query), tokens(key),
                                         tokens(value), num_heads=heads,
                                         **extra)
        return op.Transpose(  # (B, N, heads * d) -> (B, heads, N, d)
            op.Reshape(out, op.Constant(value_ints=[0, 0, heads, -1])),
            perm=[0, 2, 1, 3])

    return {torch.ops.aten.scaled_dot_product_attention.default: attention}


class ConvolutionFFN(nn.Module):
    """An :class:`~wavevit_mm.models.wavevit.FFN` computed on the token map:
    its Linear layers as 1x1 convolutions of the same weights around the
    depthwise one, the GELU between them, (B, N, C) tokens in and out.

    ONNX Runtime's CPU convolves in a blocked NCHWc layout and reorders
    every tensor that enters or leaves a run of the operators it knows in
    that layout (convolutions, its ``Gelu``, elementwise sums); exported as
    written, the depthwise convolution alone is such a run, and both of
    its hidden maps are reordered. Here the run is the whole FFN.
    """

    def __init__(self, ffn: FFN) -> None:
        super().__init__()
        self.ffn = ffn

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        ffn = self.ffn
        x = tokens_to_map(x, hw)                           # (B, C, H, W)
        x = F.conv2d(x, ffn.fc1.weight[..., None, None], ffn.fc1.bias)
        x = ffn.act(ffn.dwconv(x))                         # (B, hidden, H, W)
        x = F.conv2d(x, ffn.fc2.weight[..., None, None], ffn.fc2.bias)
        return map_to_tokens(x)                            # (B, N, C)


@contextlib.contextmanager
def convolution_ffns(module: nn.Module) -> Iterator[None]:
    """Each FFN inside ``module`` replaced by its :class:`ConvolutionFFN`
    (sharing its parameters) in the block, put back afterwards."""
    replaced = [(parent, name, child) for parent in module.modules()
                for name, child in parent.named_children()
                if isinstance(child, FFN)]
    for parent, name, child in replaced:
        setattr(parent, name, ConvolutionFFN(child))
    try:
        yield
    finally:
        for parent, name, child in replaced:
            setattr(parent, name, child)


def fuse_patterns(model_proto):
    """``model_proto`` with GELU's Erf form fused to ``Gelu`` by
    onnxruntime.transformers' fusion; its other rewrites (constant folding
    among them) are meant for BERT-like graphs and break the detectors'
    heads."""
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel
    model = BertOnnxModel(model_proto)
    model.fuse_gelu()
    model.topological_sort()
    return model.model
