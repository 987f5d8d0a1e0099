"""Where ``type='WaveViT'`` and the classifier are registered.

:class:`~wavevit_mm.models.WaveViT` is registered in mmengine's root
``MODELS`` (``@MODELS.register_module()`` on the class), as are the hooks,
the optimizer wrapper and the checkpoint backend in mmengine's other root
registries. mmdet's, mmseg's and mmpretrain's registries search their
parent, the root, for a type they do not hold, so ``import wavevit_mm``
(configs do it through ``custom_imports``) makes the backbone buildable
from all of them without importing any of them.

The classifier (``WaveViTClassifier``, ``WaveViTClsHead``) extends
mmpretrain's classes and lives in its registry; it is imported when
mmpretrain is installed. An installed mmpretrain that does not import
(e.g. beside a torchvision built for another torch) is skipped with one
warning that names it and its error, so it never takes the detection and
segmentation users down.
"""
import importlib
import importlib.util
import warnings


def register_classifier() -> bool:
    """Register the mmpretrain classifier if mmpretrain can be used.

    Returns whether it is registered.
    """
    if importlib.util.find_spec('mmpretrain') is None:
        return False
    try:
        importlib.import_module('wavevit_mm.models.classification')
    except Exception as error:  # any failure of a third-party import
        warnings.warn(
            f'wavevit_mm: the WaveViT classifier is not registered for '
            f'mmpretrain ({type(error).__name__}: {error}): mmpretrain is '
            f'installed but cannot be imported. Fix or uninstall it to '
            f'classify with Wave-ViT; the backbone is registered for every '
            f'package either way.', stacklevel=2)
        return False
    return True
