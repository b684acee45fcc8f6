from __future__ import annotations

import numpy as np
import pytest

from mlbseg.cls.noise import (
    SCHEMES,
    cifar10_semantic_targets,
    class_map_noise,
    corrupt_labels,
    l2b_flip_matrix,
    l2b_flip_stream,
    l2b_flip_targets,
    l2b_unif_matrix,
    pairflip_targets,
    sample_from_matrix,
    superclass_next_targets,
    symmetric_noise,
)
from mlbseg.errors import UserError

# docs/reference.md §2 / §4 (verified against the reference's numpy legacy RNG).
CIFAR10_FLIP = [6, 9, 6, 0, 0, 1, 8, 6, 2, 4]
CIFAR100_FLIP = [
    38, 13, 73, 10, 76, 6, 80, 65, 17, 1, 77, 72, 6, 26, 51, 21, 19, 85, 11, 29,
    30, 14, 51, 69, 88, 88, 95, 97, 87, 13, 9, 7, 64, 62, 22, 58, 1, 0, 61, 82,
    8, 89, 13, 48, 73, 30, 72, 3, 71, 21, 49, 58, 3, 69, 24, 43, 77, 26, 52, 81,
    41, 83, 15, 65, 69, 25, 99, 88, 7, 26, 25, 22, 9, 67, 23, 27, 37, 57, 84, 38,
    8, 32, 34, 10, 23, 15, 88, 25, 71, 93, 74, 62, 46, 32, 88, 23, 55, 65, 77, 3,
]  # fmt: skip
ISIC_FLIP = [6, 4, 5, 0, 1, 3, 5, 0]


@pytest.mark.parametrize(
    ("num_classes", "expected"), [(10, CIFAR10_FLIP), (100, CIFAR100_FLIP), (8, ISIC_FLIP)]
)
def test_l2b_flip_targets_match_the_reference(num_classes, expected):
    assert l2b_flip_targets(num_classes).tolist() == expected


def test_flip_stream_continues_after_the_target_draws():
    _, stream = l2b_flip_stream(10)
    reference = np.random.RandomState(1)
    for i in range(10):
        reference.choice(np.delete(np.arange(10), i))
    assert stream.random() == reference.random()


@pytest.mark.parametrize("matrix", [l2b_unif_matrix(10, 0.5), l2b_flip_matrix(10, 0.3)])
def test_vectorised_draws_equal_sequential_legacy_choice(matrix):
    clean = np.random.default_rng(0).integers(0, 10, 400)
    oracle_rng = np.random.RandomState(7)
    oracle = [oracle_rng.choice(10, p=matrix[y]) for y in clean]  # the reference's per-sample calls
    assert sample_from_matrix(clean, matrix, np.random.RandomState(7)).labels.tolist() == oracle


def test_isic_golden_first_ten_labels_unif_seed0():
    # Each label only depends on its own uniform draw, so the first ten of the real train list are testable.
    clean = np.concatenate([[1, 1, 0, 0, 1, 1, 1, 1, 1, 0], np.zeros(50, dtype=int)])
    noisy = corrupt_labels(clean, "l2b_unif", 0.2, num_classes=8, rng=np.random.RandomState(0))
    assert noisy.labels[:10].tolist() == [1, 1, 0, 0, 1, 1, 1, 3, 6, 0]


def test_unif_matrix_and_its_true_rate():
    matrix = l2b_unif_matrix(10, 0.4)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(matrix), 1 - 0.4 + 0.04)
    clean = np.arange(30000) % 10
    noisy = corrupt_labels(clean, "l2b_unif", 0.4, num_classes=10, rng=np.random.RandomState(0))
    assert noisy.rate == pytest.approx(0.4 * 9 / 10, abs=0.01)
    assert noisy.rate == pytest.approx(np.mean(noisy.labels != clean))


def test_l2b_flip_moves_labels_only_to_the_targets():
    clean = np.arange(20000) % 10
    noisy = corrupt_labels(clean, "l2b_flip", 0.3, num_classes=10, rng=np.random.default_rng(0))
    changed = noisy.labels != clean
    assert np.all(noisy.labels[changed] == np.array(CIFAR10_FLIP)[clean[changed]])
    assert noisy.rate == pytest.approx(0.3, abs=0.015)


