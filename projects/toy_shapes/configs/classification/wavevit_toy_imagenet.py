# The shipped Wave-ViT-S classification config on the toy ImageNet-folder
# set (toy_shapes.py --format imagenet): a small Wave-ViT fine-tuned from an
# official-format checkpoint (load_from) on 64x64 crops of 72x72 images,
# three classes. The official evaluation transform scaled to 64 (shorter
# side int(64 / 0.96) = 66, centre crop 64).
_base_ = ['../../../../configs/classification/wavevit_s_in1k.py']

data_root = 'data/toy_imagenet/'
metainfo = dict(classes=('circle', 'square', 'triangle'))

model = dict(
    data_preprocessor=dict(num_classes=3),
    backbone=dict(
        arch=dict(_delete_=True, stem_width=16, embed_dims=[32, 64, 128, 160],
                  num_heads=[1, 2, 4, 5], mlp_ratios=[4, 4, 4, 4],
                  depths=[1, 1, 2, 1], sr_ratios=[4, 2, 1, 1]),
        drop_path_rate=0.0),
    head=dict(num_classes=3, in_channels=160, num_heads=5),
    train_cfg=dict(_delete_=True))  # no mixup or cutmix on 3 classes

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.5, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=66, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='train', metainfo=metainfo,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='val', metainfo=metainfo,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

max_epochs = 20
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1,
         end=max_epochs)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(enable=False)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
load_from = 'checkpoints/wavevit_toy_official.pth'
randomness = dict(seed=0)
