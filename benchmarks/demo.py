"""Wall time of `mlbseg demo` and what it spends it on, from one fresh run.

Runs the demo as shipped into a new folder (a temporary one unless ``--out``), then reads each run's
``metrics.csv`` (seconds per epoch): seconds per step of the baseline, of MLB-Seg's warm-up epochs
(noisy-label BCE plus the clean meta-batch step, no views) and of its meta-weighted epochs (five views,
α/β from the meta engine), all measured in the same process, so their ratios hold on a shared machine.
Writes the section "demo" of docs/performance.md (with the demo's Dice table) and prints one JSON line.

    python benchmarks/demo.py                  # seed 0: about 8 minutes on 2 cores
    python benchmarks/demo.py --seeds 0..2 --out demo   # keep the folder (`mlbseg demo` continues it)
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from _report import print_json, update_section

from mlbseg.config import load_config
from mlbseg.demo import DEMO_CONFIG, METHODS, NOISE, run_demo
from mlbseg.repeat import parse_seeds
from mlbseg.seg.config import SegConfig


def step_seconds(run_dir: Path, steps_per_epoch: int) -> dict[str, float]:
    """Seconds per step of the run's plain epochs and of its meta-weighted ones (those logging α)."""
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    groups: dict[str, list[float]] = {"plain": [], "meta": []}
    for row in rows:
        groups["meta" if row.get("alpha_mean") else "plain"].append(float(row["seconds"]))
    return {name: sum(values) / (len(values) * steps_per_epoch) for name, values in groups.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="Training seeds, e.g. 0 or 0..2.")
    parser.add_argument("--out", type=Path, help="A new folder to keep the demo in (default: temporary).")
    args = parser.parse_args()
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out}: exists; the benchmark times a fresh demo")
    seeds = parse_seeds([args.seeds])
    cfg = load_config(SegConfig, DEMO_CONFIG)
    with tempfile.TemporaryDirectory() as folder:
        out = args.out or Path(folder) / "demo"
        started = time.perf_counter()
        result = run_demo(out, seeds=seeds, jobs=2)
        wall = time.perf_counter() - started
        per_step = {
            method: [
                step_seconds(out / f"{method}-{NOISE}-seed{seed}", cfg.train.steps_per_epoch)
                for seed in seeds
            ]
            for method in METHODS
        }
    baseline = statistics.median(run["plain"] for run in per_step["baseline"])
    warmup = statistics.median(run["plain"] for run in per_step["mlbseg"])
    meta = statistics.median(run["meta"] for run in per_step["mlbseg"])
    record = {
        "seeds": seeds,
        "wall_s": round(wall, 1),
        "wall_s_per_seed": round(wall / len(seeds), 1),
        "baseline_s_per_step": round(baseline, 3),
        "mlbseg_warmup_s_per_step": round(warmup, 3),
        "mlbseg_meta_s_per_step": round(meta, 3),
        "rows": result.rows,
    }
    print_json(record)
    lines = [
        f"`mlbseg demo --seeds {args.seeds}` as shipped, in a fresh folder: 24 phantoms prepared at 64², "
        f"{cfg.train.epochs} epochs × {cfg.train.steps_per_epoch} steps of batch {cfg.train.batch_size} per "
        f"run (MLB-Seg: {cfg.method.warmup_epochs} of them warm-up), evaluation, figures.",
        "",
        f"Wall time: {wall / 60:.1f} min for {len(seeds)} seed(s), {wall / 60 / len(seeds):.1f} min each.",
        "",
        "| step | s / step | × baseline step |",
        "|---|---|---|",
        f"| baseline (mean BCE, batch {cfg.train.batch_size}) | {baseline:.3f} | 1.00 |",
        f"| MLB-Seg warm-up (BCE + clean meta-batch step) | {warmup:.3f} | {warmup / baseline:.2f} |",
        f"| MLB-Seg meta-weighted (5 views, α/β, meta-batch step) | {meta:.3f} | {meta / baseline:.2f} |",
        "",
        "| method | test Dice (%) | HD95 (mm) |",
        "|---|---|---|",
    ]
    for row in result.rows:
        std = f" ± {row['dice_std']:.2f}" if row["dice_std"] is not None else ""
        hd_std = f" ± {row['hd95_std']:.2f}" if row["hd95_std"] is not None else ""
        lines.append(f"| {row['method']} | {row['dice_mean']:.2f}{std} | {row['hd95_mean']:.2f}{hd_std} |")
    update_section("demo", "The demo (`mlbseg demo`)", "\n".join(lines))


if __name__ == "__main__":
    main()
