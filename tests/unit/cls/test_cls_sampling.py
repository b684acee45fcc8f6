from __future__ import annotations

import numpy as np

from mlbseg.cls.sampling import pick_per_class, rank_within_class, split_quota


def test_ranks_are_a_permutation_within_each_class():
    labels = np.random.default_rng(0).integers(0, 5, 300)
    rank = rank_within_class(labels, np.random.default_rng(1))
    for c in range(5):
        assert sorted(rank[labels == c].tolist()) == list(range(np.sum(labels == c)))


def test_ranks_are_random_and_seeded():
    labels = np.zeros(50, dtype=int)
    first = rank_within_class(labels, np.random.default_rng(1))
    assert np.array_equal(first, rank_within_class(labels, np.random.default_rng(1)))
    assert not np.array_equal(first, rank_within_class(labels, np.random.default_rng(2)))
    assert not np.array_equal(first, np.arange(50))


def test_pick_per_class_caps_at_class_size():
    labels = np.repeat(np.arange(3), [2, 10, 10])
    chosen = pick_per_class(labels, np.array([5, 4, 0]), np.random.RandomState(0))
    assert np.bincount(labels[chosen], minlength=3).tolist() == [2, 4, 0]


def test_split_quota_spreads_the_remainder_randomly():
    quotas = [split_quota(47, 14, np.random.default_rng(s)) for s in range(5)]
    assert all(q.sum() == 47 and set(q.tolist()) == {3, 4} for q in quotas)
    assert len({tuple(q) for q in quotas}) > 1
