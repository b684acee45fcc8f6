"""Config sections shared by every task: the optimizer and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlbseg.config import check_range, choice


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer of every real step; the meta engine reads the same optimizer's settings and live state.

    Keys by optimizer: ``lr``, ``weight_decay`` and ``grad_clip_norm`` apply to all three; ``momentum`` and
    ``nesterov`` to ``sgd`` only; ``betas`` and ``eps`` to ``adam`` and ``adamw`` only (Kingma & Ba 2015).
    Weight decay λ is coupled for ``sgd`` and ``adam`` (λ·θ added to the gradient, an L2 term) and
    decoupled for ``adamw`` (θ ← θ·(1 − lr·λ) before the update; Loshchilov & Hutter 2019).
    """

    name: str = choice("sgd", ("sgd", "adam", "adamw"))
    lr: float = 0.005
    momentum: float = 0.9  # sgd
    weight_decay: float = 5e-4
    nesterov: bool = False  # sgd
    betas: tuple[float, ...] = (0.9, 0.999)  # adam, adamw: (β1, β2), the moments' decay rates
    eps: float = 1e-8  # adam, adamw: added to √v̂ in the update's denominator
    grad_clip_norm: float | None = 0.2  # global L2 norm of every real step; None = no clipping


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, stepped once per epoch."""

    name: str = choice("inverse", ("inverse", "cosine", "step", "constant"))
    decay_epochs: float = 20.0  # inverse: lr · d / (epoch + d), the reference's 20/(epoch + 20)
    milestones: tuple[int, ...] = ()  # step: multiply by gamma at each of these epochs
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear ramp over the first epochs (lr · (epoch + 1) / warmup_epochs)


def check_shared_sections(cfg: Any) -> None:
    """Range checks of the sections every task has: ``optim``, ``schedule`` and ``train``'s common keys.

    Raises:
        UserError: Naming the first key out of range.
    """
    optim, schedule, train = cfg.optim, cfg.schedule, cfg.train
    check_range("optim.lr", optim.lr, 0.0, strict="low")
    check_range("optim.momentum", optim.momentum, 0.0, 1.0, strict="high")
    check_range("optim.weight_decay", optim.weight_decay, 0.0)
    check_range("optim.grad_clip_norm", optim.grad_clip_norm, 0.0, strict="low")
    check_range("optim.eps", optim.eps, 0.0, strict="low")
    for beta in optim.betas:
        check_range("optim.betas", beta, 0.0, 1.0, strict="high")
    check_range("schedule.decay_epochs", schedule.decay_epochs, 0.0, strict="low")
    check_range("schedule.gamma", schedule.gamma, 0.0, strict="low")
    check_range("schedule.warmup_epochs", schedule.warmup_epochs, 0)
    for milestone in schedule.milestones:
        check_range("schedule.milestones", milestone, 1)
    for key in ("epochs", "batch_size", "steps_per_epoch", "log_every"):
        check_range(f"train.{key}", getattr(train, key), 1)
    check_range("train.seed", train.seed, 0)
