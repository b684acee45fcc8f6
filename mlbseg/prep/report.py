"""The summary ``mlbseg prepare`` prints: cases per split, noise levels and given noisy annotations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_TOLERANCE = 0.02  # the promise: realised mean Dice within ±0.02 of the paper's target


KNOBS = {"relative": "strength s", "reference": "kernel scale c"}  # what each noise model calibrates


def noise_table(
    noise: Mapping[str, Mapping[str, Any]], dice: Mapping[str, Mapping[str, float]], model: str
) -> Table:
    """Rows L1..L3: target, realised mean, min, max over train volumes, and the calibrated strength.

    For K > 2 the Dice values are means over the foreground classes and the strengths one per class;
    ``model``: the noise model (``relative`` or ``reference``, whose knob is a kernel scale).
    """
    table = Table(title=f"Noisy training masks, {model} model (per-volume 3-D Dice, noisy vs clean)")
    for column in ("level", "target", "realised mean", "min", "max", KNOBS[model]):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level, entry in noise.items():
        values = [case[level] for case in dice.values() if level in case]
        missed = abs(entry["mean_dice"] - entry["target"]) > TARGET_TOLERANCE
        mean = f"[red]{entry['mean_dice']:.4f}[/red]" if missed else f"{entry['mean_dice']:.4f}"
        table.add_row(
            level,
            f"{entry['target']:.4f}",
            mean,
            f"{min(values):.4f}",
            f"{max(values):.4f}",
            _strength(entry["strength"]),
        )
    return table


def _strength(strength: float | Mapping[str, float]) -> str:
    """One strength (binary data), or one per class as ``PZ 0.31, TZ 0.25`` (K > 2)."""
    if isinstance(strength, Mapping):
        return ", ".join(f"{name} {value:.4f}" for name, value in strength.items())
    return f"{strength:.4f}"


def annotation_table(annotations: Mapping[str, Mapping[str, Any]]) -> Table:
    """Rows per given annotation: cases holding it and their mean Dice against the reference."""
    table = Table(title="Given noisy annotations (per-volume 3-D Dice vs the reference)")
    for column in ("annotation", "cases", "mean Dice", "folder"):
        table.add_column(column, justify="right" if column in ("cases", "mean Dice") else "left")
    for name, entry in annotations.items():
        mean = "no reference" if entry["mean_dice"] is None else f"{entry['mean_dice']:.4f}"
        table.add_row(name, str(entry["num_cases"]), mean, entry["source"])
    return table


def print_summary(console: Console, manifest: Mapping[str, Any], prepared: str) -> None:
    """Print what was written, the noise and annotation tables; warn when a level misses its target.

    The first line (never wrapped) counts the cases per split: train, val (also when empty), meta, test.
    """
    counts = ", ".join(f"{len(ids)} {name}" for name, ids in manifest["split"].items())
    without = sum(not case.get("has_reference", True) for case in manifest["cases"].values())
    note = f"; {without} train case(s) without a reference" if without else ""
    size = manifest["slice_size"]
    console.print(
        f"Prepared {len(manifest['cases'])} cases ({counts}{note}) at {size}² into {prepared}", soft_wrap=True
    )
    dice = {
        case_id: case["noisy_dice"] for case_id, case in manifest["cases"].items() if "noisy_dice" in case
    }
    if manifest["noise"]:
        console.print(noise_table(manifest["noise"], dice, manifest["noise_model"]))
    if manifest.get("annotations"):
        console.print(annotation_table(manifest["annotations"]))
    for level, entry in manifest["noise"].items():
        if abs(entry["mean_dice"] - entry["target"]) > TARGET_TOLERANCE:
            console.print(
                f"[yellow]Warning: {level} mean Dice {entry['mean_dice']:.4f} misses its target "
                f"{entry['target']:.4f} "
                "by more than 0.02 (too few or too small train masks to calibrate on)[/yellow]"
            )
