"""Checkpoints of a whole detector or segmentor, for ``tools/test.py`` and
``tools/image_demo.py``: read safely and checked against the model before
use.

mmengine loads test and demo checkpoints with ``strict=False``: a file of
another network only logs warnings and the metrics of a randomly
initialised model follow. Here that is an error that says what the file
holds.
"""
from typing import Dict

from torch import Tensor, nn

from ..checkpoint import (CheckpointError, fit_problems, load_checkpoint,
                          strip_prefix, unwrap_state_dict)
from ..models import WaveViT, convert_official, describe_arch
from ..models.official import arch_signature, has_wavevit_weights


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


def _backbone_note(state_dict: Dict[str, Tensor],
                   own: Dict[str, Tensor]) -> str:
    """What the file's backbone is, when the model's is a Wave-ViT."""
    own_backbone, _ = strip_prefix(own, 'backbone.')
    if not has_wavevit_weights(own_backbone):
        return ''
    file_backbone, _ = strip_prefix(state_dict, 'backbone.')
    zoo = WaveViT.arch_zoo
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


def check_model_fits(state_dict: Dict[str, Tensor], model: nn.Module,
                     filename: str) -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly the keys and
    shapes of ``model`` (unwrapped from DDP or test-time augmentation)."""
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
