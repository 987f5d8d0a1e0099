"""Reading checkpoint files without running code from them.

Checkpoint files are untrusted input: a ``.pth`` file is a pickle, and
unpickling can call anything. :func:`load_checkpoint` reads

* local files, after checking they are checkpoints at all (zip or legacy
  ``torch.save`` pickles, ``.safetensors``) and, for zip files, that every
  entry passes its CRC-32 check (torch.load does not check it, so a
  damaged file would load as different weights);
* ``http(s)://`` URLs, downloaded once into the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``) and then read as local files;
* every other storage scheme mmengine's ``CheckpointLoader`` knows
  (``s3://``, ``petrel://``, ...) through that loader;

always with ``torch.load(weights_only=True)``, onto the device
``map_location`` names (the CPU unless a caller says otherwise). On top of
tensors, containers and numbers, only :data:`SAFE_GLOBALS` may be
unpickled: what official Wave-ViT training scripts and mmengine's Runner
store. The list is registered with ``torch.serialization.add_safe_globals``
when this module is imported (``import wavevit_mm``, which every config does
through ``custom_imports``), and this reader is registered as mmengine's
loader for local files and URLs (:func:`register_loader`), so ``load_from``,
``--resume`` and mmdet's and mmseg's own tools read these checkpoints the
same way. This holds for every model of the process; :func:`unregister_loader`
gives mmengine its own loaders back.

Within :func:`read_once`, a file read to check it is handed to the next
reader (e.g. mmengine's Runner) without being deserialized again.
"""
import argparse
import contextlib
import inspect
import os
import os.path as osp
import io
import pickle
import re
import urllib.error
import urllib.parse
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import CheckpointLoader
from mmengine.runner.checkpoint import load_from_http, load_from_local

from ..errors import CheckpointError, UnsafeCheckpointError

try:  # numpy 2 moved numpy.core to numpy._core; 1.26 has both
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:
    from numpy.core.multiarray import _reconstruct, scalar


