"""One segmentation training iteration for every method (docs/reference.md §6.9, docs/design.md §4).

``mlbseg``: augment → five views → α/β from the meta engine → Σ α·BCE(noisy) + β·BCE(pseudo) (+ consistency)
→ clipped SGD step → the extra supervised step on the clean meta batch. ``l2rw`` drops β, ``baseline``
trains on the mean BCE of the noisy labels, ``baseline_plus_meta`` adds the meta-batch step. Everything
stays on the training device; the returned statistics are device tensors, read only when logged.

Precision: with ``amp_dtype`` (bf16 on CUDA) the real forwards run under autocast; the meta engine always
runs in float32 (it is called outside autocast), so the weights do not inherit bf16 rounding.

Across processes (``dist``) each process holds its part of the global batch. Every gradient is averaged
over the processes before clipping, and each process's loss is its estimate of the loss of the global
batch: mean terms (BCE means, consistency, EMA) as they are, and the α/β-weighted sum times the number
of processes, because the weights are normalised over the global batch and the global weighted loss is the
*sum* of the processes' weighted sums. The averaged gradient is then exactly the gradient one process
computes on the concatenated batch, and so is the update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mlbseg.engine.distributed import SINGLE, Distributed
from mlbseg.engine.ema import EMATeacher
from mlbseg.engine.optim import apply_update, autocast_to
from mlbseg.meta import bootstrap_weights
from mlbseg.seg.augment import random_flip_rotate
from mlbseg.seg.config import DataConfig, MethodConfig
from mlbseg.seg.consistency import multiview_consistency
from mlbseg.seg.views import ViewParams, average_pseudo_labels, make_views

ExtraLoss = Callable[[torch.Tensor], torch.Tensor]  # logits [V, 1, h, w] -> scalar


class MetaWeights(NamedTuple):
    """The meta engine's weights for one batch, shaped like the per-pixel costs [V, 1, h, w]."""

    alpha: torch.Tensor  # weights of the noisy label's BCE
    beta: torch.Tensor | None  # weights of the pseudo-label's BCE (None for l2rw)
    pseudo: torch.Tensor | None  # the pseudo-label, float 0/1 (None for l2rw)


@dataclass
class Batch:
    """Training or meta slices after augmentation and view expansion.

    Attributes:
        images: [V, 1, h, w] float32 (V = 5 × slices with views, else the slice count).
        labels: [V, 1, h, w] float32 0/1, the labels trained on.
        reference: [V, 1, h, w] float32 0/1, the clean masks (monitoring only).
        views: The view geometry, or None without views.
    """

    images: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor
    views: ViewParams | None


