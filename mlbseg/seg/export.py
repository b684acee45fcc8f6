"""``mlbseg export model``: a trained network as a ``torch.export`` program that needs only torch to run.

The file ``OUT.pt2`` (:func:`torch.export.save`) holds the network of a checkpoint in eval mode, traced on
an example input [2, C, size, size] with a **dynamic batch size** (1 and more; the example has 2 slices
because ``torch.export`` specialises a dimension whose example size is 1). Its ``extra_files`` hold
``mlbseg_data.json`` (:data:`DATA_FILE`), what a user needs to preprocess and decode without mlbseg:

- ``slice_size``, ``normalization``, ``channels``, ``labels``, ``label_mode``: the model's data record
  (the checkpoint's ``data``, docs/design.md §2.3);
- ``input``: ``[N, C, size, size] float32``, each channel of a volume clipped to its own 0.5th–99.5th
  percentile window and scaled to [0, 1], every axial slice resized (antialiased bilinear) to the size;
- ``output`` and ``activation``: ``[N, C_out, size, size]`` logits; ``sigmoid`` of the one foreground logit
  (> 0.5 is foreground) for binary data, ``softmax`` over K logits (argmax is the label value) otherwise;
- ``mlbseg_version``, ``run`` and ``checkpoint``: where it came from.

Loading needs only torch::

    extra = {"mlbseg_data.json": ""}
    program = torch.export.load("model.pt2", extra_files=extra)
    logits = program.module()(slices)  # slices [N, C, size, size] float32
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mlbseg import __version__
from mlbseg.engine.atomic import atomic_file
from mlbseg.errors import UserError
from mlbseg.seg.evaluate import load_trained_model
from mlbseg.seg.model import output_channels

DATA_FILE = "mlbseg_data.json"
SUFFIX = ".pt2"
MAX_BATCH = 4096  # upper bound of the dynamic batch dimension


def _check_paths(run_dir: Path, out: Path, overwrite: bool) -> None:
    if out.suffix != SUFFIX:
        raise UserError(f"{out}: the exported program's file must end in {SUFFIX}")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_file():
        raise UserError(f"{out}: exists and is not a file; remove it or choose another output")


def export_description(record: dict[str, Any], *, run_dir: Path, checkpoint: str) -> dict[str, Any]:
    """The ``mlbseg_data.json`` of an exported model: its data record plus the input/output contract."""
    size, channels, labels = int(record["slice_size"]), len(record["channels"]), record["labels"]
    outputs = output_channels(len(labels))
    return {
        **record,
        "input": f"[N, {channels}, {size}, {size}] float32 in [0, 1]: per channel the volume's 0.5-99.5 "
        "percentile window scaled to [0, 1], each axial slice resized (antialiased bilinear) to the size",
        "output": f"[N, {outputs}, {size}, {size}] float32 logits",
        "activation": "sigmoid" if outputs == 1 else "softmax",
        "mlbseg_version": __version__,
        "run": str(run_dir),
        "checkpoint": checkpoint,
    }


def export_model(
    run_dir: Path,
    out: Path,
    *,
    checkpoint: str = "final",
    prepared: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the network of ``checkpoint`` as a ``torch.export`` program to ``out`` (atomically).

    Args:
        run_dir: A run folder written by ``mlbseg train``.
        out: The ``.pt2`` file to write.
        checkpoint: ``final``, ``last`` or a checkpoint path.
        prepared: The run's prepared dataset, only for a checkpoint without a data record.
        overwrite: Replace an existing ``out``.

    Returns:
        ``out``.

    Raises:
        UserError: ``out`` not ending in ``.pt2`` or existing without ``overwrite``, no run folder, a missing
            or unreadable checkpoint (all before anything is written).
    """
    _check_paths(run_dir, out, overwrite)
    _, model, state = load_trained_model(run_dir, checkpoint, torch.device("cpu"), prepared)
    record = state["data"]
    size, channels = int(record["slice_size"]), len(record["channels"])
    example = torch.zeros(2, channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    description = export_description(record, run_dir=run_dir, checkpoint=checkpoint)
    with atomic_file(out) as file:
        torch.export.save(program, file, extra_files={DATA_FILE: json.dumps(description, indent=1)})
    return out