def _history_buffer_method(owner: Any, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine's HistoryBuffer pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``; any other attribute lookup, which
    could reach arbitrary objects, is refused.
    """
    if owner is HistoryBuffer and not name.startswith('_') and \
            inspect.isfunction(vars(HistoryBuffer).get(name)):
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed in a checkpoint')


_NUMPY_DTYPES = sorted(
    {type(np.dtype(code))
     for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']},
    key=lambda cls: cls.__name__)

#: Globals allowed while unpickling a checkpoint, beyond the tensors,
#: containers and numbers ``torch.load(weights_only=True)`` accepts anyway.
SAFE_GLOBALS: List[Union[Callable, Tuple[Callable, str]]] = [
    # official training scripts: the parsed command line ('args')
    argparse.Namespace,
    # mmengine Runner: the message hub's log buffers ...
    HistoryBuffer,
    (_history_buffer_method, 'builtins.getattr'),
    # ... and numpy scalars and arrays in logs and runtime info (numpy 1.x
    # and 2.x module names)
    np.ndarray,
    np.dtype,
    *_NUMPY_DTYPES,
    (_reconstruct, 'numpy.core.multiarray._reconstruct'),
    (_reconstruct, 'numpy._core.multiarray._reconstruct'),
    (scalar, 'numpy.core.multiarray.scalar'),
    (scalar, 'numpy._core.multiarray.scalar'),
]
torch.serialization.add_safe_globals(SAFE_GLOBALS)

#: How a refused whole-model checkpoint can still be used.
MODEL_TRUST_HINT = (
    "Checkpoints saved by mmengine's Runner never need more; if you trust "
    "the file's origin, load it once with torch.load(weights_only=False) "
    "and save its 'state_dict' entry alone with torch.save.")

FORMAT_NAMES = dict(torch='PyTorch', pickle='legacy PyTorch (pickle)',
                    safetensors='safetensors')
# Leading bytes of files that are sometimes mistaken for checkpoints.
FILE_SIGNATURES = (
    (b'\x89PNG', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'GIF8', 'a GIF image'),
    (b'%PDF', 'a PDF document'),
    (b'\x1f\x8b', 'a gzip archive'),
)
URL_SCHEMES = ('http://', 'https://')
#: Where ``torch.load`` puts the tensors: a device name, a ``torch.device``,
#: a dict mapping saved locations to new ones, a function of (storage,
#: location), or None for where they were saved.
MapLocation = Union[None, str, torch.device, Dict[str, str], Callable]

#: Bytes of a zip entry read at a time by the CRC-32 check: large reads keep
#: it at memory speed (about 40 ms for a 100 MB file).
CRC_CHUNK = 1 << 24


def _safe_global_names() -> List[str]:
    return [entry[1] if isinstance(entry, tuple)
            else f'{entry.__module__}.{entry.__qualname__}'
            for entry in SAFE_GLOBALS]


def _describe_content(head: bytes) -> str:
    """What the first bytes of a non-checkpoint file look like."""
    for signature, kind in FILE_SIGNATURES:
        if head.startswith(signature):
            return kind
    if all(32 <= byte < 127 or byte in b'\t\n\r' for byte in head):
        text = ' '.join(head.decode('ascii').split())
        return f'text ({text[:40]!r}...)'
    return f'an unknown format (first bytes {head[:8].hex(" ")})'


def checkpoint_format(path: str) -> str:
    """``'torch'`` (zip), ``'pickle'`` (legacy torch.save) or
    ``'safetensors'``, from the file's leading bytes.

    Raises FileNotFoundError or CheckpointError, naming the file, for
    anything that is not a checkpoint at all.
    """
    if not osp.exists(path):
        raise FileNotFoundError(f'Checkpoint file not found: {path}.')
    if osp.isdir(path):
        raise CheckpointError(
            f'{path} is a directory, not a checkpoint file.')
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointError(
            f'{path} is empty (0 bytes), not a checkpoint: an interrupted '
            f'download or copy? Fetch the file again.')
    with open(path, 'rb') as file:
        head = file.read(64)
    if head.startswith(b'PK\x03\x04'):
        return 'torch'
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return 'pickle'
    if head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < size:
        return 'safetensors'  # header length, then a JSON header
    raise CheckpointError(
        f'{path} is not a checkpoint: it looks like {_describe_content(head)}'
        f', not a file written by torch.save or safetensors ({size} bytes).')


def _disallowed_globals(path: str, error: Exception) -> List[str]:
    """The globals a refused pickle wanted, minus those we allow."""
    names = set(re.findall(r'GLOBAL (\S+)', str(error)))
    try:
        names.update(torch.serialization.get_unsafe_globals_in_checkpoint(
            path))
    except Exception:  # only zip checkpoints can be listed this way
        pass
    return sorted(names - set(_safe_global_names()))


def _reader_error(error: Exception) -> str:
    """The informative first sentence of a reader's error message."""
    text = str(error)
    unpickler = re.search(r'WeightsUnpickler error:\s*(.+?)(?:\n\n|$)', text,
                          re.S)
    if unpickler:
        text = unpickler[1]
    sentence = text.strip().split('\n')[0].split('. ')[0].rstrip('.')
    return sentence[:200] or type(error).__name__


def _check_zip_entries(path: str) -> None:
    """Refuse a zip checkpoint an entry of which is damaged.

    The zip format stores a CRC-32 of every entry, but torch.load does not
    check it: a flipped bit in a tensor's data (a bad disk, copy or
    download) loads as a different weight. zipfile checks it while reading
    an entry; a zip directory it cannot read at all raises zipfile's own
    errors, which :func:`_load_local` reports.
    """
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            try:
                with archive.open(entry) as member:
                    while member.read(CRC_CHUNK):
                        pass
            except Exception as error:  # zipfile, zlib, decoding errors
                problem = (
                    "fails its CRC-32 check, so its bytes are not the ones "
                    "torch.save wrote" if str(error).startswith('Bad CRC-32')
                    else f'cannot be read ({_reader_error(error)})')
                raise CheckpointError(
                    f'{path} is damaged: entry {entry.filename!r} {problem} '
                    f'(a bad disk, or an interrupted or corrupted download '
                    f'or copy); re-download or re-copy it.') from None


def _is_cpu(map_location: MapLocation) -> bool:
    return map_location is None or (
        isinstance(map_location, (str, torch.device))
        and torch.device(map_location).type == 'cpu')


def _load_safetensors(path: str,
                      map_location: MapLocation) -> Dict[str, torch.Tensor]:
    """A safetensors file's tensors (stored without a device), placed by
    ``map_location`` as ``torch.load`` places tensors saved on the CPU."""
    try:
        from safetensors.torch import load_file
    except ImportError:  # an optional dependency
        raise CheckpointError(
            f'{path} is a safetensors file; reading it needs the '
            f'safetensors package (pip install safetensors).') from None
    tensors = load_file(path)
    if _is_cpu(map_location):
        return tensors
    # torch.load's own rules for every form of map_location
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location=map_location, weights_only=True)


def _load_local(path: str, trusted: bool, trust_hint: str,
                map_location: MapLocation) -> Any:
    """A local checkpoint file, read as :func:`load_checkpoint` says."""
    kind = checkpoint_format(path)
    size = osp.getsize(path)
    try:
        if kind == 'safetensors':
            return _load_safetensors(path, map_location)
        if kind == 'torch':
            _check_zip_entries(path)
        return torch.load(path, map_location=map_location,
                          weights_only=not trusted)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        offending = [] if trusted else _disallowed_globals(path, error)
        lookup = re.search(r'(getattr\(.*?\)) is not allowed', str(error))
        if lookup and not offending:  # refused by _history_buffer_method
            offending = [lookup[1]]
        if offending:
            raise UnsafeCheckpointError(
                f'Refusing to load {path}: unpickling it would call '
                f'{", ".join(offending)}, which is not one of the tensor, '
                f'container and number types checkpoints hold; a file like '
                f'this can run arbitrary code when loaded. {trust_hint}'
            ) from None
        reason = _reader_error(error)
    except Exception as error:  # torch, zip and safetensors readers
        if 'torch.cuda.is_available() is False' in str(error):
            raise CheckpointError(
                f'{path} holds tensors saved on a GPU, and the reader was '
                f'asked to keep them there (map_location={map_location!r}), '
                f'but this machine has no GPU: pass map_location="cpu".'
            ) from None
        reason = _reader_error(error)
    raise CheckpointError(
        f'{path} could not be read as a {FORMAT_NAMES[kind]} checkpoint '
        f'({size} bytes): {reason}. The file is probably truncated or corrupt '
        f'(an interrupted download or copy?) or was not written by '
        f'torch.save or safetensors.')


