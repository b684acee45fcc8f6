"""Build the optimizer (SGD, Adam or AdamW) and its per-epoch learning-rate schedule from their configs."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch

from mlbseg.engine.config import OptimConfig, ScheduleConfig
from mlbseg.errors import UserError


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """``cfg.name`` over every parameter of ``model``, with weight decay on all (as the reference).

    ``sgd``: lr, momentum, weight decay (coupled), nesterov. ``adam``: lr, betas, eps and coupled weight
    decay (λθ added to the gradient; Kingma & Ba 2015). ``adamw``: the same with decoupled decay
    (θ·(1 − lr·λ); Loshchilov & Hutter 2019). foreach/fused stay at torch's defaults: the meta engine
    replicates the step's arithmetic, not its kernel, so any of them gives the same weights to rounding.

    Raises:
        UserError: ``optim.betas`` does not hold two numbers (their range is checked with the config).
    """
    if cfg.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    if len(cfg.betas) != 2:
        raise UserError(f"optim.betas: must be two numbers [beta1, beta2], got {list(cfg.betas)}")
    kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    beta1, beta2 = cfg.betas
    return kind(
        model.parameters(), lr=cfg.lr, betas=(beta1, beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def lr_factor(epoch: int, cfg: ScheduleConfig, epochs: int) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based).

    Example:
        >>> lr_factor(20, ScheduleConfig(name="inverse"), epochs=100)
        0.5
    """
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    if cfg.name == "inverse":
        return cfg.decay_epochs / (epoch + cfg.decay_epochs)
    if cfg.name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if cfg.name == "step":
        return cfg.gamma ** sum(epoch >= milestone for milestone in cfg.milestones)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`lr_factor`; call ``step()`` once at the end of every epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, cfg, epochs))


def apply_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    *,
    grad_clip_norm: float | None,
    average_gradients: Callable[[Iterable[torch.Tensor]], None] | None = None,
) -> None:
    """One real optimizer step: backward, (average gradients over processes), clip the global norm, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if average_gradients is not None:
        average_gradients(model.parameters())
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()


def autocast_to(dtype: torch.dtype | None, device_type: str) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device_type`` for a real forward; nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
