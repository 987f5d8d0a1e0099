# Shared pieces of the 3x (36 epochs) multi-scale COCO recipes. Only new
# names are defined here, so this file combines with any mmdet base config;
# the configs pick the pieces up with {{_base_.NAME}}.


def _ms_crop_resize(long_side):
    """DETR-style augmentation: shorter side 480-800, or resize 400-600 +
    random 384-600 crop + resize 480-800; longer side at most long_side."""
    short_480_800 = [(s, long_side) for s in range(480, 801, 32)]
    return dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', keep_ratio=True,
                  scales=short_480_800)],
            [dict(type='RandomChoiceResize', keep_ratio=True,
                  scales=[(400, long_side), (500, long_side),
                          (600, long_side)]),
             dict(type='RandomCrop', crop_type='absolute_range',
                  crop_size=(384, 600), allow_negative_crop=True),
             dict(type='RandomChoiceResize', keep_ratio=True,
                  scales=short_480_800)],
        ])


ms_crop_resize_3x = _ms_crop_resize(1333)
ms_crop_resize_3x_1200 = _ms_crop_resize(1200)  # the official GFL recipe

train_cfg_3x = dict(type='EpochBasedTrainLoop', max_epochs=36, val_interval=1)
param_scheduler_3x = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True,
         milestones=[27, 33], gamma=0.1),
]
# AdamW, lr 1e-4, weight decay 0.05, none on norm layers
optim_wrapper_3x = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.))))
