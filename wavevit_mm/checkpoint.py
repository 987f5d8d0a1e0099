"""Backbone weights from checkpoint files: read safely, loaded strictly.

Three kinds of files hold Wave-ViT backbone weights:

* official ImageNet classification checkpoints (the authors'
  ``classification/`` code): ``patch_embed{i}`` / ``block{i}.{j}`` /
  ``norm{i}`` keys plus a classification head, renamed on the fly by
  :func:`convert_official`;
* backbone-only files written by :func:`convert_checkpoint`
  (``tools/model_converters/wavevit2mm.py``), ``.pth`` or ``.safetensors``;
* mmdet / mmseg checkpoints of a whole model saved by mmengine's Runner,
  whose backbone keys start with ``backbone.``.

Checkpoint files are untrusted input. :func:`safe_load` unpickles with
``torch.load(weights_only=True)`` and only the extra types listed in
:data:`SAFE_GLOBALS`, so a file whose unpickling would run code is refused
unless the caller says it trusts the file. Loading is strict: a missing or
mis-shaped backbone weight is an error that says which arch the file holds,
never a silent fall-back to random initialisation. The same holds for the
whole-model checkpoints ``tools/test.py`` and the demo use
(:func:`read_model_weights`, :func:`check_model_fits`).
"""
import argparse
import inspect
import os
import os.path as osp
import pickle
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, MMLogger
from torch import Tensor, nn

from .errors import InputError
from .models.wavevit import WaveViT

try:  # numpy 2 moved numpy.core to numpy._core; 1.26 has both
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:
    from numpy.core.multiarray import _reconstruct, scalar


class CheckpointError(InputError):
    """A file that cannot be used as the weights asked for."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would call something other than the
    tensor, container and number constructors checkpoints need."""


# ------------------------------------------------------------ safe loading

