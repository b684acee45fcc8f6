"""The GPU check in one call: every GPU number of docs/performance.md from one script, within a time budget.

On a machine with CUDA, ``python benchmarks/gpu_check.py`` runs these steps in order and writes the
``gpu_check`` section of docs/performance.md (GPU, driver, torch and CUDA versions, date):

1. ``gpu_tests``: the test suite's ``gpu`` tests (``pytest -m gpu`` on the files that hold them).
2. ``train_grid``: seconds per epoch and peak memory through the real trainer (``benchmarks/gpu_train.py``
   workers, one fresh process per cell) at PROMISE12 size (``mlbseg synth`` 50 phantoms, ``prepare --split
   paper``: 37/3/10 cases at 144²): baseline, MLB-Seg forward and lookahead, each in bf16 (``train.amp``)
   and fp32, then baseline and MLB-Seg forward with ``train.compile``. Reported: the forward engine's time
   as a multiple of the lookahead engine's (target ≤ 0.6) and a 100-epoch MLB-Seg run (target < 30 min).
3. ``precision``: α/β of bf16 real steps against fp32: two MLB-Seg runs from the same seed, one with bf16
   autocast and one in fp32, take the same steps; then both compute the meta weights of the same batch
   (the meta engine itself always runs in fp32) and the script reports their relative L1 difference and
   correlation.
4. ``packing``: several runs per GPU (``repeat --per-gpu``): K = 1, 2, 4, 8 MLB-Seg workers at once on one
   GPU, each timing an epoch while the others run, for the demo-sized setting (``mlbseg/demo.yaml``,
   24 phantoms at 64²) and the PROMISE12-sized one; runs per hour = K × 3600 / (epochs × s per epoch).
5. ``methods``: ``benchmarks/methods.py`` on the GPU: every segmentation method's seconds per step as a
   multiple of the baseline's, in one process (docs/performance.md's CPU table, on CUDA).

``--budget-s`` (default 480: the check must fit 8 minutes of one H200) bounds the whole script: every child
process runs with the time left as its timeout and is killed when it is up, the steps that no longer fit
are listed as skipped, and whatever was measured is still reported and written. Steps run in the order
above, so a short budget keeps the most important numbers.

``--dry-run`` exercises every step on the CPU at toy size (6 small phantoms at 32², a 0.35 M-parameter model,
a few steps, packing at K = 2, the methods benchmark of the baseline and dast for one round) and writes to
``--out`` instead of docs/performance.md; the test suite runs it, so that the one call on a GPU machine is
known to work. Without CUDA and without ``--dry-run`` the script refuses (exit 2). Prints a table per step and
one JSON line.

Usage: ``python benchmarks/gpu_check.py [--budget-s 480] [--dry-run --out FILE] [--no-write]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

import gpu_train  # noqa: E402  (the benchmark scripts are not a package)
from _report import PERFORMANCE_MD, print_json, update_section  # noqa: E402

SECTION = "gpu_check"
FORWARD_TARGET, RUN_TARGET_MIN = 0.6, 30.0
RESERVE_S = 5.0  # kept back from the budget for the report


@dataclass(frozen=True)
class Cell:
    """One configuration of the training grid: a gpu_train mode with bf16 on/off and compile on/off."""

    mode: str
    bf16: bool
    compile: bool

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` items of this cell."""
        return [f"train.amp={str(self.bf16).lower()}", f"train.compile={str(self.compile).lower()}"]

    @property
    def label(self) -> str:
        """e.g. ``mlbseg_forward bf16 compiled``."""
        return f"{self.mode} {'bf16' if self.bf16 else 'fp32'}{' compiled' if self.compile else ''}"


FULL_GRID = (
    *(Cell(mode, bf16, False) for bf16 in (True, False) for mode in gpu_train.MODES),
    Cell("baseline", True, True),
    Cell("mlbseg_forward", True, True),
)
DRY_GRID = (Cell("mlbseg_forward", True, False), Cell("mlbseg_lookahead", True, False))


@dataclass(frozen=True)
class Setting:
    """Sizes of one check: the full GPU check or the CPU dry run."""

    grid: tuple[Cell, ...]
    grid_fraction: float  # share of an epoch timed per grid cell
    packing: tuple[int, ...]  # runs per GPU
    packing_fraction: dict[str, float]  # per packing setting: share of an epoch timed
    precision_steps: int
    methods: tuple[str, ...] | None = None  # the methods benchmark's methods (None: all)
    methods_rounds: tuple[int, int] = (5, 2)  # its timed and warm-up rounds
    overrides: tuple[str, ...] = ()  # applied to every training process
    toy: bool = False


