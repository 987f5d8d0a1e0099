"""What a checkpoint may contain besides tensors, containers and numbers.

:data:`SAFE_GLOBALS` names what official Wave-ViT training scripts and
mmengine's Runner pickle: an ``argparse.Namespace``, mmengine's
``HistoryBuffer`` logs and numpy values. Each admits data only: unpickling
an allowed global can build a value, never call a function of the file's
choosing or change the state of a class or module.

:func:`weights_only_load` reads a pickle with that list. Where torch can
extend its weights-only unpickler with aliases (``add_safe_globals`` taking
``(object, name)`` pairs, torch 2.6 and newer) the list is registered with
it once, so every weights-only ``torch.load`` of the process (mmengine's,
mmdet's tools) reads mmengine's checkpoints. On older torch a restricted
unpickler does the same job: torch's own weights-only globals plus the list,
and nothing else.
"""
import _compat_pickle
import argparse
import codecs
import collections
import inspect
import io
import pickle
import types
from typing import Any, Callable, Dict, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

try:  # numpy 2 moved numpy.core to numpy._core; 1.26 has both
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:
    from numpy.core.multiarray import _reconstruct, scalar

HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'
#: What mmengine's ``HistoryBuffer.__getstate__`` writes, and nothing else.
HISTORY_BUFFER_STATE = {'_log_history', '_count_history', 'max_length',
                        'statistics_methods'}


class _HistoryBufferFromFile(HistoryBuffer):
    """Unpickles a ``HistoryBuffer`` from its data alone.

    mmengine's ``__setstate__`` merges the file's ``statistics_methods``
    into the dict all buffers share, so a file mapping ``'mean'`` to
    ``HistoryBuffer.max`` would change every buffer of the process. Here
    the state may hold exactly what mmengine writes, each statistics method
    under its own name (what the class holds already, so nothing is
    merged); the instance then becomes a plain ``HistoryBuffer``.
    """

    def __setstate__(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) - HISTORY_BUFFER_STATE:
            extra = sorted(set(state) - HISTORY_BUFFER_STATE) \
                if isinstance(state, dict) else type(state).__name__
            raise pickle.UnpicklingError(
                f'a HistoryBuffer holding {extra} is not allowed in a '
                f'checkpoint (mmengine writes only '
                f'{sorted(HISTORY_BUFFER_STATE)})')
        methods = state.pop('statistics_methods', {})
        for name, method in dict(methods).items():
            if getattr(HistoryBuffer, str(name), None) is not method:
                raise pickle.UnpicklingError(
                    f'a HistoryBuffer statistics method {name!r} -> '
                    f'{getattr(method, "__qualname__", method)!r} is not '
                    f'allowed in a checkpoint (it would change the '
                    f'statistics of every buffer of the process)')
        self._set_default_statistics()
        self.__dict__.update(state)
        self.__class__ = HistoryBuffer


