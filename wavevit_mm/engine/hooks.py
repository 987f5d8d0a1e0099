"""Training hooks that keep a run recoverable. The shipped configs name
them (``configs/_base_/safeguards.py``), so ``print(cfg.pretty_text)``
shows every hook a run uses.

* :class:`AtomicCheckpointHook` -- mmengine's CheckpointHook, but a
  checkpoint file (and ``last_checkpoint``) only ever appears complete,
  and older ones are deleted only once the new one is in place, so a
  process killed at any moment, or a full disk, leaves a work dir
  ``--resume`` can continue from.
* :class:`CheckpointFitHook` -- a checkpoint to resume or load from must
  fit the model exactly; mmengine would load the part that fits.
* :class:`WorkDirLockHook` -- one training run per work dir.
* :class:`EpochSeedHook` -- reseeds at every epoch start from (seed, epoch),
  so a run resumed from an epoch checkpoint repeats the uninterrupted run.
* :class:`FiniteCheckHook` -- stops at the first non-finite loss, naming the
  iteration, and refuses to write non-finite weights.
* :class:`LabelMapCheckHook` -- before training or testing, checks that
  every segmentation label map exists and has its image's size.
"""
import datetime
import fcntl
import json
import logging
import os
import os.path as osp
import socket
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import broadcast_object_list, get_world_size, \
    is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import (EpochBasedTrainLoop, find_latest_checkpoint,
                             set_random_seed)
from PIL import Image
from torch import Tensor, nn

from ..checkpoint import (AtomicLocalBackend, CheckpointError, fit_problems,
                          is_temporary, strip_prefix, unwrap_state_dict,
                          write_text_atomically)
from ..errors import DataError, TrainingDivergedError, WorkDirInUseError
from ..models import WaveViT, convert_official, describe_arch
from ..models.official import arch_signature, has_wavevit_weights
from .loops import mixed_seed


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook (same arguments) whose files are never half-written.

    mmengine's hook deletes the oldest checkpoint (``max_keep_ckpts``) or
    the previous best one, then writes the new one in place: killed while
    writing, it leaves a truncated file and, with ``max_keep_ckpts=1``, no
    usable one. Here checkpoints on the local disk are written through
    :class:`~wavevit_mm.checkpoint.AtomicLocalBackend` (a hidden temporary
    file, flushed and renamed), ``last_checkpoint`` is replaced the same
    way once the file it names is in place, and outdated ones are deleted
    only after that. A write the disk refuses (full, a file-size limit,
    read-only) stops the run with a
    :class:`~wavevit_mm.errors.CheckpointWriteError` naming the folder and
    the bytes needed, everything already there left as it was. Other
    storage backends are written as mmengine does.
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
        """Save ``epoch_N``/``iter_N`` as mmengine does, in a safe order:
        the new file, then ``last_checkpoint`` pointing to it (written
        atomically; mmengine truncates and rewrites it in place), then the
        files beyond ``max_keep_ckpts`` are deleted."""
        backend = self._atomic_backend()
        if backend is None:
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = None
        ids = self.keep_ckpt_ids if self.max_keep_ckpts > 0 else None
        # a step is saved again after a new best one: nothing to drop then
        if ids is not None and not (ids and ids[-1] == step):
            if len(ids) == self.max_keep_ckpts:
                outdated = backend.join_path(
                    self.out_dir, self.filename_tmpl.format(ids.popleft()))
            ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta,
            by_epoch=self.by_epoch, backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'),
                              self.last_ckpt)
        if outdated is not None and backend.isfile(outdated):
            backend.remove(outdated)  # waits if a best one is being saved

    def _save_best_checkpoint(self, runner, metrics) -> None:
        backend = self._atomic_backend()
        if backend is None:
            return super()._save_best_checkpoint(runner, metrics)
        with backend.removals_deferred():
            super()._save_best_checkpoint(runner, metrics)


