"""What several test modules share: paths, the tiny arch, checkpoints in
the wrappings training scripts save, bad and malicious files, and the
multiply-adds of a Wave-ViT written out from the architecture."""
import argparse
import functools
import math
import os
from typing import Callable, Dict, List

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor

from official_layout import ARCHS, backbone_state_dict, official_state_dict
from wavevit_mm import WaveViT
from wavevit_mm.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A Wave-ViT small enough for unit tests: every kind of stage, two blocks
#: in stage 2, dims divisible by their heads (and by 4 where the wavelet
#: attention needs it).
TINY = dict(stem_width=8, embed_dims=[16, 32, 48, 64],
            num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2],
            depths=[1, 2, 1, 1], sr_ratios=[4, 2, 1, 1])


class RunsCode:
    """Unpickles to os.system(command): what a malicious file does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command, )


# --------------------------------------------------- official checkpoints

SEEDS = {'s': 1, 'b': 2, 'l': 3}
WRAPPINGS = ['bare', 'state_dict', 'training', 'model', 'ddp_state_dict',
             'ddp_model']


@functools.lru_cache(maxsize=None)
def official(arch: str) -> Dict[str, Tensor]:
    """An official-layout state dict of ``arch`` (shared: do not modify)."""
    return official_state_dict(arch, seed=SEEDS[arch])


@functools.lru_cache(maxsize=None)
def expected_backbone(arch: str) -> Dict[str, Tensor]:
    """The backbone weights :func:`official` should load as."""
    return backbone_state_dict(arch, seed=SEEDS[arch])


def wrap(state_dict: Dict[str, Tensor], wrapping: str):
    """A state dict as the official training scripts save it."""
    ddp = {'module.' + k: v for k, v in state_dict.items()}
    if wrapping == 'bare':
        return state_dict
    if wrapping == 'training':
        ema = {k: v + 1 if v.is_floating_point() else v
               for k, v in state_dict.items()}
        return dict(
            epoch=309, arch='wavevit_s', state_dict=state_dict,
            state_dict_ema=ema, metric=82.7, version=2,
            optimizer=dict(state={0: dict(step=torch.tensor(5.),
                                          exp_avg=torch.zeros(3))},
                           param_groups=[dict(lr=1e-3, params=[0])]),
            args=argparse.Namespace(model='wavevit_s', lr=1e-3, epochs=310,
                                    data_dir='/data/imagenet', amp=True))
    return {
        'state_dict': dict(state_dict=state_dict),
        'model': dict(model=state_dict),
        'ddp_state_dict': dict(state_dict=ddp),
        'ddp_model': dict(model=ddp),
    }[wrapping]


def save(folder, obj, name: str = 'checkpoint.pth', **kwargs) -> str:
    path = os.path.join(str(folder), name)
    torch.save(obj, path, **kwargs)
    return path


def pretrained(arch, path: str, **init_cfg):
    """A WaveViT whose init_cfg loads ``path``, initialised."""
    model = WaveViT(arch, init_cfg=dict(type='Pretrained', checkpoint=path,
                                        **init_cfg))
    model.init_weights()
    return model


def globals_torch_refuses(path: str) -> List[str]:
    """The globals of a checkpoint that ``torch.load(weights_only=True)``
    refuses on its own, i.e. without the allow-list importing wavevit_mm
    registers."""
    if not hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):
        pytest.skip('this torch cannot list the globals of a checkpoint '
                    '(get_unsafe_globals_in_checkpoint, torch 2.6)')
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    finally:
        torch.serialization.add_safe_globals(registered)


def assert_backbone_equals(model, expected: Dict[str, Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


def assert_refusal(result, prog: str, *parts: str,
                   after_other_output: bool = False) -> str:
    """A tool's refusal as a user sees it: exit status 1, no traceback, and
    one paragraph ``prog: error: ...`` (a single line) holding each of
    ``parts``, the problem named. ``result`` is a ``run_tool`` result
    (``code``) or a finished subprocess (``returncode``); stderr holds the
    paragraph alone unless ``after_other_output`` (then it is the last
    line). Returns the paragraph."""
    code = getattr(result, 'code', getattr(result, 'returncode', None))
    assert code == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.rstrip('\n').split('\n')
    if not after_other_output:
        assert len(lines) == 1 and result.stderr.endswith('\n'), \
            result.stderr[-3000:]
    message = lines[-1]
    assert message.startswith(f'{prog}: error: '), result.stderr[-3000:]
    for part in parts:
        assert part in message, (part, message)
    return message


# -------------------------------------------------------------- bad files

def _first_half(path: str) -> bytes:
    with open(path, 'rb') as file:
        data = file.read()
    os.remove(path)
    return data[:len(data) // 2]


def _truncated(folder, **save_kwargs) -> bytes:
    return _first_half(save(folder, {'weight': torch.randn(4096)},
                            'whole.pth', **save_kwargs))


def _truncated_safetensors(folder) -> bytes:
    from safetensors.torch import save_file
    path = os.path.join(str(folder), 'whole.safetensors')
    save_file({'weight': torch.randn(4096)}, path)
    return _first_half(path)


#: Contents of files that are no usable checkpoint, by kind; each builder
#: takes a scratch folder.
BAD_CONTENT: Dict[str, Callable[[object], bytes]] = {
    'empty': lambda folder: b'',
    'truncated': _truncated,
    'truncated_legacy': functools.partial(
        _truncated, _use_new_zipfile_serialization=False),
    'truncated_safetensors': _truncated_safetensors,
    'text': lambda folder: (b'version https://git-lfs.github.com/spec/v1\n'
                            b'oid sha256:4d7a\nsize 78123456\n'),
    'html': lambda folder: b'<!DOCTYPE html>\n<html>Not Found</html>',
    'png': lambda folder: cv2.imencode(
        '.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
    'jpeg': lambda folder: cv2.imencode(
        '.jpg', np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
}

#: (kind, error type, message pattern) of files no reader accepts.
BAD_FILES = [
    ('missing', FileNotFoundError, 'Checkpoint file not found'),
    ('directory', CheckpointError, 'is a directory'),
    ('empty', CheckpointError, r'is empty \(0 bytes\)'),
    ('truncated', CheckpointError, 'truncated or corrupt'),
    ('truncated_legacy', CheckpointError, 'truncated or corrupt'),
    ('truncated_safetensors', CheckpointError, 'truncated or corrupt'),
    ('text', CheckpointError,
     r"looks like text \('version https://git-lfs"),
    ('html', CheckpointError, r"looks like text \('<!DOCTYPE html>"),
    ('png', CheckpointError, 'looks like a PNG image'),
    ('jpeg', CheckpointError, 'looks like a JPEG image'),
]


def write_bad_file(kind: str, path: str) -> None:
    """Make ``path`` a bad file of ``kind`` (``missing``: leave it absent)."""
    if kind == 'directory':
        os.mkdir(path)
    elif kind in BAD_CONTENT:
        data = BAD_CONTENT[kind](os.path.dirname(path))
        with open(path, 'wb') as file:
            file.write(data)


# ------------------------------------------------------- multiply-adds

def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def wavevit_multiply_adds(arch: str, height: int, width: int) -> int:
    """Multiply-adds of the convolutions, linear layers and attention
    products of a Wave-ViT forward on one (3, height, width) image, from
    the architecture of the paper (``official_layout.ARCHS``):
    normalisation and element-wise operations, and the wavelet transforms
    (additions only), are not counted."""
    arch = ARCHS[arch]
    dims, width_stem = arch['dims'], arch['stem']
    h, w = _out(height, 7, 2, 3), _out(width, 7, 2, 3)
    total = 3 * width_stem * 49 * h * w + 2 * width_stem ** 2 * 9 * h * w
    channels = width_stem
    for i, dim in enumerate(dims):
        h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)      # 3x3/2 downsampling
        tokens = h * w
        total += channels * dim * 9 * tokens
        hidden = dim * arch['mlp'][i]
        for _ in range(arch['depths'][i]):
            total += tokens * dim * dim                 # queries
            if i < 2:  # wavelet attention
                sr = arch['sr'][i]
                band_h, band_w = math.ceil(h / 2), math.ceil(w / 2)
                keys = math.ceil(band_h / sr) * math.ceil(band_w / sr)
                total += tokens * dim * dim // 4                   # reduce
                total += band_h * band_w * dim * dim * 9           # filter
                total += keys * dim * dim * sr * sr                # kv_embed
                total += keys * dim * 2 * dim                      # kv
                total += tokens * (dim + dim // 4) * dim           # proj
            else:  # global attention
                keys = tokens
                total += tokens * dim * 2 * dim + tokens * dim * dim
            total += 2 * tokens * keys * dim            # q k^T and a v
            total += 2 * tokens * dim * hidden + tokens * hidden * 9  # FFN
        channels = dim
    return total


def require_mmpretrain() -> None:
    """Skip the calling test module, in one line that says how to get
    mmpretrain, where it or torchvision cannot be imported."""
    try:
        import mmpretrain  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as error:  # not installed, or built for another torch
        pytest.skip(f'mmpretrain is not usable ({type(error).__name__}: '
                    f'{error}); `make test-cls` runs these tests in '
                    f'.venv-cls, which has it (docs/classification.md)',
                    allow_module_level=True)
