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
  ``--resume``, ``--out``, ``--show-dir``, ``--tta``) applied to the config.
"""
import contextlib
import os
import os.path as osp
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config


@contextlib.contextmanager
def safe_checkpoint_loading() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read checkpoints written by
    mmengine's Runner, and nothing that could run code."""
    from .checkpoint import SAFE_GLOBALS
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        yield


def scope_of(cfg: Config) -> str:
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(
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
        raise ValueError(
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
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
        if not torch.cuda.is_available():
            # CPU autocast runs in bfloat16, which needs no loss scaling
            cfg.optim_wrapper.dtype = 'bfloat16'
            cfg.optim_wrapper.pop('loss_scale')
    if auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError(
                '--auto-scale-lr needs auto_scale_lr = dict('
                'base_batch_size=N) in the config (the total batch size its '
                'learning rate was set for)')
        cfg.auto_scale_lr.enable = True
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume


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
            raise ValueError('--show-dir needs a visualization hook in '
                             'default_hooks')
        hook['draw'] = True
        if scope == 'mmdet':
            hook['test_out_dir'] = show_dir
        else:
            cfg.visualizer['save_dir'] = show_dir
    if out is not None:
        if scope == 'mmdet':
            if not out.endswith(('.pkl', '.pickle')):
                raise ValueError(f'--out must be a .pkl file, got {out!r}')
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
            raise ValueError('--tta needs tta_model and tta_pipeline in the '
                             'config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model


def local_rank_env(local_rank: int) -> None:
    """torch.distributed.launch passes --local-rank; torchrun sets the env."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))
