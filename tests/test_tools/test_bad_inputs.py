"""Bad input to the real tools (train.py, test.py, image_demo.py), run in
this process on the toy datasets: broken or foreign checkpoints, impossible
backbone settings, odd images, broken datasets. Each mistake gets one
paragraph on stderr and exit status 1; odd but valid input just works.
"""
import json
import os
import pickle
import shutil
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from helpers import RunsCode, assert_refusal
from toy_runs import DET_CONFIG, SEG_CONFIG, run_process, run_tool, tool
from wavevit_mm import WaveViT

pytestmark = pytest.mark.slow


def build_toy_model(config):
    cfg = Config.fromfile(config)
    scope = cfg.default_scope
    __import__(f'{scope}.utils', fromlist=['register_all_modules']
               ).register_all_modules(init_default_scope=False)
    models = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        return models.build(cfg.model), cfg


def save_model_checkpoint(config, path):
    """A checkpoint of the untrained toy model as mmengine saves it."""
    model, cfg = build_toy_model(config)
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(cfg.metainfo))), path)
    return str(path)


@pytest.fixture(scope='module')
def toy_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp('toy_checkpoints')
    return dict(det=save_model_checkpoint(DET_CONFIG, folder / 'det.pth'),
                seg=save_model_checkpoint(SEG_CONFIG, folder / 'seg.pth'))


