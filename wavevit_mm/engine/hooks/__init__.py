"""Training hooks that keep a run recoverable, one module per concern. The
shipped configs name them (``configs/_base_/safeguards.py``), so
``print(cfg.pretty_text)`` shows every hook a run uses.

* :class:`AtomicCheckpointHook` -- mmengine's CheckpointHook, but a
  checkpoint file (and ``last_checkpoint``) only ever appears complete,
  and older ones are deleted only once the new one is in place.
* :class:`CheckpointFitHook` -- a checkpoint to resume from must fit the
  model exactly; one to fine-tune from (``load_from``) loads what fits,
  reported by module, unless its backbone does not fit or under half of
  the model would load; mmengine would load any part that fits.
* :class:`WorkDirLockHook` -- one training run per work dir.
* :class:`EpochSeedHook` -- reseeds at every epoch start from (seed, epoch),
  so a run resumed from an epoch checkpoint repeats the uninterrupted run.
* :class:`FiniteCheckHook` -- stops at the first non-finite loss, naming the
  iteration, and refuses to write non-finite weights.
* :class:`LabelMapCheckHook` -- before training or testing, checks that
  every segmentation label map exists and has its image's size.
"""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .checkpoint_fit_hook import CheckpointFitHook
from .epoch_seed_hook import EpochSeedHook
from .finite_check_hook import FiniteCheckHook
from .label_map_check_hook import LabelMapCheckHook, label_map_problems
from .work_dir_lock_hook import WorkDirLockHook, lock_work_dir, \
    unlock_work_dir

__all__ = [
    'AtomicCheckpointHook', 'CheckpointFitHook', 'EpochSeedHook',
    'FiniteCheckHook', 'LabelMapCheckHook', 'label_map_problems',
    'WorkDirLockHook', 'lock_work_dir', 'unlock_work_dir'
]
