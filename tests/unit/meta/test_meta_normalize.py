"""Weight normalisers: sums, edge cases, names and aliases, and the cross-process reduction seam."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mlbseg.meta import NORMALIZERS, get_normalizer, resolve_normalizer_name
from mlbseg.meta.normalize import clamp_sum, sigmoid_sum, softmax_over_batch, softmax_per_sample


@pytest.fixture
def seg_scores() -> torch.Tensor:
    """Scores [N=3, S=2, 1, 4, 4] of both signs at the tiny scale real scores have."""
    return 1e-7 * torch.randn(3, 2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_clamp_sum_weights_of_alpha_and_beta_together_sum_to_one(seg_scores):
    weights = clamp_sum(seg_scores)
    assert weights.shape == seg_scores.shape
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(weights == 0, seg_scores <= 0)
    positive = seg_scores.clamp_min(0)
    torch.testing.assert_close(weights, positive / positive.sum())  # exact even at score scale 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamp_sum_of_all_non_positive_scores_is_all_zero(dtype):
    scores = -torch.rand(4, 2, dtype=dtype)
    scores[0, 0] = 0.0
    weights = clamp_sum(scores)
    assert torch.equal(weights, torch.zeros_like(scores))


def test_softmax_over_batch_is_one_softmax_over_all_entries_with_temperature():
    scores = torch.tensor([[0.1, -0.3], [0.7, 0.2], [-1.0, 0.0]], dtype=torch.float64)
    weights = softmax_over_batch(scores, temperature=0.5)
    torch.testing.assert_close(weights.flatten(), (scores.flatten() / 0.5).softmax(dim=0))
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_softmax_over_batch_does_not_overflow_for_large_scores():
    weights = softmax_over_batch(torch.tensor([[1000.0, 999.0]]))
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_softmax_per_sample_sums_to_one_per_sample(seg_scores):
    weights = softmax_per_sample(seg_scores * 1e7)
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3, 4)), torch.ones(3, dtype=torch.float64))
    first_view = (seg_scores[0] * 1e7).flatten().softmax(dim=0).view_as(seg_scores[0])
    torch.testing.assert_close(weights[0], first_view)
    sharper = softmax_per_sample(seg_scores * 1e7, temperature=0.1)
    assert sharper.max() > weights.max()


def test_sigmoid_sum_is_normalised_sigmoid(seg_scores):
    weights = sigmoid_sum(seg_scores, temperature=2.0)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    expected = (seg_scores / 2.0).sigmoid()
    torch.testing.assert_close(weights, expected / expected.sum())


@pytest.mark.parametrize(("name", "loss", "canonical"), [
    ("org", None, "clamp_sum"),
    ("sigmoid", None, "sigmoid_sum"),
    ("softmax", "ce", "softmax_over_batch"),
    ("softmax", "bce", "softmax_per_sample"),
    ("softmax_per_sample", None, "softmax_per_sample"),
])  # fmt: skip
def test_reference_names_are_aliases(name, loss, canonical):
    assert resolve_normalizer_name(name, loss) == canonical
    assert get_normalizer(name, loss) is NORMALIZERS[canonical]


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown weight normaliser 'hard_weight'") as error:
        get_normalizer("hard_weight")
    for choice in [*NORMALIZERS, "org", "sigmoid", "softmax"]:
        assert repr(choice) in str(error.value)


def test_softmax_alias_needs_the_loss():
    with pytest.raises(ValueError, match="depends on the loss"):
        get_normalizer("softmax")


class ThreadAllReduce:
    """An all-reduce among ``world`` threads: each deposits its partial result, waits, then combines."""

    def __init__(self, world: int, combine) -> None:
        self.barrier = threading.Barrier(world)
        self.partials: list[torch.Tensor | None] = [None] * world
        self.combine = combine

    def for_rank(self, rank: int):
        def reduce(partial: torch.Tensor) -> torch.Tensor:
            self.partials[rank] = partial
            self.barrier.wait()
            result = self.combine(torch.stack(self.partials))
            self.barrier.wait()  # nobody overwrites a partial before every rank has combined
            return result

        return reduce


@pytest.mark.parametrize("normalizer", [clamp_sum, sigmoid_sum, softmax_over_batch])
def test_reduction_seam_normalises_over_the_global_batch(normalizer, seg_scores):
    """Two emulated processes, each holding part of the batch, reproduce the single-process weights."""
    scores = seg_scores * 1e7
    shards = scores[:1], scores[1:]
    sums = ThreadAllReduce(2, lambda stacked: stacked.sum(dim=0))
    maxima = ThreadAllReduce(2, lambda stacked: stacked.max(dim=0).values)

    def run(rank: int) -> torch.Tensor:
        options = {"reduce_sum": sums.for_rank(rank)}
        if normalizer is softmax_over_batch:
            options["reduce_max"] = maxima.for_rank(rank)
        return normalizer(shards[rank], **options)

    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(run, range(2)))
    torch.testing.assert_close(torch.cat(parts), normalizer(scores))
    assert not torch.allclose(parts[0], normalizer(shards[0]))  # a local-only normalisation differs
