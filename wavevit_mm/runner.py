"""Runner setup shared by ``tools/train.py`` and ``tools/test.py``.

One pair of tools serves detection and segmentation configs: mmengine's
Runner builds everything from the registries of the config's
``default_scope`` (``mmdet`` or ``mmseg``). What is added here:

* distributed runs on machines without GPUs (gloo backend, CPU DDP), so
  ``tools/dist_train.sh CONFIG 2`` works on a laptop;
* safe checkpoint loading: torch >= 2.6 loads with ``weights_only=True``,
  which refuses mmengine's own checkpoints (message-hub buffers, numpy
  values); :func:`safe_checkpoint_loading` allow-lists exactly those types
  for ``load_from``, ``--resume`` and testing;
* the OpenMMLab command-line switches (``--amp``, ``--auto-scale-lr``,
  ``--resume``, ``--out``, ``--show-dir``, ``--tta``) applied to the config;
* checks of what the user gave, before any work is done: the backbone
  settings, the dataset paths, the checkpoint to resume or load from;
  ``--resume`` never picks a checkpoint that does not read back;
* the hooks of :mod:`wavevit_mm.hooks` (atomic checkpoints, reseeding per
  epoch, a stop at the first non-finite loss, label-map checks).
"""
import contextlib
import logging
import os
import os.path as osp
import re
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

from .errors import ConfigError, DataError, one_paragraph


@contextlib.contextmanager
def safe_checkpoint_loading() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read checkpoints written by
    mmengine's Runner, and nothing that could run code."""
    from .checkpoint import SAFE_GLOBALS
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        yield


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
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ConfigError(
            f"config default_scope must be 'mmdet' or 'mmseg' (it picks the "
            f"registries to build from), got {scope!r}")
    return scope


def setup_work_dir(cfg: Config, config_path: str,
                   work_dir: Optional[str]) -> None:
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def setup_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Make a distributed launch work without CUDA.

    mmengine initialises the process group with the config's backend
    (nccl) after pinning a CUDA device, and wraps the model in DDP with
    ``device_ids=[LOCAL_RANK]``; neither exists on a CPU-only machine. Here
    the group is created with gloo first (mmengine then reuses it) and DDP
    gets ``device_ids=None``.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ConfigError(
            f"without GPUs only the 'pytorch' launcher (torchrun, "
            f"tools/dist_train.sh) is supported, got {launcher!r}")
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = dict(type='MMDistributedDataParallel', device_ids=None,
                   broadcast_buffers=False,
                   find_unused_parameters=cfg.get('find_unused_parameters',
                                                  False))
    wrapper.update(cfg.get('model_wrapper_cfg') or {})
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    cfg.merge_from_dict(dict(env_cfg=dict(dist_cfg=dict(backend='gloo'))))
    _sync_bn_to_bn(cfg.model)  # SyncBN has no CPU implementation


