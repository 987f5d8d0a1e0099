"""The official Wave-ViT ImageNet classifier in mmpretrain: official files
give the official logits (oracle: official_layout's float64 network and
its PIL evaluation transform) through mmpretrain's ways of loading."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, RunsCode, require_mmpretrain, save, wrap

require_mmpretrain()

from mmengine.config import Config
from mmengine.dataset import Compose, default_collate
from mmpretrain.apis import ImageClassificationInferencer, get_model
from mmpretrain.registry import MODELS, TRANSFORMS
from mmpretrain.structures import DataSample
from official_layout import (ARCHS, classifier_state_dict,
                             official_eval_input, official_logits,
                             official_state_dict)

import wavevit_mm  # noqa: F401  (registers the classifier)
from wavevit_mm.errors import (CheckpointError, ConfigError,
                               UnsafeCheckpointError)

CONFIGS = os.path.join(ROOT, 'configs', 'classification')
SEEDS = {'s': 11, 'b': 12, 'l': 13}
QUOTED_PARAMS = {'s': 22.7, 'b': 33.5, 'l': 57.5}  # millions, official
#: the largest difference allowed, relative to the largest logit
TOLERANCE = 1e-5


def config_path(arch: str, size: int = 224) -> str:
    suffix = '' if size == 224 else f'_{size}'
    return os.path.join(CONFIGS, f'wavevit_{arch}_in1k{suffix}.py')


@pytest.fixture(scope='module')
def official_files(tmp_path_factory):
    """arch -> an official-format ImageNet file (bare state dict)."""
    folder = tmp_path_factory.mktemp('official')
    return {arch: save(folder, official_state_dict(arch, seed=seed),
                       f'wavevit_{arch}.pth')
            for arch, seed in SEEDS.items()}


@pytest.fixture(scope='module')
def picture(tmp_path_factory):
    """An RGB picture (PIL) of an odd size, and its PNG file."""
    pixels = np.random.default_rng(0).integers(0, 256, (301, 257, 3))
    image = Image.fromarray(pixels.astype(np.uint8))
    path = str(tmp_path_factory.mktemp('picture') / 'picture.png')
    image.save(path)
    return image, path


def config_logits(model, config: Config, path: str) -> torch.Tensor:
    """The model's scores (float64) for the file at ``path`` through the
    config's test pipeline and data preprocessor."""
    pipeline = Compose([TRANSFORMS.build(step) for step in
                        config.test_dataloader.dataset.pipeline])
    data = model.data_preprocessor(
        default_collate([pipeline(dict(img_path=path))]), False)
    with torch.no_grad():
        return model.double()(data['inputs'].double(), mode='tensor')


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize('size', [224, 384])
@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_official_file_gives_official_logits(arch, size, official_files,
                                             picture):
    config = Config.fromfile(config_path(arch, size))
    model = get_model(config, pretrained=official_files[arch]).eval()
    got = config_logits(model, config, picture[1])
    sd = official_state_dict(arch, seed=SEEDS[arch])
    want = official_logits(sd, arch, official_eval_input(picture[0], size))
    difference = relative_difference(got, want)
    print(f'Wave-ViT-{arch.upper()} {size}: logits differ by '
          f'{difference:.2e} of the largest')
    assert got.shape == (1, 1000)
    assert difference < TOLERANCE


@pytest.mark.parametrize('size', [(33, 47), (97, 131)])
def test_odd_sizes_give_the_reference_networks_logits(size, official_files):
    """At sizes the official code cannot take, the whole classifier gives
    the reference network's logits (float64 both; odd maps zero-padded at
    the bottom/right before each DWT, the inverse cropped)."""
    model = get_model(Config.fromfile(config_path('s')),
                      pretrained=official_files['s']).double().eval()
    image = torch.randn(1, 3, *size, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(image, mode='tensor')
    want = official_logits(official_state_dict('s', seed=SEEDS['s']), 's',
                           image)
    assert got.shape == want.shape == (1, 1000)
    assert relative_difference(got, want) < 1e-9


def test_logit_check_sees_another_combination_or_transform(
        official_files, picture):
    """The oracle tells the official test-time combination and evaluation
    transform from near alternatives: the checks above can fail."""
    config = Config.fromfile(config_path('s'))
    model = get_model(config, pretrained=official_files['s']).eval()
    want = official_logits(official_state_dict('s', seed=SEEDS['s']), 's',
                           official_eval_input(picture[0], 224))
    for aux_weight in (0., 1.):  # class token only; token scores in full
        model.head.aux_weight = aux_weight
        got = config_logits(model, config, picture[1])
        assert relative_difference(got, want) > 100 * TOLERANCE
    model.head.aux_weight = 0.5
    for resize in (dict(scale=256),  # mmpretrain's usual 0.875 crop
                   dict(backend='cv2')):  # OpenCV's bicubic, not PIL's
        other = Config.fromfile(config_path('s'))
        other.test_dataloader.dataset.pipeline[1].update(resize)
        got = config_logits(model, other, picture[1])
        assert relative_difference(got, want) > 100 * TOLERANCE


@pytest.mark.parametrize('wrapping', ['bare', 'state_dict', 'training',
                                      'model', 'ddp_state_dict', 'ddp_model'])
def test_official_wrappings_load_into_the_whole_classifier(wrapping,
                                                           tmp_path):
    sd = official_state_dict('s', seed=3)
    path = save(tmp_path, wrap(sd, wrapping))
    model = get_model(config_path('s'), pretrained=path)
    state = model.state_dict()
    expected = classifier_state_dict('s', seed=3)
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


def test_classifier_init_cfg_loads_the_official_file(official_files):
    config = Config.fromfile(config_path('b'))
    config.model.init_cfg = dict(type='Pretrained',
                                 checkpoint=official_files['b'])
    model = MODELS.build(config.model)
    model.init_weights()
    expected = classifier_state_dict('b', seed=SEEDS['b'])
    state = model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], v.to(state[k].dtype))
               for k, v in expected.items())


