"""One training run per work dir: two would write the same checkpoints and
delete each other's files."""
import datetime
import errno
import json
import logging
import os
import os.path as osp
import socket
from typing import Any, Dict, List

from mmengine.dist import broadcast_object_list, get_world_size, \
    is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ...errors import InputError, WorkDirInUseError

try:  # POSIX
    import fcntl
except ImportError:
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

#: The lock file in the work dir: locked by the run training there,
#: holding its pid, host and start time.
LOCK_FILE = 'train.lock'
# Folders (real paths) this process holds, with their lock files' fds
_held_locks: Dict[str, int] = {}


def _owner_text(owner: Dict[str, Any]) -> str:
    return (f'pid {owner.get("pid", "?")} on host {owner.get("host", "?")}, '
            f'running since {owner.get("since", "?")}')


def _open_lock_file(path: str) -> int:
    """The lock file's fd, never through a symbolic link."""
    if osp.islink(path):  # O_NOFOLLOW, where the system has none
        raise _link_error(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0) | \
        getattr(os, 'O_BINARY', 0)
    try:
        return os.open(path, flags, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _link_error(path) from None
        raise


def _link_error(path: str) -> InputError:
    return InputError(
        f'{path} is a symbolic link; the lock file of a work dir must be a '
        f'plain file there (taking the lock writes to it). Remove the link '
        f'and start the run again.')


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, someone else's
        return True
    return True


def _try_lock(fd: int, owner: Dict[str, Any]) -> bool:
    """Take an exclusive lock the system drops when this process dies, and
    which a forked child (a DataLoader worker) does not inherit: a POSIX
    record lock, or a Windows byte-range lock (the process never opens the
    lock file otherwise: closing any descriptor of it drops a POSIX lock).
    Without either, the owner record decides: a live pid on this host holds
    the folder."""
    if fcntl is not None:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
    if msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    return not (owner.get('host') == socket.gethostname()
                and owner.get('pid') != os.getpid()
                and _pid_alive(owner.get('pid')))


def _read_owner(fd: int) -> Dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors='replace')
    try:
        owner = json.loads(text)
    except ValueError:  # empty (released) or being written
        return {}
    return owner if isinstance(owner, dict) else {}


def _write(fd: int, text: str) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, text.encode())


def lock_work_dir(work_dir: str, role: str = 'work dir') -> None:
    """Take ``work_dir`` for this process, or raise WorkDirInUseError
    naming the live run that holds it.

    The lock is on ``work_dir/train.lock``, which the system releases when
    its process dies however it dies, so a lock left by a killed run is
    taken over (with a warning naming that run). ``role`` names the folder
    in messages (the work dir, or the folder checkpoints are written to).
    """
    path = osp.join(osp.realpath(work_dir), LOCK_FILE)
    fd = _held_locks.get(path)
    if fd is None:  # not held by an earlier run of this process
        os.makedirs(osp.dirname(path), exist_ok=True)
        fd = _open_lock_file(path)
        previous = _read_owner(fd)
        if not _try_lock(fd, previous):
            owner = _read_owner(fd)
            os.close(fd)
            raise WorkDirInUseError(
                f'{work_dir} is in use by another training run '
                f'({_owner_text(owner)}; lock file {path}). Two runs in one '
                f'{role} would overwrite each other\'s checkpoints: wait '
                f'for it to end, stop it, or train into another --work-dir.')
        _held_locks[path] = fd
    previous = _read_owner(fd)
    if previous and previous.get('pid') != os.getpid():
        print_log(f'{work_dir}: the training run that used it before '
                  f'({_owner_text(previous)}) ended without releasing it; '
                  f'taking it over.', logger='current',
                  level=logging.WARNING)
    since = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    _write(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                               since=since)) + '\n')


def unlock_work_dir(work_dir: str) -> None:
    """Release the folder taken by :func:`lock_work_dir` (the lock file
    stays, emptied: deleting it could let two runs lock different files)."""
    fd = _held_locks.pop(osp.join(osp.realpath(work_dir), LOCK_FILE), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the lock


def checkpoint_folders(runner) -> List[str]:
    """The folders other than the work dir that the run's checkpoint hooks
    write to: ``out_dir/<work dir's name>`` (mmengine's rule), local ones
    only."""
    name = osp.basename(osp.normpath(runner.work_dir))
    folders = []
    for hook in runner.hooks:
        out_dir = getattr(hook, 'out_dir', None)
        if isinstance(hook, CheckpointHook) and out_dir and \
                '://' not in str(out_dir):
            folder = osp.join(str(out_dir), name)
            if osp.realpath(folder) != osp.realpath(runner.work_dir):
                folders.append(folder)
    return folders


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """Refuse to train in a work dir another live run is training in.

    Two runs in one work dir write the same ``epoch_N.pth`` and
    ``last_checkpoint`` and delete each other's files. Before training
    (after the checkpoint to resume from has been read, before anything is
    written or cleaned up) rank 0 takes the work dir with
    :func:`lock_work_dir`, and the folder checkpoints are written to where
    a checkpoint hook's ``out_dir`` puts them elsewhere (two work dirs of
    the same name would share it); every rank stops with the same error if
    one is taken. When training ends the lock is released and its file
    emptied (:func:`unlock_work_dir`). Testing and validating do not lock:
    they write no checkpoints.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._taken: List[str] = []

    def before_train(self, runner) -> None:
        refusal = [None]
        if is_main_process():
            self._taken = taken = []
            try:
                for folder, role in [(runner.work_dir, 'work dir')] + [
                        (folder, 'checkpoint folder')
                        for folder in checkpoint_folders(runner)]:
                    lock_work_dir(folder, role)
                    taken.append(folder)
            except InputError as error:  # in use, or a linked lock file
                for folder in taken:
                    unlock_work_dir(folder)
                taken.clear()
                refusal = [str(error)]
        if get_world_size() > 1:
            broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise WorkDirInUseError(refusal[0])

    def after_train(self, runner) -> None:
        for folder in self._taken:
            unlock_work_dir(folder)
        self._taken = []
