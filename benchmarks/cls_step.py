"""Images per second of one classification training step: plain mean CE vs an L2B step (α and β).

PreActResNet18 on 32×32 inputs (CIFAR), batch 128, meta batch 128, SGD with momentum buffers in place;
both steps are timed in the same run, so their ratio is meaningful on a shared machine. Writes the section
"cls_step" of docs/performance.md and prints one JSON line.

    python benchmarks/cls_step.py                 # CPU, a couple of minutes on 2 cores
    python benchmarks/cls_step.py --device cuda --iters 20
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import print_json, update_section

from mlbseg.cls.config import MethodConfig, ModelConfig
from mlbseg.cls.models import build_classifier
from mlbseg.cls.step import ClassificationStep


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: str, engine: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Seconds per step (median of ``args.iters``) and, on CUDA, the peak memory of one method."""
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(arch="preact_resnet18"), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step = ClassificationStep(
        model, optimizer, method=MethodConfig(name=method, engine=engine), grad_clip_norm=0.25, seed=0
    )
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    meta = (
        torch.randn(args.batch, 3, 32, 32, device=device),
        torch.randint(0, 10, (args.batch,), device=device),
    )
    meta_batch = None if method == "baseline" else meta
    step(images, labels)  # momentum buffers exist from here on, as in training
    for _ in range(args.warmup):
        step(images, labels, meta_batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.iters):
        _sync(device)
        started = time.perf_counter()
        step(images, labels, meta_batch)
        _sync(device)
        times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "images_per_s": args.batch / seconds, "peak_mib": peak}


def main() -> None:
    """Time the steps, print the table and the JSON line, update docs/performance.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=2, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=0, help="extra untimed steps per method first")
    parser.add_argument(
        "--lookahead", action="store_true", help="also time the reference's second-order form"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = {"plain (mean CE)": measure("baseline", "forward", args, device)}
    rows["L2B, forward engine"] = measure("l2b", "forward", args, device)
    if args.lookahead:
        rows["L2B, lookahead engine"] = measure("l2b", "lookahead", args, device)
    plain = rows["plain (mean CE)"]["images_per_s"]
    lines = [
        f"PreActResNet18, 32×32, batch {args.batch} (meta batch {args.batch}), {device.type}, "
        f"median of {args.iters} steps.",
        "",
        "| step | images/s | s/step | × plain time | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        slowdown = plain / row["images_per_s"]
        speed, seconds, peak = row["images_per_s"], row["seconds"], row["peak_mib"]
        memory = f"{peak:.0f}" if peak == peak else "n/a (CUDA only)"
        lines.append(f"| {name} | {speed:.1f} | {seconds:.3f} | {slowdown:.2f} | {memory} |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section("cls_step", "Classification step: plain vs L2B", body)
    record = {"benchmark": "cls_step", "device": device.type, "batch": args.batch, "iters": args.iters}
    record.update({f"{key}_images_per_s": row["images_per_s"] for key, row in _keys(rows).items()})
    record["l2b_over_plain_time"] = plain / rows["L2B, forward engine"]["images_per_s"]
    print_json(record)


def _keys(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    names = {
        "plain (mean CE)": "plain",
        "L2B, forward engine": "l2b_forward",
        "L2B, lookahead engine": "l2b_lookahead",
    }
    return {names[name]: row for name, row in rows.items()}


if __name__ == "__main__":
    main()
