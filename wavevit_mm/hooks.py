"""Training hooks that keep a run recoverable; ``tools/train.py`` adds them
to every config (:func:`wavevit_mm.runner.add_safeguards`).

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
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, set_random_seed

from .errors import DataError, TrainingDivergedError

TMP_SUFFIX = '.tmp'


def _fsync(path: str) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(tmp: str, dst: str) -> None:
    """Move the complete file ``tmp`` to ``dst`` in one step, durably."""
    _fsync(tmp)
    os.replace(tmp, dst)
    _fsync(osp.dirname(osp.abspath(dst)))


def write_text_atomically(path: str, text: str) -> None:
    tmp = osp.join(osp.dirname(osp.abspath(path)),
                   f'.{osp.basename(path)}{TMP_SUFFIX}')
    with open(tmp, 'w') as f:
        f.write(text)
    replace_atomically(tmp, path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook (same arguments) whose files are never half-written.

    mmengine's hook deletes the oldest checkpoint (``max_keep_ckpts``), then
    writes the new one in place, then ``last_checkpoint``: killed while
    writing, it leaves a truncated file and, with ``max_keep_ckpts=1``, no
    usable one. Here the checkpoint is written to a hidden temporary file,
    flushed to disk and renamed; ``last_checkpoint`` is replaced the same
    way; only then are outdated checkpoints deleted. Other storage backends
    than the local disk are written as mmengine does.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self._is_local() and is_main_process() and osp.isdir(self.out_dir):
            for name in os.listdir(self.out_dir):  # left by a killed run
                if name.startswith('.') and name.endswith(TMP_SUFFIX):
                    os.remove(osp.join(self.out_dir, name))

    def _is_local(self) -> bool:
        return isinstance(self.file_backend, LocalBackend)

    def _save_checkpoint_with_step(self, runner, step: int,
                                   meta: Dict) -> None:
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = []
        if self.max_keep_ckpts > 0 and (not self.keep_ckpt_ids
                                        or self.keep_ckpt_ids[-1] != step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        tmp_name = f'.{filename}{TMP_SUFFIX}'
        runner.save_checkpoint(
            self.out_dir, tmp_name, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta,
            by_epoch=self.by_epoch, backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        replace_atomically(osp.join(self.out_dir, tmp_name), self.last_ckpt)
        write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'),
                              self.last_ckpt)
        for old_step in outdated:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old_step))
            if osp.isfile(path):
                os.remove(path)


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
    from PIL import Image
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
