# Mask R-CNN + FPN, Wave-ViT-S, 1x schedule (12 epochs), single scale 1333x800.
# Reference (paper): box AP 46.6, mask AP 42.4 with 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './_base_/safeguards.py',
]
custom_imports = dict(imports=['wavevit_mm'], allow_failed_imports=False)

# official ImageNet-1k weights; override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH
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

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))
train_dataloader = dict(batch_size=2)  # x 8 GPUs
auto_scale_lr = dict(base_batch_size=16)

# atomic checkpoints, work-dir lock, checkpoint fit, per-epoch seeds,
# non-finite loss stop, label map check: see _base_/safeguards.py
default_hooks = {{_base_.safeguard_default_hooks}}
