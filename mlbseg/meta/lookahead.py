"""The virtual step: look-ahead parameters θ̂ from the real optimiser's settings and live state.

:func:`optimizer_slots` reads one slot per trainable parameter from a ``torch.optim.SGD`` (here) or a
``torch.optim.Adam``/``AdamW`` (:mod:`mlbseg.meta.adam`); every slot replicates its optimiser's update out of
place (``update``, differentiable: the ``lookahead`` method) and gives ``sensitivity``, the factor D with
``∂p'/∂ε_i = −D·∇_p ℓ_i`` at ε = 0 (the ``forward`` method): a scalar for SGD, a tensor for Adam.

For one parameter p with gradient g, ``torch.optim.SGD`` (maximize=False) computes::

    d = g + λ·p                                   (weight decay λ)
    b' = d                 if p has no buffer yet  (momentum m ≠ 0)
    b' = m·b + (1 − τ)·d   otherwise               (dampening τ)
    d = d + m·b' if nesterov else b'               (momentum m ≠ 0)
    p' = p − η·d

:func:`sgd_update` replicates this out of place and leaves the optimiser's buffers alone. The virtual loss
is ``Σ_i ε_i·ℓ_i (+ extra)``, so ε_i enters only through ``g``, linearly, and ``∂p'/∂ε_i = −k·∇_p ℓ_i``
with the scalar :func:`eps_sensitivity` k: ``η`` without momentum; ``η·c`` with momentum, ``η·(1 + m·c)``
with nesterov, where ``c = 1`` on the first step (no buffer: b' = d) and ``c = 1 − τ`` afterwards. With
momentum 0.9, no dampening and a buffer, k = η, the factor of docs/reference.md §1.4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlbseg.meta.adam import AdamSlot, adam_slot


@dataclass(frozen=True)
class SGDSlot:
    """One parameter's view of the real optimiser: its group's settings and its live momentum buffer."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    buffer: Tensor | None

    def update(self, param: Tensor, grad: Tensor) -> Tensor:
        """The stepped parameter (see :func:`sgd_update`)."""
        return sgd_update(param, grad, self)

    def sensitivity(self, param: Tensor, grad: Tensor) -> float:
        """The scalar k of ``∂p'/∂ε_i = −k·∇ℓ_i``; SGD is linear in g: ``param``, ``grad`` do not enter."""
        return eps_sensitivity(self)


Slot = SGDSlot | AdamSlot


def sgd_slot(group: dict[str, Any], state: dict[str, Any]) -> SGDSlot:
    """The :class:`SGDSlot` of a parameter in param group ``group`` with optimiser state ``state``."""
    return SGDSlot(
        lr=float(group["lr"]),
        momentum=float(group["momentum"]),
        dampening=float(group["dampening"]),
        weight_decay=float(group["weight_decay"]),
        nesterov=bool(group["nesterov"]),
        buffer=state.get("momentum_buffer"),
    )


def _slot_reader(optimizer: torch.optim.Optimizer) -> Callable[[dict[str, Any], dict[str, Any]], Slot]:
    """How to read one parameter's slot from ``optimizer`` (a group and a state).

    Raises:
        TypeError: If ``optimizer`` is neither SGD nor Adam/AdamW.
    """
    # NOTE: torch.optim.AdamW subclasses Adam and sets the groups' decoupled_weight_decay=True.
    if isinstance(optimizer, torch.optim.Adam):
        return adam_slot
    if isinstance(optimizer, torch.optim.SGD):
        return sgd_slot
    raise TypeError(
        "The meta-weighting engine replicates torch.optim.SGD, torch.optim.Adam and torch.optim.AdamW; "
        f"got {type(optimizer).__name__}. Use one of them for the model being meta-weighted."
    )


def optimizer_slots(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Slot]:
    """Map the name of every parameter that the optimiser steps to its slot (settings and live state).

    Parameters not in the optimiser, or with ``requires_grad=False``, are left out: the real step never
    moves them, so neither does the virtual one.

    Raises:
        TypeError: If ``optimizer`` is not a ``torch.optim.SGD``, ``Adam`` or ``AdamW``.
        ValueError: If a param group has ``maximize=True`` (or, for Adam, ``amsgrad=True``).
    """
    read = _slot_reader(optimizer)
    slot_of: dict[int, Slot] = {}
    for group in optimizer.param_groups:
        if group.get("maximize", False):
            raise ValueError(
                f"The meta-weighting engine needs {type(optimizer).__name__} with maximize=False "
                "(it minimises costs); got maximize=True."
            )
        for param in group["params"]:
            slot_of[id(param)] = read(group, optimizer.state.get(param, {}))
    return {
        name: slot_of[id(param)]
        for name, param in model.named_parameters()
        if param.requires_grad and id(param) in slot_of
    }


def sgd_update(param: Tensor, grad: Tensor, slot: SGDSlot) -> Tensor:
    """One out-of-place ``torch.optim.SGD`` update of ``param`` with ``grad`` (differentiable in both).

    Uses the same operations as ``torch.optim.SGD``'s single-tensor path, so on one device the result
    equals the real step bit for bit. ``grad`` may be a 0-d zero tensor (it broadcasts) where the virtual
    loss has no gradient but weight decay and momentum still move the parameter.
    """
    direction = grad if slot.weight_decay == 0 else torch.add(grad, param, alpha=slot.weight_decay)
    if slot.momentum != 0:
        new_buffer = direction  # the first step initialises the buffer with the gradient
        if slot.buffer is not None:
            new_buffer = (slot.buffer * slot.momentum).add(direction, alpha=1 - slot.dampening)
        direction = direction.add(new_buffer, alpha=slot.momentum) if slot.nesterov else new_buffer
    return param.add(direction, alpha=-slot.lr)


def eps_sensitivity(slot: SGDSlot) -> float:
    """The scalar k with ``∂p'/∂ε_i = −k·∇_p ℓ_i`` for one SGD update (see the module docstring)."""
    if slot.momentum == 0:
        return slot.lr
    through_buffer = 1.0 if slot.buffer is None else 1.0 - slot.dampening
    return slot.lr * (1.0 + slot.momentum * through_buffer if slot.nesterov else through_buffer)


def virtual_step(
    params: dict[str, Tensor], grads: dict[str, Tensor | None], slots: dict[str, Slot]
) -> dict[str, Tensor]:
    """Look-ahead parameters: ``params`` after one update of the real optimiser with ``grads``.

    A parameter whose gradient is ``None`` (not reached by the loss) is not moved, as in the real step.

    Args:
        params: Current parameters by name (the keys of ``slots``).
        grads: Their gradients of the virtual loss, ``None`` where unused.
        slots: The optimiser's settings and state per parameter, from :func:`optimizer_slots`.

    Returns:
        The stepped parameters by name.
    """
    return {
        name: param if grads[name] is None else slots[name].update(param, grads[name])
        for name, param in params.items()
    }
