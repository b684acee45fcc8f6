"""Pixel selection and label correction rules of the noisy-label methods, as pure tensor functions.

Each function implements the defining rule of one method on plain tensors or numbers (no networks, no
optimizer), so that it can be tested on a hand-made batch or curve; :class:`mlbseg.seg.step.SegmentationStep`
and the run (:mod:`mlbseg.seg.trainer`) apply them.

Shapes: per-pixel costs are those of the label space (binary ``[V, 1, h, w]``, K > 2 ``[V, h, w]``); the
selection functions take any shape and return a bool mask of the same shape. Class probabilities are
``[V, K, h, w]`` over every class (binary: background and foreground, :func:`class_probabilities`) and
labels are class indices ``[V, h, w]`` int64.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import OptimizeWarning, curve_fit
from torch import Tensor

# ADELE's curve has three parameters: fewer epochs than this cannot be fitted.
MIN_FIT_EPOCHS = 3


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


def class_overlaps(prediction: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """Per foreground class, the pixels in both and in either of a prediction and its labels.

    Summed over an epoch's batches they give the epoch's training IoU of every class (ADELE's curve,
    :func:`early_learning_turning_epoch`): intersection / union.

    Args:
        prediction: [V, 1, h, w] predicted class indices (any dtype).
        labels: [V, 1, h, w] class indices of the labels trained on.
        num_labels: K, background included.

    Returns:
        [2, K − 1] int64: row 0 the intersections, row 1 the unions of classes 1..K−1 (pixel counts).
    """
    classes = torch.arange(1, num_labels, device=labels.device)[:, None]  # [K − 1, 1]
    predicted = prediction.flatten()[None] == classes  # [K − 1, P]
    labelled = labels.flatten()[None] == classes
    return torch.stack([(predicted & labelled).sum(dim=1), (predicted | labelled).sum(dim=1)])


def early_learning_curve(epochs: np.ndarray, scale: float, rate: float, power: float) -> np.ndarray:
    """ADELE's model of a class's training IoU in epoch t: f(t) = a·(1 − exp(−b·t^c)), a, b, c ≥ 0."""
    return scale * (1.0 - np.exp(-rate * epochs**power))


def early_learning_slope(epochs: np.ndarray, scale: float, rate: float, power: float) -> np.ndarray:
    """f'(t) = a·b·c·t^(c − 1)·exp(−b·t^c), the derivative of :func:`early_learning_curve`."""
    return scale * rate * power * epochs ** (power - 1) * np.exp(-rate * epochs**power)


def fit_early_learning_curve(iou: Sequence[float]) -> tuple[float, float, float] | None:
    """Least-squares fit of :func:`early_learning_curve` to the IoU of epochs 1..T (a in [0, 1]).

    Deterministic (scipy's trust-region reflective solver from a = max IoU, b = c = 1); None for fewer
    than :data:`MIN_FIT_EPOCHS` epochs, for a class never predicted (IoU 0 in every epoch: nothing has
    been learnt, so nothing has turned) or when the solver does not converge.
    """
    values = np.asarray(iou, dtype=np.float64)
    if len(values) < MIN_FIT_EPOCHS or not values.any():
        return None
    epochs = np.arange(1, len(values) + 1, dtype=np.float64)
    start = (min(max(float(values.max()), 1e-3), 1.0), 1.0, 1.0)
    try:
        with warnings.catch_warnings():  # an exact fit has no covariance estimate; only the fit is used
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                early_learning_curve, epochs, values, p0=start, bounds=([0, 0, 0], [1, np.inf, np.inf])
            )
    except (RuntimeError, ValueError):  # no convergence
        return None
    return float(params[0]), float(params[1]), float(params[2])


