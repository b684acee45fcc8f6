"""Synthetic label noise: the L2B reference's corruption matrices and the conventional schemes.

Two families (docs/reference.md §2, §4 and §7 items 11–13):

- ``l2b_unif`` / ``l2b_flip`` reproduce the reference code. A row-stochastic corruption matrix C is built
  and every label is redrawn as ``y ~ Categorical(C[y])``, one uniform double per sample in order, exactly as
  the reference's sequential ``np.random.choice(K, p=C[y])`` calls consume them. Given a legacy
  ``RandomState`` positioned where the reference's global RNG was, the draws are bit-identical.
- ``symmetric`` / ``asymmetric`` / ``pairflip`` are the conventional schemes of the noisy-label literature,
  with *exact* noise rates (a fixed number of samples is changed, not an expected one).

``none`` returns the labels unchanged. :func:`corrupt_labels` dispatches on these names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlbseg.cls.sampling import Rng, rank_within_class
from mlbseg.errors import UserError

L2B_SCHEMES = ("l2b_unif", "l2b_flip")
SCHEMES = ("none", *L2B_SCHEMES, "symmetric", "asymmetric", "pairflip")

# Conventional CIFAR-10 asymmetric map: truck→automobile, bird→airplane, deer→horse, cat↔dog.
CIFAR10_SEMANTIC_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass(frozen=True)
class NoisyLabels:
    """Corrupted labels and the realised fraction that differ from the clean ones.

    Attributes:
        labels: int64 [N], the noisy labels, aligned with the clean labels given.
        rate: Fraction of samples whose label changed, in [0, 1] (0.0 for an empty set).
    """

    labels: np.ndarray
    rate: float


def _result(clean: np.ndarray, noisy: np.ndarray) -> NoisyLabels:
    noisy = noisy.astype(np.int64)
    rate = float(np.mean(noisy != clean)) if clean.size else 0.0
    return NoisyLabels(noisy, rate)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"noise rate {rate} is out of range: use a value between 0 and 1")


def l2b_unif_matrix(num_classes: int, p: float) -> np.ndarray:
    """Reference ``unif`` matrix ``C = p/K·𝟙𝟙ᵀ + (1−p)·I``: float64 [K, K], rows sum to 1.

    The diagonal is ``1 − p + p/K``: a label may be redrawn as itself, so the expected fraction of changed
    labels is ``p·(K−1)/K`` (CIFAR-10 p=0.2 → 18 %), not p.
    """
    _check_rate(p)
    return np.full((num_classes, num_classes), p / num_classes) + (1.0 - p) * np.eye(num_classes)


def l2b_flip_stream(num_classes: int) -> tuple[np.ndarray, np.random.RandomState]:
    """The reference ``flip`` targets and the legacy RNG state right after drawing them.

    The reference calls ``np.random.seed(1)`` and then, for i = 0..K−1, picks one target uniformly from the
    ascending list of the other classes. The CIFAR reference then keeps drawing its labels from that same
    stream, which is why the returned ``RandomState`` is useful (docs/reference.md §2, quirk §7 item 11).

    Returns:
        targets int64 [K] (``targets[i] != i``) and the ``RandomState(1)`` after the K target draws.
    """
    rng = np.random.RandomState(1)
    classes = np.arange(num_classes)
    # One draw per class (not per sample): the reference's sequential stream must be reproduced.
    targets = np.array([rng.choice(np.delete(classes, i)) for i in classes], dtype=np.int64)
    return targets, rng


def l2b_flip_targets(num_classes: int) -> np.ndarray:
    """Reference ``flip`` target of every class, int64 [K] (CIFAR-10: 0→6, 1→9, 2→6, 3→0, …).

    Example:
        >>> l2b_flip_targets(8).tolist()
        [6, 4, 5, 0, 1, 3, 5, 0]
    """
    return l2b_flip_stream(num_classes)[0]


def l2b_flip_matrix(num_classes: int, p: float, targets: np.ndarray | None = None) -> np.ndarray:
    """Reference ``flip`` matrix ``C = (1−p)·I`` plus mass p on one target per row: float64 [K, K].

    The expected fraction of changed labels is exactly p. ``targets`` defaults to :func:`l2b_flip_targets`.
    """
    _check_rate(p)
    targets = l2b_flip_targets(num_classes) if targets is None else np.asarray(targets)
    matrix = (1.0 - p) * np.eye(num_classes)
    matrix[np.arange(num_classes), targets] += p
    return matrix


def sample_from_matrix(labels: np.ndarray, matrix: np.ndarray, rng: Rng) -> NoisyLabels:
    """Redraw every label from its row of a corruption matrix by inverse-CDF sampling.

    Args:
        labels: Clean class indices, int [N].
        matrix: Row-stochastic corruption matrix, float [K, K] (row = true class).
        rng: Random source; N doubles are drawn, the i-th deciding sample i. With a legacy ``RandomState``
            this equals N sequential ``rng.choice(K, p=matrix[labels[i]])`` calls (numpy's ``choice``
            normalises the cumulative row by its last entry and takes ``searchsorted(..., side="right")``).

    Returns:
        The noisy labels and the realised change rate.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if np.any(matrix < 0) or not np.allclose(matrix.sum(axis=1), 1.0):
        raise ValueError("corruption matrix must be non-negative with rows summing to 1")
    cdf = np.cumsum(matrix, axis=1)  # [K, K]
    cdf /= cdf[:, -1:]
    uniforms = rng.random(labels.size)  # [N]
    noisy = np.sum(cdf[labels] <= uniforms[:, None], axis=1)  # [N]
    return _result(labels, noisy)


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, rng: Rng) -> NoisyLabels:
    """Give exactly ``round(rate·N)`` random samples a uniformly random *different* class.

    The realised noise rate is exactly ``round(rate·N)/N``.
    """
    _check_rate(rate)
    labels = np.asarray(labels, dtype=np.int64)
    chosen = rng.permutation(labels.size)[: round(rate * labels.size)]
    offsets = 1 + np.floor(rng.random(chosen.size) * (num_classes - 1)).astype(np.int64)  # in 1 .. K-1
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + offsets) % num_classes
    return _result(labels, noisy)


