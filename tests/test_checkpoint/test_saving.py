"""wavevit_mm.checkpoint.saving: a file written here only ever appears
complete, and a failed write leaves the old one and no temporary file.
(The checkpoint hook built on it: tests/test_engine/test_hooks.py.)"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wavevit_mm.checkpoint import (AtomicLocalBackend, atomic_write,
                                   is_temporary, save_weights,
                                   write_text_atomically)
from wavevit_mm.errors import CheckpointWriteError


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
    with pytest.raises(CheckpointWriteError,
                       match=f'^Could not write {dst} \\(8 bytes\\) into '
                       f'{tmp_path}: No space left on device \\[ENOSPC\\]'):
        with atomic_write(str(dst), size=8) as tmp:
            with open(tmp, 'wb') as file:
                file.write(b'half')
            raise OSError(28, 'No space left on device')
    assert dst.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['weights.pth']


WRITES_OVER_THE_LIMIT = textwrap.dedent('''
    """Write 5000 bytes through the checkpoint backend, then a 20-byte
    last_checkpoint, under a 4096-byte file-size limit."""
    import resource, signal, sys
    from wavevit_mm.checkpoint import AtomicLocalBackend, write_text_atomically
    from wavevit_mm.errors import CheckpointWriteError

    folder = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        AtomicLocalBackend().put(b'x' * 5000, folder + '/epoch_2.pth')
    except CheckpointWriteError as error:
        print(error)
    write_text_atomically(folder + '/last_checkpoint', 'x' * 20)
''')


def test_write_over_the_file_size_limit_names_folder_and_bytes(tmp_path):
    """A real refused write (RLIMIT_FSIZE, EFBIG) in a process of its own:
    the old files stay as they were and no temporary file is left."""
    (tmp_path / 'epoch_2.pth').write_bytes(b'old')
    (tmp_path / 'last_checkpoint').write_text('old')
    result = subprocess.run(
        [sys.executable, '-c', WRITES_OVER_THE_LIMIT, str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f'Could not write {tmp_path}/epoch_2.pth (5000 bytes) into '
        f'{tmp_path}: File too large [EFBIG], ')
    assert (tmp_path / 'epoch_2.pth').read_bytes() == b'old'
    assert (tmp_path / 'last_checkpoint').read_text() == 'x' * 20
    assert sorted(os.listdir(tmp_path)) == ['epoch_2.pth', 'last_checkpoint']


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
