"""Seeds, devices and deterministic kernels: what makes a run reproducible and resumable."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from mlbseg.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable device is a user error naming ``train.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} requested but CUDA is not available; use auto or cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; optionally force deterministic kernels (needed for exact resume)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private generator on ``device``, so the run's randomness never touches the global RNG."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the GPU supports it; full precision on CPU and older GPUs (no loss scaling)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
