"""Per-iteration time and peak memory of the meta-weighting engine against a plain training step.

Three modes on the same model and batch (mlbseg's smp UNet++, resnet34 encoder, encoder_depth=4, decoder
channels (256, 128, 64, 32), 1 channel in and out, 144x144; 5 training views, 10 meta views), each with two
optimisers, SGD (lr 0.01, momentum 0.9, weight decay 5e-4) and AdamW (lr 1e-3, betas (0.9, 0.999),
decoupled weight decay 1e-2), whose virtual steps the engine replicates from their state:

- ``plain``: forward + backward + optimiser step on the mean BCE;
- ``lookahead``: ``bootstrap_weights(method="lookahead")`` + the real step on the weighted BCE;
- ``forward``: ``bootstrap_weights(method="forward")`` + the same real step.

Set-up (in every worker process): build, fixed pseudo-labels, one real step so momentum buffers (SGD) or
moments (AdamW) exist. Time: one process runs the six runs (optimiser × mode) interleaved, round by round
(``--warmup`` untimed rounds, then ``--iters`` timed ones; median), so a shared machine's changing load hits
every run alike. Memory: each run in a fresh process; on CUDA ``torch.cuda.max_memory_allocated`` above the
memory allocated after set-up, on CPU the process's peak RSS (``ru_maxrss``) above its RSS after set-up
(after ``malloc_trim``), i.e. the extra memory an iteration needs at its peak. Prints a table and one JSON
line, and rewrites the "meta_step" section of docs/performance.md (``--no-write`` to skip).

Usage: ``python benchmarks/meta_step.py [--device cuda] [--iters 2] [--warmup 1] [--threads 1]``
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

MODES = ("plain", "lookahead", "forward")
OPTIMIZERS = ("sgd", "adamw")
RUNS = tuple(f"{optimizer}:{mode}" for optimizer in OPTIMIZERS for mode in MODES)
WORKERS = ("timing", *(f"memory:{run}" for run in RUNS))
TRAIN_VIEWS, META_VIEWS, SIZE = 5, 10, 144


def build(device: str, optimizer_name: str):
    """Model, optimiser and fixed batches (seeded: the same model and batches for both optimisers)."""
    import torch

    from mlbseg.seg.config import ModelConfig
    from mlbseg.seg.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet34", encoder_depth=4, decoder_channels=(256, 128, 64, 32)))
    model = model.to(device)
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)

    def views(count: int):
        images = torch.randn(count, 1, SIZE, SIZE, generator=generator)
        masks = (torch.rand(count, 1, SIZE, SIZE, generator=generator) > 0.5).float()
        return images.to(device), masks.to(device)

    batch = (*views(TRAIN_VIEWS), *views(META_VIEWS))  # inputs, noisy, meta inputs, meta targets
    return model.train(), optimizer, batch


def real_step(model, optimizer, inputs, noisy, pseudo, alpha=None, beta=None) -> None:
    """One optimiser step: mean BCE (plain) or the α/β-weighted sum of both per-pixel BCE maps."""
    import torch.nn.functional as F

    logits = model(inputs)
    if alpha is None:
        loss = F.binary_cross_entropy_with_logits(logits, noisy)
    else:
        per_pixel = F.binary_cross_entropy_with_logits
        loss = (alpha * per_pixel(logits, noisy, reduction="none")).sum()
        loss = loss + (beta * per_pixel(logits, pseudo, reduction="none")).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def iteration(mode: str, model, optimizer, batch, pseudo) -> None:
    """One training iteration of ``mode``."""
    from mlbseg.meta import bootstrap_weights

    inputs, noisy, meta_inputs, meta_targets = batch
    if mode == "plain":
        real_step(model, optimizer, inputs, noisy, pseudo)
        return
    alpha, beta = bootstrap_weights(
        model, optimizer, inputs, noisy, pseudo, meta_inputs, meta_targets, loss="bce", method=mode
    )
    real_step(model, optimizer, inputs, noisy, pseudo, alpha, beta)


def rss_mb() -> float:
    """Current resident set size in MiB (Linux), after returning free heap pages to the system."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure without trimming
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status: peak-RSS measurement needs Linux")


def prepare(args: argparse.Namespace, optimizer_name: str):
    """Set-up of one optimiser's runs: model, optimiser (with its state), batch, pseudo-labels."""
    import torch

    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, optimizer, batch = build(args.device, optimizer_name)
    with torch.no_grad():
        pseudo = (model(batch[0]) > 0).float()  # fixed pseudo-labels, the same for both methods
    real_step(model, optimizer, batch[0], batch[1], pseudo)  # creates momentum buffers / Adam moments
    return model, optimizer, batch, pseudo


