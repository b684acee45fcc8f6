"""What the segmentation step does with labels, chosen once by the number of labels K (docs/method.md §5.1).

Binary data (K = 2) keeps the paper's setting (Wei et al., MLB-Seg, 2023): one foreground logit, sigmoid
probabilities, per-pixel BCE-with-logits. K > 2 labels (background included) get K logits, softmax
probabilities and per-pixel cross-entropy; the multi-view pseudo-label is then the argmax of the
view-averaged softmax instead of the thresholded mean sigmoid.

Labels travel through augmentation and the views as class maps ``[V, 1, h, w]`` of class indices 0..K−1
stored in a floating dtype (binary: 0/1, exactly as before). Where a view warps labels bilinearly, it warps
their *label maps* (:func:`label_maps`: binary the 0/1 map itself, K > 2 the one-hot maps) and turns the
warped soft maps back into class indices with :func:`hard_labels` (binary ``> 0.5``, K > 2 argmax).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from mlbseg.seg.model import output_channels


def label_maps(labels: Tensor, num_labels: int) -> Tensor:
    """Soft maps of class maps, for warping: binary the map itself, K > 2 the one-hot encoding.

    Args:
        labels: [N, 1, H, W] class indices 0..K−1 in any dtype.
        num_labels: K, the number of labels with the background.

    Returns:
        [N, C, H, W] in ``labels``' dtype (floating point for floating input), C = ``output_channels(K)``.

    Example:
        >>> label_maps(torch.tensor([[[[0.0, 2.0]]]]), 3)[0, :, 0]
        tensor([[1., 0.],
                [0., 0.],
                [0., 1.]])
    """
    if output_channels(num_labels) == 1:
        return labels
    return F.one_hot(labels[:, 0].long(), num_labels).movedim(-1, 1).to(labels.dtype)


def hard_labels(maps: Tensor) -> Tensor:
    """Class maps from soft maps: one channel ``> 0.5`` (binary), several the argmax over the channels.

    Ties of the argmax go to the lowest class, so pixels where every map is 0 (outside a zoomed-out image)
    are background, as they are for binary maps.

    Args:
        maps: [N, C, H, W] soft maps (warped label maps, probabilities or their view average).

    Returns:
        [N, 1, H, W] class indices in ``maps``' dtype.

    Example:
        >>> hard_labels(torch.tensor([[[[0.2, 0.7]]]]))
        tensor([[[[0., 1.]]]])
        >>> hard_labels(torch.tensor([[[[0.2, 0.0]], [[0.3, 0.0]], [[0.5, 0.0]]]]))
        tensor([[[[2., 0.]]]])
    """
    if maps.shape[1] == 1:
        return (maps > 0.5).to(maps.dtype)
    return maps.argmax(dim=1, keepdim=True).to(maps.dtype)


def foreground_dice(prediction: Tensor, reference: Tensor, has_reference: Tensor | None = None) -> Tensor:
    """Batch Dice of foreground maps, the mean over the foreground classes (a device scalar).

    Per class, 2·|P ∩ R| / max(|P| + |R|, 1) over the pixels of all slices that have a reference; NaN when
    none has (the batch is not monitored).

    Args:
        prediction: [N, F, H, W] 0/1 foreground maps of the prediction (F = K − 1 classes; binary F = 1).
        reference: [N, F, H, W] 0/1 foreground maps of the clean reference.
        has_reference: [N] bool, the slices with a reference; None for all.
    """
    if has_reference is not None:
        keep = has_reference.to(prediction.dtype)[:, None, None, None]
        prediction, reference = prediction * keep, reference * keep
    dims = (0, 2, 3)
    overlap = (prediction * reference).sum(dim=dims)  # [F]
    dice = (2 * overlap / (prediction.sum(dim=dims) + reference.sum(dim=dims)).clamp_min(1.0)).mean()
    if has_reference is None:
        return dice
    return torch.where(has_reference.any(), dice, torch.full_like(dice, float("nan")))


class LabelSpace(Protocol):
    """Probabilities, costs, targets and foreground maps of one kind of label (binary or K classes)."""

    num_labels: int  # K, background included
    loss: str  # the meta engine's loss: "bce" or "ce"

    def probabilities(self, logits: Tensor) -> Tensor:
        """[V, C, h, w] probabilities of [V, C, h, w] logits (sigmoid or softmax over C)."""
        ...

    def costs(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-pixel costs of logits [V, C, h, w] against class maps [V, 1, h, w], shaped like α and β."""
        ...

    def targets(self, labels: Tensor) -> Tensor:
        """Class maps [V, 1, h, w] in the form the meta engine takes for :attr:`loss`."""
        ...

    def foreground(self, labels: Tensor) -> Tensor:
        """[V, K − 1, h, w] 0/1 maps of the foreground classes of class maps [V, 1, h, w]."""
        ...


@dataclass(frozen=True)
class BinaryLabels:
    """K = 2: one foreground logit, sigmoid, BCE-with-logits; costs, α and β [V, 1, h, w]."""

    num_labels: int = 2
    loss: str = "bce"

    def probabilities(self, logits: Tensor) -> Tensor:
        """[V, 1, h, w] foreground probabilities."""
        return logits.sigmoid()

    def costs(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-pixel BCE-with-logits [V, 1, h, w] against float 0/1 labels [V, 1, h, w]."""
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")

    def targets(self, labels: Tensor) -> Tensor:
        """The float 0/1 labels themselves ([V, 1, h, w], ``loss="bce"``)."""
        return labels

    def foreground(self, labels: Tensor) -> Tensor:
        """The 0/1 labels themselves ([V, 1, h, w])."""
        return labels


@dataclass(frozen=True)
class MultiClassLabels:
    """K > 2: K logits, softmax over the classes, per-pixel cross-entropy; costs, α and β [V, h, w]."""

    num_labels: int
    loss: str = "ce"

    def probabilities(self, logits: Tensor) -> Tensor:
        """[V, K, h, w] softmax over the classes."""
        return logits.softmax(dim=1)

    def costs(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-pixel cross-entropy [V, h, w] of logits [V, K, h, w] against class maps [V, 1, h, w]."""
        return F.cross_entropy(logits, self.targets(labels), reduction="none")

    def targets(self, labels: Tensor) -> Tensor:
        """Class indices [V, h, w] int64 (``loss="ce"``)."""
        return labels[:, 0].long()

    def foreground(self, labels: Tensor) -> Tensor:
        """One-hot maps of classes 1..K−1, [V, K − 1, h, w] in ``labels``' dtype."""
        return label_maps(labels, self.num_labels)[:, 1:]


def label_space(num_labels: int) -> LabelSpace:
    """The label space of K = ``num_labels`` labels: :class:`BinaryLabels` or :class:`MultiClassLabels`.

    Raises:
        ValueError: Fewer than 2 labels.
    """
    if output_channels(num_labels) == 1:
        return BinaryLabels()
    return MultiClassLabels(num_labels)
