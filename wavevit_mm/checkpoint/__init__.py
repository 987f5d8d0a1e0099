"""Generic checkpoint I/O: safe reading (:mod:`.loading`, with what a
file may hold in :mod:`.allow_list` and URL downloads in :mod:`.url_cache`),
state-dict surgery (:mod:`.state_dict`) and atomic writing
(:mod:`.saving`). Nothing here knows the network."""
from ..errors import CheckpointError, UnsafeCheckpointError
from .allow_list import SAFE_GLOBALS
from .url_cache import download
from .loading import (MODEL_TRUST_HINT, checkpoint_format, load_checkpoint,
                      read_once)
from .saving import (AtomicLocalBackend, atomic_write, is_temporary,
                     save_weights, write_text_atomically)
from .state_dict import (fit_problems, is_state_dict, strip_ddp_prefix,
                         strip_prefix, unwrap_state_dict)

__all__ = [
    'CheckpointError', 'UnsafeCheckpointError', 'MODEL_TRUST_HINT',
    'SAFE_GLOBALS', 'checkpoint_format', 'download', 'load_checkpoint',
    'read_once', 'AtomicLocalBackend', 'atomic_write', 'is_temporary',
    'save_weights', 'write_text_atomically', 'fit_problems', 'is_state_dict',
    'strip_ddp_prefix', 'strip_prefix', 'unwrap_state_dict'
]
