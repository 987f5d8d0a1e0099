# The hooks that keep a training run recoverable, shared by every config;
# each is described in its class docstring (wavevit_mm/engine/hooks/). Only new names are defined here, so this file
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
    # interval, max_keep_ckpts and by_epoch.
    checkpoint=dict(type='AtomicCheckpointHook'),
    work_dir_lock=dict(type='WorkDirLockHook'),
    checkpoint_fit=dict(type='CheckpointFitHook'),
    epoch_seed=dict(type='EpochSeedHook'),
    finite_check=dict(type='FiniteCheckHook'),
    label_map_check=dict(type='LabelMapCheckHook'),
)
