"""Backbone weights from checkpoint files, loaded strictly.

Three kinds of files hold Wave-ViT backbone weights:

* official ImageNet classification checkpoints, renamed on the fly
  (:mod:`.official`);
* backbone-only files written by the converter
  (``tools/model_converters/wavevit2mm.py``), ``.pth`` or ``.safetensors``;
* mmdet / mmseg checkpoints of a whole model saved by mmengine's Runner,
  whose backbone keys start with ``backbone.``.

Loading is strict: a missing or mis-shaped backbone weight is an error that
says which arch the file holds, never a silent fall-back to random
initialisation. The same check (:func:`check_fits`) refuses a checkpoint
of a whole model that does not fit the model built from a config;
:func:`fit_for_fine_tuning` takes what fits of a checkpoint to fine-tune
a whole model from (``load_from``, or the whole model's ``init_cfg``),
within limits. :func:`read_model_weights` reads the checkpoint of a whole
model (for ``tools/test.py``, the demo, the export). Files are read by
:func:`wavevit_mm.checkpoint.load_checkpoint` (local, URL or other
storage; weights-only).
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from mmengine.model import BaseTTAModel, is_model_wrapper
from torch import Tensor, nn

from ..checkpoint import (CheckpointError, fit_problems, is_state_dict,
                          load_checkpoint, strip_prefix, unwrap_state_dict)
from ..checkpoint.state_dict import (WRAPPER_KEYS, PartialFit, partial_fit,
                                     skipped_by_module)
from .official import (arch_name, arch_signature, convert_official,
                       convert_official_classifier, describe_arch,
                       entry_label, has_wavevit_weights, infer_arch,
                       is_classifier, is_official)

TRUST_HINT = (
    "If you trust the file's origin (e.g. a legacy checkpoint you saved "
    "yourself), load it with init_cfg=dict(type='Pretrained', "
    "checkpoint=..., trusted=True), or convert it once with "
    "tools/model_converters/wavevit2mm.py --trusted and use the converted "
    "file.")
OUTSIDE_BACKBONE = 'entries outside the backbone'


@dataclass
class LoadReport:
    """Where backbone weights came from and what was left out."""

    filename: str
    source: str
    arch: str
    num_tensors: int
    dropped: Dict[str, List[str]] = field(default_factory=dict)
    ignored_entries: List[str] = field(default_factory=list)


def format_summary(report: LoadReport) -> str:
    """One readable summary of a load, a few lines."""
    lines = [f'{report.arch} backbone weights from {report.filename} '
             f'({report.source}): {report.num_tensors} tensors.']
    for reason, keys in report.dropped.items():
        if keys:
            counts = Counter(map(entry_label, keys))
            groups = ', '.join(f'{label} ({n})' for label, n in counts.items())
            lines.append(f'  dropped {len(keys)} {reason}: {groups}')
    if report.ignored_entries:
        lines.append('  not used: file entries ' + ', '.join(
            repr(k) for k in report.ignored_entries))
    return '\n'.join(lines)


def extract_backbone(checkpoint: Any, prefix: Optional[str] = None,
                     filename: str = 'The checkpoint'
                     ) -> Tuple[Dict[str, Tensor], List[str], List[str]]:
    """The backbone state dict inside a loaded checkpoint, keys unchanged.

    Unwraps ``{'state_dict': ...}`` / ``{'model': ...}`` and
    DistributedDataParallel's ``module.``, and strips the ``backbone.``
    prefix of a whole detector when given (or when any key has it).
    Returns the state dict, notes on where it was found, and the keys
    outside the backbone. Raises CheckpointError naming ``filename`` when
    it holds no state dict.
    """
    state_dict, entry = unwrap_state_dict(checkpoint, filename)
    notes = [f'{entry!r} entry' if entry else 'bare state dict']
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    outside: List[str] = []
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict, outside = strip_prefix(state_dict, prefix)
        notes.append(f'weights under {prefix!r}')
    return state_dict, notes, outside


def read_backbone_weights(filename: str, arch_zoo: Dict[str, Dict],
                          prefix: Optional[str] = None,
                          trusted: bool = False
                          ) -> Tuple[Dict[str, Tensor], LoadReport]:
    """Backbone state dict (this package's key names) from any supported
    checkpoint file, and a report of what was converted and dropped;
    ``arch_zoo`` (``WaveViT.arch_zoo``) names the arch in the report.

    Raises CheckpointError naming the file when it holds no Wave-ViT
    backbone.
    """
    filename = str(filename)
    checkpoint = load_checkpoint(filename, trusted=trusted,
                                 trust_hint=TRUST_HINT)
    state_dict, notes, outside = extract_backbone(checkpoint, prefix,
                                                  filename)
    dropped: Dict[str, List[str]] = {}
    if outside:
        dropped[OUTSIDE_BACKBONE] = outside
    if is_official(state_dict):
        state_dict, official_dropped = convert_official(state_dict)
        dropped.update(official_dropped)
        notes.insert(0, 'official ImageNet classification checkpoint, '
                        'converted on the fly')
    if not has_wavevit_weights(state_dict):
        sample = ', '.join(list(state_dict)[:3]) or '(no tensors)'
        raise CheckpointError(
            f'{filename} is not a Wave-ViT checkpoint: none of its '
            f'{len(state_dict)} tensors ({"; ".join(notes)}) belongs to a '
            f'Wave-ViT backbone; its keys start with {sample}. Expected an '
            f'official Wave-ViT ImageNet checkpoint, a file converted by '
            f'tools/model_converters/wavevit2mm.py, or an mmdet/mmseg '
            f'checkpoint of a model with a WaveViT backbone.')
    ignored = ([k for k in checkpoint if k not in WRAPPER_KEYS]
               if isinstance(checkpoint, dict) and not is_state_dict(
                   checkpoint) else [])
    report = LoadReport(filename, '; '.join(notes),
                        describe_arch(state_dict, arch_zoo), len(state_dict),
                        dropped, ignored)
    return state_dict, report


def in_model_layout(state_dict: Dict[str, Tensor],
                    own: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state_dict`` renamed to the keys of a whole Wave-ViT classifier
    (``own``: its state dict) when it is an official checkpoint's;
    unchanged otherwise."""
    if is_official(state_dict) and is_classifier(own):
        return convert_official_classifier(state_dict)
    return state_dict


def bare_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or other) wrapper or a test-time
    augmentation model, as mmengine's ``load_state_dict`` unwraps it."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def check_fits(state_dict: Dict[str, Tensor], model: nn.Module,
               filename: str) -> None:
    """Raise CheckpointError unless ``state_dict`` loads strictly into
    ``model``, and say what the file holds.

    ``model`` is a Wave-ViT backbone (pretrained weights: the message names
    the arch of the file and of the backbone) or a whole detector or
    segmentor, unwrapped here from DDP or test-time augmentation
    (``load_from``, ``--resume``, ``tools/test.py``: the message says what
    backbone the file has, if any). mmengine would load a test or demo
    checkpoint with ``strict=False``, and evaluate a model that is partly
    random.
    """
    model = bare_model(model)
    own = model.state_dict()
    state_dict = in_model_layout(state_dict, own)
    zoo = getattr(model, 'arch_zoo', None)  # set on a Wave-ViT backbone
    problems = fit_problems(state_dict, own,
                            'model' if zoo is None else 'backbone')
    if not problems:
        return
    if zoo is None:
        note = _backbone_note(state_dict, own, model)
        raise CheckpointError(
            f'{filename} does not fit the model built from the config: '
            f'{"; ".join(problems)}.{note} It was not used. Pass a '
            f'checkpoint saved by training this config.')
    file_arch, model_arch = infer_arch(state_dict, zoo), infer_arch(own, zoo)
    advice = ''
    if file_arch and file_arch != model_arch:
        advice = (f" Set arch='{file_arch}' in the backbone config, or use a "
                  f'{arch_name(own, zoo)} checkpoint.')
    raise CheckpointError(
        f'{filename} does not fit this backbone: the file holds '
        f'{describe_arch(state_dict, zoo)} weights, the backbone is '
        f'{describe_arch(own, zoo)}; {"; ".join(problems)}. Nothing was '
        f'loaded.{advice}')