FULL = Setting(
    grid=FULL_GRID,
    grid_fraction=0.05,
    packing=(1, 2, 4, 8),
    packing_fraction={"demo": 0.5, "promise12": 0.03},
    precision_steps=20,
)
# The dry run: a 0.35 M-parameter U-Net on 32² slices, 4 steps per epoch (views fit 32²).
TOY_MODEL = (
    "model.arch=unet",
    "model.encoder=tu-resnet10t",
    "model.encoder_depth=3",
    "model.decoder_channels=[8,8,8]",
    "method.views.zoom_pads=[2,4]",
    "method.meta_batch_size=1",
    "train.steps_per_epoch=4",
)
DRY = Setting(
    grid=DRY_GRID,
    grid_fraction=0.5,
    packing=(2,),
    packing_fraction={"promise12": 0.5},
    precision_steps=1,
    methods=("baseline", "dast"),
    methods_rounds=(1, 0),
    overrides=TOY_MODEL,
    toy=True,
)


class BudgetExhaustedError(Exception):
    """The time budget ran out during a step."""


@dataclass
class Budget:
    """A deadline for the whole check; children get the time left as their timeout."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left, minus the report's reserve (never below 0)."""
        return max(0.0, self.seconds - RESERVE_S - (time.monotonic() - self.started))

    def check(self) -> None:
        """Raise :class:`BudgetExhaustedError` when no time is left."""
        if self.left() <= 0:
            raise BudgetExhaustedError


def run_processes(commands: list[list[str]], budget: Budget, env: dict[str, str] | None = None) -> list[str]:
    """Run ``commands`` at the same time; return their stdout, in order.

    Each runs in its own session, so a timeout (the budget) or any exception kills it with everything it
    started; none outlives this call.

    Raises:
        BudgetExhaustedError: The budget ran out first.
        RuntimeError: A command failed (its stderr's end in the message).
    """
    processes = []
    try:
        for command in commands:
            processes.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                    env=env,
                    cwd=ROOT,
                )
            )
        outputs = []
        for process in processes:
            try:
                out, err = process.communicate(timeout=budget.left())
            except subprocess.TimeoutExpired:
                raise BudgetExhaustedError from None
            if process.returncode != 0:
                last = err.strip().splitlines()[-1] if err.strip() else f"exit code {process.returncode}"
                raise RuntimeError(f"{last} ({' '.join(process.args[1:5])} …)\n{err[-3000:]}")
            outputs.append(out)
        return outputs
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def worker_command(
    mode: str, data: Path, *, fraction: float, overrides: list[str], config: str | None = None
):
    """Argv of one ``gpu_train.py`` worker (one JSON record on its last stdout line)."""
    command = [sys.executable, str(BENCHMARKS / "gpu_train.py"), "--worker", mode, "--data", str(data)]
    command += ["--epochs-fraction", str(fraction), "--warmup", "2"]
    if config is not None:
        command += ["--config", config]
    return command + [item for override in overrides for item in ("--set", override)]


def last_json(output: str) -> dict:
    """The JSON record on the last line of a worker's stdout."""
    return json.loads(output.strip().splitlines()[-1])


# --- data ---------------------------------------------------------------------------------------------------


def make_datasets(folder: Path, setting: Setting, budget: Budget) -> dict[str, Path]:
    """Prepared phantom datasets by packing setting name: ``promise12`` (and ``demo`` for the full check)."""
    mlbseg = [sys.executable, "-m", "mlbseg"]
    jobs = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if setting.toy:
        small = ["--cases", "6", "--in-plane", "48", "64", "--slices", "4", "6", "--fov", "80", "90"]
        recipes = {"promise12": (small, ["--size", "32"])}
    else:
        demo = ["--cases", "24", "--in-plane", "256", "320", "--fov", "90", "110"]
        recipes = {"promise12": (["--cases", "50"], ["--split", "paper"]), "demo": (demo, ["--size", "64"])}
    prepared = {}
    for name, (synth, prepare) in recipes.items():
        raw, out = folder / f"{name}-raw", folder / f"{name}-prepared"
        run_processes([[*mlbseg, "synth", str(raw), *synth, "--jobs", jobs]], budget)
        run_processes([[*mlbseg, "prepare", str(raw), str(out), *prepare, "--jobs", jobs]], budget)
        prepared[name] = out
    return prepared


