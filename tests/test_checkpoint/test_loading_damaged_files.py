"""Damaged checkpoint files, made by seeded byte-level mutations of real
ones in every format the reader takes, never load as other weights, never
crash or hang the reader, and never run code.

Each mutated file must either load exactly as the intact file does (e.g. a
flipped bit in a zip header field nobody reads) or be refused with the
reader's own one-paragraph error naming the file. Zip checkpoints (what
torch.save writes) carry a CRC-32 for every entry, so nothing damaged may
load as different weights; legacy pickles and safetensors files carry no
checksum, so a flipped bit in their tensor data loads as a different
weight: that outcome is counted, and allowed for them alone, and only for
a file whose damage is confined to the bytes of tensor values. A damaged
key name in them loads the same tensors, one under a name the model does
not have or lost to a name another tensor holds, which a strict load
refuses (a key missing); anything else damaged in a header or
pickle (a dtype, a shape, an offset, an element count) must be refused or
load as the intact file.

``pytest -s`` prints the outcomes by mutation and format.
"""
import collections
import io
import os
import pickle
import pickletools
import random
import signal
import struct
import subprocess
import zipfile
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from safetensors.torch import save_file

from helpers import TINY
from wavevit_mm import WaveViT
from wavevit_mm.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   load_checkpoint)

SEED = 20240612
#: Seconds one load may take before it counts as a hang.
TIME_LIMIT = 5
#: Mutations of each kind, per format.
COUNTS = dict(bit_flip=50, bit_flip_in_structure=50, byte_overwrite=30,
              truncation=20, pickle_splice=12)
#: Formats whose files carry no checksum: damaged tensor data loads.
UNCHECKED = ('legacy_pickle', 'safetensors')


class Payload:
    """Unpickles to ``function(*args)``: what a malicious file does."""

    def __init__(self, function: Callable, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: str) -> Dict[str, bytes]:
    """Pickles whose unpickling creates ``marker``, three ways: protocol 2
    as torch.save writes (GLOBAL), and protocol 4 (FRAME, STACK_GLOBAL)."""
    return {
        'os.system': pickle.dumps(Payload(os.system, f'touch {marker}'), 2),
        'builtins.open': pickle.dumps(Payload(open, marker, 'w'), 2),
        'subprocess.run': pickle.dumps(
            Payload(subprocess.run, ['touch', marker]), 4),
    }


# ------------------------------------------------------------ the files

def backbone_weights() -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return WaveViT(TINY).state_dict()


def runner_checkpoint() -> Dict[str, Any]:
    """What mmengine's Runner saves: meta, the whole model's weights, the
    message hub with a log buffer and numpy scalars, optimizer state."""
    state_dict = {'backbone.' + k: v for k, v in backbone_weights().items()}
    loss = HistoryBuffer()
    for value in (0.9, 0.7, 0.6):
        loss.update(value)
    return dict(
        meta=dict(epoch=3, iter=120, seed=0, mmengine_version='0.10.7',
                  dataset_meta=dict(classes=('cat', 'dog'))),
        state_dict=state_dict,
        message_hub=dict(log_scalars={'train/loss': loss},
                         runtime_info=dict(eta=np.float64(12.5),
                                           iter=np.int64(120))),
        optimizer=dict(state={0: dict(step=torch.tensor(120.),
                                      exp_avg=torch.zeros(16))},
                       param_groups=[dict(lr=1e-3, params=[0])]))


def write_zip(path: str) -> Any:
    weights = backbone_weights()
    torch.save(weights, path)
    return weights


def write_runner_zip(path: str) -> Any:
    checkpoint = runner_checkpoint()
    torch.save(checkpoint, path)
    return checkpoint


def write_legacy(path: str) -> Any:
    weights = backbone_weights()
    torch.save(weights, path, _use_new_zipfile_serialization=False)
    return weights


def write_safetensors(path: str) -> Any:
    weights = {k: v.contiguous() for k, v in backbone_weights().items()}
    save_file(weights, path)
    return weights


