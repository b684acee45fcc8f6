"""Time `mlbseg synth` + `mlbseg prepare` on 50 PROMISE12-sized phantom cases, jobs = cores.

Writes the "prepare" section of docs/performance.md and prints one JSON line. Run from the repository
root: `.venv/bin/python benchmarks/prepare.py [--cases 50] [--jobs N] [--noise-model relative|reference]`.
The random split keeps all 37 train cases (`--val 0`), as in the paper.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_json, update_section

from mlbseg.prep.calibrate import calibrate_levels
from mlbseg.prep.manifest import load_case
from mlbseg.prep.noise_models import NOISE_MODELS
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.report import KNOBS
from mlbseg.prep.synth import write_phantoms


def _timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--noise-model", choices=list(NOISE_MODELS), default="relative")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlbseg-bench-") as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        synth_s, _ = _timed(write_phantoms, raw, cases=args.cases, seed=0, jobs=args.jobs)
        raw_mb = sum(path.stat().st_size for path in raw.iterdir()) / 2**20
        prepare_s, manifest = _timed(
            prepare_dataset,
            raw,
            prepared,
            size=144,
            split="random",
            val=0,
            noise_model=args.noise_model,
            jobs=args.jobs,
        )
        out_mb = sum(path.stat().st_size for path in (prepared / "cases").iterdir()) / 2**20
        train = {case: load_case(prepared, case)["mask"] for case in manifest["split"]["train"]}  # type: ignore[index]
        calibrate_s, _ = _timed(calibrate_levels, train, 0, model=NOISE_MODELS[args.noise_model])
    noise = manifest["noise"]  # type: ignore[index]
    record = {
        "benchmark": "prepare",
        "cases": args.cases,
        "jobs": args.jobs,
        "noise_model": args.noise_model,
        "synth_s": round(synth_s, 2),
        "prepare_s": round(prepare_s, 2),
        "synth_cases_per_s": round(args.cases / synth_s, 2),
        "prepare_cases_per_s": round(args.cases / prepare_s, 2),
        "calibrate_s": round(calibrate_s, 2),
        "raw_mb": round(raw_mb, 1),
        "prepared_mb": round(out_mb, 1),
        "noise_mean_dice": {level: round(entry["mean_dice"], 4) for level, entry in noise.items()},
    }
    rows = "\n".join(
        f"| {level} | {entry['target']:.4f} | {entry['mean_dice']:.4f} | {entry['strength']:.4f} |"
        for level, entry in noise.items()
    )
    body = (
        f"{args.cases} PROMISE12-sized phantom cases (256–512², 15–54 slices, {raw_mb:.0f} MB raw), "
        f"`--jobs {args.jobs}`, `--noise-model {args.noise_model}`, slices at 144².\n\n"
        "| step | seconds | cases/s |\n|---|---|---|\n"
        f"| `mlbseg synth` | {synth_s:.1f} | {args.cases / synth_s:.2f} |\n"
        f"| `mlbseg prepare` (incl. noise calibration) | {prepare_s:.1f} | {args.cases / prepare_s:.2f} |\n"
        f"| of which: calibrating L1–L3 on {len(train)} train cases (one process) | {calibrate_s:.1f} | |\n\n"
        f"| level | target Dice | realised mean | {KNOBS[args.noise_model]} |\n|---|---|---|---|\n" + rows
    )
    update_section("prepare", "Data preparation (`mlbseg synth` + `mlbseg prepare`)", body)
    print_json(record)


if __name__ == "__main__":
    main()
