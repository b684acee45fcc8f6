"""Vectorised per-class random selection, shared by the meta splits, label noise and the Clothing1M sampler.

Everything here works with either random source numpy offers (``Generator`` or a private legacy
``RandomState``): only ``rng.random`` and ``rng.permutation`` are used.
"""

from __future__ import annotations

import numpy as np

Rng = np.random.Generator | np.random.RandomState


def rank_within_class(labels: np.ndarray, rng: Rng) -> np.ndarray:
    """A uniformly random rank of every sample among the samples of its own class.

    Args:
        labels: Class indices, int [N], values >= 0.
        rng: Random source (draws N doubles).

    Returns:
        int64 [N]: for each sample a rank in ``0 .. n_c - 1`` (n_c = size of its class); the ranks of one
        class are a random permutation of that range. ``rank < q`` therefore picks q random samples per class.

    Example:
        >>> rank = rank_within_class(np.array([0, 1, 0, 0, 1]), np.random.default_rng(0))
        >>> sorted(rank[[0, 2, 3]].tolist()), sorted(rank[[1, 4]].tolist())
        ([0, 1, 2], [0, 1])
    """
    labels = np.asarray(labels, dtype=np.int64)
    keys = rng.random(labels.size)
    order = np.lexsort((keys, labels))  # grouped by class, random order inside each class
    grouped = labels[order]
    first_of_class = np.searchsorted(grouped, grouped, side="left")
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - first_of_class
    return rank


def pick_per_class(labels: np.ndarray, quotas: np.ndarray, rng: Rng) -> np.ndarray:
    """Mark ``min(quotas[c], n_c)`` randomly chosen samples of every class c.

    Args:
        labels: Class indices, int [N], values in ``0 .. K-1``.
        quotas: How many samples to take per class, int [K].
        rng: Random source.

    Returns:
        bool [N], True for the chosen samples.
    """
    labels = np.asarray(labels, dtype=np.int64)
    return rank_within_class(labels, rng) < np.asarray(quotas)[labels]


def split_quota(total: int, num_classes: int, rng: Rng) -> np.ndarray:
    """Spread ``total`` over the classes as evenly as possible: int64 [K] of ``total // K`` or one more.

    The ``total % K`` classes that get one extra are drawn at random, so over many draws no class is favoured.

    Example:
        >>> quota = split_quota(10, 4, np.random.default_rng(0))
        >>> int(quota.sum()), sorted(quota.tolist())
        (10, [2, 2, 3, 3])
    """
    quotas = np.full(num_classes, total // num_classes, dtype=np.int64)
    quotas[rng.permutation(num_classes)[: total % num_classes]] += 1
    return quotas
