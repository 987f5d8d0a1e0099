"""Classification end to end on the toy ImageNet-folder set: a small
Wave-ViT fine-tuned from an official-format file by tools/train.py and by
mmpretrain's own train.py, the checkpoints tested by tools/test.py and by
mmpretrain's own test.py (with and without --tta), image_demo.py, the
complexity table of tools/analysis_tools/get_flops.py."""
import os
import re
import sys

import pytest
import torch

from helpers import ROOT, require_mmpretrain, save

require_mmpretrain()

import mmcv  # noqa: E402
import mmengine  # noqa: E402
import mmpretrain  # noqa: E402
from mmengine.config import Config
from mmpretrain.registry import MODELS
from official_layout import classifier_names, official_state_dict
from toy_runs import TOY, run_process, tool, toy_shapes

import wavevit_mm  # noqa: F401  (registers the classifier)

pytestmark = pytest.mark.slow

CONFIG = os.path.join(TOY, 'configs', 'classification',
                      'wavevit_toy_imagenet.py')
#: the toy config's arch in the oracle's terms
TOY_ARCH = dict(stem=16, dims=[32, 64, 128, 160], heads=[1, 2, 4, 5],
                mlp=[4, 4, 4, 4], depths=[1, 1, 2, 1], sr=[4, 2, 1, 1])
MMPRETRAIN_TOOLS = os.path.join(os.path.dirname(mmpretrain.__file__), '.mim',
                                'tools')


