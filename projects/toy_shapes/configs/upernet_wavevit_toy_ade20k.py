# The shipped UperNet config on the toy ADE20K set: a small Wave-ViT trained
# from scratch on 128x128 images. The toy label maps use four of ADE20K's
# classes (wall = background, ball = circle, box = square, tent = triangle);
# ADE20KDataset maps them to 0-3 as it does for any class subset.
_base_ = ['../../../configs/upernet_wavevit_s_ade20k.py']

data_root = 'data/toy_ade20k/'
metainfo = dict(classes=('wall', 'ball', 'box', 'tent'),
                palette=[[120, 120, 120], [220, 60, 50], [60, 190, 70],
                         [50, 90, 220]])
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN in the real config

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, stem_width=16, embed_dims=[32, 64, 128, 160],
                  num_heads=[1, 2, 4, 5], mlp_ratios=[4, 4, 4, 4],
                  depths=[1, 1, 2, 1], sr_ratios=[4, 2, 1, 1]),
        drop_path_rate=0.0,
        init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 128, 160], channels=64,
                     num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=4,
                        norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.5),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters,
         by_epoch=False),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=max_iters // 2, max_keep_ckpts=2))
