# RetinaNet + FPN, Wave-ViT-B, 1x schedule.
# Reference (paper): box AP 47.2 with 8 GPUs x 2 images.
_base_ = './retinanet_wavevit_s_coco.py'

pretrained = 'checkpoints/wavevit_b.pth'
model = dict(
    backbone=dict(
        arch='b', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))
