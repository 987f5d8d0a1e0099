# The hooks that keep a training run recoverable (wavevit_mm/engine/hooks/),
# shared by every config. Only new names are defined here, so this file
# combines with any mmdet/mmseg base config; a config picks them up with
#
#   default_hooks = {{_base_.safeguard_default_hooks}}
#
# They are default hooks under their own keys, which mmengine merges with a
# derived config's default_hooks: they stay whatever custom_hooks a config
# sets (e.g. custom_hooks = [dict(type='EMAHook')]) and whatever it changes
# in the others (default_hooks = dict(checkpoint=dict(interval=2))). To
# train without one, set its key to None (default_hooks =
# dict(work_dir_lock=None)): SafeguardedRunner drops it and the run says so
# in one log line (mmengine's Runner accepts None only for its own keys).
runner_type = 'SafeguardedRunner'

safeguard_default_hooks = dict(
    # mmengine's Runner adds this one to every run; named here so that the
    # config lists every hook a run uses
    runtime_info=dict(type='RuntimeInfoHook'),
    # Only the type is set: the inherited checkpoint hook keeps its
    # interval, max_keep_ckpts and by_epoch. Its files only ever appear
    # complete, and old ones are deleted once the new one is in place.
    checkpoint=dict(type='AtomicCheckpointHook'),
    # one training run per work dir: a second one is refused, naming the
    # first (pid, host, since when); a killed run's lock is taken over
    work_dir_lock=dict(type='WorkDirLockHook'),
    # a checkpoint to resume from must fit the model exactly; one to
    # fine-tune from (load_from) loads every tensor that fits, reported by
    # module, unless its backbone does not fit or under half of the model
    # would load (mmengine would load any part that fits, with warnings)
    checkpoint_fit=dict(type='CheckpointFitHook'),
    # reseed every epoch from (seed, epoch): a resumed run repeats the
    # uninterrupted one
    epoch_seed=dict(type='EpochSeedHook'),
    # stop at the first non-finite loss; never save non-finite weights
    finite_check=dict(type='FiniteCheckHook'),
    # every segmentation label map exists and has its image's size, checked
    # before training and before testing (detection datasets pass)
    label_map_check=dict(type='LabelMapCheckHook'),
)
