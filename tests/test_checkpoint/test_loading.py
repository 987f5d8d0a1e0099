"""wavevit_mm.checkpoint.loading: checkpoint files are read without running
code from them. Files that are no checkpoint get an error naming them;
pickles that call anything beyond the allow-list are refused, including
attribute lookups through the ``getattr`` guard; zip checkpoints whose
entries fail their CRC-32 check are refused naming the entry; mmengine's
own objects read back."""
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader
from mmengine.runner import load_checkpoint as mmengine_load_checkpoint

from helpers import (BAD_FILES, ROOT, TINY, RunsCode, assert_backbone_equals,
                     pretrained, save, write_bad_file)
from wavevit_mm import WaveViT
from wavevit_mm.checkpoint import (MODEL_TRUST_HINT, SAFE_GLOBALS,
                                   CheckpointError, UnsafeCheckpointError,
                                   load_checkpoint, read_once)
from wavevit_mm.checkpoint.allow_list import (REGISTERED_WITH_TORCH,
                                              _history_buffer_method)
from wavevit_mm.checkpoint.loading import register_loader, unregister_loader


# ------------------------------------------------------------ bad files

@pytest.mark.parametrize('kind,error_type,message', BAD_FILES)
def test_file_that_is_no_checkpoint_gets_one_line_naming_it(
        tmp_path, kind, error_type, message):
    path = os.path.join(str(tmp_path), 'wavevit_s.pth')
    write_bad_file(kind, path)
    with pytest.raises(error_type, match=message) as error:
        load_checkpoint(path)
    assert path in str(error.value)
    assert '\n' not in str(error.value)


# ---------------------------------------------------------- damaged files

def tiny_wavevit_weights():
    torch.manual_seed(0)
    return WaveViT(TINY).state_dict()


def flip_bit_in_largest_tensor(path: str) -> str:
    """Flip one bit in the middle of the largest tensor entry of a zip
    checkpoint (located with zipfile, as the zip format lays it out) and
    return the entry's name."""
    with zipfile.ZipFile(path) as archive:
        entry = max((info for info in archive.infolist()
                     if '/data/' in info.filename),
                    key=lambda info: info.file_size)
    with open(path, 'r+b') as file:
        file.seek(entry.header_offset + 26)
        name_length, extra_length = struct.unpack('<HH', file.read(4))
        offset = (entry.header_offset + 30 + name_length + extra_length
                  + entry.file_size // 2)
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0x10]))
    return entry.filename


def test_bit_flip_in_tensor_data_is_refused_naming_the_entry(tmp_path):
    weights = tiny_wavevit_weights()
    path = save(tmp_path, weights, 'wavevit_tiny.pth')
    entry = flip_bit_in_largest_tensor(path)
    # torch.load alone does not check the CRC-32: it reads other weights
    damaged = torch.load(path, weights_only=True)
    assert not all(torch.equal(damaged[k], weights[k]) for k in weights)

    with pytest.raises(CheckpointError) as error:
        pretrained(TINY, path)  # init_cfg=dict(type='Pretrained', ...)
    message = str(error.value)
    assert message.startswith(
        f'{path} is damaged: entry {entry!r} fails its CRC-32 check')
    assert message.endswith('re-download or re-copy it.')
    assert '\n' not in message


def test_intact_checkpoint_loads_bit_for_bit(tmp_path):
    weights = tiny_wavevit_weights()
    path = save(tmp_path, weights, 'wavevit_tiny.pth')
    assert_backbone_equals(pretrained(TINY, path), weights)


# --------------------------------------------------------------- safety

@pytest.mark.parametrize('legacy', [False, True])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, legacy):
    marker = tmp_path / 'payload_ran'
    path = save(tmp_path, dict(state_dict={'w': torch.zeros(2)},
                               meta=RunsCode(f'touch {marker}')),
                _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f'Refusing to load {path}: unpickling it '
                              f'would call {os.system.__module__}.system')
    assert message.endswith(MODEL_TRUST_HINT)
    assert not marker.exists()


def test_mmengine_loader_reads_through_the_same_guard(tmp_path):
    """mmengine's CheckpointLoader (load_from, --resume, mmdet's and
    mmseg's own tools) reads local files with load_checkpoint."""
    marker = tmp_path / 'payload_ran'
    path = save(tmp_path, dict(meta=RunsCode(f'touch {marker}')))
    with pytest.raises(UnsafeCheckpointError, match='posix.system'):
        CheckpointLoader.load_checkpoint(path)
    assert not marker.exists()


