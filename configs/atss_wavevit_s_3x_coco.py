# ATSS + FPN, Wave-ViT-S, 3x multi-scale.
# Reference (paper): box AP 50.7 with 8 GPUs x 2 images.
_base_ = [
    'mmdet::atss/atss_r50_fpn_1x_coco.py',
    './_base_/wavevit_3x_coco.py',
    './_base_/safeguards.py',
]
custom_imports = dict(imports=['wavevit_mm'], allow_failed_imports=False)

pretrained = 'checkpoints/wavevit_s.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='WaveViT',
        arch='s',
        drop_path_rate=0.1,
        # BN scale and shift stay at their ImageNet values (official recipe)
        norm_cfg=dict(type='BN', requires_grad=False),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 448]))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    {{_base_.ms_crop_resize_3x}},
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
train_cfg = {{_base_.train_cfg_3x}}
param_scheduler = {{_base_.param_scheduler_3x}}
optim_wrapper = {{_base_.optim_wrapper_3x}}
auto_scale_lr = dict(base_batch_size=16)

# atomic checkpoints, work-dir lock, checkpoint fit, per-epoch seeds,
# non-finite loss stop, label map check: see _base_/safeguards.py
default_hooks = {{_base_.safeguard_default_hooks}}