def early_learning_turning_epoch(iou: Sequence[float], slope_drop: float) -> int | None:
    """ADELE's turning point: the first epoch whose fitted slope has dropped by ``slope_drop`` r.

    Liu, Liu, Zhu, Shen & Fernandez-Granda, "Adaptive Early-Learning Correction for Segmentation from
    Noisy Annotations", CVPR 2022, §4.1: the training IoU of a class (against the noisy labels) is fitted
    with f(t) = a(1 − exp(−b·t^c)) (:func:`fit_early_learning_curve`), and memorization starts at the first
    epoch t where the relative change of the slope, |f'(1) − f'(t)| / |f'(1)|, exceeds r (the paper's 0.9).
    Only a falling slope counts, f'(t) < (1 − r)·f'(1): a curve whose slope grows (a late start) has not
    turned. The label correction of that class starts once the turning point lies within the epochs seen.

    Args:
        iou: The class's training IoU in epochs 1..T (0-based list).
        slope_drop: r in (0, 1).

    Returns:
        The 1-based turning epoch t ≤ T, or None when the curve has not turned yet (or cannot be fitted,
        or does not rise at epoch 1).

    Example:
        >>> curve = 0.8 * (1 - np.exp(-0.5 * np.arange(1, 11)))  # f'(t)/f'(1) = e^{-(t-1)/2}
        >>> early_learning_turning_epoch(curve[:5], 0.9), early_learning_turning_epoch(curve, 0.9)
        (None, 6)
    """
    params = fit_early_learning_curve(iou)
    if params is None:
        return None
    slopes = early_learning_slope(np.arange(1, len(iou) + 1, dtype=np.float64), *params)
    if not slopes[0] > 0:
        return None
    turned = np.flatnonzero(slopes < (1.0 - slope_drop) * slopes[0])
    return int(turned[0]) + 1 if turned.size else None


def early_learning_correction(
    labels: Tensor, probs: Tensor, corrected_classes: Tensor, confidence: float
) -> Tensor:
    """ADELE's label correction: labels of the corrected classes follow the model where it is confident.

    Liu et al., CVPR 2022, §4.1: after a class's turning point its annotation is replaced by the model's
    prediction wherever the model's probability exceeds τ (the paper's 0.8). A pixel whose most probable
    class d has probability above τ (τ ≥ 0.5 makes d unique) takes label d when d or its current label is
    a corrected class: the corrected class c grows where the model is sure of c, and gives up its pixels
    where the model is sure of another class (the background included). Other pixels keep their label.

    Args:
        labels: [V, h, w] int64 current labels.
        probs: [V, K, h, w] class probabilities (binary: background and foreground).
        corrected_classes: [K] bool, the classes past their turning point.
        confidence: τ in [0.5, 1).

    Returns:
        [V, h, w] int64 corrected labels.
    """
    best, predicted = probs.max(dim=1)  # [V, h, w] each
    corrected = corrected_classes.to(labels.device)
    change = (best > confidence) & (corrected[predicted] | corrected[labels])
    return torch.where(change, predicted, labels)


def class_log_probabilities(logits: Tensor) -> Tensor:
    """[V, K, h, w] log-probabilities of every class from logits [V, C_out, h, w] (binary: C_out = 1, K = 2).

    Binary data: log σ(−z) (the background) and log σ(z); K > 2: log-softmax over the K logits.
    """
    if logits.shape[1] == 1:
        return torch.cat([torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits)], 1)
    return logits.log_softmax(dim=1)


def kl_divergence_map(target_log_probs: Tensor, log_probs: Tensor) -> Tensor:
    """Per-pixel KL(target ‖ p) = Σ_k t_k (log t_k − log p_k) of class log-probabilities [V, K, h, w].

    Returns:
        [V, h, w], ≥ 0; 0 where the two distributions are equal.
    """
    return (target_log_probs.exp() * (target_log_probs - log_probs)).sum(dim=1)


def pixel_divergence(log_probs: Tensor, peer_log_probs: Tensor) -> Tensor:
    """The symmetric KL ½(KL(p ‖ q) + KL(q ‖ p)) of two networks' class probabilities, per pixel.

    Args:
        log_probs: [V, K, h, w] the first network's class log-probabilities (:func:`class_log_probabilities`).
        peer_log_probs: The peer's, same shape.

    Returns:
        [V, h, w], ≥ 0; 0 where the two predictions are equal.
    """
    return 0.5 * (kl_divergence_map(log_probs, peer_log_probs) + kl_divergence_map(peer_log_probs, log_probs))