def synchronize(device: str) -> None:
    """Wait for queued CUDA work so that wall-clock intervals cover it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timing_worker(args: argparse.Namespace) -> dict:
    """Seconds per iteration of every run (optimiser × mode), interleaved round by round in one process.

    Interleaving spreads slow drifts of a shared machine's load evenly over the runs. Returns the median
    wall-clock seconds and the median process CPU seconds (all threads) per run.
    """
    setups = {name: prepare(args, name) for name in OPTIMIZERS}
    wall: dict[str, list[float]] = {run: [] for run in RUNS}
    cpu: dict[str, list[float]] = {run: [] for run in RUNS}
    for round_index in range(args.warmup + args.iters):
        for run in RUNS:
            optimizer_name, mode = run.split(":")
            synchronize(args.device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            iteration(mode, *setups[optimizer_name])
            synchronize(args.device)
            if round_index >= args.warmup:
                wall[run].append(time.perf_counter() - start_wall)
                cpu[run].append(time.process_time() - start_cpu)
    return {
        run: {"seconds": statistics.median(wall[run]), "cpu_seconds": statistics.median(cpu[run])}
        for run in RUNS
    }


def memory_worker(run: str, args: argparse.Namespace) -> dict:
    """Peak extra MiB of one iteration of ``run`` ("optimiser:mode") above the memory held after set-up."""
    import torch

    optimizer_name, mode = run.split(":")
    model, optimizer, batch, pseudo = prepare(args, optimizer_name)
    cuda = args.device.startswith("cuda")
    if cuda:
        synchronize(args.device)
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = rss_mb()
    iteration(mode, model, optimizer, batch, pseudo)  # includes one-time loading (forward AD: ~30 MiB)
    synchronize(args.device)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_extra_mib": peak - baseline}


def run_worker(worker: str, args: argparse.Namespace) -> dict:
    """Run ``--worker worker`` in a fresh Python process and return its JSON record."""
    command = [sys.executable, __file__, "--worker", worker, "--device", args.device]
    command += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{worker} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict[str, dict]:
    """Per run ("optimiser:mode"): median seconds, CPU seconds and peak extra MiB."""
    records = run_worker("timing", args)
    for run in RUNS:
        records[run].update(run_worker(f"memory:{run}", args))
    return records


def ratios(records: dict[str, dict], optimizer_name: str) -> dict[str, float]:
    """The ratios forward / lookahead of one optimiser: wall time, CPU time and peak extra memory."""
    forward, lookahead = records[f"{optimizer_name}:forward"], records[f"{optimizer_name}:lookahead"]
    return {
        "time": forward["seconds"] / lookahead["seconds"],
        "cpu_time": forward["cpu_seconds"] / lookahead["cpu_seconds"],
        "memory": forward["peak_extra_mib"] / lookahead["peak_extra_mib"],
    }


def report(records: dict[str, dict], args: argparse.Namespace) -> tuple[str, dict]:
    """The Markdown table and the JSON record of one run (SGD keys unprefixed, AdamW's ``adamw_``)."""
    memory = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS increase"
    lines = [
        f"| optimizer | mode | s / iteration | x plain | CPU s / iteration | peak extra MiB ({memory}) |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict = {
        "benchmark": "meta_step",
        "device": args.device,
        "threads": args.threads or "default",
        "iters": args.iters,
        "warmup": args.warmup,
        "memory_measure": memory,
    }
    for optimizer_name in OPTIMIZERS:
        prefix = "" if optimizer_name == "sgd" else f"{optimizer_name}_"
        plain = records[f"{optimizer_name}:plain"]
        for mode in MODES:
            record = records[f"{optimizer_name}:{mode}"]
            ratio = record["seconds"] / plain["seconds"]
            lines.append(
                f"| {optimizer_name} | {mode} | {record['seconds']:.3f} | {ratio:.2f} "
                f"| {record['cpu_seconds']:.3f} | {record['peak_extra_mib']:.0f} |"
            )
            summary[f"{prefix}{mode}_s"] = record["seconds"]
            summary[f"{prefix}{mode}_cpu_s"] = record["cpu_seconds"]
            summary[f"{prefix}{mode}_peak_extra_mib"] = record["peak_extra_mib"]
        for name, value in ratios(records, optimizer_name).items():
            summary[f"{prefix}{name}_ratio_forward_lookahead"] = value
    return "\n".join(lines), summary


def section_body(table: str, summary: dict, args: argparse.Namespace) -> str:
    """The docs/performance.md text: set-up, method of measurement, table and ratios."""
    ratio_lines = [
        f"{label} forward / lookahead: time {summary[f'{prefix}time_ratio_forward_lookahead']:.2f} "
        f"(CPU time {summary[f'{prefix}cpu_time_ratio_forward_lookahead']:.2f}), "
        f"memory {summary[f'{prefix}memory_ratio_forward_lookahead']:.2f}."
        for label, prefix in (("SGD", ""), ("AdamW", "adamw_"))
    ]
    return (
        f"UNet++ (resnet34, depth 4, decoder 256/128/64/32) at {SIZE}x{SIZE}, {TRAIN_VIEWS} training "
        f"and {META_VIEWS} meta views; SGD lr 0.01, momentum 0.9, wd 5e-4 and AdamW lr 1e-3, wd 1e-2 "
        f"(decoupled), each after one real step; device {args.device}, threads {summary['threads']}. "
        f"Time: median of {args.iters} rounds after {args.warmup} warm-up, the six runs interleaved in "
        "one process (wall clock; CPU s = process CPU time, all threads; x plain = against the same "
        "optimizer's plain step). Memory: each run in a fresh process, the peak of its first iteration "
        f"above the memory held after set-up ({summary['memory_measure']}).\n\n{table}\n\n"
        + "\n\n".join(ratio_lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--iters", type=int, default=2, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "timing":
        print(json.dumps(timing_worker(args)))
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker.removeprefix("memory:"), args)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import print_json, update_section

    table, summary = report(measure(args), args)
    print(table)
    print_json(summary)
    if not args.no_write:
        body = section_body(table, summary, args)
        update_section("meta_step", "Meta step: forward vs lookahead weights", body)


if __name__ == "__main__":
    main()
