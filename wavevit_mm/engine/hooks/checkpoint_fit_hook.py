"""Checkpoints checked against the model before any of them loads
(:class:`CheckpointFitHook`)."""
import logging
from typing import Any, Dict, List, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS
from mmengine.runner import find_latest_checkpoint

from ...checkpoint import unwrap_state_dict
from ...models.pretrained import (FineTuningStart, check_fits,
                                  fit_for_fine_tuning)


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Check a checkpoint the Runner loads against the model, before any of
    it reaches the model (the file is not deserialized a second time).

    * ``--resume`` (it continues the same run) and testing: the file must
      fit exactly (:func:`~wavevit_mm.models.pretrained.check_fits`, the
      check ``tools/test.py`` and the backbone loader use).
    * ``load_from`` of a training run (fine-tuning, e.g. a COCO detector
      on a dataset with other classes): every tensor whose name and shape
      fit is loaded, the others keep the values the config initialised, and
      one log block lists them by module. It is refused when the backbone
      does not fit or when under half of the model's weights would come
      from the file (:func:`~wavevit_mm.models.pretrained.
      fit_for_fine_tuning`). mmengine is then handed exactly the model's
      keys, so it adds no warnings of its own.

    A refused checkpoint stops the run before the first iteration.
    """

    priority = 'VERY_HIGH'  # before EMAHook and others use the checkpoint

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        filename = _loaded_file(runner)
        state_dict, entry = unwrap_state_dict(checkpoint, filename)
        # the Runner says whether it resumes only in the private _resume,
        # which mmengine's own EMAHook reads as well
        if runner._resume or not _trains(runner):
            check_fits(state_dict, runner.model, filename)
            return
        start = fine_tune_from(runner, state_dict, filename, 'load_from',
                               checkpoint.get('meta'))
        # mmengine loads what it finds under 'state_dict', else the whole
        # checkpoint: now exactly the model's keys, nothing to warn about
        if entry is None:
            checkpoint.clear()
            checkpoint.update(start.weights)
        else:
            checkpoint['state_dict'] = start.weights


def fine_tune_from(runner, state_dict: Dict, filename: str, setting: str,
                   meta: Any = None) -> FineTuningStart:
    """What of ``state_dict`` (of the file ``filename``, which the config
    ``setting`` names: ``load_from`` or ``model.init_cfg``) starts the
    training of ``runner.model``, as
    :func:`~wavevit_mm.models.pretrained.fit_for_fine_tuning` takes it;
    logs the one block that says what was loaded and what was not, by
    module, with the class names of the file (its ``meta``) and of the
    training set where they differ. Raises CheckpointError as that
    function does, before anything is logged or loaded."""
    start = fit_for_fine_tuning(state_dict, runner.model, filename)
    print_log(_report(setting, filename, start, _classes(meta, runner)),
              logger='current',
              level=logging.WARNING if start.skipped else logging.INFO)
    return start


def _trains(runner) -> bool:
    """Whether the Runner is setting up training: ``Runner.train`` builds
    the optimizer wrapper before it loads a checkpoint; testing and
    validating never build it."""
    return isinstance(runner.optim_wrapper, (OptimWrapper, OptimWrapperDict))


def _classes(meta: Any, runner) -> Optional[str]:
    """The class names of the file (its ``meta``) and of the training set,
    when both are known and differ."""
    theirs = (meta or {}).get('dataset_meta', {}).get('classes') \
        if isinstance(meta, dict) else None
    ours = getattr(runner.train_dataloader.dataset, 'metainfo',
                   {}).get('classes')
    if not theirs or not ours or list(theirs) == list(ours):
        return None
    return (f'The file was trained on {len(theirs)} classes '
            f'({_names(theirs)}), this run on {len(ours)} '
            f'({_names(ours)}).')


def _names(classes: Any, shown: int = 6) -> str:
    names: List[str] = [str(name) for name in classes]
    more = f', ... ({len(names) - shown} more)' if len(names) > shown else ''
    return ', '.join(names[:shown]) + more


def _report(setting: str, filename: str, start: FineTuningStart,
            classes: Optional[str]) -> str:
    """The one block that says what a fine-tuning start loaded."""
    fit = start.fit
    total = len(fit.loaded) + len(fit.missing) + len(fit.mismatched)
    head = (f'{setting} {filename}: {len(fit.loaded)} of the model\'s '
            f'{total} tensors loaded ({fit.loaded_share:.1%} of its '
            f'weights)')
    if not start.skipped:
        return head + '.'
    lines = [head + '; not loaded (the model keeps the values its config '
             'initialised; tensors in the file only are ignored):']
    lines += [f'  {line}' for line in start.skipped]
    if classes:
        lines.append(f'  {classes}')
    return '\n'.join(lines)


def _loaded_file(runner) -> str:
    """The checkpoint the Runner loads: ``load_from``, or with ``resume``
    alone the latest one mmengine finds in the work dir.

    The Runner keeps ``load_from`` only in the private ``_load_from``
    (``runner.cfg`` is empty for a Runner built without a config);
    ``tests/test_upstream_privates.py`` fails when a release changes it.
    """
    return (getattr(runner, '_load_from', None)
            or find_latest_checkpoint(runner.work_dir) or 'The checkpoint')
