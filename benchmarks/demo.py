"""Wall time of `mlbseg demo` and what it spends it on, from one fresh run.

Runs the demo as shipped into a new folder (a temporary one unless ``--out``), then reads each run's
``metrics.csv`` (seconds per epoch, its validation included): seconds per step of the baseline, of the
warm-up epochs of views_meta and MLB-Seg (noisy-label BCE plus the clean meta-batch step, no views) and of
their epochs after it (five views, consistency, EMA teacher, the meta-batch step; MLB-Seg also α/β from
the meta engine), all measured in the same process, so their ratios hold on a shared machine. Writes the
section "demo" of docs/performance.md (with the demo's Dice table) and prints one JSON line.

    python benchmarks/demo.py                  # seed 0: about 7 minutes on 2 cores
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
from mlbseg.demo import DEMO_CONFIG, METHODS, NOISE, DemoData, run_demo
from mlbseg.repeat import parse_seeds
from mlbseg.seg.config import SegConfig


def step_seconds(run_dir: Path, steps_per_epoch: int, warmup_epochs: int) -> dict[str, float]:
    """Seconds per step of the first ``warmup_epochs`` epochs (``warmup``) and of the rest (``main``)."""
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    groups: dict[str, list[float]] = {"warmup": [], "main": []}
    for row in rows:
        groups["warmup" if int(row["epoch"]) <= warmup_epochs else "main"].append(float(row["seconds"]))
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
                step_seconds(
                    out / f"{method}-{NOISE}-seed{seed}",
                    cfg.train.steps_per_epoch,
                    0 if method == "baseline" else cfg.method.warmup_epochs,
                )
                for seed in seeds
            ]
            for method in METHODS
        }
    seconds = {
        (method, phase): statistics.median(run[phase] for run in runs)
        for method, runs in per_step.items()
        for phase in runs[0]
    }
    baseline = seconds["baseline", "main"]
    record = {
        "seeds": seeds,
        "wall_s": round(wall, 1),
        "wall_s_per_seed": round(wall / len(seeds), 1),
        "s_per_step": {f"{method}_{phase}": round(value, 3) for (method, phase), value in seconds.items()},
        "rows": result.rows,
    }
    print_json(record)
    steps = {
        ("baseline", "main"): f"baseline (mean BCE, batch {cfg.train.batch_size})",
        ("views_meta", "warmup"): "views_meta warm-up (BCE + clean meta-batch step)",
        ("views_meta", "main"): "views_meta (5 views, uniform weights, consistency, EMA, meta-batch step)",
        ("mlbseg", "warmup"): "MLB-Seg warm-up (BCE + clean meta-batch step)",
        ("mlbseg", "main"): "MLB-Seg (5 views, α/β, consistency, EMA, meta-batch step)",
    }
    lines = [
        f"`mlbseg demo --seeds {args.seeds}` as shipped, in a fresh folder: 24 phantoms prepared at "
        f"{DemoData().size}², {cfg.train.epochs} epochs × {cfg.train.steps_per_epoch} steps of batch "
        f"{cfg.train.batch_size} per run (views_meta and MLB-Seg: {cfg.method.warmup_epochs} of them "
        "warm-up), evaluation, figures, tables. Seconds per step include each epoch's meta-case validation.",
        "",
        f"Wall time: {wall / 60:.1f} min for {len(seeds)} seed(s), {wall / 60 / len(seeds):.1f} min each.",
        "",
        "| step | s / step | × baseline step |",
        "|---|---|---|",
    ]
    lines += [
        f"| {text} | {seconds[key]:.3f} | {seconds[key] / baseline:.2f} |"
        for key, text in steps.items()
        if key in seconds
    ]
    lines += ["", "| method | test Dice (%) | HD95 (mm) |", "|---|---|---|"]
    for row in result.rows:
        std = f" ± {row['dice_std']:.2f}" if row["dice_std"] is not None else ""
        hd_std = f" ± {row['hd95_std']:.2f}" if row["hd95_std"] is not None else ""
        lines.append(f"| {row['method']} | {row['dice_mean']:.2f}{std} | {row['hd95_mean']:.2f}{hd_std} |")
    update_section("demo", "The demo (`mlbseg demo`)", "\n".join(lines))


if __name__ == "__main__":
    main()
