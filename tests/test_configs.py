"""Every shipped config builds its model and runs a forward pass."""
import glob
import os

import pytest
import torch
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import ROOT
from wavevit_mm import WaveViT
from wavevit_mm.tools import build_model, synthetic_inputs
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


# the heaviest models (B backbones, Cascade and Sparse R-CNN heads) build
# and run for seconds each: end-to-end material, left to the full suite
HEAVY = ('_b_', 'cascade', 'sparse_rcnn')


def by_weight(paths):
    return [pytest.param(path, marks=pytest.mark.slow)
            if any(key in os.path.basename(path) for key in HEAVY) else path
            for path in paths]


def test_all_paper_configs_are_shipped():
    names = {os.path.basename(c) for c in CONFIGS}
    assert set(REFERENCE) <= names


@pytest.mark.parametrize('path', by_weight(CONFIGS), ids=os.path.basename)
def test_config_builds_and_runs_forward(path):
    cfg = Config.fromfile(path)
    if cfg.model.get('test_cfg', {}).get('rpn'):
        # the heads run on every proposal kept: 50 of them, not 1000, are
        # enough to run each (Cascade's three mask heads on 1000 take
        # minutes)
        cfg.model.test_cfg.rpn.max_per_img = 50
    model = build_model(cfg)
    backbone = model.backbone
    assert isinstance(backbone, WaveViT)
    if isinstance(backbone.arch, dict) and 'toy' not in path:
        arch = 'b' if '_b_' in os.path.basename(path) else 's'
        assert backbone.embed_dims == DIMS[arch]
    inputs, samples = synthetic_inputs(cfg.default_scope, (96, 128))
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



# ------------------------------------------------------- safeguard hooks

#: default_hooks key -> type of the safeguards besides the checkpoint hook
SAFEGUARDS = dict(work_dir_lock='WorkDirLockHook',
                  checkpoint_fit='CheckpointFitHook',
                  epoch_seed='EpochSeedHook', finite_check='FiniteCheckHook',
                  label_map_check='LabelMapCheckHook')
SAFEGUARD_HOOKS = list(SAFEGUARDS.values())
# The checkpoint hook each config inherits, (interval, by_epoch,
# max_keep_ckpts): mmdet's default_runtime saves every epoch, mmseg's 160k
# schedule every 16000 iterations; the toy configs save twice a run and
# keep two files.
CHECKPOINT = {
    'mmdet': (1, True, -1),
    'mmseg': (16000, False, -1),
    'mask_rcnn_wavevit_toy_coco.py': (6, True, 2),
    'retinanet_wavevit_toy_coco.py': (6, True, 2),
    'upernet_wavevit_toy_ade20k.py': (300, False, 2),
}


def inherited_checkpoint(path, cfg):
    return CHECKPOINT.get(os.path.basename(path),
                          CHECKPOINT[cfg.default_scope])


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_states_the_safeguard_hooks(path):
    cfg = Config.fromfile(path)
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.type == 'AtomicCheckpointHook'
    assert (checkpoint.interval, checkpoint.get('by_epoch', True),
            checkpoint.get('max_keep_ckpts', -1)) == \
        inherited_checkpoint(path, cfg)
    assert {key: cfg.default_hooks[key].type for key in SAFEGUARDS} == \
        SAFEGUARDS
    assert not cfg.get('custom_hooks') and \
        cfg.runner_type == 'SafeguardedRunner'
    # what print(cfg.pretty_text) shows, and what a run from the dumped
    # config (mmengine writes it to the work dir) gets
    text = cfg.pretty_text
    for name in ['AtomicCheckpointHook'] + SAFEGUARD_HOOKS:
        assert f"type='{name}'" in text
    dumped = Config.fromstring(text, '.py')
    assert dumped.default_hooks == cfg.default_hooks


