"""Per-element costs, the meta loss, and the costs' directional derivatives for ``bce`` and ``ce``.

``bce``: logits ``[N, 1, H, W]`` (any shape), float 0/1 targets of the same shape, one cost per pixel.
``ce``: logits ``[N, C]`` (or ``[N, C, ...]``) and, one cost per sample (per pixel), either class-index
targets ``[N]`` (or ``[N, ...]``, integer) or soft targets ``[N, C]`` (or ``[N, C, ...]``, floating point;
each row a probability vector, e.g. mixup's ``λ·onehot(y) + (1−λ)·onehot(y[π])``), whose cost is
``−Σ_c t_c·log softmax(z)_c``. The form is chosen by the targets' dtype and shape. The meta loss is the
mean of the per-element costs.

The tangents use the closed-form derivatives of the costs with respect to the logits z,
BCE-with-logits ``∂ℓ/∂z = σ(z) − y`` and cross-entropy ``∂ℓ/∂z = softmax(z) − onehot(y)`` (soft:
``(Σ_c t_c)·softmax(z) − t``, i.e. ``softmax(z) − t`` for rows summing to 1), so a single JVP of the logits
gives the tangents of every cost map at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor


class CostFunctions(NamedTuple):
    """The two things the engine needs from a loss.

    Attributes:
        elementwise: ``(logits, targets) -> costs``, unreduced, one per element: shaped like the targets
            (``bce``, ``ce`` class indices) or like the logits without the class dimension (``ce`` soft).
        tangent: ``(logits, logits_tangent, targets) -> d costs`` along the logits' tangent, same shape.
    """

    elementwise: Callable[[Tensor, Tensor], Tensor]
    tangent: Callable[[Tensor, Tensor, Tensor], Tensor]


def _check_bce(logits: Tensor, targets: Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(
            f"loss='bce' needs targets shaped like the logits {tuple(logits.shape)} (e.g. [N, 1, H, W]); "
            f"got {tuple(targets.shape)}."
        )


def _is_soft_ce(logits: Tensor, targets: Tensor) -> bool:
    """Whether ``targets`` are soft ``[N, C, ...]`` (True) or class indices ``[N, ...]`` (False).

    Raises:
        ValueError: Targets in neither form; the message names both.
    """
    if logits.dim() >= 2:
        if targets.is_floating_point() and targets.shape == logits.shape:
            return True
        if not targets.is_floating_point() and targets.shape == logits.shape[:1] + logits.shape[2:]:
            return False
    raise ValueError(
        f"loss='ce' needs logits [N, C, ...] and class-index targets [N, ...] (integer) or soft targets "
        f"[N, C, ...] (floating point, rows summing to 1); got logits {tuple(logits.shape)} and "
        f"{targets.dtype} targets {tuple(targets.shape)}."
    )


def bce_costs(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-element BCE-with-logits ``[N, 1, H, W]`` of logits and 0/1 targets of that shape."""
    _check_bce(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")


def bce_tangent(logits: Tensor, logits_tangent: Tensor, targets: Tensor) -> Tensor:
    """Directional derivative ``(σ(z) − y)·dz`` of the per-element BCE, shaped like the logits."""
    _check_bce(logits, targets)
    return (logits.sigmoid() - targets.to(logits.dtype)) * logits_tangent


def ce_costs(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of logits ``[N, C, ...]``, shaped ``[N, ...]``.

    Args:
        logits: ``[N, C]`` (or ``[N, C, ...]`` for per-pixel costs).
        targets: Class indices ``[N]`` (``[N, ...]``, integer), or soft targets ``[N, C]`` (``[N, C, ...]``,
            floating point, each row a probability vector t): then the cost is ``−Σ_c t_c·log softmax(z)_c``,
            which for ``t = λ·onehot(y) + (1−λ)·onehot(y')`` is ``λ·CE(z, y) + (1−λ)·CE(z, y')``.

    Returns:
        The unreduced costs ``[N]`` (``[N, ...]``).

    Example:
        >>> import torch
        >>> ce_costs(torch.zeros(2, 4), torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
        tensor([1.3863, 1.3863])
    """
    if _is_soft_ce(logits, targets):
        return -(targets.to(logits.dtype) * logits.log_softmax(dim=1)).sum(dim=1)
    return F.cross_entropy(logits, targets, reduction="none")


def ce_tangent(logits: Tensor, logits_tangent: Tensor, targets: Tensor) -> Tensor:
    """Directional derivative of the per-sample CE along ``logits_tangent`` dz, shaped ``[N]`` (``[N, ...]``).

    Class indices y: ``⟨softmax(z) − onehot(y), dz⟩``. Soft targets t ``[N, C, ...]``:
    ``⟨(Σ_c t_c)·softmax(z) − t, dz⟩``, which is ``⟨softmax(z) − t, dz⟩`` for rows summing to 1 (the exact
    derivative of :func:`ce_costs` for any rows, so rounding in Σ t does not matter).
    """
    expected = (logits.softmax(dim=1) * logits_tangent).sum(dim=1)
    if _is_soft_ce(logits, targets):
        soft = targets.to(logits.dtype)
        return expected * soft.sum(dim=1) - (soft * logits_tangent).sum(dim=1)
    return expected - logits_tangent.gather(1, targets.unsqueeze(1)).squeeze(1)


COSTS: dict[str, CostFunctions] = {
    "bce": CostFunctions(bce_costs, bce_tangent),
    "ce": CostFunctions(ce_costs, ce_tangent),
}


def get_costs(loss: str) -> CostFunctions:
    """The cost functions of ``loss`` (``"bce"`` or ``"ce"``).

    Raises:
        ValueError: For an unknown name; the message lists the choices.

    Example:
        >>> import torch
        >>> get_costs("ce").elementwise(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor([1.3863, 1.3863])
    """
    if loss not in COSTS:
        raise ValueError(f"Unknown loss {loss!r}; choose from {sorted(COSTS)}.")
    return COSTS[loss]


def meta_loss(costs: CostFunctions, logits: Tensor, targets: Tensor) -> Tensor:
    """Mean per-element cost of the clean meta batch: a scalar (``ce``: class indices, as a rule)."""
    return costs.elementwise(logits, targets).mean()
