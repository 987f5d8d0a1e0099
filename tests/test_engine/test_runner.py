"""A whole model's ``init_cfg=dict(type='Pretrained', checkpoint=...)``,
the mmdet way to start from a detector, in a real Runner on the toy set:
what fits loads and one block reports the rest, as for ``load_from``; a
foreign backbone or another model family is refused; the backbone's own
Pretrained entry stays strict."""
import copy
import functools
import math
import os
import uuid

import pytest
import torch
from mmengine.hooks import Hook

from toy_runs import DET_CONFIG, SEG_CONFIG, TOY
from wavevit_mm.engine import SafeguardedRunner
from wavevit_mm.errors import CheckpointError
from wavevit_mm.tools import build_model, load_config

RETINANET = os.path.join(TOY, 'configs', 'retinanet_wavevit_toy_coco.py')
TWO_CLASSES = dict(classes=('circle', 'square'),
                   palette=[(220, 60, 50), (60, 190, 70)])
#: the toy backbone with one block fewer in stage 2
OTHER_DEPTHS = {'model.backbone.arch.depths': [1, 1, 1, 1]}


def save(path, config_path, settings=None, seed=0):
    """A whole-model checkpoint of a config's model as mmengine's Runner
    saves one: initialised weights and the dataset's class names."""
    cfg = config(config_path, settings)
    torch.manual_seed(seed)
    torch.save(dict(state_dict=build_model(cfg).state_dict(),
                    meta=dict(dataset_meta=dict(cfg.get('metainfo') or {}))),
               path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """The toy RetinaNet (3 classes), the same with another backbone, the
    toy UperNet."""
    folder = tmp_path_factory.mktemp('init_cfg_checkpoints')
    paths = dict(retinanet=folder / 'retinanet_3_classes.pth',
                 other_backbone=folder / 'retinanet_other_backbone.pth',
                 upernet=folder / 'upernet.pth')
    save(paths['retinanet'], RETINANET)
    save(paths['other_backbone'], RETINANET, OTHER_DEPTHS)
    save(paths['upernet'], SEG_CONFIG)
    return {name: str(path) for name, path in paths.items()}


class StartOfTraining(Hook):
    """Keeps the weights training starts from, then ends the run before
    its first iteration."""

    weights = None

    def before_train(self, runner):
        self.weights = {k: v.clone()
                        for k, v in runner.model.state_dict().items()}
        runner.train_loop.stop_training = True


@functools.lru_cache(maxsize=None)
def _config(path):
    return load_config(path)


def config(path, settings=None):
    """The config at ``path`` (read once) with ``settings`` (dotted keys)
    changed."""
    cfg = copy.deepcopy(_config(path))
    for key, value in (settings or {}).items():
        *parents, name = key.split('.')
        node = cfg
        for parent in parents:
            node = node[parent]
        node[name] = value
    return cfg


def toy_runner(path, work_dir, settings):
    """The config's Runner (SafeguardedRunner, its runner_type) for
    training, with ``settings`` changed, and a hook that ends its training
    before the first iteration, keeping the weights it starts from.

    Built as ``Runner.from_cfg`` builds it, but without the validation set
    and without handing it the config (whose pretty-printing is most of
    the time of a toy run)."""
    cfg = config(path, settings)
    name = f'init_cfg_{uuid.uuid4().hex}'
    runner = SafeguardedRunner(
        model=cfg.model, work_dir=str(work_dir),
        train_dataloader=cfg.train_dataloader, train_cfg=cfg.train_cfg,
        optim_wrapper=cfg.optim_wrapper,
        param_scheduler=cfg.param_scheduler,
        default_hooks=cfg.default_hooks, env_cfg=cfg.env_cfg,
        log_processor=cfg.log_processor,
        visualizer=dict(cfg.visualizer, name=name),
        default_scope=cfg.default_scope, experiment_name=name)
    start = StartOfTraining()
    runner.register_hook(start)
    return runner, start


def file_weights(path):
    return torch.load(path, weights_only=True)['state_dict']


def test_detector_of_other_classes_loads_what_fits_and_reports_the_rest(
        toy_workspace, files, tmp_path, monkeypatch, capsys):
    """The 3-class toy detector's checkpoint as the init_cfg of a 2-class
    one: every tensor but the classifier's comes from the file, the
    classifier keeps RetinaHead's own initialisation, one block says so.
    """
    monkeypatch.chdir(toy_workspace)
    checkpoint = files['retinanet']
    runner, start = toy_runner(RETINANET, tmp_path, {
        'model.bbox_head.num_classes': 2,
        'model.init_cfg': dict(type='Pretrained', checkpoint=checkpoint),
        'train_dataloader.dataset.metainfo': TWO_CLASSES})
    runner.train()
    weights = start.weights
    saved = file_weights(checkpoint)
    fits = [k for k in weights
            if k in saved and saved[k].shape == weights[k].shape]
    assert [k for k in weights if k not in fits] == [
        'bbox_head.retina_cls.weight', 'bbox_head.retina_cls.bias']
    for key in fits:
        assert torch.equal(weights[key], saved[key]), key
    # RetinaHead's init_cfg: Normal(std=0.01, bias_prob=0.01) for retina_cls
    bias = weights['bbox_head.retina_cls.bias']
    assert torch.allclose(bias, torch.full_like(bias, -math.log(0.99 / 0.01)))
    assert abs(weights['bbox_head.retina_cls.weight'].std() - 0.01) < 1e-3
    share = (sum(weights[k].numel() for k in fits)
             / sum(v.numel() for v in weights.values()))
    key = 'bbox_head.retina_cls.weight'
    output = capsys.readouterr().out
    assert (
        f"model.init_cfg {checkpoint}: {len(fits)} of the model's "
        f"{len(weights)} tensors loaded ({share:.1%} of its weights); not "
        f"loaded (the model keeps the values its config initialised; "
        f"tensors in the file only are ignored):\n"
        f"  bbox_head.retina_cls: 2 tensors of another shape (weight: "
        f"{tuple(saved[key].shape)} in the file, {tuple(weights[key].shape)} "
        f"in the model)\n"
        f"  The file was trained on 3 classes (circle, square, triangle), "
        f"this run on 2 (circle, square).\n") in output
    assert 'do not match exactly' not in output  # mmengine's own warning
    assert runner.model.init_cfg == dict(type='Pretrained',
                                         checkpoint=checkpoint)


def test_checkpoint_with_another_backbone_is_refused(
        toy_workspace, files, tmp_path, monkeypatch):
    monkeypatch.chdir(toy_workspace)
    checkpoint = files['other_backbone']
    runner, start = toy_runner(RETINANET, tmp_path, {
        'model.init_cfg': dict(type='Pretrained', checkpoint=checkpoint)})
    with pytest.raises(CheckpointError) as error:
        runner.train()
    assert start.weights is None  # training did not start
    own, saved = runner.model.state_dict(), file_weights(checkpoint)
    missing = [k for k in own if k not in saved]
    assert missing and all(k.startswith('backbone.') for k in missing)
    message = str(error.value)
    assert message.startswith(
        f'{checkpoint} does not fit the backbone built from the config: '
        f'{len(missing)} backbone weights are missing from the file (e.g. ')
    assert message.endswith(
        'Nothing was loaded: fine-tuning starts from a checkpoint with the '
        'same backbone.')
    assert '\n' not in message


def test_checkpoint_of_another_model_family_is_refused(
        toy_workspace, files, tmp_path, monkeypatch):
    """The toy UperNet (same backbone) as the init_cfg of the toy Mask
    R-CNN: under half of the detector's weights are in the file."""
    monkeypatch.chdir(toy_workspace)
    checkpoint = files['upernet']
    runner, start = toy_runner(DET_CONFIG, tmp_path, {
        'model.init_cfg': dict(type='Pretrained', checkpoint=checkpoint)})
    with pytest.raises(CheckpointError) as error:
        runner.train()
    assert start.weights is None
    own = runner.model.state_dict()
    saved = file_weights(checkpoint)
    fits = [k for k in own if k in saved and saved[k].shape == own[k].shape]
    share = (sum(own[k].numel() for k in fits)
             / sum(v.numel() for v in own.values()))
    assert share < 0.5
    message = str(error.value)
    assert message.startswith(
        f'{checkpoint} cannot start this model: only {share:.0%} of its '
        f'weights ({len(fits)} of {len(own)} tensors) have a tensor of that '
        f'name and shape in the file, under the 50% that a checkpoint to '
        f'fine-tune from shares with the model')
    assert 'it is a checkpoint of another model. Nothing was loaded.' \
        in message
    assert '\n' not in message


def test_the_backbones_own_pretrained_entry_stays_strict(
        toy_workspace, files, tmp_path, monkeypatch):
    """A detector checkpoint whose backbone lacks one block, as the
    backbone's own init_cfg: refused by the backbone's strict loader,
    in its own words, as before."""
    monkeypatch.chdir(toy_workspace)
    checkpoint = files['other_backbone']
    runner, start = toy_runner(RETINANET, tmp_path, {
        'model.backbone.init_cfg': dict(type='Pretrained',
                                        checkpoint=checkpoint)})
    with pytest.raises(CheckpointError) as error:
        runner.train()
    assert start.weights is None
    own = runner.model.backbone.state_dict()
    saved = file_weights(checkpoint)
    missing = [k for k in own if f'backbone.{k}' not in saved]
    message = str(error.value)
    assert message.startswith(f'{checkpoint} does not fit this backbone: ')
    assert (f'{len(missing)} backbone weights are missing from the file'
            in message)
    assert 'Nothing was loaded.' in message
