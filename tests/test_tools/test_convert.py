"""wavevit_mm.tools.convert: any Wave-ViT checkpoint to a backbone-only
file that loads strictly, written all or nothing."""
import os

import pytest
import torch
from mmengine.runner import load_checkpoint as mmengine_load_checkpoint

from helpers import (assert_backbone_equals, expected_backbone, official,
                     pretrained, save, wrap)
from wavevit_mm import WaveViT
from wavevit_mm.checkpoint import CheckpointError, load_checkpoint
from wavevit_mm.errors import CheckpointWriteError
from wavevit_mm.tools import convert_checkpoint


@pytest.mark.parametrize('arch', [
    's', pytest.param('b', marks=pytest.mark.slow)])
def test_converted_file_loads_with_no_missing_or_unexpected_keys(
        tmp_path, arch):
    src = save(tmp_path, wrap(official(arch), 'ddp_state_dict'))
    dst = os.path.join(str(tmp_path), 'converted', f'wavevit_{arch}.pth')
    report = convert_checkpoint(src, dst)  # arch inferred from shapes
    assert report.arch.startswith(f'Wave-ViT-{arch.upper()} ')
    assert torch.load(dst, weights_only=True)['meta']['arch'] == arch
    model = WaveViT(arch)
    mmengine_load_checkpoint(model, dst, strict=True)  # mmengine's loader
    assert_backbone_equals(model, expected_backbone(arch))
    assert_backbone_equals(pretrained(arch, dst), expected_backbone(arch))


def test_whole_model_checkpoint_converts_to_backbone_only(
        tmp_path, runner_checkpoint):
    dst = os.path.join(str(tmp_path), 'backbone.pth')
    convert_checkpoint(runner_checkpoint, dst)
    state_dict = torch.load(dst, weights_only=True)['state_dict']
    assert set(state_dict) == set(WaveViT('s').state_dict())
    # the package's reader: a Runner checkpoint holds mmengine's message
    # hub, which torch < 2.6 cannot read weights-only by itself
    whole = load_checkpoint(runner_checkpoint)['state_dict']
    assert all(torch.equal(v, whole['backbone.' + k])
               for k, v in state_dict.items())


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file
    src = save(tmp_path, wrap(official('s'), 'training'))
    dst = os.path.join(str(tmp_path), 'wavevit_s.safetensors')
    convert_checkpoint(src, dst)
    assert set(load_file(dst)) == set(WaveViT('s').state_dict())
    assert_backbone_equals(pretrained('s', dst), expected_backbone('s'))


def test_conversion_with_wrong_arch_writes_nothing(tmp_path):
    src = save(tmp_path, wrap(official('b'), 'state_dict'), 'wavevit_b.pth')
    dst = os.path.join(str(tmp_path), 'out.pth')
    with pytest.raises(CheckpointError, match="arch='b'"):
        convert_checkpoint(src, dst, arch='s')
    assert sorted(os.listdir(tmp_path)) == ['wavevit_b.pth']


def test_conversion_refuses_to_overwrite_without_force(tmp_path):
    src = save(tmp_path, official('s'), 'src.pth')
    dst = tmp_path / 'wavevit_s.pth'
    dst.write_bytes(b'keep me')
    with pytest.raises(FileExistsError, match='already exists.*--force'):
        convert_checkpoint(src, str(dst))
    assert dst.read_bytes() == b'keep me'
    convert_checkpoint(src, str(dst), force=True)
    assert_backbone_equals(pretrained('s', str(dst)), expected_backbone('s'))


def test_failed_write_leaves_destination_as_it_was(tmp_path, monkeypatch):
    src = save(tmp_path, official('s'), 'src.pth')
    out = tmp_path / 'out'
    out.mkdir()
    dst = out / 'wavevit_s.pth'
    dst.write_bytes(b'previous weights')

    def disk_full(obj, path, *args, **kwargs):
        with open(path, 'wb') as file:
            file.write(b'PK\x03\x04 half a checkpoint')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(CheckpointWriteError, match='No space left'):
        convert_checkpoint(src, str(dst), force=True)
    assert dst.read_bytes() == b'previous weights'
    assert os.listdir(out) == ['wavevit_s.pth']
