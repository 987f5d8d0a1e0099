"""Pretrained weights from a URL: served by a real HTTP server on
127.0.0.1, downloaded once into the torch hub cache, read weights-only."""
import hashlib

import pytest
import torch
from mmengine.runner import CheckpointLoader

from helpers import RunsCode
from official_layout import official_stage_outputs, official_state_dict
from wavevit_mm import WaveViT
from wavevit_mm.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   load_checkpoint)
from wavevit_mm.checkpoint.url_cache import cache_path


def test_official_checkpoint_from_a_url_loads_strictly_and_once(
        server, tmp_path):
    base, served, requests = server
    state_dict = official_state_dict('s', seed=3)
    torch.save(dict(state_dict=state_dict, epoch=300), served / 'wavevit_s.pth')
    url = f'{base}/wavevit_s.pth'

    model = WaveViT('s', init_cfg=dict(type='Pretrained', checkpoint=url))
    model.init_weights()
    model.eval()
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / \
        hashlib.sha256(url.encode()).hexdigest()[:16] / 'wavevit_s.pth'
    assert cache_path(url) == str(cached)
    assert cached.read_bytes() == (served / 'wavevit_s.pth').read_bytes()
    assert requests == ['/wavevit_s.pth']
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model(image)
    for a, b in zip(ours, official_stage_outputs(state_dict, 's', image)):
        torch.testing.assert_close(a.double(), b, atol=5e-5, rtol=1e-5)

    # read again, by us and through mmengine's loader: from the cache
    again = WaveViT('s', init_cfg=dict(type='Pretrained', checkpoint=url))
    again.init_weights()
    through_mmengine = CheckpointLoader.load_checkpoint(url)
    assert requests == ['/wavevit_s.pth']
    assert torch.equal(through_mmengine['state_dict']['head.weight'],
                       state_dict['head.weight'])
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_malicious_checkpoint_from_a_url_is_refused_without_running(
        server, tmp_path):
    base, served, requests = server
    marker = tmp_path / 'payload_ran'
    torch.save(dict(state_dict=official_state_dict('s'),
                    meta=RunsCode(f'touch {marker}')),
               served / 'wavevit_s.pth')
    model = WaveViT('s', init_cfg=dict(type='Pretrained',
                                       checkpoint=f'{base}/wavevit_s.pth'))
    with pytest.raises(UnsafeCheckpointError,
                       match='Refusing to load .*wavevit_s.pth: unpickling '
                       'it would call posix.system'):
        model.init_weights()
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(f'{base}/wavevit_s.pth')
    assert not marker.exists()


def test_a_url_that_cannot_be_downloaded_is_named(server):
    base, _, _ = server
    with pytest.raises(CheckpointError,
                       match=f'Could not download the checkpoint {base}/'
                       f'missing.pth: HTTP error 404'):
        load_checkpoint(f'{base}/missing.pth')
