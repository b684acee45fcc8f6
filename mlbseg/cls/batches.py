"""Seeded batch samplers of the classification task: which images, in which order, with which augmentation.

Data order is a function of the seed alone: epoch e's training batches depend on (seed, e), meta batch k on
(seed, k), and every image's augmentation on a seed drawn with its batch (:class:`SeededItems`), so results
do not depend on the number of loader workers and a resume continues exactly. Under torchrun every process
takes its chunk of each global batch (:func:`shard_of`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

TRAIN_STREAM, META_STREAM = 1, 2  # keep the training and meta orders independent for one seed
Batch = list[tuple[int, int]]  # (item index, augmentation seed) per image


class SeededItems(Dataset):
    """``items[(index, seed)]`` is ``dataset[index]`` with torch's CPU RNG seeded by ``seed`` meanwhile.

    torchvision's random transforms draw from that RNG, so each image's augmentation is fixed by its seed,
    in any worker. The caller's RNG state is restored afterwards.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone
            return self.dataset[index]


def _with_seeds(order: np.ndarray, rng: np.random.Generator) -> Batch:
    seeds = rng.integers(2**62, size=len(order))
    return list(zip(order.tolist(), seeds.tolist(), strict=True))


class EpochBatchSampler:
    """One epoch's training batches (a function of seed and epoch); call ``set_epoch`` before iterating.

    The order is a seeded permutation, or the dataset's own per-epoch sampler (Clothing1M's balanced
    sample). Batches keep the last partial one, as the reference; ``max_batches`` truncates the epoch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        *,
        sampler: Any = None,
        max_batches: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.sampler, self.max_batches, self.shard = sampler, max_batches, shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        if self.sampler is not None:
            return np.asarray(self.sampler.indices(), dtype=np.int64)
        return rng.permutation(self.size)

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, TRAIN_STREAM, self.epoch])
        items = _with_seeds(self._order(rng), rng)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield shard_of(items[start : start + self.batch_size], self.shard)

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else self.size
        parts = self.shard[1]  # across processes only full global batches, so every process steps alike
        batches = -(-count // self.batch_size) if parts == 1 else count // self.batch_size
        return min(batches, self.max_batches) if self.max_batches is not None else batches


def shard_of(batch: Batch, shard: tuple[int, int]) -> Batch:
    """Chunk ``rank`` of ``parts`` equal chunks of a global ``batch``; ``shard = (rank, parts)``.

    Example:
        >>> shard_of([(0, 9), (1, 8), (2, 7), (3, 6)], (1, 2))
        [(2, 7), (3, 6)]
    """
    rank, parts = shard
    size = len(batch) // parts
    return batch[rank * size : (rank + 1) * size]


class MetaBatchSampler:
    """Endless meta batches; batch k depends on (seed, k) only, so a stream can restart at any ``start``.

    Pass p is a seeded permutation cut into ``size // batch_size`` full batches (one batch drawn with
    replacement when the meta set is smaller than a batch).
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, *, start: int = 0, shard: tuple[int, int] = (0, 1)
    ) -> None:
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.per_pass, self.shard = max(1, size // batch_size), shard

    def _pass(self, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, META_STREAM, index])
        enough = self.size >= self.batch_size
        order = rng.permutation(self.size) if enough else rng.integers(self.size, size=self.batch_size)
        return _with_seeds(order[: self.per_pass * self.batch_size], rng)

    def __iter__(self) -> Iterator[Batch]:
        batch = self.start
        while True:
            pass_index, position = divmod(batch, self.per_pass)
            if position == 0 or batch == self.start:
                items = self._pass(pass_index)
            yield shard_of(items[position * self.batch_size : (position + 1) * self.batch_size], self.shard)
            batch += 1
