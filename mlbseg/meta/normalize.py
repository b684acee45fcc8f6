"""Turn raw meta scores w̃ = −∂L_meta/∂ε into non-negative weights (docs/reference.md §1.5, §6.10).

Every normaliser is a pure function ``scores -> weights`` of the same shape. ``scores`` is batch-first with
the label source on dim 1: ``[N, S, ...]`` where S is 2 (noisy label, pseudo-label) or 1 (L2RW, α only),
e.g. ``[N, 2, 1, H, W]`` for segmentation and ``[N, 2]`` for classification.

Normalisers that couple entries across samples take a ``reduce_sum`` (and ``reduce_max``) callable that maps
this process's partial result to the global one. It is the identity on one process; under DDP it is the
place for an all-reduce, so the weights are normalised over the global batch.

Names and the reference code's aliases:

=====================  ==================================================================  ==============
name                   what it does                                                        reference name
=====================  ==================================================================  ==============
``clamp_sum``          clamp at 0, divide by the sum over the whole call (all α and β)     ``org``
``softmax_over_batch`` one softmax over all entries of the call, scores divided by T       cls ``softmax``
``softmax_per_sample`` one softmax over each sample's S×H×W entries, scores divided by T   seg ``softmax``
``sigmoid_sum``        sigmoid of scores / T, divided by the sum over the whole call       ``sigmoid``
=====================  ==================================================================  ==============

The alias ``softmax`` depends on the costs' layout: per-sample costs (classification ``ce``) resolve to
``softmax_over_batch``, per-pixel costs (segmentation: ``bce``, or ``ce`` on ``[N, C, H, W]`` logits) to
``softmax_per_sample``. The reference's segmentation ``softmax`` has no
temperature, which is ``temperature=1.0`` here; its un-normalised segmentation ``sigmoid`` and its
``hard_weight`` are not offered (docs/reference.md §7 item 7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]


def _local(partial: Tensor) -> Tensor:
    """Single-process reduction: the partial result already is the global one."""
    return partial


class Normalizer(Protocol):
    """A pure map from raw scores ``[N, S, ...]`` to weights of the same shape."""

    def __call__(
        self,
        scores: Tensor,
        *,
        temperature: float = 1.0,
        reduce_sum: Reduce = _local,
        reduce_max: Reduce = _local,
    ) -> Tensor:
        """Weights for ``scores``; ``temperature`` divides the scores where the normaliser uses it.

        ``reduce_sum`` and ``reduce_max`` map this process's partial sum and maximum to the global ones;
        every normaliser accepts both, and those that couple nothing across samples ignore them.
        """
        ...


def clamp_sum(
    scores: Tensor, *, temperature: float = 1.0, reduce_sum: Reduce = _local, reduce_max: Reduce = _local
) -> Tensor:
    """Drop negative scores; scale so that all weights of the call sum to 1 (reference ``org``).

    If no score is positive every weight is 0. The divisor is clamped at the dtype's smallest normal
    number instead of the reference's ``+ 1e-10``, so tiny score scales are not distorted and no host
    synchronisation is needed.

    Args:
        scores: Raw scores ``[N, S, ...]``.
        temperature: Accepted for a uniform signature; clamp-and-divide is scale-invariant, so it has no
            effect.
        reduce_sum: Maps this process's sum to the global sum (identity on one process).
        reduce_max: Unused (uniform signature).

    Returns:
        Weights shaped like ``scores``.

    Example:
        >>> import torch
        >>> clamp_sum(torch.tensor([[-1.0, 2.0], [3.0, -4.0]]))
        tensor([[0.0000, 0.4000],
                [0.6000, 0.0000]])
        >>> clamp_sum(torch.tensor([[-1.0, -2.0]]))
        tensor([[0., 0.]])
    """
    positive = scores.clamp_min(0)
    total = reduce_sum(positive.sum())
    return positive / total.clamp_min(torch.finfo(scores.dtype).tiny)


def softmax_over_batch(
    scores: Tensor, *, temperature: float = 1.0, reduce_sum: Reduce = _local, reduce_max: Reduce = _local
) -> Tensor:
    """One softmax of ``scores / temperature`` over every entry of the call (classification ``softmax``).

    Args:
        scores: Raw scores ``[N, S, ...]``.
        temperature: Divides the scores before the softmax (the reference's ISIC setting is 10).
        reduce_sum: Maps this process's sum of exponentials to the global sum.
        reduce_max: Maps this process's maximum to the global maximum (the shift that keeps exp finite).

    Returns:
        Weights shaped like ``scores``; together they sum to 1.

    Example:
        >>> import torch
        >>> softmax_over_batch(torch.tensor([[0.0, 0.0], [0.0, 2.0 * torch.log(torch.tensor(5.0))]]),
        ...                    temperature=2.0)
        tensor([[0.1250, 0.1250],
                [0.1250, 0.6250]])
    """
    logits = scores / temperature
    shifted = (logits - reduce_max(logits.detach().max())).exp()
    return shifted / reduce_sum(shifted.sum())


def softmax_per_sample(
    scores: Tensor, *, temperature: float = 1.0, reduce_sum: Reduce = _local, reduce_max: Reduce = _local
) -> Tensor:
    """A softmax of ``scores / temperature`` over each sample's entries (segmentation ``softmax``).

    Each sample's ``S×H×W`` weights (both maps of one view) sum to 1, so the call sums to N. Nothing is
    coupled across samples, so no cross-process reduction is needed.

    Args:
        scores: Raw scores ``[N, S, ...]``.
        temperature: Divides the scores before the softmax (the reference uses none: 1.0).
        reduce_sum: Unused: each sample is normalised on its own (uniform signature).
        reduce_max: Unused (uniform signature).

    Returns:
        Weights shaped like ``scores``.

    Example:
        >>> import torch
        >>> softmax_per_sample(torch.tensor([[0.0, 0.0], [0.0, torch.log(torch.tensor(3.0))]]))
        tensor([[0.5000, 0.5000],
                [0.2500, 0.7500]])
    """
    return (scores / temperature).flatten(1).softmax(dim=1).view_as(scores)


def sigmoid_sum(
    scores: Tensor, *, temperature: float = 1.0, reduce_sum: Reduce = _local, reduce_max: Reduce = _local
) -> Tensor:
    """Sigmoid of ``scores / temperature``, divided by the sum over the call (classification ``sigmoid``).

    The raw scores are tiny, so this is close to uniform weights 1/(number of entries).

    Args:
        scores: Raw scores ``[N, S, ...]``.
        temperature: Divides the scores before the sigmoid.
        reduce_sum: Maps this process's sum to the global sum.
        reduce_max: Unused (uniform signature).

    Returns:
        Weights shaped like ``scores``; together they sum to 1.

    Example:
        >>> import torch
        >>> sigmoid_sum(torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
        tensor([[0.2500, 0.2500],
                [0.2500, 0.2500]])
    """
    squashed = (scores / temperature).sigmoid()
    return squashed / reduce_sum(squashed.sum())


NORMALIZERS: dict[str, Normalizer] = {
    "clamp_sum": clamp_sum,
    "softmax_over_batch": softmax_over_batch,
    "softmax_per_sample": softmax_per_sample,
    "sigmoid_sum": sigmoid_sum,
}
ALIASES: dict[str, str] = {"org": "clamp_sum", "sigmoid": "sigmoid_sum"}
SOFTMAX_BY_LOSS: dict[str, str] = {"ce": "softmax_over_batch", "bce": "softmax_per_sample"}


def resolve_normalizer_name(name: str, loss: str | None = None, *, per_pixel: bool | None = None) -> str:
    """The canonical normaliser name for ``name``, resolving the reference's aliases.

    Args:
        name: A name from :data:`NORMALIZERS`, or an alias: ``org``, ``sigmoid``, or ``softmax`` (which
            needs ``per_pixel`` or ``loss``: per-pixel costs -> ``softmax_per_sample``, per-sample costs ->
            ``softmax_over_batch``).
        loss: The cost the weights apply to, ``"bce"`` or ``"ce"``; with ``per_pixel`` None it stands for its
            usual layout (``bce`` per pixel, ``ce`` per sample). Only ``softmax`` needs it.
        per_pixel: Whether the costs are per pixel (segmentation, also ``ce`` on ``[N, C, H, W]`` logits).

    Returns:
        A key of :data:`NORMALIZERS`.

    Raises:
        ValueError: For an unknown name (the message lists the choices), or ``softmax`` without a known loss.

    Example:
        >>> resolve_normalizer_name("org")
        'clamp_sum'
        >>> resolve_normalizer_name("softmax", loss="bce")
        'softmax_per_sample'
        >>> resolve_normalizer_name("softmax", loss="ce", per_pixel=True)
        'softmax_per_sample'
    """
    if name == "softmax" and per_pixel is not None:
        return SOFTMAX_BY_LOSS["bce" if per_pixel else "ce"]
    if name == "softmax":
        if loss not in SOFTMAX_BY_LOSS:
            raise ValueError(
                f"Weight normaliser alias 'softmax' depends on the loss; got loss={loss!r}, "
                f"expected one of {sorted(SOFTMAX_BY_LOSS)} (or name 'softmax_over_batch' / "
                "'softmax_per_sample' directly)."
            )
        return SOFTMAX_BY_LOSS[loss]
    canonical = ALIASES.get(name, name)
    if canonical not in NORMALIZERS:
        choices = sorted(NORMALIZERS) + sorted([*ALIASES, "softmax"])
        raise ValueError(f"Unknown weight normaliser {name!r}; choose from {choices}.")
    return canonical


def get_normalizer(name: str, loss: str | None = None, *, per_pixel: bool | None = None) -> Normalizer:
    """The normaliser called ``name`` (canonical name or reference alias, see the module docstring).

    Example:
        >>> import torch
        >>> get_normalizer("org")(torch.tensor([1.0, 3.0]))
        tensor([0.2500, 0.7500])
    """
    return NORMALIZERS[resolve_normalizer_name(name, loss, per_pixel=per_pixel)]