def shut_down_distributed() -> None:
    """Wait for all ranks, then destroy the process group, so that its
    communication threads are gone before the interpreter exits (a gloo
    group left alive can abort a rank at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _sync_bn_to_bn(node) -> None:
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def apply_train_options(cfg: Config, amp: bool = False,
                        auto_scale_lr: bool = False,
                        resume: Optional[str] = None) -> None:
    """``--amp``, ``--auto-scale-lr`` and ``--resume [CKPT]``."""
    if amp and torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    elif amp:  # mmengine's AmpOptimWrapper is GPU-only; see wavevit_mm.amp
        cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
        for key in ('loss_scale', 'dtype'):
            cfg.optim_wrapper.pop(key, None)
    if auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ConfigError(
                '--auto-scale-lr needs auto_scale_lr = dict('
                'base_batch_size=N) in the config (the total batch size its '
                'learning rate was set for)')
        cfg.auto_scale_lr.enable = True
    if resume == 'auto':  # the checkpoint found has been read back
        cfg.load_from = find_resume_checkpoint(cfg.work_dir)
        cfg.resume = cfg.load_from is not None
        if not cfg.resume:
            print_log(f'--resume: no checkpoint in {cfg.work_dir}, training '
                      f'from the start', logger='current')
        return
    if resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    if cfg.get('load_from'):
        from .checkpoint import MODEL_TRUST_HINT, safe_load
        # a clear error now rather than a traceback from the Runner later
        safe_load(cfg.load_from, trust_hint=MODEL_TRUST_HINT)


CHECKPOINT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from.

    The one named in the work dir's ``last_checkpoint`` if it reads back
    (:func:`wavevit_mm.checkpoint.safe_load`); otherwise, with a warning,
    the newest ``epoch_N.pth`` / ``iter_N.pth`` there that does. None when
    there is no checkpoint; CheckpointError when none of them reads back.
    """
    from .checkpoint import MODEL_TRUST_HINT, CheckpointError, safe_load
    candidates: List[str] = []
    folders = [work_dir]
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named:
            candidates.append(named)
            folders.append(osp.dirname(named))
    numbered: List[Tuple[int, float, str]] = []
    for folder in dict.fromkeys(folders):
        if not osp.isdir(folder):
            continue
        for name in os.listdir(folder):
            match = CHECKPOINT_NAME.match(name)
            if match:
                path = osp.join(folder, name)
                numbered.append((int(match[1]), osp.getmtime(path), path))
    candidates += [path for *_, path in sorted(numbered, reverse=True)]
    problems: List[str] = []
    for path in dict.fromkeys(candidates):
        try:
            safe_load(path, trust_hint=MODEL_TRUST_HINT)
        except (CheckpointError, FileNotFoundError) as error:
            problems.append(one_paragraph(error))
            continue
        if problems:
            print_log(f'--resume: {" ".join(problems)} Resuming from {path} '
                      f'instead, the newest checkpoint that reads back.',
                      logger='current', level=logging.WARNING)
        return path
    if problems:
        raise CheckpointError(
            f'Cannot resume from {work_dir}: no checkpoint there reads back. '
            f'{" ".join(problems)} Delete the broken files to train from '
            f'the start, or pass --resume CHECKPOINT.')
    return None


# ------------------------------------------------------------ input checks

