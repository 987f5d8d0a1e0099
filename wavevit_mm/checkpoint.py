"""Backbone weights from checkpoint files: official Wave-ViT ImageNet
checkpoints are converted on the fly by :func:`convert_official`."""
import re
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import MMLogger
from torch import Tensor, nn

WRAPPER_KEYS = ('state_dict', 'model')

# Official classification layout -> this package's module names.
OFFICIAL_RENAMES = (
    (re.compile(r'^patch_embed(\d)\.'),
     lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
    (re.compile(r'^block(\d)\.(\d+)\.'),
     lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (re.compile(r'^norm(\d)\.'), lambda m: f'stages.{int(m[1]) - 1}.norm.'),
    (re.compile(r'\.mlp\.dwconv\.dwconv\.'), lambda m: '.mlp.dwconv.'),
)
# Entries of official files that the dense backbone does not use.
OFFICIAL_DROPPED = {
    'classification-only': re.compile(r'^(post_network|head|aux_head)\.'),
    'derived wavelet filter buffers': re.compile(
        r'\.attn\.(dwt\.w_(ll|lh|hl|hh)|idwt\.filters)$'),
}


def is_official(state_dict: Dict[str, Tensor]) -> bool:
    """Whether a state dict has the official classification layout."""
    return any(k.startswith(('patch_embed1.', 'block1.')) for k in state_dict)


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
        for pattern, rename in OFFICIAL_RENAMES:
            key = pattern.sub(rename, key)
        converted[key] = value
    return converted, dropped


def extract_state_dict(checkpoint: Dict, prefix: Optional[str] = None
                       ) -> Dict[str, Tensor]:
    """The backbone state dict inside a loaded checkpoint.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}``, strips the
    ``module.`` prefix of DistributedDataParallel and, when given (or when
    every key has it), a ``backbone.`` style prefix of a whole detector.
    """
    state_dict = checkpoint
    for key in WRAPPER_KEYS:
        if isinstance(state_dict, dict) and isinstance(
                state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, dict) or not all(
            isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError('checkpoint holds no state dict of tensors')
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in state_dict.items()}
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()
                      if k.startswith(prefix)}
    return state_dict


def load_pretrained(model: nn.Module, filename: str,
                    prefix: Optional[str] = None) -> None:
    """Load backbone weights strictly: a missing or mis-shaped weight is an
    error, never a silent fall-back to random initialisation."""
    checkpoint = torch.load(filename, map_location='cpu', weights_only=True)
    state_dict = extract_state_dict(checkpoint, prefix)
    if is_official(state_dict):
        state_dict, _ = convert_official(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f'{filename} does not match this {type(model).__name__}: '
            f'{len(missing)} missing (e.g. {missing[:3]}), '
            f'{len(unexpected)} unexpected (e.g. {unexpected[:3]}), '
            f'{len(mismatched)} with another shape (e.g. {mismatched[:3]})')
    model.load_state_dict(state_dict)
    MMLogger.get_current_instance().info(
        f'Loaded {len(state_dict)} backbone tensors from {filename}')
