"""A stop at the first non-finite loss, naming the iteration, and no
checkpoint with non-finite weights."""
import os.path as osp
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

from ...errors import TrainingDivergedError


def _non_finite_losses(log_vars: Dict[str, Any]) -> Dict[str, float]:
    """The loss terms (not metrics such as ``acc``) that are not finite."""
    bad = {}
    for name, value in log_vars.items():
        if 'loss' not in name:
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            bad[name] = value
    return bad


@HOOKS.register_module()
class FiniteCheckHook(Hook):
    """Stop training at the first iteration whose loss is not finite, and
    never write a checkpoint with non-finite weights.

    The check runs every iteration before any checkpoint hook, so the last
    checkpoint on disk is the last good one. The error names the iteration,
    the loss terms that are not finite and the images of the batch.
    Weights can overflow while the loss that led there is still finite:
    they are checked again before each checkpoint is saved, and the error
    names them instead of saving them.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[Dict] = None,
                         outputs: Optional[Dict] = None) -> None:
        bad = _non_finite_losses(outputs or {})
        if not bad:
            return
        losses = ', '.join(f'{name}={value}' for name, value in bad.items())
        images = _image_paths(data_batch)
        raise TrainingDivergedError(
            f'Training stopped at {_position(runner, batch_idx)}: the loss '
            f'is not finite ({losses}). {_last_checkpoint_note(runner)} '
            f'Lower the learning rate (optim_wrapper.optimizer.lr), clip '
            f'gradients (optim_wrapper.clip_grad=dict(max_norm=...)) or '
            f'check the images of the batch'
            f'{" (" + ", ".join(images) + ")" if images else ""}.')

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        state_dict = checkpoint.get('state_dict', {})
        bad = [name for name, value in state_dict.items()
               if torch.is_tensor(value) and value.is_floating_point()
               and not torch.isfinite(value).all()]
        if bad:
            iteration = checkpoint.get('meta', {}).get('iter')
            raise TrainingDivergedError(
                f'Training stopped at the checkpoint after iteration '
                f'{iteration}: {len(bad)} weights are not finite (e.g. '
                f'{", ".join(bad[:3])}), so they were not saved. '
                f'{_last_checkpoint_note(runner)} Lower the learning rate '
                f'(optim_wrapper.optimizer.lr) or clip gradients '
                f'(optim_wrapper.clip_grad=dict(max_norm=...)).')


def _position(runner, batch_idx: int) -> str:
    """The running iteration, e.g. 'iteration 7 (epoch 2, batch 3)',
    counted from 1 like the logs."""
    where = f'iteration {runner.iter + 1}'
    if isinstance(runner.train_loop, EpochBasedTrainLoop):
        where += f' (epoch {runner.epoch + 1}, batch {batch_idx + 1})'
    return where


def _last_checkpoint_note(runner) -> str:
    path = osp.join(runner.work_dir, 'last_checkpoint')
    if osp.isfile(path):
        with open(path) as f:
            return f'The last checkpoint, {f.read().strip()}, is from before.'
    return 'No checkpoint had been written yet.'


def _image_paths(data_batch: Optional[Dict], limit: int = 4) -> List[str]:
    samples = (data_batch or {}).get('data_samples') or []
    paths = [s.img_path for s in samples if 'img_path' in s]
    return paths[:limit] + (['...'] if len(paths) > limit else [])
