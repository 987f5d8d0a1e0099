"""Writing checkpoints so that a file only ever appears complete.

:func:`atomic_write` is the one way files are written here: into a hidden
temporary file beside the destination, flushed to the disk, then moved
into place with one ``os.replace``. A process killed, or a disk full, at
any moment leaves either the old file or the new one, never half of one,
and no temporary file after a failure it survives; a write the system
refuses is a :class:`~wavevit_mm.errors.CheckpointWriteError` naming the
folder and the bytes needed.
:class:`AtomicLocalBackend` is mmengine's local file backend written that
way, for the checkpoint hook.
"""
import contextlib
import errno
import os
import os.path as osp
import shutil
import stat
import uuid
from typing import Dict, Iterator, List, Optional

import torch
from mmengine.fileio import LocalBackend, register_backend
from torch import Tensor

from ..errors import CheckpointError, CheckpointWriteError

#: Temporary files are ``.<name>.<random>.tmp`` beside their destination
#: (the name cut to fit the file-name limit).
TMP_SUFFIX = '.tmp'
NAME_MAX = 255


def _fsync(path: str) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temporaries."""
    return name.startswith('.') and name.endswith(TMP_SUFFIX)


def _write_failure(dst: str, folder: str, size: Optional[int],
                   error: OSError) -> CheckpointWriteError:
    """One paragraph on a write that failed: the file, the folder, the
    bytes it needed, what the system said and what is left."""
    needed = f' ({size} bytes)' if size is not None else ''
    try:
        free = f', {shutil.disk_usage(folder).free} bytes free there'
    except OSError:
        free = ''
    reason = error.strerror or str(error)
    code = errno.errorcode.get(error.errno, '')
    return CheckpointWriteError(
        f'Could not write {dst}{needed} into {folder}: {reason}'
        f'{" [" + code + "]" if code else ""}{free}. The files there are as '
        f'they were (nothing replaced or deleted, no partial file left): '
        f'free space, raise the file-size limit (ulimit -f) or write to '
        f'another folder, then resume from the last checkpoint.')


def _temporary_name(dst: str) -> str:
    suffix = f'.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}'
    name = osp.basename(dst).encode()[:NAME_MAX - 1 - len(suffix)]
    return f'.{name.decode(errors="ignore")}{suffix}'


def _move_into_place(tmp: str, dst: str, replace: bool) -> None:
    """``os.replace`` keeping ``dst``'s mode, or, with ``replace=False``, a
    hard link that fails if ``dst`` exists (no window between a check and
    the move)."""
    if replace:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(dst).st_mode))
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise FileExistsError(
            f'{dst} already exists; pass --force (force=True) to overwrite '
            f'it.') from None
    except OSError:  # a file system without hard links
        if osp.lexists(dst):
            raise FileExistsError(
                f'{dst} already exists; pass --force (force=True) to '
                f'overwrite it.') from None
        os.replace(tmp, dst)


@contextlib.contextmanager
def atomic_write(dst: str, size: Optional[int] = None,
                 replace: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``dst`` to write the file to.

    When the block ends normally the file is flushed to the disk and
    replaces ``dst`` in one step, with ``dst``'s mode (and the folder entry
    is flushed); with ``replace=False`` an existing ``dst`` is kept and
    FileExistsError raised instead, checked in the same step. When the
    block raises, the temporary file is removed and ``dst`` is left as it
    was. A write the system refuses (no space, a file-size limit, a
    read-only folder: any other OSError) becomes a
    :class:`CheckpointWriteError` naming ``dst``, its folder and ``size``,
    the bytes the file needs.
    """
    folder = osp.dirname(osp.abspath(dst))
    tmp = osp.join(folder, _temporary_name(dst))
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        _fsync(tmp)
        _move_into_place(tmp, dst, replace)
    except FileExistsError:
        raise
    except OSError as error:
        raise _write_failure(dst, folder, size, error) from error
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    _fsync(folder)


def write_text_atomically(path: str, text: str) -> None:
    data = text.encode()
    with atomic_write(path, len(data)) as tmp, open(tmp, 'wb') as file:
        file.write(data)


def save_weights(state_dict: Dict[str, Tensor], path: str,
                 meta: Dict[str, str], safetensors: bool = False) -> None:
    """Write a state dict with safetensors, or with ``torch.save`` as
    ``{'state_dict': ..., 'meta': ...}`` (not atomic by itself: write to
    the path :func:`atomic_write` gives)."""
    if not safetensors:
        torch.save(dict(state_dict=state_dict, meta=meta), path)
        return
    try:
        from safetensors.torch import save_file
    except ImportError:  # an optional dependency
        raise CheckpointError(
            'writing .safetensors needs the safetensors package (pip '
            'install safetensors)') from None
    save_file({k: v.detach().contiguous() for k, v in state_dict.items()},
              path, metadata=meta)


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, writing with :func:`atomic_write`.

    Inside :meth:`removals_deferred`, removals wait until the block ends
    normally (and are dropped if it raises), so a new checkpoint can be
    written before the one it replaces is deleted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._deferred: Optional[List[str]] = None

    def put(self, obj: bytes, filepath) -> None:
        with atomic_write(str(filepath), len(obj)) as tmp:
            super().put(obj, tmp)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        with atomic_write(str(filepath), len(obj.encode(encoding))) as tmp:
            super().put_text(obj, tmp, encoding)

    def remove(self, filepath) -> None:
        if self._deferred is None:
            super().remove(filepath)
        else:
            self._deferred.append(str(filepath))

    def rmtree(self, dir_path) -> None:
        if self._deferred is None:
            super().rmtree(dir_path)
        else:
            self._deferred.append(str(dir_path))

    @contextlib.contextmanager
    def removals_deferred(self) -> Iterator[None]:
        if self._deferred is not None:  # nested: the outer block decides
            yield
            return
        self._deferred = deferred = []
        try:
            yield
        finally:
            self._deferred = None
        for path in deferred:  # only reached when the block succeeded
            if osp.isdir(path):
                super().rmtree(path)
            elif osp.exists(path):
                super().remove(path)
