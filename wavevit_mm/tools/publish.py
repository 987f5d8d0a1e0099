"""Publishing a trained checkpoint, as mmdet's and mmseg's
``tools/model_converters/publish_model.py`` do: only the weights and the
meta (config, classes, epoch) are kept, and the first 8 hex digits of the
file's sha256 are added to its name.

What is dropped (optimizer state, the message hub with mmengine's
``HistoryBuffer`` logs, parameter schedulers) is also what keeps torch's
weights-only loading, the default since torch 2.6, from reading a
checkpoint in a process that has not imported ``wavevit_mm``: a published
file holds tensors and plain Python values only, so any weights-only
reader (mmdet's ``DetInferencer(weights=...)`` without a config, plain
``torch.load``) reads it.
"""
import hashlib
import io
from typing import Any, Dict, List, NamedTuple

import numpy as np
import torch

from ..checkpoint import (CheckpointError, atomic_write, load_checkpoint,
                          save_weights)

#: The entries a published checkpoint keeps (mmdet's ``--save-keys``
#: default).
PUBLISHED_KEYS = ('meta', 'state_dict')
#: Values a published checkpoint holds besides tensors and containers.
PLAIN_TYPES = (str, int, float, bool, bytes, type(None))


class Published(NamedTuple):
    path: str
    sha256: str
    dropped: List[str]


def plain_values(value: Any, where: str = 'meta') -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers
    and lists; CheckpointError naming the entry for anything else that is
    not a tensor, a plain value or a container of them."""
    if isinstance(value, (np.generic, np.ndarray)):  # np.float64 is a float
        return value.tolist()
    if isinstance(value, (torch.Tensor, ) + PLAIN_TYPES):
        return value
    if isinstance(value, dict):
        return type(value)((key, plain_values(item, f'{where}.{key}'))
                           for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain_values(item, f'{where}[{index}]')
                           for index, item in enumerate(value))
    raise CheckpointError(
        f'{where} holds a {type(value).__module__}.{type(value).__name__}, '
        f'which a weights-only reader refuses; a published checkpoint holds '
        f'tensors and plain values only.')


def published_name(out: str, sha256: str) -> str:
    """mmdet's naming: ``OUT`` without ``.pth``, ``-`` and 8 hex digits of
    the sha256, ``.pth``."""
    stem = out[:-len('.pth')] if out.endswith('.pth') else out
    return f'{stem}-{sha256[:8]}.pth'


def publish_checkpoint(src: str, out: str, force: bool = False
                       ) -> Published:
    """Write the weights and meta of the checkpoint ``src`` to
    ``OUT-<sha256[:8]>.pth`` (see :func:`published_name`).

    ``src`` is read as every checkpoint is (weights-only, CRC-checked). The
    file is written atomically; an existing file of that name is replaced
    only with ``force``, else FileExistsError (checked when the file is
    moved into place, so a file that appears meanwhile is kept).
    """
    src, out = str(src), str(out)
    checkpoint = load_checkpoint(src)
    if not isinstance(checkpoint, dict) or not isinstance(
            checkpoint.get('state_dict'), dict):
        raise CheckpointError(
            f'{src} is not a checkpoint saved by a training run (no '
            f"'state_dict' entry): there is nothing to publish.")
    dropped = [key for key in checkpoint if key not in PUBLISHED_KEYS]
    meta: Dict[str, Any] = plain_values(checkpoint.get('meta') or {})
    buffer = io.BytesIO()
    save_weights(checkpoint['state_dict'], buffer, meta)
    data = buffer.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    path = published_name(out, sha256)
    with atomic_write(path, len(data), replace=force) as tmp:
        with open(tmp, 'wb') as file:
            file.write(data)
    return Published(path, sha256, dropped)
