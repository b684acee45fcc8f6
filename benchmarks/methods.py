"""Seconds per training step of every segmentation method, as a multiple of the baseline's, in one run.

Every method of ``mlbseg.seg.config.METHODS`` gets its own ``SegmentationStep`` (the training code itself,
not a copy) on the same small UNet++ (resnet18 encoder, depth 4, decoder 32/32/16/16, one channel in and
one logit out) at 144×144, seeded alike, with the method's defaults: the five views, α/β, consistency,
the EMA teacher and the meta-batch step where the method has them, a robust loss (and the T-Loss's ν in
the optimizer) for the robust-loss methods, the peer networks (each with its own optimizer) of
co-teaching (2 networks) and Tri-Net (3), the confident-learning correction of clslsr, adele's per-class
training-IoU counts and its multi-scale consistency (forwards at ×0.7 and ×1.5, sides rounded to the model's
size divisor; its label correction is a pass over the train slices once per epoch, outside the step, and not
timed here). Batches as the
paper: 1 training slice (five views where the method uses them) and 2 clean meta slices; SGD lr 0.005,
momentum 0.9, weight decay 5e-4, clipping 0.2; the meta-weighted step (after warm-up), full precision.

A step is ``expand`` (augmentation, views) plus the step call, on fixed random slices. The methods run
interleaved, round by round, each round starting with the next method (``--warmup`` untimed rounds,
then ``--iters`` timed ones; median per method), in one process, so a shared machine's changing load
hits every method alike. On CUDA each step ends with a synchronisation. Prints a table and one JSON
line, and rewrites the ``methods`` section of docs/performance.md (``--no-write`` to skip).

``--methods`` times a subset (the baseline is always timed, first); a subset never rewrites the table.

Usage: ``python benchmarks/methods.py [--device cpu|cuda] [--iters 5] [--warmup 1] [--threads 0]
[--methods baseline,dast]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from mlbseg.engine.config import OptimConfig
from mlbseg.engine.ema import EMATeacher
from mlbseg.engine.optim import build_optimizer
from mlbseg.seg.config import METHODS, DataConfig, MethodConfig, ModelConfig
from mlbseg.seg.model import build_model, size_divisor
from mlbseg.seg.peers import PeerNetwork
from mlbseg.seg.step import SegmentationStep, robust_loss_for

SIZE, TRAIN_SLICES, META_SLICES = 144, 1, 2
MODEL = ModelConfig(encoder="resnet18", encoder_depth=4, decoder_channels=(32, 32, 16, 16))
OPTIM = OptimConfig(lr=0.005, momentum=0.9, weight_decay=5e-4, grad_clip_norm=0.2)


def build_step(name: str, device: torch.device) -> SegmentationStep:
    """The step of method ``name`` with its defaults, as ``SegmentationRun`` builds it (seeded model)."""
    method = MethodConfig(name=name, meta_batch_size=META_SLICES)
    torch.manual_seed(0)
    model = build_model(MODEL).to(device).train()
    optimizer = build_optimizer(model, OPTIM)
    robust_loss = robust_loss_for(method)
    if robust_loss is not None:
        robust_loss.to(device)
        if list(robust_loss.parameters()):
            optimizer.add_param_group({"params": list(robust_loss.parameters()), "weight_decay": 0.0})
    peers = [build_model(MODEL).to(device).train() for _ in range(method.networks - 1)]
    step = SegmentationStep(
        model,
        optimizer,
        method=method,
        data=DataConfig(),
        grad_clip_norm=OPTIM.grad_clip_norm,
        generator=torch.Generator(device).manual_seed(0),
        teacher=EMATeacher(model, method.ema.decay) if method.uses_ema else None,
        robust_loss=robust_loss,
        peers=[PeerNetwork(peer, build_optimizer(peer, OPTIM)) for peer in peers],
        size_divisor=size_divisor(MODEL),
    )
    step.begin_epoch(method.forget_ramp_epochs)  # the final forget rate
    return step


def slices(count: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [count, 1, 144, 144] (a bright disc on noise), the disc as noisy label and as reference."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (((rows - 70.0) ** 2 + (cols - 75.0) ** 2) <= 30.0**2).float().expand(count, 1, SIZE, SIZE)
    images = disc + 0.3 * torch.randn(count, 1, SIZE, SIZE, generator=generator)
    return images.to(device), disc.to(device), disc.clone().to(device)


def timed_step(step: SegmentationStep, train: tuple, meta: tuple, device: torch.device) -> float:
    """Wall seconds of one expand + step (synchronised on CUDA)."""
    started = time.perf_counter()
    batch, meta_batch = step.expand(*train), step.expand(*meta)
    step(batch, meta_batch, meta_weighting=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict[str, float]:
    """The median seconds per step of every method, interleaved round by round."""
    device = torch.device(args.device)
    steps = {name: build_step(name, device) for name in args.methods}
    train, meta = slices(TRAIN_SLICES, 1, device), slices(META_SLICES, 2, device)
    times: dict[str, list[float]] = {name: [] for name in args.methods}
    names = list(steps)
    for round_index in range(args.warmup + args.iters):
        shift = round_index % len(names)  # each round starts with another method: no position favoured
        for name in names[shift:] + names[:shift]:
            seconds = timed_step(steps[name], train, meta, device)
            if round_index >= args.warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def report(seconds: dict[str, float], args: argparse.Namespace) -> tuple[str, dict]:
    """The Markdown table and the JSON record."""
    baseline = seconds["baseline"]
    lines = ["| method | s / step | × baseline |", "|---|---|---|"]
    lines += [f"| `{name}` | {value:.3f} | {value / baseline:.2f} |" for name, value in seconds.items()]
    summary = {
        "benchmark": "methods",
        "device": args.device,
        "threads": args.threads or "default",
        "iters": args.iters,
        "warmup": args.warmup,
        "seconds_per_step": seconds,
        "x_baseline": {name: value / baseline for name, value in seconds.items()},
    }
    return "\n".join(lines), summary


def section_body(table: str, summary: dict, args: argparse.Namespace) -> str:
    """The docs/performance.md text: set-up, method of measurement and the table."""
    return (
        f"Small UNet++ (resnet18, depth 4, decoder 32/32/16/16) at {SIZE}×{SIZE}, {TRAIN_SLICES} training "
        f"slice and {META_SLICES} meta slices per step (five views each where the method uses them), every "
        "method with its defaults (views_meta and mlbseg: consistency and the EMA teacher on), SGD, the "
        f"meta-weighted step in full precision; device {args.device}, threads {summary['threads']}. Time: "
        f"median of {args.iters} rounds after {args.warmup} warm-up, the methods interleaved in one process, "
        "each round starting with the next method "
        "(wall clock of augmentation, views and step).\n\n"
        f"{table}"
    )


def _method_list(text: str) -> list[str]:
    """``--methods``: the named methods in registry order, the baseline included."""
    names = {name.strip() for name in text.split(",") if name.strip()} | {"baseline"}
    unknown = sorted(names - set(METHODS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}"
        )
    return [name for name in METHODS if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    parser.add_argument(
        "--methods", type=_method_list, default=list(METHODS), help="comma list (default: all)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import print_json, update_section

    table, summary = report(measure(args), args)
    print(table)
    print_json(summary)
    if not args.no_write and args.methods == list(METHODS):
        update_section(
            "methods", "Segmentation methods: seconds per step", section_body(table, summary, args)
        )


if __name__ == "__main__":
    main()
