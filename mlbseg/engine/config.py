"""Config sections shared by every task: the SGD optimizer and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass

from mlbseg.config import choice


@dataclass(frozen=True)
class OptimConfig:
    """SGD; the meta engine reads these same settings (and the live momentum buffers) for its virtual step."""

    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    grad_clip_norm: float | None = 0.2  # global L2 norm of every real step; None = no clipping


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, stepped once per epoch."""

    name: str = choice("inverse", ("inverse", "cosine", "step", "constant"))
    decay_epochs: float = 20.0  # inverse: lr · d / (epoch + d), the reference's 20/(epoch + 20)
    milestones: tuple[int, ...] = ()  # step: multiply by gamma at each of these epochs
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear ramp over the first epochs (lr · (epoch + 1) / warmup_epochs)
