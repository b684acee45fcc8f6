"""Per-element costs, the meta loss, and the costs' directional derivatives for ``bce`` and ``ce``.

``bce``: logits ``[N, 1, H, W]`` (any shape), float 0/1 targets of the same shape, one cost per pixel.
``ce``: logits ``[N, C]`` (or ``[N, C, ...]``), class-index targets ``[N]`` (or ``[N, ...]``), one cost per
sample (per pixel). The meta loss is the mean of the per-element costs.

The tangents use the closed-form derivatives of the costs with respect to the logits z,
BCE-with-logits ``∂ℓ/∂z = σ(z) − y`` and cross-entropy ``∂ℓ/∂z = softmax(z) − onehot(y)``, so a single
JVP of the logits gives the tangents of every cost map at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor


class CostFunctions(NamedTuple):
    """The two things the engine needs from a loss.

    Attributes:
        elementwise: ``(logits, targets) -> costs``, unreduced, shaped like the targets.
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


def _check_ce(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() < 2 or targets.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"loss='ce' needs logits [N, C, ...] and class-index targets [N, ...]; got logits "
            f"{tuple(logits.shape)} and targets {tuple(targets.shape)}."
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
    """Per-sample cross-entropy ``[N]`` of logits ``[N, C]`` and class indices ``[N]``."""
    _check_ce(logits, targets)
    return F.cross_entropy(logits, targets, reduction="none")


def ce_tangent(logits: Tensor, logits_tangent: Tensor, targets: Tensor) -> Tensor:
    """Directional derivative ``⟨softmax(z) − onehot(y), dz⟩`` of the per-sample CE, shaped ``[N]``."""
    _check_ce(logits, targets)
    expected = (logits.softmax(dim=1) * logits_tangent).sum(dim=1)
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
    """Mean per-element cost of the clean meta batch: a scalar."""
    return costs.elementwise(logits, targets).mean()