def write_bad_checkpoint(kind, path, whole_model, good):
    """``path`` made into a bad checkpoint of ``kind``; ``good`` is a valid
    toy detector checkpoint to truncate or take the heads from."""
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        data = open(good, 'rb').read()
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'text':
        path.write_text('version https://git-lfs.github.com/spec/v1\n'
                        'oid sha256:4d7a\nsize 78123456\n')
    elif kind == 'image':
        path.write_bytes(cv2.imencode(
            '.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    elif kind in ('resnet50', 'wavevit_s'):
        if kind == 'resnet50':
            from mmdet.models.backbones import ResNet
            backbone = ResNet(depth=50).state_dict()
        else:
            backbone = WaveViT('s').state_dict()
        if whole_model:  # e.g. Mask R-CNN R-50: another backbone, our heads
            heads = {k: v for k, v in torch.load(good)['state_dict'].items()
                     if not k.startswith('backbone.')}
            backbone = dict(heads, **{'backbone.' + k: v
                                      for k, v in backbone.items()})
        torch.save(dict(state_dict=backbone), path)
    elif kind == 'malicious':
        marker = path.parent / f'{path.name}.payload_ran'
        torch.save(dict(state_dict=torch.load(good)['state_dict'],
                        meta=RunsCode(f'touch {marker}')), path)
    return str(path)


CHECKPOINT_KINDS = ['missing', 'empty', 'truncated', 'text', 'image',
                    'resnet50', 'wavevit_s', 'malicious']
COMMON_MESSAGES = {
    'missing': ['Checkpoint file not found: {path}.'],
    'empty': ['{path} is empty (0 bytes), not a checkpoint'],
    'truncated': ['{path} could not be read as a PyTorch checkpoint',
                  'The file is probably truncated or corrupt'],
    'text': ["{path} is not a checkpoint: it looks like text ('version "
             "https://git-lfs"],
    'image': ['{path} is not a checkpoint: it looks like a PNG image'],
    'malicious': ['Refusing to load {path}: unpickling it would call '
                  'posix.system'],
}
# as the backbone's init_cfg checkpoint (tools/train.py) ...
BACKBONE_MESSAGES = dict(
    COMMON_MESSAGES,
    resnet50=['{path} is not a Wave-ViT checkpoint'],
    wavevit_s=['{path} does not fit this backbone: the file holds Wave-ViT-S '
               '(stem width 32, embed dims 64/128/320/448, depths 3/4/6/3) '
               'weights, the backbone is custom Wave-ViT (stem width 16, '
               'embed dims 32/64/128/160, depths 1/1/2/1)'])
# ... and as the whole model (tools/test.py, tools/image_demo.py)
MODEL_MESSAGES = dict(
    COMMON_MESSAGES,
    resnet50=['{path} does not fit the model built from the config: ',
              'Its backbone is not a Wave-ViT (its weights start with '
              'conv1.weight, bn1.weight)'],
    wavevit_s=['{path} does not fit the model built from the config: ',
               'Its backbone is Wave-ViT-S (stem width 32, embed dims '
               "64/128/320/448, depths 3/4/6/3), the config's is custom "
               'Wave-ViT (stem width 16'])


def write_config(folder, name, body):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# ----------------------------------------------------------- checkpoints

@pytest.mark.parametrize('kind', CHECKPOINT_KINDS)
def test_train_with_a_bad_backbone_checkpoint(toy_workspace, toy_checkpoints,
                                              tmp_path, kind):
    path = tmp_path / f'{kind}.pth'
    if kind != 'missing':
        write_bad_checkpoint(kind, path, False, toy_checkpoints['det'])
    config = write_config(tmp_path, 'pretrained.py', f'''
        _base_ = ['{DET_CONFIG}']
        model = dict(backbone=dict(init_cfg=dict(
            _delete_=True, type='Pretrained', checkpoint='{path}')))
        ''')
    result = run_tool('train.py', [config, '--work-dir', tmp_path / 'work'],
                      toy_workspace)
    assert_refusal(result, 'train.py', *(
        part.format(path=path) for part in BACKBONE_MESSAGES[kind]))
    assert not list((tmp_path / 'work').glob('*.pth'))
    assert not list(tmp_path.glob('*.payload_ran'))


@pytest.mark.parametrize('kind', CHECKPOINT_KINDS)
def test_test_with_a_bad_checkpoint(toy_workspace, toy_checkpoints, tmp_path,
                                    kind):
    path = tmp_path / f'{kind}.pth'
    if kind != 'missing':
        write_bad_checkpoint(kind, path, True, toy_checkpoints['det'])
    result = run_tool('test.py', [DET_CONFIG, path, '--work-dir', tmp_path],
                      toy_workspace)
    assert_refusal(result, 'test.py', *(
        part.format(path=path) for part in MODEL_MESSAGES[kind]))
    assert not list(tmp_path.glob('*.payload_ran'))


@pytest.mark.parametrize('kind', CHECKPOINT_KINDS)
def test_demo_with_a_bad_checkpoint(toy_workspace, toy_checkpoints, tmp_path,
                                    kind):
    path = tmp_path / f'{kind}.pth'
    if kind != 'missing':
        write_bad_checkpoint(kind, path, True, toy_checkpoints['det'])
    out_file = tmp_path / 'drawing.png'
    result = run_tool('image_demo.py', [
        'data/toy_coco/val/000000.jpg', DET_CONFIG, path,
        '--out-file', out_file], toy_workspace)
    assert_refusal(result, 'image_demo.py', *(
        part.format(path=path) for part in MODEL_MESSAGES[kind]))
    assert not out_file.exists()
    assert not list(tmp_path.glob('*.payload_ran'))


def test_a_real_process_prints_only_the_paragraph(toy_workspace, tmp_path):
    """The same through a real interpreter: stderr is the one line."""
    path = tmp_path / 'empty.pth'
    path.write_bytes(b'')
    result = run_process([sys.executable, tool('test.py'), DET_CONFIG, path],
                         toy_workspace)
    assert result.returncode == 1
    assert result.stderr == (f'test.py: error: {path} is empty (0 bytes), '
                             f'not a checkpoint: an interrupted download or '
                             f'copy? Fetch the file again.\n')


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize('option,message', [
    ('model.backbone.arch=xs',
     "model.backbone: Unknown Wave-ViT arch 'xs'; choose one of "
     "['b', 'l', 's']"),
    ('model.backbone.arch.depths=[1,1,2]',
     'model.backbone: Custom Wave-ViT arch: every per-stage entry needs 4 '
     'values, but depths has 3 ([1, 1, 2])'),
    ('model.backbone.arch.num_heads=[1,2,3,5]',
     'model.backbone: Custom Wave-ViT arch: stage 3 embed dim 128 is not '
     'divisible by its 3 heads'),
    ('model.backbone.out_indices=(1,4)',
     'model.backbone: out_indices must be distinct stage indices in '
     '[0, 3], got (1, 4)'),
    ('model.backbone.frozen_stages=5',
     'model.backbone: frozen_stages must be in [-1, 4]'),
    ('model.backbone.with_checkpoint=True',
     "model.backbone: WaveViT.__init__() got an unexpected keyword argument "
     "'with_checkpoint'"),
    ('model.backbone.init_cfg.checkpoint=x.pth',
     '--cfg-options: init_cfg='),
])
def test_train_with_an_impossible_backbone(toy_workspace, tmp_path, option,
                                           message):
    result = run_tool('train.py', [DET_CONFIG, '--work-dir', tmp_path,
                                   '--cfg-options', option], toy_workspace)
    assert_refusal(result, 'train.py', message)


def test_test_with_an_impossible_backbone(toy_workspace, toy_checkpoints,
                                          tmp_path):
    result = run_tool('test.py', [
        DET_CONFIG, toy_checkpoints['det'], '--work-dir', tmp_path,
        '--cfg-options', 'model.backbone.out_indices=(0,4)'], toy_workspace)
    assert_refusal(result, 'test.py', 'model.backbone: out_indices')


# ----------------------------------------------------------------- images

def write_image(path, shape, dtype=np.uint8):
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    if len(shape) == 3 and shape[2] == 4:
        image[..., 3] = 128  # half transparent RGBA
    assert cv2.imwrite(str(path), image)
    return str(path)


@pytest.fixture(scope='module')
def native_size_config(tmp_path_factory):
    """The toy detector without its test-time resize: images reach the
    backbone at their own size."""
    return write_config(tmp_path_factory.mktemp('native'), 'native.py', f'''
        _base_ = ['{DET_CONFIG}']
        test_dataloader = dict(dataset=dict(pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale_factor=1.0),
            dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape',
                'scale_factor'))]))
        ''')


SIZES = [(17, 23, 3), (33, 47, 3), (16, 1000, 3), (1000, 16, 3)]


# a single pixel too, except that mmseg's visualizer cannot draw one (it
# indexes the drawing with a one-element tensor, read as the index 1)
@pytest.mark.parametrize('model,shape', [
    (model, shape) for model in ('det', 'det_native_size', 'seg')
    for shape in SIZES + ([] if model == 'seg' else [(1, 1, 3)])])
def test_demo_on_odd_tiny_and_extreme_sizes(toy_workspace, toy_checkpoints,
                                            native_size_config, tmp_path,
                                            shape, model):
    image = write_image(tmp_path / 'image.png', shape)
    config = dict(det=DET_CONFIG, det_native_size=native_size_config,
                  seg=SEG_CONFIG)[model]
    checkpoint = toy_checkpoints[model[:3]]
    out_file = tmp_path / 'drawing.png'
    result = run_tool('image_demo.py', [image, config, checkpoint,
                                        '--out-file', out_file],
                      toy_workspace)
    assert result.code == 0, result.stderr
    assert cv2.imread(str(out_file)).shape == shape


@pytest.mark.parametrize('kind,shape,dtype', [
    ('grayscale', (40, 60), np.uint8), ('grayscale_16bit', (40, 60),
                                        np.uint16),
    ('rgba', (40, 60, 4), np.uint8)])
def test_demo_converts_grayscale_and_rgba(toy_workspace, toy_checkpoints,
                                          tmp_path, kind, shape, dtype):
    image = write_image(tmp_path / f'{kind}.png', shape, dtype)
    out_file = tmp_path / 'drawing.png'
    result = run_tool('image_demo.py', [image, DET_CONFIG,
                                        toy_checkpoints['det'],
                                        '--out-file', out_file],
                      toy_workspace)
    assert result.code == 0, result.stderr
    assert cv2.imread(str(out_file)).shape == (40, 60, 3)


def test_demo_with_a_config_without_a_test_pipeline(toy_workspace,
                                                    toy_checkpoints, tmp_path):
    """mmengine takes ``test_dataloader = None``; the demo, which brings
    the image to the model through the test pipeline as mmdet's inference
    does, says so instead of an AttributeError."""
    config = write_config(tmp_path, 'no_test_data.py', f'''
        _base_ = ['{DET_CONFIG}']
        test_dataloader = None
        ''')
    image = write_image(tmp_path / 'image.png', (40, 60, 3))
    out_file = tmp_path / 'drawing.png'
    result = run_tool('image_demo.py', [image, config, toy_checkpoints['det'],
                                        '--out-file', out_file],
                      toy_workspace)
    assert_refusal(result, 'image_demo.py',
                   f'{config} has no test_dataloader.dataset.pipeline')
    assert not out_file.exists()


@pytest.mark.parametrize('kind,message', [
    ('missing', 'image file not found: {path}'),
    ('text', '{path} is not an image file that OpenCV can read (20 bytes)'),
    ('empty', '{path} is not an image file that OpenCV can read (0 bytes)'),
    ('truncated_header', '{path} is not an image file that OpenCV can read'),
])
def test_demo_on_a_missing_or_unreadable_image(toy_workspace, toy_checkpoints,
                                               tmp_path, kind, message):
    path = tmp_path / f'{kind}.jpg'
    if kind == 'text':
        path.write_text('this is not an image')
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated_header':
        path.write_bytes(cv2.imencode('.jpg', np.zeros(
            (64, 64, 3), np.uint8))[1].tobytes()[:20])
    result = run_tool('image_demo.py', [path, DET_CONFIG,
                                        toy_checkpoints['det'],
                                        '--out-file', tmp_path / 'x.png'],
                      toy_workspace)
    assert_refusal(result, 'image_demo.py', message.format(path=path))


# --------------------------------------------------------------- datasets

@pytest.mark.parametrize('options,message', [
    (['train_dataloader.dataset.ann_file=annotations/gone.json'],
     'train_dataloader.dataset: annotation file '
     'data/toy_coco/annotations/gone.json does not exist'),
    (['train_dataloader.dataset.data_prefix.img=gone/'],
     'train_dataloader.dataset: data_prefix.img folder data/toy_coco/gone/ '
     'does not exist'),
    (['val_dataloader.dataset.data_prefix.img=gone/'],
     'val_dataloader.dataset: data_prefix.img folder data/toy_coco/gone/ '
     'does not exist'),
])
def test_train_with_a_missing_annotation_file_or_image_folder(
        toy_workspace, tmp_path, options, message):
    result = run_tool('train.py', [DET_CONFIG, '--work-dir', tmp_path,
                                   '--cfg-options'] + options, toy_workspace)
    assert_refusal(result, 'train.py', message,
                         f'working directory, {toy_workspace}')
    assert not (tmp_path / 'last_checkpoint').exists()


def test_segmentation_with_a_missing_image_folder(toy_workspace, tmp_path):
    result = run_tool('train.py', [
        SEG_CONFIG, '--work-dir', tmp_path, '--cfg-options',
        'train_dataloader.dataset.data_prefix.img_path=images/gone'],
        toy_workspace)
    assert_refusal(result, 'train.py',
                         'data_prefix.img_path folder '
                         'data/toy_ade20k/images/gone does not exist')


def test_test_with_a_missing_annotation_file(toy_workspace, toy_checkpoints,
                                             tmp_path):
    result = run_tool('test.py', [
        DET_CONFIG, toy_checkpoints['det'], '--work-dir', tmp_path,
        '--cfg-options', 'test_dataloader.dataset.ann_file=gone.json'],
        toy_workspace)
    assert_refusal(result, 'test.py', 'test_dataloader.dataset: '
                         'annotation file data/toy_coco/gone.json')


@pytest.fixture
def own_workspace(toy_workspace, tmp_path):
    """A copy of the toy workspace to break."""
    root = tmp_path / 'workspace'
    shutil.copytree(toy_workspace / 'data', root / 'data')
    return root


def edit_coco(root, split, edit):
    path = root / 'data' / 'toy_coco' / 'annotations' / \
        f'instances_{split}.json'
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def add_image(coco, root, split, image_id, annotations=()):
    folder = root / 'data' / 'toy_coco' / split
    name = f'{image_id:06d}.jpg'
    shutil.copy(folder / '000000.jpg', folder / name)
    coco['images'].append(dict(id=image_id, file_name=name, height=128,
                               width=128))
    for ann in annotations:
        coco['annotations'].append(dict(
            ann, id=1000 + len(coco['annotations']), image_id=image_id))


def toy_datasets(root):
    """The training and validation sets of the toy detector config."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(DET_CONFIG)
    data_root = str(root / 'data' / 'toy_coco') + '/'
    with DefaultScope.overwrite_default_scope('mmdet'):
        return [DATASETS.build(dict(cfg[f'{split}_dataloader'].dataset,
                                    data_root=data_root))
                for split in ('train', 'val')]


def test_image_without_annotations_is_skipped_in_training_only(
        own_workspace, toy_checkpoints, tmp_path):
    """mmdet's filter_empty_gt: nothing to learn from it in training; in
    evaluation it counts (any box predicted on it is a false positive)."""
    for split in ('train', 'val'):
        edit_coco(own_workspace, split,
                  lambda coco: add_image(coco, own_workspace, split, 99))
    train, val = toy_datasets(own_workspace)
    assert len(train) == 8 and 99 not in {d['img_id'] for d in
                                          map(train.get_data_info,
                                              range(len(train)))}
    assert len(val) == 5
    out = tmp_path / 'predictions.pkl'
    result = run_tool('test.py', [DET_CONFIG, toy_checkpoints['det'],
                                  '--work-dir', tmp_path, '--out', out],
                      own_workspace)
    assert result.code == 0, result.stderr
    # every validation image predicted and evaluated, the new one included
    with open(out, 'rb') as file:
        predictions = pickle.load(file)  # written by this test's run
    assert len(predictions) == 5
    assert 99 in {p['img_id'] for p in predictions}


def test_annotations_of_unknown_categories_are_ignored(own_workspace):
    """What mmdet does for a class subset (metainfo classes chosen among
    the file's categories) it also does for a category id the file does not
    define: the annotation is left out, and an image left without
    annotations is skipped in training."""
    box = dict(bbox=[10, 10, 20, 20], area=400, iscrowd=0,
               segmentation=[[10, 10, 30, 10, 30, 30, 10, 30]])

    def edit(coco):
        add_image(coco, own_workspace, 'train', 98,
                  [dict(box, category_id=2), dict(box, category_id=7)])
        add_image(coco, own_workspace, 'train', 99,
                  [dict(box, category_id=7)])
    edit_coco(own_workspace, 'train', edit)
    train, _ = toy_datasets(own_workspace)
    infos = {info['img_id']: info for info in map(
        train.get_data_info, range(len(train)))}
    assert 99 not in infos
    assert [inst['bbox_label'] for inst in infos[98]['instances']] == [1]


@pytest.fixture
def broken_label_maps(own_workspace):
    """The first ADE20K label map of each split at another size."""
    from PIL import Image
    labels = own_workspace / 'data' / 'toy_ade20k' / 'annotations'
    for split in ('training', 'validation'):
        path = labels / split / 'ADE_toy_00000000.png'
        with Image.open(path) as seg:
            seg.resize((96, 64), Image.NEAREST).save(path)
    return own_workspace


def test_train_with_a_label_map_of_another_size(broken_label_maps,
                                                tmp_path):
    """Without the check, mmseg fails at the first batch holding the file
    (stack expects each tensor to be equal size) or, in the validation
    set, only after training."""
    result = run_tool('train.py', [SEG_CONFIG, '--work-dir', tmp_path],
                      broken_label_maps)
    assert_refusal(
        result, 'train.py', 'train_dataloader.dataset: label map '
        'data/toy_ade20k/annotations/training/ADE_toy_00000000.png is 64x96 '
        'but its image data/toy_ade20k/images/training/ADE_toy_00000000.jpg '
        'is 128x128 (HxW)')
    assert not list(tmp_path.glob('*.pth'))


def test_test_with_a_label_map_of_another_size_or_missing(
        broken_label_maps, toy_checkpoints, tmp_path):
    labels = broken_label_maps / 'data' / 'toy_ade20k' / 'annotations'
    os.remove(labels / 'validation' / 'ADE_toy_00000001.png')
    result = run_tool('test.py', [SEG_CONFIG, toy_checkpoints['seg'],
                                  '--work-dir', tmp_path], broken_label_maps)
    assert_refusal(
        result, 'test.py', 'test_dataloader.dataset: label map '
        'data/toy_ade20k/annotations/validation/ADE_toy_00000000.png is '
        '64x96', 'label map data/toy_ade20k/annotations/validation/'
        'ADE_toy_00000001.png of data/toy_ade20k/images/validation/'
        'ADE_toy_00000001.jpg does not exist')