def test_inferencer_scores_are_the_official_ones(official_files, picture):
    inferencer = ImageClassificationInferencer(
        config_path('s'), pretrained=official_files['s'])
    result = inferencer(picture[1])[0]
    want = official_logits(official_state_dict('s', seed=SEEDS['s']), 's',
                           official_eval_input(picture[0], 224))
    torch.testing.assert_close(
        torch.as_tensor(result['pred_scores']).double(),
        want.softmax(dim=1)[0], atol=1e-5, rtol=1e-4)
    assert result['pred_label'] == want.argmax().item()


def test_file_of_another_arch_is_refused_naming_both(official_files):
    with pytest.raises(CheckpointError) as error:
        get_model(config_path('s'), pretrained=official_files['b'])
    message = str(error.value)
    assert 'holds Wave-ViT-B' in message and 'classifier Wave-ViT-S' in message
    assert 'wavevit_b_in1k.py' in message and 'Nothing was loaded' in message


def test_file_with_other_classes_is_refused_and_load_from_suggested(
        tmp_path):
    path = save(tmp_path, official_state_dict('s', num_classes=10))
    with pytest.raises(CheckpointError, match='classifies 10 classes, the '
                       'head 1000.*load_from'):
        get_model(config_path('s'), pretrained=path)


def test_file_that_runs_code_is_refused(tmp_path):
    path = save(tmp_path, dict(state_dict=official_state_dict('s'),
                               payload=RunsCode('touch pwned')))
    with pytest.raises(UnsafeCheckpointError):
        get_model(config_path('s'), pretrained=path)
    assert not (tmp_path / 'pwned').exists()


def test_backbone_ending_with_its_norm_is_refused():
    config = Config.fromfile(config_path('s'))
    config.model.backbone.final_norm = True
    with pytest.raises(ConfigError, match='final_norm=False'):
        MODELS.build(config.model)


@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_parameters_are_the_official_ones(arch):
    """As many as the official network's learned tensors hold, which the
    official table quotes (22.7M, 33.5M, 57.5M)."""
    model = MODELS.build(Config.fromfile(config_path(arch)).model)
    ours = sum(p.numel() for p in model.parameters())
    official = sum(
        v.numel() for k, v in official_state_dict(arch).items()
        if v.is_floating_point() and not k.endswith(
            ('running_mean', 'running_var', '.w_ll', '.w_lh', '.w_hl',
             '.w_hh', '.filters')))
    assert ours == official
    assert round(ours / 1e6, 1) == QUOTED_PARAMS[arch]


def test_training_step_learns_from_both_heads():
    """A step with mixed labels (Mixup/CutMix) gives the class token's loss
    and the tokens' loss, and moves every weight of the head."""
    config = Config.fromfile(config_path('s'))
    config.model.backbone.arch = dict(
        stem_width=8, embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 3, 4],
        mlp_ratios=[2, 2, 2, 2], depths=[1, 1, 1, 1], sr_ratios=[4, 2, 1, 1])
    config.model.head.update(in_channels=64, num_heads=4)
    config.model.data_preprocessor = config.data_preprocessor
    model = MODELS.build(config.model)
    model.init_weights()
    model.train()
    samples = [DataSample().set_gt_label(label) for label in (3, 7)]
    data = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
                        for _ in samples], data_samples=samples)
    data = model.data_preprocessor(data, True)
    assert 'gt_score' in data['data_samples'][0]  # mixed by the batch augments
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss', 'loss_aux'}
    sum(losses.values()).backward()
    for name, param in model.head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_configs_state_the_official_recipe():
    small, large = (Config.fromfile(config_path(a)) for a in ('s', 'l'))
    assert small.model.backbone.drop_path_rate == 0.1
    assert Config.fromfile(config_path('b')).model.backbone.drop_path_rate \
        == 0.1
    assert large.model.backbone.drop_path_rate == 0.3
    assert large.optim_wrapper.clip_grad == dict(max_norm=1.0)
    assert small.train_cfg.max_epochs == 310
    assert small.optim_wrapper.optimizer.lr == 1e-3
    assert small.optim_wrapper.optimizer.weight_decay == 0.05
    assert small.train_dataloader.batch_size * 8 == 1024
    warmup, cosine = small.param_scheduler
    assert warmup.end == 5 and warmup.start_factor * 1e-3 == pytest.approx(
        1e-6)
    assert cosine.eta_min == 1e-5 and cosine.end == 310
    assert [a.type for a in small.model.train_cfg.augments] == ['Mixup',
                                                                 'CutMix']
    assert small.model.head.loss.label_smooth_val == 0.1
    steps = {step['type']: step for step in small.train_pipeline}
    assert steps['RandomErasing']['erase_prob'] == 0.25
    assert steps['RandAugment']['magnitude_level'] == 9
    assert steps['RandAugment']['magnitude_std'] == 0.5
    assert ARCHS['s']['dims'][-1] == small.model.head.in_channels
