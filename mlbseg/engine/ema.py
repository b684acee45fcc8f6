"""Exponential-moving-average teacher (MLB-Seg's mean teacher), with the reference's defects fixed.

Differences from the reference (docs/reference.md §6.8, §7 item 45): the step counter is global, not reset
every epoch; buffers (BatchNorm statistics) are copied from the student; the teacher is checkpointed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class EMATeacher:
    """A frozen copy of a model updated as θ_t ← a·θ_t + (1 − a)·θ_s with a = min(1 − 1/(n + 1), decay)."""

    def __init__(self, student: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(student)
        self.model.requires_grad_(False)
        self.decay = decay
        self.num_updates = 0

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """Move the teacher toward ``student`` (call after each optimizer step)."""
        self.num_updates += 1
        keep = min(1.0 - 1.0 / (self.num_updates + 1), self.decay)
        teacher_params = list(self.model.parameters())
        student_params = [param.detach() for param in student.parameters()]
        torch._foreach_mul_(teacher_params, keep)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - keep)
        for teacher_buffer, student_buffer in zip(self.model.buffers(), student.buffers(), strict=True):
            teacher_buffer.copy_(student_buffer)

    def state_dict(self) -> dict[str, Any]:
        """Weights and the update counter."""
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_state_dict(state["model"])
        self.num_updates = state["num_updates"]