# --- the steps ----------------------------------------------------------------------------------------------


def environment() -> dict:
    """GPU, driver, torch and CUDA versions, date."""
    import torch

    driver = "unknown"
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU dry run)",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda
        else None,
        "driver": driver.splitlines()[0] if driver else "unknown",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
    }


def gpu_test_files() -> list[str]:
    """The test files that hold ``gpu`` tests."""
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if "mark.gpu" in path.read_text(encoding="utf-8")
    )


def gpu_tests(budget: Budget) -> dict:
    """``pytest -m gpu`` on the files holding gpu tests: the counts from pytest's summary line."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_test_files()]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=ROOT
    )
    try:
        out, _ = process.communicate(timeout=budget.left())
    except subprocess.TimeoutExpired:
        raise BudgetExhaustedError from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    summary = out.strip().splitlines()[-1].strip("= ") if out.strip() else ""
    counts = {
        word: int(number)
        for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", summary)
    }
    return {"exit_code": process.returncode, "summary": summary, **counts}


def train_grid(data: Path, setting: Setting, budget: Budget) -> dict:
    """Each grid cell in a fresh worker process: seconds per epoch and peak memory."""
    cells = {}
    for cell in setting.grid:
        budget.check()
        overrides = [*setting.overrides, *cell.overrides]
        command = worker_command(cell.mode, data, fraction=setting.grid_fraction, overrides=overrides)
        cells[cell.label] = {**vars(cell), **last_json(run_processes([command], budget)[0])}
    return cells


def grid_ratios(cells: dict) -> dict:
    """Forward vs lookahead time (same precision, eager) and the 100-epoch MLB-Seg projection."""
    ratios = {}
    for precision in ("bf16", "fp32"):
        forward, lookahead = (
            cells.get(f"mlbseg_forward {precision}"),
            cells.get(f"mlbseg_lookahead {precision}"),
        )
        if forward and lookahead:
            ratios[f"forward_over_lookahead_{precision}"] = (
                forward["seconds_per_step"] / lookahead["seconds_per_step"]
            )
    fastest = [cell for label, cell in cells.items() if label.startswith("mlbseg_forward")]
    if fastest:
        best = min(fastest, key=lambda cell: cell["seconds_per_epoch"])
        ratios["mlbseg_100_epochs_min"] = gpu_train.FULL_RUN_EPOCHS * best["seconds_per_epoch"] / 60
        ratios["mlbseg_100_epochs_cell"] = f"{best['mode']} {'bf16' if best['bf16'] else 'fp32'}"
    return ratios


def precision(data: Path, setting: Setting, budget: Budget) -> dict:
    """α/β of the same batch after the same steps with bf16 real steps and with fp32 ones."""
    import torch

    from mlbseg.meta import bootstrap_weights

    runs = {}
    for bf16 in (True, False):
        budget.check()
        args = argparse.Namespace(data=data, set=[*setting.overrides, f"train.amp={str(bf16).lower()}"])
        run = gpu_train.build_run("mlbseg_forward", args)
        run.begin_epoch(run.cfg.method.warmup_epochs)
        for _ in range(setting.precision_steps):
            run.train_step()
        runs["bf16" if bf16 else "fp32"] = run
    fp32 = runs["fp32"]
    foreground = fp32.train_set.labels.flatten(1).any(dim=1).nonzero().flatten()[:4]
    images, labels = fp32.train_set.images[foreground], fp32.train_set.labels[foreground].float()
    meta_images, meta_labels = fp32.meta_set.images[:4], fp32.meta_set.labels[:4].float()
    weights = {}
    for name, run in runs.items():
        with torch.no_grad():
            pseudo = (run.model(images) > 0).float()
        weights[name] = bootstrap_weights(
            run.model, run.optimizer, images, labels, pseudo, meta_images, meta_labels, loss="bce"
        )
    record = {
        "steps": setting.precision_steps,
        "slices": len(foreground),
        "bf16_active": runs["bf16"].step.amp_dtype is not None,
    }
    for index, name in enumerate(("alpha", "beta")):
        low, high = weights["bf16"][index].flatten().double(), weights["fp32"][index].flatten().double()
        record[f"{name}_relative_l1"] = float((low - high).abs().sum() / high.abs().sum().clamp_min(1e-30))
        record[f"{name}_correlation"] = float(torch.corrcoef(torch.stack([low, high]))[0, 1])
    return record


def packing(datasets: dict[str, Path], setting: Setting, budget: Budget) -> dict:
    """K MLB-Seg workers at once on one GPU; runs per hour of each setting at each K."""
    configs = {"promise12": None, "demo": str(ROOT / "mlbseg" / "demo.yaml")}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    results = {}
    for name, fraction in setting.packing_fraction.items():
        epochs = _epochs(configs[name], setting)
        for per_gpu in setting.packing:
            budget.check()
            command = worker_command(
                "mlbseg_forward",
                datasets[name],
                fraction=fraction,
                overrides=list(setting.overrides),
                config=configs[name],
            )
            threads = max(1, (os.cpu_count() or 1) // per_gpu)
            records = [
                last_json(out)
                for out in run_processes(
                    [command] * per_gpu, budget, {**env, "OMP_NUM_THREADS": str(threads)}
                )
            ]
            seconds = sum(record["seconds_per_epoch"] for record in records) / per_gpu
            results[f"{name} x{per_gpu}"] = {
                "setting": name,
                "runs_per_gpu": per_gpu,
                "epochs": epochs,
                "seconds_per_epoch": seconds,
                "runs_per_hour": per_gpu * 3600 / (epochs * seconds),
                "peak_mib_per_run": max(record["peak_mib"] for record in records),
            }
    return results


def method_steps(setting: Setting, budget: Budget) -> dict:
    """``benchmarks/methods.py`` in a fresh process on this machine's device: its JSON record."""
    iters, warmup = setting.methods_rounds
    command = [sys.executable, str(BENCHMARKS / "methods.py"), "--no-write", "--iters", str(iters)]
    command += ["--warmup", str(warmup)]
    if setting.methods is not None:
        command += ["--methods", ",".join(setting.methods)]
    return last_json(run_processes([command], budget)[0])


