"""Errors a user can fix, and how the tools report them.

A checkpoint that is no checkpoint, a config asking for an impossible
backbone, a dataset folder that is not there, a work dir another run is
using or whose disk is full: these are mistakes in what the user gave or
in where the run is, and the tools answer them with one paragraph on
stderr (``train.py: error: ...``) and exit status 1, not with a
traceback.
Anything else, i.e. a bug, keeps its traceback.
"""
import contextlib
import re
import sys
from typing import Iterator


class InputError(ValueError):
    """A file or setting given by the user that cannot be used."""


class ConfigError(InputError):
    """A config value the model cannot be built with."""


class DataError(InputError):
    """A dataset, image or label file that cannot be used."""


class CheckpointError(InputError):
    """A file that cannot be used as the weights asked for."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (disk full, a file-size limit,
    a read-only folder); the files that were there are left as they were."""


class WorkDirInUseError(InputError):
    """A work dir that another live training run is writing to."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would call something other than the
    tensor, container and number constructors checkpoints need."""


class TrainingDivergedError(RuntimeError):
    """The loss or the weights stopped being finite during training."""


#: What the tools report as one paragraph instead of a traceback.
USER_ERRORS = (InputError, FileNotFoundError, TrainingDivergedError)

# mmengine's registry re-raises errors of a build as
# "class `CocoDataset` in mmdet/datasets/coco.py: <message>"
_BUILD_PREFIX = re.compile(r'class `(\w+)` in [\w/.]+\.py: ')
# torch re-raises an error of a DataLoader worker with the worker's
# traceback in the message; its last line is the original error
_WORKER_ERROR = re.compile(r'Original Traceback.*\n(?:\w+\.)*\w+: (.+?)\s*$',
                           re.S)


def one_paragraph(error: BaseException) -> str:
    """The message of ``error`` as one line of prose."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f'{error.strerror}: {error.filename}'
    else:
        text = str(error)
    worker = _WORKER_ERROR.search(text)
    if worker:
        text = worker[1]
    text = _BUILD_PREFIX.sub(r'\1: ', text)
    return ' '.join(text.split()) or type(error).__name__


@contextlib.contextmanager
def report_errors(prog: str) -> Iterator[None]:
    """Turn :data:`USER_ERRORS` into ``prog: error: <message>`` on stderr
    and exit status 1; let every other exception through."""
    try:
        yield
    except USER_ERRORS as error:
        sys.stderr.write(f'{prog}: error: {one_paragraph(error)}\n')
        sys.stderr.flush()
        raise SystemExit(1) from None
