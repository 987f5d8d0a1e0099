"""wavevit_mm.checkpoint.saving: a file written here only ever appears
complete, and a failed write leaves the old one and no temporary file.
(The checkpoint hook built on it: tests/test_engine_hooks.py.)"""
import os

import pytest
import torch

from wavevit_mm.checkpoint import (AtomicLocalBackend, atomic_write,
                                   is_temporary, save_weights,
                                   write_text_atomically)


def test_file_appears_only_when_the_block_ends(tmp_path):
    dst = tmp_path / 'sub' / 'weights.pth'
    with atomic_write(str(dst)) as tmp:
        assert os.path.dirname(tmp) == str(dst.parent)
        assert is_temporary(os.path.basename(tmp))
        with open(tmp, 'wb') as file:
            file.write(b'new')
        assert not dst.exists()
    assert dst.read_bytes() == b'new'
    assert os.listdir(dst.parent) == ['weights.pth']


def test_failed_block_leaves_the_old_file_and_no_temporary(tmp_path):
    dst = tmp_path / 'weights.pth'
    dst.write_bytes(b'old')
    with pytest.raises(OSError, match='No space left'):
        with atomic_write(str(dst)) as tmp:
            with open(tmp, 'wb') as file:
                file.write(b'half')
            raise OSError(28, 'No space left on device')
    assert dst.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['weights.pth']


def test_only_hidden_tmp_files_count_as_temporary():
    assert is_temporary('.epoch_2.pth.1a2b3c4d.tmp')
    assert not is_temporary('epoch_2.pth')
    assert not is_temporary('.hidden')
    assert not is_temporary('results.tmp')


def test_text_and_weights_written_atomically_read_back(tmp_path):
    write_text_atomically(str(tmp_path / 'last_checkpoint'), 'epoch_1.pth')
    assert (tmp_path / 'last_checkpoint').read_text() == 'epoch_1.pth'
    weights = {'w': torch.arange(3.)}
    save_weights(weights, str(tmp_path / 'w.pth'), dict(arch='s'))
    saved = torch.load(tmp_path / 'w.pth', weights_only=True)
    assert saved['meta'] == dict(arch='s')
    assert torch.equal(saved['state_dict']['w'], weights['w'])


def test_backend_defers_removals_until_the_block_succeeds(tmp_path):
    backend = AtomicLocalBackend()
    old, new = tmp_path / 'epoch_1.pth', tmp_path / 'epoch_2.pth'
    old.write_bytes(b'1')
    with backend.removals_deferred():
        backend.remove(str(old))
        assert old.exists()           # still there while the new one is
        backend.put(b'2', str(new))   # being written
    assert not old.exists() and new.read_bytes() == b'2'


def test_backend_keeps_everything_when_the_write_fails(tmp_path):
    backend = AtomicLocalBackend()
    old = tmp_path / 'epoch_1.pth'
    old.write_bytes(b'1')
    with pytest.raises(RuntimeError):
        with backend.removals_deferred():
            backend.remove(str(old))
            raise RuntimeError('the new checkpoint could not be written')
    assert old.read_bytes() == b'1'
    backend.remove(str(old))          # outside the block: at once
    assert not old.exists()
