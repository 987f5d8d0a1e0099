"""What mmengine's Runner calls: the safeguard hooks and the optimizer
wrapper behind ``--amp`` on the CPU, and the iteration-based training loop
that resumes exactly (registered on import)."""
from .hooks import (AtomicCheckpointHook, EpochSeedHook, FiniteCheckHook,
                    LabelMapCheckHook, label_map_problems)
from .loops import ResumableInfiniteSampler, ResumableIterBasedTrainLoop
from .optim_wrapper import CPUAutocastOptimWrapper, autocast_module

__all__ = [
    'AtomicCheckpointHook', 'EpochSeedHook', 'FiniteCheckHook',
    'LabelMapCheckHook', 'label_map_problems', 'CPUAutocastOptimWrapper',
    'autocast_module', 'ResumableInfiniteSampler',
    'ResumableIterBasedTrainLoop'
]