def noisiness_scores(
    clean_log_probs: Tensor, noisy_log_probs: Tensor, labels: Tensor, divergence_scale: float
) -> Tensor:
    """DAST's divergence-aware noisiness score of every sample's label.

    Yang, Wang, Sun, Luo, Sun, Li, Wang & Zhang, "Learning COVID-19 Pneumonia Lesion Segmentation from
    Imperfect Annotations via Divergence-Aware Selective Training", IEEE JBHI 2022 (DAST). The clean
    branch, trained on clean labels only, scores how far a noisy label lies from what it predicts: the
    per-pixel cross-entropy of its prediction against the label, weighted by exp(−ξ·D) where D is the
    two branches' :func:`pixel_divergence` (the pixels where the branches disagree, i.e. uncertain ones,
    count less), averaged over the sample's pixels. The higher the score, the noisier the label.

    Args:
        clean_log_probs: [V, K, h, w] the clean branch's class log-probabilities (detached).
        noisy_log_probs: [V, K, h, w] the noisy branch's (detached).
        labels: [V, h, w] int64 the noisy labels.
        divergence_scale: ξ ≥ 0 (PyMIC's 16).

    Returns:
        [V] float scores ≥ 0.
    """
    cross_entropy = -clean_log_probs.gather(1, labels[:, None])[:, 0]  # [V, h, w]
    weights = torch.exp(-divergence_scale * pixel_divergence(clean_log_probs, noisy_log_probs))
    return (weights * cross_entropy).flatten(1).mean(dim=1)


def ranked_extremes(ranking: Tensor, scores: Tensor, share: float) -> tuple[Tensor, Tensor]:
    """DAST's selection: which scores are among the top, and which among the bottom, ``share`` of a queue.

    Yang et al., IEEE JBHI 2022: each sample's noisiness score is ranked against those of the last samples
    (a FIFO memory, the current ones included); the top share are *severely* noisy, the bottom share
    *slightly* noisy. With n scores in ``ranking``, a score is in the top share when fewer than
    ⌊share · n⌋ of them lie strictly above it, in the bottom share when fewer than ⌊share · n⌋ lie strictly
    below it (equal scores do not count), so a queue of fewer than 1 / share scores selects nothing.

    Args:
        ranking: [n] the queue's scores, the current ones included.
        scores: [B] the scores to rank (the current samples').
        share: In [0, 0.5] (top and bottom then share only scores tied with the rest of the queue).

    Returns:
        (top [B] bool, bottom [B] bool), on ``scores``' device (no host sync).
    """
    count = int(share * ranking.numel())
    above = (ranking[None, :] > scores[:, None]).sum(dim=1)  # [B]
    below = (ranking[None, :] < scores[:, None]).sum(dim=1)
    return above < count, below < count


def refined_labels(clean_log_probs: Tensor, noisy_log_probs: Tensor, labels: Tensor) -> Tensor:
    """DAST's refined label of a slightly noisy sample: the mean of three one-hot maps.

    Yang et al., IEEE JBHI 2022: the clean branch's and the noisy branch's predicted classes and the noisy
    label vote with equal weights; :func:`sharpen` then turns the vote into the supplementary target.

    Args:
        clean_log_probs: [V, K, h, w] the clean branch's class log-probabilities (detached).
        noisy_log_probs: [V, K, h, w] the noisy branch's (detached).
        labels: [V, h, w] int64 the noisy labels.

    Returns:
        [V, K, h, w] float, each pixel's entries in {0, 1/3, 2/3, 1}, summing to 1.
    """
    classes = clean_log_probs.shape[1]
    votes = torch.stack(
        [clean_log_probs.argmax(dim=1), noisy_log_probs.argmax(dim=1), labels]
    )  # [3, V, h, w]
    return torch.nn.functional.one_hot(votes, classes).float().mean(dim=0).movedim(-1, 1)


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """Temperature sharpening p_k^(1/T) / Σ_j p_j^(1/T) over the classes (dim 1), T in (0, 1] sharpens.

    DAST sharpens its refined labels with T = 0.5 (Yang et al., IEEE JBHI 2022). For two classes this is
    PyMIC's p^(1/T) / (p^(1/T) + (1 − p)^(1/T)).

    Example:
        >>> [round(value, 4) for value in sharpen(torch.tensor([[2 / 3, 1 / 3]]), 0.5)[0].tolist()]
        [0.8, 0.2]
    """
    powered = probs ** (1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


def sigmoid_rampup(epoch: int, ramp_epochs: int) -> float:
    """The sigmoid ramp-up exp(−5(1 − t)²), t = min(epoch / ramp_epochs, 1), of (0-based) ``epoch``.

    Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017; DAST ramps its two
    regularisers' weights with it (as PyMIC does). ``ramp_epochs`` 0: 1 from the start.

    Example:
        >>> [round(sigmoid_rampup(epoch, 4), 4) for epoch in (0, 2, 4, 9)]
        [0.0067, 0.2865, 1.0, 1.0]
    """
    if ramp_epochs == 0:
        return 1.0
    progress = min(epoch / ramp_epochs, 1.0)
    return float(np.exp(-5.0 * (1.0 - progress) ** 2))
