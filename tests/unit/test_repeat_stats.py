"""Paired method comparisons (mlbseg.repeat.stats), recomputed with scipy and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mlbseg.repeat.stats import bootstrap_ci, compare_methods, holm, paired, wilcoxon_p


def _values(rng: np.random.Generator) -> dict:
    """Dice per (method, noise, seed, case): 3 seeds × 10 cases; mlbseg +3 points, views_meta +1, noisy."""
    shift = {"baseline": 0.0, "views_meta": 0.01, "mlbseg": 0.03, "gce": 0.0}
    values = {}
    for noise in ("L1", "L2"):
        for seed in range(3):
            for case in range(10):
                base = 0.7 + 0.05 * math.sin(case)
                for method, delta in shift.items():
                    values[(method, noise, seed, f"Case{case:02d}")] = base + delta + rng.normal(0, 0.01)
    return values


def test_paired_differences_use_shared_finite_pairs_only():
    values = {
        ("a", "L1", 0, "c1"): 0.8,
        ("b", "L1", 0, "c1"): 0.5,
        ("a", "L1", 0, "c2"): math.inf,  # HD95 of an empty prediction: not paired
        ("b", "L1", 0, "c2"): 3.0,
        ("a", "L1", 1, "c1"): 0.6,  # seed 1 of b missing: not paired
        ("a", "L2", 0, "c1"): 0.1,  # another noise level
        ("b", "L2", 0, "c1"): 0.4,
    }
    np.testing.assert_allclose(paired(values, "a", "b", "L1"), [0.3])
    np.testing.assert_allclose(paired(values, "a", "b", "L2"), [-0.3])


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    differences = np.random.default_rng(3).normal(0.02, 0.05, size=30)
    ours = bootstrap_ci(differences, resamples=20_000, seed=1)
    theirs = stats.bootstrap(
        (differences,),
        np.mean,
        n_resamples=20_000,
        method="percentile",
        confidence_level=0.95,
        random_state=7,
    ).confidence_interval
    assert ours[0] < differences.mean() < ours[1]
    # Two Monte-Carlo estimates of the same quantiles: equal up to resampling noise (~1% of the width).
    width = theirs.high - theirs.low
    assert abs(ours[0] - theirs.low) < 0.03 * width
    assert abs(ours[1] - theirs.high) < 0.03 * width


def test_wilcoxon_is_scipys_two_sided_signed_rank_test():
    differences = np.array([0.1, -0.02, 0.05, 0.07, 0.0, 0.03, -0.01, 0.04])
    expected = stats.wilcoxon(differences, zero_method="wilcox").pvalue
    assert wilcoxon_p(differences) == pytest.approx(expected, rel=1e-12)
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0


def test_holm_by_hand():
    # sorted: 0.005 (×4), 0.01 (×3), 0.03 (×2), 0.04 (×1), each at least the previous one
    adjusted = holm({"w": 0.04, "x": 0.005, "y": 0.03, "z": 0.01})
    assert adjusted == pytest.approx({"w": 0.06, "x": 0.02, "y": 0.06, "z": 0.03})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def test_compare_methods_against_each_reference_per_noise():
    values = _values(np.random.default_rng(0))
    comparisons = compare_methods(
        values, ["baseline", "views_meta", "missing"], metric="dice", resamples=2000
    )
    keys = {(c.method, c.reference, c.noise) for c in comparisons}
    assert keys == {
        (method, reference, noise)
        for reference in ("baseline", "views_meta")
        for method in ("baseline", "views_meta", "mlbseg", "gce")
        if method != reference
        for noise in ("L1", "L2")
    }
    by_key = {(c.method, c.reference, c.noise): c for c in comparisons}
    strong = by_key[("mlbseg", "baseline", "L1")]
    assert strong.pairs == 30
    differences = paired(values, "mlbseg", "baseline", "L1")
    assert strong.mean_difference == pytest.approx(differences.mean())
    assert strong.ci_low < 0.03 < strong.ci_high
    assert strong.p_value == pytest.approx(stats.wilcoxon(differences).pvalue)
    # Holm across the three methods compared with the baseline at L1, recomputed from scipy's p-values
    group = {
        m: stats.wilcoxon(paired(values, m, "baseline", "L1")).pvalue for m in ("views_meta", "mlbseg", "gce")
    }
    ordered = sorted(group, key=group.get)
    running = 0.0
    for rank, method in enumerate(ordered):
        running = max(running, min(1.0, (3 - rank) * group[method]))
        assert by_key[(method, "baseline", "L1")].p_holm == pytest.approx(running)
    null = by_key[("gce", "baseline", "L1")]
    assert null.ci_low < 0 < null.ci_high
    assert null.p_holm > 0.05