def run(args, cwd, timeout=900):
    result = run_process(args, cwd, timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def top1(output: str) -> float:
    match = re.findall(r'accuracy/top1: ([\d.]+)', output)
    assert match, 'accuracy/top1 not printed'
    return float(match[-1])


def official_start() -> dict:
    """An ImageNet file of the toy arch in the official layout: the
    official initialisation (random official-format values start too far
    off to fine-tune from, drawn with a fixed seed), 1000 classes."""
    config = Config.fromfile(CONFIG)
    config.model.data_preprocessor = config.data_preprocessor
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = MODELS.build(config.model)
        model.init_weights()
    own = model.state_dict()
    official = official_state_dict(TOY_ARCH)
    for key, ours in classifier_names(TOY_ARCH).items():
        if ours and own[ours].shape == official[key].shape:
            official[key] = own[ours]
    return official


@pytest.fixture(scope='module')
def toy_set(tmp_path_factory):
    """A folder holding the toy ImageNet-folder set under data/ and an
    official-layout file of the toy arch under checkpoints/, as the toy
    config expects them."""
    folder = tmp_path_factory.mktemp('toy_classification')
    toy_shapes.make_imagenet(str(folder / 'data' / 'toy_imagenet'),
                             num_train=60, num_val=30, image_size=(72, 72),
                             seed=1)
    os.makedirs(folder / 'checkpoints')
    save(folder / 'checkpoints', dict(model=official_start(), epoch=309),
         'wavevit_toy_official.pth')
    return folder


@pytest.fixture(scope='module')
def fine_tuned(toy_set):
    """tools/train.py's 20 epochs from the official-layout file: what it
    printed, and its checkpoint."""
    train = run([sys.executable, tool('train.py'), CONFIG, '--work-dir',
                 'work'], toy_set)
    return train, toy_set / 'work' / 'epoch_20.pth'


def test_fine_tuned_from_an_official_file_tested_by_both_tools(toy_set,
                                                               fine_tuned):
    train, checkpoint = fine_tuned
    # the official file started the run: all but the two linear heads
    assert 'load_from' in train and 'head.fc' in train
    ours = run([sys.executable, tool('test.py'), CONFIG, str(checkpoint),
                '--work-dir', 'test', '--show-dir', 'drawn'], toy_set)
    theirs = top1(run([sys.executable,
                       os.path.join(MMPRETRAIN_TOOLS, 'test.py'), CONFIG,
                       str(checkpoint), '--work-dir', 'test_mmpretrain'],
                      toy_set))
    print(f'toy ImageNet-folder set, 3 classes: top-1 {top1(ours):.2f}')
    assert top1(ours) == theirs
    assert top1(ours) > 60.0  # chance: 33.3
    # --show-dir: a drawing of every validation image (as mmpretrain's
    # test.py --show-dir draws them)
    drawn = sorted(os.listdir(toy_set / 'drawn'))
    assert len(drawn) == 30 and all(n.endswith('.png') for n in drawn)


def test_tta_gives_mmpretrains_own_tta_scores(toy_set, fine_tuned):
    """test.py --tta on a config without tta settings: the scores of
    mmpretrain's own test.py --tta for every image, which differ from the
    scores without it."""
    checkpoint = str(fine_tuned[1])
    ours = run([sys.executable, tool('test.py'), CONFIG, checkpoint, '--tta',
                '--work-dir', 'tta', '--out', 'ours.pkl'], toy_set)
    assert "using what mmpretrain's tools/test.py --tta uses" in ours
    run([sys.executable, os.path.join(MMPRETRAIN_TOOLS, 'test.py'), CONFIG,
         checkpoint, '--tta', '--work-dir', 'tta_mmpretrain', '--out',
         'theirs.pkl'], toy_set)
    run([sys.executable, tool('test.py'), CONFIG, checkpoint, '--work-dir',
         'plain', '--out', 'plain.pkl'], toy_set)
    ours, theirs, plain = (mmengine.load(toy_set / name) for name in
                           ('ours.pkl', 'theirs.pkl', 'plain.pkl'))
    assert len(ours) == len(theirs) == len(plain) == 30
    for mine, other, without in zip(ours, theirs, plain):
        assert mine['img_path'] == other['img_path'] == without['img_path']
        torch.testing.assert_close(mine['pred_score'], other['pred_score'])
        assert not torch.allclose(mine['pred_score'], without['pred_score'])


def test_image_demo_gives_the_class_test_py_gives(toy_set, fine_tuned,
                                                  tmp_path):
    """image_demo.py with a classification config: the class and score
    that test.py gives the same image, and a drawing of it."""
    checkpoint = str(fine_tuned[1])
    run([sys.executable, tool('test.py'), CONFIG, checkpoint, '--work-dir',
         str(tmp_path / 'test'), '--out', str(tmp_path / 'tested.pkl')],
        toy_set)
    tested = mmengine.load(tmp_path / 'tested.pkl')[0]
    image_path = str(toy_set / tested['img_path'])  # as the config found it
    out_file = tmp_path / 'drawn.png'
    output = run([sys.executable, tool('image_demo.py'), image_path, CONFIG,
                  checkpoint, '--out-file', str(out_file)], toy_set)
    label, score = re.search(r'class (\d+) with score ([\d.]+)',
                             output).groups()
    assert int(label) == int(tested['pred_label'])
    assert abs(float(score) - float(tested['pred_score'].max())) < 1e-4
    image = mmcv.imread(image_path)
    drawing = mmcv.imread(str(out_file))
    assert drawing.shape == image.shape and (drawing != image).any()


def test_mmpretrain_train_py_fine_tunes_from_the_official_file(toy_set):
    """mmpretrain's own train.py runs the config (one epoch here): it
    starts from the official file, skipping only the two linear heads,
    and its checkpoint is one our test.py evaluates."""
    train = run([sys.executable, os.path.join(MMPRETRAIN_TOOLS, 'train.py'),
                 CONFIG, '--work-dir', 'work_mmpretrain', '--cfg-options',
                 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'],
                toy_set)
    assert 'load_from' in train and 'head.fc' in train
    assert re.search(r'Epoch\(train\) \[1\]\[ *5/8\]', train), train[-2000:]
    checkpoint = toy_set / 'work_mmpretrain' / 'epoch_1.pth'
    tested = top1(run([sys.executable, tool('test.py'), CONFIG,
                       str(checkpoint), '--work-dir', 'test_one_epoch'],
                      toy_set))
    assert tested == top1(train)  # the run's own validation, same weights


@pytest.mark.parametrize('arch,params,flops', [('s', 22.7, 4.7),
                                                ('b', 33.5, 7.2),
                                                ('l', 57.5, 14.8)])
def test_get_flops_gives_the_official_table(arch, params, flops, tmp_path):
    """Parameters as quoted; multiply-adds within 5% of the quoted GFLOPs
    (the official counter is not public)."""
    config = os.path.join(ROOT, 'configs', 'classification',
                          f'wavevit_{arch}_in1k.py')
    output = run([sys.executable, tool('analysis_tools/get_flops.py'),
                  config, '--shape', '224'], tmp_path)
    print(output[-600:])
    counted = re.search(r'Params: ([\d.]+)M', output)
    assert counted and round(float(counted[1]), 1) == params
    counted = re.search(r'Flops: ([\d.]+)G', output)
    assert counted and abs(float(counted[1]) / flops - 1) < 0.05
