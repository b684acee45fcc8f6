"""The Python API, for notebooks and scripts: the command-line path as functions, with the same checks.

Each function is the command of the same name (docs/design.md §1) and writes the same files, so a
notebook and the command line can take turns on one folder::

    import mlbseg.api as mlb

    mlb.synth("raw", cases=6, zones=True, rater="rater2")        # or your nnU-Net v2 dataset
    manifest = mlb.prepare("raw", "prepared", size=32, channels=(0, 1), noisy_labels=["rater2"])
    run = mlb.train("smoke", {"data.prepared": "prepared", "data.noise": "rater2"}, run_dir="runs/r2")
    summary = mlb.evaluate(run)                                  # summary.json, per class
    labels = mlb.predict(run, volume)                            # volume [C, Z, Y, X] -> labels [Z, Y, X]

Mistakes raise :class:`mlbseg.errors.UserError` with the one-line message the command prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlbseg.config import load_config as _load_config
from mlbseg.config import resolve_config_path
from mlbseg.errors import UserError
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.synth import write_phantoms
from mlbseg.seg import trainer
from mlbseg.seg.config import SegConfig, with_absolute_paths
from mlbseg.seg.evaluate import evaluate_run
from mlbseg.seg.predict import load_predictor

__all__ = ["UserError", "evaluate", "load_config", "predict", "prepare", "synth", "train"]


def synth(out: str | Path, *, cases: int = 50, **options: Any) -> list[str]:
    """``mlbseg synth``: phantoms into ``out``; returns the case ids.

    Options as :func:`mlbseg.prep.synth.write_phantoms`: ``seed``, ``in_plane``, ``slices``, ``fov``,
    ``zones`` (two structures, nnU-Net v2 layout), ``rater`` (a folder for a second rater's masks),
    ``jobs``, ``overwrite``.
    """
    return write_phantoms(out, cases, **options)


def prepare(raw: str | Path, prepared: str | Path, **options: Any) -> dict[str, Any]:
    """``mlbseg prepare``: raw volumes into a prepared dataset; returns its manifest.

    Options as :func:`mlbseg.prep.prepare.prepare_dataset` (``size``, ``split``, ``seed``, ``channels``,
    ``labels``, ``noisy_labels``, ``meta``, ``test``, ``jobs``, ``overwrite`` …).
    """
    return prepare_dataset(raw, prepared, **options)


def load_config(config: str | Path, overrides: Mapping[str, Any] | Iterable[str] = ()) -> SegConfig:
    """A segmentation config from a YAML path or a shipped name, with overrides, paths made absolute.

    Args:
        config: A file or a shipped config's name (``mlbseg configs``), e.g. ``promise12_mlbseg``.
        overrides: ``{"train.epochs": 5}`` or ``["train.epochs=5"]``, as ``--set``.
    """
    items = (
        [f"{key}={value}" for key, value in overrides.items()]
        if isinstance(overrides, Mapping)
        else list(overrides)
    )
    return with_absolute_paths(_load_config(SegConfig, resolve_config_path(config, "seg"), items))


def train(
    config: str | Path | SegConfig,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """``mlbseg train``: one run (or its continuation with ``resume``); returns the run folder."""
    cfg = config if isinstance(config, SegConfig) else load_config(config, overrides)
    return trainer.train(
        cfg, Path(run_dir) if run_dir is not None else None, resume=resume, overwrite=overwrite
    )


def evaluate(run_dir: str | Path, *, checkpoint: str = "final", device: str = "auto") -> dict[str, Any]:
    """``mlbseg evaluate``: score the test cases, write ``summary.json`` and return it."""
    return evaluate_run(Path(run_dir), checkpoint, device=device)


def predict(
    run_dir: str | Path, volume: np.ndarray, *, checkpoint: str = "final", device: str = "auto"
) -> np.ndarray:
    """Segment one volume with a trained run: labels ``[Z, Y, X]`` uint8 (0..K-1) at the volume's size.

    Args:
        run_dir: A run folder (its checkpoint holds the preprocessing; no prepared folder needed).
        volume: ``[Z, Y, X]`` for a one-channel model, ``[C, Z, Y, X]`` with the model's channels in order.
        checkpoint: ``final``, ``last`` or a checkpoint path.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    predictor = load_predictor(Path(run_dir), checkpoint, None, device)
    channels = np.asarray(volume)
    channels = channels[None] if channels.ndim == 3 else channels
    if channels.ndim != 4 or len(channels) != len(predictor.channels):
        raise UserError(
            f"volume of shape {np.shape(volume)}: the model takes {len(predictor.channels)} channel(s), "
            "as [Z, Y, X] (one) or [C, Z, Y, X]"
        )
    return predictor.mask(channels)
