"""The private parts of mmengine that wavevit_mm relies on, each with the
file of ours to revisit when a release changes it.

pyproject.toml pins mmengine to the series these were written against
(0.10.4 to 0.10.x): a new release fails here, naming our file, instead of
silently in a user's run. Methods we copy or wrap are pinned by their
source; those we call, by the behaviour we use.
"""
import hashlib
import inspect
import uuid

import pytest
import torch
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import BaseModel
from mmengine.runner import IterBasedTrainLoop, Runner

import wavevit_mm  # noqa: F401  (registers the loop and the sampler)

LOOPS = 'wavevit_mm/engine/loops.py'
CHECKPOINT_HOOK = 'wavevit_mm/engine/hooks/atomic_checkpoint_hook.py'
CHECKPOINT_FIT_HOOK = 'wavevit_mm/engine/hooks/checkpoint_fit_hook.py'

# (class, private, its signature, sha256 of its source (first 16 digits)
#  where our code copies or wraps its body, the file of ours that does)
PRIVATES = [
    (IterBasedTrainLoop, 'run', '(self) -> None', 'f5de0b5cf6e25e3b',
     LOOPS),
    (IterBasedTrainLoop, '_decide_current_val_interval', '(self) -> None',
     None, LOOPS),
    (CheckpointHook, '_save_checkpoint_with_step', '(self, runner, step, '
     'meta)', 'cdbc1b54c7c88d95', CHECKPOINT_HOOK),
    (CheckpointHook, '_save_best_checkpoint', '(self, runner, metrics) -> '
     'None', '8e1e477297ea08d7', CHECKPOINT_HOOK),
]


def changed(owner, name, ours):
    return (f'mmengine changed {owner.__name__}.{name}; revisit {ours} '
            f'(and the mmengine range in pyproject.toml)')


@pytest.mark.parametrize('owner,name,signature,source,ours', PRIVATES,
                         ids=[f'{o.__name__}.{n}' for o, n, *_ in PRIVATES])
def test_private_keeps_its_signature_and_code(owner, name, signature,
                                              source, ours):
    method = getattr(owner, name, None)
    assert callable(method), changed(owner, name, ours)
    assert str(inspect.signature(method)) == signature, \
        changed(owner, name, ours)
    if source is not None:
        digest = hashlib.sha256(
            inspect.getsource(method).encode()).hexdigest()[:16]
        assert digest == source, changed(owner, name, ours)


# ------------------------------------------------ the behaviour we use

