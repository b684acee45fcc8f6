"""Seconds per epoch and peak memory of segmentation training: baseline and MLB-Seg (forward, lookahead).

Data: PROMISE12-sized phantoms, ``mlbseg synth`` (50 cases) + ``mlbseg prepare --split paper`` (37 train,
3 meta, 10 test cases at 144x144), made in a temporary folder, or in ``--data DIR`` (kept, and reused when
it already holds a prepared dataset). Modes, on the shipped configs with noise L2:

- ``baseline``: the shipped ``promise12_baseline`` (mean BCE on the noisy masks);
- ``mlbseg_forward``: the shipped ``promise12_mlbseg`` (views, consistency, EMA, meta-batch step);
- ``mlbseg_lookahead``: the same with ``method.engine=lookahead`` (the reference's second-order form).

Each mode runs in a fresh process through the real task run (``SegmentationRun``, stepped as the training
engine steps it): one short untimed epoch (``--warmup`` steps: kernel selection, lazy initialisation,
compilation), then a timed epoch of ``S = --epochs-fraction x steps per epoch`` steps, then the validation
alone. Seconds per epoch = (timed - validation) / S x steps per epoch + validation. Peak memory:
``torch.cuda.max_memory_allocated`` during the timed epoch (on the CPU: the process's peak RSS). The
projection of a full run is 100 x the MLB-Seg (forward) seconds per epoch; the target on one H200 is under 30
minutes.

On CUDA the table replaces the "gpu_train" section of docs/performance.md (``--no-write`` to skip). The
CPU is refused unless ``--allow-cpu``; ``--allow-cpu --epochs-fraction 0.02`` is a smoke check of this
script (minutes), and its numbers are not written anywhere.

Usage: ``python benchmarks/gpu_train.py [--epochs-fraction 1.0] [--data DIR] [--set KEY=VALUE ...]``
(``--set`` goes to every mode, e.g. ``--set train.compile=true --set train.deterministic=false``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "baseline": ("promise12_baseline", ()),
    "mlbseg_forward": ("promise12_mlbseg", ("method.engine=forward",)),
    "mlbseg_lookahead": ("promise12_mlbseg", ("method.engine=lookahead",)),
}
FULL_RUN_EPOCHS, TARGET_MINUTES = 100, 30.0


def make_data(folder: Path) -> Path:
    """The prepared phantom dataset in ``folder`` (made unless it exists): 50 cases, paper split."""
    if (folder / "manifest.json").is_file():  # a prepared folder itself
        return folder
    prepared = folder / "prepared"
    if (prepared / "manifest.json").is_file():
        return prepared
    jobs = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    mlbseg = [sys.executable, "-m", "mlbseg"]
    for command in (
        [*mlbseg, "synth", str(folder / "raw"), "--cases", "50", "--jobs", jobs],
        [*mlbseg, "prepare", str(folder / "raw"), str(prepared), "--split", "paper", "--jobs", jobs],
    ):
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return prepared


def synchronize() -> None:
    """Wait for queued CUDA work, so wall-clock intervals cover it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mib(cuda: bool) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS, in MiB."""
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_run(mode: str, args: argparse.Namespace):
    """The mode's :class:`SegmentationRun` on the prepared phantoms, as the training engine builds it."""
    from mlbseg.config import load_config, resolve_config_path
    from mlbseg.engine.distributed import SINGLE
    from mlbseg.engine.seeding import amp_dtype_for, resolve_device, seed_everything
    from mlbseg.engine.trainer import Runtime
    from mlbseg.seg.config import SegConfig
    from mlbseg.seg.trainer import SegmentationRun

    config, overrides = MODES[mode]
    config = getattr(args, "config", None) or config
    cfg = load_config(
        SegConfig, resolve_config_path(config, "seg"), [f"data.prepared={args.data}", *overrides, *args.set]
    )
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    amp_dtype = amp_dtype_for(device) if cfg.train.amp else None
    return SegmentationRun(
        cfg, Runtime(device, SINGLE, amp_dtype, Path(tempfile.gettempdir()))
    )  # never written


def run_epoch(run, steps: int) -> float:
    """Wall seconds of ``steps`` training steps and the end-of-epoch validation."""
    synchronize()
    started = time.perf_counter()
    run.begin_epoch(run.cfg.method.warmup_epochs)  # meta-weighted steps for the methods that have them
    for _ in range(steps):
        run.train_step()
    run.end_epoch()
    synchronize()
    return time.perf_counter() - started


