"""ADELE's label correction in a run: per-class training-IoU curves, turning points, corrected train labels.

Liu, Liu, Zhu, Shen & Fernandez-Granda, "Adaptive Early-Learning Correction for Segmentation from Noisy
Annotations", CVPR 2022 (docs/method.md §5.3). The run (:mod:`mlbseg.seg.trainer`) holds one
:class:`EarlyLearningCorrection` for ``method.name: adele``; the rules are the pure functions of
:mod:`mlbseg.seg.selection`, the multi-scale probabilities those of :mod:`mlbseg.seg.multiscale`.
"""

from __future__ import annotations

from typing import Any

import torch

from mlbseg.engine.distributed import Distributed
from mlbseg.seg.data import SliceSet
from mlbseg.seg.inference import predict_probabilities
from mlbseg.seg.multiscale import AtScale
from mlbseg.seg.selection import early_learning_correction, early_learning_turning_epoch

# Train slices per forward of the label correction's pass (bounds its probability maps' memory).
CORRECTION_CHUNK = 256


class EarlyLearningCorrection:
    """``adele``'s state in a run: per-class training-IoU curves, turning points, corrected train labels.

    Liu, Liu, Zhu, Shen & Fernandez-Granda, "Adaptive Early-Learning Correction for Segmentation from
    Noisy Annotations", CVPR 2022 (docs/method.md §5.3). After every epoch :meth:`end_epoch` appends each
    foreground class's IoU of that epoch (the step's counts, averaged over the processes) to its curve and
    looks for the turning point of every class that has none yet
    (:func:`~mlbseg.seg.selection.early_learning_turning_epoch`); from the epoch a class turns on, the
    labels of every train slice are corrected after each epoch with the model's eval-mode probabilities
    (:func:`~mlbseg.seg.selection.early_learning_correction`, corrections accumulate), and the steps
    train on the corrected labels. The labels are the train set's own tensor, corrected in place.
    With ``scales`` (the multi-scale consistency on: ``method.adele_scales``) the probabilities are the
    mean over scale 1 and those scales of the eval-mode probabilities of the rescaled slices
    (:class:`~mlbseg.seg.multiscale.AtScale`, sides rounded to ``size_divisor``); without, scale 1's.
    """

    def __init__(
        self,
        train_set: SliceSet,
        *,
        slope_drop: float,
        confidence: float,
        scales: tuple[float, ...] = (),
        size_divisor: int = 1,
    ) -> None:
        self.images, self.labels = train_set.images, train_set.labels  # [N, C, h, w]; [N, 1, h, w] uint8
        self.noisy = train_set.labels.clone()  # the labels as given, for ``corrected_share``
        self.slope_drop, self.confidence = slope_drop, confidence
        self.scales, self.size_divisor = scales, size_divisor
        classes = train_set.num_labels - 1
        self.curves: list[list[float]] = [[] for _ in range(classes)]  # per foreground class, per epoch
        self.turning_epochs: list[int | None] = [None] * classes  # 1-based epoch the correction began

    def end_epoch(
        self,
        epoch: int,
        overlap: torch.Tensor,
        model: torch.nn.Module,
        *,
        dist: Distributed,
        amp_dtype: torch.dtype | None,
    ) -> dict[str, float]:
        """Record (0-based) ``epoch``'s IoU, detect turning points, correct; every process alike.

        Args:
            epoch: The epoch just trained.
            overlap: [2, K − 1] this process's intersections and unions of the epoch
                (:meth:`SegmentationStep.class_overlap`).
            model: The network, its BatchNorm statistics already averaged over the processes.
            dist: The run's processes (the counts are averaged: IoU is a ratio of sums).
            amp_dtype: Autocast dtype of the correction pass.

        Returns:
            ``train_iou`` (the epoch's mean over the foreground classes), ``corrected_classes`` (how many
            have turned) and ``corrected_share`` (share of train pixels whose label differs from the given).
        """
        counts = overlap.double()
        dist.average([counts])
        iou = (counts[0] / counts[1].clamp_min(1)).tolist()  # a class absent everywhere: 0
        for curve, value in zip(self.curves, iou, strict=True):
            curve.append(value)
        for index, curve in enumerate(self.curves):
            if self.turning_epochs[index] is None and (
                early_learning_turning_epoch(curve, self.slope_drop) is not None
            ):
                self.turning_epochs[index] = epoch + 1
        if self.corrected_classes():
            self._correct(model, amp_dtype)
        return {
            "train_iou": sum(iou) / len(iou),
            "corrected_classes": float(self.corrected_classes()),
            "corrected_share": float((self.labels != self.noisy).float().mean()),
        }

    def corrected_classes(self) -> int:
        """How many foreground classes have passed their turning point."""
        return sum(turned is not None for turned in self.turning_epochs)

    @torch.no_grad()
    def _correct(self, model: torch.nn.Module, amp_dtype: torch.dtype | None) -> None:
        """Correct the stored labels of every train slice (chunks of :data:`CORRECTION_CHUNK`)."""
        turned = [False] + [epoch is not None for epoch in self.turning_epochs]  # the background: never
        corrected = torch.tensor(turned, device=self.labels.device)  # [K]
        for start in range(0, len(self.labels), CORRECTION_CHUNK):
            chunk = slice(start, start + CORRECTION_CHUNK)
            probs = self._probabilities(model, self.images[chunk], amp_dtype)  # [B, C_out, h, w]
            if probs.shape[1] == 1:
                probs = torch.cat([1 - probs, probs], dim=1)  # [B, 2, h, w]: background, foreground
            labels = self.labels[chunk, 0].long()  # [B, h, w]
            new = early_learning_correction(labels, probs, corrected, self.confidence)
            self.labels[chunk, 0] = new.to(self.labels.dtype)

    def _probabilities(
        self, model: torch.nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None
    ) -> torch.Tensor:
        """[B, C_out, h, w] eval-mode probabilities of ``images``: scale 1's, or the mean over the scales."""
        if not self.scales:
            return predict_probabilities(model, images, amp_dtype=amp_dtype)
        networks = [model, *(AtScale(model, scale, self.size_divisor) for scale in self.scales)]
        probs = [predict_probabilities(network, images, amp_dtype=amp_dtype) for network in networks]
        return torch.stack(probs).mean(dim=0)

    def state_dict(self) -> dict[str, Any]:
        """``curves``, ``turning_epochs`` and the corrected ``labels``.

        ``labels`` is [N, 1, h, w] uint8 on the CPU, None until a class turns (the given labels then).
        """
        return {
            "curves": [list(curve) for curve in self.curves],
            "turning_epochs": list(self.turning_epochs),
            "labels": self.labels.cpu().clone() if self.corrected_classes() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the train set's labels are the given ones until then)."""
        self.curves = [list(curve) for curve in state["curves"]]
        self.turning_epochs = list(state["turning_epochs"])
        if state["labels"] is not None:
            self.labels.copy_(state["labels"])