class SegmentationStep:
    """Holds what a step needs (model, optimizer, teacher, generator) and runs one iteration.

    ``dist`` is this process's place in a run across processes (:data:`SINGLE` for one process);
    ``compile_model`` runs the real steps' forwards through ``torch.compile(model)`` (the meta engine and
    the teacher keep the eager model: ``functional_call`` and forward-mode AD need it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        method: MethodConfig,
        data: DataConfig,
        grad_clip_norm: float | None,
        generator: torch.Generator,
        teacher: EMATeacher | None = None,
        amp_dtype: torch.dtype | None = None,
        dist: Distributed = SINGLE,
        compile_model: bool = False,
    ) -> None:
        self.model, self.optimizer, self.method, self.data = model, optimizer, method, data
        self.grad_clip_norm, self.teacher, self.generator = grad_clip_norm, teacher, generator
        self.amp_dtype, self.dist = amp_dtype, dist
        self.forward_model = torch.compile(model, dynamic=False) if compile_model else model

    def expand(
        self, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, views: bool = True
    ) -> Batch:
        """Dataset-level flip/rotation (same for image and masks), then the five views when enabled.

        ``views=False`` skips the views (warm-up trains on the augmented slices themselves).
        """
        images, (labels, reference) = random_flip_rotate(
            images,
            (labels, reference),
            self.generator,
            max_degrees=self.data.rotation_degrees,
            flip_prob=self.data.flip_prob,
        )
        if not (views and self.method.uses_views):
            return Batch(images, labels, reference, None)
        images, (labels, reference), views = make_views(
            images, (labels, reference), self.generator, zoom_pads=self.method.views.zoom_pads
        )
        return Batch(images, labels, reference, views)

    def __call__(self, batch: Batch, meta: Batch, meta_weighting: bool) -> dict[str, torch.Tensor]:
        """One iteration; ``meta_weighting`` is False during warm-up (plain mean BCE)."""
        logits = self._forward(batch.images)  # [V, 1, h, w]
        probs = logits.sigmoid()
        extra = self.extra_loss(batch)
        stats: dict[str, torch.Tensor] = {}
        if meta_weighting and self.method.uses_meta_weights:
            weights = self.meta_weights(batch, meta, probs.detach(), extra)
            weighted = (weights.alpha * _bce(logits, batch.labels)).sum()
            stats["alpha_mean"] = weights.alpha.mean()
            stats["beta_mean"] = torch.zeros_like(stats["alpha_mean"])
            if weights.beta is not None and weights.pseudo is not None:
                weighted = weighted + (weights.beta * _bce(logits, weights.pseudo)).sum()
                stats["beta_mean"] = weights.beta.mean()
            loss = self.dist.world_size * weighted  # a share of a global sum; gradients are averaged
        else:
            loss = _bce(logits, batch.labels).mean()
        if extra is not None:
            loss = loss + extra(logits)
        self._apply(loss)
        stats["loss"] = loss.detach()
        stats["train_dice_reference"] = _dice(probs.detach(), batch.reference)
        if self.method.trains_on_meta_batch:
            stats["meta_loss"] = self._meta_step(meta)
        return stats

    def meta_weights(
        self, batch: Batch, meta: Batch, probs: torch.Tensor, extra: ExtraLoss | None
    ) -> MetaWeights:
        """α (and β with its pseudo-label) for ``batch`` from the meta engine; no parameter changes.

        Args:
            batch: The expanded training batch.
            meta: The expanded clean meta batch.
            probs: [V, 1, h, w] the batch's predicted probabilities (detached).
            extra: The unweighted loss terms (:meth:`extra_loss`), which shift the look-ahead point.
        """
        pseudo = self._pseudo_labels(probs, batch.views) if self.method.uses_pseudo_labels else None
        alpha, beta = bootstrap_weights(
            self.model,
            self.optimizer,
            batch.images,
            batch.labels,
            pseudo,
            meta.images,
            meta.labels,
            loss="bce",
            method=self.method.engine,
            normalize=self.method.normalize,
            temperature=self.method.temperature,
            extra_loss=extra,
            distributed=self.dist.enabled,
            process_group=self.dist.group,
        )
        return MetaWeights(alpha, beta, pseudo)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """[V, 1, h, w] foreground probabilities in train mode, without gradients (for inspection)."""
        return self._forward(images).sigmoid()

    def _autocast(self, images: torch.Tensor) -> contextlib.AbstractContextManager:
        """Autocast to ``amp_dtype`` for a real forward of ``images``; nothing without AMP."""
        return autocast_to(self.amp_dtype, images.device.type)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """[V, 1, h, w] float32 logits of the real step's model (compiled if enabled) under autocast."""
        # NOTE: no channels_last conversion of the inputs: with one channel, [N, 1, H, W] is already
        # channels_last-contiguous (NCHW and NHWC strides coincide).
        with self._autocast(images):
            return self.forward_model(images).float()

    def _pseudo_labels(self, probs: torch.Tensor, views: ViewParams | None) -> torch.Tensor:
        """[V, 1, h, w] float 0/1: the multi-view average (or the single prediction) thresholded at 0.5."""
        if views is None:
            return (probs > 0.5).float()
        return average_pseudo_labels(probs, views)

    def extra_loss(self, batch: Batch) -> ExtraLoss | None:
        """Unweighted consistency terms as a function of the logits (they shift the meta look-ahead too)."""
        terms: list[Callable[[torch.Tensor], torch.Tensor]] = []
        weight = self.method.consistency_weight
        if self.method.uses_consistency and batch.views is not None:
            views = batch.views
            terms.append(lambda logits: weight * multiview_consistency(logits.sigmoid(), views))
        if self.teacher is not None:
            teacher_probs = self._teacher_probs(batch.images)
            ema_weight = self.method.ema.weight
            terms.append(lambda logits: ema_weight * F.mse_loss(logits.sigmoid(), teacher_probs))
        if not terms:
            return None
        return lambda logits: sum(term(logits) for term in terms)  # type: ignore[return-value]

    @torch.no_grad()
    def _teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        noise = torch.randn(images.shape, generator=self.generator, device=images.device)
        with self._autocast(images):  # a target, no gradient: the real step's precision is enough
            return self.teacher.model(images + self.method.ema.noise_std * noise).float().sigmoid()

    def _meta_step(self, meta: Batch) -> torch.Tensor:
        """The supervised step on the clean meta batch (the reference's step 6)."""
        logits = self._forward(meta.images)
        loss = _bce(logits, meta.labels).mean()
        extra = self.extra_loss(meta)
        if extra is not None:
            loss = loss + extra(logits)
        self._apply(loss)
        return loss.detach()

    def _apply(self, loss: torch.Tensor) -> None:
        """Backward, average the gradients over the processes, clip, SGD step, teacher update."""
        apply_update(
            self.model,
            self.optimizer,
            loss,
            grad_clip_norm=self.grad_clip_norm,
            average_gradients=self.dist.average_gradients,
        )
        if self.teacher is not None:
            self.teacher.update(self.model)


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE-with-logits, [V, 1, h, w]."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def _dice(probs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Batch Dice of the thresholded prediction against ``reference`` (a device scalar)."""
    prediction = (probs > 0.5).float()
    overlap = (prediction * reference).sum()
    return 2 * overlap / (prediction.sum() + reference.sum()).clamp_min(1.0)
