"""The virtual Adam/AdamW step and its exact derivative with respect to the per-element weights ε.

Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) as ``torch.optim.Adam``
computes (maximize=False, amsgrad=False) for one parameter p with gradient g, after ``step`` real steps,
t = step + 1, s = lr/(1 − β1^t) and c2 = 1 − β2^t::

    g  = g + λ·p                      coupled weight decay (Adam's weight_decay, an L2 term)
    p  = p·(1 − lr·λ)                 decoupled weight decay instead (AdamW; Loshchilov & Hutter,
                                      "Decoupled Weight Decay Regularization", ICLR 2019)
    m' = β1·m + (1 − β1)·g            first moment (state "exp_avg"; 0 before the first step)
    v' = β2·v + (1 − β2)·g²           second moment (state "exp_avg_sq")
    r  = √v' / √c2                    √v̂', the bias-corrected root
    p' = p − s·m'/(r + eps)

:func:`adam_update` replicates this out of place (bit for bit on one device, single-tensor path).

**The derivative.** The virtual loss is ``Σ_i ε_i·ℓ_i (+ extra)``, so ε enters only through the gradient,
``g(ε) = g0 + Σ_i ε_i ∇ℓ_i`` with g0 = ∇extra(θ) (+ λθ for coupled decay; 0 without either), and every
coordinate's update depends on its own g alone. The Jacobian of p' with respect to g is therefore
diagonal, ``∂p'/∂ε_i = −D ⊙ ∇ℓ_i(θ)``, with D the derivative of s·m'/(r + eps) with respect to g at g0
(∂m'/∂g = 1 − β1 and ∂r/∂g = (1 − β2)·g/(c2·r))::

    D = s·[(1 − β1)/(r + eps) − m'·(1 − β2)·g0 / (c2·r·(r + eps)²)]      (m', r at g = g0)
      = s·[(1 − β1)·(β2·v + c2·r·eps) − (1 − β2)·β1·m·g0] / (c2·r·(r + eps)²)

The second term of the first line is Adam's second moment reacting to g; it vanishes when g0 = 0 (no
extra loss, no coupled decay), where D = s·(1 − β1)/(r + eps). The second line substitutes
c2·r² = β2·v + (1 − β2)·g0² and m' = β1·m + (1 − β1)·g0, so the g0² terms cancel exactly instead of in
rounding: at Adam's first step (m = v = 0) it is s·(1 − β1)·eps/(r + eps)² ≈ lr·eps/g0², which the first
line gets as the difference of two terms of size lr/|g0| (8 digits lost).

Chaining with the meta loss at θ̂ = p'(g0) gives the L2RW meta-gradient of Ren et al. ("Learning to
Reweight Examples for Robust Deep Learning", ICML 2018) for an Adam step, as used by L2B (Zhou et al.,
"L2B: Learning to Bootstrap Robust Models for Combating Label Noise", CVPR 2024)::

    w̃_i = −∂L_meta(θ̂)/∂ε_i = ⟨∇L_meta(θ̂), D ⊙ ∇ℓ_i(θ)⟩ = ⟨D ⊙ ∇L_meta(θ̂), ∇ℓ_i(θ)⟩

so D folds into the tangent of the one JVP, exactly as SGD's scalar factor does.

**Coordinates without a second moment yet (v = 0).** Until a coordinate first gets a non-zero gradient in a
real step (every coordinate before Adam's first step; a parameter unfrozen or added late; a unit never
active so far), m = v = 0 and its update is::

    s·(1 − β1)·g / (k·|g| + eps),    k = √((1 − β2)/c2),

about s·(1 − β1)/k·sign(g) once |g| ≫ eps: Adam has no scale for the coordinate yet. The slope at g0,
s·(1 − β1)·eps/(k·|g0| + eps)², holds only while |g − g0| ≲ |g0| + eps, a range no weighted step stays
in, and it grows to s·(1 − β1)/eps (1e8 times SGD's) as g0 → 0 (at Adam's first step without extra loss or
coupled decay g0 = 0: the update g/(|g| + eps) has that slope at 0 but is ≈ sign(g) for any real step).
There both methods use the documented fallback ``D = s·(1 − β1)``, Adam's slope with its denominator
taken as 1. θ̂ is unchanged (it is the real step's). At the first step, where every coordinate is such,
D = lr: the scores are SGD's with the same lr around Adam's θ̂, and without extra loss and coupled decay
exactly those of a plain SGD step with the same lr (with weight decay λ for AdamW), i.e. the exact scores
times eps, so ``org`` (``clamp_sum``) weights equal the exact ones and softmax/sigmoid temperatures keep
the SGD scale. The training loop needs no warm-up step for Adam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class AdamSlot:
    """One parameter's view of a real ``torch.optim.Adam``/``AdamW``: its group's settings and live state.

    Attributes:
        step: Real steps taken so far (``state["step"]``; 0 before the first).
        exp_avg: The first moment m, shaped like the parameter; None before the first step (m = 0).
        exp_avg_sq: The second moment v; None before the first step (v = 0).
        decoupled: AdamW's decay p·(1 − lr·λ) (True) or Adam's λ·p added to the gradient (False).
    """

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled: bool
    step: int
    exp_avg: Tensor | None
    exp_avg_sq: Tensor | None

    def update(self, param: Tensor, grad: Tensor) -> Tensor:
        """The stepped parameter (see :func:`adam_update`)."""
        return adam_update(param, grad, self)

    def sensitivity(self, param: Tensor, grad: Tensor) -> Tensor:
        """The diagonal D of ``∂p'/∂ε_i = −D ⊙ ∇ℓ_i`` (see :func:`adam_sensitivity`)."""
        return adam_sensitivity(param, grad, self)


