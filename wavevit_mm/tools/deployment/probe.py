"""The input an exported file is checked on: a picture through the
config's test pipeline and data preprocessor, as the model meets images.

Random noise is a poor probe of a trained model: a detector may keep no
detection on it. The picture is, in this order, the one the user names
(``--image``), the first image of the config's validation set where that
folder exists, or one the package draws (:func:`synthetic_image`: shapes on
a textured background), so that a check never needs a download.
"""
import os
import os.path as osp
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from mmengine.config import Config
from torch import Tensor, nn

from ..inference import read_image
from .inference import inference_pipeline

#: Image files the validation folders are searched for.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
#: Size (H, W) of the picture the package draws.
SYNTHETIC_SIZE = (480, 640)


class Probe(NamedTuple):
    """The picture a file is checked on (RGB, HxWx3 uint8) and where it
    comes from, in words."""
    image: np.ndarray
    source: str


def synthetic_image(size: Tuple[int, int] = SYNTHETIC_SIZE,
                    seed: int = 0) -> np.ndarray:
    """A deterministic RGB picture (uint8): a smooth textured background
    with filled circles, rectangles and triangles of several colours and
    sizes, so that a network sees edges, corners and flat regions."""
    import cv2
    rng = np.random.default_rng(seed)
    height, width = size
    coarse = rng.uniform(40, 215, size=(3, 4, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height),
                       interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width]
    image += 10 * np.sin((xx + 0.5 * yy) / 7.)[..., None]
    image += rng.normal(0, 5, size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for k in range(12):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        radius = int(rng.integers(min(size) // 20, min(size) // 6))
        cx = int(rng.integers(radius, width - radius))
        cy = int(rng.integers(radius, height - radius))
        if k % 3 == 0:
            cv2.circle(image, (cx, cy), radius, color, -1)
        elif k % 3 == 1:
            cv2.rectangle(image, (cx - radius, cy - radius // 2),
                          (cx + radius, cy + radius // 2), color, -1)
        else:
            corners = np.array([[cx, cy - radius], [cx - radius, cy + radius],
                                [cx + radius, cy + radius]], np.int32)
            cv2.fillPoly(image, [corners], color)
    return image


def validation_image(cfg: Config) -> Optional[str]:
    """The first image (by name) of the config's test set folder, if that
    folder exists where the config says (relative to the working
    directory, as mmengine reads it)."""
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    prefix = dataset.get('data_prefix') or {}
    folder = prefix.get('img') or prefix.get('img_path')
    if not folder:
        return None
    folder = osp.join(dataset.get('data_root') or '', folder)
    if not osp.isdir(folder):
        return None
    names = sorted(name for name in os.listdir(folder)
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    return osp.join(folder, names[0]) if names else None


def probe_image(cfg: Config, path: Optional[str] = None) -> Probe:
    """The picture to check a file on: ``path``, else the config's first
    validation image, else :func:`synthetic_image`."""
    if path:
        return Probe(read_image(path), str(path))
    found = validation_image(cfg)
    if found:
        return Probe(read_image(found),
                     f'{found} (the config\'s first validation image)')
    return Probe(synthetic_image(),
                 'a picture of shapes the package draws (no --image given, '
                 'no validation images where the config looks)')


def check_input(model: nn.Module, cfg: Config, image: np.ndarray,
                size: Tuple[int, int]) -> Tensor:
    """``image`` (RGB) as the model meets it, at exactly ``size``: the
    config's test pipeline and the model's data preprocessor (resized,
    normalised, padded), then zero-padded at the bottom and right to
    ``size`` where smaller, cut there where larger."""
    data = inference_pipeline(cfg)(dict(img=image[..., ::-1].copy(), img_id=0))
    with torch.no_grad():
        inputs = model.data_preprocessor(
            dict(inputs=[data['inputs']],
                 data_samples=[data['data_samples']]), False)['inputs']
    height, width = size
    inputs = inputs[:, :, :height, :width].float()
    return torch.nn.functional.pad(
        inputs, (0, width - inputs.shape[3], 0, height - inputs.shape[2]))
