"""Registration of the backbone in the installed OpenMMLab model registries.

``import wavevit_mm`` makes ``type='WaveViT'`` buildable from mmdet and
mmseg configs (and mmpretrain's, when it is installed). The hooks and the
optimizer wrapper of :mod:`wavevit_mm.engine` and the checkpoint backend
live in mmengine's root registries, which those packages' registries
inherit from. A package that is
not installed is skipped; one that is installed but broken raises its own
import error instead of being hidden.
"""
import importlib
import importlib.util
from typing import List

from .models import WaveViT

REGISTRY_PACKAGES = ('mmdet', 'mmseg', 'mmpretrain')


def register_backbone() -> List[str]:
    """Register :class:`WaveViT` in every installed package's ``MODELS``.

    Returns the names of the packages it is registered in.
    """
    registered = []
    for package in REGISTRY_PACKAGES:
        if importlib.util.find_spec(package) is None:
            continue
        models = importlib.import_module(f'{package}.registry').MODELS
        if models.module_dict.get(WaveViT.__name__) is not WaveViT:
            models.register_module(module=WaveViT, force=True)
        registered.append(package)
    if not registered:
        raise ImportError(
            'wavevit_mm needs mmdet or mmsegmentation (or mmpretrain) to '
            'register the WaveViT backbone; none of them is installed')
    return registered
