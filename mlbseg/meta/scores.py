"""Raw meta scores w̃_i = −∂L_meta(θ̂(ε))/∂ε_i at ε = 0, by two methods that give the same numbers.

``lookahead_scores`` is the reference formulation (a differentiable virtual SGD step, second order).
``forward_scores`` is its exact first-order form: ``w̃_i = ⟨∇ℓ_i(θ), u⟩`` with ``u_p = k_p·∇_p L_meta(θ̂)``
(k from :func:`~mlbseg.meta.lookahead.eps_sensitivity`), i.e. one ordinary backward of the meta loss at θ̂
and one forward-mode JVP of the training logits along u.

All forwards run through ``torch.func.functional_call`` with detached parameter copies and *cloned*
buffers, so the model's parameters, ``.grad`` fields and BatchNorm running statistics are never touched,
and no DDP hook would fire.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call

from mlbseg.meta.costs import CostFunctions, meta_loss
from mlbseg.meta.lookahead import SGDSlot, eps_sensitivity, virtual_step

ExtraLoss = Callable[[Tensor], Tensor]  # training logits -> scalar, never reweighted


class MetaProblem(NamedTuple):
    """One call's inputs to a scoring method.

    Attributes:
        model: The network, in the mode of the real step (train).
        slots: The optimiser's settings per trainable parameter name (``sgd_slots``).
        costs: Per-element costs and their tangents for the loss in use.
        inputs: Training batch ``[N, ...]``.
        targets: One target tensor per label source: ``(noisy,)`` or ``(noisy, pseudo)``.
        meta_inputs: Clean meta batch ``[M, ...]``.
        meta_targets: Its targets.
        extra_loss: Optional non-weighted term on the training logits; it shifts θ̂.
    """

    model: nn.Module
    slots: dict[str, SGDSlot]
    costs: CostFunctions
    inputs: Tensor
    targets: tuple[Tensor, ...]
    meta_inputs: Tensor
    meta_targets: Tensor
    extra_loss: ExtraLoss | None


def _buffer_copies(model: nn.Module) -> dict[str, Tensor]:
    """Clones of every buffer: the meta forwards update these, never the real BN running statistics."""
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


def _trainable(problem: MetaProblem, requires_grad: bool) -> dict[str, Tensor]:
    """Detached views of the parameters the optimiser steps, as fresh leaves when ``requires_grad``."""
    return {
        name: param.detach().requires_grad_(requires_grad)
        for name, param in problem.model.named_parameters()
        if name in problem.slots
    }


def _call(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor) -> Tensor:
    """The model's output with ``params`` and ``buffers`` substituted (others keep their own values)."""
    return functional_call(model, {**params, **buffers}, (inputs,))


def lookahead_scores(problem: MetaProblem) -> Tensor:
    """Scores by differentiating through one virtual SGD step (the reference's ``higher`` computation).

    Returns:
        Detached scores ``[N, S, ...]``, S = ``len(problem.targets)``.
    """
    buffers = _buffer_copies(problem.model)
    params = _trainable(problem, requires_grad=True)
    logits = _call(problem.model, params, buffers, problem.inputs)
    costs = torch.stack([problem.costs.elementwise(logits, target) for target in problem.targets], dim=1)
    eps = torch.zeros_like(costs, requires_grad=True)
    virtual_loss = (eps * costs).sum()
    if problem.extra_loss is not None:
        virtual_loss = virtual_loss + problem.extra_loss(logits)
    grads = torch.autograd.grad(virtual_loss, list(params.values()), create_graph=True, allow_unused=True)
    stepped = virtual_step(params, dict(zip(params, grads, strict=True)), problem.slots)
    meta_logits = _call(problem.model, stepped, buffers, problem.meta_inputs)
    (grad_eps,) = torch.autograd.grad(meta_loss(problem.costs, meta_logits, problem.meta_targets), eps)
    return -grad_eps


def look_ahead_parameters(
    problem: MetaProblem, params: dict[str, Tensor], buffers: dict[str, Tensor]
) -> dict[str, Tensor]:
    """θ̂: ``params`` after the virtual step at ε = 0, whose gradient is ∇extra(θ) (zero without extra).

    Returns:
        Detached look-ahead parameters by name.
    """
    if problem.extra_loss is None:
        grads: dict[str, Tensor | None] = {name: param.new_zeros(()) for name, param in params.items()}
    else:
        leaves = {name: param.detach().requires_grad_() for name, param in params.items()}
        extra = problem.extra_loss(_call(problem.model, leaves, buffers, problem.inputs))
        found = torch.autograd.grad(extra, list(leaves.values()), allow_unused=True)
        grads = {
            name: param.new_zeros(()) if grad is None else grad
            for (name, param), grad in zip(params.items(), found, strict=True)
        }
    with torch.no_grad():
        return virtual_step(params, grads, problem.slots)


def meta_gradient(
    problem: MetaProblem, look_ahead: dict[str, Tensor], buffers: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The meta gradient v = ∇L_meta(θ̂) by one ordinary backward (unreached parameters are left out).

    This is the single place where a distributed run would all-reduce (average) v across processes.
    """
    leaves = {name: param.detach().requires_grad_() for name, param in look_ahead.items()}
    meta_logits = _call(problem.model, leaves, buffers, problem.meta_inputs)
    loss = meta_loss(problem.costs, meta_logits, problem.meta_targets)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {name: grad for name, grad in zip(leaves, grads, strict=True) if grad is not None}


def cost_tangents(
    problem: MetaProblem, params: dict[str, Tensor], tangents: dict[str, Tensor], buffers: dict[str, Tensor]
) -> Tensor:
    """Directional derivatives of every per-element cost along ``tangents``, by one forward-mode JVP.

    Returns:
        ``[N, S, ...]``: for each label source, ``⟨∇ℓ_i(θ), u⟩`` for every element i.
    """
    with torch.no_grad(), forward_ad.dual_level(), warnings.catch_warnings():
        # torch's forward-mode BatchNorm rule is TorchScript-compiled on first use and warns about it.
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        duals = {
            name: forward_ad.make_dual(param, tangents[name]) if name in tangents else param
            for name, param in params.items()
        }
        logits, logits_tangent = forward_ad.unpack_dual(_call(problem.model, duals, buffers, problem.inputs))
        if logits_tangent is None:  # no trainable parameter reaches the output
            logits_tangent = torch.zeros_like(logits)
        per_source = [problem.costs.tangent(logits, logits_tangent, target) for target in problem.targets]
        return torch.stack(per_source, dim=1)


def forward_scores(problem: MetaProblem) -> Tensor:
    """Scores by the exact first-order form: θ̂, v = ∇L_meta(θ̂), then one JVP along u = k·v.

    Returns:
        Detached scores ``[N, S, ...]``, S = ``len(problem.targets)``.
    """
    buffers = _buffer_copies(problem.model)
    params = _trainable(problem, requires_grad=False)
    meta_grad = meta_gradient(problem, look_ahead_parameters(problem, params, buffers), buffers)
    # u = k·v, scaled in place: v itself is not needed again, and a copy would cost one model's worth.
    tangents = {name: grad.mul_(eps_sensitivity(problem.slots[name])) for name, grad in meta_grad.items()}
    return cost_tangents(problem, params, tangents, buffers)
