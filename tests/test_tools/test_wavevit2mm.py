"""tools/model_converters/wavevit2mm.py, run as users run it."""
import argparse
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, RunsCode, assert_refusal
from official_layout import backbone_state_dict, official_state_dict
from wavevit_mm import WaveViT

pytestmark = pytest.mark.slow  # a fresh interpreter per conversion
TOOL = os.path.join(ROOT, 'tools', 'model_converters', 'wavevit2mm.py')


def convert(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def official_file(folder, arch='s', name=None, **extra):
    path = folder / (name or f'checkpoint-309-{arch}.pth.tar')
    torch.save(dict(state_dict=official_state_dict(arch), epoch=309,
                    args=argparse.Namespace(model=f'wavevit_{arch}'), **extra),
               path)
    return path


def assert_backbone_weights(state_dict, arch='s'):
    model = WaveViT(arch)
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    expected = backbone_state_dict(arch)
    assert all(torch.equal(state_dict[k], v) for k, v in expected.items())


@pytest.mark.parametrize('name', ['wavevit_s.pth', 'wavevit_s.safetensors'])
def test_converts_official_checkpoint_inferring_the_arch(tmp_path, name):
    src = official_file(tmp_path)
    dst = tmp_path / 'checkpoints' / name
    result = convert(src, dst)
    assert result.returncode == 0, result.stderr
    for part in ['Wave-ViT-S (stem width 32', 'official ImageNet',
                 'dropped 18 classification-only entries',
                 'dropped 35 derived buffers', f'Wrote {dst}']:
        assert part in result.stdout
    if name.endswith('.safetensors'):
        from safetensors.torch import load_file
        state_dict = load_file(dst)
    else:
        state_dict = torch.load(dst, weights_only=True)['state_dict']
    assert_backbone_weights(state_dict)


def test_refuses_to_overwrite_without_force(tmp_path):
    src = official_file(tmp_path)
    dst = tmp_path / 'wavevit_s.pth'
    dst.write_bytes(b'keep me')
    assert_refusal(convert(src, dst), 'wavevit2mm', f'{dst} already exists',
                   '--force')
    assert dst.read_bytes() == b'keep me'
    assert convert(src, dst, '--force').returncode == 0
    assert_backbone_weights(torch.load(dst, weights_only=True)['state_dict'])


def test_wrong_arch_is_a_clear_error_naming_the_file_arch(tmp_path):
    src = official_file(tmp_path, 'b')
    dst = tmp_path / 'wavevit_s.pth'
    assert_refusal(convert(src, dst, '--arch', 's'), 'wavevit2mm',
                   str(src), 'Wave-ViT-B', "arch='b'")
    assert not dst.exists()


def test_refuses_malicious_pickle_unless_trusted(tmp_path):
    marker = tmp_path / 'payload_ran'
    src = official_file(tmp_path, extra=RunsCode(f'touch {marker}'))
    assert_refusal(convert(src, tmp_path / 'out.pth'), 'wavevit2mm',
                   str(src), '--trusted')
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


def test_trusted_converts_a_legacy_file(tmp_path):
    src = official_file(tmp_path, data_dir=pathlib.PurePosixPath('/data'))
    dst = tmp_path / 'wavevit_s.pth'
    assert_refusal(convert(src, dst), 'wavevit2mm', str(src),
                   'PurePosixPath', '--trusted')
    result = convert(src, dst, '--trusted')
    assert result.returncode == 0, result.stderr
    assert_backbone_weights(torch.load(dst, weights_only=True)['state_dict'])


def test_not_a_checkpoint_is_a_one_line_error(tmp_path):
    src = tmp_path / 'wavevit_s.pth'
    src.write_text('<!DOCTYPE html><html>404 Not Found</html>')
    assert_refusal(convert(src, tmp_path / 'out.pth'), 'wavevit2mm',
                   f'{src} is not a checkpoint: it looks like text')