def test_trusted_loads_what_the_allow_list_refuses(tmp_path):
    """A harmless object outside the allow-list (a path in the saved
    command line) is refused by default and loads when trusted."""
    path = save(tmp_path, dict(state_dict={'w': torch.ones(2)},
                               data_dir=pathlib.PurePosixPath('/data')))
    with pytest.raises(UnsafeCheckpointError, match='pathlib.PurePosixPath'):
        load_checkpoint(path)
    checkpoint = load_checkpoint(path, trusted=True)
    assert checkpoint['data_dir'] == pathlib.PurePosixPath('/data')
    assert torch.equal(checkpoint['state_dict']['w'], torch.ones(2))


# ------------------------------------------------- the getattr guard

class Getattr:
    """Unpickles to ``getattr(owner, name)``; ``owner`` may itself be a
    Getattr, unpickled first."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)

    def __call__(self, *args):  # pickle wants a callable to reduce to
        return getattr(self.owner, self.name)(*args)


class Call:
    """Unpickles to ``function(*args)``, ``function`` unpickled first
    (e.g. a :class:`Getattr`): what a payload does with a lookup."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


class HistoryBufferSubclass(HistoryBuffer):
    pass


ALLOWED_LOOKUPS = ['mean', 'min', 'max', 'current']
REFUSED_LOOKUPS = {
    'class': (HistoryBuffer, '__class__'),
    'init': (HistoryBuffer, '__init__'),
    'reduce_ex': (HistoryBuffer, '__reduce_ex__'),
    'private_attribute': (HistoryBuffer, '_statistics_methods'),
    'classmethod': (HistoryBuffer, 'register_statistics'),
    'ndarray_tofile': (np.ndarray, 'tofile'),
    'ndarray_class': (np.ndarray, '__class__'),
    'namespace_of_a_method': (Getattr(HistoryBuffer, 'mean'), '__globals__'),
}


@pytest.mark.parametrize('name', ALLOWED_LOOKUPS)
def test_history_buffer_statistics_lookup_loads(tmp_path, name):
    """What mmengine's HistoryBuffer pickles: getattr(HistoryBuffer, name)
    for its statistics methods."""
    path = save(tmp_path, dict(method=Getattr(HistoryBuffer, name)))
    assert load_checkpoint(path)['method'] is getattr(HistoryBuffer, name)


@pytest.mark.parametrize('legacy', [False, True])
@pytest.mark.parametrize('lookup', REFUSED_LOOKUPS.values(),
                         ids=list(REFUSED_LOOKUPS))
