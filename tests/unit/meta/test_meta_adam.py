"""Adam and AdamW: the virtual step is the real one, and both methods give the exact scores of a real step.

The oracle of last resort is a central finite difference of the meta loss after a real ``Adam.step`` /
``AdamW.step`` on ``Σ ε_i·ℓ_i (+ extra)``. Adam is strongly non-linear in the gradient where its second
moment is small, so the difference step is small, 1e-7: on these nets its truncation error is at most
5e-6 of the largest score (seg, AdamW, one step of history) and its rounding error about 1e-8 (at 1e-8,
rounding alone costs 3e-7)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlbseg.meta import bootstrap_weights
from mlbseg.meta.adam import adam_sensitivity, adam_update
from mlbseg.meta.costs import get_costs, meta_loss
from mlbseg.meta.lookahead import optimizer_slots
from mlbseg.meta.scores import MetaProblem, forward_scores, lookahead_scores

from .conftest import ADAM_SETTINGS, make_optimizer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

FLOAT64_RTOL = 1e-10
FD_STEP = 1e-7
FD_RTOL = 1e-4


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def consistency(logits: torch.Tensor) -> torch.Tensor:
    """An unweighted extra term (a stand-in for MLB-Seg's consistency): flip agreement of the sigmoids."""
    probs = logits.sigmoid()
    return 5.0 * (probs - probs.flip(-1)).pow(2).mean()


def both_scores(case, extra_loss=None) -> tuple[torch.Tensor, torch.Tensor]:
    problem = MetaProblem(
        case.model,
        optimizer_slots(case.model, case.optimizer),
        get_costs(case.loss),
        case.inputs,
        (case.noisy, case.pseudo),
        case.meta_inputs,
        case.meta_targets,
        extra_loss,
    )
    return forward_scores(problem), lookahead_scores(problem)


def meta_loss_after_real_step(case, eps: torch.Tensor, extra_loss) -> float:
    """L_meta after one real step of copies of the model and optimiser on ``Σ eps⊙costs (+ extra)``."""
    model, optimizer = copy.deepcopy((case.model, case.optimizer))  # one memo: the groups hold the copies
    costs = get_costs(case.loss)
    logits = model(case.inputs)
    per_element = torch.stack([costs.elementwise(logits, target) for target in (case.noisy, case.pseudo)], 1)
    loss = (eps * per_element).sum() + (0.0 if extra_loss is None else extra_loss(logits))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return meta_loss(costs, model(case.meta_inputs), case.meta_targets).item()


def finite_difference_scores(case, scores: torch.Tensor, elements: list[int], extra_loss, step: float):
    """−∂L_meta/∂ε_i by central differences of the real step, for the flat indices ``elements``."""
    found = []
    for index in elements:
        eps = torch.zeros_like(scores)
        eps.view(-1)[index] = step
        ahead = meta_loss_after_real_step(case, eps, extra_loss)
        behind = meta_loss_after_real_step(case, -eps, extra_loss)
        found.append(-(ahead - behind) / (2 * step))
    return torch.tensor(found, dtype=scores.dtype)


def checked_elements(scores: torch.Tensor, count: int = 3) -> list[int]:
    """The ``count`` largest scores in magnitude and ``count`` others, drawn with a fixed seed."""
    flat = scores.reshape(-1)
    largest = flat.abs().argsort(descending=True)[:count].tolist()
    drawn = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(7))[:count].tolist()
    return sorted(set(largest + drawn))


def slot_of(optimizer: torch.optim.Optimizer, param: torch.Tensor):
    model = nn.Module()
    model.register_parameter("p", param)
    return optimizer_slots(model, optimizer)["p"]