#: Writers of an intact file of each format; each returns what it saved.
FORMATS = dict(zip_state_dict=write_zip,
               zip_runner_checkpoint=write_runner_zip,
               legacy_pickle=write_legacy, safetensors=write_safetensors)


# ------------------------------------------------- where the bytes are

def zip_payloads(data: bytes) -> Dict[str, Tuple[int, int]]:
    """(start, end) of every zip entry's stored bytes, by entry name."""
    spans = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            offset = info.header_offset
            name_length, extra_length = struct.unpack(
                '<HH', data[offset + 26:offset + 30])
            start = offset + 30 + name_length + extra_length
            spans[info.filename] = (start, start + info.compress_size)
    return spans


def legacy_pickles(data: bytes) -> List[Tuple[int, int]]:
    """(start, end) of the five pickles a legacy torch.save file starts
    with: magic number, protocol, system info, the object, storage keys
    (the storages' bytes follow)."""
    stream, spans = io.BytesIO(data), []
    for _ in range(5):
        start = stream.tell()
        for _ in pickletools.genops(stream):
            pass
        spans.append((start, stream.tell()))
    return spans


def structure(name: str, data: bytes) -> List[int]:
    """Offsets of the bytes that describe the tensors rather than hold
    their values: zip headers, directory and data.pkl; the pickles of a
    legacy file; the JSON header of a safetensors file."""
    if name.startswith('zip'):
        tensors = [span for entry, span in zip_payloads(data).items()
                   if '/data/' in entry]
        inside = np.zeros(len(data), bool)
        for start, end in tensors:
            inside[start:end] = True
        return np.flatnonzero(~inside).tolist()
    if name == 'legacy_pickle':
        return list(range(legacy_pickles(data)[-1][1]))
    header_length = int.from_bytes(data[:8], 'little')
    return list(range(8 + header_length))


class _StorageTypes(pickle.Unpickler):
    """Reads a legacy file's object pickle for its storages' types alone:
    storage key -> storage type, nothing rebuilt."""

    def __init__(self, file) -> None:
        super().__init__(file)
        self.types: Dict[str, Any] = {}

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements)
        self.types[pid[2]] = pid[1]

    def find_class(self, module, name):
        if name.startswith('_rebuild'):
            return lambda *args: None
        return super().find_class(module, name)


def tensor_bytes(name: str, data: bytes) -> np.ndarray:
    """Which bytes of an intact file of an unchecked format hold tensor
    values and nothing else: after a safetensors file's header; in a legacy
    file, each storage's bytes after the pickles, less the element count
    written before it. None for the zip formats, whose CRC-32 covers the
    values."""
    inside = np.zeros(len(data), bool)
    if name == 'safetensors':
        inside[8 + int.from_bytes(data[:8], 'little'):] = True
    elif name == 'legacy_pickle':
        spans = legacy_pickles(data)
        unpickler = _StorageTypes(io.BytesIO(data[slice(*spans[3])]))
        unpickler.load()
        position = spans[4][1]
        for key in pickle.loads(data[slice(*spans[4])]):
            count = int.from_bytes(data[position:position + 8], 'little')
            size = count * unpickler.types[key](0).element_size()
            inside[position + 8:position + 8 + size] = True
            position += 8 + size
        assert position == len(data), 'the storages do not end the file'
    else:
        return None
    return inside


def confined_to_tensor_values(mutated: bytes, data: bytes,
                              values: np.ndarray) -> bool:
    """Whether ``mutated`` differs from ``data`` only in tensor values
    (same length, every changed byte one that ``values`` marks)."""
    if values is None or len(mutated) != len(data):
        return False
    changed = np.flatnonzero(np.frombuffer(mutated, np.uint8)
                             != np.frombuffer(data, np.uint8))
    return bool(values[changed].all())