def test_other_attribute_lookups_are_refused(tmp_path, lookup, legacy):
    owner, name = lookup
    path = save(tmp_path, dict(state_dict={'w': torch.zeros(2)},
                               meta=Getattr(owner, name)),
                _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert path in message and repr(name) in message
    assert '\n' not in message


@pytest.mark.parametrize('legacy', [False, True])
def test_payload_through_a_lookup_does_not_run(tmp_path, legacy):
    """getattr(numpy.ndarray, 'tofile')(array, marker) writes a file: it
    does when the checkpoint is trusted, never otherwise."""
    marker = tmp_path / 'payload_ran'
    path = save(tmp_path, dict(meta=Call(Getattr(np.ndarray, 'tofile'),
                                         np.arange(3.0), str(marker))),
                _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="'tofile'"):
        load_checkpoint(path)
    assert not marker.exists()
    load_checkpoint(path, trusted=True)  # the payload is real
    assert marker.exists()


@pytest.mark.parametrize('name', ALLOWED_LOOKUPS)
def test_guard_returns_history_buffer_statistics_methods(name):
    assert _history_buffer_method(HistoryBuffer, name) is \
        getattr(HistoryBuffer, name)


@pytest.mark.parametrize('owner,name', list(REFUSED_LOOKUPS.values()) + [
    (HistoryBuffer(), 'mean'),            # an instance, not the class
    (HistoryBufferSubclass, 'mean'),      # a class that could add methods
    (os, 'system'),
], ids=list(REFUSED_LOOKUPS) + ['instance', 'subclass', 'os_system'])
def test_guard_refuses_everything_else(owner, name):
    if isinstance(owner, Getattr):
        owner = getattr(owner.owner, owner.name)
    with pytest.raises(pickle.UnpicklingError, match='is not allowed'):
        _history_buffer_method(owner, name)


# ------------------------------------------------ mmengine's checkpoints

def test_load_checkpoint_restores_mmengine_objects(runner_checkpoint):
    checkpoint = load_checkpoint(runner_checkpoint)
    lr = checkpoint['message_hub']['log_scalars']['train/lr']
    assert isinstance(lr, HistoryBuffer)
    # lr 1e-3 warmed up linearly from 0.1x at iteration 0 to 1x at
    # iteration end - 1 = 1 (mmengine's LinearLR, end=2)
    np.testing.assert_allclose(lr.data[0], [1e-4, 1e-3], rtol=1e-6)
    assert lr.mean() == pytest.approx(5.5e-4)
    assert isinstance(checkpoint['message_hub']['runtime_info']['eta'],
                      np.floating)
    assert checkpoint['meta']['epoch'] == 1


def test_allow_list_is_registered_when_the_plugin_is_imported(
        runner_checkpoint):
    """Importing wavevit_mm lets every weights-only torch.load (mmengine's,
    mmdet's tools) read mmengine's checkpoints."""
    if not REGISTERED_WITH_TORCH:
        pytest.skip('this torch takes no (object, name) safe globals (torch '
                    '2.6); the restricted unpickler reads instead')
    registered = set(map(repr, torch.serialization.get_safe_globals()))
    assert set(map(repr, SAFE_GLOBALS)) <= registered
    checkpoint = torch.load(runner_checkpoint, weights_only=True)
    assert isinstance(checkpoint['message_hub']['log_scalars']['train/lr'],
                      HistoryBuffer)


def test_nothing_switches_weights_only_loading_off():
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    for folder in ('wavevit_mm', 'tools'):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(('.py', '.sh')):
                    with open(os.path.join(base, name)) as f:
                        assert 'TORCH_FORCE_NO_WEIGHTS_ONLY' not in f.read()


# ------------------------------------------------------ map_location

def weights_file(folder, suffix):
    path = str(folder / f'weights{suffix}')
    state_dict = {'backbone.w': torch.arange(4.)}
    if suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file(state_dict, path)
    else:
        torch.save(dict(state_dict=state_dict), path)
    return path


def read_through(reader, path, map_location):
    """The tensor ``backbone.w`` of ``path`` read by one of the callers of
    the process-wide loader."""
    if reader == 'load_checkpoint':
        checkpoint = load_checkpoint(path, map_location=map_location)
    elif reader == 'CheckpointLoader':  # load_from, --resume, mmdet's tools
        checkpoint = CheckpointLoader.load_checkpoint(path, map_location)
    else:  # mmengine's function for any model of the process
        checkpoint = mmengine_load_checkpoint(
            torch.nn.Module(), path, map_location=map_location, strict=False)
    return checkpoint.get('state_dict', checkpoint)['backbone.w']


@pytest.mark.parametrize('reader', ['load_checkpoint', 'CheckpointLoader',
                                    'mmengine.runner.load_checkpoint'])
@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('map_location', [
    'meta', torch.device('meta'), {'cpu': 'meta'}],
    ids=['str', 'device', 'dict'])
def test_every_caller_gets_its_map_location(tmp_path, reader, suffix,
                                            map_location):
    """The reader registered for every model of the process puts the
    tensors where the caller asks (here the meta device, which needs no
    GPU), as mmengine's own loader does; the CPU stays the default."""
    path = weights_file(tmp_path, suffix)
    tensor = read_through(reader, path, map_location)
    assert tensor.device.type == 'meta' and tensor.shape == (4, )
    # without map_location: the file's one tensor, as written, on the CPU
    checkpoint = load_checkpoint(path)
    state_dict = (checkpoint if suffix == '.safetensors'
                  else checkpoint['state_dict'])
    assert list(state_dict) == ['backbone.w']
    assert state_dict['backbone.w'].device.type == 'cpu'
    assert torch.equal(state_dict['backbone.w'], torch.arange(4.))


def test_a_function_map_location_sees_every_storage(tmp_path):
    path = weights_file(tmp_path, '.pth')
    locations = []
    tensor = read_through('CheckpointLoader', path,
                          lambda storage, location: locations.append(
                              location) or storage)
    assert locations == ['cpu'] and torch.equal(tensor, torch.arange(4.))


def test_read_once_hands_over_only_to_a_reader_of_the_same_location(
        tmp_path):
    path = weights_file(tmp_path, '.pth')
    with read_once():
        first = load_checkpoint(path)
        assert load_checkpoint(path, map_location=None) is first
        load_checkpoint(path)
        moved = load_checkpoint(path, map_location='meta')
    assert moved['state_dict']['backbone.w'].device.type == 'meta'


def test_loader_registration_can_be_undone(tmp_path):
    """unregister_loader gives mmengine its own loader back (the opt-out
    of docs/checkpoint_safety.md): a file that is no checkpoint gets
    torch's error, not ours; register_loader, what importing wavevit_mm
    does, restores ours."""
    path = tmp_path / 'notes.pth'
    path.write_text('not a checkpoint')
    try:
        unregister_loader()
        with pytest.raises(Exception) as error:
            CheckpointLoader.load_checkpoint(str(path))
        assert not isinstance(error.value, CheckpointError)
    finally:
        register_loader()
    with pytest.raises(CheckpointError, match='is not a checkpoint'):
        CheckpointLoader.load_checkpoint(str(path))
