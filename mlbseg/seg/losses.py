"""Noise-robust segmentation losses: GCE, MAE, noise-robust Dice and the T-Loss.

Every loss takes the network's logits and the labels as class maps:

- binary data (one foreground logit): logits ``[N, 1, H, W]``, targets float 0/1 ``[N, 1, H, W]``;
- K > 2 labels: logits ``[N, K, H, W]``, targets one-hot float ``[N, K, H, W]``.

The probability of the labelled class is p_t = σ(z) or 1 − σ(z) (binary) and softmax(z)_y (K classes); the
pixel's cross-entropy is −log p_t, so p_t^q = exp(−q·CE) is computed from the stable cross-entropy.
Per-pixel losses return ``[N, H, W]``; per-image losses (noise-robust Dice, T-Loss) return ``[N]``.
:class:`RobustLoss` is one of them as a training method's loss of the noisy labels: the mean over the
batch (and pixels), with the T-Loss's learnable ν as its parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NR_DICE_EPS = 1e-5


def pixel_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel cross-entropy ``[N, H, W]`` of logits and class maps (binary: BCE-with-logits)."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")[:, 0]
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1)


def class_probabilities(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Probabilities and targets over every class ``[N, C, H, W]`` (binary: C = 2, background first)."""
    if logits.shape[1] == 1:
        probs = logits.sigmoid()
        return torch.cat([1 - probs, probs], dim=1), torch.cat([1 - targets, targets], dim=1)
    return logits.softmax(dim=1), targets


def foreground_probabilities(logits: Tensor) -> Tensor:
    """Foreground probability maps ``[N, C_fg, H, W]``: σ(z) for binary, softmax classes 1..K−1 otherwise."""
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)[:, 1:]


def gce_loss(logits: Tensor, targets: Tensor, q: float = 0.7) -> Tensor:
    """Generalized cross-entropy (1 − p_t^q) / q per pixel, ``[N, H, W]``.

    Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
    NeurIPS 2018: q → 0 gives the cross-entropy, q = 1 the MAE (up to a factor 2); the paper's q = 0.7.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"GCE needs 0 < q <= 1, got {q}")
    return -torch.expm1(-q * pixel_cross_entropy(logits, targets)) / q


def mae_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean absolute error ‖t − p‖₁ over the classes per pixel, ``[N, H, W]`` (= 2·(1 − p_t) for hard labels).

    Ghosh, Kumar & Sastry, "Robust Loss Functions under Label Noise for Deep Neural Networks", AAAI 2017:
    a symmetric loss, so minimising it under uniform label noise gives the clean-label minimiser.
    """
    probs, classes = class_probabilities(logits, targets)
    return (classes - probs).abs().sum(dim=1)


def nr_dice_loss(logits: Tensor, targets: Tensor, gamma: float = 1.5) -> Tensor:
    """Noise-robust Dice loss per image ``[N]``: mean over foreground classes of Σ|p−g|^γ / (Σp²+Σg²+ε).

    Wang et al., "A Noise-robust Framework for Automatic Segmentation of COVID-19 Pneumonia Lesions from CT
    Images", IEEE TMI 2020: γ = 2 is the (squared-denominator) Dice loss, γ → 1 an MAE-like term that is
    less sensitive to wrong labels; the paper's γ = 1.5, ε = 1e-5. Sums run over each image's pixels.
    """
    if not 1.0 <= gamma <= 2.0:
        raise ValueError(f"the noise-robust Dice loss needs 1 <= gamma <= 2, got {gamma}")
    probs = foreground_probabilities(logits)
    truth = targets if logits.shape[1] == 1 else targets[:, 1:]
    numerator = (probs - truth).abs().pow(gamma).sum(dim=(2, 3))  # [N, C_fg]
    denominator = probs.square().sum(dim=(2, 3)) + truth.square().sum(dim=(2, 3)) + NR_DICE_EPS
    return (numerator / denominator).mean(dim=1)