def with_entry(data: bytes, entry: str, content: bytes) -> bytes:
    """A zip like ``data`` with ``entry`` holding ``content``, all CRC-32
    values correct."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, \
            zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            target.writestr(info.filename, content if info.filename == entry
                            else source.read(info))
    return out.getvalue()


def with_wrong_crc(data: bytes, entry: str) -> bytes:
    """``data`` with the CRC-32 recorded for ``entry`` (in its local header
    and in the central directory) changed."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info, position = archive.getinfo(entry), archive.start_dir
    wrong = struct.pack('<I', info.CRC ^ 0x10)
    out[info.header_offset + 14:info.header_offset + 18] = wrong
    while out[position:position + 4] == b'PK\x01\x02':
        lengths = struct.unpack('<HHH', out[position + 28:position + 34])
        name = out[position + 46:position + 46 + lengths[0]].decode()
        if name == entry:
            out[position + 16:position + 20] = wrong
            return bytes(out)
        position += 46 + sum(lengths)
    raise AssertionError(f'{entry} is not in the central directory')


def mutations(name: str, data: bytes, marker: str
              ) -> List[Tuple[str, bytes]]:
    """Seeded (kind, mutated bytes) pairs of one file."""
    rng = random.Random(f'{SEED}-{name}')
    structural = structure(name, data)
    evil = list(payloads(marker).values())
    found = []

    def flip(offset: int) -> bytes:
        out = bytearray(data)
        out[offset] ^= 1 << rng.randrange(8)
        return bytes(out)

    for _ in range(COUNTS['bit_flip']):
        found.append(('bit_flip', flip(rng.randrange(len(data)))))
    for _ in range(COUNTS['bit_flip_in_structure']):
        found.append(('bit_flip_in_structure', flip(rng.choice(structural))))
    for i in range(COUNTS['byte_overwrite']):
        offset = rng.choice(structural) if i % 2 else rng.randrange(len(data))
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        found.append(('byte_overwrite',
                      data[:offset] + noise + data[offset + len(noise):]))
    for _ in range(COUNTS['truncation']):
        found.append(('truncation', data[:rng.randrange(1, len(data))]))
    for i in range(COUNTS['pickle_splice']):
        payload = evil[i % len(evil)]
        offset = rng.choice(structural) if i % 2 else rng.randrange(len(data))
        found.append(('pickle_splice',
                      data[:offset] + payload + data[offset + len(payload):]))
    if name.startswith('zip'):
        entry = next(e for e in zip_payloads(data) if e.endswith('/data.pkl'))
        start, end = zip_payloads(data)[entry]
        for payload in evil:
            rebuilt = with_entry(data, entry, payload)
            found.append(('data.pkl_replaced_valid_crc', rebuilt))
            found.append(('data.pkl_replaced_wrong_crc',
                          with_wrong_crc(rebuilt, entry)))
            padded = payload.ljust(end - start, b'\0')  # after STOP: unread
            found.append(('data.pkl_overwritten_old_crc',
                          data[:start] + padded + data[end:]))
    if name == 'legacy_pickle':
        start, end = legacy_pickles(data)[3]
        for payload in evil:
            found.append(('object_pickle_replaced',
                          data[:start] + payload + data[end:]))
    return found


# --------------------------------------------------------- the outcomes

class Hang(Exception):
    pass


def _hang(signum, frame):
    raise Hang


