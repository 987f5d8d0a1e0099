"""Iteration-based training whose resumed runs repeat the uninterrupted run.

mmengine's ``IterBasedTrainLoop`` skips the iterations a resumed run has
already trained by drawing their batches again (every skipped image is read
and augmented), and the random generators of the new process (and of its
data loader workers) continue from its seed, not from where the killed run
stood: the resumed run reaches the right iteration with other augmentations
and other dropout masks.

* :class:`ResumableInfiniteSampler` -- mmengine's ``InfiniteSampler``
  (same arguments, same index stream) that can be told where in its stream
  to begin, so no batch is loaded to skip one. Each index it yields is a
  :class:`SampleIndex` carrying the seed of that sample's augmentations,
  drawn from (seed, position in the stream).
* :class:`ResumableIterBasedTrainLoop` -- ``IterBasedTrainLoop`` that starts
  the sampler at the resumed position, loads every sample with the
  generators reseeded from its :class:`SampleIndex` (in whichever process
  loads it: this one or a data loader worker), and reseeds them from
  (seed, iteration, rank) before each iteration's step, so the
  augmentations of a sample and the random draws of iteration *i* in the
  model depend on nothing else.
"""
import copy
import itertools
import logging
from typing import Any, Dict, Iterator, Optional, Sequence, Sized, Union

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, DATASETS, LOOPS
from mmengine.runner import IterBasedTrainLoop, set_random_seed
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError


def mixed_seed(*entropy: int) -> int:
    """A 32-bit seed drawn from the numbers given, all bits mixed."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


class SampleIndex(int):
    """A dataset index that also carries the seed of its sample's random
    augmentations (an ``int`` everywhere else)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> 'SampleIndex':
        self = super().__new__(cls, index)
        self.seed = seed
        return self

    def __reduce__(self):  # to data loader workers with its seed
        return SampleIndex, (int(self), self.seed)