class Linear(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(inputs)
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else [out]


class RisingScore(BaseMetric):

    def __init__(self):
        super().__init__()
        self.calls = 0

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        self.calls += 1
        return dict(score=float(self.calls))


class ValidatedAt(Hook):
    """Records the iteration after which each validation ran."""

    def __init__(self):
        self.iterations = []

    def after_val_epoch(self, runner, metrics=None):
        self.iterations.append(runner.iter)


class RecordingCheckpointHook(CheckpointHook):
    """mmengine's hook, recording the calls of the privates we override."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def _save_checkpoint_with_step(self, runner, step, meta):
        self.calls.append(('_save_checkpoint_with_step', step))
        super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner, metrics):
        self.calls.append(('_save_best_checkpoint', sorted(metrics)))
        super()._save_best_checkpoint(runner, metrics)


def make_runner(work_dir, sampler='DefaultSampler', **kwargs):
    data = dict(dataset=[dict(inputs=torch.ones(2)) for _ in range(4)],
                sampler=dict(type='DefaultSampler', shuffle=False),
                collate_fn=dict(type='default_collate'), batch_size=2)
    return Runner(model=Linear(), work_dir=str(work_dir),
                  experiment_name=f'privates_{uuid.uuid4().hex[:8]}',
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
                  train_dataloader=dict(data, sampler=dict(type=sampler)),
                  val_dataloader=data, val_cfg=dict(),
                  val_evaluator=Evaluator(RisingScore()), **kwargs)


@pytest.mark.parametrize('loop', ['IterBasedTrainLoop',
                                  'ResumableIterBasedTrainLoop'])
def test_iteration_loop_validates_at_mmengines_iterations(tmp_path, loop):
    """Our copy of IterBasedTrainLoop.run and mmengine's validate after the
    same iterations: every val_interval (as changed by dynamic_intervals,
    through _decide_current_val_interval) from val_begin on, and at the
    end."""
    validated = ValidatedAt()
    runner = make_runner(
        tmp_path, train_cfg=dict(type=loop, max_iters=11, val_begin=3,
                                 val_interval=2, dynamic_intervals=[(6, 4)]),
        sampler='ResumableInfiniteSampler', custom_hooks=[validated])
    runner.train()
    assert validated.iterations == [4, 8, 11], changed(
        IterBasedTrainLoop, 'run or _decide_current_val_interval', LOOPS)


def test_checkpoint_hook_saves_through_the_privates_we_override(tmp_path):
    hook = RecordingCheckpointHook(interval=1, save_best='score',
                                   rule='greater', max_keep_ckpts=1)
    runner = make_runner(tmp_path, train_cfg=dict(by_epoch=True,
                                                  max_epochs=2),
                         default_hooks=dict(checkpoint=hook))
    runner.train()
    # a new best one saves the step again, to store the best score in it
    saved = ('_save_checkpoint_with_step', 1), ('_save_checkpoint_with_step', 2)
    best = ('_save_best_checkpoint', ['score'])
    assert hook.calls == [saved[0], best, saved[0], saved[1], best,
                          saved[1]], changed(CheckpointHook, 'its saving', CHECKPOINT_HOOK)
    attributes = ['keep_ckpt_ids', 'file_backend', 'filename_tmpl', 'args',
                  'last_ckpt', 'out_dir', 'save_optimizer', 'by_epoch',
                  'save_param_scheduler', 'backend_args', 'file_client_args',
                  'max_keep_ckpts']
    missing = [name for name in attributes if not hasattr(hook, name)]
    assert not missing, changed(CheckpointHook, ', '.join(missing),
                                CHECKPOINT_HOOK)


@pytest.mark.parametrize('resume', [False, True])
def test_runner_keeps_load_from_and_resume_in_private_attributes(tmp_path,
                                                                 resume):
    """The only places a Runner built without a config keeps ``load_from``
    (which CheckpointFitHook names in its error) and ``resume`` (which
    makes it check strictly instead of loading for fine-tuning)."""
    runner = Runner(model=Linear(), work_dir=str(tmp_path),
                    experiment_name=f'privates_{uuid.uuid4().hex[:8]}',
                    load_from='weights.pth', resume=resume)
    assert getattr(runner, '_load_from', None) == 'weights.pth', changed(
        Runner, '_load_from', CHECKPOINT_FIT_HOOK)
    assert getattr(runner, '_resume', None) is resume, changed(
        Runner, '_resume', CHECKPOINT_FIT_HOOK)


LOADING = 'wavevit_mm/checkpoint/loading.py'
ALLOW_LIST = 'wavevit_mm/checkpoint/allow_list.py'


def test_checkpoint_loader_keeps_its_loaders_by_prefix():
    """register_loader replaces every loader mmengine has, read from
    CheckpointLoader._schemes, and unregister_loader puts them back."""
    from mmengine.runner import CheckpointLoader
    from wavevit_mm.checkpoint.loading import load_from_wavevit_mm
    schemes = getattr(CheckpointLoader, '_schemes', None)
    assert isinstance(schemes, dict) and set(schemes) >= {
        '', 'http://', 'https://', 'open-mmlab://', 'openmmlab://',
        'torchvision://', 'modelzoo://', 'mmcls://', 'pavi://',
        r'(\S+\:)?s3://', r'(\S+\:)?petrel://'}, changed(
            CheckpointLoader, '_schemes', LOADING)
    assert set(schemes.values()) == {load_from_wavevit_mm}, changed(
        CheckpointLoader, '_schemes', LOADING)


def test_model_zoo_helpers_are_where_the_reader_finds_them(tmp_path,
                                                           monkeypatch):
    """The zoo reader resolves names with mmengine's tables and its home
    folder, and keeps an mmcls:// file's backbone weights as mmengine
    does."""
    from mmengine.runner import checkpoint
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path))
    for name in ('get_external_models', 'get_mmcls_models',
                 'get_torchvision_models', 'get_deprecated_model_names'):
        assert callable(getattr(checkpoint, name, None)), changed(
            checkpoint, name, LOADING)
    assert checkpoint._get_mmengine_home() == str(tmp_path), changed(
        checkpoint, '_get_mmengine_home', LOADING)
    kept = checkpoint._process_mmcls_checkpoint(
        dict(state_dict={'backbone.w': 1, 'head.b': 2}))
    assert kept == dict(state_dict={'w': 1}), changed(
        checkpoint, '_process_mmcls_checkpoint', LOADING)


def test_torch_lists_its_weights_only_globals():
    """The restricted unpickler of older torch admits what torch's own
    weights-only unpickler admits, read from this private."""
    from torch import _weights_only_unpickler
    allowed = _weights_only_unpickler._get_allowed_globals()
    assert 'torch._utils._rebuild_tensor_v2' in allowed and \
        'collections.OrderedDict' in allowed, \
        f'torch changed _weights_only_unpickler._get_allowed_globals; ' \
        f'revisit {ALLOW_LIST}'
