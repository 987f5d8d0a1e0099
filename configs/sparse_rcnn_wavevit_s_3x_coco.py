# Sparse R-CNN (300 proposals) + FPN, Wave-ViT-S, 3x multi-scale with crops.
# Reference (paper): box AP 50.7. The released recipe for this detector keeps
# Sparse R-CNN's own optimiser: AdamW lr 2e-5, weight decay 1e-4, gradient
# clipping at norm 1, with 8 GPUs x 1 image.
_base_ = [
    'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py',  # noqa
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

optim_wrapper = dict(optimizer=dict(lr=2e-5, weight_decay=1e-4),
                     clip_grad=dict(max_norm=1, norm_type=2))
train_dataloader = dict(batch_size=1)  # x 8 GPUs
auto_scale_lr = dict(base_batch_size=8)

# atomic checkpoints, work-dir lock, checkpoint fit, per-epoch seeds,
# non-finite loss stop, label map check: see _base_/safeguards.py
default_hooks = {{_base_.safeguard_default_hooks}}