@pytest.mark.parametrize('path', [
    os.path.join(ROOT, 'configs', 'mask_rcnn_wavevit_b_coco.py'),
    os.path.join(ROOT, 'configs', 'upernet_wavevit_s_ade20k.py'),
    os.path.join(ROOT, 'projects', 'toy_shapes', 'configs',
                 'retinanet_wavevit_toy_coco.py'),
], ids=os.path.basename)
def test_runner_from_a_config_has_the_safeguard_hooks(path, tmp_path):
    from mmengine.hooks import CheckpointHook
    from mmengine.registry import RUNNERS

    cfg = Config.fromfile(path)
    cfg.work_dir = str(tmp_path)
    runner = RUNNERS.build(cfg)
    names = [type(hook).__name__ for hook in runner.hooks]
    assert all(names.count(name) == 1 for name in SAFEGUARD_HOOKS), names
    [checkpoint] = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
    assert type(checkpoint).__name__ == 'AtomicCheckpointHook'
    assert (checkpoint.interval, checkpoint.by_epoch,
            checkpoint.max_keep_ckpts) == inherited_checkpoint(path, cfg)


# --------------------------------------- frozen BatchNorm scale and shift

# the stages 1-2 depths of the presets (wavelet attention)
WAVELET_DEPTHS = {'s': [3, 4], 'b': [3, 4]}


def batchnorms(module):
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def build_backbone(cfg):
    return WaveViT(**{k: v for k, v in cfg.model.backbone.items()
                      if k not in ('type', 'init_cfg')})


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_backbone_batchnorm_scale_and_shift_are_frozen(path):
    cfg = Config.fromfile(path)
    arch = cfg.model.backbone.arch
    assert cfg.model.backbone.norm_cfg == dict(type='BN', requires_grad=False)
    backbone = build_backbone(cfg)
    # the stem's three, `reduce` and `filter` of every wavelet attention
    depths = arch.depths[:2] if isinstance(arch, dict) \
        else WAVELET_DEPTHS[arch]
    norms = batchnorms(backbone)
    assert len(norms) == 3 + 2 * sum(depths)
    frozen = {id(p) for m in norms for p in m.parameters()}
    assert len(frozen) == 2 * len(norms)
    for name, param in backbone.named_parameters():
        assert param.requires_grad == (id(param) not in frozen), name


@pytest.mark.parametrize('name', by_weight(sorted(REFERENCE)))
def test_training_step_keeps_batchnorm_affine_and_updates_statistics(name):
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
    torch.manual_seed(0)
    backbone = build_backbone(cfg).train()
    optim_wrapper = build_optim_wrapper(backbone, cfg.optim_wrapper)
    norms = batchnorms(backbone)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    loss = sum(out.mean() for out in backbone(torch.randn(2, 3, 64, 64)))
    optim_wrapper.update_params(loss)

    after = backbone.state_dict()
    for prefix in (n for n, m in backbone.named_modules() if m in norms):
        for key in ('weight', 'bias'):
            assert torch.equal(before[f'{prefix}.{key}'],
                               after[f'{prefix}.{key}'])
        assert not torch.equal(before[f'{prefix}.running_mean'],
                               after[f'{prefix}.running_mean'])
    stem_conv = 'stages.0.downsample.conv.0.weight'
    assert not torch.equal(before[stem_conv], after[stem_conv])


# -------------------------------------- GFL: longer side at most 1200

def resize_scales(pipeline):
    """The scales of every resize step of a pipeline, however nested."""
    stack, scales = [pipeline], []
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if 'Resize' in item.get('type', ''):
                if 'scale' in item:
                    scales.append(item['scale'])
                scales += item.get('scales', [])
            stack += [v for v in item.values() if isinstance(v, (list, dict))]
        elif isinstance(item, list):
            stack += item
    return [tuple(scale) for scale in scales]


