"""How a Wave-ViT is initialised: the official initialisation, and
``init_cfg`` as mmengine defines it, checked when the backbone is built.

An ``init_cfg`` is a dict or a list of dicts. ``Pretrained`` entries load
backbone weights (strictly, :mod:`.pretrained`); the other entries name
one of mmengine's weight initialisers (``Constant``, ``Xavier``,
``Normal``, ``TruncNormal``, ``Uniform``, ``Kaiming``, ``Caffe2Xavier``,
with ``layer`` and ``override``) and are applied by mmengine's
``initialize``, in the order mmengine's ``BaseModule.init_weights`` uses:
the initialisers first, the pretrained weights last. Anything mmengine
would refuse when ``init_weights`` runs (which can be hours later, after
the datasets are loaded) is refused here, when the model is built.
"""
import copy
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmengine.model import PretrainedInit
from mmengine.model.weight_init import constant_init, trunc_normal_init
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import nn

from ..errors import ConfigError

InitCfg = Optional[Union[Dict, List[Dict]]]

#: The arguments of a ``Pretrained`` entry: mmengine's (``checkpoint``,
#: ``prefix``, ``map_location``) and ``trusted`` (see
#: :func:`wavevit_mm.checkpoint.load_checkpoint`).
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location', 'trusted')


def official_init(module: nn.Module) -> None:
    """The official initialisation: truncated-normal Linear weights (std
    0.02), unit LayerNorms, He-normal convolutions (fan out), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_init(m, std=.02, bias=0.)
        elif isinstance(m, nn.LayerNorm):
            constant_init(m, val=1.0, bias=0.)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * \
                m.out_channels // m.groups
            # drawn in NCHW order: the same weights whatever the layout
            drawn = torch.empty(m.weight.shape, dtype=m.weight.dtype,
                                device=m.weight.device)
            nn.init.normal_(drawn, mean=0., std=(2.0 / fan_out)**0.5)
            with torch.no_grad():
                m.weight.copy_(drawn)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_cfg_entries(init_cfg: InitCfg) -> List[Dict]:
    """The entries of an ``init_cfg``: none, one dict, or a list of them."""
    if init_cfg is None:
        return []
    if isinstance(init_cfg, dict):
        return [init_cfg]
    if isinstance(init_cfg, (list, tuple)) and all(
            isinstance(entry, dict) for entry in init_cfg):
        return list(init_cfg)
    raise ConfigError(
        f'init_cfg must be a dict or a list of dicts, as mmengine defines '
        f"it (e.g. dict(type='Pretrained', checkpoint=PATH) or "
        f"[dict(type='Constant', layer='LayerNorm', val=1.0)]), got "
        f'{init_cfg!r}')


def split_init_cfg(init_cfg: InitCfg) -> Tuple[List[Dict], List[Dict]]:
    """The weight initialiser entries and the ``Pretrained`` entries, told
    apart as mmengine's ``BaseModule.init_weights`` does (the type's name
    or class)."""
    entries = init_cfg_entries(init_cfg)
    is_pretrained = [e.get('type') in ('Pretrained', PretrainedInit)
                     for e in entries]
    return ([e for e, p in zip(entries, is_pretrained) if not p],
            [e for e, p in zip(entries, is_pretrained) if p])


def check_init_cfg(init_cfg: InitCfg, module: nn.Module) -> None:
    """Raise ConfigError for an ``init_cfg`` mmengine would refuse for
    ``module``: not a dict or list of dicts, an entry without a known
    ``type``, arguments its initialiser does not take, a ``Pretrained``
    entry without ``checkpoint``, an ``override`` naming no submodule."""
    for entry in init_cfg_entries(init_cfg):
        kind = entry.get('type')
        if kind == 'Pretrained':
            _check_pretrained(entry)
            continue
        if not isinstance(kind, str) or kind not in WEIGHT_INITIALIZERS:
            known = sorted(WEIGHT_INITIALIZERS.module_dict)
            raise ConfigError(
                f'init_cfg entry {entry!r} names no weight initialiser: '
                f'type must be one of {known}')
        arguments = copy.deepcopy(entry)
        override = arguments.pop('override', None)
        _build_initializer(arguments, entry)
        if override is None:
            continue
        arguments.pop('layer', None)
        for item in override if isinstance(override, list) else [override]:
            _check_override(item, arguments, entry, module)


def _check_pretrained(entry: Dict) -> None:
    unknown = sorted(set(entry) - set(PRETRAINED_KEYS))
    if 'checkpoint' not in entry or unknown:
        raise ConfigError(
            f"init_cfg entry {entry!r}: a Pretrained entry needs "
            f"'checkpoint' (a path or URL) and takes only "
            f"{', '.join(PRETRAINED_KEYS[1:])}"
            f"{'; unknown: ' + ', '.join(unknown) if unknown else ''}")


def _build_initializer(arguments: Dict, entry: Dict) -> None:
    try:
        WEIGHT_INITIALIZERS.build(arguments)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(
            f'init_cfg entry {entry!r} cannot be built by mmengine: '
            f'{error}') from None


def _check_override(item, defaults: Dict, entry: Dict,
                    module: nn.Module) -> None:
    if not isinstance(item, dict) or not isinstance(item.get('name'), str):
        raise ConfigError(
            f"init_cfg entry {entry!r}: override must be a dict or a list "
            f"of dicts, each with the 'name' of a submodule, got {item!r}")
    if not hasattr(module, item['name']):
        names = [name for name, _ in module.named_children()]
        raise ConfigError(
            f"init_cfg entry {entry!r}: override names "
            f"{item['name']!r}, which is no submodule of "
            f'{type(module).__name__} (its submodules: {", ".join(names)})')
    arguments = {k: v for k, v in item.items() if k != 'name'}
    if arguments and 'type' not in arguments:
        raise ConfigError(
            f"init_cfg entry {entry!r}: an override with arguments needs "
            f"its own 'type', got {item!r}")
    _build_initializer(arguments or dict(defaults), entry)