def _history_buffer_method(owner: Any, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine's HistoryBuffer pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``; any other attribute lookup, which
    could reach arbitrary objects, is refused.
    """
    if owner is HistoryBuffer and not name.startswith('_') and \
            inspect.isfunction(vars(HistoryBuffer).get(name)):
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed in a checkpoint')


_NUMPY_DTYPES = sorted(
    {type(np.dtype(code))
     for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']},
    key=lambda cls: cls.__name__)

#: Globals allowed while unpickling a checkpoint, beyond the tensors,
#: containers and numbers ``torch.load(weights_only=True)`` accepts anyway:
#: what official Wave-ViT training scripts and mmengine's Runner (mmdet,
#: mmseg) legitimately store. Pass it to ``torch.serialization.safe_globals``
#: as a context manager; never register it process-wide.
SAFE_GLOBALS: List[Union[Callable, Tuple[Callable, str]]] = [
    # official training scripts: the parsed command line ('args')
    argparse.Namespace,
    # mmengine Runner: the message hub's log buffers ...
    HistoryBuffer,
    (_history_buffer_method, 'builtins.getattr'),
    # ... and numpy scalars and arrays in logs and runtime info (numpy 1.x
    # and 2.x module names)
    np.ndarray,
    np.dtype,
    *_NUMPY_DTYPES,
    (_reconstruct, 'numpy.core.multiarray._reconstruct'),
    (_reconstruct, 'numpy._core.multiarray._reconstruct'),
    (scalar, 'numpy.core.multiarray.scalar'),
    (scalar, 'numpy._core.multiarray.scalar'),
]

TRUST_HINT = (
    "If you trust the file's origin (e.g. a legacy checkpoint you saved "
    "yourself), load it with init_cfg=dict(type='Pretrained', "
    "checkpoint=..., trusted=True), or convert it once with "
    "tools/model_converters/wavevit2mm.py --trusted and use the converted "
    "file.")
# the same for checkpoints of a whole model (tools/test.py, --resume, ...)
MODEL_TRUST_HINT = (
    "Checkpoints saved by mmengine's Runner never need more; if you trust "
    "the file's origin, load it once with torch.load(weights_only=False) "
    "and save its 'state_dict' entry alone with torch.save.")

FORMAT_NAMES = dict(torch='PyTorch', pickle='legacy PyTorch (pickle)',
                    safetensors='safetensors')
# Leading bytes of files that are sometimes mistaken for checkpoints.
FILE_SIGNATURES = (
    (b'\x89PNG', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'GIF8', 'a GIF image'),
    (b'%PDF', 'a PDF document'),
    (b'\x1f\x8b', 'a gzip archive'),
)


def _safe_global_names() -> List[str]:
    return [entry[1] if isinstance(entry, tuple)
            else f'{entry.__module__}.{entry.__qualname__}'
            for entry in SAFE_GLOBALS]


def _describe_content(head: bytes) -> str:
    """What the first bytes of a non-checkpoint file look like."""
    for signature, kind in FILE_SIGNATURES:
        if head.startswith(signature):
            return kind
    if all(32 <= byte < 127 or byte in b'\t\n\r' for byte in head):
        text = ' '.join(head.decode('ascii').split())
        return f'text ({text[:40]!r}...)'
    return f'an unknown format (first bytes {head[:8].hex(" ")})'


def checkpoint_format(path: str) -> str:
    """``'torch'`` (zip), ``'pickle'`` (legacy torch.save) or
    ``'safetensors'``, from the file's leading bytes.

    Raises FileNotFoundError or CheckpointError, naming the file, for
    anything that is not a checkpoint at all.
    """
    if not osp.exists(path):
        hint = (' Only local files are read: download it first.'
                if '://' in str(path) else '')
        raise FileNotFoundError(f'Checkpoint file not found: {path}.{hint}')
    if osp.isdir(path):
        raise CheckpointError(
            f'{path} is a directory, not a checkpoint file.')
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointError(
            f'{path} is empty (0 bytes), not a checkpoint: an interrupted '
            f'download or copy? Fetch the file again.')
    with open(path, 'rb') as file:
        head = file.read(64)
    if head.startswith(b'PK\x03\x04'):
        return 'torch'
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return 'pickle'
    if head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < size:
        return 'safetensors'  # header length, then a JSON header
    raise CheckpointError(
        f'{path} is not a checkpoint: it looks like {_describe_content(head)}'
        f', not a file written by torch.save or safetensors ({size} bytes).')


def _disallowed_globals(path: str, error: Exception) -> List[str]:
    """The globals a refused pickle wanted, minus those we allow."""
    names = set(re.findall(r'GLOBAL (\S+)', str(error)))
    try:
        names.update(torch.serialization.get_unsafe_globals_in_checkpoint(
            path))
    except Exception:  # only zip checkpoints can be listed this way
        pass
    return sorted(names - set(_safe_global_names()))


def _reader_error(error: Exception) -> str:
    """The informative first sentence of a reader's error message."""
    text = str(error)
    unpickler = re.search(r'WeightsUnpickler error:\s*(.+?)(?:\n\n|$)', text,
                          re.S)
    if unpickler:
        text = unpickler[1]
    sentence = text.strip().split('\n')[0].split('. ')[0]
    return sentence[:200] or type(error).__name__


def _load_safetensors(path: str) -> Dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f'{path} is a safetensors file; reading it needs the '
            f'safetensors package (pip install safetensors).') from None
    return load_file(path)


