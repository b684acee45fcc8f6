"""Soft ``ce`` targets ``[N, C]`` (mixup): costs, tangents, and weights by both methods and by ``higher``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlbseg.meta import bootstrap_weights
from mlbseg.meta.costs import get_costs
from mlbseg.meta.lookahead import optimizer_slots
from mlbseg.meta.scores import MetaProblem, forward_scores, lookahead_scores

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

FLOAT64_RTOL = 1e-8
CLASSES = 4  # TinyClsNet's


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def mixup_targets(labels: torch.Tensor, pairing: torch.Tensor, lam: float, classes: int) -> torch.Tensor:
    """λ·onehot(y) + (1−λ)·onehot(y[π]), float64 [N, C]."""
    onehot = F.one_hot(labels, classes).double()
    return lam * onehot + (1 - lam) * onehot[pairing]


def mixed_case(case_factory, setting="momentum_wd", steps=3, seed=0):
    """A ``cls`` case after ``steps`` real SGD steps, its batch mixed as in docs/reference.md §1.3 step 1.

    Returns the case (inputs mixed, noisy soft, pseudo = argmax on the mixed batch, meta batch unmixed) and
    the hard labels y, y[π] and λ.
    """
    case = case_factory("cls", setting, steps=steps, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    lam = float(torch.distributions.Beta(32.0, 32.0).sample())  # any λ in (0, 1) will do
    pairing = torch.randperm(len(case.noisy), generator=generator)
    labels = case.noisy
    case.inputs = lam * case.inputs + (1 - lam) * case.inputs[pairing]
    case.noisy = mixup_targets(labels, pairing, lam, CLASSES)
    with torch.no_grad():
        case.pseudo = case.model(case.inputs).argmax(dim=1)
    return case, labels, labels[pairing], lam


def scores(case, targets, method):
    problem = MetaProblem(
        case.model,
        optimizer_slots(case.model, case.optimizer),
        get_costs("ce"),
        case.inputs,
        targets,
        case.meta_inputs,
        case.meta_targets,
        None,
    )
    return {"forward": forward_scores, "lookahead": lookahead_scores}[method](problem)


def test_soft_costs_are_the_mixup_combination_and_tangents_the_jvp():
    generator = torch.Generator().manual_seed(5)
    logits, direction = torch.randn(2, 6, 3, dtype=torch.float64, generator=generator)
    labels, paired = torch.randint(0, 3, (2, 6), generator=generator)
    lam = 0.37
    soft = lam * F.one_hot(labels, 3).double() + (1 - lam) * F.one_hot(paired, 3).double()
    ce = get_costs("ce")
    costs = ce.elementwise(logits, soft)
    assert costs.shape == (6,)
    expected = lam * F.cross_entropy(logits, labels, reduction="none") + (1 - lam) * F.cross_entropy(
        logits, paired, reduction="none"
    )
    torch.testing.assert_close(costs, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(costs, F.cross_entropy(logits, soft, reduction="none"), rtol=1e-12, atol=0)
    _, jvp = torch.func.jvp(lambda z: ce.elementwise(z, soft), (logits,), (direction,))
    torch.testing.assert_close(ce.tangent(logits, direction, soft), jvp, rtol=1e-12, atol=1e-14)
    closed = ((logits.softmax(dim=1) - soft) * direction).sum(dim=1)  # ⟨softmax(z) − t, dz⟩
    torch.testing.assert_close(ce.tangent(logits, direction, soft), closed, rtol=1e-12, atol=1e-14)


def test_soft_per_pixel_maps_and_float32_targets_on_float64_logits():
    generator = torch.Generator().manual_seed(6)
    logits, direction = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64, generator=generator)
    soft = torch.rand(2, 3, 4, 4, generator=generator).softmax(dim=1)  # float32 [N, C, H, W]
    ce = get_costs("ce")
    assert ce.elementwise(logits, soft).dtype == torch.float64
    _, jvp = torch.func.jvp(lambda z: ce.elementwise(z, soft), (logits,), (direction,))
    tangent = ce.tangent(logits, direction, soft)
    assert tangent.shape == (2, 4, 4)
    torch.testing.assert_close(tangent, jvp, rtol=1e-12, atol=1e-14)


def test_targets_in_neither_form_are_a_clear_error():
    ce = get_costs("ce")
    logits = torch.zeros(2, 3)
    for targets in (torch.zeros(2), torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"targets \[N, \.\.\.\] \(integer\) or soft targets"):
            ce.elementwise(logits, targets)
        with pytest.raises(ValueError, match=r"soft targets \[N, C, \.\.\.\] \(floating point"):
            ce.tangent(logits, logits, targets)


@pytest.mark.parametrize("method", ["forward", "lookahead"])
@pytest.mark.parametrize("with_pseudo", [True, False])
def test_one_hot_soft_targets_give_the_hard_weights_exactly(case_factory, method, with_pseudo):
    case = case_factory("cls", "momentum_wd", steps=3)
    args = list(case.call_args())
    if not with_pseudo:
        args[4] = None
    hard_alpha, hard_beta = bootstrap_weights(*args, loss="ce", method=method)
    args[3] = F.one_hot(case.noisy, CLASSES).double()
    soft_alpha, soft_beta = bootstrap_weights(*args, loss="ce", method=method)
    assert hard_alpha.max() > 0
    assert torch.equal(soft_alpha, hard_alpha)
    assert (soft_beta is None) == (hard_beta is None) == (not with_pseudo)
    if with_pseudo:
        assert torch.equal(soft_beta, hard_beta)


def test_mixed_targets_methods_agree_after_real_steps(case_factory, sgd_setting):
    case, _, _, _ = mixed_case(case_factory, sgd_setting, steps=3)
    forward = scores(case, (case.noisy, case.pseudo), "forward")
    lookahead = scores(case, (case.noisy, case.pseudo), "lookahead")
    assert forward.shape == lookahead.shape == (6, 2)
    assert lookahead.abs().max() > 0
    assert relative_error(forward, lookahead) < FLOAT64_RTOL

    alpha_f, beta_f = bootstrap_weights(*case.call_args(), loss="ce", method="forward")
    alpha_l, beta_l = bootstrap_weights(*case.call_args(), loss="ce", method="lookahead")
    assert alpha_l.max() > 0
    torch.testing.assert_close(alpha_f, alpha_l, rtol=FLOAT64_RTOL, atol=1e-12)
    torch.testing.assert_close(beta_f, beta_l, rtol=FLOAT64_RTOL, atol=1e-12)
    torch.testing.assert_close(alpha_f.sum() + beta_f.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("method", ["forward", "lookahead"])
def test_mixed_scores_are_the_lambda_combination_of_the_hard_scores(case_factory, method):
    """The score is linear in the cost: w̃(t) = λ·w̃(y) + (1−λ)·w̃(y[π]); the mix is not a no-op."""
    case, labels, paired, lam = mixed_case(case_factory)
    soft, hard, hard_paired = scores(case, (case.noisy, labels, paired), method).unbind(dim=1)
    assert relative_error(soft, lam * hard + (1 - lam) * hard_paired) < FLOAT64_RTOL
    assert relative_error(soft, hard) > 1e-3


@pytest.mark.parametrize("method", ["forward", "lookahead"])
def test_mixed_targets_match_higher(case_factory, method):
    pytest.importorskip("higher")
    from .test_meta_oracle_higher import reference_weights  # F.cross_entropy takes soft targets as well

    case, _, _, _ = mixed_case(case_factory)
    assert all("momentum_buffer" in state for state in case.optimizer.state.values())
    expected_alpha, expected_beta = reference_weights(case)
    assert expected_alpha.max() > 0
    alpha, beta = bootstrap_weights(*case.call_args(), loss="ce", method=method)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(beta, expected_beta, rtol=1e-6, atol=1e-12)
