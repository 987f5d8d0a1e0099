"""What an mmdet/mmseg user does with a trained model, through the real
tools on the toy sets: publish it and load it where wavevit_mm is never
imported (mmdet's DetInferencer with and without a config, mmdet's
tools/test.py, ours), test it with test-time augmentation, ours against
mmdet's and mmseg's own ``tools/test.py --tta``, and fine-tune it on other
classes."""
import glob
import os
import pickle
import re
import sys

import cv2
import numpy as np
import pytest
import torch

from helpers import ROOT
from toy_runs import SEG_CONFIG, TOY, run_process, tool
from wavevit_mm.tools import build_model, load_config

pytestmark = pytest.mark.slow

RETINANET = os.path.join(TOY, 'configs', 'retinanet_wavevit_toy_coco.py')
#: After a few iterations the classifier still scores below mmdet's test
#: threshold (0.05); with 0 every image has boxes to compare.
EVERY_BOX = 'model.test_cfg.score_thr=0.0'


def run(args, cwd):
    result = run_process([sys.executable] + list(args), cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def openmmlab_tool(package, name):
    module = __import__(package)
    return os.path.join(os.path.dirname(module.__file__), '.mim', 'tools',
                        name)


def metrics(output, names):
    """The metrics a test run logs, e.g. ``{'coco/bbox_mAP': '0.012'}``."""
    return dict(re.findall(rf'\b({names}): (-?[\d.]+)', output))


@pytest.fixture(scope='module')
def trained(toy_workspace, tmp_path_factory):
    """epoch_1.pth of the toy RetinaNet after one epoch (2 iterations) of
    tools/train.py: a checkpoint as mmengine's Runner saves it (optimizer,
    schedulers, the message hub's HistoryBuffers)."""
    work = tmp_path_factory.mktemp('retinanet')
    run([tool('train.py'), RETINANET, '--work-dir', work, '--cfg-options',
         'train_cfg.max_epochs=1', 'train_cfg.val_interval=100',
         'param_scheduler.0.end=2'], toy_workspace)
    return str(work / 'epoch_1.pth')


@pytest.fixture(scope='module')
def published(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp('published') / 'retinanet_toy.pth'
    output = run([tool('model_converters/publish_model.py'), trained, out],
                 ROOT)
    path, = glob.glob(str(out.parent / 'retinanet_toy-*.pth'))
    assert f'The published model is saved at {path}' in output
    assert 'message_hub' in output and 'optimizer' in output  # dropped
    return path


INFERENCE_WITHOUT_WAVEVIT_MM = '''
import sys, torch
from mmdet.apis import DetInferencer
trained, published, config, image = sys.argv[1:]
try:
    torch.load(trained, weights_only=True)
    print('trained: loaded')
except Exception as error:
    print('trained: refused:', str(error).splitlines()[0])
weights = torch.load(published, weights_only=True)
print('published: loaded', sorted(weights))
assert 'wavevit_mm' not in sys.modules
for model in (None, config):
    inferencer = DetInferencer(model=model, weights=published, device='cpu')
    own = inferencer.model.state_dict()
    same = own.keys() == weights['state_dict'].keys() and all(
        torch.equal(own[key], value)
        for key, value in weights['state_dict'].items())
    prediction = inferencer(image, return_datasamples=True)['predictions'][0]
    print(f'config {model is not None}: weights of the file {same}, '
          f'{len(prediction.pred_instances)} boxes')
'''


def test_published_checkpoint_loads_where_wavevit_mm_is_not_imported(
        toy_workspace, trained, published, tmp_path):
    """torch >= 2.6 reads with weights_only=True by default, and mmengine
    0.10.7's checkpoints hold HistoryBuffers: a process that reads one
    before importing wavevit_mm (DetInferencer without a config reads the
    checkpoint to find the config) is refused. The published file holds
    weights and meta only."""
    output = run(['-c', INFERENCE_WITHOUT_WAVEVIT_MM, trained, published,
                  RETINANET,
                  os.path.join(toy_workspace, 'data/toy_coco/val/000000.jpg'),
                  ], tmp_path)
    assert 'trained: refused: Weights only load failed' in output
    assert "published: loaded ['meta', 'state_dict']" in output
    for config in (False, True):
        assert re.search(rf'config {config}: weights of the file True, '
                         rf'\d+ boxes', output), output[-3000:]


def test_mmdets_test_py_and_ours_agree_with_tta_on_the_published_file(
        toy_workspace, published, tmp_path):
    """With --tta on a config that has no TTA settings (every shipped
    detection config), ours uses mmdet's default flip TTA as mmdet's
    test.py does: the same boxes and the same metrics. Both test the
    published checkpoint."""
    results = {}
    for name, test_py in (('mmdet', openmmlab_tool('mmdet', 'test.py')),
                          ('ours', tool('test.py'))):
        out = tmp_path / f'{name}.pkl'
        output = run([test_py, RETINANET, published, '--tta', '--out', out,
                      '--work-dir', tmp_path / name, '--cfg-options',
                      EVERY_BOX], toy_workspace)
        with open(out, 'rb') as file:
            results[name] = (pickle.load(file),
                             metrics(output, r'coco/bbox_\w+'))
    (theirs, their_metrics), (ours, our_metrics) = results.values()
    assert our_metrics == their_metrics and len(our_metrics) == 6
    assert len(ours) == len(theirs) == 4
    for mine, other in zip(ours, theirs):
        assert mine['img_path'] == other['img_path']
        # the merged prediction keeps the first view's meta: the flipped one
        assert mine['flip'] is other['flip'] is True
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(mine['pred_instances'][key],
                               other['pred_instances'][key])


def test_mmsegs_test_py_and_ours_agree_with_tta(toy_workspace, tmp_path):
    """The UperNet configs inherit mmseg's tta_model and ADE20K's
    tta_pipeline (6 scales x 2 flips): both tools test with them and write
    the same label maps and metrics."""
    checkpoint = tmp_path / 'upernet.pth'
    torch.manual_seed(0)
    model = build_model(load_config(SEG_CONFIG))
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    results = {}
    for name, test_py in (('mmseg', openmmlab_tool('mmseg', 'test.py')),
                          ('ours', tool('test.py'))):
        out = tmp_path / f'{name}_maps'
        output = run([test_py, SEG_CONFIG, checkpoint, '--tta', '--out', out,
                      '--work-dir', tmp_path / name], toy_workspace)
        maps = {os.path.basename(path): cv2.imread(path, cv2.IMREAD_UNCHANGED)
                for path in glob.glob(str(out / '*.png'))}
        results[name] = (maps, metrics(output, 'aAcc|mIoU|mAcc'))
    (their_maps, their_metrics), (our_maps, our_metrics) = results.values()
    assert our_metrics == their_metrics and 'mIoU' in our_metrics
    assert len(our_maps) == 4 and our_maps.keys() == their_maps.keys()
    for name, label_map in our_maps.items():
        assert np.array_equal(label_map, their_maps[name])


FINE_TUNING = """
_base_ = [{base!r}]
load_from = {checkpoint!r}
metainfo = dict(classes=('circle', 'square'),
                palette=[(220, 60, 50), (60, 190, 70)])
model = dict(bbox_head=dict(num_classes=2))
train_dataloader = dict(dataset=dict(metainfo=metainfo))
val_dataloader = dict(dataset=dict(metainfo=metainfo))
test_dataloader = val_dataloader
"""


def test_fine_tuning_the_detector_on_other_classes(toy_workspace, trained,
                                                   tmp_path):
    """The fine-tuning config of docs/fine_tuning.md: the 3-class detector
    starts a 2-class one. Everything but the classifier is loaded; one
    block says what was not, and why."""
    config = tmp_path / 'retinanet_toy_two_classes.py'
    config.write_text(FINE_TUNING.format(base=RETINANET, checkpoint=trained))
    output = run([tool('train.py'), config, '--work-dir', tmp_path / 'work',
                  '--auto-scale-lr', '--cfg-options',
                  'train_cfg.max_epochs=1', 'train_cfg.val_interval=100',
                  'param_scheduler.0.end=2'], toy_workspace)
    loaded = re.search(rf"load_from {re.escape(trained)}: (\d+) of the "
                       rf"model's (\d+) tensors loaded \((\d+\.\d)% of its "
                       rf"weights\); not loaded", output)
    assert loaded, output[-3000:]
    assert int(loaded[2]) - int(loaded[1]) == 2 and float(loaded[3]) > 99
    assert ('  bbox_head.retina_cls: 2 tensors of another shape (weight: '
            '(27, 64, 3, 3) in the file, (18, 64, 3, 3) in the model)\n'
            '  The file was trained on 3 classes (circle, square, triangle), '
            'this run on 2 (circle, square).') in output
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
