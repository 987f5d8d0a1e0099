"""wavevit_mm.tools.deployment.probe: the picture an exported file is
checked on and the batch it becomes, against the normalisation written
out from the config."""
import os

import numpy as np
import pytest
import torch

from deployment_models import RETINANET_CONFIG
from toy_runs import SEG_CONFIG
from wavevit_mm.errors import InputError
from wavevit_mm.tools import build_model, load_config
from wavevit_mm.tools.deployment import (check_input, probe_image,
                                        synthetic_image)
from wavevit_mm.tools.inference import read_image


def normalised(image, cfg):
    """The RGB image as the config's data preprocessor's mean and std
    make it, written out (1x3xHxW)."""
    preprocessor = cfg.model.data_preprocessor
    mean = torch.tensor(preprocessor.mean).view(3, 1, 1)
    std = torch.tensor(preprocessor.std).view(3, 1, 1)
    rgb = torch.from_numpy(image.copy()).permute(2, 0, 1).float()
    return ((rgb - mean) / std)[None]


@pytest.fixture(scope='module')
def retinanet():
    cfg = load_config(RETINANET_CONFIG)
    return cfg, build_model(cfg)


def test_the_drawn_picture_is_the_same_every_time_and_not_flat():
    image = synthetic_image()
    assert image.shape == (480, 640, 3) and image.dtype == np.uint8
    assert np.array_equal(image, synthetic_image())
    assert not np.array_equal(image, synthetic_image(seed=1))
    assert image.std() > 30
    # many colours, as shapes on a textured background have
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000


def test_an_image_of_the_export_size_is_only_normalised(retinanet):
    """The toy test pipeline keeps a 128x128 image as it is: the batch is
    the image normalised with the config's mean and std, in RGB."""
    cfg, model = retinanet
    image = synthetic_image((128, 128), seed=3)
    x = check_input(model, cfg, image, (128, 128))
    torch.testing.assert_close(x, normalised(image, cfg))


def test_the_batch_is_padded_with_zeros_or_cut_to_the_size(retinanet):
    """A 128x64 image stays 128x64 after the toy pipeline (the longer side
    is 128): cut to 96 rows, zero-padded to 80 columns."""
    cfg, model = retinanet
    image = synthetic_image((128, 64), seed=4)
    x = check_input(model, cfg, image, (96, 80))
    assert x.shape == (1, 3, 96, 80)
    torch.testing.assert_close(x[..., :64], normalised(image, cfg)[:, :, :96])
    assert torch.all(x[..., 64:] == 0)


def test_a_segmentors_picture_goes_through_its_own_pipeline():
    """mmseg's pipeline and preprocessor: the toy ADE20K pipeline resizes
    the 256x256 picture to 128x128 (scale 512x128, keep ratio)."""
    import cv2
    cfg = load_config(SEG_CONFIG)
    model = build_model(cfg)
    image = synthetic_image((256, 256), seed=5)
    x = check_input(model, cfg, image, (128, 128))
    resized = cv2.resize(image, (128, 128), interpolation=cv2.INTER_LINEAR)
    torch.testing.assert_close(x, normalised(resized, cfg), atol=1e-5,
                               rtol=0)


def test_the_picture_is_the_users_else_the_configs_else_drawn(
        retinanet, toy_workspace, tmp_path, monkeypatch):
    cfg, _ = retinanet
    val = toy_workspace / 'data' / 'toy_coco' / 'val'
    chosen = str(val / sorted(os.listdir(val))[-1])
    probe = probe_image(cfg, chosen)
    assert probe.source == chosen
    assert np.array_equal(probe.image, read_image(chosen))
    monkeypatch.chdir(toy_workspace)
    probe = probe_image(cfg)
    name = sorted(os.listdir(val))[0]
    assert probe.source == (f'data/toy_coco/val/{name} (the config\'s first '
                            f'validation image)')
    assert np.array_equal(probe.image, read_image(str(val / name)))
    monkeypatch.chdir(tmp_path)
    probe = probe_image(cfg)
    assert probe.source.startswith('a picture of shapes the package draws')
    assert np.array_equal(probe.image, synthetic_image())


def test_a_picture_that_cannot_be_read_is_named(retinanet, tmp_path):
    cfg, _ = retinanet
    bad = tmp_path / 'notes.jpg'
    bad.write_text('not an image')
    with pytest.raises(InputError, match='notes.jpg is not an image file'):
        probe_image(cfg, str(bad))
    with pytest.raises(FileNotFoundError, match='image file not found'):
        probe_image(cfg, str(tmp_path / 'missing.jpg'))
