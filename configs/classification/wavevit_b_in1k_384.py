# Wave-ViT-B at 384 for testing the official 384 checkpoint: the official
# evaluation, the shorter side resized to int(384 / 0.96) = 400 (bicubic,
# PIL), centre crop 384. Quoted top-1 (official repository): 85.6. How the
# authors fine-tuned at 384 is not public.
_base_ = ['./wavevit_b_in1k.py']

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=400, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=384),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
