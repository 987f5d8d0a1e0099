"""Every shipped config builds its model and runs a forward pass."""
import glob
import os

import pytest
import torch
from mmengine.config import Config

from wavevit_mm import WaveViT
from wavevit_mm.analysis import build_model, dummy_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))) + sorted(
    glob.glob(os.path.join(ROOT, 'projects', '*', 'configs', '*.py')))
DIMS = {'s': [64, 128, 320, 448], 'b': [64, 128, 320, 512]}
REFERENCE = {  # config -> numbers quoted in its header comment
    'mask_rcnn_wavevit_s_coco.py': ('46.6', '42.4'),
    'mask_rcnn_wavevit_b_coco.py': ('47.6', '43.0'),
    'retinanet_wavevit_s_coco.py': ('45.8', ),
    'retinanet_wavevit_b_coco.py': ('47.2', ),
    'upernet_wavevit_s_ade20k.py': ('49.6', ),
    'upernet_wavevit_b_ade20k.py': ('51.5', ),
    'cascade_mask_rcnn_wavevit_s_3x_coco.py': ('52.1', ),
    'atss_wavevit_s_3x_coco.py': ('50.7', ),
    'gfl_wavevit_s_3x_coco.py': ('50.9', ),
    'sparse_rcnn_wavevit_s_3x_coco.py': ('50.7', ),
}


def test_all_paper_configs_are_shipped():
    names = {os.path.basename(c) for c in CONFIGS}
    assert set(REFERENCE) <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_builds_and_runs_forward(path):
    cfg = Config.fromfile(path)
    model = build_model(cfg)
    backbone = model.backbone
    assert isinstance(backbone, WaveViT)
    if isinstance(backbone.arch, dict) and 'toy' not in path:
        arch = 'b' if '_b_' in os.path.basename(path) else 's'
        assert backbone.embed_dims == DIMS[arch]
    inputs, samples = dummy_inputs(cfg.default_scope, (96, 128))
    with torch.no_grad():
        outputs = model._forward(inputs, samples)
    flat = []
    stack = [outputs]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            flat.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, 'values'):  # dicts and mmengine data elements
            stack.extend(item.values())
    assert flat and all(torch.isfinite(t).all() for t in flat)


@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_paper_config_recipe(name):
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
    text = open(os.path.join(ROOT, 'configs', name)).read()
    for number in REFERENCE[name]:
        assert number in text.split('_base_')[0], 'reference result comment'
    backbone = cfg.model.backbone
    assert backbone.type == 'WaveViT'
    assert backbone.init_cfg.type == 'Pretrained'
    assert cfg.custom_imports.imports == ['wavevit_mm']
    assert 'base_batch_size' in cfg.auto_scale_lr
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW'
    if name.startswith(('mask_rcnn', 'retinanet')):
        assert (optimizer.lr, optimizer.weight_decay) == (
            2e-4 if name.startswith('mask') else 1e-4, 1e-4)
        assert cfg.train_cfg.max_epochs == 12
        assert cfg.param_scheduler[1].milestones == [8, 11]
        assert cfg.param_scheduler[0].end == 500
        assert cfg.train_dataloader.batch_size * 8 == \
            cfg.auto_scale_lr.base_batch_size
        assert backbone.drop_path_rate == 0.1
    elif name.startswith('upernet'):
        assert (optimizer.lr, optimizer.weight_decay) == (6e-5, 0.01)
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys.norm.decay_mult \
            == 0
        assert cfg.train_cfg.max_iters == 160000
        assert cfg.param_scheduler[0].end == 1500
        assert cfg.param_scheduler[1].type == 'PolyLR'
        assert cfg.model.auxiliary_head.in_index == 2
        assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
        assert cfg.train_dataloader.batch_size == 2
        assert backbone.drop_path_rate == (0.1 if '_s_' in name else 0.3)
    elif name.startswith('sparse'):
        assert cfg.train_cfg.max_epochs == 36
        assert cfg.param_scheduler[1].milestones == [27, 33]
    else:  # 3x recipes
        assert (optimizer.lr, optimizer.weight_decay) == (1e-4, 0.05)
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys.norm.decay_mult \
            == 0
        assert cfg.train_cfg.max_epochs == 36
        assert cfg.param_scheduler[1].milestones == [27, 33]
        resize = cfg.train_dataloader.dataset.pipeline[3]
        assert resize.type == 'RandomChoice'