def _find_typed(node: Any, types: Sequence[str], path: str
                ) -> Iterator[Tuple[str, dict]]:
    """(config path, dict) of every dict in ``node`` whose type is one of
    ``types`` (also with a registry scope, ``mmdet.WaveViT``)."""
    if isinstance(node, dict):
        kind = node.get('type')
        if isinstance(kind, str) and kind.split('.')[-1] in types:
            yield path, node
        for key, value in node.items():
            yield from _find_typed(value, types, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _find_typed(value, types, f'{path}[{index}]')


def check_backbone_config(cfg: Config, pretrained: bool = False) -> None:
    """Build every WaveViT of ``cfg.model`` once, so that a bad arch,
    ``out_indices`` or ``frozen_stages`` is a ConfigError naming the config
    key before any data is read.

    With ``pretrained`` (training), the file of an
    ``init_cfg=dict(type='Pretrained', ...)`` is read and checked against
    the backbone too: a missing, broken or foreign checkpoint is reported
    now rather than after the datasets are loaded (it is read again when
    the Runner initialises the weights).
    """
    from .checkpoint import check_fits, read_backbone_weights
    from .models import WaveViT
    for path, node in _find_typed(cfg.model, ['WaveViT'], 'model'):
        kwargs = {k: v for k, v in node.items()
                  if k != 'type' and not k.startswith('_')}
        try:
            backbone = WaveViT(**kwargs)
        except (ValueError, TypeError) as error:
            raise ConfigError(f'{path}: {error}') from None
        init_cfg = kwargs.get('init_cfg')
        if pretrained and isinstance(init_cfg, dict) and \
                init_cfg.get('type') == 'Pretrained':
            weights, report = read_backbone_weights(
                init_cfg['checkpoint'], init_cfg.get('prefix'),
                init_cfg.get('trusted', False))
            check_fits(weights, backbone, report.filename)


def _dataset_configs(node: Any, path: str) -> Iterator[Tuple[str, dict]]:
    """The datasets reading files in a dataset config, through
    Concat/Repeat/ClassBalanced wrappers."""
    if isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _dataset_configs(value, f'{path}[{index}]')
    elif isinstance(node, dict):
        if 'dataset' in node or 'datasets' in node:
            key = 'dataset' if 'dataset' in node else 'datasets'
            yield from _dataset_configs(node[key], f'{path}.{key}')
        else:
            yield path, node


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
        for path, dataset in _dataset_configs(loader.get('dataset'),
                                              f'{split}_dataloader.dataset'):
            if dataset.get('backend_args'):
                continue  # remote storage
            root = dataset.get('data_root') or ''
            ann_file = dataset.get('ann_file')
            if ann_file and not osp.exists(_under_root(root, ann_file)):
                problems.append(f'{path}: annotation file '
                                f'{_under_root(root, ann_file)} does not '
                                f'exist')
            prefixes = dataset.get('data_prefix') or {}
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


# ----------------------------------------------------------- safeguards

def add_safeguards(cfg: Config) -> None:
    """The hooks of :mod:`wavevit_mm.hooks` for a training run: the
    checkpoint hook becomes :class:`AtomicCheckpointHook`, and
    EpochSeedHook, FiniteCheckHook and LabelMapCheckHook join the
    custom hooks (once)."""
    checkpoint = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint is not None and checkpoint.get('type') in (
            'CheckpointHook', 'mmengine.CheckpointHook'):
        checkpoint['type'] = 'AtomicCheckpointHook'
    _add_custom_hooks(cfg, ['EpochSeedHook', 'FiniteCheckHook',
                            'LabelMapCheckHook'])


def add_test_safeguards(cfg: Config) -> None:
    """LabelMapCheckHook for a test run."""
    _add_custom_hooks(cfg, ['LabelMapCheckHook'])


def _add_custom_hooks(cfg: Config, names: Sequence[str]) -> None:
    hooks = list(cfg.get('custom_hooks') or [])
    present = {hook.get('type') for hook in hooks}
    hooks += [dict(type=name) for name in names if name not in present]
    cfg.custom_hooks = hooks


def apply_test_options(cfg: Config, checkpoint: str,
                       out: Optional[str] = None,
                       show_dir: Optional[str] = None,
                       tta: bool = False) -> None:
    """The checkpoint to test, ``--out``, ``--show-dir`` and ``--tta``."""
    scope = scope_of(cfg)
    cfg.load_from = checkpoint
    if show_dir is not None:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise ConfigError('--show-dir needs a visualization hook in '
                              'default_hooks')
        hook['draw'] = True
        if scope == 'mmdet':
            hook['test_out_dir'] = show_dir
        else:
            cfg.visualizer['save_dir'] = show_dir
    if out is not None:
        if scope == 'mmdet':
            if not out.endswith(('.pkl', '.pickle')):
                raise ConfigError(f'--out must be a .pkl file, got {out!r}')
            evaluators = cfg.test_evaluator
            if isinstance(evaluators, dict):
                evaluators = [evaluators]
            cfg.test_evaluator = list(evaluators) + [
                dict(type='DumpDetResults', out_file_path=out)]
        else:  # mmseg writes the predicted label maps as PNG files
            cfg.test_evaluator['output_dir'] = out
            cfg.test_evaluator['keep_results'] = True
    if tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ConfigError('--tta needs tta_model and tta_pipeline in the '
                              'config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model


def local_rank_env(local_rank: int) -> None:
    """torch.distributed.launch passes --local-rank; torchrun sets the env."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))