def worker(mode: str, args: argparse.Namespace) -> dict:
    """Warm-up epoch, timed epoch, validation alone; the mode's record."""
    import torch

    from mlbseg.seg.inference import validation_dice

    cuda = torch.cuda.is_available()
    run = build_run(mode, args)
    steps_per_epoch = run.steps_in_epoch(0)
    timed_steps = max(1, round(args.epochs_fraction * steps_per_epoch))
    run_epoch(run, args.warmup)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = run_epoch(run, timed_steps)
    peak = peak_mib(cuda)
    started = time.perf_counter()
    validation_dice(run.step.model, run.meta_volumes, amp_dtype=run.step.amp_dtype)
    synchronize()
    validation = time.perf_counter() - started
    per_step = max(seconds - validation, 0.0) / timed_steps
    return {
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": timed_steps,
        "seconds_per_step": per_step,
        "validation_seconds": validation,
        "seconds_per_epoch": per_step * steps_per_epoch + validation,
        "peak_mib": peak,
        "device": str(next(run.model.parameters()).device),
    }


def run_worker(mode: str, args: argparse.Namespace) -> dict:
    """Run ``--worker mode`` in a fresh Python process and return its JSON record."""
    command = [sys.executable, __file__, "--worker", mode, "--data", str(args.data)]
    command += ["--epochs-fraction", str(args.epochs_fraction), "--warmup", str(args.warmup)]
    command += ["--config", args.config] if args.config else []
    command += [item for override in args.set for item in ("--set", override)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(records: dict[str, dict], args: argparse.Namespace, cuda: bool) -> tuple[str, dict]:
    """The Markdown table and the JSON record."""
    memory = "CUDA max_memory_allocated" if cuda else "peak RSS"
    lines = [
        f"| mode | s / step | steps / epoch | s / epoch | of which validation s | peak MiB ({memory}) "
        f"| {FULL_RUN_EPOCHS} epochs (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, record in records.items():
        full_run = FULL_RUN_EPOCHS * record["seconds_per_epoch"] / 60
        lines.append(
            f"| {mode} | {record['seconds_per_step']:.4f} | {record['steps_per_epoch']} "
            f"| {record['seconds_per_epoch']:.1f} | {record['validation_seconds']:.1f} "
            f"| {record['peak_mib']:.0f} | {full_run:.1f} |"
        )
    projected = FULL_RUN_EPOCHS * records["mlbseg_forward"]["seconds_per_epoch"] / 60
    summary = {
        "benchmark": "gpu_train",
        "device": records["mlbseg_forward"]["device"],
        "epochs_fraction": args.epochs_fraction,
        "overrides": list(args.set),
        **{f"{mode}_s_per_epoch": record["seconds_per_epoch"] for mode, record in records.items()},
        **{f"{mode}_peak_mib": record["peak_mib"] for mode, record in records.items()},
        "mlbseg_forward_100_epochs_min": projected,
        "meets_target_30_min": projected < TARGET_MINUTES,
    }
    return "\n".join(lines), summary


def section_body(table: str, summary: dict, args: argparse.Namespace) -> str:
    """The docs/performance.md text: set-up, method, table, projection."""
    verdict = "meets" if summary["meets_target_30_min"] else "misses"
    overrides = ", ".join(f"`{item}`" for item in args.set) or "none"
    return (
        "PROMISE12-sized phantoms (`mlbseg synth` 50 cases, `mlbseg prepare --split paper`: 37/3/10 cases, "
        "144x144), noise L2, the shipped `promise12_baseline`/`promise12_mlbseg` configs (extra overrides: "
        f"{overrides}); device {summary['device']}. Each mode in a fresh process through the trainer: "
        f"{args.warmup} warm-up steps, then {args.epochs_fraction:g} of an epoch timed and extrapolated "
        "to a full epoch, validation on the 3 meta cases included.\n\n"
        f"{table}\n\nA full {FULL_RUN_EPOCHS}-epoch MLB-Seg (forward) run: "
        f"{summary['mlbseg_forward_100_epochs_min']:.1f} min ({verdict} the target of under "
        f"{TARGET_MINUTES:.0f} min on one H200)."
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-fraction", type=float, default=1.0, help="share of an epoch timed")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--data", type=Path, help="folder for the phantom data (kept; reused if prepared)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--config", help="train this config (path or shipped name) instead of each mode's")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a smoke check)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--worker", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.epochs_fraction <= 1:
        parser.error("--epochs-fraction must be in (0, 1]")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        message = (
            "gpu_train measures GPU training and found no CUDA device. For a smoke check of the script on "
            "the CPU run: python benchmarks/gpu_train.py --allow-cpu --epochs-fraction 0.02"
        )
        print(message, file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import print_json, update_section

    with tempfile.TemporaryDirectory(prefix="gpu_train-") as scratch:
        args.data = make_data(args.data or Path(scratch))
        records = {mode: run_worker(mode, args) for mode in MODES}
    table, summary = report(records, args, cuda)
    print(table)
    print_json(summary)
    if cuda and not args.no_write:
        update_section(
            "gpu_train",
            "Segmentation training on the GPU: seconds per epoch",
            body=section_body(table, summary, args),
        )


if __name__ == "__main__":
    main()