def _history_buffer_method(owner: Any, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine's HistoryBuffer pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')`` (the class read back as
    :class:`_HistoryBufferFromFile`); any other attribute lookup, which
    could reach arbitrary objects, is refused.
    """
    if owner in (HistoryBuffer, _HistoryBufferFromFile) and \
            not name.startswith('_') and \
            inspect.isfunction(vars(HistoryBuffer).get(name)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed in a checkpoint')


_NUMPY_DTYPES = sorted(
    {type(np.dtype(code))
     for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']},
    key=lambda cls: cls.__name__)

#: Globals allowed while unpickling a checkpoint, beyond the tensors,
#: containers and numbers ``torch.load(weights_only=True)`` accepts anyway;
#: ``(object, name)`` stands for the global ``name``.
SAFE_GLOBALS: List[Union[Callable, Tuple[Callable, str]]] = [
    # official training scripts: the parsed command line ('args')
    argparse.Namespace,
    # mmengine Runner: the message hub's log buffers ...
    (_HistoryBufferFromFile, HISTORY_BUFFER),
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


def _global_name(entry: Union[Callable, Tuple[Callable, str]]) -> str:
    return entry[1] if isinstance(entry, tuple) \
        else f'{entry.__module__}.{entry.__qualname__}'


#: The allowed globals by the name a pickle uses for them.
SAFE_GLOBAL_NAMES: Dict[str, Callable] = {
    _global_name(entry): entry[0] if isinstance(entry, tuple) else entry
    for entry in SAFE_GLOBALS}


def _older_torch_data_globals() -> Dict[str, Any]:
    """Data types that torch's weights-only unpickler admits since 2.4 and
    older torch does not list: every dtype, devices, sets, counters (the
    milestones of step schedulers) and the bytes of numpy arrays in
    protocol 2 pickles (``_codecs.encode``)."""
    found: Dict[str, Any] = {
        f'torch.{name}': value for name, value in vars(torch).items()
        if isinstance(value, torch.dtype)}
    found.update({'torch.device': torch.device, '_codecs.encode': codecs.encode,
                  'builtins.set': set, 'builtins.bytearray': bytearray,
                  'builtins.complex': complex,
                  'collections.Counter': collections.Counter})
    return found


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that finds torch's weights-only globals, the data types
    newer torch admits too, and :data:`SAFE_GLOBALS`, and refuses every
    other global."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names in protocol 2 pickles (torch.save's default)
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name),
            (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        full_name = f'{module}.{name}'
        allowed = SAFE_GLOBAL_NAMES.get(full_name,
                                        _OLDER_TORCH_DATA.get(full_name))
        if allowed is None:
            allowed = torch._weights_only_unpickler._get_allowed_globals(
            ).get(full_name)
        if allowed is None:
            raise pickle.UnpicklingError(
                f'Unsupported global: GLOBAL {full_name} is not allowed')
        return allowed


_OLDER_TORCH_DATA = _older_torch_data_globals()
#: A pickle module for ``torch.load(pickle_module=...)`` that unpickles
#: with :class:`_RestrictedUnpickler`.
restricted_pickle = types.ModuleType('wavevit_mm_restricted_pickle')
restricted_pickle.Unpickler = _RestrictedUnpickler
restricted_pickle.load = \
    lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load()
restricted_pickle.__version__ = None  # not dill (torch asks)


def _register_with_torch() -> bool:
    """Register :data:`SAFE_GLOBALS` with torch's weights-only unpickler if
    it takes ``(object, name)`` aliases; False (and torch's list as it was)
    where it does not."""
    serialization = torch.serialization
    if not hasattr(serialization, 'add_safe_globals'):
        return False
    before = serialization.get_safe_globals()
    serialization.add_safe_globals(SAFE_GLOBALS)
    probe = io.BytesIO()  # getattr(HistoryBuffer, 'mean'): two aliases
    torch.save(HistoryBuffer.mean, probe)
    probe.seek(0)
    try:
        if torch.load(probe, weights_only=True) is HistoryBuffer.mean:
            return True
    except Exception:  # aliases not understood (torch 2.4 and 2.5)
        pass
    serialization.clear_safe_globals()
    serialization.add_safe_globals(before)
    return False


#: Whether torch's own weights-only unpickler reads :data:`SAFE_GLOBALS`.
REGISTERED_WITH_TORCH = _register_with_torch()


def weights_only_load(file: Union[str, io.IOBase], map_location: Any) -> Any:
    """``torch.load`` of ``file`` admitting only tensors, containers,
    numbers and :data:`SAFE_GLOBALS`, on any torch (an explicit
    ``weights_only=True``, which no environment variable loosens, or the
    restricted unpickler)."""
    if REGISTERED_WITH_TORCH:
        return torch.load(file, map_location=map_location, weights_only=True)
    return torch.load(file, map_location=map_location, weights_only=False,
                      pickle_module=restricted_pickle)