@pytest.mark.parametrize("setting", sorted(ADAM_SETTINGS))
def test_adam_update_equals_the_real_step_bit_for_bit(setting):
    generator = torch.Generator().manual_seed(1)
    param = nn.Parameter(torch.randn(5, 3, generator=generator))
    optimizer = make_optimizer(setting, [param])
    for _ in range(3):  # the first step starts from no state; row 0 never gets a gradient (v = 0 there)
        param.grad = torch.randn(5, 3, generator=generator)
        param.grad[0] = 0.0
        expected = adam_update(param.detach().clone(), param.grad, slot_of(optimizer, param))
        optimizer.step()
        assert torch.equal(expected, param.detach())


def exact_slope(param: float, base: float, slot, first: float, second: float) -> float:
    """d/dg of the Adam update s·m'/(r + eps) at g = ``base``, differentiated in 50-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    beta1, beta2, eps, t = mpmath.mpf(slot.beta1), mpmath.mpf(slot.beta2), mpmath.mpf(slot.eps), slot.step + 1
    decay = 0 if slot.decoupled else mpmath.mpf(slot.weight_decay) * mpmath.mpf(param)

    def update(grad):
        grad = grad + decay
        moment = beta1 * mpmath.mpf(first) + (1 - beta1) * grad
        root = mpmath.sqrt(beta2 * mpmath.mpf(second) + (1 - beta2) * grad**2) / mpmath.sqrt(1 - beta2**t)
        return mpmath.mpf(slot.lr) / (1 - beta1**t) * moment / (root + eps)

    return float(mpmath.diff(update, mpmath.mpf(base)))


@pytest.mark.parametrize("with_base", [False, True], ids=["g0_zero", "g0_extra"])
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("setting", sorted(ADAM_SETTINGS))
def test_adam_sensitivity_is_the_derivative_of_the_update(setting, steps, with_base):
    """The closed-form diagonal D: the exact slope (50 digits), the fallback where v' = 0, and what
    forward-mode AD through the (bit-exact) virtual update gives."""
    generator = torch.Generator().manual_seed(2)
    param = nn.Parameter(torch.randn(6, dtype=torch.float64, generator=generator))
    optimizer = make_optimizer(setting, [param])
    for _ in range(steps):
        param.grad = torch.randn(6, dtype=torch.float64, generator=generator)
        param.grad[0] = 0.0  # a coordinate without a second moment unless decay or g0 gives it one
        optimizer.step()
    slot = slot_of(optimizer, param)
    base_grad, cost_grad = torch.randn(2, 6, dtype=torch.float64, generator=generator)
    base_grad = base_grad if with_base else torch.zeros(6, dtype=torch.float64)
    diagonal = adam_sensitivity(param.detach(), base_grad, slot)
    assert diagonal.shape == param.shape

    state = [torch.zeros(6, dtype=torch.float64)] * 2 if steps == 0 else [slot.exp_avg, slot.exp_avg_sq]
    fresh = state[1] == 0  # no second moment yet: every coordinate at step 0, later coordinate 0 ...
    coupled = slot.weight_decay != 0 and not slot.decoupled  # ... unless coupled decay gave it a gradient
    assert fresh.tolist() == [steps == 0 or not coupled] + [steps == 0] * 5
    fallback = slot.lr * (1 - slot.beta1) / (1 - slot.beta1 ** (slot.step + 1))  # s·(1 − β1): lr at t = 1
    for j in range(6):
        values = (param[j].item(), base_grad[j].item(), slot, state[0][j].item(), state[1][j].item())
        expected = fallback if fresh[j] else exact_slope(*values)
        assert diagonal[j].item() == pytest.approx(expected, rel=1e-12)

    def update(eps: torch.Tensor) -> torch.Tensor:
        return adam_update(param.detach(), base_grad + eps * cost_grad, slot)

    one = torch.ones((), dtype=torch.float64)
    _, tangent = torch.func.jvp(update, (torch.zeros_like(one),), (one,))
    torch.testing.assert_close(tangent, -diagonal * cost_grad, rtol=1e-10, atol=0)


@pytest.mark.parametrize("extra", [False, True], ids=["no_extra", "extra"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("setting", ["adam_wd", "adamw"])
@pytest.mark.parametrize("kind", ["seg", "cls", "seg_ce"])
def test_methods_agree_and_match_finite_differences_of_the_real_step(
    case_factory, kind, setting, steps, extra
):
    case = case_factory(kind, setting, steps=steps)
    assert all(int(state["step"]) == steps for state in case.optimizer.state.values())
    extra_loss = consistency if extra else None
    forward, lookahead = both_scores(case, extra_loss)
    assert forward.shape == (6, 2, *case.noisy.shape[1:])
    assert lookahead.abs().max() > 0
    assert relative_error(forward, lookahead) < FLOAT64_RTOL

    elements = checked_elements(forward)
    expected = finite_difference_scores(case, forward, elements, extra_loss, FD_STEP)
    scale = forward.abs().max()
    torch.testing.assert_close(forward.reshape(-1)[elements], expected, rtol=FD_RTOL, atol=FD_RTOL * scale)


@pytest.mark.parametrize("setting", ["adam_wd", "adamw"])
@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_weights_agree_between_methods_and_the_extra_loss_moves_them(case_factory, kind, setting):
    case = case_factory(kind, setting, steps=2)
    alpha_f, beta_f = bootstrap_weights(*case.call_args(), loss=case.loss, method="forward")
    alpha_l, beta_l = bootstrap_weights(*case.call_args(), loss=case.loss, method="lookahead")
    assert alpha_f.shape == beta_f.shape == case.noisy.shape
    torch.testing.assert_close(alpha_f, alpha_l, rtol=FLOAT64_RTOL, atol=1e-14)
    torch.testing.assert_close(beta_f, beta_l, rtol=FLOAT64_RTOL, atol=1e-14)
    torch.testing.assert_close(alpha_f.sum() + beta_f.sum(), torch.tensor(1.0, dtype=torch.float64))
    alpha_x, _ = bootstrap_weights(*case.call_args(), loss=case.loss, extra_loss=consistency)
    assert not torch.allclose(alpha_x, alpha_f)


@pytest.mark.parametrize(
    ("setting", "sgd_kwargs"),
    [("adam", {"lr": 1e-2}), ("adamw", {"lr": 1e-2, "weight_decay": 1e-2})],
)
@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_first_step_without_a_second_moment_scores_as_sgd_with_the_same_lr(
    case_factory, kind, setting, sgd_kwargs
):
    """The documented fallback: no state, no extra loss, no coupled decay → D = lr, the plain SGD scores."""
    case = case_factory(kind, setting, steps=0)
    assert not case.optimizer.state
    forward, lookahead = both_scores(case)
    assert torch.isfinite(forward).all()
    assert relative_error(forward, lookahead) < FLOAT64_RTOL

    sgd_case = copy.copy(case)
    sgd_case.optimizer = torch.optim.SGD(case.model.parameters(), **sgd_kwargs)
    sgd_forward, _ = both_scores(sgd_case)
    assert relative_error(forward, sgd_forward) < 1e-12
    alpha, beta = bootstrap_weights(*case.call_args(), loss=case.loss)
    sgd_alpha, sgd_beta = bootstrap_weights(*sgd_case.call_args(), loss=case.loss)
    torch.testing.assert_close(alpha, sgd_alpha, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(beta, sgd_beta, rtol=1e-12, atol=1e-15)


def test_first_step_fallback_is_the_exact_slope_times_eps(case_factory):
    """The exact slope at ε = 0, lr/eps, exists but holds only for |g| ≲ eps: a difference step of 1e-12
    finds it (scores / eps); at 1e-5 the real step is already ≈ lr·sign(g) and finds something else."""
    case = case_factory("cls", "adamw", steps=0)
    forward, _ = both_scores(case)
    eps = case.optimizer.param_groups[0]["eps"]
    elements = checked_elements(forward)
    exact = finite_difference_scores(case, forward, elements, None, step=1e-12)
    torch.testing.assert_close(forward.reshape(-1)[elements] / eps, exact, rtol=1e-3, atol=0)
    saturated = finite_difference_scores(case, forward, elements, None, step=1e-5)
    assert relative_error(saturated, exact) > 0.9


@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_first_step_with_coupled_decay_or_extra_loss_takes_the_fallback_too(case_factory, kind):
    """g0 ≠ 0 at the first step (decay, extra loss): no second moment yet, so D = lr; methods agree."""
    case = case_factory(kind, "adam_wd", steps=0)
    forward, lookahead = both_scores(case, consistency if kind == "seg" else None)
    assert torch.isfinite(forward).all()
    assert relative_error(forward, lookahead) < FLOAT64_RTOL


def test_methods_agree_with_per_group_settings_and_a_parameter_without_state(case_factory):
    """Per-group lr/betas/eps/decay, a layer unfrozen late (no state yet), a frozen layer, one outside."""
    case = case_factory("seg", "plain", steps=0)
    model = case.model
    model.head.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.enc.parameters(), "lr": 1e-2, "weight_decay": 1e-2},
            {
                "params": [*model.down.parameters(), model.head.weight],
                "lr": 3e-3,
                "betas": (0.8, 0.99),
                "eps": 1e-6,
                "weight_decay": 0.0,
            },
        ]
    )
    for _ in range(2):  # head frozen: it gets no state
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(case.inputs), case.noisy).backward()
        optimizer.step()
    model.head.requires_grad_(True)  # unfrozen: head.weight is stepped but has no state yet
    model.down[0].weight.requires_grad_(False)  # frozen: has state but is never stepped
    case.optimizer = optimizer  # head.bias requires grad but is in no group: never stepped
    assert model.head.weight not in optimizer.state

    for extra_loss in (None, consistency):
        forward, lookahead = both_scores(case, extra_loss)
        assert relative_error(forward, lookahead) < FLOAT64_RTOL


def test_float32_agreement(case_factory):
    case = case_factory("seg", "adamw", steps=3)
    case.model.float()
    for name in ("inputs", "noisy", "pseudo", "meta_inputs", "meta_targets"):
        setattr(case, name, getattr(case, name).float())
    for state in case.optimizer.state.values():
        state["exp_avg"], state["exp_avg_sq"] = state["exp_avg"].float(), state["exp_avg_sq"].float()
    forward, lookahead = both_scores(case, consistency)
    assert forward.dtype == torch.float32
    assert relative_error(forward, lookahead) < 1e-4


def test_amsgrad_and_maximize_are_refused(case_factory):
    case = case_factory("cls", "adam", steps=0)
    case.optimizer = torch.optim.Adam(case.model.parameters(), amsgrad=True)
    with pytest.raises(ValueError, match=r"Adam/AdamW with amsgrad=False; got amsgrad=True"):
        bootstrap_weights(*case.call_args(), loss="ce")
    case.optimizer = torch.optim.AdamW(case.model.parameters(), maximize=True)
    with pytest.raises(ValueError, match=r"needs AdamW with maximize=False"):
        bootstrap_weights(*case.call_args(), loss="ce")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_cuda_adamw_scores_match_cpu_and_methods_agree(case_factory, kind):
    """On CUDA, AdamW takes torch's foreach path: its state differs from the CPU's in rounding."""
    cpu_case = case_factory(kind, "adamw", steps=3)
    cuda_case = case_factory(kind, "adamw", steps=3, device="cuda")
    forward, lookahead = both_scores(cuda_case, consistency)
    assert forward.is_cuda
    assert relative_error(forward, lookahead) < FLOAT64_RTOL
    cpu_forward, _ = both_scores(cpu_case, consistency)
    assert relative_error(forward.cpu(), cpu_forward) < 1e-6