def _epochs(config: str | None, setting: Setting) -> int:
    """``train.epochs`` of a packing setting's config (the shipped promise12_mlbseg when None)."""
    from mlbseg.config import load_config, resolve_config_path
    from mlbseg.seg.config import SegConfig

    path = resolve_config_path(config or gpu_train.MODES["mlbseg_forward"][0], "seg")
    return load_config(SegConfig, path, list(setting.overrides)).train.epochs


# --- report -------------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(value) for value in row) + " |" for row in rows)])


def render(results: dict, status: dict[str, str], setting: Setting) -> str:
    """The docs/performance.md section body: environment, one table per step, the targets."""
    env = results["environment"]
    dry = (
        " --dry-run (toy sizes on the CPU: the numbers only show that the script works)"
        if setting.toy
        else ""
    )
    parts = [
        f"GPU {env['gpu']} ({env['gpu_memory_gib']} GiB), driver {env['driver']}, torch {env['torch']}, "
        f"CUDA {env['cuda']}, {env['date']}. One call of `python benchmarks/gpu_check.py`{dry}.",
        _table(["step", "status"], [[name, state] for name, state in status.items()]),
    ]
    if "gpu_tests" in results:
        parts.append(f"`pytest -m gpu`: {results['gpu_tests']['summary']}")
    if "train_grid" in results:
        cells = results["train_grid"]["cells"]
        rows = [
            [
                label,
                f"{c['seconds_per_step']:.4f}",
                c["steps_per_epoch"],
                f"{c['seconds_per_epoch']:.1f}",
                f"{c['peak_mib']:.0f}",
                f"{gpu_train.FULL_RUN_EPOCHS * c['seconds_per_epoch'] / 60:.1f}",
            ]
            for label, c in cells.items()
        ]
        header = [
            "cell",
            "s / step",
            "steps / epoch",
            "s / epoch",
            "peak MiB",
            f"{gpu_train.FULL_RUN_EPOCHS} epochs (min)",
        ]
        parts.append(
            f"Training grid (PROMISE12 size; {setting.grid_fraction:g} of an epoch timed per cell, "
            "validation included):\n\n" + _table(header, rows)
        )
        ratios = results["train_grid"]["ratios"]
        lines = [
            f"- forward / lookahead time, {key.rsplit('_', 1)[1]}: {value:.2f} (target ≤ {FORWARD_TARGET})"
            for key, value in ratios.items()
            if key.startswith("forward_over_lookahead")
        ]
        if "mlbseg_100_epochs_min" in ratios:
            lines.append(
                f"- a {gpu_train.FULL_RUN_EPOCHS}-epoch MLB-Seg run ({ratios['mlbseg_100_epochs_cell']}): "
                f"{ratios['mlbseg_100_epochs_min']:.1f} min (target < {RUN_TARGET_MIN:.0f} min)"
            )
        parts.append("\n".join(lines))
    if "precision" in results:
        p = results["precision"]
        parts.append(
            f"α/β of bf16 against fp32 real steps after {p['steps']} steps, on {p['slices']} slices "
            f"(bf16 active: {p['bf16_active']}): α relative L1 {p['alpha_relative_l1']:.3g}, correlation "
            f"{p['alpha_correlation']:.4f}; β relative L1 {p['beta_relative_l1']:.3g}, correlation "
            f"{p['beta_correlation']:.4f}."
        )
    if "packing" in results:
        rows = [
            [
                r["setting"],
                r["runs_per_gpu"],
                r["epochs"],
                f"{r['seconds_per_epoch']:.1f}",
                f"{r['runs_per_hour']:.2f}",
                f"{r['peak_mib_per_run']:.0f}",
            ]
            for r in results["packing"].values()
        ]
        header = ["setting", "runs / GPU", "epochs", "s / epoch (each)", "runs / hour", "peak MiB / run"]
        parts.append("Several runs per GPU (MLB-Seg forward, bf16):\n\n" + _table(header, rows))
    if "methods" in results:
        m = results["methods"]
        rows = [
            [f"`{name}`", f"{seconds:.4f}", f"{m['x_baseline'][name]:.2f}"]
            for name, seconds in m["seconds_per_step"].items()
        ]
        parts.append(
            f"Segmentation methods on {m['device']} (`benchmarks/methods.py`: small UNet++ at 144², full "
            f"precision, median of {m['iters']} rounds after {m['warmup']}):\n\n"
            + _table(["method", "s / step", "× baseline"], rows)
        )
    return "\n\n".join(parts)


