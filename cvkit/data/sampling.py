"""Sample keys that carry their own random seed, so augmentation does not depend on workers.

A training loader's sampler yields one :class:`SampleKey` per sample instead of a bare index.
The key's ``seed`` is a function of the run seed, the epoch and the sample index only
(:func:`sample_seed`), so which worker process loads the sample, how many workers there are,
whether they persist across epochs and whether the run was resumed change nothing in what a
sample looks like. The sampler runs in the main process: state set there between epochs
(``epoch``, ``multi_sample``) reaches persistent workers inside each key.

Datasets take either a key or a plain ``int`` index (evaluation, direct indexing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["SampleKey", "SeededSampler", "multi_sample_epoch", "sample_seed"]


class SampleKey(NamedTuple):
    """What a dataset needs to produce one training sample.

    Attributes:
        index: the sample's position in the dataset.
        seed: the sample's augmentation seed (``0 <= seed < 2**32``).
        epoch: the epoch the sample is drawn for (0-based).
        multi_sample: whether multi-sample transforms (mosaic, mixup) may run; the Trainer
            switches them off for the last epochs through :attr:`SeededSampler.multi_sample`.
    """

    index: int
    seed: int
    epoch: int = 0
    multi_sample: bool = True


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on ``(seed, epoch, index)``, well mixed
    (:class:`numpy.random.SeedSequence`), so neighbouring samples and epochs are unrelated."""
    state = np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)
    return int(state[0])


class SeededSampler(Sampler[SampleKey]):
    """Yield a :class:`SampleKey` for every index of ``order`` (or of a shuffled range).

    Args:
        data: the dataset (only its length is used when ``order`` is None).
        seed: the run seed; keys' seeds and the shuffle derive from it and the epoch.
        shuffle: draw a new permutation each epoch (seeded by ``seed`` and the epoch).
        order: a sampler of indices to wrap instead (e.g. a ``DistributedSampler``; its
            ``set_epoch`` is forwarded).

    Call :meth:`set_epoch` before each epoch (the Trainer does).
    """

    def __init__(
        self,
        data: Sized,
        seed: int = 0,
        shuffle: bool = True,
        order: Sampler[int] | None = None,
    ) -> None:
        self.data = data
        self.seed = int(seed)
        self.shuffle = shuffle
        self.order = order
        self.epoch = 0
        self.multi_sample = True

    def set_epoch(self, epoch: int) -> None:
        """Draw the keys (and the shuffle) of ``epoch`` from now on."""
        self.epoch = int(epoch)
        if hasattr(self.order, "set_epoch"):
            self.order.set_epoch(epoch)

    def indices(self) -> list[int]:
        """The epoch's sample order."""
        if self.order is not None:
            return [int(i) for i in self.order]
        if not self.shuffle:
            return list(range(len(self.data)))
        # the first index past the end seeds the shuffle: no sample's key uses it
        shuffle_seed = sample_seed(self.seed, self.epoch, len(self.data))
        generator = torch.Generator().manual_seed(shuffle_seed)
        return torch.randperm(len(self.data), generator=generator).tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        for index in self.indices():
            yield SampleKey(
                index, sample_seed(self.seed, self.epoch, index), self.epoch, self.multi_sample
            )

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else len(self.data)


def multi_sample_epoch(epoch: int, epochs: int, close_mosaic: int) -> bool:
    """Whether epoch ``epoch`` (0-based) of ``epochs`` may combine samples (mosaic, mixup):
    all but the last ``close_mosaic`` (``data.close_mosaic``)."""
    return epoch < epochs - close_mosaic
