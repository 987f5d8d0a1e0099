"""Official (or any Wave-ViT) checkpoints to backbone-only files, behind
``tools/model_converters/wavevit2mm.py``."""
import os.path as osp
from typing import Optional

import torch

from ..checkpoint import CheckpointError, atomic_write, save_weights
from ..models import WaveViT, describe_arch, infer_arch, read_backbone_weights
from ..models.pretrained import LoadReport, check_fits, load_pretrained


def verify_backbone_file(path: str, arch: str) -> None:
    """Load ``path`` strictly into a fresh ``WaveViT(arch)`` and run a
    forward pass; raises CheckpointError if anything is off."""
    model = WaveViT(arch).eval()
    load_pretrained(model, path)
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 64, 64))
    expected = [(1, dim, 64 // 2**(i + 2), 64 // 2**(i + 2))
                for i, dim in enumerate(model.embed_dims)]
    if [tuple(o.shape) for o in outs] != expected or not all(
            torch.isfinite(o).all() for o in outs):
        raise CheckpointError(
            f'{path}: a forward pass of the loaded backbone gave wrong '
            f'shapes or non-finite values.')


def convert_checkpoint(src: str, dst: str, arch: Optional[str] = None,
                       force: bool = False, trusted: bool = False,
                       prefix: Optional[str] = None) -> LoadReport:
    """Write the backbone weights of ``src`` as a backbone-only checkpoint.

    ``src`` is any supported file; ``dst`` ending in ``.safetensors`` is
    written in that format, otherwise with ``torch.save`` as
    ``{'state_dict': ..., 'meta': ...}``. The arch is inferred from the
    weight shapes unless given. The result is verified by a strict load
    into the backbone and a forward pass before it takes the name ``dst``
    (an existing ``dst`` only with ``force``, checked when the file is
    moved into place); a failure at any step leaves ``dst`` as it was.
    """
    src, dst = str(src), str(dst)
    if osp.exists(dst) and not force:
        raise FileExistsError(
            f'{dst} already exists; pass --force (force=True) to overwrite '
            f'it.')
    state_dict, report = read_backbone_weights(src, WaveViT.arch_zoo, prefix,
                                               trusted)
    arch = arch or infer_arch(state_dict, WaveViT.arch_zoo)
    if arch is None:
        raise CheckpointError(
            f'{src} holds {describe_arch(state_dict, WaveViT.arch_zoo)} '
            f'weights, which match no preset '
            f'({", ".join(sorted(WaveViT.arch_zoo))}); pass the arch '
            f'explicitly (--arch).')
    check_fits(state_dict, WaveViT(arch), src)
    meta = dict(arch=arch, converted_from=osp.basename(src))
    with atomic_write(dst, replace=force) as tmp:
        save_weights(state_dict, tmp, meta, dst.endswith('.safetensors'))
        verify_backbone_file(tmp, arch)
    return report
