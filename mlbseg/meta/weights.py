"""``bootstrap_weights``: the per-element weights α (noisy label) and β (pseudo-label) of one step.

docs/design.md §3 is the contract. The scores come from one of :data:`SCORERS` (chosen by ``method=``), the
weights from a normaliser (:mod:`mlbseg.meta.normalize`). The virtual step is the real optimiser's:
``torch.optim.SGD`` (:mod:`mlbseg.meta.lookahead`), ``torch.optim.Adam`` or ``AdamW``
(:mod:`mlbseg.meta.adam`, Kingma & Ba 2015; Loshchilov & Hutter 2019).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mlbseg.meta.costs import get_costs
from mlbseg.meta.lookahead import optimizer_slots
from mlbseg.meta.normalize import Reduce, get_normalizer
from mlbseg.meta.scores import (
    ExtraLoss,
    MetaProblem,
    average_across_processes,
    forward_scores,
    lookahead_scores,
)

SCORERS: dict[str, Callable[[MetaProblem], Tensor]] = {
    "forward": forward_scores,
    "lookahead": lookahead_scores,
}


def get_scorer(method: str) -> Callable[[MetaProblem], Tensor]:
    """The scoring method called ``method`` (``"forward"`` or ``"lookahead"``), from :data:`SCORERS`.

    Raises:
        ValueError: For an unknown name; the message lists the choices.
    """
    if method not in SCORERS:
        raise ValueError(f"Unknown meta-weighting method {method!r}; choose from {sorted(SCORERS)}.")
    return SCORERS[method]


def bootstrap_weights(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    noisy_targets: Tensor,
    pseudo_targets: Tensor | None,
    meta_inputs: Tensor,
    meta_targets: Tensor,
    *,
    loss: str = "bce",
    method: str = "forward",
    normalize: str = "org",
    temperature: float = 1.0,
    extra_loss: ExtraLoss | None = None,
    distributed: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Meta-learned weights of the noisy-label and pseudo-label costs of one training batch.

    The weights are the normalised scores ``w̃ = −∂L_meta(θ̂(ε))/∂ε`` at ε = 0, where θ̂(ε) is the update
    the real ``optimizer.step()`` would make on the virtual loss ``Σ ε⊙costs (+ extra_loss)``, from the
    optimiser's own settings and state (SGD: lr, momentum, dampening, weight decay, nesterov and the live
    momentum buffers; Adam/AdamW: lr, betas, eps, coupled/decoupled weight decay, step, exp_avg and
    exp_avg_sq), and ``L_meta`` the mean cost of the clean meta batch at θ̂. Nothing is changed:
    parameters, their ``.grad``, buffers (BatchNorm running statistics) and the optimiser state stay as
    they were.

    ``method="forward"`` needs forward-mode AD support in every operation of the model (all of torch's
    convolution, normalisation, pooling and activation layers have it); ``"lookahead"`` is the fallback.

    Args:
        model: The network, in train mode (the mode of the real step). Under DDP pass the wrapped module
            (``ddp.module``): the engine never fills ``.grad``, so no DDP hook fires.
        optimizer: The ``torch.optim.SGD``, ``Adam`` or ``AdamW`` that takes the real step
            (``maximize=False``; Adam ``amsgrad=False``). Adam's very first step has no second moment; the
            scores of coordinates that have none follow the fallback of :mod:`mlbseg.meta.adam` (at that
            first step without extra loss or coupled decay: the scores of SGD with the same lr).
        inputs: Training batch ``[N, ...]``.
        noisy_targets: Given labels: ``bce`` float 0/1 ``[N, 1, H, W]``; ``ce`` class indices ``[N]``
            (int64) or soft targets ``[N, C]`` (floating point, rows summing to 1), chosen by dtype and shape;
            per pixel for segmentation with K classes, indices ``[N, H, W]`` or soft ``[N, C, H, W]``.
            Soft targets give the cost ``−Σ_c t_c·log softmax(z)_c``, e.g. mixup's
            ``t = λ·onehot(y) + (1−λ)·onehot(y[π])`` for ``λ·CE(y) + (1−λ)·CE(y[π])``.
        pseudo_targets: Pseudo-labels (detached), in a form of ``noisy_targets`` of the same shape: ``bce``
            like ``noisy_targets``; ``ce`` class indices ``[N]`` / ``[N, H, W]`` (or soft ``[N, C]`` /
            ``[N, C, H, W]``). ``None`` for L2RW (α only).
        meta_inputs: Clean meta batch ``[M, ...]``.
        meta_targets: Its labels: ``bce`` float 0/1 ``[M, 1, H, W]``; ``ce`` class indices ``[M]`` (per pixel
            ``[M, H, W]``).
        loss: ``"bce"`` (logits ``[N, 1, H, W]``, per-pixel BCE-with-logits) or ``"ce"`` (logits ``[N, C]``,
            per-sample cross-entropy; logits ``[N, C, H, W]``, per-pixel softmax cross-entropy).
        method: ``"forward"`` (exact first-order form: one backward and one forward-mode JVP) or
            ``"lookahead"`` (the reference's second-order differentiation through the virtual step).
        normalize: A normaliser name or reference alias (``org`` = ``clamp_sum``; ``softmax`` means
            ``softmax_per_sample`` for per-pixel costs and ``softmax_over_batch`` for per-sample costs).
        temperature: Divides the scores before a softmax or sigmoid normaliser.
        extra_loss: Optional ``logits -> scalar`` for non-weighted terms on the training logits (MLB-Seg's
            multi-view and EMA consistency); its gradient enters the virtual step and so shifts θ̂.
        distributed: This process holds one part of a global batch (``torch.distributed`` initialised;
            every process of ``process_group`` calls with equally many training and meta elements and the
            same model, optimizer state and options). The meta gradient and the extra loss's gradient are
            averaged over the processes and the normaliser runs over the global batch, so the result is
            this process's part of what one process computes on the concatenated batches (exactly for a
            model without batch coupling: BatchNorm uses each process's own batch statistics).
        process_group: The group of ``distributed``; None for the default (world) group.

    Returns:
        ``(alpha, beta)``, detached, non-negative, each shaped like the per-element costs
        (``[N, 1, H, W]``, ``[N]``, or ``[N, H, W]`` for per-pixel ``ce``). ``beta`` is ``None`` when
        ``pseudo_targets`` is. With ``org`` all entries of both together sum to 1 (all zero when no score
        is positive); ``distributed``: all entries of all processes together.

    Raises:
        ValueError: Unknown loss, method or normaliser (listing the choices), mismatched target shapes,
            ``maximize=True``, or Adam's ``amsgrad=True``.
        TypeError: ``optimizer`` is not a ``torch.optim.SGD``, ``Adam`` or ``AdamW``.
    """
    costs = get_costs(loss)
    score = get_scorer(method)
    normalizer = get_normalizer(normalize, loss, per_pixel=_per_pixel(loss, noisy_targets))
    targets = (noisy_targets,) if pseudo_targets is None else (noisy_targets, pseudo_targets)
    problem = MetaProblem(
        model,
        optimizer_slots(model, optimizer),
        costs,
        inputs,
        targets,
        meta_inputs,
        meta_targets,
        extra_loss,
    )
    reductions: dict[str, Reduce] = {}
    if distributed:
        problem = problem._replace(average=functools.partial(average_across_processes, group=process_group))
        reductions = {
            "reduce_sum": functools.partial(_all_reduce, op=dist.ReduceOp.SUM, group=process_group),
            "reduce_max": functools.partial(_all_reduce, op=dist.ReduceOp.MAX, group=process_group),
        }
    weights = normalizer(score(problem), temperature=temperature, **reductions)  # [N, S, ...]
    return weights[:, 0], None if pseudo_targets is None else weights[:, 1]


def _per_pixel(loss: str, targets: Tensor) -> bool:
    """Whether the costs of ``targets`` are per pixel: ``bce``, or ``ce`` on [N, H, W] / [N, C, H, W]."""
    return loss == "bce" or targets.dim() > (2 if targets.is_floating_point() else 1)


def _all_reduce(partial: Tensor, op: dist.ReduceOp.RedOpType, group: dist.ProcessGroup | None) -> Tensor:
    """``partial`` combined over the processes of ``group`` with ``op`` (a new tensor; detached values)."""
    combined = partial.detach().clone()
    dist.all_reduce(combined, op=op, group=group)
    return combined