# --- main ---------------------------------------------------------------------------------------------------


def run_steps(setting: Setting, budget: Budget, scratch: Path) -> tuple[dict, dict[str, str]]:
    """Every step in order; a step that fails or runs out of time is recorded, and the rest go on or skip.

    Returns:
        The results by step name (``environment`` first) and each step's status line.
    """
    results: dict = {"environment": environment()}
    status: dict[str, str] = {}
    datasets: dict[str, Path] = {}

    def data() -> dict[str, Path]:
        if not datasets:
            datasets.update(make_datasets(scratch, setting, budget))
        return datasets

    steps: dict[str, Callable[[], dict]] = {
        "gpu_tests": lambda: gpu_tests(budget),
        "train_grid": lambda: _grid_with_ratios(data()["promise12"], setting, budget),
        "precision": lambda: precision(data()["promise12"], setting, budget),
        "packing": lambda: packing(data(), setting, budget),
        "methods": lambda: method_steps(setting, budget),
    }
    for name, step in steps.items():
        if budget.left() <= 0:
            status[name] = "skipped: out of budget"
            continue
        started = time.monotonic()
        try:
            results[name] = step()
            status[name] = f"ran in {time.monotonic() - started:.0f} s"
        except BudgetExhaustedError:
            status[name] = f"stopped at the budget after {time.monotonic() - started:.0f} s"
        except Exception as err:  # a failed step is reported; the steps after it still run
            status[name] = f"failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            traceback.print_exc()
    return results, status


def _grid_with_ratios(data: Path, setting: Setting, budget: Budget) -> dict:
    cells = train_grid(data, setting, budget)
    return {"cells": cells, "ratios": grid_ratios(cells)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at toy size")
    parser.add_argument("--out", type=Path, help="write the section here instead of docs/performance.md")
    parser.add_argument("--no-write", action="store_true", help="write no section")
    args = parser.parse_args(argv)
    if args.budget_s <= RESERVE_S:
        parser.error(f"--budget-s must be more than {RESERVE_S:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check found no CUDA device; `--dry-run` exercises every step on the CPU", file=sys.stderr)
        return 2
    setting = DRY if args.dry_run else FULL
    budget = Budget(args.budget_s)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        results, status = run_steps(setting, budget, Path(scratch))
    body = render(results, status, setting)
    print(body)
    print_json({"benchmark": SECTION, "dry_run": args.dry_run, "status": status, **results})
    if not args.no_write and (args.out or torch.cuda.is_available()):
        update_section(
            SECTION, "The GPU check (`benchmarks/gpu_check.py`)", body=body, path=args.out or PERFORMANCE_MD
        )
    return 1 if any(state.startswith("failed") for state in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
