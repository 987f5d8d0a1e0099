# Cascade Mask R-CNN + FPN (4conv1fc heads, GIoU), Wave-ViT-S, 3x multi-scale.
# Reference (paper): box AP 52.1 with 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
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
    neck=dict(in_channels=[64, 128, 320, 448]),
    roi_head=dict(bbox_head=[
        dict(type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1,
             in_channels=256, conv_out_channels=256, fc_out_channels=1024,
             roi_feat_size=7, num_classes=80, reg_class_agnostic=False,
             reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
             bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                             target_means=[0., 0., 0., 0.], target_stds=stds),
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False,
                           loss_weight=1.0),
             loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                     [0.033, 0.033, 0.067, 0.067])
    ]))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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
