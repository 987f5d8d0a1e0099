"""The Runner the configs name (``runner_type``): mmengine's, but a
safeguard switched off in ``default_hooks`` (its key set to None) is
dropped with one log line, where mmengine accepts None only for its own
default hooks; and a ``Pretrained`` entry in the whole model's
``init_cfg`` starts training as ``load_from`` does."""
import logging
from typing import Any, Dict, Optional, Tuple

from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from torch import nn

from ..models.init_cfg import check_init_cfg, split_init_cfg
from ..models.pretrained import (bare_model, fit_for_fine_tuning,
                                 read_model_weights)
from .hooks.checkpoint_fit_hook import CheckpointFitHook, fine_tune_from

#: The safeguards' keys in ``default_hooks`` (configs/_base_/safeguards.py)
#: and their hooks, each described in its docstring.
SAFEGUARDS = dict(
    work_dir_lock='WorkDirLockHook',
    checkpoint_fit='CheckpointFitHook',
    epoch_seed='EpochSeedHook',
    finite_check='FiniteCheckHook',
    label_map_check='LabelMapCheckHook',
)

#: How the report and the refusals name a whole model's ``init_cfg``.
MODEL_INIT_CFG = 'model.init_cfg'


@RUNNERS.register_module()
class SafeguardedRunner(Runner):
    """mmengine's Runner; ``default_hooks = dict(work_dir_lock=None)``
    switches that safeguard off and the run says so, and a whole model's
    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads what fits,
    reported by module (:meth:`train`)."""

    #: the whole model's Pretrained entries :meth:`load_or_resume` loads,
    #: each with the state dict and meta read (once) by :meth:`train`
    _model_checkpoints: Tuple[Tuple[Dict, Dict, Any], ...] = ()

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

    def train(self) -> nn.Module:
        """Train, starting from the checkpoint of a ``Pretrained`` entry in
        the whole model's ``init_cfg`` as :class:`CheckpointFitHook` starts
        from ``load_from``. The backbone's own ``init_cfg`` still loads
        strictly. Without the ``checkpoint_fit`` safeguard, mmengine loads
        the entry as it would.

        mmengine loads the entry inside ``init_weights`` with
        ``strict=False`` and offers no hook there (and replacing its
        ``Pretrained`` initialiser would change every model of the
        process); so it is taken out of this model's ``init_cfg`` for the
        run, checked here before the datasets are built, and loaded by
        :meth:`load_or_resume`, the public step ``Runner.train`` takes
        right after ``init_weights``.
        """
        model = bare_model(self.model)
        others, entries = split_init_cfg(getattr(model, 'init_cfg', None))
        if not entries or not any(isinstance(hook, CheckpointFitHook)
                                  for hook in self.hooks):
            return super().train()
        check_init_cfg([dict(entry, type='Pretrained') for entry in entries],
                       model)
        checkpoints = tuple(
            (entry, *read_model_weights(
                entry['checkpoint'], entry.get('prefix'),
                entry.get('trusted', False), entry.get('map_location', 'cpu')))
            for entry in entries)
        for entry, state_dict, _ in checkpoints:  # refused before the data
            fit_for_fine_tuning(state_dict, model, str(entry['checkpoint']))
        original = model.init_cfg
        model.init_cfg = others or None
        self._model_checkpoints = checkpoints
        try:
            return super().train()
        finally:
            model.init_cfg = original
            self._model_checkpoints = ()

    def load_or_resume(self) -> None:
        """Load the whole model's ``init_cfg`` checkpoints that
        :meth:`train` took over (once, as ``init_weights`` would), then
        ``load_from`` or the checkpoint to resume from, as mmengine does.
        """
        checkpoints, self._model_checkpoints = self._model_checkpoints, ()
        for entry, state_dict, meta in checkpoints:
            start = fine_tune_from(self, state_dict, str(entry['checkpoint']),
                                   MODEL_INIT_CFG, meta)
            bare_model(self.model).load_state_dict(start.weights,
                                                   strict=True)
        super().load_or_resume()

