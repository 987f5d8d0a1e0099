"""Reading checkpoint files without running code from them.

Checkpoint files are untrusted input: a ``.pth`` file is a pickle, and
unpickling can call anything. :func:`load_checkpoint` is the one reader of
the process; it reads

* local files, after checking they are checkpoints at all (zip or legacy
  ``torch.save`` pickles, ``.safetensors``) and, for zip files, that every
  entry passes its CRC-32 check (torch.load does not check it, so a
  damaged file would load as different weights);
* ``http(s)://`` URLs (any letter case), downloaded once into a cache of
  their own (:mod:`.url_cache`) and then read as local files; a download
  the reader refuses is removed from the cache;
* OpenMMLab's model-zoo names (``open-mmlab://``, ``openmmlab://``,
  ``torchvision://``, ``modelzoo://``, ``mmcls://``), resolved with
  mmengine's own tables to a URL or a file, then read as those;
* ``s3://`` and ``petrel://`` paths, fetched by mmengine's file backend and
  read as local files;

always weights-only with :data:`~.allow_list.SAFE_GLOBALS`
(:func:`~.allow_list.weights_only_load`), onto the device ``map_location``
names (the CPU unless a caller says otherwise). Any other scheme
(``pavi://``, ``ftp://``, ``file://``) is refused in one paragraph.

This reader is registered as mmengine's loader for every scheme mmengine
knows (:func:`register_loader`, done when this module is imported, i.e.
``import wavevit_mm``, which every config does through ``custom_imports``),
so ``load_from``, ``--resume`` and mmdet's and mmseg's own tools read
checkpoints the same way. This holds for every model of the process;
:func:`unregister_loader` gives mmengine its own loaders back.

Within :func:`read_once`, a file read to check it is handed to the next
reader (e.g. mmengine's Runner) without being deserialized again.
"""
import contextlib
import io
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from mmengine.fileio import get_file_backend
from mmengine.runner import CheckpointLoader
from mmengine.runner import checkpoint as mmengine_checkpoint

from ..errors import CheckpointError, UnsafeCheckpointError
from .allow_list import SAFE_GLOBAL_NAMES, weights_only_load
from .url_cache import download, forget

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
#: ``scheme://``, after an optional ``name:`` (mmengine's
#: ``open-mmlab:s3://...``).
SCHEME = re.compile(r'^(?:[\w.+-]+:)?([A-Za-z][\w.+-]*)://')
#: Schemes that name a file in mmengine's storage backends.
STORAGE_SCHEMES = ('s3', 'petrel')
#: OpenMMLab's model-zoo schemes, resolved with mmengine's tables.
ZOO_SCHEMES = ('open-mmlab', 'openmmlab', 'torchvision', 'modelzoo', 'mmcls')
#: Where ``torch.load`` puts the tensors: a device name, a ``torch.device``,
#: a dict mapping saved locations to new ones, a function of (storage,
#: location), or None for where they were saved.
MapLocation = Union[None, str, torch.device, Dict[str, str], Callable]

#: Bytes of a zip entry read at a time by the CRC-32 check: large reads keep
#: it at memory speed (about 40 ms for a 100 MB file).
CRC_CHUNK = 1 << 24


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
    return sorted(names - set(SAFE_GLOBAL_NAMES))


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
        if trusted:
            return torch.load(path, map_location=map_location,
                              weights_only=False)
        return weights_only_load(path, map_location)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        offending = [] if trusted else _disallowed_globals(path, error)
        lookup = re.search(r'(getattr\(.*?\)) is not allowed', str(error))
        if lookup and not offending:  # refused by _history_buffer_method
            offending = [lookup[1]]
        state = re.search(r'(a HistoryBuffer .*?) is not allowed in a '
                          r'checkpoint \((.*?)\)', str(error))
        if state and not offending:  # refused by _HistoryBufferFromFile
            raise UnsafeCheckpointError(
                f'Refusing to load {path}: it holds {state[1]}, which is '
                f'not what mmengine writes ({state[2]}). {trust_hint}'
            ) from None
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


def _zoo_target(filename: str, scheme: str) -> str:
    """The URL or file an OpenMMLab model-zoo name stands for, from
    mmengine's own tables."""
    name = filename.split('://', 1)[1]
    if scheme in ('open-mmlab', 'openmmlab'):
        name = mmengine_checkpoint.get_deprecated_model_names().get(name,
                                                                   name)
        table = mmengine_checkpoint.get_external_models()
    elif scheme == 'mmcls':
        table = mmengine_checkpoint.get_mmcls_models()
    else:  # torchvision://, modelzoo://
        try:
            table = mmengine_checkpoint.get_torchvision_models()
        except ImportError:
            raise CheckpointError(
                f'{filename} names a torchvision model; finding its URL '
                f'needs torchvision (pip install torchvision).') from None
    if name not in table:
        raise CheckpointError(
            f'{filename} names no model mmengine knows under {scheme}://; '
            f'check the name, or pass a local file or URL.')
    target = table[name]
    if SCHEME.match(target):
        return target
    return osp.join(mmengine_checkpoint._get_mmengine_home(), target)


