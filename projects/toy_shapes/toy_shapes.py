"""Deterministic toy datasets in the exact COCO, ADE20K and ImageNet
on-disk formats.

Coloured circles, squares and triangles on textured backgrounds. The COCO
set is an ``instances_*.json`` file (circles as RLE masks, squares and
triangles as polygons) plus JPEG images; the ADE20K set is the
``images/{training,validation}/*.jpg`` + ``annotations/.../*.png`` layout with
genuine ADE20K label maps: 0 is "unlabelled" (``reduce_zero_label=True``) and
k + 1 is ADE20K class k. The shapes are labelled with ADE20K classes that
stand in for them (the background is a 'wall', circles are 'ball', squares
'box', triangles 'tent'), so mmseg's ADE20KDataset reads them unchanged and
maps the four classes to 0-3. The ImageNet set
(``{train,val}/<class>/*.jpg``) shows one shape per image, its class.

Usage::

    python projects/toy_shapes/toy_shapes.py data/toy_coco --format coco
    python projects/toy_shapes/toy_shapes.py data/toy_ade --format ade20k
    python projects/toy_shapes/toy_shapes.py data/toy_in --format imagenet
"""
import argparse
import json
import math
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CLASSES = ('circle', 'square', 'triangle')
# each class has its own hue range so a small model learns it quickly
CLASS_COLORS = ((220, 60, 50), (60, 190, 70), (50, 90, 220))
# ADE20K classes standing in for background, circle, square, triangle, and
# their indices among ADE20K's 150 classes
SEG_CLASSES = ('wall', 'ball', 'box', 'tent')
SEG_ADE20K_INDICES = (0, 119, 41, 114)
ADE_SPLITS = {'train': 'training', 'val': 'validation'}


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random background with faint stripes, (H, W, 3) uint8."""
    coarse = rng.uniform(70, 190, size=(4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize(
        (width, height), Image.BICUBIC), dtype=np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 16)
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = 12 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) *
                          2 * math.pi / period)
    noise = rng.normal(0, 6, size=(height, width, 1))
    return np.clip(base + stripes[..., None] + noise, 0, 255).astype(np.uint8)


def _shape_polygon(label: int, cx: float, cy: float, radius: float,
                   angle: float) -> List[Tuple[float, float]]:
    if label == 1:  # square
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
    else:  # triangle
        corners = [angle + k * 2 * math.pi / 3 for k in range(3)]
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a))
            for a in corners]


def _draw_shape(label: int, cx: float, cy: float, radius: float,
                angle: float, size: Tuple[int, int]
                ) -> Tuple[np.ndarray, List[Tuple[float, float]]]:
    """The binary (H, W) mask of one shape and its polygon (empty for a
    circle)."""
    canvas = Image.new('L', size, 0)
    draw = ImageDraw.Draw(canvas)
    polygon: List[Tuple[float, float]] = []
    if label == 0:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius],
                     fill=1)
    else:
        polygon = _shape_polygon(label, cx, cy, radius, angle)
        draw.polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=np.uint8), polygon


def render_image(rng: np.random.Generator, height: int, width: int,
                 max_shapes: int = 3) -> Tuple[np.ndarray, List[Dict]]:
    """One image and its instances (label, mask, polygon), non-overlapping
    enough that every instance stays visible."""
    image = _texture(rng, height, width)
    occupied = np.zeros((height, width), dtype=bool)
    instances: List[Dict] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(CLASSES)))
            radius = float(rng.uniform(0.1, 0.22) * min(height, width))
            cx = float(rng.uniform(radius, width - radius))
            cy = float(rng.uniform(radius, height - radius))
            mask, polygon = _draw_shape(label, cx, cy, radius,
                                        float(rng.uniform(0, 2 * math.pi)),
                                        (width, height))
            if (mask.astype(bool) & occupied).sum() < 0.05 * mask.sum():
                break
        else:
            continue
        color = np.clip(np.array(CLASS_COLORS[label]) +
                        rng.integers(-30, 31, size=3), 0, 255)
        shade = rng.normal(0, 8, size=(height, width, 1))
        filled = np.clip(color + shade, 0, 255).astype(np.uint8)
        image = np.where(mask[..., None].astype(bool), filled, image)
        occupied |= mask.astype(bool)
        instances.append(dict(label=label, mask=mask, polygon=polygon))
    # later shapes cover earlier ones: keep each mask to its visible part
    visible = np.zeros((height, width), dtype=bool)
    for inst in reversed(instances):
        inst['mask'] = inst['mask'].astype(bool) & ~visible
        visible |= inst['mask']
    return image, instances


def _coco_annotation(inst: Dict, ann_id: int, image_id: int) -> Dict:
    mask = np.asfortranarray(inst['mask'].astype(np.uint8))
    rle = mask_utils.encode(mask)
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    if inst['polygon'] and inst['mask'].sum() == _polygon_area_pixels(
            inst, mask.shape):
        segmentation = [[round(c, 2) for point in inst['polygon']
                         for c in point]]
    else:  # circles, and shapes partly covered by another one
        segmentation = dict(size=list(rle['size']),
                            counts=rle['counts'].decode('ascii'))
    return dict(id=ann_id, image_id=image_id,
                category_id=inst['label'] + 1, segmentation=segmentation,
                area=float(mask_utils.area(rle)), bbox=[x, y, w, h],
                iscrowd=0)


def _polygon_area_pixels(inst: Dict, shape: Tuple[int, int]) -> int:
    canvas = Image.new('L', (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(inst['polygon'], fill=1)
    return int(np.asarray(canvas).sum())


def make_coco(root: str, num_train: int = 200, num_val: int = 50,
              image_size: Tuple[int, int] = (128, 128), seed: int = 0
              ) -> Dict[str, str]:
    """Write ``root/{train,val}/*.jpg`` and
    ``root/annotations/instances_{train,val}.json``; return the json paths."""
    height, width = image_size
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CLASSES)]
    paths = {}
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for split, count in (('train', num_train), ('val', num_val)):
        rng = np.random.default_rng([seed, 0 if split == 'train' else 1])
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image, instances = render_image(rng, height, width)
            file_name = f'{index:06d}.jpg'
            Image.fromarray(image).save(
                os.path.join(root, split, file_name), quality=95)
            image_id = index + 1
            images.append(dict(id=image_id, file_name=file_name,
                               height=height, width=width))
            for inst in instances:
                annotations.append(_coco_annotation(
                    inst, len(annotations) + 1, image_id))
        path = os.path.join(root, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
        paths[split] = path
    return paths


def make_ade20k(root: str, num_train: int = 200, num_val: int = 50,
                image_size: Tuple[int, int] = (128, 128), seed: int = 0
                ) -> None:
    """Write ``root/images/{training,validation}/*.jpg`` and the matching
    ``root/annotations/.../*.png`` ADE20K label maps (0 unlabelled, ADE20K
    class index + 1 elsewhere, see :data:`SEG_CLASSES`)."""
    height, width = image_size
    for split, count in (('train', num_train), ('val', num_val)):
        rng = np.random.default_rng([seed, 2 if split == 'train' else 3])
        image_dir = os.path.join(root, 'images', ADE_SPLITS[split])
        label_dir = os.path.join(root, 'annotations', ADE_SPLITS[split])
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for index in range(count):
            image, instances = render_image(rng, height, width)
            label_map = np.full((height, width), SEG_ADE20K_INDICES[0] + 1,
                                dtype=np.uint8)
            for inst in instances:
                label_map[inst['mask']] = \
                    SEG_ADE20K_INDICES[inst['label'] + 1] + 1
            name = f'ADE_toy_{index:08d}'
            Image.fromarray(image).save(
                os.path.join(image_dir, name + '.jpg'), quality=95)
            Image.fromarray(label_map).save(
                os.path.join(label_dir, name + '.png'))


def make_imagenet(root: str, num_train: int = 200, num_val: int = 50,
                  image_size: Tuple[int, int] = (128, 128), seed: int = 0
                  ) -> None:
    """Write ``root/{train,val}/<class>/*.jpg``, the ImageNet folder layout
    mmpretrain's ``CustomDataset`` reads: one shape per image, its class
    (:data:`CLASSES`) the folder."""
    height, width = image_size
    for split, count in (('train', num_train), ('val', num_val)):
        rng = np.random.default_rng([seed, 4 if split == 'train' else 5])
        for index in range(count):
            image, (instance, ) = render_image(rng, height, width,
                                               max_shapes=1)
            folder = os.path.join(root, split, CLASSES[instance['label']])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(
                os.path.join(folder, f'toy_{index:08d}.jpg'), quality=95)


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='output directory')
    parser.add_argument('--format', choices=['coco', 'ade20k', 'imagenet'],
                        default='coco')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128),
                        metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] = None) -> None:
    args = parse_args(argv)
    make = dict(coco=make_coco, ade20k=make_ade20k,
                imagenet=make_imagenet)[args.format]
    make(args.root, args.num_train, args.num_val, tuple(args.size), args.seed)
    print(f'wrote toy {args.format} dataset to {args.root}')


if __name__ == '__main__':
    main()
