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
from mlbseg.prep.manifest import label_names, load_manifest
from mlbseg.seg.config import SegConfig
from mlbseg.seg.data import data_record, load_volumes
from mlbseg.seg.inference import predict_probabilities
from mlbseg.seg.model import LogitMean, build_model, output_channels


def model_data(cfg: SegConfig, state: dict[str, Any], prepared: Path | None = None) -> dict[str, Any]:
    """The data record of a trained model: slice size, normalisation, channels, labels, label mode.

    It is the checkpoint's ``data`` entry (``data_record(manifest)``, written by training); a checkpoint
    written before that entry existed falls back to the manifest of ``prepared`` (default: the run's
    ``data.prepared``).

    Raises:
        UserError: No ``data`` entry and no readable prepared manifest (the message says why it is needed).
    """
    if isinstance(state.get("data"), dict):
        return state["data"]
    folder = prepared or Path(cfg.data.prepared)
    try:
        return data_record(load_manifest(folder))
    except UserError as err:
        raise UserError(
            f"{err} (the run's slice size and normalisation come from it; see --prepared)"
        ) from None


def load_trained_model(
    run_dir: Path, checkpoint: str, device: torch.device, prepared: Path | None = None
) -> tuple[SegConfig, torch.nn.Module, dict[str, Any]]:
    """The run's config and its model (eval mode) with the weights of ``checkpoint`` (final|last|path).

    The network takes ``len(channels)`` input channels and gives ``output_channels(K)`` logit maps, both
    from the model's data record (:func:`model_data`, which needs ``prepared`` only for checkpoints without
    one). For a method that evaluates the mean of its networks (``dast``) the model is their
    :class:`~mlbseg.seg.model.LogitMean`. The returned checkpoint state always holds the record under
    ``data``.
    """
    cfg, state = load_run_checkpoint(SegConfig, run_dir, checkpoint, map_location=device)
    state["data"] = record = model_data(cfg, state, prepared)
    networks = [
        build_model(
            dataclasses.replace(cfg.model, encoder_weights=None),  # weights: below
            in_channels=len(record["channels"]),
            classes=output_channels(len(record["labels"])),
        )
        for _ in range(cfg.method.evaluated_networks)
    ]
    model = (networks[0] if len(networks) == 1 else LogitMean(networks)).to(device)
    try:
        model.load_state_dict(evaluated_weights(state, len(networks)))
    except RuntimeError:
        raise UserError(f"{run_dir} ({checkpoint}): weights do not fit the run's model config") from None
    return cfg, model.eval(), state


def evaluated_weights(state: dict[str, Any], networks: int) -> dict[str, torch.Tensor]:
    """The evaluated model's state dict from a checkpoint: ``model``, or the ``networks`` networks' as one.

    ``final.pt`` holds the evaluated model itself; ``last.pt`` the first network's ``model`` and the peers'
    (``peers``), which a :class:`~mlbseg.seg.model.LogitMean` of ``networks`` takes as ``networks.<i>.``.
    """
    if networks == 1 or "peers" not in state:
        return state["model"]
    weights = [state["model"], *(peer["model"] for peer in state["peers"])][:networks]
    return {
        f"networks.{index}.{key}": value for index, net in enumerate(weights) for key, value in net.items()
    }


def _check_same_data(record: dict[str, Any], manifest: dict[str, Any], prepared: Path) -> None:
    """UserError unless ``prepared`` has the channels and labels the model was trained on."""
    for key in ("channels", "labels"):
        if key in record and manifest.get(key) != record[key]:
            raise UserError(
                f"{prepared / 'manifest.json'}: {key} {manifest.get(key)!r} differ from the model's "
                f"{record[key]!r}; evaluate on data prepared like the run's training data"
            )


def evaluate_run(
    run_dir: Path, checkpoint: str = "final", prepared: Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Score the test cases and write (or replace) ``summary.json``; returns its contents.

    Binary data: per case ``dice`` and ``hd95``. K > 2 labels: the same two keys hold the mean over the
    foreground classes, and ``classes`` {label name: {dice, hd95}} the classes (docs/evaluation.md §2).
    """
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    torch_device = resolve_device(device)
    cfg, model, state = load_trained_model(run_dir, checkpoint, torch_device, prepared)

    prepared = prepared or Path(cfg.data.prepared)
    manifest = load_manifest(prepared)
    _check_same_data(state["data"], manifest, prepared)
    class_names = label_names(manifest)[1:]
    per_case = {}
    for volume in load_volumes(prepared, "test", torch_device):
        probs = predict_probabilities(model, volume.images).cpu()  # [S, C_out, h, w]
        per_case[volume.case_id] = evaluate_volume(probs, volume.mask_original, volume.spacing, class_names)
    summary = {
        "run": str(run_dir),
        "checkpoint": checkpoint,
        "epoch": state.get("epoch"),
        "method": cfg.method.name,
        "noise": cfg.data.noise,
        "seed": cfg.train.seed,
        "prepared": str(prepared),
        "cases": {case: _json_numbers(scores) for case, scores in per_case.items()},
        "mean": summarize(per_case),
    }
    _write_json(summary, run_dir / "summary.json")
    return summary


def _json_numbers(scores: dict[str, Any]) -> dict[str, Any]:
    """A case's scores for JSON: non-finite numbers (a failed case's HD95 = inf) as null, classes too."""
    return {k: _json_numbers(v) if isinstance(v, dict) else _json_number(v) for k, v in scores.items()}


def _json_number(value: float) -> float | None:
    """JSON has no inf/NaN: a failed case (empty prediction, HD95 = inf) is written as null."""
    return value if math.isfinite(value) else None


def _write_json(data: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