@pytest.mark.parametrize('name,long_side', [
    ('gfl_wavevit_s_3x_coco.py', 1200),  # as the official GFL recipe
    ('atss_wavevit_s_3x_coco.py', 1333),
    ('cascade_mask_rcnn_wavevit_s_3x_coco.py', 1333),
])
def test_3x_recipe_longer_side_of_training_images(name, long_side):
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
    scales = resize_scales(cfg.train_dataloader.dataset.pipeline)
    assert len(scales) == 11 + 3 + 11  # 480-800 step 32; 400-600; 480-800
    assert {max(scale) for scale in scales} == {long_side}
    # every recipe tests at 1333x800 (official too)
    assert resize_scales(cfg.test_dataloader.dataset.pipeline) == [
        (1333, 800)]


def test_gfl_training_images_never_exceed_1200_on_the_longer_side():
    import numpy as np
    from mmdet.registry import TRANSFORMS
    from mmdet.structures.bbox import HorizontalBoxes
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    cfg = Config.fromfile(os.path.join(ROOT, 'configs',
                                       'gfl_wavevit_s_3x_coco.py'))
    steps = [TRANSFORMS.build(step)
             for step in cfg.train_dataloader.dataset.pipeline
             if step.type not in ('LoadImageFromFile', 'LoadAnnotations',
                                  'PackDetInputs')]
    longest = []
    for seed in range(30):
        np.random.seed(seed)
        height, width = [(600, 2400), (2400, 600), (1000, 1500)][seed % 3]
        results = dict(
            img=np.zeros((height, width, 3), np.uint8),
            img_shape=(height, width), ori_shape=(height, width),
            gt_bboxes=HorizontalBoxes(torch.tensor([[10., 10., 300., 300.]])),
            gt_bboxes_labels=np.array([0]),
            gt_ignore_flags=np.array([False]))
        for step in steps:
            results = step(results)
        longest.append(max(results['img'].shape[:2]))
    assert max(longest) == 1200


USERS_OVERRIDES = """
_base_ = [{base!r}]
custom_hooks = [dict(type='EMAHook')]
default_hooks = dict(checkpoint=dict(interval=2){removal})
"""


def derived_config(tmp_path, removal=''):
    path = tmp_path / 'derived.py'
    path.write_text(USERS_OVERRIDES.format(
        base=os.path.join(ROOT, 'projects', 'toy_shapes', 'configs',
                          'retinanet_wavevit_toy_coco.py'), removal=removal))
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path / 'work')
    return cfg


def test_safeguards_survive_custom_hooks_and_default_hook_changes(tmp_path):
    """The usual mmdet overrides: an EMAHook in custom_hooks, another
    checkpoint interval; the safeguards stay, in the config and the run."""
    from mmengine.registry import RUNNERS

    cfg = derived_config(tmp_path)
    text = cfg.pretty_text
    for name in ['AtomicCheckpointHook', 'EMAHook'] + SAFEGUARD_HOOKS:
        assert f"type='{name}'" in text
    assert cfg.default_hooks.checkpoint.interval == 2
    names = [type(hook).__name__ for hook in RUNNERS.build(cfg).hooks]
    for name in ['AtomicCheckpointHook', 'EMAHook'] + SAFEGUARD_HOOKS:
        assert names.count(name) == 1, names


def test_a_safeguard_set_to_none_is_dropped_with_one_log_line(tmp_path,
                                                              capsys):
    """mmengine's Runner asserts on None for a default hook it does not
    know; SafeguardedRunner drops it and says so."""
    from mmengine.registry import RUNNERS

    cfg = derived_config(tmp_path, removal=', work_dir_lock=None')
    assert cfg.default_hooks.work_dir_lock is None
    names = [type(hook).__name__ for hook in RUNNERS.build(cfg).hooks]
    assert 'WorkDirLockHook' not in names
    assert all(names.count(name) == 1 for name in SAFEGUARD_HOOKS[1:])
    lines = [line for line in capsys.readouterr().out.splitlines()
             if 'Safeguards switched off' in line]
    assert len(lines) == 1 and lines[0].endswith(
        'Safeguards switched off in default_hooks: work_dir_lock '
        '(WorkDirLockHook).')
