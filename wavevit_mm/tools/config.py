"""Config loading and the checks run before any work is done: the backbone
settings, the pretrained weights, the dataset paths."""
import argparse
import os
import os.path as osp
from typing import Any, Iterator, Optional, Sequence, Tuple

from mmengine.config import Config, DictAction

from ..errors import ConfigError, DataError
from ..models import WaveViT, read_backbone_weights
from ..models.init_cfg import split_init_cfg
from ..models.pretrained import check_fits


def load_config(path: str, options: Optional[dict] = None) -> Config:
    """The config file with ``--cfg-options key=value ...`` applied.

    A config that does not parse or inherit (e.g. a dict given for a key
    its base sets to None) is a ConfigError naming the file or the option.
    """
    try:
        cfg = Config.fromfile(path)
    except (SyntaxError, TypeError, KeyError) as error:
        raise ConfigError(f'{path}: {error}') from None
    if options:
        try:
            cfg.merge_from_dict(options)
        except (TypeError, KeyError, ValueError) as error:
            raise ConfigError(f'--cfg-options: {error}') from None
    return cfg


def scope_of(cfg: Config) -> str:
    """``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``: the registries the
    config builds from."""
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg', 'mmpretrain'):
        raise ConfigError(
            f"config default_scope must be 'mmdet', 'mmseg' or 'mmpretrain' "
            f"(it picks the registries to build from), got {scope!r}")
    return scope


def inference_dataset(cfg: Config) -> dict:
    """The config's ``test_dataloader.dataset``, whose pipeline brings an
    image to the model in inference and in the export's check (as in
    mmdet's and mmseg's inference APIs); a ConfigError where it has none."""
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    if not dataset.get('pipeline'):
        raise ConfigError(
            f'{cfg.filename or "the config"} has no '
            f'test_dataloader.dataset.pipeline: inference and the export\'s '
            f'check bring an image to the model through the config\'s test '
            f'pipeline, as mmdet\'s and mmseg\'s inference does. Inherit the '
            f'test_dataloader of the dataset config the model was trained '
            f'on (e.g. _base_ = [\'mmdet::_base_/datasets/'
            f'coco_detection.py\']).')
    return dataset


def setup_work_dir(cfg: Config, config_path: str,
                   work_dir: Optional[str]) -> None:
    """``--work-dir``, else the config's, else ``work_dirs/<config>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``tools/train.py`` and ``tools/test.py`` share."""
    parser.add_argument('--work-dir', help='the folder for logs, metrics '
                        'and checkpoints (default: work_dirs/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_run_config(args: argparse.Namespace, splits: Sequence[str],
                    pretrained: bool = False) -> Config:
    """What ``tools/train.py`` and ``tools/test.py`` start from: the config
    (``args.config``) with the arguments of :func:`add_run_arguments`
    applied (``--local-rank`` of torch.distributed.launch becomes
    ``LOCAL_RANK``, as torchrun sets it), its backbone and the data paths
    of ``splits`` checked (:func:`check_backbone_config`,
    :func:`check_data_paths`)."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    scope_of(cfg)
    check_backbone_config(cfg, pretrained)
    check_data_paths(cfg, splits)
    cfg.launcher = args.launcher
    setup_work_dir(cfg, args.config, args.work_dir)
    return cfg


def walk(node: Any, path: str = '') -> Iterator[Tuple[str, dict]]:
    """(config path, dict) of every dict in a config node, outermost first,
    e.g. ``('model.backbone', {...})``."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from walk(value, f'{path}[{index}]')


def find_typed(node: Any, types: Sequence[str], path: str = ''
               ) -> Iterator[Tuple[str, dict]]:
    """The dicts of ``node`` whose type is one of ``types`` (also with a
    registry scope, ``mmdet.WaveViT``), with their config paths."""
    for where, value in walk(node, path):
        kind = value.get('type')
        if isinstance(kind, str) and kind.split('.')[-1] in types:
            yield where, value


def check_backbone_config(cfg: Config, pretrained: bool = False) -> None:
    """Build every WaveViT of ``cfg.model`` once, so that a bad arch,
    ``out_indices`` or ``frozen_stages`` is a ConfigError naming the config
    key before any data is read.

    With ``pretrained`` (training), the file of each
    ``dict(type='Pretrained', ...)`` entry of its ``init_cfg`` is read and checked against
    the backbone too: a missing, broken or foreign checkpoint is reported
    now rather than after the datasets are loaded (inside
    :func:`wavevit_mm.checkpoint.read_once`, the backbone's initialisation
    then takes the file as read here).
    """
    for path, node in find_typed(cfg.model, ['WaveViT'], 'model'):
        kwargs = {k: v for k, v in node.items()
                  if k != 'type' and not k.startswith('_')}
        try:
            backbone = WaveViT(**kwargs)
        except (ValueError, TypeError) as error:
            raise ConfigError(f'{path}: {error}') from None
        if not pretrained:
            continue
        for entry in split_init_cfg(kwargs.get('init_cfg'))[1]:
            weights, report = read_backbone_weights(
                entry['checkpoint'], WaveViT.arch_zoo, entry.get('prefix'),
                entry.get('trusted', False))
            check_fits(weights, backbone, report.filename)


def _is_file_dataset(node: dict) -> bool:
    """A dataset config that reads files itself (not a wrapper)."""
    return ('dataset' not in node and 'datasets' not in node
            and any(k in node for k in ('ann_file', 'data_prefix',
                                        'data_root')))


def _under_root(root: str, path: str) -> str:
    return path if not root or osp.isabs(path) else osp.join(root, path)


def check_data_paths(cfg: Config, splits: Sequence[str]) -> None:
    """Raise DataError when an annotation file or a data folder of the
    datasets of ``splits`` (``'train'``, ``'val'``, ``'test'``) does not
    exist, instead of failing at the first batch or, for the validation
    set, after the first training epoch."""
    problems = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or (split == 'val' and not cfg.get('val_cfg')):
            continue
        datasets = walk(loader.get('dataset'), f'{split}_dataloader.dataset')
        for path, dataset in datasets:
            if not _is_file_dataset(dataset) or dataset.get('backend_args'):
                continue  # wrappers, pipelines; remote storage
            root = dataset.get('data_root') or ''
            ann_file = dataset.get('ann_file')
            if ann_file and not osp.exists(_under_root(root, ann_file)):
                problems.append(f'{path}: annotation file '
                                f'{_under_root(root, ann_file)} does not '
                                f'exist')
            prefixes = dataset.get('data_prefix') or {}
            if isinstance(prefixes, str):  # mmpretrain's datasets
                prefixes = dict(img_path=prefixes)
            for key, prefix in prefixes.items():
                if not isinstance(prefix, str):
                    continue
                folder = _under_root(root, prefix)
                if folder and '://' not in folder and not osp.isdir(folder):
                    problems.append(f'{path}: data_prefix.{key} folder '
                                    f'{folder} does not exist')
    if problems:
        raise DataError(
            f'{"; ".join(problems)} (relative paths are relative to the '
            f'working directory, {os.getcwd()}).')