class SeededSamples(Dataset):
    """A dataset whose samples are loaded with Python, NumPy and torch
    reseeded from their :class:`SampleIndex`, in whichever process loads
    them, so a sample's augmentations do not depend on what that process
    loaded before (a plain index loads as it would without this).
    Attributes such as ``metainfo`` are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if isinstance(index, SampleIndex):
            set_random_seed(index.seed)
        return self.dataset[int(index)]

    def __getattr__(self, name: str) -> Any:
        if name == 'dataset':  # not set yet (while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


@DATA_SAMPLERS.register_module()
class ResumableInfiniteSampler(InfiniteSampler):
    """mmengine's ``InfiniteSampler`` that can begin anywhere in its stream.

    The stream is the same: passes over the dataset, each shuffled by one
    generator seeded with ``seed``, dealt to the ranks in turn (rank *r*
    gets positions *r*, *r* + world size, ...). After :meth:`set_start`,
    iterating yields this rank's stream from the given position on; the
    shuffles of the passes before it are drawn (not the images loaded), so
    a start at iteration 150k of ADE20K costs milliseconds. The indices are
    :class:`SampleIndex` values seeded from (seed, position in the stream
    of all ranks).
    """

    def __init__(self, dataset: Sized, shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        self.start = 0
        super().__init__(dataset, shuffle=shuffle, seed=seed)

    def set_start(self, start: int) -> None:
        """Let the next iteration begin after the first ``start`` indices
        of this rank (``start`` = iterations done x batch size)."""
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._stream(), self.rank, None,
                                self.world_size)

    def _stream(self) -> Iterator[SampleIndex]:
        """The indices of all ranks from ``start`` x world size on."""
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        position = self.start * self.world_size  # the indices of all ranks
        passes, offset = divmod(position, self.size) if self.size else (0, 0)
        for _ in range(passes):  # done before the start: shuffles only
            if self.shuffle:
                torch.randperm(self.size, generator=generator)
        while True:
            order = (torch.randperm(self.size, generator=generator)
                     if self.shuffle else torch.arange(self.size))
            for index in order[offset:].tolist():
                yield SampleIndex(index, mixed_seed(self.seed, position))
                position += 1
            offset = 0


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` (same arguments) whose resumed run ends with
    the weights of the uninterrupted run, bit for bit.

    Resumed at iteration *n*, the :class:`ResumableInfiniteSampler` of the
    training data loader begins at index *n* x batch size of its rank,
    instead of *n* batches being loaded and thrown away. The training
    dataset is wrapped in :class:`SeededSamples`, so each sample is
    augmented with the generators seeded from its position in the stream,
    whether this process or a data loader worker (persistent or not) loads
    it. After each batch is fetched, Python, NumPy and torch are reseeded
    from (run seed, iteration, rank) for the model's random draws (dropout,
    sampled proposals). The seed is the run's (stored in checkpoints and
    restored on resume; a sampler seeded by the run follows it). Exact, as
    any resume, on the same hardware, thread count and number of ranks.
    A data loader given as an object, not a config, keeps its dataset:
    then only ``num_workers=0`` resumes exactly.
    """

    def __init__(self, runner, dataloader: Union[DataLoader, Dict],
                 *args, **kwargs) -> None:
        self._seeds_samples = isinstance(dataloader, dict)
        if self._seeds_samples:
            dataloader = copy.copy(dataloader)
            dataset = dataloader['dataset']
            if isinstance(dataset, dict):  # as the Runner builds it
                dataset = DATASETS.build(dataset)
                if hasattr(dataset, 'full_init'):
                    dataset.full_init()
            dataloader['dataset'] = SeededSamples(dataset)
        super().__init__(runner, dataloader, *args, **kwargs)
        sampler = self.dataloader.sampler
        if self.dataloader.batch_size is None:
            got = 'a batch_sampler'
        elif not isinstance(sampler, ResumableInfiniteSampler):
            got = f'the sampler {type(sampler).__name__}'
        else:
            got = None
        if got:
            raise ConfigError(
                f"train_cfg.type='{type(self).__name__}' needs "
                f"train_dataloader.sampler=dict(type="
                f"'ResumableInfiniteSampler') and a batch_size (no "
                f'batch_sampler), to start the data where a resumed run '
                f'left off; got {got}.')
        self._sampler_follows_run = sampler.seed == runner.seed

    def run(self) -> torch.nn.Module:
        """Train from the current iteration to ``max_iters``.

        mmengine's ``IterBasedTrainLoop.run`` (0.10.4 and later) with its
        skipping of the iterations done (by loading their batches)
        replaced; ``tests/test_upstream_privates.py`` fails when a release
        changes the original or ``_decide_current_val_interval``.
        """
        self.runner.call_hook('before_train')
        # the whole run is one "epoch", as in mmengine's loop
        self.runner.call_hook('before_train_epoch')
        if self.iter > 0:
            self._start_data_at(self.iter)
        while self.iter < self.max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)

            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self.iter >= self.val_begin
                    and (self.iter % self.val_interval == 0
                         or self.iter == self.max_iters)):
                self.runner.val_loop.run()

        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_iter(self, data_batch: Sequence[dict]) -> None:
        """One step, with the generators reseeded from (seed, iteration,
        rank) for the model's random draws."""
        set_random_seed(mixed_seed(self.runner.seed, self.iter, get_rank()))
        super().run_iter(data_batch)

    def _start_data_at(self, iteration: int) -> None:
        """Begin the data loader's stream after ``iteration`` batches."""
        sampler = self.dataloader.sampler
        if self._sampler_follows_run:  # the seed resume restored
            sampler.seed = self.runner.seed
        sampler.set_start(iteration * self.dataloader.batch_size)
        self.dataloader_iterator = iter(self.dataloader)
        print_log(f'The training data continues at iteration {iteration} '
                  f'(sample {sampler.start} of this rank); no batch is '
                  f'loaded to skip the iterations done.', logger='current')
        workers = self.dataloader.num_workers
        if workers > 0 and not self._seeds_samples:
            print_log(
                f'The {workers} data loader workers of a data loader given '
                f'as an object draw augmentations from generators seeded '
                f'when they start, so from iteration {iteration} on they '
                f'differ from an uninterrupted run (give '
                f'train_dataloader as a config, or num_workers=0, to resume '
                f'exactly).', logger='current', level=logging.WARNING)
