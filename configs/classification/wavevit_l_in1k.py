# Wave-ViT-L on ImageNet-1k: Wave-ViT-S's recipe, drop path 0.3 and
# gradients clipped to norm 1.0 (the official configs). Quoted top-1
# (official repository): 85.5 at 224.
_base_ = ['./wavevit_s_in1k.py']

model = dict(
    backbone=dict(arch='l', drop_path_rate=0.3),
    head=dict(in_channels=512, num_heads=16))
optim_wrapper = dict(clip_grad=dict(max_norm=1.0))
