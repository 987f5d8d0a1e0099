"""Reseeding at every epoch start, so a run resumed from an epoch checkpoint
repeats the uninterrupted run."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import set_random_seed

from ..loops import mixed_seed


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
