"""The Runner the configs name (``runner_type``): mmengine's, but a
safeguard switched off in ``default_hooks`` (its key set to None) is
dropped with one log line, where mmengine accepts None only for its own
default hooks."""
import logging
from typing import Dict, Optional

from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

#: The safeguards' keys in ``default_hooks`` (configs/_base_/safeguards.py)
#: and what a run without each loses.
SAFEGUARDS = dict(
    work_dir_lock='one training run per work dir',
    checkpoint_fit='checkpoints checked against the model before loading',
    epoch_seed='per-epoch reseeding for exact resumption',
    finite_check='the stop at the first non-finite loss or weight',
    label_map_check='label maps checked against their images',
)


@RUNNERS.register_module()
class SafeguardedRunner(Runner):
    """mmengine's Runner; ``default_hooks = dict(work_dir_lock=None)``
    switches that safeguard off and the run says so."""

    def register_default_hooks(self, hooks: Optional[Dict] = None) -> None:
        hooks = dict(hooks or {})
        off = [key for key in SAFEGUARDS
               if key in hooks and hooks[key] is None]
        for key in off:
            del hooks[key]
        if off:
            print_log('Safeguards switched off in default_hooks: ' + '; '.join(
                f'{key} ({SAFEGUARDS[key]})' for key in off) + '.',
                logger='current', level=logging.WARNING)
        super().register_default_hooks(hooks)
