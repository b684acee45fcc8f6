"""``mlbseg evaluate``: per-volume Dice and HD95 of a trained run on the test cases (docs/evaluation.md §1).

The test cases are touched only here, once, with the checkpoint the user names (``final`` by default): no
model selection on test data. Results go to ``RUN_DIR/summary.json`` (docs/evaluation.md §2): per case
and mean ± std.

``summary.json`` is derived, like nnU-Net's summary: every evaluation writes it afresh (atomically), so
evaluating the run again, another checkpoint (``last``) or another prepared dataset replaces it, and
``summary.json`` names the checkpoint and data it holds. ``mlbseg repeat`` and ``mlbseg demo`` count a run as
finished only with a summary of ``final``; any other they replace by evaluating ``final`` again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from mlbseg.engine.atomic import write_text_atomic
from mlbseg.engine.checkpoint import load_run_checkpoint
from mlbseg.engine.seeding import resolve_device
from mlbseg.errors import UserError
from mlbseg.evaluation.metrics import evaluate_volume, summarize
from mlbseg.seg.config import SegConfig
from mlbseg.seg.data import load_volumes
from mlbseg.seg.inference import predict_probabilities
from mlbseg.seg.model import build_model


def load_trained_model(
    run_dir: Path, checkpoint: str, device: torch.device
) -> tuple[SegConfig, torch.nn.Module, dict[str, Any]]:
    """The run's config and its model (eval mode) with the weights of ``checkpoint`` (final|last|path)."""
    cfg, state = load_run_checkpoint(SegConfig, run_dir, checkpoint, map_location=device)
    model = build_model(dataclasses.replace(cfg.model, encoder_weights=None)).to(device)  # weights: below
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"{run_dir} ({checkpoint}): weights do not fit the run's model config") from None
    return cfg, model.eval(), state


def evaluate_run(
    run_dir: Path, checkpoint: str = "final", prepared: Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Score the test cases and write (or replace) ``summary.json``; returns its contents."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    torch_device = resolve_device(device)
    cfg, model, state = load_trained_model(run_dir, checkpoint, torch_device)

    prepared = prepared or Path(cfg.data.prepared)
    per_case = {}
    for volume in load_volumes(prepared, "test", torch_device):
        probs = predict_probabilities(model, volume.images).cpu()
        per_case[volume.case_id] = evaluate_volume(probs, volume.mask_original, volume.spacing)
    summary = {
        "run": str(run_dir),
        "checkpoint": checkpoint,
        "epoch": state.get("epoch"),
        "method": cfg.method.name,
        "noise": cfg.data.noise,
        "seed": cfg.train.seed,
        "prepared": str(prepared),
        "cases": {case: {k: _json_number(v) for k, v in m.items()} for case, m in per_case.items()},
        "mean": summarize(per_case),
    }
    _write_json(summary, run_dir / "summary.json")
    return summary


def _json_number(value: float) -> float | None:
    """JSON has no inf/NaN: a failed case (empty prediction, HD95 = inf) is written as null."""
    return value if math.isfinite(value) else None


def _write_json(data: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
