"""wavevit_mm.tools.publish, what tools/model_converters/publish_model.py
does: mmdet's publishing (weights and meta kept, the training state
dropped, the sha256 in the name), written atomically, never over an
existing file without force."""
import hashlib
import os
import pickle
import re

import numpy as np
import pytest
import torch

from wavevit_mm.checkpoint import CheckpointError, load_checkpoint
from wavevit_mm.tools.publish import (plain_values, publish_checkpoint,
                                     published_name)


def load_with_torchs_defaults(path):
    """torch.load(weights_only=True) as in a process that never imported
    wavevit_mm: torch's own allow-list only (older torch has no other)."""
    if not hasattr(torch.serialization, 'get_safe_globals'):
        return torch.load(path, weights_only=True)
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        return torch.load(path, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(registered)


def test_published_file_keeps_weights_and_meta_and_names_its_hash(
        runner_checkpoint, tmp_path):
    published = publish_checkpoint(runner_checkpoint, tmp_path / 'det.pth')
    assert re.fullmatch(r'det-[0-9a-f]{8}\.pth',
                        os.path.basename(published.path))
    with open(published.path, 'rb') as file:
        sha256 = hashlib.sha256(file.read()).hexdigest()
    assert published.sha256 == sha256 and sha256[:8] in published.path
    assert {'optimizer', 'message_hub', 'param_schedulers'} <= set(
        published.dropped)
    original = load_checkpoint(runner_checkpoint)
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        load_with_torchs_defaults(runner_checkpoint)
    checkpoint = load_with_torchs_defaults(published.path)
    assert set(checkpoint) == {'meta', 'state_dict'}
    assert checkpoint['meta']['epoch'] == original['meta']['epoch']
    assert checkpoint['state_dict'].keys() == original['state_dict'].keys()
    for key, value in original['state_dict'].items():
        assert torch.equal(checkpoint['state_dict'][key], value)
    assert [name for name in os.listdir(tmp_path)] == [
        os.path.basename(published.path)]  # no temporary file left


def test_existing_file_is_replaced_only_with_force(runner_checkpoint,
                                                  tmp_path):
    first = publish_checkpoint(runner_checkpoint, tmp_path / 'det.pth')
    os.utime(first.path, (0, 0))
    with pytest.raises(FileExistsError, match='pass --force'):
        publish_checkpoint(runner_checkpoint, tmp_path / 'det.pth')
    assert os.path.getmtime(first.path) == 0
    again = publish_checkpoint(runner_checkpoint, tmp_path / 'det.pth',
                               force=True)
    assert again.path == first.path and os.path.getmtime(first.path) > 0


def test_a_file_without_weights_is_refused(tmp_path):
    path = tmp_path / 'optimizer_only.pth'
    torch.save(dict(optimizer=dict(state={})), path)
    with pytest.raises(CheckpointError, match="no 'state_dict' entry"):
        publish_checkpoint(path, tmp_path / 'out.pth')
    assert sorted(os.listdir(tmp_path)) == ['optimizer_only.pth']


def test_meta_becomes_plain_values_or_is_refused_naming_the_entry():
    meta = dict(best=np.float64(0.5), sizes=np.arange(2), name='x')
    assert plain_values(meta) == dict(best=0.5, sizes=[0, 1], name='x')
    assert type(plain_values(meta)['best']) is float
    with pytest.raises(CheckpointError, match=r'meta\.hooks\[0\] holds a '
                       r'builtins\.object'):
        plain_values(dict(hooks=[object()]))


def test_names_follow_mmdets_publish_model():
    assert published_name('out/det.pth', 'abcdef0123') == \
        'out/det-abcdef01.pth'
    assert published_name('det', 'abcdef0123') == 'det-abcdef01.pth'
