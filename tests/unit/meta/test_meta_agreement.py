"""``forward`` (first order + one JVP) and ``lookahead`` (second order) give the same scores and weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlbseg.meta import bootstrap_weights
from mlbseg.meta.costs import get_costs
from mlbseg.meta.lookahead import optimizer_slots
from mlbseg.meta.normalize import clamp_sum
from mlbseg.meta.scores import MetaProblem, forward_scores, lookahead_scores

# torch loads its JVP decompositions with torch.jit.script on first use of forward-mode AD.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

FLOAT64_RTOL = 1e-8


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def both_scores(case, extra_loss=None, with_pseudo=True):
    targets = (case.noisy, case.pseudo) if with_pseudo else (case.noisy,)
    problem = MetaProblem(
        case.model,
        optimizer_slots(case.model, case.optimizer),
        get_costs(case.loss),
        case.inputs,
        targets,
        case.meta_inputs,
        case.meta_targets,
        extra_loss,
    )
    return forward_scores(problem), lookahead_scores(problem)


@pytest.mark.parametrize("kind", ["seg", "cls", "unetpp", "seg_ce"])
def test_methods_agree_after_real_steps(case_factory, kind, sgd_setting):
    case = case_factory(kind, sgd_setting, steps=3)
    forward, lookahead = both_scores(case)
    assert forward.shape == lookahead.shape == (6, 2, *case.noisy.shape[1:])
    assert lookahead.abs().max() > 0
    assert relative_error(forward, lookahead) < FLOAT64_RTOL

    alpha_f, beta_f = bootstrap_weights(*case.call_args(), loss=case.loss, method="forward")
    alpha_l, beta_l = bootstrap_weights(*case.call_args(), loss=case.loss, method="lookahead")
    torch.testing.assert_close(alpha_f, alpha_l, rtol=FLOAT64_RTOL, atol=1e-12)
    torch.testing.assert_close(beta_f, beta_l, rtol=FLOAT64_RTOL, atol=1e-12)


@pytest.mark.parametrize("setting", ["momentum_wd", "nesterov_wd", "dampening_wd"])
def test_methods_agree_on_the_first_step_without_momentum_buffers(case_factory, setting):
    case = case_factory("seg", setting, steps=0)
    assert not case.optimizer.state
    forward, lookahead = both_scores(case)
    assert relative_error(forward, lookahead) < FLOAT64_RTOL


def test_methods_agree_with_mixed_buffers_groups_and_frozen_parameters(case_factory):
    """Per-group lr/momentum, a layer unfrozen late (no buffer yet), a frozen layer, a parameter outside."""
    case = case_factory("seg", "plain", steps=0)
    model = case.model
    model.head.requires_grad_(False)
    optimizer = torch.optim.SGD(
        [
            {"params": model.enc.parameters(), "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            {"params": [*model.down.parameters(), model.head.weight], "lr": 0.03, "momentum": 0.5},
        ]
    )
    for _ in range(2):  # head frozen: it gets no momentum buffer
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(case.inputs), case.noisy).backward()
        optimizer.step()
    model.head.requires_grad_(True)  # unfrozen: head.weight is stepped but has no buffer yet
    model.down[0].weight.requires_grad_(False)  # frozen: has a buffer but is never stepped
    case.optimizer = optimizer  # head.bias requires grad but is in no group: never stepped
    assert optimizer.state[model.head.weight].get("momentum_buffer") is None

    forward, lookahead = both_scores(case)
    assert relative_error(forward, lookahead) < FLOAT64_RTOL


def consistency(logits: torch.Tensor) -> torch.Tensor:
    """A stand-in for MLB-Seg's multi-view consistency: flip agreement of the probabilities."""
    probs = logits.sigmoid()
    return (probs - probs.flip(-1)).pow(2).mean()


@pytest.mark.parametrize("kind", ["seg", "unetpp"])
def test_extra_loss_shifts_the_look_ahead_point_and_methods_still_agree(case_factory, kind):
    case = case_factory(kind, "momentum_wd")
    plain_forward, _ = both_scores(case)
    forward, lookahead = both_scores(case, extra_loss=lambda logits: 5.0 * consistency(logits))
    assert relative_error(forward, lookahead) < FLOAT64_RTOL
    assert relative_error(forward, plain_forward) > 1e-3

    alpha, beta = bootstrap_weights(*case.call_args(), loss="bce", extra_loss=consistency)
    alpha_plain, beta_plain = bootstrap_weights(*case.call_args(), loss="bce")
    assert not torch.allclose(torch.stack([alpha, beta]), torch.stack([alpha_plain, beta_plain]))


@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_l2rw_mode_weights_alpha_alone(case_factory, kind):
    case = case_factory(kind, "momentum_wd")
    args = list(case.call_args())
    args[4] = None  # pseudo_targets
    for method in ("forward", "lookahead"):
        alpha, beta = bootstrap_weights(*args, loss=case.loss, method=method)
        assert beta is None
        assert alpha.shape == case.noisy.shape
        torch.testing.assert_close(alpha.sum(), torch.tensor(1.0, dtype=alpha.dtype))

    # Scores are per element, so α's scores do not depend on β's presence; only the normaliser does.
    joint_scores, _ = both_scores(case)
    alone_scores, alone_lookahead = both_scores(case, with_pseudo=False)
    assert alone_scores.shape == (6, 1, *case.noisy.shape[1:])
    torch.testing.assert_close(alone_scores[:, 0], joint_scores[:, 0], rtol=1e-10, atol=0)
    assert relative_error(alone_scores, alone_lookahead) < FLOAT64_RTOL
    torch.testing.assert_close(alpha, clamp_sum(joint_scores[:, 0]), rtol=1e-8, atol=1e-14)


def test_float32_agreement(case_factory):
    case = case_factory("seg", "momentum_wd")
    case.model.float()
    for name in ("inputs", "noisy", "pseudo", "meta_inputs", "meta_targets"):
        setattr(case, name, getattr(case, name).float())
    case.optimizer.state.clear()  # float64 buffers would not match float32 parameters
    forward, lookahead = both_scores(case)
    assert forward.dtype == torch.float32
    assert relative_error(forward, lookahead) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_cuda_weights_match_cpu_and_methods_agree(case_factory, kind):
    cpu_case = case_factory(kind, "nesterov_wd")
    cuda_case = case_factory(kind, "nesterov_wd", device="cuda")
    forward, lookahead = both_scores(cuda_case)
    assert forward.is_cuda
    assert relative_error(forward, lookahead) < FLOAT64_RTOL
    cpu_forward, _ = both_scores(cpu_case)
    assert relative_error(forward.cpu(), cpu_forward) < 1e-6
    alpha, beta = bootstrap_weights(*cuda_case.call_args(), loss=cuda_case.loss)
    cpu_alpha, cpu_beta = bootstrap_weights(*cpu_case.call_args(), loss=cpu_case.loss)
    torch.testing.assert_close(alpha.cpu(), cpu_alpha, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(beta.cpu(), cpu_beta, rtol=1e-6, atol=1e-12)
