"""The real tools end to end on the toy datasets: train, test, demo,
distributed training on CPU, FLOPs. Each runs a few iterations only."""
import glob
import os
import pickle
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, 'projects', 'toy_shapes')
sys.path.insert(0, TOY)
import toy_shapes  # noqa: E402

pytestmark = pytest.mark.slow
ENV = dict(os.environ, PYTHONWARNINGS='ignore', PYTHON=sys.executable,
           OMP_NUM_THREADS='1')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A directory with data/toy_coco and data/toy_ade20k (small), where the
    toy configs' relative data paths resolve."""
    root = tmp_path_factory.mktemp('toy')
    toy_shapes.make_coco(str(root / 'data' / 'toy_coco'), num_train=8,
                         num_val=4, seed=1)
    toy_shapes.make_ade20k(str(root / 'data' / 'toy_ade20k'), num_train=8,
                           num_val=4, seed=1)
    return root


def run(args, cwd, timeout=900):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True,
                            text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def tool(name):
    return os.path.join(ROOT, 'tools', name)


def config(name):
    return os.path.join(TOY, 'configs', name)


def short_det_schedule():
    return ['--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
            'param_scheduler.0.end=2']


def metric(output, name):
    match = re.search(rf'{re.escape(name)}: (-?[\d.]+)', output)
    assert match, f'{name} not printed'
    return float(match[1])


def test_mask_rcnn_train_test_and_demo(workspace):
    cfg = config('mask_rcnn_wavevit_toy_coco.py')
    work = workspace / 'mask_rcnn'
    out = run([sys.executable, tool('train.py'), cfg, '--work-dir', str(work)]
              + short_det_schedule(), workspace)
    assert 0 <= metric(out, 'coco/bbox_mAP') <= 1
    assert 0 <= metric(out, 'coco/segm_mAP') <= 1
    checkpoint = str(work / 'epoch_1.pth')
    assert os.path.isfile(checkpoint)

    pkl = workspace / 'mask_rcnn_predictions.pkl'
    out = run([sys.executable, tool('test.py'), cfg, checkpoint,
               '--work-dir', str(work), '--out', str(pkl),
               '--show-dir', 'shown'], workspace)
    assert 0 <= metric(out, 'coco/bbox_mAP_50') <= 1
    with open(pkl, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 4 and 'pred_instances' in predictions[0]
    assert glob.glob(str(work / '*' / 'shown' / '*.jpg'))

    png = workspace / 'demo.png'
    out = run([sys.executable, tool('image_demo.py'),
               'data/toy_coco/val/000000.jpg', cfg, checkpoint,
               '--out-file', str(png), '--score-thr', '0.0'], workspace)
    assert 'drawing saved' in out
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_retinanet_amp_train_and_test(workspace):
    cfg = config('retinanet_wavevit_toy_coco.py')
    work = workspace / 'retinanet'
    # two iterations leave every score near the focal-loss prior (0.01)
    keep_all = 'model.test_cfg.score_thr=0.0'
    # --amp: without a GPU the backbone trains in bfloat16 (wavevit_mm.amp)
    out = run([sys.executable, tool('train.py'), cfg, '--work-dir', str(work),
               '--amp'] + short_det_schedule() + [keep_all], workspace)
    assert 'CPUAutocastOptimWrapper' in out
    assert 0 <= metric(out, 'coco/bbox_mAP') <= 1
    out = run([sys.executable, tool('test.py'), cfg,
               str(work / 'epoch_1.pth'), '--work-dir', str(work),
               '--cfg-options', keep_all], workspace)
    assert 0 <= metric(out, 'coco/bbox_mAP_50') <= 1


def test_upernet_train_test_and_demo(workspace):
    cfg = config('upernet_wavevit_toy_ade20k.py')
    work = workspace / 'upernet'
    out = run([sys.executable, tool('train.py'), cfg, '--work-dir', str(work),
               '--cfg-options', 'train_cfg.max_iters=4',
               'train_cfg.val_interval=4', 'param_scheduler.0.end=2',
               'param_scheduler.1.begin=2', 'param_scheduler.1.end=4',
               'default_hooks.checkpoint.interval=4'], workspace)
    assert 0 <= metric(out, 'mIoU') <= 100
    checkpoint = str(work / 'iter_4.pth')
    out_dir = workspace / 'upernet_pred'
    out = run([sys.executable, tool('test.py'), cfg, checkpoint,
               '--work-dir', str(work), '--out', str(out_dir)], workspace)
    assert 0 <= metric(out, 'mIoU') <= 100
    assert len(glob.glob(str(out_dir / '*.png'))) == 4
    png = workspace / 'seg_demo.png'
    run([sys.executable, tool('image_demo.py'),
         'data/toy_ade20k/images/validation/ADE_toy_00000000.jpg', cfg,
         checkpoint, '--out-file', str(png)], workspace)
    assert png.stat().st_size > 0


def test_dist_train_two_cpu_processes(workspace):
    cfg = config('mask_rcnn_wavevit_toy_coco.py')
    work = workspace / 'dist'
    out = run(['bash', tool('dist_train.sh'), cfg, '2', '--work-dir',
               str(work)] + short_det_schedule(), workspace)
    assert re.search(r'Distributed training: True', out)
    assert re.search(r"'world_size': 2|world_size: 2|GPU number: 2|"
                     r'Distributed launcher: pytorch', out)
    assert 0 <= metric(out, 'coco/bbox_mAP') <= 1
    assert os.path.isfile(work / 'epoch_1.pth')
    out = run(['bash', tool('dist_test.sh'), cfg, str(work / 'epoch_1.pth'),
               '2', '--work-dir', str(work)], workspace)
    assert 0 <= metric(out, 'coco/bbox_mAP_50') <= 1


def test_get_flops(workspace):
    out = run([sys.executable, tool('analysis_tools/get_flops.py'),
               os.path.join(ROOT, 'configs', 'retinanet_wavevit_s_coco.py'),
               '--shape', '256', '384'], workspace)
    flops = re.search(r'Flops: ([\d.]+)G', out)
    assert flops and float(flops[1]) > 0
    assert re.search(r'Params: [\d.]+M', out)
