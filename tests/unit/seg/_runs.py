"""Building segmentation runs for the tests as the engine builds them: the smoke config, the tiny model.

``build(config(prepared, ...), tmp_path)`` is what :func:`mlbseg.engine.trainer.train` does before its first
epoch (config check, seeding with deterministic kernels, the task's build on one CPU process), without
claiming a run folder; :func:`through_torch_save` round-trips a run's state as a checkpoint would.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from mlbseg.config import load_config
from mlbseg.engine.distributed import SINGLE
from mlbseg.engine.seeding import seed_everything
from mlbseg.engine.trainer import Runtime
from mlbseg.seg.config import SegConfig
from mlbseg.seg.trainer import TASK, SegmentationRun

from ._prepared import MODEL

SMOKE = Path(__file__).parents[3] / "mlbseg" / "configs" / "seg" / "smoke.yaml"
# --set items for the tiny model of _prepared.MODEL (0.35 M parameters, 16×16 slices)
SMALL_MODEL = [
    f"model.{key}={list(value) if isinstance(value, tuple) else value}" for key, value in MODEL.items()
]


def config(prepared: Path, *overrides: str) -> SegConfig:
    """The smoke config (MLB-Seg with consistency and EMA) on ``prepared`` with the tiny model, on CPU."""
    sets = [f"data.prepared={prepared}", "train.device=cpu", *SMALL_MODEL, *overrides]
    return load_config(SegConfig, SMOKE, sets)


def build(cfg: SegConfig, tmp_path: Path) -> SegmentationRun:
    """What the engine does: check, seed, build (deterministic kernels, one process, CPU)."""
    TASK.check_config(cfg)
    seed_everything(cfg.train.seed, True)
    return TASK.build(cfg, Runtime(torch.device("cpu"), SINGLE, None, tmp_path / "run"))


def through_torch_save(state: dict) -> dict:
    """``state`` after a save and a load, as a checkpoint stores it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)
