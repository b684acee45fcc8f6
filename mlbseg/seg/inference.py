"""Slice-wise prediction of whole volumes and the validation score used during training."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from mlbseg.evaluation.metrics import mean_class_dice, volume_labels
from mlbseg.evaluation.resample import probabilities_to_original
from mlbseg.seg.data import Volume


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[B, C_out, h, w] logits -> probabilities: sigmoid of one foreground logit, softmax over K logits."""
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, images: torch.Tensor, chunk_size: int = 32, amp_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Probabilities of every slice, in eval mode (the model's mode is restored after).

    Args:
        model: Maps [B, C, h, w] images to [B, C_out, h, w] logits (C_out = 1: one foreground logit of
            binary data; C_out = K: one logit per label).
        images: [S, C, h, w] float32 slices on the model's device.
        chunk_size: Slices per forward pass.
        amp_dtype: Autocast dtype on CUDA, or None for full precision.

    Returns:
        [S, C_out, h, w] float32 probabilities in [0, 1]: the sigmoid of the logit for C_out = 1, the
        softmax over the K logits otherwise (computed in float32 after an autocast forward).
    """
    was_training = model.training
    model.eval()
    device_type = images.device.type
    autocast = (
        torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    try:
        with autocast:
            chunks = [logits_to_probabilities(model(chunk).float()) for chunk in images.split(chunk_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def validation_dice(
    model: torch.nn.Module, volumes: Sequence[Volume], amp_dtype: torch.dtype | None = None
) -> float:
    """Mean per-volume 3-D Dice at original resolution over ``volumes`` (docs/evaluation.md §1).

    Per volume the Dice is the mean over its foreground classes (the one class of binary data); the
    classes are those of the model's outputs (1 logit: binary; K logits: labels 1..K-1).
    """
    scores = []
    for volume in volumes:
        probs = predict_probabilities(model, volume.images, amp_dtype=amp_dtype)  # [S, C_out, h, w]
        labels = volume_labels(probs, volume.mask_original.shape[1:]).cpu()  # [S, H, W]
        scores.append(mean_class_dice(labels, volume.mask_original, probs.shape[1]))
    return float(np.mean(scores))


def labels_at_original_resolution(
    model: torch.nn.Module, volume: Volume, amp_dtype: torch.dtype | None = None
) -> np.ndarray:
    """The predicted label values [S, H, W] of ``volume`` on its original grid, exactly as ``evaluate``.

    Probabilities on the prepared grid (eval mode), then :func:`mlbseg.evaluation.metrics.volume_labels`
    (resized back per channel, thresholded or argmax-ed): docs/evaluation.md §1.
    """
    probs = predict_probabilities(model, volume.images, amp_dtype=amp_dtype)
    return volume_labels(probs, volume.mask_original.shape[1:]).cpu().numpy()


def image_at_original_resolution(volume: Volume) -> np.ndarray:
    """The first image channel [S, H, W] of ``volume`` resized back to its original grid (for display)."""
    return probabilities_to_original(volume.images[:, :1].float().cpu(), volume.mask_original.shape[1:])[
        :, 0
    ].numpy()
