"""Test accuracy of a classification model: every epoch during training, and ``mlbseg classify evaluate``.

As in the paper, the reported number is top-1 accuracy on the clean test set (docs/reference.md §1.6), but
with no model selection on it: ``evaluate`` scores the checkpoint the user names, ``final`` (the last epoch's
weights) by default, and writes ``RUN_DIR/summary.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mlbseg.cls.config import ClsConfig, dataset_kwargs
from mlbseg.cls.datasets import build_datasets
from mlbseg.cls.models import build_classifier
from mlbseg.engine.atomic import write_atomic
from mlbseg.engine.checkpoint import load_run_checkpoint
from mlbseg.engine.seeding import amp_dtype_for, resolve_device
from mlbseg.errors import UserError


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """The test set in order (its transform is deterministic), kept alive across epochs."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


@torch.no_grad()
def evaluate_accuracy(
    model: torch.nn.Module, loader: DataLoader, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Top-1 accuracy (0–1), mean cross-entropy and the number of images, over ``loader``.

    The model is put in eval mode; counts stay on the device until the single read at the end.
    """
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, summed CE, images
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    for images, labels, _ in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            logits = model(images).float()  # [N, K]
        correct = (logits.argmax(dim=1) == labels).sum()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        sums += torch.stack([correct.double(), loss.double(), torch.full_like(loss, len(labels)).double()])
    correct, loss, count = sums.tolist()
    if count == 0:
        raise UserError("the test set is empty; check the dataset's test list")
    return {"accuracy": correct / count, "loss": loss / count, "n": int(count)}


def load_trained_model(
    run_dir: Path, checkpoint: str, device: torch.device
) -> tuple[ClsConfig, torch.nn.Module, dict[str, Any]]:
    """The run's config and its model with the weights of ``checkpoint`` (final, last or a path)."""
    cfg, state = load_run_checkpoint(ClsConfig, run_dir, checkpoint, map_location=device)
    num_classes = state.get("num_classes") or state["model"][_head_key(state["model"])].shape[0]
    model = build_classifier(dataclasses.replace(cfg.model, weights=None), num_classes).to(device)  # below
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(
            f"{run_dir} ({checkpoint}): weights do not fit the run's model config ({cfg.model.arch})"
        ) from None
    return cfg, model.eval(), state


def _head_key(weights: dict[str, torch.Tensor]) -> str:
    """The classifier head's bias (``linear.bias`` or ``fc.bias``), whose length is the class count."""
    return next(key for key in ("linear.bias", "fc.bias") if key in weights)


def evaluate_run(
    run_dir: Path,
    checkpoint: str = "final",
    *,
    root: str | None = None,
    device: str = "auto",
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Score the test set with ``checkpoint`` and write ``RUN_DIR/summary.json``; returns its contents.

    Args:
        run_dir: A folder written by ``mlbseg classify train``.
        checkpoint: ``final``, ``last`` or the path of a checkpoint.
        root: The dataset folder; default: the one the run was trained on.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        num_workers: DataLoader workers; default: the run's ``train.num_workers``.
    """
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    torch_device = resolve_device(device)
    cfg, model, state = load_trained_model(run_dir, checkpoint, torch_device)
    data = build_datasets(cfg.data.dataset, root or cfg.data.root, **dataset_kwargs(cfg))
    workers = cfg.train.num_workers if num_workers is None else num_workers
    loader = eval_loader(data.test, cfg.train.eval_batch_size, workers, torch_device)
    amp = amp_dtype_for(torch_device) if cfg.train.amp else None
    result = evaluate_accuracy(model, loader, amp)
    summary = {
        **result,
        "run": str(run_dir),
        "checkpoint": checkpoint,
        "epoch": state.get("epoch"),
        "dataset": cfg.data.dataset,
        "method": cfg.method.name,
        "noise": cfg.data.noise,
        "noise_param": cfg.data.noise_rate,
        "noise_rate": data.noise_rate,
        "seed": cfg.train.seed,
    }
    text = json.dumps(summary, indent=2) + "\n"
    write_atomic(run_dir / "summary.json", lambda file: file.write(text.encode()))
    return summary