def same(a: Any, b: Any) -> bool:
    """Whether two loaded checkpoints are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            a.shape == b.shape and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, '__dict__'):  # e.g. a HistoryBuffer: what pickling keeps
        return same(a.__getstate__(), b.__getstate__())
    return a == b


def outcome(path: str, intact: Any) -> str:
    """What loading ``path`` ended in: identical, loaded_renamed,
    loaded_different, refused_* for the reader's own errors, or a failure
    (hang, crash_*, message_*)."""
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(TIME_LIMIT)
    try:
        loaded = load_checkpoint(path)
    except Hang:
        return 'hang'
    except CheckpointError as error:
        message = str(error)
        if path not in message:
            return f'message_without_path: {message}'
        if '\n' in message:
            return f'message_of_several_lines: {message}'
        if isinstance(error, UnsafeCheckpointError):
            return 'refused_as_unsafe'
        return 'refused_crc' if 'CRC-32' in message else 'refused_unreadable'
    except Exception as error:
        return f'crash_{type(error).__name__}: {error}'[:300]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if same(loaded, intact):
        return 'identical'
    return 'loaded_renamed' if renamed(loaded, intact) else 'loaded_different'


def renamed(loaded: Any, intact: Any) -> bool:
    """Whether ``loaded`` holds the tensors of ``intact`` (a flat state
    dict), every one bit for bit, but one or two (what a few damaged bytes
    reach) under other names, or one lost to a name another tensor holds
    (one key less): a damaged key name, which a strict load refuses (a key
    missing, maybe one unexpected)."""
    if not (isinstance(loaded, dict) and isinstance(intact, dict)):
        return False
    missing = [k for k in intact if k not in loaded]
    extra = [k for k in loaded if k not in intact]
    if not 1 <= len(missing) <= 2 or len(extra) > len(missing) or not all(
            same(loaded[k], intact[k]) for k in intact if k in loaded):
        return False
    for key in extra:
        match = next((m for m in missing if same(loaded[key], intact[m])),
                     None)
        if match is None:
            return False
        missing.remove(match)
    return len(missing) <= 1


ALLOWED = {'identical', 'refused_as_unsafe', 'refused_crc',
           'refused_unreadable'}


@pytest.fixture(scope='module')
def summary():
    counts: Dict[str, collections.Counter] = {}
    yield counts
    kinds = sorted({kind for c in counts.values() for kind, _ in c})
    outcomes = sorted({o for c in counts.values() for _, o in c})
    total = collections.Counter()
    print('\n\nMutated checkpoints: outcomes by format and mutation')
    for name, counter in counts.items():
        print(f'\n{name} ({sum(counter.values())} files)')
        for kind in kinds:
            row = {o: counter[kind, o] for o in outcomes if counter[kind, o]}
            if row:
                print(f'  {kind:30s} {row}')
        for (_, result), n in counter.items():
            total[result] += n
    print(f'\nall formats: {sum(total.values())} files: {dict(total)}')


@pytest.mark.slow
@pytest.mark.parametrize('name', list(FORMATS))
def test_damaged_checkpoint_is_refused_or_loads_as_the_intact_one(
        tmp_path, monkeypatch, name, summary):
    intact_path = str(tmp_path / f'intact.{name}')
    intact = FORMATS[name](intact_path)
    assert outcome(intact_path, intact) == 'identical'
    with open(intact_path, 'rb') as file:
        data = file.read()
    # payloads name the marker relative to the working folder: the same
    # bytes, hence the same mutations, in every run
    monkeypatch.chdir(tmp_path)
    marker = 'payload_ran'
    # the payloads are real: an unguarded unpickler runs them
    for payload in payloads(marker).values():
        pickle.loads(payload)
        assert os.path.exists(marker)
        os.remove(marker)

    path = str(tmp_path / f'checkpoint.{name}')
    counter = summary.setdefault(name, collections.Counter())
    values = tensor_bytes(name, data)
    assert (values is not None) == (name in UNCHECKED)
    failures = []
    for kind, mutated in mutations(name, data, marker):
        with open(path, 'wb') as file:
            file.write(mutated)
        result = outcome(path, intact)
        # without a checksum: a damaged key name loads under that name, and
        # a different load only where nothing but tensor values changed
        allowed = ALLOWED | (
            {'loaded_different'}
            if confined_to_tensor_values(mutated, data, values) else set())
        if name in UNCHECKED:
            allowed |= {'loaded_renamed'}
        counter[kind, result.split(':')[0]] += 1
        ran = os.path.exists(marker)
        if ran:
            os.remove(marker)
        if result not in allowed or ran:
            failures.append(f'{kind}: {result}'
                            + (' (THE PAYLOAD RAN)' if ran else ''))
    assert not failures, f'{len(failures)} mutated files: {failures[:10]}'
