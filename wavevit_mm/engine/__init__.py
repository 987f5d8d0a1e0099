"""What mmengine's Runner calls: the safeguard hooks, the optimizer wrapper
behind ``--amp`` on the CPU, the iteration-based training loop that
resumes exactly, and the Runner that lets a config switch a safeguard off
(registered on import)."""
from .hooks import (AtomicCheckpointHook, CheckpointFitHook, EpochSeedHook,
                    FiniteCheckHook, LabelMapCheckHook, WorkDirLockHook,
                    label_map_problems, lock_work_dir, unlock_work_dir)
from .loops import ResumableInfiniteSampler, ResumableIterBasedTrainLoop
from .optim_wrapper import CPUAutocastOptimWrapper, autocast_module
from .runner import SafeguardedRunner

__all__ = [
    'AtomicCheckpointHook', 'EpochSeedHook', 'FiniteCheckHook',
    'LabelMapCheckHook', 'label_map_problems', 'CPUAutocastOptimWrapper',
    'autocast_module',
    'ResumableInfiniteSampler', 'ResumableIterBasedTrainLoop',
    'CheckpointFitHook', 'WorkDirLockHook',
    'lock_work_dir', 'unlock_work_dir', 'SafeguardedRunner',
]
