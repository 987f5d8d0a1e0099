# UperNet + auxiliary FCN head, Wave-ViT-B, 512x512 crops, 160k iterations.
# Reference (paper): mIoU 51.5 (single scale) with 8 GPUs x 2 images.
_base_ = './upernet_wavevit_s_ade20k.py'

pretrained = 'checkpoints/wavevit_b.pth'
model = dict(
    backbone=dict(
        arch='b', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 320, 512]))
