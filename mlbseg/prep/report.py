"""The summary ``mlbseg prepare`` prints: cases per split and, per noise level, target vs realised Dice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_TOLERANCE = 0.02  # the promise: realised mean Dice within ±0.02 of the paper's target


def noise_table(noise: Mapping[str, Mapping[str, float]], dice: Mapping[str, Mapping[str, float]]) -> Table:
    """Rows L1..L3: target, realised mean, min, max over train volumes, and the calibrated strength."""
    table = Table(title="Noisy training masks (per-volume 3-D Dice, noisy vs clean)")
    for column in ("level", "target", "realised mean", "min", "max", "strength s"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level, entry in noise.items():
        values = [case[level] for case in dice.values()]
        missed = abs(entry["mean_dice"] - entry["target"]) > TARGET_TOLERANCE
        mean = f"[red]{entry['mean_dice']:.4f}[/red]" if missed else f"{entry['mean_dice']:.4f}"
        table.add_row(
            level,
            f"{entry['target']:.4f}",
            mean,
            f"{min(values):.4f}",
            f"{max(values):.4f}",
            f"{entry['strength']:.4f}",
        )
    return table


def print_summary(console: Console, manifest: Mapping[str, Any], prepared: str) -> None:
    """Print what was written and the noise table; warn when a level misses its target."""
    counts = ", ".join(f"{len(ids)} {name}" for name, ids in manifest["split"].items())
    console.print(
        f"Prepared {len(manifest['cases'])} cases ({counts}) at {manifest['slice_size']}² into {prepared}"
    )
    dice = {
        case_id: case["noisy_dice"] for case_id, case in manifest["cases"].items() if "noisy_dice" in case
    }
    console.print(noise_table(manifest["noise"], dice))
    for level, entry in manifest["noise"].items():
        if abs(entry["mean_dice"] - entry["target"]) > TARGET_TOLERANCE:
            console.print(
                f"[yellow]Warning: {level} mean Dice {entry['mean_dice']:.4f} misses its target "
                f"{entry['target']:.4f} "
                "by more than 0.02 (too few or too small train masks to calibrate on)[/yellow]"
            )
