"""The OpenMMLab command-line switches of ``tools/train.py`` and
``tools/test.py`` applied to the config: ``--amp``, ``--auto-scale-lr``,
``--resume``, ``--out``, ``--show-dir``, ``--tta``. ``--resume`` never
picks a checkpoint that does not read back; ``--tta`` falls back to the
libraries' own defaults where a config has none."""
import copy
import logging
import os
import os.path as osp
import re
from typing import List, Optional, Tuple

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

from ..checkpoint import CheckpointError, load_checkpoint
from ..errors import ConfigError, one_paragraph
from .config import find_typed, scope_of, walk


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
        if scope == 'mmdet':
            hook.update(draw=True, test_out_dir=show_dir)
        elif scope == 'mmpretrain':  # each image, as its tools/test.py does
            hook.update(enable=True, out_dir=show_dir, interval=1)
        else:
            hook['draw'] = True
            cfg.visualizer['save_dir'] = show_dir
    if out is not None:
        if scope in ('mmdet', 'mmpretrain'):
            if not out.endswith(('.pkl', '.pickle')):
                raise ConfigError(f'--out must be a .pkl file, got {out!r}')
            evaluators = cfg.test_evaluator
            if isinstance(evaluators, dict):
                evaluators = [evaluators]
            dump = 'DumpDetResults' if scope == 'mmdet' else 'DumpResults'
            cfg.test_evaluator = list(evaluators) + [
                dict(type=dump, out_file_path=out)]
        else:  # mmseg writes the predicted label maps as PNG files
            cfg.test_evaluator['output_dir'] = out
            cfg.test_evaluator['keep_results'] = True
    if tta:
        use_tta(cfg, scope)


#: What mmdet's ``tools/test.py --tta`` (3.3) uses where a config has no
#: ``tta_model``: the predictions of the augmented images merged by NMS.
MMDET_TTA_MODEL = dict(
    type='DetTTAModel',
    tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
#: ... and where it has no ``tta_pipeline``: the test pipeline with its last
#: step replaced by this one, each image tested as it is and flipped.
MMDET_FLIP_TTA = dict(
    type='TestTimeAug',
    transforms=[
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='PackDetInputs',
              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                         'scale_factor', 'flip', 'flip_direction'))],
    ])
#: mmseg's ``tta_model`` (``mmseg::_base_/default_runtime.py``), which its
#: ``tools/test.py --tta`` expects every config to inherit.
MMSEG_TTA_MODEL = dict(type='SegTTAModel')
#: What mmpretrain's ``tools/test.py --tta`` (1.2) uses where a config has
#: no ``tta_model``: the class scores of the augmented images averaged...
MMPRETRAIN_TTA_MODEL = dict(type='AverageClsScoreTTA')


def mmpretrain_flip_tta(last_step: dict) -> dict:
    """... and where it has no ``tta_pipeline``: the test pipeline's last
    step (the packing) replaced by this one, each image tested as it is
    and flipped, then packed as before."""
    return dict(type='TestTimeAug',
                transforms=[[dict(type='RandomFlip', prob=1.),
                             dict(type='RandomFlip', prob=0.)],
                            [copy.deepcopy(last_step)]])


def use_tta(cfg: Config, scope: str) -> None:
    """``--tta``: test the config's ``tta_model`` on its ``tta_pipeline``,
    as mmdet's, mmseg's and mmpretrain's ``tools/test.py --tta`` do, with
    their defaults where the config has none (said in one log line).

    Instance segmentation is refused: mmdet's ``DetTTAModel`` merges boxes
    only, so mmdet has no test-time augmentation for masks. mmseg has no
    default ``tta_pipeline`` (its dataset base configs define one each).
    """
    if scope == 'mmdet' and _predicts_masks(cfg.model):
        raise ConfigError(
            "--tta: this model predicts instance masks, and mmdet has no "
            "test-time augmentation for instance segmentation: its "
            "DetTTAModel merges the boxes of the augmented images only, and "
            "mmdet's own tools/test.py --tta stops after the first batch "
            "('TTA of instance segmentation does not support now'). Test it "
            "without --tta; the box detectors (RetinaNet, ATSS, GFL, Sparse "
            "R-CNN) support it.")
    defaults = {}
    if 'tta_model' not in cfg:
        cfg.tta_model = copy.deepcopy(dict(
            mmdet=MMDET_TTA_MODEL, mmseg=MMSEG_TTA_MODEL,
            mmpretrain=MMPRETRAIN_TTA_MODEL)[scope])
        defaults['tta_model'] = str(cfg.tta_model)
    if 'tta_pipeline' not in cfg:
        if scope == 'mmseg':
            raise ConfigError(
                "--tta needs a tta_pipeline in the config: mmseg's "
                "tools/test.py has no default for it; its dataset base "
                "configs (e.g. mmseg::_base_/datasets/ade20k.py) define one "
                "with the scales and flips of that dataset. Inherit one, or "
                "write one ending in TestTimeAug.")
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:  # dataset wrappers
            dataset = dataset.dataset
        cfg.tta_pipeline = copy.deepcopy(dataset.pipeline)
        if scope == 'mmdet':
            cfg.tta_pipeline[-1] = copy.deepcopy(MMDET_FLIP_TTA)
            defaults['tta_pipeline'] = ('the test pipeline, its last step '
                                        'replaced by a horizontal flip '
                                        'TestTimeAug')
        else:
            cfg.tta_pipeline[-1] = mmpretrain_flip_tta(dataset.pipeline[-1])
            defaults['tta_pipeline'] = ('the test pipeline, its last step '
                                        'inside a horizontal flip '
                                        'TestTimeAug')
    if defaults:
        print_log(f'--tta: the config has no {" and no ".join(defaults)}; '
                  f"using what {scope}'s tools/test.py --tta uses then: "
                  + '; '.join(f'{k}={v}' for k, v in defaults.items()),
                  logger='current')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _predicts_masks(model: dict) -> bool:
    """Whether an mmdet model config has a mask head anywhere (Mask R-CNN,
    Cascade Mask R-CNN, SOLO, ...)."""
    return any(node.get('mask_head') for _, node in walk(model))
