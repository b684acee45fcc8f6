"""α/β maps of a trained run, for ``mlbseg figure weights``: the meta weights of one training iteration.

For a few training slices (drawn with a fixed seed among those whose reference has foreground) this does
what one iteration of the run's method does up to the weights, and stops there: the run's augmentation
and five views (MLB-Seg), the prediction, the multi-view pseudo-label, a clean meta batch, the unweighted
consistency/EMA terms, and the meta engine (:func:`mlbseg.meta.bootstrap_weights`) with the run's optimizer
(``optim``). No optimizer step is taken and the run folder is not written to.

The checkpoint ``last`` (the default) holds the optimizer state, so the virtual step uses the run's live
momentum buffers (Adam: moments), as training did; ``final`` has none (the state starts from zero). The
learning rate is the one of the run's last epoch. Slices go through the engine ``train.batch_size`` at a
time, each batch with its own meta batch, as in training (``org`` normalisation makes the weights of one
call sum to 1). Rows show the identity view; for K > 2 labels the label maps (noisy, pseudo, reference)
are class maps scaled to [0, 1] (class / (K − 1)), one grey level per class, and α, β are per pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlbseg.engine.ema import EMATeacher
from mlbseg.engine.optim import build_optimizer, lr_factor
from mlbseg.engine.seeding import make_generator, resolve_device
from mlbseg.engine.streams import IndexStream
from mlbseg.errors import UserError
from mlbseg.seg.config import SegConfig
from mlbseg.seg.data import SliceSet, load_slices, load_training_slices
from mlbseg.seg.evaluate import load_trained_model
from mlbseg.seg.label_space import hard_labels
from mlbseg.seg.step import SegmentationStep
from mlbseg.seg.views import NUM_VIEWS


def weight_map_rows(
    run_dir: Path, checkpoint: str = "last", *, count: int = 4, seed: int = 0, device: str = "auto"
) -> list[dict[str, Any]]:
    """Rows for :func:`mlbseg.figures.weights.weight_map_figure`: one per chosen training slice.

    Returns:
        ``count`` dicts (fewer if fewer training slices have foreground in their reference) of [h, w]
        numpy arrays ``image`` (the first channel), ``noisy``, ``pseudo`` (for ``l2rw``, which has no
        pseudo-label, the hard prediction), ``reference`` (0/1, or class / (K − 1) for K > 2 labels),
        ``alpha``, ``beta`` (zeros for ``l2rw``) and a ``title`` naming the case and slice.

    Raises:
        UserError: No run folder, a method without meta weights (baseline), missing data, or an optimizer
            state that does not fit the network.
    """
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    if count < 1:
        raise UserError(f"--count: must be 1 or more, got {count}")
    torch_device = resolve_device(device)
    cfg, model, state = load_trained_model(run_dir, checkpoint, torch_device)
    if not cfg.method.uses_meta_weights:
        raise UserError(
            f"{run_dir}: method '{cfg.method.name}' learns no α/β weights; weight maps need l2rw or mlbseg"
        )
    prepared = Path(cfg.data.prepared)
    train_set = load_training_slices(prepared, cfg.data.noise, torch_device)
    meta_set = load_slices(prepared, "meta", "mask", torch_device)
    try:
        step = _rebuild_step(
            cfg, model, state, device=torch_device, seed=seed, num_labels=train_set.num_labels
        )
    except ValueError as err:  # torch's message for an optimizer state of other parameters
        raise UserError(
            f"{run_dir} ({checkpoint}): its optimizer state does not fit the run's network "
            f"({' '.join(str(err).split())[:160]}; a last.pt from an earlier mlbseg whose network had other "
            "parameters); draw the maps from final.pt (--checkpoint final), which holds no optimizer state"
        ) from None

    meta_stream = IndexStream(len(meta_set), cfg.method.meta_batch_size, step.generator)
    names = train_set.slice_names()
    chosen = _choose_slices(train_set, count, seed).to(torch_device)
    rows: list[dict[str, Any]] = []
    for index in chosen.split(cfg.train.batch_size):
        rows += _weights_of_batch(step, train_set, meta_set, meta_index=meta_stream.next(), index=index)
    for row, index in zip(rows, chosen.tolist(), strict=True):
        row["title"] = names[index]
    return rows


def live_weight_rows(
    step: SegmentationStep,
    cfg: SegConfig,
    train_set: SliceSet,
    meta_set: SliceSet,
    *,
    epoch: int,
    count: int = 4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The rows of :func:`weight_map_rows` for a run in progress (TensorBoard), leaving it as it was.

    A step of its own around the run's network: its own generator (``seed``), an optimizer with the live
    state (the meta engine reads it and changes nothing), a copy of the teacher; the network's buffers
    (BatchNorm statistics, which the train-mode forwards update) are put back afterwards.

    Args:
        step: The run's step (its network, optimizer and teacher are read).
        cfg: The run's config.
        train_set: The run's training slices.
        meta_set: The run's meta slices.
        epoch: Epochs done (the learning rate is that of the last one).
        count: Training slices (rows), drawn with ``seed`` among those with foreground.
        seed: Of the slice choice, augmentation and meta batch.
    """
    model = step.model
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    teacher = step.teacher.state_dict() if step.teacher is not None else None
    state = {"optimizer": step.optimizer.state_dict(), "teacher": teacher, "epoch": epoch}
    device = train_set.images.device
    chosen = _choose_slices(train_set, count, seed)
    try:
        own = _rebuild_step(cfg, model, state, device=device, seed=seed, num_labels=train_set.num_labels)
        meta_stream = IndexStream(len(meta_set), cfg.method.meta_batch_size, own.generator)
        rows: list[dict[str, Any]] = []
        for index in chosen.to(device).split(cfg.train.batch_size):
            rows += _weights_of_batch(own, train_set, meta_set, meta_index=meta_stream.next(), index=index)
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    names = train_set.slice_names()
    for row, index in zip(rows, chosen.tolist(), strict=True):
        row["title"] = names[index]
    return rows