def adam_slot(group: dict[str, Any], state: dict[str, Any]) -> AdamSlot:
    """The :class:`AdamSlot` of a parameter in param group ``group`` with optimiser state ``state``.

    Raises:
        ValueError: If the group has ``amsgrad=True``.
    """
    if group["amsgrad"]:
        raise ValueError(
            "The meta-weighting engine replicates Adam/AdamW with amsgrad=False; got amsgrad=True, whose "
            "running maximum of the second moment it does not model. Use amsgrad=False."
        )
    beta1, beta2 = (float(beta) for beta in group["betas"])
    return AdamSlot(
        lr=float(group["lr"]),
        beta1=beta1,
        beta2=beta2,
        eps=float(group["eps"]),
        weight_decay=float(group["weight_decay"]),
        decoupled=bool(group["decoupled_weight_decay"]),
        step=int(state["step"]) if "step" in state else 0,
        exp_avg=state.get("exp_avg"),
        exp_avg_sq=state.get("exp_avg_sq"),
    )


def _moments(param: Tensor, grad: Tensor, slot: AdamSlot) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decayed parameter, the gradient with coupled decay, m' and v', in ``torch.optim.Adam``'s ops."""
    if slot.weight_decay != 0 and slot.decoupled:
        param = param.mul(1 - slot.lr * slot.weight_decay)
    elif slot.weight_decay != 0:
        grad = torch.add(grad, param, alpha=slot.weight_decay)
    exp_avg = torch.zeros_like(param) if slot.exp_avg is None else slot.exp_avg
    exp_avg_sq = torch.zeros_like(param) if slot.exp_avg_sq is None else slot.exp_avg_sq
    first = exp_avg.lerp(grad, 1 - slot.beta1)
    second = exp_avg_sq.mul(slot.beta2).addcmul(grad, grad, value=1 - slot.beta2)
    return param, grad, first, second


def _root(second: Tensor, slot: AdamSlot) -> Tensor:
    """The bias-corrected root r = √v' / √c2, with a zero derivative where v' = 0 (√ has none there)."""
    empty = second == 0
    correction = (1 - slot.beta2 ** (slot.step + 1)) ** 0.5
    return second.masked_fill(empty, 1.0).sqrt().div(correction).masked_fill(empty, 0.0)


