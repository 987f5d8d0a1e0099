"""Registration of the backbone in the installed OpenMMLab model registries.

``import wavevit_mm`` makes ``type='WaveViT'`` buildable from mmdet and
mmseg configs (and mmpretrain's, when it is installed, with the classifier
``WaveViTClassifier`` and its head ``WaveViTClsHead``). The hooks and the
optimizer wrapper of :mod:`wavevit_mm.engine` and the checkpoint backend
live in mmengine's root registries, which those packages' registries
inherit from.

Each of the packages is optional: one that is not installed is skipped
silently, one that is installed but does not import (e.g. mmpretrain
beside a torchvision built for another torch) is skipped with one warning
that names it and its error, so it never takes the others' users down.
Only when none of them can be used is the import an error.
"""
import importlib
import importlib.util
import warnings
from typing import Dict, List

from .models import WaveViT

REGISTRY_PACKAGES = ('mmdet', 'mmseg', 'mmpretrain')


def register_backbone() -> List[str]:
    """Register :class:`WaveViT` in every usable package's ``MODELS``.

    Returns the names of the packages it is registered in.
    """
    registered: List[str] = []
    broken: Dict[str, str] = {}
    for package in REGISTRY_PACKAGES:
        if importlib.util.find_spec(package) is None:
            continue
        try:
            models = importlib.import_module(f'{package}.registry').MODELS
            if package == 'mmpretrain':  # the classifier needs mmpretrain
                importlib.import_module('wavevit_mm.models.classification')
        except Exception as error:  # any failure of a third-party import
            broken[package] = f'{type(error).__name__}: {error}'
            continue
        if models.module_dict.get(WaveViT.__name__) is not WaveViT:
            models.register_module(module=WaveViT, force=True)
        registered.append(package)
    reasons = '; '.join(f'{name} ({error})' for name, error in broken.items())
    if not registered:
        found = (f'none of them imports: {reasons}' if broken
                 else 'none of them is installed')
        raise ImportError(
            f'wavevit_mm needs mmdet or mmsegmentation (or mmpretrain) to '
            f'register the WaveViT backbone; {found}')
    if broken:
        warnings.warn(
            f'wavevit_mm: WaveViT is registered for '
            f'{" and ".join(registered)}, but not for {reasons}: '
            f'{"it is" if len(broken) == 1 else "they are"} installed but '
            f'cannot be imported. Fix or uninstall '
            f'{" and ".join(broken)} to use WaveViT there.', stacklevel=2)
    return registered
