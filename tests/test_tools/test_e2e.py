"""The real tools end to end on the toy datasets: train, test, demo,
distributed training on CPU, FLOPs. Each runs a few iterations only."""
import glob
import os
import pickle
import re
import sys

import cv2
import pytest

from helpers import ROOT, wavevit_multiply_adds
from toy_runs import TOY, final_metrics, run_process, tool

pytestmark = pytest.mark.slow


def run(args, cwd, timeout=900):
    result = run_process(args, cwd, timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def config(name):
    return os.path.join(TOY, 'configs', name)


def short_det_schedule():
    return ['--cfg-options', 'train_cfg.max_epochs=1',
            'train_cfg.val_interval=1',
            'param_scheduler.0.end=2']


def test_mask_rcnn_train_test_and_demo(toy_workspace, tmp_path):
    cfg = config('mask_rcnn_wavevit_toy_coco.py')
    work = tmp_path / 'mask_rcnn'
    out = run([sys.executable, tool('train.py'), cfg, '--work-dir', str(work)]
              + short_det_schedule(), toy_workspace)
    validated = final_metrics(out, 'val')  # after the one epoch
    assert len(validated) == 12  # 6 for boxes, 6 for masks
    checkpoint = str(work / 'epoch_1.pth')
    assert os.path.isfile(checkpoint)

    # test.py on the same images with that epoch's weights: the same
    # metrics, to the last digit printed
    pkl = tmp_path / 'mask_rcnn_predictions.pkl'
    out = run([sys.executable, tool('test.py'), cfg, checkpoint,
               '--work-dir', str(work), '--out', str(pkl),
               '--show-dir', 'shown'], toy_workspace)
    assert final_metrics(out, 'test') == validated
    with open(pkl, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 4 and 'pred_instances' in predictions[0]
    assert glob.glob(str(work / '*' / 'shown' / '*.jpg'))

    png = tmp_path / 'demo.png'
    out = run([sys.executable, tool('image_demo.py'),
               'data/toy_coco/val/000000.jpg', cfg, checkpoint,
               '--out-file', str(png), '--score-thr', '0.0'], toy_workspace)
    assert 'drawing saved' in out
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_retinanet_amp_train_and_test(toy_workspace, tmp_path):
    cfg = config('retinanet_wavevit_toy_coco.py')
    work = tmp_path / 'retinanet'
    # two iterations leave every score near the focal-loss prior (0.01)
    keep_all = 'model.test_cfg.score_thr=0.0'
    # --amp: without a GPU the backbone trains in bfloat16 (wavevit_mm.amp)
    out = run([sys.executable, tool('train.py'), cfg, '--work-dir', str(work),
               '--amp'] + short_det_schedule() + [keep_all], toy_workspace)
    assert 'CPUAutocastOptimWrapper' in out
    validated = final_metrics(out, 'val')
    assert len(validated) == 6
    out = run([sys.executable, tool('test.py'), cfg,
               str(work / 'epoch_1.pth'), '--work-dir', str(work),
               '--cfg-options', keep_all], toy_workspace)
    # validation runs in float32 (autocast covers the training step only):
    # the test of the saved weights gives the same metrics
    assert final_metrics(out, 'test') == validated


def test_upernet_train_test_and_demo(toy_workspace, tmp_path):
    cfg = config('upernet_wavevit_toy_ade20k.py')
    work = tmp_path / 'upernet'
    out = run([sys.executable, tool('train.py'), cfg, '--work-dir', str(work),
               '--cfg-options', 'train_cfg.max_iters=4',
               'train_cfg.val_interval=4', 'param_scheduler.0.end=2',
               'param_scheduler.1.begin=2', 'param_scheduler.1.end=4',
               'default_hooks.checkpoint.interval=4'], toy_workspace)
    validated = final_metrics(out, 'val')
    assert set(validated) == {'aAcc', 'mIoU', 'mAcc'}
    checkpoint = str(work / 'iter_4.pth')
    out_dir = tmp_path / 'upernet_pred'
    out = run([sys.executable, tool('test.py'), cfg, checkpoint,
               '--work-dir', str(work), '--out', str(out_dir)], toy_workspace)
    assert final_metrics(out, 'test') == validated
    assert len(glob.glob(str(out_dir / '*.png'))) == 4
    png = tmp_path / 'seg_demo.png'
    image = 'data/toy_ade20k/images/validation/ADE_toy_00000000.jpg'
    run([sys.executable, tool('image_demo.py'), image, cfg, checkpoint,
         '--out-file', str(png)], toy_workspace)
    assert cv2.imread(str(png)).shape == \
        cv2.imread(str(toy_workspace / image)).shape


def test_dist_train_two_cpu_processes(toy_workspace, tmp_path):
    cfg = config('mask_rcnn_wavevit_toy_coco.py')
    work = tmp_path / 'dist'
    out = run(['bash', tool('dist_train.sh'), cfg, '2', '--work-dir',
               str(work)] + short_det_schedule(), toy_workspace)
    assert re.search(r'Distributed training: True', out)
    # two processes: mmengine's world size, and each rank's sampler takes
    # half of the 8 images, one batch of 4 (one process takes two)
    assert re.search(r'GPU number: 2\b', out), out[-3000:]
    assert re.search(r'Epoch\(train\) \[1\]\[1/1\]', out), out[-3000:]
    assert not re.search(r'Epoch\(train\) \[1\]\[\d/2\]', out)
    validated = final_metrics(out, 'val')
    checkpoint = str(work / 'epoch_1.pth')
    assert os.path.isfile(checkpoint)
    # the test split between two processes gives what one process gives
    out = run(['bash', tool('dist_test.sh'), cfg, checkpoint, '2',
               '--work-dir', str(work)], toy_workspace)
    assert re.search(r'GPU number: 2\b', out), out[-3000:]
    two = final_metrics(out, 'test')
    out = run([sys.executable, tool('test.py'), cfg, checkpoint,
               '--work-dir', str(work)], toy_workspace)
    assert re.search(r'GPU number: 1\b', out), out[-3000:]
    assert len(two) == 12
    assert final_metrics(out, 'test') == two == validated


def retinanet_multiply_adds(height, width):
    """Multiply-adds of RetinaNet with Wave-ViT-S, FPN (256 channels, from
    stride 8, two extra levels on the last input) and RetinaHead (4 + 4
    3x3 convolutions of 256 channels, 9 anchors, 80 classes) on one
    (3, height, width) image, convolutions and attention only."""
    sizes = []  # (h, w) at strides 4 .. 128
    h, w = height, width
    for _ in range(7):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    positions = [h * w for h, w in sizes[2:]]  # P3 .. P7
    fpn_inputs = [128, 320, 448]
    neck = sum(c * 256 * n for c, n in zip(fpn_inputs, positions))  # 1x1
    neck += 256 * 256 * 9 * sum(positions[:3])                     # 3x3
    neck += 448 * 256 * 9 * positions[3] + 256 * 256 * 9 * positions[4]
    head = 9 * 256 * (8 * 256 + 9 * 80 + 9 * 4) * sum(positions)
    return wavevit_multiply_adds('s', height, width) + neck + head


def test_get_flops(toy_workspace):
    out = run([sys.executable, tool('analysis_tools/get_flops.py'),
               os.path.join(ROOT, 'configs', 'retinanet_wavevit_s_coco.py'),
               '--shape', '256', '384'], toy_workspace)
    flops = re.search(r'Flops: ([\d.]+)G', out)
    assert flops and re.search(r'Params: [\d.]+M', out)
    # printed to 5 digits; normalisation and upsampling add 0.2%
    expected = retinanet_multiply_adds(256, 384)
    assert expected <= float(flops[1]) * 1e9 < 1.01 * expected


@pytest.mark.backbone_compile
def test_mask_rcnn_trains_with_the_backbone_compiled(toy_workspace, tmp_path):
    # in this process, to read torch.compile's own counters afterwards
    import torch._dynamo
    from torch._dynamo.utils import counters

    from toy_runs import run_tool
    torch._dynamo.reset()
    counters.clear()
    work = tmp_path / 'compiled'
    result = run_tool('train.py', [config('mask_rcnn_wavevit_toy_coco.py'),
                                   '--compile', '--work-dir', work]
                      + short_det_schedule(), toy_workspace)
    assert result.code == 0, result.stderr[-4000:]
    assert counters['stats']['unique_graphs'] >= 1  # it did compile
    assert dict(counters['graph_break']) == {}
    # the config the Runner dumps into the work dir says what ran
    assert 'compile=True' in (work / 'mask_rcnn_wavevit_toy_coco.py'
                              ).read_text()
    assert (work / 'epoch_1.pth').is_file()