def _rebuild_step(
    cfg: SegConfig,
    model: torch.nn.Module,
    state: dict[str, Any],
    *,
    device: torch.device,
    seed: int,
    num_labels: int,
) -> SegmentationStep:
    """The run's step: its optimizer with the checkpoint's state (if any) and the EMA teacher (if used)."""
    model.train()  # the mode of a training step (BatchNorm on batch statistics)
    optimizer = build_optimizer(model, cfg.optim)
    if state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    last_epoch = max(int(state.get("epoch") or 0) - 1, 0)
    for group in optimizer.param_groups:
        group["lr"] = cfg.optim.lr * lr_factor(last_epoch, cfg.schedule, cfg.train.epochs)
    teacher = None
    if cfg.method.uses_ema:
        teacher = EMATeacher(model, cfg.method.ema.decay)
        if state.get("teacher") is not None:
            teacher.load_state_dict(state["teacher"])
    generator = make_generator(seed, device)
    return SegmentationStep(
        model,
        optimizer,
        method=cfg.method,
        data=cfg.data,
        grad_clip_norm=cfg.optim.grad_clip_norm,
        generator=generator,
        teacher=teacher,
        num_labels=num_labels,
    )


def _choose_slices(train_set: SliceSet, count: int, seed: int) -> torch.Tensor:
    """Up to ``count`` slice indices (sorted), drawn with ``seed`` among slices with foreground."""
    has_foreground = train_set.reference.flatten(1).any(dim=1).cpu()
    candidates = torch.nonzero(has_foreground).flatten()
    if len(candidates) == 0:
        candidates = torch.arange(len(train_set))
    generator = torch.Generator().manual_seed(seed)
    picked = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    return picked.sort().values


def _weights_of_batch(
    step: SegmentationStep,
    train_set: SliceSet,
    meta_set: SliceSet,
    *,
    meta_index: torch.Tensor,
    index: torch.Tensor,
) -> list[dict[str, Any]]:
    """α, β and the maps behind them for the slices ``index``, as the step computes them (no update)."""
    batch = step.expand(*train_set.batch(index))
    meta = step.expand(*meta_set.batch(meta_index))
    probs = step.probabilities(batch.images)
    alpha, beta, pseudo = step.meta_weights(batch, meta, probs, step.extra_loss(batch))
    shown = pseudo if pseudo is not None else hard_labels(probs)
    beta = beta if beta is not None else torch.zeros_like(alpha)
    stride = NUM_VIEWS if batch.views is not None else 1
    top_class = train_set.num_labels - 1
    maps = {
        "image": batch.images,
        "noisy": batch.labels / top_class,
        "pseudo": shown / top_class,
        "reference": batch.reference / top_class,
        "alpha": alpha,
        "beta": beta,
    }
    # [V, C, h, w] images, [V, 1, h, w] labels, α/β [V, 1, h, w] (binary) or [V, h, w] (K > 2): first map
    return [
        {key: _first_map(value, row) for key, value in maps.items()}
        for row in range(0, len(index) * stride, stride)
    ]


def _first_map(value: torch.Tensor, row: int) -> np.ndarray:
    """The first [h, w] map of ``value[row]`` (any of [V, C, h, w] or [V, h, w]) as float32 numpy."""
    maps = value.reshape(value.shape[0], -1, *value.shape[-2:])  # [V, C, h, w]
    return maps[row, 0].detach().float().cpu().numpy().astype(np.float32)
