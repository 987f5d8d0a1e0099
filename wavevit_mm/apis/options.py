"""The OpenMMLab command-line switches of ``tools/train.py`` and
``tools/test.py`` applied to the config: ``--amp``, ``--auto-scale-lr``,
``--resume``, ``--out``, ``--show-dir``, ``--tta``. ``--resume`` never
picks a checkpoint that does not read back."""
import logging
import os
import os.path as osp
import re
from typing import List, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from ..checkpoint import CheckpointError, load_checkpoint
from ..errors import ConfigError, one_paragraph
from .config import find_typed, scope_of


def apply_train_options(cfg: Config, amp: bool = False,
                        auto_scale_lr: bool = False,
                        resume: Optional[str] = None,
                        compile: bool = False) -> None:
    """``--amp``, ``--auto-scale-lr``, ``--resume [CKPT]`` and
    ``--compile`` (every WaveViT of the model runs through torch.compile:
    ``model.backbone.compile=True``).

    The checkpoint to resume or load from is read now (a clear error before
    the run rather than a traceback from the Runner later); inside
    :func:`wavevit_mm.checkpoint.read_once` the Runner then takes it as
    read here.
    """
    if amp and torch.cuda.is_available():
        use_gpu_amp(cfg)
    elif amp:  # mmengine's AmpOptimWrapper is GPU-only
        cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
        for key in ('loss_scale', 'dtype'):
            cfg.optim_wrapper.pop(key, None)
    if compile:
        for _, backbone in find_typed(cfg.model, ['WaveViT']):
            backbone['compile'] = True
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
        load_checkpoint(cfg.load_from)


def use_gpu_amp(cfg: Config) -> None:
    """``--amp`` on a GPU: mmengine's ``AmpOptimWrapper`` in bfloat16 where
    the GPU supports it (no loss scaling needed: bfloat16 has float32's
    exponent range), else in float16 with dynamic loss scaling. A
    ``dtype`` or ``loss_scale`` the config's ``optim_wrapper`` states is
    kept."""
    wrapper = cfg.optim_wrapper
    dtype = wrapper.get('dtype') or (
        'bfloat16' if torch.cuda.is_bf16_supported() else 'float16')
    wrapper.type = 'AmpOptimWrapper'
    wrapper.dtype = dtype
    if 'loss_scale' not in wrapper:
        half = dtype in ('float16', 'half', torch.float16)
        wrapper.loss_scale = 'dynamic' if half else dict(enabled=False)


CHECKPOINT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from.

    The one named in the work dir's ``last_checkpoint`` if it reads back;
    otherwise, with a warning, the newest ``epoch_N.pth`` / ``iter_N.pth``
    there that does. None when there is no checkpoint; CheckpointError when
    none of them reads back.
    """
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
            load_checkpoint(path)
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
