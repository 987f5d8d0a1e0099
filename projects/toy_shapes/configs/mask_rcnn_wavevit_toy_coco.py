# The shipped Mask R-CNN config on the toy COCO set: a small Wave-ViT trained
# from scratch on 128x128 images. Only paths, sizes, classes, widths and the
# schedule differ; dataset, metric, model and runner code are the real ones.
_base_ = ['../../../configs/mask_rcnn_wavevit_s_coco.py']

data_root = 'data/toy_coco/'
metainfo = dict(classes=('circle', 'square', 'triangle'),
                palette=[(220, 60, 50), (60, 190, 70), (50, 90, 220)])
num_classes = 3
width = 64  # FPN / head width (256 in the real config)

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, stem_width=16, embed_dims=[32, 64, 128, 160],
                  num_heads=[1, 2, 4, 5], mlp_ratios=[4, 4, 4, 4],
                  depths=[1, 1, 2, 1], sr_ratios=[4, 2, 1, 1]),
        drop_path_rate=0.0,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 160], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256,
                       num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width,
                       num_classes=num_classes)))

image_scale = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 12  # 50 iterations each
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[9, 11], gamma=0.1),
]
auto_scale_lr = dict(base_batch_size=4)
randomness = dict(seed=0)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=max_epochs // 2, max_keep_ckpts=2))