def class_map_noise(labels: np.ndarray, targets: np.ndarray, rate: float, rng: Rng) -> NoisyLabels:
    """Relabel exactly ``round(rate·n_c)`` random samples of every source class c as ``targets[c]``.

    Classes with ``targets[c] == c`` are left clean, so the overall rate is ``rate`` times the share of
    samples in source classes (CIFAR-10 semantic map: 5 of 10 classes → about rate/2; pair flip → rate).

    Args:
        labels: Clean class indices, int [N].
        targets: Target class of every class, int [K].
        rate: Fraction of each source class to relabel.
        rng: Random source.
    """
    _check_rate(rate)
    labels = np.asarray(labels, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(labels, minlength=targets.size)
    quotas = np.where(targets != np.arange(targets.size), np.rint(rate * counts), 0)
    flipped = rank_within_class(labels, rng) < quotas[labels]
    return _result(labels, np.where(flipped, targets[labels], labels))


def pairflip_targets(num_classes: int) -> np.ndarray:
    """Pair flip: class c → c+1 (mod K), int64 [K]."""
    return (np.arange(num_classes, dtype=np.int64) + 1) % num_classes


def cifar10_semantic_targets() -> np.ndarray:
    """Conventional CIFAR-10 map, int64 [10]: truck→automobile, bird→airplane, deer→horse, cat↔dog.

    Example:
        >>> cifar10_semantic_targets().tolist()
        [0, 1, 0, 5, 7, 3, 6, 7, 8, 1]
    """
    targets = np.arange(10, dtype=np.int64)
    targets[list(CIFAR10_SEMANTIC_PAIRS)] = list(CIFAR10_SEMANTIC_PAIRS.values())
    return targets


def superclass_next_targets(fine: np.ndarray, coarse: np.ndarray, num_classes: int) -> np.ndarray:
    """Map every fine class to the next fine class of its super-class (cyclic, ascending fine index).

    The grouping is read from the data (CIFAR-100's ``coarse_labels``), not hard-coded. Note that some
    codebases instead group consecutive blocks of 5 fine indices, which are not CIFAR-100's super-classes.

    Args:
        fine: Fine labels, int [N]; every class 0..K−1 must occur.
        coarse: Super-class of every sample, int [N].
        num_classes: K.

    Returns:
        int64 [K], the target of every fine class.
    """
    fine = np.asarray(fine, dtype=np.int64)
    coarse = np.asarray(coarse, dtype=np.int64)
    coarse_of = np.full(num_classes, -1, dtype=np.int64)
    coarse_of[fine] = coarse
    if np.any(coarse_of[fine] != coarse):
        raise UserError("coarse_labels: a fine class belongs to more than one super-class; check the data")
    if np.any(coarse_of < 0):
        missing = np.flatnonzero(coarse_of < 0)
        raise UserError(f"coarse_labels: fine classes {missing[:5].tolist()} never occur; need all classes")
    order = np.lexsort((np.arange(num_classes), coarse_of))  # fine classes grouped by super-class
    grouped = coarse_of[order]
    start = np.searchsorted(grouped, grouped, side="left")
    size = np.searchsorted(grouped, grouped, side="right") - start
    targets = np.empty(num_classes, dtype=np.int64)
    targets[order] = order[start + (np.arange(num_classes) - start + 1) % size]
    return targets


def corrupt_labels(
    labels: np.ndarray,
    scheme: str,
    rate: float,
    *,
    num_classes: int,
    rng: Rng,
    targets: np.ndarray | None = None,
) -> NoisyLabels:
    """Apply the noise scheme named ``scheme`` (one of :data:`SCHEMES`) to ``labels``.

    Args:
        labels: Clean class indices, int [N].
        scheme: ``none``; ``l2b_unif`` (expected rate rate·(K−1)/K); ``l2b_flip`` (expected rate = rate);
            ``symmetric`` (exact rate); ``asymmetric`` (exact per source class, needs ``targets``);
            ``pairflip`` (exact per class).
        rate: The scheme's noise parameter in [0, 1].
        num_classes: K.
        rng: Random source (a legacy ``RandomState`` where reference draws must be reproduced).
        targets: Class map int [K] for ``asymmetric`` (dataset-specific) or ``l2b_flip`` (default: the
            reference's random targets).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if scheme == "none":
        return _result(labels, labels.copy())
    if scheme == "l2b_unif":
        return sample_from_matrix(labels, l2b_unif_matrix(num_classes, rate), rng)
    if scheme == "l2b_flip":
        return sample_from_matrix(labels, l2b_flip_matrix(num_classes, rate, targets), rng)
    if scheme == "symmetric":
        return symmetric_noise(labels, rate, num_classes, rng)
    if scheme == "pairflip":
        return class_map_noise(labels, pairflip_targets(num_classes), rate, rng)
    if scheme == "asymmetric":
        if targets is None:
            raise UserError("noise 'asymmetric' has a class map for cifar10/cifar100 only: use 'pairflip'")
        return class_map_noise(labels, targets, rate, rng)
    raise UserError(f"unknown noise scheme {scheme!r}: choose from {list(SCHEMES)}")
