"""Training hooks that keep a run recoverable, one module per concern;
each hook's docstring says what it guards against. The shipped configs
name them (``configs/_base_/safeguards.py``), so ``print(cfg.pretty_text)``
shows every hook a run uses."""
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