def _backbone_note(state_dict: Dict[str, Tensor], own: Dict[str, Tensor],
                   model: nn.Module) -> str:
    """What the file's backbone is, when the backbone of ``model`` (with
    state dict ``own``) is a Wave-ViT and the file's differs."""
    zoo = getattr(getattr(model, 'backbone', None), 'arch_zoo', None)
    own_backbone, _ = strip_prefix(own, 'backbone.')
    if zoo is None or not has_wavevit_weights(own_backbone):
        return ''
    file_backbone, _ = strip_prefix(state_dict, 'backbone.')
    if has_wavevit_weights(file_backbone):
        if arch_signature(file_backbone) == arch_signature(own_backbone):
            return ''
        return (f' Its backbone is {describe_arch(file_backbone, zoo)}, the '
                f"config's is {describe_arch(own_backbone, zoo)}.")
    if file_backbone:
        return (f' Its backbone is not a Wave-ViT (its weights start with '
                f'{", ".join(list(file_backbone)[:2])}).')
    if has_wavevit_weights(convert_official(state_dict)[0]):
        return (' It holds backbone weights only: use it as '
                'model.backbone.init_cfg.checkpoint to train from it.')
    return (f' It has no backbone weights at all (its weights start with '
            f'{", ".join(list(state_dict)[:2])}).')


