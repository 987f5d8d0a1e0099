"""State-dict surgery: where the weights sit in a loaded checkpoint, key
prefixes, whether a state dict fits a module exactly, and which of its
tensors load into one by name and shape."""
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from torch import Tensor

from ..errors import CheckpointError

#: Entries under which training scripts store the state dict.
WRAPPER_KEYS = ('state_dict', 'model')
#: The key prefix of DistributedDataParallel.
DDP_PREFIX = 'module.'


def is_state_dict(value: Any) -> bool:
    """A non-empty dict of tensors with string keys."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor)
        for k, v in value.items())


def unwrap_state_dict(checkpoint: Any, filename: str = 'The checkpoint'
                      ) -> Tuple[Dict[str, Tensor], Optional[str]]:
    """The state dict of a loaded checkpoint and the entry holding it.

    Accepts a bare state dict or one under ``'state_dict'`` / ``'model'``
    (the official and mmengine training scripts; an EMA copy under
    ``'state_dict_ema'`` is not used). The ``module.`` prefix of
    DistributedDataParallel is removed. Otherwise raises CheckpointError,
    one paragraph naming ``filename`` and what the checkpoint holds.
    """
    if is_state_dict(checkpoint):
        return strip_ddp_prefix(checkpoint), None
    if isinstance(checkpoint, dict):
        for key in WRAPPER_KEYS:
            if is_state_dict(checkpoint.get(key)):
                return strip_ddp_prefix(checkpoint[key]), key
        entries = ', '.join(repr(k) for k in list(checkpoint)[:8])
        raise CheckpointError(
            f'{filename} holds no state dict of tensors: expected one at the '
            f'top level or under {" or ".join(map(repr, WRAPPER_KEYS))}, '
            f'found the entries {entries or "(none)"}.')
    raise CheckpointError(f'{filename} holds a {type(checkpoint).__name__}, '
                          f'not a state dict of tensors.')


def strip_prefix(state_dict: Dict[str, Tensor], prefix: str
                 ) -> Tuple[Dict[str, Tensor], List[str]]:
    """The entries under ``prefix`` without it, and the other keys."""
    inside = {k[len(prefix):]: v for k, v in state_dict.items()
              if k.startswith(prefix)}
    outside = [k for k in state_dict if not k.startswith(prefix)]
    return inside, outside


def strip_ddp_prefix(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state_dict`` without the ``module.`` prefix that every key has when
    it was saved from a DistributedDataParallel model."""
    if all(k.startswith(DDP_PREFIX) for k in state_dict):
        return strip_prefix(state_dict, DDP_PREFIX)[0]
    return state_dict


def fit_problems(state_dict: Dict[str, Tensor], own: Dict[str, Tensor],
                 target: str) -> List[str]:
    """What keeps ``state_dict`` from loading strictly into a module with
    state dict ``own`` (missing keys, extra keys, other shapes), one phrase
    each; empty when it fits. ``target`` names the module in the phrases."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if own[k].shape != state_dict[k].shape)
    problems = []
    if missing:
        problems.append(f'{len(missing)} {target} weights are missing from '
                        f'the file (e.g. {", ".join(missing[:3])})')
    if unexpected:
        problems.append(f'{len(unexpected)} are not in the {target} (e.g. '
                        f'{", ".join(unexpected[:3])})')
    if mismatched:
        key = mismatched[0]
        problems.append(
            f'{len(mismatched)} have another shape (e.g. {key}: '
            f'{tuple(state_dict[key].shape)} in the file, '
            f'{tuple(own[key].shape)} in the {target})')
    return problems


class PartialFit(NamedTuple):
    """How a state dict loads into a module by name and shape: the keys
    that load, and the ones that do not (missing from the file, in the
    file only, of another shape)."""
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    mismatched: List[str]
    #: the share of the module's weights (elements) the loaded keys hold
    loaded_share: float


def partial_fit(state_dict: Dict[str, Tensor],
                own: Dict[str, Tensor]) -> PartialFit:
    """Which entries of ``state_dict`` load into a module with state dict
    ``own`` when every tensor whose name and shape fit is taken."""
    common = [k for k in own if k in state_dict]
    loaded = [k for k in common if own[k].shape == state_dict[k].shape]
    total = sum(v.numel() for v in own.values())
    share = sum(own[k].numel() for k in loaded) / total if total else 0.
    return PartialFit(
        loaded=loaded,
        missing=[k for k in own if k not in state_dict],
        unexpected=[k for k in state_dict if k not in own],
        mismatched=[k for k in common if k not in set(loaded)],
        loaded_share=share)


def skipped_by_module(fit: PartialFit, state_dict: Dict[str, Tensor],
                      own: Dict[str, Tensor], limit: int = 20) -> List[str]:
    """One line per module with entries that do not load, e.g.
    ``bbox_head.retina_cls: 2 tensors of another shape (weight: (27, 64,
    3, 3) in the file, (18, 64, 3, 3) in the model)``."""
    groups: Dict[str, Dict[str, List[str]]] = {}
    for kind, keys in (('shape', fit.mismatched), ('missing', fit.missing),
                       ('unexpected', fit.unexpected)):
        for key in keys:
            module, _, name = key.rpartition('.')
            groups.setdefault(module or '(top level)', {}).setdefault(
                kind, []).append(name)
    lines = []
    for module, kinds in groups.items():
        phrases = []
        if 'shape' in kinds:
            name = kinds['shape'][0]
            key = f'{module}.{name}'
            phrases.append(
                f'{_tensors(kinds["shape"])} of another shape ({name}: '
                f'{tuple(state_dict[key].shape)} in the file, '
                f'{tuple(own[key].shape)} in the model)')
        if 'missing' in kinds:
            phrases.append(f'{_tensors(kinds["missing"])} not in the file')
        if 'unexpected' in kinds:
            phrases.append(f'{_tensors(kinds["unexpected"])} in the file '
                           f'only')
        lines.append(f'{module}: {"; ".join(phrases)}')
    if len(lines) > limit:
        lines = lines[:limit] + [f'... and {len(lines) - limit} more modules']
    return lines


def _tensors(names: List[str]) -> str:
    return f'{len(names)} tensor{"s" if len(names) > 1 else ""}'
