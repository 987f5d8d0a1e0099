"""The official Wave-ViT checkpoint layout, and the arch read off weights.

Official ImageNet classification checkpoints (the authors'
``classification/`` code) name the backbone ``patch_embed{i}`` /
``block{i}.{j}`` / ``norm{i}`` and carry a classification head;
:func:`convert_official` renames them to this package's
``stages.{i}.downsample / blocks / norm`` and drops what the dense
backbone does not use; :func:`convert_official_classifier` renames them to
the keys of the whole mmpretrain classifier (backbone and
``WaveViTClsHead``). Pure functions of state dicts, testable alone.
"""
import re
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor

# Official classification layout -> this package's module names.
OFFICIAL_RENAMES = (
    (re.compile(r'^patch_embed(\d)\.'),
     lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
    (re.compile(r'^block(\d)\.(\d+)\.'),
     lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (re.compile(r'^norm(\d)\.'), lambda m: f'stages.{int(m[1]) - 1}.norm.'),
    (re.compile(r'\.mlp\.dwconv\.dwconv\.'), lambda m: '.mlp.dwconv.'),
)
# The float16 Haar filters the official attention stores as buffers.
DERIVED_BUFFERS = re.compile(
    r'\.attn\.((?:dwt\.w_(?:ll|lh|hl|hh))|idwt\.filters)$')
# Entries of official files that the dense backbone does not use; the
# first group of each pattern names the entry in summaries.
OFFICIAL_DROPPED = {
    'classification-only entries': re.compile(
        r'^(post_network|head|aux_head)\.'),
    'derived buffers (wavelet filters, rebuilt by the backbone)':
        DERIVED_BUFFERS,
}
# The official classifier after the stages -> ``WaveViTClsHead`` (under
# ``head.``): its class-attention block, the norm of its fourth and last
# stage (applied after that block) and the two linear heads.
OFFICIAL_HEAD_RENAMES = (
    (re.compile(r'^post_network\.0\.'), 'class_block.'),
    (re.compile(r'^norm4\.'), 'norm.'),
    (re.compile(r'^head\.'), 'fc.'),
    (re.compile(r'^aux_head\.'), 'aux_fc.'),
)
# The stage index of a backbone key.
STAGE_KEY = re.compile(r'^stages\.(\d+)\.')
# A key only the whole classifier has.
CLASSIFIER_KEY = 'head.class_block.attn.q.weight'
# Keys only a Wave-ViT backbone has: its stem and its attention queries.
WAVEVIT_KEY = re.compile(
    r'^stages\.\d+\.(downsample\.conv\.0|blocks\.\d+\.attn\.q)\.weight$')


def is_official(state_dict: Dict[str, Tensor]) -> bool:
    """Whether a state dict has the official classification layout."""
    return any(k.startswith(('patch_embed1.', 'block1.')) for k in state_dict)


def has_wavevit_weights(state_dict: Dict[str, Tensor]) -> bool:
    """Whether a (converted) state dict holds Wave-ViT backbone weights."""
    return any(WAVEVIT_KEY.match(k) for k in state_dict)


def convert_official(state_dict: Dict[str, Tensor]
                     ) -> Tuple[Dict[str, Tensor], Dict[str, List[str]]]:
    """Rename an official Wave-ViT state dict to this backbone's keys.

    Returns the converted state dict and the dropped keys by reason.
    """
    converted: Dict[str, Tensor] = {}
    dropped: Dict[str, List[str]] = {reason: [] for reason in OFFICIAL_DROPPED}
    for key, value in state_dict.items():
        reason = next((r for r, pattern in OFFICIAL_DROPPED.items()
                       if pattern.search(key)), None)
        if reason is not None:
            dropped[reason].append(key)
            continue
        converted[_backbone_key(key)] = value
    return converted, dropped


def _backbone_key(key: str) -> str:
    for pattern, rename in OFFICIAL_RENAMES:
        key = pattern.sub(rename, key)
    return key


def is_classifier(state_dict: Dict[str, Tensor]) -> bool:
    """Whether a state dict is that of a whole Wave-ViT classifier."""
    return CLASSIFIER_KEY in state_dict


def convert_official_classifier(state_dict: Dict[str, Tensor]
                                ) -> Dict[str, Tensor]:
    """Rename an official Wave-ViT state dict to the keys of the whole
    classifier: the backbone (built with ``final_norm=False``) under
    ``backbone.``, the class-attention block, the last norm and the two
    linear heads under ``head.``; the derived filter buffers are dropped.
    """
    converted: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if DERIVED_BUFFERS.search(key):
            continue
        for pattern, name in OFFICIAL_HEAD_RENAMES:
            if pattern.match(key):
                converted['head.' + pattern.sub(name, key, count=1)] = value
                break
        else:
            converted['backbone.' + _backbone_key(key)] = value
    return converted


def entry_label(key: str) -> str:
    """The name a dropped key is counted under in summaries."""
    for pattern in OFFICIAL_DROPPED.values():
        match = pattern.search(key)
        if match:
            return match[1]
    return key.split('.', 1)[0]


# ------------------------------------------------------- arch from shapes

def arch_signature(state_dict: Dict[str, Tensor]) -> Dict[str, Any]:
    """Stem width, embed dims and depths read off backbone weight shapes,
    for as many stages as the keys name (``None`` / 0 where the weights of
    a stage are absent)."""
    stem = state_dict.get('stages.0.downsample.conv.0.weight')
    dims: List[Optional[int]] = []
    depths: List[int] = []
    stages = [int(m[1]) for m in map(STAGE_KEY.match, state_dict) if m]
    for i in range(max(stages, default=-1) + 1):
        # the last stage of a classifier's backbone has no norm of its own
        norm = state_dict.get(f'stages.{i}.norm.weight')
        if norm is None:
            norm = state_dict.get(f'stages.{i}.downsample.norm.weight')
        dims.append(int(norm.shape[0]) if norm is not None else None)
        block = re.compile(rf'^stages\.{i}\.blocks\.(\d+)\.')
        indices = [int(m[1]) for m in map(block.match, state_dict) if m]
        depths.append(max(indices) + 1 if indices else 0)
    return dict(stem_width=int(stem.shape[0]) if stem is not None else None,
                embed_dims=dims, depths=depths)


def infer_arch(state_dict: Dict[str, Tensor],
               arch_zoo: Dict[str, Dict]) -> Optional[str]:
    """The preset of ``arch_zoo`` (e.g. ``WaveViT.arch_zoo``) whose shapes
    a converted state dict has, or None."""
    signature = arch_signature(state_dict)
    for name, arch in arch_zoo.items():
        if all(signature[k] == (list(v) if isinstance(v, tuple) else v)
               for k, v in arch.items() if k in signature):
            return name
    return None


def arch_name(state_dict: Dict[str, Tensor],
              arch_zoo: Dict[str, Dict]) -> str:
    """E.g. ``Wave-ViT-B``, or ``custom Wave-ViT``."""
    name = infer_arch(state_dict, arch_zoo)
    return f'Wave-ViT-{name.upper()}' if name else 'custom Wave-ViT'


def describe_arch(state_dict: Dict[str, Tensor],
                  arch_zoo: Dict[str, Dict]) -> str:
    """E.g. ``Wave-ViT-B (stem width 64, embed dims 64/128/320/512,
    depths 3/4/12/3)``."""
    signature = arch_signature(state_dict)
    dims = '/'.join('?' if d is None else str(d)
                    for d in signature['embed_dims'])
    depths = '/'.join(map(str, signature['depths']))
    return (f'{arch_name(state_dict, arch_zoo)} (stem width '
            f'{signature["stem_width"]}, embed dims {dims}, depths {depths})')