# ----------------------------------------- checkpoints that fit the model

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


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Refuse a checkpoint to resume or load from (``--resume``,
    ``load_from``) that does not fit the model exactly.

    mmengine loads it with ``strict=False``: a file of another arch, head
    or number of classes only logs warnings, and the run trains (or tests)
    a model that is partly the file's and partly random. The check runs on
    the checkpoint mmengine has just read, before any of it reaches the
    model, so the file is not deserialized a second time.
    """

    priority = 'VERY_HIGH'  # before EMAHook and others use the checkpoint

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        filename = _loaded_file(runner)
        try:
            state_dict = unwrap_state_dict(checkpoint)[0]
        except CheckpointError as error:
            raise CheckpointError(f'{filename} {error}.') from None
        check_model_fits(state_dict, runner.model, filename)


def _loaded_file(runner) -> str:
    """The checkpoint the Runner loads: ``load_from``, or with ``resume``
    alone the latest one mmengine finds in the work dir."""
    return (getattr(runner, '_load_from', None)  # no public accessor
            or find_latest_checkpoint(runner.work_dir) or 'The checkpoint')


# ----------------------------------------------------- one run, one work dir

#: The lock file in the work dir: flock()ed by the run training there,
#: holding its pid, host and start time.
LOCK_FILE = 'train.lock'
# Work dirs (real paths) this process holds, with their open lock files
_held_locks: Dict[str, IO[str]] = {}


def _owner_text(owner: Dict[str, Any]) -> str:
    return (f'pid {owner.get("pid", "?")} on host {owner.get("host", "?")}, '
            f'running since {owner.get("since", "?")}')


def lock_work_dir(work_dir: str) -> None:
    """Take the work dir for this process, or raise WorkDirInUseError
    naming the live run that holds it.

    The lock is an ``flock`` on ``work_dir/train.lock``, which the kernel
    releases when its process dies however it dies, so a lock left by a
    killed run is taken over (with a warning naming that run).
    """
    path = osp.realpath(osp.join(work_dir, LOCK_FILE))
    file = _held_locks.get(path)
    if file is None:  # not held by an earlier run of this process
        os.makedirs(osp.dirname(path), exist_ok=True)
        file = open(path, 'a+')
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = _read_owner(file.read())
            file.close()
            raise WorkDirInUseError(
                f'{work_dir} is in use by another training run '
                f'({_owner_text(owner)}; lock file {path}). Two runs in one '
                f'work dir would overwrite each other\'s checkpoints: wait '
                f'for it to end, stop it, or train into another --work-dir.'
            ) from None
        _held_locks[path] = file
    file.seek(0)
    previous = _read_owner(file.read())
    if previous and previous.get('pid') != os.getpid():
        print_log(f'{work_dir}: the training run that used it before '
                  f'({_owner_text(previous)}) ended without releasing it; '
                  f'taking it over.', logger='current',
                  level=logging.WARNING)
    since = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    file.seek(0)
    file.truncate()
    file.write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                               since=since)) + '\n')
    file.flush()


def _read_owner(text: str) -> Dict[str, Any]:
    try:
        owner = json.loads(text)
    except ValueError:  # empty (released) or being written
        return {}
    return owner if isinstance(owner, dict) else {}


def unlock_work_dir(work_dir: str) -> None:
    """Release the work dir taken by :func:`lock_work_dir` (the lock file
    stays, emptied: deleting it could let two runs lock different files)."""
    file = _held_locks.pop(osp.realpath(osp.join(work_dir, LOCK_FILE)), None)
    if file is not None:
        file.truncate(0)
        file.close()  # closing releases the flock


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """Refuse to train in a work dir another live run is training in.

    Two runs in one work dir write the same ``epoch_N.pth`` and
    ``last_checkpoint`` and delete each other's files. Before training
    (after the checkpoint to resume from has been read, before anything is
    written or cleaned up) rank 0 takes the work dir with
    :func:`lock_work_dir`; every rank stops with the same error if it is
    taken. Testing and validating do not lock: they write no checkpoints.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        refusal = [None]
        if is_main_process():
            try:
                lock_work_dir(runner.work_dir)
            except WorkDirInUseError as error:
                refusal = [str(error)]
        if get_world_size() > 1:
            broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise WorkDirInUseError(refusal[0])

    def after_train(self, runner) -> None:
        if is_main_process():
            unlock_work_dir(runner.work_dir)


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
        set_random_seed(mixed_seed(runner.seed, runner.epoch))


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
