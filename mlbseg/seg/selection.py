"""Pixel selection and label correction rules of the noisy-label methods, as pure tensor functions.

Each function implements the defining rule of one method on plain tensors (no networks, no optimizer), so
that it can be tested on a hand-made batch; :class:`mlbseg.seg.step.SegmentationStep` applies them.

Shapes: per-pixel costs are those of the label space (binary ``[V, 1, h, w]``, K > 2 ``[V, h, w]``); the
selection functions take any shape and return a bool mask of the same shape. Class probabilities are
``[V, K, h, w]`` over every class (binary: background and foreground, :func:`class_probabilities`) and
labels are class indices ``[V, h, w]`` int64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def forget_rate(epoch: int, *, final_rate: float, ramp_epochs: int) -> float:
    """Co-teaching's forget rate τ·min(T / T_k, 1) in (0-based) epoch T (Han et al., NeurIPS 2018, Eq. 1).

    The share of the batch dropped as probably mislabelled: none in the first epoch, growing linearly to
    ``final_rate`` τ at epoch ``ramp_epochs`` T_k, as the network still fits the clean labels first.

    Example:
        >>> [forget_rate(epoch, final_rate=0.2, ramp_epochs=4) for epoch in (0, 2, 4, 9)]
        [0.0, 0.1, 0.2, 0.2]
    """
    if ramp_epochs == 0:
        return final_rate
    return final_rate * min(epoch / ramp_epochs, 1.0)


def small_loss_mask(costs: Tensor, keep_share: float) -> Tensor:
    """The ``keep_share`` of the entries of ``costs`` with the smallest cost (the small-loss criterion).

    Exactly ⌊keep_share · n⌋ of the n entries are kept (at least one), the cheapest; equal costs go to
    the earlier entry in memory order, so the selection is deterministic.

    Args:
        costs: Per-pixel costs of any shape (detached; no gradient is needed).
        keep_share: 1 − forget rate, in (0, 1].

    Returns:
        Bool mask shaped like ``costs``.
    """
    flat = costs.detach().flatten()
    count = max(1, int(keep_share * flat.numel()))
    kept = torch.argsort(flat, stable=True)[:count]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[kept] = True
    return mask.view(costs.shape)


def coteaching_masks(costs: Tensor, peer_costs: Tensor, keep_share: float) -> tuple[Tensor, Tensor]:
    """Co-teaching's cross update (Han et al., NeurIPS 2018, Algorithm 1, steps 4–6).

    Each network keeps its small-loss share of the batch's pixels, and its *peer* is updated on them.

    Args:
        costs: Per-pixel costs of the first network.
        peer_costs: The peer's costs, same shape.
        keep_share: 1 − the forget rate of the epoch (:func:`forget_rate`).

    Returns:
        (pixels the first network trains on: the peer's small-loss pixels, pixels the peer trains on).
    """
    return small_loss_mask(peer_costs, keep_share), small_loss_mask(costs, keep_share)


def trinet_masks(costs: list[Tensor], predictions: list[Tensor], keep_share: float) -> list[Tensor]:
    """Tri-Net's selection: each network trains on the pixels its two peers select together.

    Zhang, Yu, Hu, Lv & Gu, "Robust Medical Image Segmentation from Non-expert Annotations with
    Tri-network", MICCAI 2020: each pair of networks selects the pixels for the third by the consensus
    of their predictions and their small losses. A pixel trains network i when both peers j, k predict
    the same class there and it is among the small-loss share of each of them.

    Args:
        costs: Three per-pixel cost maps of the same shape.
        predictions: The three networks' predicted class maps, each with as many entries as a cost map.
        keep_share: 1 − the forget rate of the epoch (:func:`forget_rate`).

    Returns:
        Three bool masks shaped like the costs, the one of network i chosen by the other two.
    """
    small = [small_loss_mask(cost, keep_share) for cost in costs]
    shape = costs[0].shape
    masks = []
    for index in range(3):
        first, second = (peer for peer in range(3) if peer != index)
        agree = (predictions[first] == predictions[second]).reshape(shape)
        masks.append(agree & small[first] & small[second])
    return masks


def masked_mean(costs: Tensor, mask: Tensor) -> Tensor:
    """The mean cost over the selected pixels (0 when none is selected), a scalar with gradients."""
    return (costs * mask).sum() / mask.sum().clamp_min(1)


def confident_label_errors(probs: Tensor, labels: Tensor) -> Tensor:
    """Pixels that confident learning counts as label errors: the off-diagonal of the confident joint.

    Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021
    (§3.1, the C_{ỹ,y*} method), per pixel as Zhang et al. use it for segmentation (MICCAI 2020). The
    threshold of class j is the mean predicted probability of j over the pixels labelled j,
    t_j = mean_{ỹ = j} p_j. A pixel's confident class is the most probable of the classes whose probability
    reaches their threshold; the pixel is a label error when it has one and it is not its label. Classes
    that no pixel is labelled with have no threshold and are never confident.

    Args:
        probs: [V, K, h, w] class probabilities (detached).
        labels: [V, h, w] int64 given labels.

    Returns:
        [V, h, w] bool, True at the likely label errors.
    """
    classes = probs.shape[1]
    one_hot = torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).to(probs.dtype)  # [V, K, h, w]
    counts = one_hot.sum(dim=(0, 2, 3))  # [K]
    thresholds = (probs * one_hot).sum(dim=(0, 2, 3)) / counts.clamp_min(1)  # [K]
    thresholds = torch.where(counts > 0, thresholds, torch.full_like(thresholds, float("inf")))
    confident = probs >= thresholds[None, :, None, None]  # [V, K, h, w]
    confident_class = torch.where(confident, probs, torch.full_like(probs, -1.0)).argmax(dim=1)  # [V, h, w]
    return confident.any(dim=1) & (confident_class != labels)


def smoothed_targets(labels: Tensor, errors: Tensor, classes: int, epsilon: float) -> Tensor:
    """Soft targets with label smoothing at the label errors only (CLSLSR's spatial label smoothing).

    Zhang et al., "Characterizing Label Errors: Confident Learning for Noisy-Labeled Image Segmentation",
    MICCAI 2020: at a pixel flagged by :func:`confident_label_errors` the one-hot label y becomes
    (1 − ε)·y + ε/(K − 1)·(1 − y); every other pixel keeps its hard label.

    Args:
        labels: [V, h, w] int64 given labels.
        errors: [V, h, w] bool label errors.
        classes: K, background included.
        epsilon: ε, the probability mass moved off the given label.

    Returns:
        [V, K, h, w] float soft targets (each pixel sums to 1).
    """
    one_hot = torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).float()  # [V, K, h, w]
    smooth = (1 - epsilon) * one_hot + epsilon / (classes - 1) * (1 - one_hot)
    return torch.where(errors[:, None], smooth, one_hot)