def _load_from_storage(filename: str, trusted: bool, trust_hint: str,
                       map_location: MapLocation) -> Any:
    """An ``s3://`` or ``petrel://`` file, fetched by mmengine's file
    backend (as mmengine's own loader does) and read as a local file."""
    data = get_file_backend(filename, backend_args=dict(
        backend='petrel')).get(filename)
    with tempfile.TemporaryDirectory() as folder:
        path = osp.join(folder, 'checkpoint')
        with open(path, 'wb') as file:
            file.write(data)
        try:
            return _load_local(path, trusted, trust_hint, map_location)
        except CheckpointError as error:  # name the file, not the copy
            raise type(error)(str(error).replace(path, filename)) from None


def _load_url(url: str, trusted: bool, trust_hint: str,
              map_location: MapLocation) -> Any:
    """A URL's cached download, removed from the cache if refused."""
    path = download(url)
    try:
        return _load_local(path, trusted, trust_hint, map_location)
    except CheckpointError:
        forget(path)
        raise


def _load(filename: str, trusted: bool, trust_hint: str,
          map_location: MapLocation) -> Any:
    """:func:`load_checkpoint` without the hand-over of :func:`read_once`."""
    scheme = SCHEME.match(filename)
    if scheme is None:
        return _load_local(osp.expanduser(filename), trusted, trust_hint,
                           map_location)
    scheme = scheme[1].lower()
    if scheme in ('http', 'https'):
        return _load_url(filename, trusted, trust_hint, map_location)
    if scheme in ZOO_SCHEMES:
        checkpoint = _load(_zoo_target(filename, scheme), trusted,
                           trust_hint, map_location)
        if scheme == 'mmcls':  # mmengine keeps the backbone's weights
            checkpoint = mmengine_checkpoint._process_mmcls_checkpoint(
                checkpoint)
        return checkpoint
    if scheme in STORAGE_SCHEMES:
        return _load_from_storage(filename, trusted, trust_hint, map_location)
    raise CheckpointError(
        f'Refusing to read {filename}: {scheme}:// is not a source '
        f'checkpoints are read from (local files, http(s) URLs, '
        f'{", ".join(s + "://" for s in ZOO_SCHEMES)} and '
        f'{", ".join(s + "://" for s in STORAGE_SCHEMES)}). Download the file '
        f'and pass its local path.')


def load_checkpoint(filename: str, trusted: bool = False,
                    trust_hint: str = MODEL_TRUST_HINT,
                    map_location: MapLocation = 'cpu') -> Any:
    """Load a checkpoint (a local file, a URL, a model-zoo name or a file
    in storage; see the module's docstring) without running code from it,
    its tensors where ``map_location`` puts them (as for ``torch.load``;
    the CPU by default).

    Pickled files are read weights-only with only :data:`SAFE_GLOBALS`
    allowed on top of tensors, containers and numbers; ``.safetensors``
    files cannot hold code at all. ``trusted=True`` unpickles anything,
    for legacy files from a trusted source; ``trust_hint`` ends the message
    of a refused file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: unpickling would call a global that is not
            allowed, or build a value mmengine never writes; names the file
            and what it holds.
        CheckpointError: empty, truncated or corrupt files (a zip entry
            failing its CRC-32 check is named), files that are no
            checkpoint at all, failed downloads, unsupported schemes.
    """
    filename = str(filename)
    local = SCHEME.match(filename) is None
    key = osp.realpath(osp.expanduser(filename)) if local else filename
    cache = _read_once_cache
    if cache is not None and key in cache:
        location, checkpoint = cache.pop(key)
        if location is map_location or (
                _is_cpu(location) and _is_cpu(map_location)):
            return checkpoint
    checkpoint = _load(filename, trusted, trust_hint, map_location)
    if cache is not None:
        cache[key] = (map_location, checkpoint)
    return checkpoint


def load_from_wavevit_mm(filename: str,
                         map_location: MapLocation = None) -> Any:
    """mmengine's loader for every scheme: :func:`load_checkpoint` in the
    form mmengine calls a loader, ``loader(filename, map_location)``, its
    log naming the loader after ``load_from_`` ("by wavevit_mm backend")."""
    return load_checkpoint(filename, map_location=map_location)


# mmengine's loaders by prefix, as they were before ours replaced them
_mmengine_loaders = dict(CheckpointLoader._schemes)


def register_loader() -> None:
    """Make :func:`load_from_wavevit_mm` mmengine's loader for every prefix
    it has a loader for (local files, URLs, model zoos, storage), for every
    model of the process (done when ``wavevit_mm`` is imported)."""
    CheckpointLoader.register_scheme(list(_mmengine_loaders),
                                     load_from_wavevit_mm, force=True)


def unregister_loader() -> None:
    """Give mmengine its own loaders back (they read with torch's default
    rules; the allow-list stays registered)."""
    for prefix, loader in _mmengine_loaders.items():
        CheckpointLoader.register_scheme(prefix, loader, force=True)


register_loader()
