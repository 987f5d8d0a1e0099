"""Training hooks that keep a run recoverable. The shipped configs name
them (``configs/_base_/safeguards.py``), so ``print(cfg.pretty_text)``
shows every hook a run uses.

* :class:`AtomicCheckpointHook` -- mmengine's CheckpointHook, but a
  checkpoint file only ever appears complete, and older ones are deleted
  only once the new one is in place, so a process killed at any moment
  leaves a work dir ``--resume`` can continue from.
* :class:`EpochSeedHook` -- reseeds at every epoch start from (seed, epoch),
  so a run resumed from an epoch checkpoint repeats the uninterrupted run.
* :class:`FiniteCheckHook` -- stops at the first non-finite loss, naming the
  iteration, and refuses to write non-finite weights.
* :class:`LabelMapCheckHook` -- before training or testing, checks that
  every segmentation label map exists and has its image's size.
"""
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, set_random_seed
from PIL import Image

from ..checkpoint import AtomicLocalBackend, is_temporary
from ..errors import DataError, TrainingDivergedError


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook (same arguments) whose files are never half-written.

    mmengine's hook deletes the oldest checkpoint (``max_keep_ckpts``) or
    the previous best one, then writes the new one in place: killed while
    writing, it leaves a truncated file and, with ``max_keep_ckpts=1``, no
    usable one. Here checkpoints on the local disk are written through
    :class:`~wavevit_mm.checkpoint.AtomicLocalBackend` (a hidden temporary
    file, flushed and renamed), and outdated ones are deleted only after
    the new one is in place. Other storage backends are written as
    mmengine does.
    """

    def __init__(self, *args, out_dir: Optional[str] = None,
                 backend_args: Optional[dict] = None,
                 file_client_args: Optional[dict] = None, **kwargs) -> None:
        local = (backend_args is None and file_client_args is None
                 and (out_dir is None or '://' not in str(out_dir)))
        if local:
            backend_args = dict(backend='atomic_local')
        super().__init__(*args, out_dir=out_dir, backend_args=backend_args,
                         file_client_args=file_client_args, **kwargs)

    def _atomic_backend(self) -> Optional[AtomicLocalBackend]:
        backend = getattr(self, 'file_backend', None)
        return backend if isinstance(backend, AtomicLocalBackend) else None

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self._atomic_backend() and is_main_process() and \
                osp.isdir(self.out_dir):
            for name in os.listdir(self.out_dir):  # left by a killed run
                if is_temporary(name):
                    os.remove(osp.join(self.out_dir, name))

    def _save_checkpoint_with_step(self, runner, step: int,
                                   meta: Dict) -> None:
        backend = self._atomic_backend()
        if backend is None:
            return super()._save_checkpoint_with_step(runner, step, meta)
        with backend.removals_deferred():
            super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        backend = self._atomic_backend()
        if backend is None:
            return super()._save_best_checkpoint(runner, metrics)
        with backend.removals_deferred():
            super()._save_best_checkpoint(runner, metrics)


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Reseed Python, NumPy and torch at the start of every epoch from the
    run's seed and the epoch number.

    mmengine seeds once per process and does not store generator states in
    checkpoints, so after ``--resume`` the augmentations and the sampling of
    proposals differ from the uninterrupted run. Seeding each epoch from
    (seed, epoch) makes an epoch's random draws independent of what ran
    before it: resumed from an epoch checkpoint, a run with
    ``num_workers=0`` (or workers that are not persistent) repeats the
    uninterrupted one exactly. The seed is the run's (stored in checkpoints,
    restored on resume), mixed with the epoch so the global generators do
    not replay the sampler's shuffling order (which uses seed + epoch).
    """

    priority = 'NORMAL'

    def before_train_epoch(self, runner) -> None:
        mixed = np.random.SeedSequence([runner.seed, runner.epoch])
        set_random_seed(int(mixed.generate_state(1)[0]))


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


# ------------------------------------------------------------ label maps

def _leaf_datasets(dataset) -> Iterator[Any]:
    """The datasets inside Concat/Repeat/ClassBalanced wrappers."""
    if hasattr(dataset, 'datasets'):
        for inner in dataset.datasets:
            yield from _leaf_datasets(inner)
    elif hasattr(dataset, 'dataset'):
        yield from _leaf_datasets(dataset.dataset)
    else:
        yield dataset


def label_map_problems(dataset, limit: int = 3) -> List[str]:
    """Label maps of a segmentation dataset that are missing or whose size
    differs from their image's, as sentences (at most ``limit``).

    Only the image headers are read. Datasets without label maps (or on
    storage other than the local disk) give none.
    """
    problems: List[str] = []
    for leaf in _leaf_datasets(dataset):
        if not hasattr(leaf, 'get_data_info'):
            continue
        for index in range(len(leaf)):
            info = leaf.get_data_info(index)
            label, image = info.get('seg_map_path'), info.get('img_path')
            if not (isinstance(label, str) and isinstance(image, str)) or \
                    '://' in label:
                break
            if not osp.isfile(label):
                problems.append(f'label map {label} of {image} does not '
                                f'exist')
            else:
                with Image.open(image) as img, Image.open(label) as seg:
                    if img.size != seg.size:
                        problems.append(
                            f'label map {label} is {seg.size[1]}x'
                            f'{seg.size[0]} but its image {image} is '
                            f'{img.size[1]}x{img.size[0]} (HxW)')
            if len(problems) >= limit:
                return problems
    return problems


@HOOKS.register_module()
class LabelMapCheckHook(Hook):
    """Check every label map of the segmentation datasets before training
    (train and val sets) or testing, instead of failing mid-run with
    ``stack expects each tensor to be equal size`` or an IoU shape error.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        self._check(runner, 'train_dataloader', runner.train_dataloader)
        if runner.val_loop is not None:
            self._check(runner, 'val_dataloader', runner.val_dataloader)

    def before_test(self, runner) -> None:
        self._check(runner, 'test_dataloader', runner.test_dataloader)

    @staticmethod
    def _check(runner, name: str, dataloader: Sequence) -> None:
        problems = label_map_problems(dataloader.dataset)
        if problems:
            raise DataError(
                f'{name}.dataset: {"; ".join(problems)}. Every label map '
                f'must have the size of its image (label maps are resized '
                f'with their image, so a mismatch misplaces every label).')