#: ``load_from`` of a training run (or the whole model's ``init_cfg``)
#: starts from a checkpoint of another model only when at least this share
#: of the model's weights (elements) has a tensor of the same name and
#: shape in the file. Fine-tuning a detector on other classes replaces its
#: class-specific layers only (for COCO's 80 classes 5.6% of RetinaNet-S's
#: weights, 1.1% of Mask R-CNN-S's; 1.0% of the 3-class toy RetinaNet's):
#: under half, most of the model would start from scratch, and the file is
#: a checkpoint of another model family.
MIN_FINE_TUNING_SHARE = 0.5


class FineTuningStart(NamedTuple):
    """What :func:`fit_for_fine_tuning` loads into a model."""
    weights: Dict[str, Tensor]
    fit: PartialFit
    #: one line per module not loaded (:func:`skipped_by_module`)
    skipped: List[str]


def fit_for_fine_tuning(state_dict: Dict[str, Tensor], model: nn.Module,
                        filename: str) -> FineTuningStart:
    """The state dict to load into ``model`` (a whole detector or
    segmentor) to fine-tune it from ``state_dict``: the file's tensors
    where name and shape fit, the model's own (as its config initialised
    them) elsewhere, with one line per module that is not loaded.

    Raises CheckpointError, and nothing is loaded, when the backbone does
    not fit exactly or when less than :data:`MIN_FINE_TUNING_SHARE` of the
    model's weights would come from the file.
    """
    model = bare_model(model)
    own = model.state_dict()
    state_dict = in_model_layout(state_dict, own)
    if isinstance(getattr(model, 'backbone', None), nn.Module):
        problems = fit_problems(strip_prefix(state_dict, 'backbone.')[0],
                                strip_prefix(own, 'backbone.')[0],
                                'backbone')
        if problems:
            raise CheckpointError(
                f'{filename} does not fit the backbone built from the '
                f'config: {"; ".join(problems)}.'
                f'{_backbone_note(state_dict, own, model)} Nothing was '
                f'loaded: fine-tuning starts from a checkpoint with the same '
                f'backbone.')
    fit = partial_fit(state_dict, own)
    if fit.loaded_share < MIN_FINE_TUNING_SHARE:
        raise CheckpointError(
            f'{filename} cannot start this model: only '
            f'{fit.loaded_share:.0%} of its weights ({len(fit.loaded)} of '
            f'{len(own)} tensors) have a tensor of that name and shape in '
            f'the file, under the {MIN_FINE_TUNING_SHARE:.0%} that a '
            f'checkpoint to fine-tune from shares with the model (a '
            f'detector of the same config on other classes differs in its '
            f'class-specific layers only, a few percent): it is a '
            f'checkpoint of another model. Nothing was loaded. To start '
            f'from backbone weights alone, use '
            f'model.backbone.init_cfg.checkpoint.')
    loaded = set(fit.loaded)
    weights = {key: state_dict[key] if key in loaded else value
               for key, value in own.items()}
    return FineTuningStart(weights, fit,
                           skipped_by_module(fit, state_dict, own))


def read_model_weights(filename: str, prefix: Optional[str] = None,
                       trusted: bool = False, map_location: Any = 'cpu'
                       ) -> Tuple[Dict[str, Tensor], Any]:
    """The state dict of a whole-model checkpoint, the part under
    ``prefix`` (without it) when given, as mmengine's ``PretrainedInit``
    takes it; and the file's ``meta`` entry (None if it has none).

    Raises CheckpointError naming the file when it holds no state dict or
    nothing under ``prefix``.
    """
    filename = str(filename)
    checkpoint = load_checkpoint(filename, trusted=trusted,
                                 map_location=map_location)
    state_dict, _ = unwrap_state_dict(checkpoint, filename)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict, _ = strip_prefix(state_dict, prefix)
        if not state_dict:
            raise CheckpointError(
                f'{filename} has no weights under the prefix {prefix!r} '
                f'the init_cfg names.')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return state_dict, meta


def load_pretrained(model: nn.Module, filename: str,
                    prefix: Optional[str] = None,
                    trusted: bool = False) -> LoadReport:
    """Load backbone weights into ``model`` (a WaveViT) all or nothing, from
    any supported file (official, converted, whole mmdet/mmseg model;
    ``.pth`` or ``.safetensors``; a path or a URL); returns what was read
    and dropped (:func:`format_summary` says it). A missing or mis-shaped
    weight is an error, never a silent fall-back to random initialisation.
    """
    state_dict, report = read_backbone_weights(
        filename, type(model).arch_zoo, prefix, trusted)
    check_fits(state_dict, model, report.filename)
    model.load_state_dict(state_dict, strict=True)
    return report
