"""Distributed launches, with or without GPUs.

mmengine initialises the process group with the config's backend (nccl)
after pinning a CUDA device, and wraps the model in DDP with
``device_ids=[LOCAL_RANK]``; neither exists on a machine without GPUs, and
SyncBN has no CPU implementation. :func:`setup_cpu_distributed` adapts a
config for such a machine and says so in one log line.
"""
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

from ..errors import ConfigError
from .config import walk


def setup_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Make a distributed launch work without CUDA: a gloo process group
    (created here; mmengine reuses it), DDP with ``device_ids=None``, and
    SyncBN replaced by BN. Does nothing with GPUs or without a launcher."""
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
    sync_bn = []
    for path, node in walk(cfg.model, 'model'):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            sync_bn.append(path)
    if dist.get_rank() == 0:
        replaced = (f', SyncBN replaced by BN in {", ".join(sync_bn)}'
                    if sync_bn else '')
        print_log(f'No GPU: distributed run on the CPU with the gloo backend '
                  f'(env_cfg.dist_cfg.backend) and DDP without device ids '
                  f'(model_wrapper_cfg){replaced}.', logger='current')


def shut_down_distributed() -> None:
    """Wait for all ranks, then destroy the process group, so that its
    communication threads are gone before the interpreter exits (a gloo
    group left alive can abort a rank at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