def test_symmetric_noise_is_exact_and_never_keeps_the_class():
    clean = np.random.default_rng(1).integers(0, 10, 1000)
    noisy = symmetric_noise(clean, 0.37, 10, np.random.default_rng(0))
    assert np.sum(noisy.labels != clean) == 370
    assert noisy.rate == 0.37
    assert set(np.unique(noisy.labels)) == set(range(10))
    again = symmetric_noise(clean, 0.37, 10, np.random.default_rng(0))
    other = symmetric_noise(clean, 0.37, 10, np.random.default_rng(1))
    assert np.array_equal(noisy.labels, again.labels)
    assert not np.array_equal(noisy.labels, other.labels)


def test_symmetric_new_classes_are_uniform_over_the_others():
    clean = np.zeros(18000, dtype=int)
    noisy = symmetric_noise(clean, 1.0, 10, np.random.default_rng(0))
    counts = np.bincount(noisy.labels, minlength=10)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:], 2000, rtol=0.1)


def test_cifar10_semantic_noise_exact_per_source_class():
    clean = np.arange(1000) % 10  # 100 per class
    noisy = corrupt_labels(
        clean,
        "asymmetric",
        0.4,
        num_classes=10,
        rng=np.random.default_rng(0),
        targets=cifar10_semantic_targets(),
    )
    pairs = {(int(a), int(b)) for a, b in zip(clean, noisy.labels, strict=True) if a != b}
    assert pairs == {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
    changed_per_class = np.bincount(clean[noisy.labels != clean], minlength=10)
    assert changed_per_class.tolist() == [0, 0, 40, 40, 40, 40, 0, 0, 0, 40]
    assert noisy.rate == pytest.approx(0.2)


def test_pairflip_and_generic_class_map():
    assert pairflip_targets(4).tolist() == [1, 2, 3, 0]
    clean = np.arange(400) % 4
    noisy = corrupt_labels(clean, "pairflip", 0.25, num_classes=4, rng=np.random.default_rng(0))
    assert noisy.rate == 0.25
    changed = noisy.labels != clean
    assert np.all(noisy.labels[changed] == (clean[changed] + 1) % 4)
    untouched = class_map_noise(clean, np.arange(4), 0.5, np.random.default_rng(0))
    assert untouched.rate == 0.0


def test_superclass_targets_follow_the_coarse_labels():
    coarse_of = np.random.default_rng(3).permutation(100) // 5
    fine = np.random.default_rng(4).permutation(np.arange(300) % 100)
    targets = superclass_next_targets(fine, coarse_of[fine], 100)
    assert np.all(coarse_of[targets] == coarse_of)
    assert np.all(targets != np.arange(100))
    members = np.flatnonzero(coarse_of == coarse_of[0])  # ascending fine indices of one super-class
    assert targets[members].tolist() == np.roll(members, -1).tolist()
    assert sorted(targets.tolist()) == list(range(100))  # a permutation: 20 cycles of length 5


def test_superclass_targets_reject_inconsistent_or_incomplete_data():
    with pytest.raises(UserError, match="more than one super-class"):
        superclass_next_targets(np.array([0, 0, 1]), np.array([0, 1, 1]), 2)
    with pytest.raises(UserError, match="never occur"):
        superclass_next_targets(np.array([0, 1]), np.array([0, 0]), 3)


def test_corrupt_labels_none_and_errors():
    clean = np.arange(20) % 4
    same = corrupt_labels(clean, "none", 0.5, num_classes=4, rng=np.random.default_rng(0))
    assert np.array_equal(same.labels, clean)
    assert same.rate == 0.0
    with pytest.raises(UserError, match=r"unknown noise scheme 'bogus'.*symmetric"):
        corrupt_labels(clean, "bogus", 0.2, num_classes=4, rng=np.random.default_rng(0))
    with pytest.raises(UserError, match="out of range"):
        corrupt_labels(clean, "symmetric", 1.5, num_classes=4, rng=np.random.default_rng(0))
    with pytest.raises(UserError, match="pairflip"):
        corrupt_labels(clean, "asymmetric", 0.2, num_classes=4, rng=np.random.default_rng(0))
    assert "l2b_unif" in SCHEMES
