# Wave-ViT-B on ImageNet-1k: Wave-ViT-S's recipe, drop path 0.1 (the
# official configs). Quoted top-1 (official repository): 84.8 at 224.
_base_ = ['./wavevit_s_in1k.py']

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.1),
    head=dict(in_channels=512, num_heads=16))