def _fresh(slot: AdamSlot, second: Tensor) -> Tensor:
    """Where Adam has no second moment yet (v = 0 in the state; everywhere before the first step)."""
    if slot.exp_avg_sq is None:
        return torch.ones_like(second, dtype=torch.bool)
    return slot.exp_avg_sq == 0


def _step_size(slot: AdamSlot) -> float:
    """The bias-corrected step size s = lr / (1 − β1^t) of the coming step t = step + 1."""
    return slot.lr / (1 - slot.beta1 ** (slot.step + 1))


def adam_update(param: Tensor, grad: Tensor, slot: AdamSlot) -> Tensor:
    """One out-of-place ``torch.optim.Adam`` (or ``AdamW``) update of ``param`` with ``grad``.

    Differentiable in ``grad`` (the ``lookahead`` method), with the derivative of the module docstring,
    including its fallback where v = 0. Autograd takes it in the first (textbook) form, which loses digits
    where the second moment's reaction nearly cancels the first term (:func:`adam_sensitivity` does not).
    ``grad`` may be a 0-d zero tensor (it broadcasts) where the virtual loss has no gradient but decay and
    momentum still move the parameter.

    Args:
        param: The current parameter, any shape.
        grad: Its gradient of the virtual loss, same shape (or 0-d).
        slot: The optimiser's settings and state for ``param``.

    Returns:
        The stepped parameter, shaped like ``param``; equal to the real step's at any ``grad``.
    """
    param, grad, first, second = _moments(param, grad, slot)
    fresh = _fresh(slot, second)
    denom = _root(second, slot).add(slot.eps)  # = torch's (√v' / √c2) + eps
    # NOTE: where v = 0 keep the real step's value but give it the fallback slope s·(1 − β1): a constant
    # denominator, and a numerator whose derivative is (1 − β1)·denom (module docstring).
    held = denom.detach()
    numerator = torch.where(fresh, first.detach() + (1 - slot.beta1) * held * (grad - grad.detach()), first)
    return param.addcdiv(numerator, torch.where(fresh, held, denom), value=-_step_size(slot))


def adam_sensitivity(param: Tensor, grad: Tensor, slot: AdamSlot) -> Tensor:
    """The diagonal D with ``∂p'/∂ε_i = −D ⊙ ∇ℓ_i`` for one Adam update at gradient ``grad`` = g0.

    Uses the cancellation-free form of the module docstring.

    Args:
        param: The current parameter θ (coupled decay adds λθ to g0).
        grad: g0, the virtual loss's gradient at ε = 0 (the extra loss's; a 0-d zero without one).
        slot: The optimiser's settings and state for ``param``.

    Returns:
        D, shaped like ``param``: s·[(1 − β1)·(β2·v + c2·r·eps) − (1 − β2)·β1·m·g0] / (c2·r·(r + eps)²),
        and s·(1 − β1) where v = 0 (see the module docstring).
    """
    _, grad, _, second = _moments(param, grad, slot)
    root = _root(second, slot)
    correction = 1 - slot.beta2 ** (slot.step + 1)
    old_first = 0.0 if slot.exp_avg is None else slot.exp_avg
    old_second = 0.0 if slot.exp_avg_sq is None else slot.exp_avg_sq
    numerator = (1 - slot.beta1) * (slot.beta2 * old_second + correction * slot.eps * root)
    numerator = numerator - (1 - slot.beta2) * slot.beta1 * old_first * grad
    # r = 0 only where v = 0, which the fallback below covers: divide by 1 there instead of 0.
    denominator = root.masked_fill(root == 0, 1.0) * (root + slot.eps).square() * correction
    diagonal = numerator / denominator * _step_size(slot)
    return diagonal.masked_fill(_fresh(slot, second), _step_size(slot) * (1 - slot.beta1))
