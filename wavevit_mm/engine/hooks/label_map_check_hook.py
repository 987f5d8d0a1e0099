"""Segmentation label maps checked before training or testing: each must
exist and have its image's size."""
import os.path as osp
from typing import Any, Iterator, List, Sequence

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from PIL import Image

from ...errors import DataError


def _leaf_datasets(dataset) -> Iterator[Any]:
    """The datasets inside Concat/Repeat/ClassBalanced wrappers."""
    if hasattr(dataset, 'datasets'):
        for inner in dataset.datasets:
            yield from _leaf_datasets(inner)
    elif hasattr(dataset, 'dataset'):
        yield from _leaf_datasets(dataset.dataset)
    else:
        yield dataset


def label_map_problems(dataset, limit: int = 3) -> List[str]:
    """Label maps of a segmentation dataset that are missing or whose size
    differs from their image's, as sentences (at most ``limit``).

    Only the image headers are read. Datasets without label maps (or on
    storage other than the local disk) give none.
    """
    problems: List[str] = []
    for leaf in _leaf_datasets(dataset):
        if not hasattr(leaf, 'get_data_info'):
            continue
        for index in range(len(leaf)):
            info = leaf.get_data_info(index)
            label, image = info.get('seg_map_path'), info.get('img_path')
            if not (isinstance(label, str) and isinstance(image, str)) or \
                    '://' in label:
                break
            if not osp.isfile(label):
                problems.append(f'label map {label} of {image} does not '
                                f'exist')
            else:
                with Image.open(image) as img, Image.open(label) as seg:
                    if img.size != seg.size:
                        problems.append(
                            f'label map {label} is {seg.size[1]}x'
                            f'{seg.size[0]} but its image {image} is '
                            f'{img.size[1]}x{img.size[0]} (HxW)')
            if len(problems) >= limit:
                return problems
    return problems


@HOOKS.register_module()
class LabelMapCheckHook(Hook):
    """Check every label map of the segmentation datasets before training
    (train and val sets) or testing, instead of failing mid-run with
    ``stack expects each tensor to be equal size`` or an IoU shape error.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        self._check(runner, 'train_dataloader', runner.train_dataloader)
        if runner.val_loop is not None:
            self._check(runner, 'val_dataloader', runner.val_dataloader)

    def before_test(self, runner) -> None:
        self._check(runner, 'test_dataloader', runner.test_dataloader)

    @staticmethod
    def _check(runner, name: str, dataloader: Sequence) -> None:
        problems = label_map_problems(dataloader.dataset)
        if problems:
            raise DataError(
                f'{name}.dataset: {"; ".join(problems)}. Every label map '
                f'must have the size of its image (label maps are resized '
                f'with their image, so a mismatch misplaces every label).')
