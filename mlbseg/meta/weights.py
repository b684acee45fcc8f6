"""``bootstrap_weights``: the per-element weights α (noisy label) and β (pseudo-label) of one step.

DESIGN.md §3 is the contract. The scores come from one of :data:`METHODS`, the weights from a normaliser
(:mod:`mlbseg.meta.normalize`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mlbseg.meta.costs import get_costs
from mlbseg.meta.lookahead import sgd_slots
from mlbseg.meta.normalize import get_normalizer
from mlbseg.meta.scores import ExtraLoss, MetaProblem, forward_scores, lookahead_scores

METHODS: dict[str, Callable[[MetaProblem], Tensor]] = {
    "forward": forward_scores,
    "lookahead": lookahead_scores,
}


def get_method(method: str) -> Callable[[MetaProblem], Tensor]:
    """The scoring method called ``method`` (``"forward"`` or ``"lookahead"``).

    Raises:
        ValueError: For an unknown name; the message lists the choices.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown meta-weighting method {method!r}; choose from {sorted(METHODS)}.")
    return METHODS[method]


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
) -> tuple[Tensor, Tensor | None]:
    """Meta-learned weights of the noisy-label and pseudo-label costs of one training batch.

    The weights are the normalised scores ``w̃ = −∂L_meta(θ̂(ε))/∂ε`` at ε = 0, where θ̂(ε) is one
    virtual step of ``optimizer`` (its lr, momentum, dampening, weight decay, nesterov and live momentum
    buffers) on the virtual loss ``Σ ε⊙costs (+ extra_loss)``, and ``L_meta`` the mean cost of the clean
    meta batch at θ̂. Nothing is changed: parameters, their ``.grad``, buffers (BatchNorm running
    statistics) and the optimiser state stay as they were.

    ``method="forward"`` needs forward-mode AD support in every operation of the model (all of torch's
    convolution, normalisation, pooling and activation layers have it); ``"lookahead"`` is the fallback.

    Args:
        model: The network, in train mode (the mode of the real step). Under DDP pass the wrapped module
            (``ddp.module``): the engine never fills ``.grad``, so no DDP hook fires.
        optimizer: The ``torch.optim.SGD`` that takes the real step (``maximize=False``).
        inputs: Training batch ``[N, ...]``.
        noisy_targets: Given labels: ``bce`` float 0/1 ``[N, 1, H, W]``; ``ce`` class indices ``[N]``.
        pseudo_targets: Pseudo-labels shaped like ``noisy_targets`` (detached), or ``None`` for L2RW
            (α only).
        meta_inputs: Clean meta batch ``[M, ...]``.
        meta_targets: Its labels, in the form of ``noisy_targets``.
        loss: ``"bce"`` (logits ``[N, 1, H, W]``, per-pixel BCE-with-logits) or ``"ce"`` (logits ``[N, C]``,
            per-sample cross-entropy).
        method: ``"forward"`` (exact first-order form: one backward and one forward-mode JVP) or
            ``"lookahead"`` (the reference's second-order differentiation through the virtual step).
        normalize: A normaliser name or reference alias (``org`` = ``clamp_sum``; ``softmax`` means
            ``softmax_over_batch`` for ``ce`` and ``softmax_per_sample`` for ``bce``).
        temperature: Divides the scores before a softmax or sigmoid normaliser.
        extra_loss: Optional ``logits -> scalar`` for non-weighted terms on the training logits (MLB-Seg's
            multi-view and EMA consistency); its gradient enters the virtual step and so shifts θ̂.

    Returns:
        ``(alpha, beta)``, detached, non-negative, each shaped like the per-element costs
        (``[N, 1, H, W]`` or ``[N]``). ``beta`` is ``None`` when ``pseudo_targets`` is. With ``org`` all
        entries of both together sum to 1 (all zero when no score is positive).

    Raises:
        ValueError: Unknown loss, method or normaliser (listing the choices), mismatched target shapes,
            or ``maximize=True``.
        TypeError: ``optimizer`` is not a ``torch.optim.SGD``.
    """
    costs = get_costs(loss)
    score = get_method(method)
    normalizer = get_normalizer(normalize, loss)
    targets = (noisy_targets,) if pseudo_targets is None else (noisy_targets, pseudo_targets)
    problem = MetaProblem(
        model, sgd_slots(model, optimizer), costs, inputs, targets, meta_inputs, meta_targets, extra_loss
    )
    weights = normalizer(score(problem), temperature=temperature)  # [N, S, ...]
    return weights[:, 0], None if pseudo_targets is None else weights[:, 1]