def _fetch(url: str, path: str) -> None:
    """Download ``url`` to ``path`` (torch.hub writes a temporary file and
    moves it into place when done)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    print_log(f'Downloading {url} to {path}', logger='current')
    try:
        torch.hub.download_url_to_file(url, path, progress=False)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = (f'HTTP error {error.code} ({error.reason})'
                  if isinstance(error, urllib.error.HTTPError) else
                  getattr(error, 'reason', None) or error)
        raise CheckpointError(
            f'Could not download the checkpoint {url}: {reason}. Download '
            f'it yourself and pass the local file.') from None


def download(url: str) -> str:
    """The local copy of ``url`` in the torch hub cache, downloaded first if
    it is not there. In a distributed run rank 0 downloads while the other
    ranks wait, and reaches that barrier even when its download fails, so
    no rank hangs."""
    name = osp.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise CheckpointError(f'{url} names no file to download.')
    path = osp.join(torch.hub.get_dir(), 'checkpoints', name)
    rank, world_size = get_dist_info()
    failure = None
    if rank == 0 and not osp.isfile(path):
        try:
            _fetch(url, path)
        except CheckpointError as error:
            failure = error
    if world_size > 1:
        barrier()
    if failure is not None:
        raise failure
    if not osp.isfile(path):  # a rank with a hub cache of its own
        _fetch(url, path)
    return path


_read_once_cache: Optional[Dict[str, Tuple[MapLocation, Any]]] = None


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    """Within the context, a checkpoint is deserialized once: the object a
    read returns is kept for the next read of the same file, which takes it
    (so a tool can check a file, then let mmengine's Runner load it). A
    next read that asks for another ``map_location`` than the first reads
    the file again."""
    global _read_once_cache
    outer, _read_once_cache = _read_once_cache, {}
    try:
        yield
    finally:
        _read_once_cache = outer


def load_checkpoint(filename: str, trusted: bool = False,
                    trust_hint: str = MODEL_TRUST_HINT,
                    map_location: MapLocation = 'cpu') -> Any:
    """Load a checkpoint (local file, URL or other storage) without running
    code from it, its tensors where ``map_location`` puts them (as for
    ``torch.load``; the CPU by default).

    Pickled files go through ``torch.load(weights_only=True)`` with only
    :data:`SAFE_GLOBALS` allowed on top of tensors, containers and numbers;
    ``.safetensors`` files cannot hold code at all. ``trusted=True``
    unpickles anything, for legacy files from a trusted source;
    ``trust_hint`` ends the message of a refused file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: unpickling would call a global that is not
            allowed; names the file and the global.
        CheckpointError: empty, truncated or corrupt files (a zip entry
            failing its CRC-32 check is named), files that are no
            checkpoint at all, failed downloads.
    """
    filename = str(filename)
    is_url = filename.startswith(URL_SCHEMES)
    local = not is_url and '://' not in filename
    key = osp.realpath(osp.expanduser(filename)) if local else filename
    cache = _read_once_cache
    if cache is not None and key in cache:
        location, checkpoint = cache.pop(key)
        if location is map_location or (
                _is_cpu(location) and _is_cpu(map_location)):
            return checkpoint
    if is_url:
        checkpoint = _load_local(download(filename), trusted, trust_hint,
                                 map_location)
    elif local:
        checkpoint = _load_local(osp.expanduser(filename), trusted,
                                 trust_hint, map_location)
    else:  # s3://, petrel://, ...: mmengine's loader, weights-only
        checkpoint = CheckpointLoader.load_checkpoint(filename, map_location)
    if cache is not None:
        cache[key] = (map_location, checkpoint)
    return checkpoint


def load_from_wavevit_mm(filename: str,
                         map_location: MapLocation = None) -> Any:
    """mmengine's loader for local files and URLs: :func:`load_checkpoint`,
    with the ``map_location`` the caller passes (mmengine's own loader
    hands it to ``torch.load`` the same way)."""
    return load_checkpoint(filename, map_location=map_location)


def register_loader() -> None:
    """Make :func:`load_from_wavevit_mm` mmengine's loader for local files
    and http(s) URLs, for every model of the process (done when
    ``wavevit_mm`` is imported)."""
    CheckpointLoader.register_scheme(('', ) + URL_SCHEMES,
                                     load_from_wavevit_mm, force=True)


def unregister_loader() -> None:
    """Give mmengine its own loaders for local files and URLs back (they
    read with torch's default weights-only rules; the allow-list stays
    registered)."""
    CheckpointLoader.register_scheme('', load_from_local, force=True)
    CheckpointLoader.register_scheme(URL_SCHEMES, load_from_http, force=True)


register_loader()
