"""Toy models of each exported family and their checkpoints, shared by
the deployment tests."""
import os
import textwrap

import onnxruntime
import torch
from mmdet.structures import DetDataSample

from helpers import ROOT
from toy_runs import TOY
from wavevit_mm.tools import build_model, load_config
from wavevit_mm.tools.deployment import image_metas

RETINANET_CONFIG = os.path.join(TOY, 'configs',
                                'retinanet_wavevit_toy_coco.py')
#: the toy configs' Wave-ViT
TOY_ARCH = dict(stem_width=16, embed_dims=[32, 64, 128, 160],
                num_heads=[1, 2, 4, 5], mlp_ratios=[4, 4, 4, 4],
                depths=[1, 1, 2, 1], sr_ratios=[4, 2, 1, 1])
TOY_SIZE = (128, 128)
#: sizes the dynamic files are run at besides the export size: odd ones,
#: and one larger than any the network was exported or checked at
OTHER_SIZES = [(96, 160), (97, 131), (250, 330)]


def toy_config(folder, name, neck='', heads=''):
    """The shipped config ``name`` with the toy Wave-ViT and the neck
    taking its widths; ``neck`` more settings of the neck, ``heads`` more
    of the model."""
    path = folder / f'{name}_toy.py'
    path.write_text(textwrap.dedent(f'''
        _base_ = ['{ROOT}/configs/{name}.py']
        model = dict(
            backbone=dict(arch=dict(_delete_=True, **{TOY_ARCH}),
                          drop_path_rate=0.0, init_cfg=None),
            neck=dict(in_channels={TOY_ARCH['embed_dims']}, {neck}), {heads})
        '''))
    return str(path)


def toy_one_stage_config(folder, family):
    """The shipped ``family`` config (ATSS or GFL) with the toy Wave-ViT
    and heads as narrow as the toy RetinaNet's."""
    return toy_config(
        folder, f'{family}_wavevit_s_3x_coco', neck='out_channels=64',
        heads='bbox_head=dict(num_classes=3, in_channels=64, '
        'feat_channels=64, stacked_convs=2)')


def scores_below_threshold(model):
    """Every class score far below any test score threshold (about
    e^-30): a one-stage head's classification biases, Mask R-CNN's
    foreground class biases, at -30."""
    head = getattr(model, 'bbox_head', None)
    for name, parameter in (head.named_parameters() if head else ()):
        if name.endswith('bias') and 'cls' in name:
            parameter.data.fill_(-30.)
    if hasattr(model, 'roi_head'):
        model.roi_head.bbox_head.fc_cls.bias.data[:-1] = -30.


def one_class_everywhere(model):
    """A segmentor that gives class 0 to every pixel: its decode head's
    class 0 bias far above the others."""
    model.decode_head.conv_seg.bias.data[0] = 1e3


def save_checkpoint(config, path, seed=0, edit=None):
    """A whole-model checkpoint of the untrained model, as mmengine saves
    it (with the config's class names and palette), with the
    classification biases at 0 instead of the prior's -4.6: scores spread
    over (0, 1) as in a trained detector, so detections pass the test
    score threshold; then ``edit(model)``. Returns the model (eval
    mode)."""
    cfg = load_config(config)
    torch.manual_seed(seed)
    model = build_model(cfg)
    head = getattr(model, 'bbox_head', None)
    for name, parameter in (head.named_parameters() if head else ()):
        if name.endswith('bias') and 'cls' in name:
            parameter.data.zero_()
    if edit is not None:
        edit(model)
    meta = dict(dataset_meta=dict(cfg.get('metainfo') or {}))
    torch.save(dict(state_dict=model.state_dict(), meta=meta), path)
    return model


def run(path, x):
    session = onnxruntime.InferenceSession(path)
    name = session.get_inputs()[0].name
    return [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]


def output_names(path):
    return [o.name for o in onnxruntime.InferenceSession(path).get_outputs()]


def detector_input(size, seed=1):
    """A random normalised batch of one image of ``size``, and its sample
    as mmdet's ``predict`` takes it (neither resized nor padded)."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    return x, [DetDataSample(metainfo=image_metas(size)[0])]


def assert_gives_mmdets_detections(model, path, size):
    """The file's raw outputs on a random input of ``size``, decoded by
    the head's own ``predict_by_feat``, against mmdet's ``predict`` on
    the model: as many detections, 98% matched, the same scores."""
    from wavevit_mm.tools.deployment import (decode_detections,
                                            matched_detections)
    x, samples = detector_input(size)
    with torch.no_grad():
        expected = model.predict(x, samples, rescale=False)[0].pred_instances
        found = decode_detections(model.bbox_head, run(path, x),
                                  output_names(path), image_metas(size))[0]
    assert len(expected) > 10
    assert len(found) == len(expected)
    matched, total = matched_detections(found, expected, top=len(expected))
    assert matched >= 0.98 * total
    torch.testing.assert_close(found.scores, expected.scores, atol=1e-4,
                               rtol=1e-4)
