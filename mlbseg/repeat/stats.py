"""Paired comparisons of methods on the same test cases: mean difference, bootstrap CI, Wilcoxon–Holm.

A repeat scores every (method, noise, seed) run on the same test cases, so two methods are compared on
paired values: for each (seed, case) present in both, the difference of a metric (method − reference).
Per method, noise level and reference method this module gives

- the mean difference and its percentile bootstrap confidence interval (Efron & Tibshirani, *An
  Introduction to the Bootstrap*, 1993, ch. 13): the (seed, case) pairs are resampled with replacement,
  ``resamples`` times from a seeded generator, and the CI is the (α/2, 1 − α/2) quantile pair of the
  resampled means;
- the two-sided Wilcoxon signed-rank p-value of the differences (Wilcoxon 1945; scipy's exact or normal
  approximation as it chooses, zero differences dropped, ``zero_method="wilcox"``), with Holm's step-down
  correction (Holm 1979) across the methods compared with the same reference at the same noise level.

docs/evaluation.md §4 states the protocol. Only differences that are finite in both runs are paired (HD95
is infinite where a prediction is empty): the record counts the pairs used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class Comparison:
    """One method against one reference at one noise level, on one metric.

    Attributes:
        method, reference, noise, metric: What is compared.
        pairs: (seed, case) pairs with a finite value in both.
        mean_difference: Mean of method − reference over the pairs.
        ci_low, ci_high: The bootstrap confidence interval of the mean difference.
        p_value: Two-sided Wilcoxon signed-rank p-value (1.0 when every difference is 0).
        p_holm: ``p_value`` after Holm's correction across the methods of the same (reference, noise).
    """

    method: str
    reference: str
    noise: str
    metric: str
    pairs: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float


def bootstrap_ci(
    differences: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``differences`` [n] (all resamples drawn at once).

    Example:
        >>> bootstrap_ci([1.0, 1.0, 1.0])
        (1.0, 1.0)
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)  # [resamples]
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences``; 1.0 if all are 0 (or none)."""
    values = np.asarray(differences, dtype=np.float64)
    if not np.any(values != 0):
        return 1.0
    return float(stats.wilcoxon(values, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: the k-th smallest of m is max over j ≤ k of (m − j + 1)·p_(j).

    Example:
        >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
        {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    names = sorted(p_values, key=p_values.__getitem__)
    adjusted, running = {}, 0.0
    for rank, name in enumerate(names):
        running = max(running, min(1.0, (len(names) - rank) * p_values[name]))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def paired(
    values: Mapping[tuple[str, str, int, str], float], method: str, reference: str, noise: str
) -> np.ndarray:
    """Differences method − reference [pairs] over the (seed, case) keys both have, finite in both.

    Args:
        values: {(method, noise, seed, case): metric value}.
        method: The method compared.
        reference: The method it is compared with.
        noise: The noise level of both.
    """
    mine = {(seed, case): v for (m, n, seed, case), v in values.items() if m == method and n == noise}
    theirs = {(seed, case): v for (m, n, seed, case), v in values.items() if m == reference and n == noise}
    keys = sorted(key for key in mine.keys() & theirs.keys() if math.isfinite(mine[key] + theirs[key]))
    return np.array([mine[key] - theirs[key] for key in keys], dtype=np.float64)


def compare_methods(
    values: Mapping[tuple[str, str, int, str], float],
    references: Iterable[str],
    *,
    metric: str,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[Comparison]:
    """Every other method against each reference present, per noise level, Holm-corrected per group.

    Args:
        values: {(method, noise, seed, case): value of ``metric``}, e.g. from a repeat's ``cases.csv``.
        references: Reference methods (e.g. ``baseline``, ``views_meta``); those absent are skipped.
        metric: The metric's name, recorded in each comparison.
        resamples: Bootstrap resamples.
        seed: Seed of the bootstrap's generator (the same for every comparison).
    """
    methods = sorted({key[0] for key in values})
    noises = sorted({key[1] for key in values})
    comparisons = []
    for reference in (name for name in references if name in methods):
        for noise in noises:
            group = {}
            for method in methods:
                differences = paired(values, method, reference, noise)
                if method == reference or differences.size == 0:
                    continue
                low, high = bootstrap_ci(differences, resamples=resamples, seed=seed)
                group[method] = (differences, low, high, wilcoxon_p(differences))
            adjusted = holm({method: entry[3] for method, entry in group.items()})
            for method, (differences, low, high, p_value) in group.items():
                comparisons.append(
                    Comparison(
                        method=method,
                        reference=reference,
                        noise=noise,
                        metric=metric,
                        pairs=int(differences.size),
                        mean_difference=float(differences.mean()),
                        ci_low=low,
                        ci_high=high,
                        p_value=p_value,
                        p_holm=adjusted[method],
                    )
                )
    return comparisons
