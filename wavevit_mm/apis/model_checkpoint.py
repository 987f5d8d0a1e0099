"""Checkpoints of a whole detector or segmentor, for ``tools/test.py`` and
``tools/image_demo.py``: read safely and checked against the model before
use.

mmengine loads test and demo checkpoints with ``strict=False``: a file of
another network only logs warnings and the metrics of a randomly
initialised model follow. Here that is an error that says what the file
holds (:func:`check_model_fits`, the check ``CheckpointFitHook`` applies
to ``load_from`` and ``--resume`` and the backbone loader to pretrained
weights).
"""
from typing import Dict

from torch import Tensor

from ..checkpoint import CheckpointError, load_checkpoint, unwrap_state_dict
from ..models.pretrained import check_fits as check_model_fits

__all__ = ['check_model_fits', 'read_model_weights']


def read_model_weights(filename: str) -> Dict[str, Tensor]:
    """The state dict of a whole-model checkpoint (what mmengine's Runner
    saves), read safely.

    Raises FileNotFoundError or CheckpointError, naming the file, for
    anything that is not a checkpoint of a model.
    """
    filename = str(filename)
    checkpoint = load_checkpoint(filename)
    try:
        return unwrap_state_dict(checkpoint)[0]
    except CheckpointError as error:
        raise CheckpointError(f'{filename} {error}.') from None