def safe_load(path: str, trusted: bool = False,
              trust_hint: str = TRUST_HINT) -> Any:
    """Load a checkpoint file without running code from it.

    Pickled files (``torch.save``) go through
    ``torch.load(weights_only=True)`` with only :data:`SAFE_GLOBALS`
    allowed on top of tensors, containers and numbers; ``.safetensors``
    files cannot hold code at all. ``trusted=True`` unpickles anything, for
    legacy files from a trusted source; ``trust_hint`` ends the message of
    a refused file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: unpickling would call a global that is not
            allowed; names the file and the global.
        CheckpointError: empty, truncated or corrupt files, or files that
            are no checkpoint at all.
    """
    path = str(path)
    kind = checkpoint_format(path)
    size = osp.getsize(path)
    try:
        if kind == 'safetensors':
            return _load_safetensors(path)
        if trusted:
            return torch.load(path, map_location='cpu', weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        offending = [] if trusted else _disallowed_globals(path, error)
        if offending:
            raise UnsafeCheckpointError(
                f'Refusing to load {path}: unpickling it would call '
                f'{", ".join(offending)}, which is not one of the tensor, '
                f'container and number types checkpoints hold; a file like '
                f'this can run arbitrary code when loaded. {trust_hint}'
            ) from None
        reason = _reader_error(error)
    except Exception as error:  # torch, zip and safetensors readers
        reason = _reader_error(error)
    raise CheckpointError(
        f'{path} could not be read as a {FORMAT_NAMES[kind]} checkpoint '
        f'({size} bytes): {reason}. The file is probably truncated or corrupt '
        f'(an interrupted download or copy?) or was not written by '
        f'torch.save or safetensors.')


# ----------------------------------------------------- finding the weights

WRAPPER_KEYS = ('state_dict', 'model')
DDP_PREFIX = 'module.'

# Official classification layout -> this package's module names.
OFFICIAL_RENAMES = (
    (re.compile(r'^patch_embed(\d)\.'),
     lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
    (re.compile(r'^block(\d)\.(\d+)\.'),
     lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (re.compile(r'^norm(\d)\.'), lambda m: f'stages.{int(m[1]) - 1}.norm.'),
    (re.compile(r'\.mlp\.dwconv\.dwconv\.'), lambda m: '.mlp.dwconv.'),
)
# Entries of official files that the dense backbone does not use; the
# first group of each pattern names the entry in summaries.
OFFICIAL_DROPPED = {
    'classification-only entries': re.compile(
        r'^(post_network|head|aux_head)\.'),
    'derived buffers (wavelet filters, rebuilt by the backbone)': re.compile(
        r'\.attn\.((?:dwt\.w_(?:ll|lh|hl|hh))|idwt\.filters)$'),
}
OUTSIDE_BACKBONE = 'entries outside the backbone'
# Keys only a Wave-ViT backbone has: its stem and its attention queries.
WAVEVIT_KEY = re.compile(
    r'^stages\.\d+\.(downsample\.conv\.0|blocks\.\d+\.attn\.q)\.weight$')


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


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor)
        for k, v in value.items())


def unwrap_state_dict(checkpoint: Any
                      ) -> Tuple[Dict[str, Tensor], Optional[str]]:
    """The state dict of a loaded checkpoint and the entry holding it.

    Accepts a bare state dict or one under ``'state_dict'`` / ``'model'``
    (the official and mmengine training scripts; an EMA copy under
    ``'state_dict_ema'`` is not used). Raises CheckpointError (without the
    file name) otherwise.
    """
    if _is_state_dict(checkpoint):
        return checkpoint, None
    if isinstance(checkpoint, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(checkpoint.get(key)):
                return checkpoint[key], key
        entries = ', '.join(repr(k) for k in list(checkpoint)[:8])
        raise CheckpointError(
            f'holds no state dict of tensors: expected one at the top level '
            f'or under {" or ".join(map(repr, WRAPPER_KEYS))}, found the '
            f'entries {entries or "(none)"}')
    raise CheckpointError(
        f'holds a {type(checkpoint).__name__}, not a state dict of tensors')


def strip_prefix(state_dict: Dict[str, Tensor], prefix: str
                 ) -> Tuple[Dict[str, Tensor], List[str]]:
    """The entries under ``prefix`` without it, and the other keys."""
    inside = {k[len(prefix):]: v for k, v in state_dict.items()
              if k.startswith(prefix)}
    outside = [k for k in state_dict if not k.startswith(prefix)]
    return inside, outside


def extract_backbone(checkpoint: Any, prefix: Optional[str] = None
                     ) -> Tuple[Dict[str, Tensor], List[str], List[str]]:
    """The backbone state dict inside a loaded checkpoint, keys unchanged.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}``, strips the
    ``module.`` prefix of DistributedDataParallel and, when given (or when
    any key has it), the ``backbone.`` prefix of a whole detector. Returns
    the state dict, notes on where it was found, and the keys outside the
    backbone.
    """
    state_dict, entry = unwrap_state_dict(checkpoint)
    notes = [f'{entry!r} entry' if entry else 'bare state dict']
    if all(k.startswith(DDP_PREFIX) for k in state_dict):
        state_dict, _ = strip_prefix(state_dict, DDP_PREFIX)
        notes.append(f'{DDP_PREFIX!r} prefix of DistributedDataParallel '
                     f'removed')
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    outside: List[str] = []
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict, outside = strip_prefix(state_dict, prefix)
        notes.append(f'weights under {prefix!r}')
    return state_dict, notes, outside


# ------------------------------------------------------- arch from shapes

def arch_signature(state_dict: Dict[str, Tensor]) -> Dict[str, Any]:
    """Stem width, embed dims and depths read off backbone weight shapes
    (``None`` / 0 where the weights are absent)."""
    stem = state_dict.get('stages.0.downsample.conv.0.weight')
    dims: List[Optional[int]] = []
    depths: List[int] = []
    for i in range(WaveViT.num_stages):
        norm = state_dict.get(f'stages.{i}.norm.weight')
        dims.append(int(norm.shape[0]) if norm is not None else None)
        block = re.compile(rf'^stages\.{i}\.blocks\.(\d+)\.')
        indices = [int(m[1]) for m in map(block.match, state_dict) if m]
        depths.append(max(indices) + 1 if indices else 0)
    return dict(stem_width=int(stem.shape[0]) if stem is not None else None,
                embed_dims=dims, depths=depths)


def infer_arch(state_dict: Dict[str, Tensor]) -> Optional[str]:
    """The preset (``'s'``, ``'b'``, ``'l'``) whose shapes a converted
    state dict has, or None."""
    signature = arch_signature(state_dict)
    for name, arch in WaveViT.arch_zoo.items():
        if all(signature[k] == (list(v) if isinstance(v, tuple) else v)
               for k, v in arch.items() if k in signature):
            return name
    return None


def _arch_name(state_dict: Dict[str, Tensor]) -> str:
    name = infer_arch(state_dict)
    return f'Wave-ViT-{name.upper()}' if name else 'custom Wave-ViT'


def describe_arch(state_dict: Dict[str, Tensor]) -> str:
    """E.g. ``Wave-ViT-B (stem width 64, embed dims 64/128/320/512,
    depths 3/4/12/3)``."""
    signature = arch_signature(state_dict)
    dims = '/'.join('?' if d is None else str(d)
                    for d in signature['embed_dims'])
    depths = '/'.join(map(str, signature['depths']))
    return (f'{_arch_name(state_dict)} (stem width '
            f'{signature["stem_width"]}, embed dims {dims}, depths {depths})')


# ------------------------------------------------------- reading weights

@dataclass
class LoadReport:
    """Where backbone weights came from and what was left out."""

    filename: str
    source: str
    arch: str
    num_tensors: int
    dropped: Dict[str, List[str]] = field(default_factory=dict)
    ignored_entries: List[str] = field(default_factory=list)


def _entry_label(key: str) -> str:
    """The name a dropped key is counted under in summaries."""
    for pattern in OFFICIAL_DROPPED.values():
        match = pattern.search(key)
        if match:
            return match[1]
    return key.split('.', 1)[0]


def format_summary(report: LoadReport) -> str:
    """One readable summary of a load, a few lines."""
    lines = [f'{report.arch} backbone weights from {report.filename} '
             f'({report.source}): {report.num_tensors} tensors.']
    for reason, keys in report.dropped.items():
        if keys:
            counts = Counter(map(_entry_label, keys))
            groups = ', '.join(f'{label} ({n})' for label, n in counts.items())
            lines.append(f'  dropped {len(keys)} {reason}: {groups}')
    if report.ignored_entries:
        lines.append('  not used: file entries ' + ', '.join(
            repr(k) for k in report.ignored_entries))
    return '\n'.join(lines)


def read_backbone_weights(filename: str,
                          prefix: Optional[str] = None,
                          trusted: bool = False
                          ) -> Tuple[Dict[str, Tensor], LoadReport]:
    """Backbone state dict (this package's key names) from any supported
    checkpoint file, and a report of what was converted and dropped.

    Raises CheckpointError naming the file when it holds no Wave-ViT
    backbone.
    """
    filename = str(filename)
    checkpoint = safe_load(filename, trusted=trusted)
    try:
        state_dict, notes, outside = extract_backbone(checkpoint, prefix)
    except CheckpointError as error:
        raise CheckpointError(f'{filename} {error}.') from None
    dropped: Dict[str, List[str]] = {}
    if outside:
        dropped[OUTSIDE_BACKBONE] = outside
    if is_official(state_dict):
        state_dict, official_dropped = convert_official(state_dict)
        dropped.update(official_dropped)
        notes.insert(0, 'official ImageNet classification checkpoint, '
                        'converted on the fly')
    if not any(WAVEVIT_KEY.match(k) for k in state_dict):
        sample = ', '.join(list(state_dict)[:3]) or '(no tensors)'
        raise CheckpointError(
            f'{filename} is not a Wave-ViT checkpoint: none of its '
            f'{len(state_dict)} tensors ({"; ".join(notes)}) belongs to a '
            f'Wave-ViT backbone; its keys start with {sample}. Expected an '
            f'official Wave-ViT ImageNet checkpoint, a file converted by '
            f'tools/model_converters/wavevit2mm.py, or an mmdet/mmseg '
            f'checkpoint of a model with a WaveViT backbone.')
    ignored = ([k for k in checkpoint if k not in WRAPPER_KEYS]
               if isinstance(checkpoint, dict) and not _is_state_dict(
                   checkpoint) else [])
    report = LoadReport(filename, '; '.join(notes), describe_arch(state_dict),
                        len(state_dict), dropped, ignored)
    return state_dict, report


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


def check_fits(state_dict: Dict[str, Tensor], model: nn.Module,
               filename: str) -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly the keys and
    shapes of ``model``'s state dict; the message says which arch the file
    holds and which the model is."""
    own = model.state_dict()
    problems = fit_problems(state_dict, own, 'backbone')
    if not problems:
        return
    file_arch, model_arch = infer_arch(state_dict), infer_arch(own)
    advice = ''
    if file_arch and file_arch != model_arch:
        advice = (f" Set arch='{file_arch}' in the backbone config, or use a "
                  f'{_arch_name(own)} checkpoint.')
    raise CheckpointError(
        f'{filename} does not fit this backbone: the file holds '
        f'{describe_arch(state_dict)} weights, the backbone is '
        f'{describe_arch(own)}; {"; ".join(problems)}. Nothing was loaded.'
        f'{advice}')


def load_pretrained(model: nn.Module, filename: str,
                    prefix: Optional[str] = None,
                    trusted: bool = False) -> LoadReport:
    """Load backbone weights strictly and log a summary.

    Any supported file works (official, converted, whole mmdet/mmseg
    model; ``.pth`` or ``.safetensors``). A missing or mis-shaped weight is
    an error, never a silent fall-back to random initialisation.
    """
    report = _load_strictly(model, filename, prefix, trusted)
    MMLogger.get_current_instance().info(format_summary(report))
    return report


def _load_strictly(model: nn.Module, filename: str,
                   prefix: Optional[str] = None,
                   trusted: bool = False) -> LoadReport:
    state_dict, report = read_backbone_weights(filename, prefix, trusted)
    check_fits(state_dict, model, report.filename)
    model.load_state_dict(state_dict, strict=True)
    return report


# ------------------------------------------------ whole-model checkpoints

def read_model_weights(filename: str) -> Dict[str, Tensor]:
    """The state dict of a whole-model checkpoint (what mmengine's Runner
    saves, for ``tools/test.py`` and ``tools/image_demo.py``), read safely.

    Raises FileNotFoundError or CheckpointError, naming the file, for
    anything that is not a checkpoint of a model.
    """
    filename = str(filename)
    checkpoint = safe_load(filename, trust_hint=MODEL_TRUST_HINT)
    try:
        state_dict, _ = unwrap_state_dict(checkpoint)
    except CheckpointError as error:
        raise CheckpointError(f'{filename} {error}.') from None
    if all(k.startswith(DDP_PREFIX) for k in state_dict):
        state_dict, _ = strip_prefix(state_dict, DDP_PREFIX)
    return state_dict


def _backbone_note(state_dict: Dict[str, Tensor],
                   own: Dict[str, Tensor]) -> str:
    """What the file's backbone is, when the model's is a Wave-ViT."""
    own_backbone, _ = strip_prefix(own, 'backbone.')
    if not any(WAVEVIT_KEY.match(k) for k in own_backbone):
        return ''
    file_backbone, _ = strip_prefix(state_dict, 'backbone.')
    if any(WAVEVIT_KEY.match(k) for k in file_backbone):
        if arch_signature(file_backbone) == arch_signature(own_backbone):
            return ''
        return (f' Its backbone is {describe_arch(file_backbone)}, the '
                f"config's is {describe_arch(own_backbone)}.")
    if file_backbone:
        return (f' Its backbone is not a Wave-ViT (its weights start with '
                f'{", ".join(list(file_backbone)[:2])}).')
    if any(WAVEVIT_KEY.match(k) for k in convert_official(state_dict)[0]):
        return (' It holds backbone weights only: use it as '
                'model.backbone.init_cfg.checkpoint to train from it.')
    return (f' It has no backbone weights at all (its weights start with '
            f'{", ".join(list(state_dict)[:2])}).')


def check_model_fits(state_dict: Dict[str, Tensor], model: nn.Module,
                     filename: str) -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly the keys and
    shapes of ``model`` (unwrapped from DDP or test-time augmentation).

    mmengine loads test and demo checkpoints with ``strict=False``: a file
    of another network only logs warnings and the metrics of a randomly
    initialised model follow. Here that is an error that says what the
    file holds.
    """
    while hasattr(model, 'module') and isinstance(model.module, nn.Module):
        model = model.module
    own = model.state_dict()
    problems = fit_problems(state_dict, own, 'model')
    if not problems:
        return
    raise CheckpointError(
        f'{filename} does not fit the model built from the config: '
        f'{"; ".join(problems)}.{_backbone_note(state_dict, own)} It was not '
        f'used. Pass a checkpoint saved by training this config.')


# ------------------------------------------------------------ conversion

def _save(state_dict: Dict[str, Tensor], path: str, meta: Dict[str, str],
          safetensors: bool) -> None:
    """Write a backbone state dict with safetensors or ``torch.save``."""
    if safetensors:
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise CheckpointError(
                'writing .safetensors needs the safetensors package (pip '
                'install safetensors)') from None
        save_file({k: v.detach().contiguous() for k, v in state_dict.items()},
                  path, metadata=meta)
    else:
        torch.save(dict(state_dict=state_dict, meta=meta), path)


def _refuse_overwrite(dst: str, force: bool) -> None:
    if osp.exists(dst) and not force:
        raise FileExistsError(
            f'{dst} already exists; pass --force (force=True) to overwrite '
            f'it.')


def write_atomically(state_dict: Dict[str, Tensor], dst: str,
                     meta: Dict[str, str],
                     verify: Callable[[str], None] = lambda path: None,
                     force: bool = False) -> None:
    """Write backbone weights to ``dst`` (safetensors if it ends in
    ``.safetensors``) without ever leaving a half-written file.

    The weights go to a temporary file in the same folder, are checked by
    ``verify(tmp_path)``, then moved into place with ``os.replace``; a
    failure at any step leaves ``dst`` as it was and no temporary file.
    """
    _refuse_overwrite(dst, force)
    folder = osp.dirname(osp.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(dst)}.{uuid.uuid4().hex[:8]}.tmp')
    try:
        _save(state_dict, tmp, meta, dst.endswith('.safetensors'))
        verify(tmp)
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def verify_backbone_file(path: str, arch: str) -> None:
    """Load ``path`` strictly into a fresh ``WaveViT(arch)`` and run a
    forward pass; raises CheckpointError if anything is off."""
    model = WaveViT(arch).eval()
    _load_strictly(model, path)
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 64, 64))
    expected = [(1, dim, 64 // 2**(i + 2), 64 // 2**(i + 2))
                for i, dim in enumerate(model.embed_dims)]
    if [tuple(o.shape) for o in outs] != expected or not all(
            torch.isfinite(o).all() for o in outs):
        raise CheckpointError(
            f'{path}: a forward pass of the loaded backbone gave wrong '
            f'shapes or non-finite values.')


def convert_checkpoint(src: str, dst: str, arch: Optional[str] = None,
                       force: bool = False, trusted: bool = False,
                       prefix: Optional[str] = None) -> LoadReport:
    """Write the backbone weights of ``src`` as a backbone-only checkpoint.

    ``src`` is any supported file; ``dst`` ending in ``.safetensors`` is
    written in that format, otherwise with ``torch.save`` as
    ``{'state_dict': ..., 'meta': ...}``. The arch is inferred from the
    weight shapes unless given. The result is verified by a strict load
    into the backbone and a forward pass before it replaces ``dst``.
    """
    src, dst = str(src), str(dst)
    _refuse_overwrite(dst, force)
    state_dict, report = read_backbone_weights(src, prefix, trusted)
    arch = arch or infer_arch(state_dict)
    if arch is None:
        raise CheckpointError(
            f'{src} holds {describe_arch(state_dict)} weights, which match '
            f'no preset ({", ".join(sorted(WaveViT.arch_zoo))}); pass the '
            f'arch explicitly (--arch).')
    check_fits(state_dict, WaveViT(arch), src)
    write_atomically(
        state_dict, dst, dict(arch=arch, converted_from=osp.basename(src)),
        verify=lambda path: verify_backbone_file(path, arch), force=force)
    return report