def t_loss(logits: Tensor, targets: Tensor, nu: Tensor) -> Tensor:
    """T-Loss per image, ``[N]``: the negative log-likelihood of a multivariate Student-t, divided by D.

    Gonzalez-Jimenez et al., "Robust T-Loss for Medical Image Segmentation", MICCAI 2023: the residual
    δ = t − p of an image's D probabilities (binary: the foreground map; K classes: all K maps) follows a
    Student-t with identity scale and ν degrees of freedom,

        −log p(δ) = −log Γ((ν+D)/2) + log Γ(ν/2) + (D/2)·log(πν) + ((ν+D)/2)·log(1 + ‖δ‖²/ν).

    Large ‖δ‖ (a wrong label) costs only logarithmically, and ν, learnt with the network, sets how much:
    ν → ∞ gives the Gaussian negative log-likelihood (a squared error). Divided by D, the scale per pixel
    matches the other losses; the minimiser in θ and ν is unchanged.

    Args:
        logits: ``[N, C, H, W]``.
        targets: Class maps shaped like ``logits``.
        nu: ν > 0, a scalar tensor (learnable: gradients flow into it).
    """
    probs = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)
    squared = (targets - probs).flatten(1).square().sum(dim=1)  # [N] ‖δ‖²
    dims = probs[0].numel()
    nll = (
        torch.lgamma(nu / 2)
        - torch.lgamma((nu + dims) / 2)
        + dims / 2 * torch.log(math.pi * nu)
        + (nu + dims) / 2 * torch.log1p(squared / nu)
    )
    return nll / dims


ROBUST_LOSSES = ("gce", "mae", "nr_dice", "tloss")


class RobustLoss(nn.Module):
    """A noise-robust loss of the noisy labels as a scalar, the batch mean of one of the losses above.

    :func:`gce_loss` and :func:`mae_loss` are averaged over the pixels, :func:`nr_dice_loss` and
    :func:`t_loss` over the images.

    The T-Loss's degrees of freedom are learnt with the network (Gonzalez-Jimenez et al., MICCAI 2023):
    ν = exp(η) with the parameter η (``log_nu``, a scalar), so ν stays positive whatever step the optimiser
    takes, and η starts at log(``tloss_nu``), i.e. ν starts at ``tloss_nu`` (the paper's 1). The other
    losses have no parameters.

    Args:
        name: One of :data:`ROBUST_LOSSES`.
        gce_q: GCE's q in (0, 1].
        nr_dice_gamma: The noise-robust Dice loss's γ in [1, 2].
        tloss_nu: The T-Loss's initial ν > 0.
    """

    def __init__(self, name: str, *, gce_q: float = 0.7, nr_dice_gamma: float = 1.5, tloss_nu: float = 1.0):
        super().__init__()
        if name not in ROBUST_LOSSES:
            raise ValueError(f"unknown robust loss {name!r}; one of {', '.join(ROBUST_LOSSES)}")
        self.name, self.gce_q, self.nr_dice_gamma = name, gce_q, nr_dice_gamma
        self.log_nu = nn.Parameter(torch.tensor(math.log(tloss_nu))) if name == "tloss" else None

    @property
    def nu(self) -> Tensor | None:
        """ν = exp(η), a scalar tensor (with gradients into η) for the T-Loss; None for the others."""
        return None if self.log_nu is None else self.log_nu.exp()

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The batch mean of the loss, a scalar.

        Args:
            logits: ``[N, C, H, W]`` (C = 1 for binary data, K otherwise).
            targets: Class maps shaped like ``logits`` (binary float 0/1, else one-hot float).
        """
        if self.name == "gce":
            return gce_loss(logits, targets, self.gce_q).mean()
        if self.name == "mae":
            return mae_loss(logits, targets).mean()
        if self.name == "nr_dice":
            return nr_dice_loss(logits, targets, self.nr_dice_gamma).mean()
        return t_loss(logits, targets, self.nu).mean()
