"""One training run per work dir: two would write the same checkpoints and
delete each other's files."""
import datetime
import fcntl
import json
import logging
import os
import os.path as osp
import socket
from typing import IO, Any, Dict

from mmengine.dist import broadcast_object_list, get_world_size, \
    is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ...errors import WorkDirInUseError

#: The lock file in the work dir: flock()ed by the run training there,
#: holding its pid, host and start time.
LOCK_FILE = 'train.lock'
# Work dirs (real paths) this process holds, with their open lock files
_held_locks: Dict[str, IO[str]] = {}


def _owner_text(owner: Dict[str, Any]) -> str:
    return (f'pid {owner.get("pid", "?")} on host {owner.get("host", "?")}, '
            f'running since {owner.get("since", "?")}')


def lock_work_dir(work_dir: str) -> None:
    """Take the work dir for this process, or raise WorkDirInUseError
    naming the live run that holds it.

    The lock is an ``flock`` on ``work_dir/train.lock``, which the kernel
    releases when its process dies however it dies, so a lock left by a
    killed run is taken over (with a warning naming that run).
    """
    path = osp.realpath(osp.join(work_dir, LOCK_FILE))
    file = _held_locks.get(path)
    if file is None:  # not held by an earlier run of this process
        os.makedirs(osp.dirname(path), exist_ok=True)
        file = open(path, 'a+')
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = _read_owner(file.read())
            file.close()
            raise WorkDirInUseError(
                f'{work_dir} is in use by another training run '
                f'({_owner_text(owner)}; lock file {path}). Two runs in one '
                f'work dir would overwrite each other\'s checkpoints: wait '
                f'for it to end, stop it, or train into another --work-dir.'
            ) from None
        _held_locks[path] = file
    file.seek(0)
    previous = _read_owner(file.read())
    if previous and previous.get('pid') != os.getpid():
        print_log(f'{work_dir}: the training run that used it before '
                  f'({_owner_text(previous)}) ended without releasing it; '
                  f'taking it over.', logger='current',
                  level=logging.WARNING)
    since = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    file.seek(0)
    file.truncate()
    file.write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                               since=since)) + '\n')
    file.flush()


def _read_owner(text: str) -> Dict[str, Any]:
    try:
        owner = json.loads(text)
    except ValueError:  # empty (released) or being written
        return {}
    return owner if isinstance(owner, dict) else {}


def unlock_work_dir(work_dir: str) -> None:
    """Release the work dir taken by :func:`lock_work_dir` (the lock file
    stays, emptied: deleting it could let two runs lock different files)."""
    file = _held_locks.pop(osp.realpath(osp.join(work_dir, LOCK_FILE)), None)
    if file is not None:
        file.truncate(0)
        file.close()  # closing releases the flock


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """Refuse to train in a work dir another live run is training in.

    Two runs in one work dir write the same ``epoch_N.pth`` and
    ``last_checkpoint`` and delete each other's files. Before training
    (after the checkpoint to resume from has been read, before anything is
    written or cleaned up) rank 0 takes the work dir with
    :func:`lock_work_dir`; every rank stops with the same error if it is
    taken. Testing and validating do not lock: they write no checkpoints.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        refusal = [None]
        if is_main_process():
            try:
                lock_work_dir(runner.work_dir)
            except WorkDirInUseError as error:
                refusal = [str(error)]
        if get_world_size() > 1:
            broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise WorkDirInUseError(refusal[0])

    def after_train(self, runner) -> None:
        if is_main_process():
            unlock_work_dir(runner.work_dir)
