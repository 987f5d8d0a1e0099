# UperNet + auxiliary FCN head, Wave-ViT-S, 512x512 crops, 160k iterations.
# Reference (paper): mIoU 49.6 (single scale) with 8 GPUs x 2 images.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    './_base_/safeguards.py',
]
custom_imports = dict(imports=['wavevit_mm'], allow_failed_imports=False)

crop_size = (512, 512)
pretrained = 'checkpoints/wavevit_s.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='WaveViT',
        arch='s',
        drop_path_rate=0.1,
        # BN scale and shift stay at their ImageNet values (official recipe)
        norm_cfg=dict(type='BN', requires_grad=False),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 320, 448], num_classes=150),
    auxiliary_head=dict(in_channels=320, in_index=2, num_classes=150,
                        loss_decode=dict(loss_weight=0.4)))

# AdamW, no weight decay on norm layers; linear warmup then poly decay
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999),
                   weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.))))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000,
         by_epoch=False),
]
# --resume continues where the checkpoint left off without loading the
# skipped batches; each sample is augmented from its own seed (in whichever
# worker loads it) and each iteration reseeded from (seed, iteration): the
# uninterrupted run's weights exactly
train_cfg = dict(type='ResumableIterBasedTrainLoop')
train_dataloader = dict(
    batch_size=2,  # x 8 GPUs
    sampler=dict(type='ResumableInfiniteSampler'))
auto_scale_lr = dict(enable=False, base_batch_size=16)

# atomic checkpoints, work-dir lock, checkpoint fit, per-epoch seeds,
# non-finite loss stop, label map check: see _base_/safeguards.py
default_hooks = {{_base_.safeguard_default_hooks}}
