"""Slice-wise prediction of whole volumes and the validation score used during training."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from mlbseg.evaluation.metrics import volume_dice
from mlbseg.evaluation.resample import probabilities_to_original
from mlbseg.seg.data import Volume


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, images: torch.Tensor, chunk_size: int = 32, amp_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Foreground probabilities of every slice, in eval mode (the model's mode is restored after).

    Args:
        model: Maps [B, 1, h, w] images to [B, 1, h, w] logits.
        images: [S, 1, h, w] float32 slices on the model's device.
        chunk_size: Slices per forward pass.
        amp_dtype: Autocast dtype on CUDA, or None for full precision.

    Returns:
        [S, h, w] float32 probabilities in [0, 1].
    """
    was_training = model.training
    model.eval()
    device_type = images.device.type
    autocast = (
        torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    try:
        with autocast:
            chunks = [model(chunk).float().sigmoid() for chunk in images.split(chunk_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks)[:, 0]


def validation_dice(
    model: torch.nn.Module, volumes: Sequence[Volume], amp_dtype: torch.dtype | None = None
) -> float:
    """Mean per-volume 3-D Dice at original resolution over ``volumes`` (docs/evaluation.md §1)."""
    scores = []
    for volume in volumes:
        probs = predict_probabilities(model, volume.images, amp_dtype=amp_dtype)
        original = probabilities_to_original(probs, volume.mask_original.shape[1:])
        prediction = np.asarray(torch.as_tensor(original).cpu() > 0.5)
        scores.append(volume_dice(prediction, volume.mask_original > 0))
    return float(np.mean(scores))
