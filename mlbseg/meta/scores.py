"""Raw meta scores w̃_i = −∂L_meta(θ̂(ε))/∂ε_i at ε = 0, by two methods that give the same numbers.

``lookahead_scores`` is the reference formulation (a differentiable virtual step of the real optimiser,
second order; Ren et al., "Learning to Reweight Examples for Robust Deep Learning", ICML 2018, and L2B,
Zhou et al., CVPR 2024). ``forward_scores`` is its exact first-order form: ``w̃_i = ⟨∇ℓ_i(θ), u⟩`` with
``u_p = D_p ⊙ ∇_p L_meta(θ̂)``, where ``∂θ̂_p/∂ε_i = −D_p ⊙ ∇_p ℓ_i`` (the slot's ``sensitivity``: SGD's
scalar :func:`~mlbseg.meta.lookahead.eps_sensitivity`, Adam's diagonal
:func:`~mlbseg.meta.adam.adam_sensitivity` at the ε = 0 gradient), i.e. one ordinary backward of the meta
loss at θ̂ and one forward-mode JVP of the training logits along u.

All forwards run through ``torch.func.functional_call`` with detached parameter copies and *cloned*
buffers, so the model's parameters, ``.grad`` fields and BatchNorm running statistics are never touched,
and no DDP hook would fire.

Across processes (``MetaProblem.average``, see :func:`average_across_processes`) every process holds one
part of the global training and meta batches. Two gradients are averaged: the meta gradient v (so every
process scores its elements against the global meta batch's direction) and, when there is an extra loss,
its gradient at θ, which moves θ̂ (the virtual step of the global batch). Everything else is local: the
score of element i needs only its own cost's derivative along the common direction.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call

from mlbseg.meta.costs import CostFunctions, meta_loss
from mlbseg.meta.lookahead import Slot, virtual_step

ExtraLoss = Callable[[Tensor], Tensor]  # training logits -> scalar, never reweighted
Average = Callable[[list[Tensor]], None]  # replaces each tensor by its mean over the processes, in place


def average_across_processes(tensors: list[Tensor], group: dist.ProcessGroup | None = None) -> None:
    """Replace every tensor by its mean over the processes of ``group``, by one all-reduce of a flat buffer.

    Every process must pass tensors of the same shapes in the same order (the same model and loss give the
    same list). One flat buffer instead of one collective per tensor: latency is paid once.

    Args:
        tensors: Tensors of one dtype and device, modified in place.
        group: The process group; None for the default (world) group.
    """
    if not tensors:
        return
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])  # [Σ numel]
    dist.all_reduce(flat, group=group)  # SUM: gloo has no AVG
    flat.div_(dist.get_world_size(group))
    for tensor, part in zip(tensors, flat.split([tensor.numel() for tensor in tensors]), strict=True):
        tensor.copy_(part.view_as(tensor))


def _keep(tensors: list[Tensor]) -> None:
    """One process: every tensor already is the global mean."""


class MetaProblem(NamedTuple):
    """One call's inputs to a scoring method.

    Attributes:
        model: The network, in the mode of the real step (train).
        slots: The optimiser's settings and state per trainable parameter name (``optimizer_slots``).
        costs: Per-element costs and their tangents for the loss in use.
        inputs: Training batch ``[N, ...]``.
        targets: One target tensor per label source: ``(noisy,)`` or ``(noisy, pseudo)``.
        meta_inputs: Clean meta batch ``[M, ...]``.
        meta_targets: Its targets.
        extra_loss: Optional non-weighted term on the training logits; it shifts θ̂.
        average: Averages gradients over the processes that share the step (identity on one process).
    """

    model: nn.Module
    slots: dict[str, Slot]
    costs: CostFunctions
    inputs: Tensor
    targets: tuple[Tensor, ...]
    meta_inputs: Tensor
    meta_targets: Tensor
    extra_loss: ExtraLoss | None
    average: Average = _keep


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
    """Scores by differentiating through one virtual optimiser step (the reference's ``higher`` computation).

    The chain rule is taken in two legs, v = ∇L_meta(θ̂) and then v back through θ̂(ε) to ε, so that v
    can be averaged across processes in between; on one process this is the single backward of the
    reference. The extra loss's gradient does not depend on ε: it only moves θ̂ and is taken without graph.

    Returns:
        Detached scores ``[N, S, ...]``, S = ``len(problem.targets)``.
    """
    buffers = _buffer_copies(problem.model)
    params = _trainable(problem, requires_grad=True)
    logits = _call(problem.model, params, buffers, problem.inputs)
    costs = torch.stack([problem.costs.elementwise(logits, target) for target in problem.targets], dim=1)
    eps = torch.zeros_like(costs, requires_grad=True)
    grads = _virtual_gradients(problem, params, logits, (eps * costs).sum())
    stepped = virtual_step(params, grads, problem.slots)
    meta_logits = _call(problem.model, stepped, buffers, problem.meta_inputs)
    moved = [name for name in stepped if stepped[name].grad_fn is not None]
    meta_grads = torch.autograd.grad(
        meta_loss(problem.costs, meta_logits, problem.meta_targets),
        [stepped[name] for name in moved],
        allow_unused=True,
    )
    reached = [(name, grad) for name, grad in zip(moved, meta_grads, strict=True) if grad is not None]
    problem.average([grad for _, grad in reached])
    (grad_eps,) = torch.autograd.grad(
        [stepped[name] for name, _ in reached], eps, grad_outputs=[grad for _, grad in reached]
    )
    return -grad_eps


def _virtual_gradients(
    problem: MetaProblem, params: dict[str, Tensor], logits: Tensor, weighted: Tensor
) -> dict[str, Tensor | None]:
    """Gradients of the virtual loss ``weighted (+ extra)`` with the graph to ε (None where unused).

    The extra loss's gradient (detached, averaged across processes) is added to the weighted one.
    """
    leaves = list(params.values())
    found = torch.autograd.grad(weighted, leaves, create_graph=True, allow_unused=True)
    grads = dict(zip(params, found, strict=True))
    if problem.extra_loss is None:
        return grads
    extra = torch.autograd.grad(problem.extra_loss(logits), leaves, retain_graph=True, allow_unused=True)
    reached = {name: grad for name, grad in zip(params, extra, strict=True) if grad is not None}
    problem.average(list(reached.values()))
    for name, grad in reached.items():
        grads[name] = grad if grads[name] is None else grads[name] + grad
    return grads


def base_gradients(
    problem: MetaProblem, params: dict[str, Tensor], buffers: dict[str, Tensor]
) -> dict[str, Tensor]:
    """g0, the virtual loss's gradient at ε = 0: ∇extra(θ), or a 0-d zero without (or out of) its reach.

    Returns:
        Detached gradients by name (averaged across processes: ∇extra of the global batch).
    """
    if problem.extra_loss is None:
        return {name: param.new_zeros(()) for name, param in params.items()}
    leaves = {name: param.detach().requires_grad_() for name, param in params.items()}
    extra = problem.extra_loss(_call(problem.model, leaves, buffers, problem.inputs))
    found = torch.autograd.grad(extra, list(leaves.values()), allow_unused=True)
    problem.average([grad for grad in found if grad is not None])
    return {
        name: param.new_zeros(()) if grad is None else grad
        for (name, param), grad in zip(params.items(), found, strict=True)
    }


def meta_gradient(
    problem: MetaProblem, look_ahead: dict[str, Tensor], buffers: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The meta gradient v = ∇L_meta(θ̂) by one ordinary backward (unreached parameters are left out).

    Across processes v is averaged here (``problem.average``): with meta batches of equal size the mean of
    the processes' mean meta losses is the mean over the global meta batch, so v is its gradient.
    """
    leaves = {name: param.detach().requires_grad_() for name, param in look_ahead.items()}
    meta_logits = _call(problem.model, leaves, buffers, problem.meta_inputs)
    loss = meta_loss(problem.costs, meta_logits, problem.meta_targets)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    reached = {name: grad for name, grad in zip(leaves, grads, strict=True) if grad is not None}
    problem.average(list(reached.values()))
    return reached


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


def _sensitivities(
    problem: MetaProblem, params: dict[str, Tensor], base: dict[str, Tensor], *, eager: bool
) -> Callable[[str], float | Tensor]:
    """D by parameter name (the slots' ``sensitivity`` at g0 = ``base``), computed now or on each call.

    ``eager`` when g0 holds one model's worth (an extra loss): D replaces it before the meta backward, and
    SGD's D is a float. Otherwise g0 is 0-d, and Adam's D, as large as its parameter, is made only when its
    tangent is scaled, one parameter at a time.
    """
    if not eager:
        return lambda name: problem.slots[name].sensitivity(params[name], base[name])
    with torch.no_grad():
        ready = {name: problem.slots[name].sensitivity(params[name], grad) for name, grad in base.items()}
    return ready.__getitem__


def forward_scores(problem: MetaProblem) -> Tensor:
    """Scores by the exact first-order form: θ̂, v = ∇L_meta(θ̂), then one JVP along u = D ⊙ v.

    Returns:
        Detached scores ``[N, S, ...]``, S = ``len(problem.targets)``.
    """
    buffers = _buffer_copies(problem.model)
    params = _trainable(problem, requires_grad=False)
    base = base_gradients(problem, params, buffers)  # g0
    with torch.no_grad():
        look_ahead = virtual_step(params, base, problem.slots)  # θ̂ at ε = 0
    factor = _sensitivities(problem, params, base, eager=problem.extra_loss is not None)
    del base
    meta_grad = meta_gradient(problem, look_ahead, buffers)
    del look_ahead
    with torch.no_grad():
        # u = D ⊙ v, scaled in place: v itself is not needed again, and a copy would cost one model's worth.
        tangents = {name: grad.mul_(factor(name)) for name, grad in meta_grad.items()}
    del factor
    return cost_tangents(problem, params, tangents, buffers)
