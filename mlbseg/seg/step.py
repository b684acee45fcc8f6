"""One segmentation training iteration for every method (docs/reference.md §6.9, docs/design.md §4).

``mlbseg``: augment → five views → α/β from the meta engine → Σ α·cost(noisy) + β·cost(pseudo)
(+ consistency + EMA) → clipped SGD step → the extra supervised step on the clean meta batch. ``l2b_seg``
drops consistency and EMA, ``l2rw`` also β and the views; ``views_meta`` is ``mlbseg`` with uniform
weights (the mean cost of the views); ``baseline`` trains on the mean cost of the noisy labels,
``baseline_plus_meta`` adds the meta-batch step; ``gce``, ``mae``, ``nr_dice`` and ``tloss`` train on a
robust loss of the noisy labels instead (:class:`mlbseg.seg.losses.RobustLoss`); ``coteaching`` and
``trinet`` train two or three networks on the pixels the others select
(:func:`mlbseg.seg.peers.selection_step`),
``clslsr`` smooths the labels at confident-learning label errors, ``adele`` trains on the mean cost of labels
that the run corrects after each class's early-learning turning point (the step counts each class's
training IoU for it, :meth:`SegmentationStep.class_overlap`), at three input scales with their multi-scale
consistency (:meth:`SegmentationStep.multiscale_loss`); ``dast`` trains a clean branch (the first
network) on the clean meta batch and a noisy branch on the noisy labels, except those its divergence-aware
scores rank noisiest, where the branches' consistency replaces the label, and it refines the least noisy
labels into supplementary targets of the clean branch (:func:`mlbseg.seg.peers.dast_step`). Which
parts a method uses is its registry entry (:data:`mlbseg.seg.config.METHODS`), not a subclass.
Everything stays on the training device; the returned statistics are device tensors, read only when logged.

The cost is chosen once by the number of labels K (:mod:`mlbseg.seg.label_space`): per-pixel BCE on one
sigmoid logit for binary data (the paper's setting), per-pixel softmax cross-entropy on K logits for K > 2,
where α and β are per pixel [V, h, w], the pseudo-label is the argmax of the view-averaged softmax and the
consistency and EMA terms compare softmax maps (docs/method.md §5.1).

Precision: with ``amp_dtype`` (bf16 on CUDA) the real forwards run under autocast; the meta engine always
runs in float32 (it is called outside autocast), so the weights do not inherit bf16 rounding.

Across processes (``dist``) each process holds its part of the global batch. Every gradient is averaged
over the processes before clipping, and each process's loss is its estimate of the loss of the global
batch: mean terms (mean costs, consistency, EMA) as they are, and the α/β-weighted sum times the number
of processes, because the weights are normalised over the global batch and the global weighted loss is the
*sum* of the processes' weighted sums. The averaged gradient is then exactly the gradient one process
computes on the concatenated batch, and so is the update. A robust loss's parameters (the T-Loss's ν) are
trained like the network's: their gradients are averaged and clipped together with the network's.
The selection rules choose pixels within each process's part of the batch; co-teaching keeps the same
count on every process, so its averaged gradient is that of the mean over all kept pixels, but which
pixels are kept is decided per process, not over the global batch. ``dast`` ranks the global batch (the
processes' scores gathered) and divides its kept samples' costs by their global count, times the number
of processes, so its averaged gradients are exactly those of one process on the concatenated batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mlbseg.engine.distributed import SINGLE, Distributed
from mlbseg.engine.ema import EMATeacher
from mlbseg.engine.optim import apply_update, autocast_to
from mlbseg.meta import bootstrap_weights, resolve_normalizer_name
from mlbseg.seg.augment import random_flip_rotate
from mlbseg.seg.config import DataConfig, MethodConfig
from mlbseg.seg.consistency import multiview_consistency
from mlbseg.seg.label_space import foreground_dice, hard_labels, label_maps, label_space
from mlbseg.seg.losses import RobustLoss, class_probabilities, pixel_cross_entropy
from mlbseg.seg.multiscale import forward_at_scale, multiscale_consistency
from mlbseg.seg.peers import NoisinessMemory, PeerNetwork, dast_step, selection_step
from mlbseg.seg.selection import (
    class_log_probabilities,
    class_overlaps,
    confident_label_errors,
    forget_rate,
    smoothed_targets,
)
from mlbseg.seg.views import NUM_VIEWS, ViewParams, average_pseudo_labels, make_views

ExtraLoss = Callable[[torch.Tensor], torch.Tensor]  # logits [V, C, h, w] -> scalar


class MetaWeights(NamedTuple):
    """The meta engine's weights for one batch, shaped like the per-pixel costs.

    Costs, α and β are [V, 1, h, w] for binary data and [V, h, w] for K > 2 classes.
    """

    alpha: torch.Tensor  # weights of the noisy label's cost
    beta: torch.Tensor | None  # weights of the pseudo-label's cost (None for l2rw)
    pseudo: torch.Tensor | None  # the pseudo-label [V, 1, h, w], class indices (None for l2rw)


@dataclass
class Batch:
    """Training or meta slices after augmentation and view expansion.

    Attributes:
        images: [V, C, h, w] float32 (V = 5 × slices with views, else the slice count; C image channels).
        labels: [V, 1, h, w] float32 class indices (binary 0/1), the labels trained on.
        reference: [V, 1, h, w] float32 class indices, the clean masks (monitoring only; zeros where a
            slice has none).
        views: The view geometry, or None without views.
        has_reference: [V] bool, the slices whose ``reference`` is real; None when all are.
    """

    images: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor
    views: ViewParams | None
    has_reference: torch.Tensor | None = None


class SegmentationStep:
    """Holds what a step needs (model, optimizer, teacher, generator) and runs one iteration.

    ``num_labels`` is K, the number of labels with the background (2: binary, one logit); it chooses the
    label space once. ``robust_loss`` is the noisy labels' loss of the robust-loss methods
    (:func:`robust_loss_for`, on the model's device; its parameters in ``optimizer``), None for the mean
    cost. ``dist`` is this process's place in a run across processes (:data:`SINGLE` for one
    process); ``compile_model`` runs the real steps' forwards through ``torch.compile(model)`` (the meta
    engine and the teacher keep the eager model: ``functional_call`` and forward-mode AD need it).
    ``peers`` are the further networks of a method with several (``method.networks`` − 1 of them), each
    stepped by its own optimizer, clipped and averaged across processes as the first (``model``).
    :meth:`begin_epoch` sets the epoch's forget rate and, for ``adele``, starts the epoch's per-class
    counts of the training IoU afresh (:meth:`class_overlap`). ``epochs`` is the run's length
    (``train.epochs``): ``dast`` ramps its regularisers over it unless ``method.dast_ramp_epochs`` says
    otherwise. ``size_divisor`` is what the network's input sides must be multiples of
    (:func:`~mlbseg.seg.model.size_divisor`): ``adele``'s rescaled inputs are rounded to it.
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
        num_labels: int = 2,
        robust_loss: RobustLoss | None = None,
        peers: Sequence[PeerNetwork] = (),
        size_divisor: int = 1,
        epochs: int = 1,
    ) -> None:
        if len(peers) != method.networks - 1:
            raise ValueError(f"method {method.name} trains {method.networks} networks, got {len(peers) + 1}")
        self.model, self.optimizer, self.method, self.data = model, optimizer, method, data
        self.robust_loss = robust_loss
        # What a real step updates: the network, and a robust loss's parameters (the T-Loss's ν) with it.
        learnt = robust_loss is not None and bool(list(robust_loss.parameters()))
        self.trainable = nn.ModuleList([model, robust_loss]) if learnt else model
        self.grad_clip_norm, self.teacher, self.generator = grad_clip_norm, teacher, generator
        self.amp_dtype, self.dist = amp_dtype, dist
        self.size_divisor = size_divisor
        self.labels = label_space(num_labels)
        # Segmentation's normaliser names (``softmax`` = per sample) whatever the cost: resolved here, so the
        # engine's ``ce`` alias (classification's softmax over the batch) never applies to pixels.
        self.normalize = resolve_normalizer_name(method.normalize, loss="bce")
        self.forward_model = torch.compile(model, dynamic=False) if compile_model else model
        self.peers = list(peers)
        self.peer_forward_models = [
            torch.compile(peer.model, dynamic=False) if compile_model else peer.model for peer in self.peers
        ]
        self.keep_share = 1.0  # 1 − the epoch's forget rate (co-teaching, Tri-Net)
        self._overlap: torch.Tensor | None = None  # adele: [2, K − 1] the epoch's sums so far
        self.noisiness = (  # dast: the memory of the last samples' noisiness scores
            NoisinessMemory(method.dast_queue, method.dast_select_share, dist)
            if method.rule == "dast"
            else None
        )
        self.epoch = 0  # the (0-based) epoch being trained (begin_epoch)
        # dast: epochs of the sigmoid ramp-up of its regularisers (null in the config: the whole run)
        ramp = method.dast_ramp_epochs
        self.dast_ramp_epochs = ramp if ramp is not None else epochs

    def begin_epoch(self, epoch: int) -> None:
        """The forget rate of (0-based) ``epoch`` for the selection rules (:func:`forget_rate`).

        Also empties ``adele``'s per-class IoU counts and sets the epoch of ``dast``'s ramp-up.
        """
        method = self.method
        self.epoch = epoch
        rate = forget_rate(epoch, final_rate=method.forget_rate, ramp_epochs=method.forget_ramp_epochs)
        self.keep_share = 1.0 - rate
        self._overlap = None

    def class_overlap(self) -> torch.Tensor:
        """``adele``: [2, K − 1] int64 intersections and unions of every foreground class this epoch.

        Summed over the epoch's steps so far (this process's batches): the hard prediction of each step's
        own forward against the labels it trained on (:func:`~mlbseg.seg.selection.class_overlaps`);
        zeros before the first step.
        """
        if self._overlap is None:
            device = next(self.model.parameters()).device
            return torch.zeros(2, self.labels.num_labels - 1, dtype=torch.int64, device=device)
        return self._overlap

    def expand(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        reference: torch.Tensor,
        *,
        has_reference: torch.Tensor | None = None,
        views: bool = True,
    ) -> Batch:
        """Dataset-level flip/rotation (same for image and masks), then the five views when enabled.

        Args:
            images: [B, C, h, w] slices.
            labels: [B, 1, h, w] class indices trained on.
            reference: [B, 1, h, w] class indices of the clean reference.
            has_reference: [B] bool, the slices with a reference (None: all).
            views: False skips the views (warm-up trains on the augmented slices themselves).
        """
        images, (labels, reference) = random_flip_rotate(
            images,
            (labels, reference),
            self.generator,
            max_degrees=self.data.rotation_degrees,
            flip_prob=self.data.flip_prob,
        )
        if not (views and self.method.uses_views):
            return Batch(images, labels, reference, None, has_reference)
        images, (labels, reference), params = make_views(
            images,
            (labels, reference),
            self.generator,
            zoom_pads=self.method.views.zoom_pads,
            num_labels=self.labels.num_labels,
        )
        if has_reference is not None:
            has_reference = has_reference.repeat_interleave(NUM_VIEWS)  # [5B], sample-major like the views
        return Batch(images, labels, reference, params, has_reference)

    def __call__(self, batch: Batch, meta: Batch, meta_weighting: bool) -> dict[str, torch.Tensor]:
        """One iteration; ``meta_weighting`` is False during warm-up (plain mean cost, no correction)."""
        if self.method.rule == "dast":
            return dast_step(self, batch, meta, meta_weighting)
        if self.peers:
            return selection_step(self, batch)
        logits = self.forward_logits(batch.images)  # [V, C, h, w]
        probs = self.labels.probabilities(logits)
        extra = self.extra_loss(batch)
        stats: dict[str, torch.Tensor] = {}
        if meta_weighting and self.method.uses_meta_weights:
            weights = self.meta_weights(batch, meta, probs.detach(), extra)
            weighted = (weights.alpha * self.labels.costs(logits, batch.labels)).sum()
            stats["alpha_mean"] = weights.alpha.mean()
            stats["beta_mean"] = torch.zeros_like(stats["alpha_mean"])
            if weights.beta is not None and weights.pseudo is not None:
                weighted = weighted + (weights.beta * self.labels.costs(logits, weights.pseudo)).sum()
                stats["beta_mean"] = weights.beta.mean()
            loss = self.dist.world_size * weighted  # a share of a global sum; gradients are averaged
        elif self.method.uses_multiscale_consistency:  # adele, from the first step (warm-up included)
            loss = self.multiscale_loss(batch.images, batch.labels, logits)
        else:
            loss = self.noisy_label_loss(logits, batch.labels, correct=meta_weighting)
        if extra is not None:
            loss = loss + extra(logits)
        if self.robust_loss is not None and self.robust_loss.nu is not None:
            stats["tloss_nu"] = self.robust_loss.nu.detach()  # the ν of this loss, before its update
        if self.method.rule == "adele":
            overlap = class_overlaps(hard_labels(probs.detach()), batch.labels, self.labels.num_labels)
            self._overlap = overlap if self._overlap is None else self._overlap + overlap
        self.update(loss)
        stats["loss"] = loss.detach()
        stats["train_dice_reference"] = self.reference_dice(probs.detach(), batch)
        if self.method.trains_on_meta_batch:
            stats["meta_loss"] = self._meta_step(meta)
        return stats

    def noisy_label_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, *, correct: bool = True
    ) -> torch.Tensor:
        """The method's scalar loss of logits [V, C, h, w] against the noisy class maps [V, 1, h, w].

        The mean per-pixel cost (BCE or CE), the robust loss on the labels' maps (binary: the 0/1 map,
        K > 2: one-hot), or for ``clslsr`` (when ``correct``, i.e. after warm-up) the mean cross-entropy
        against the labels smoothed at the confident-learning label errors.
        """
        if self.method.rule == "clslsr" and correct:
            return self.smoothed_label_loss(logits, labels)
        if self.robust_loss is None:
            return self.labels.costs(logits, labels).mean()
        return self.robust_loss(logits, label_maps(labels, self.labels.num_labels))

    def multiscale_loss(
        self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """ADELE's loss with its multi-scale consistency: (Σ_s cost_s + λ·consistency) / S.

        Liu et al., CVPR 2022. The scales are 1 (``logits`` [V, C, h, w], the step's own forward of
        ``images`` [V, C_in, h, w]) and each of ``method.adele_scales``: the network's forward of the
        images rescaled by it, resized back (:func:`~mlbseg.seg.multiscale.forward_at_scale`, sides rounded
        to ``size_divisor``). cost_s is the mean per-pixel cost of scale s's logits against the class maps
        ``labels`` [V, 1, h, w], the consistency :func:`~mlbseg.seg.multiscale.multiscale_consistency` of
        the S scales' class probabilities at ρ = ``method.adele_consistency_confidence``, λ =
        ``method.adele_consistency_weight``.
        """
        scaled = [logits] + [
            forward_at_scale(self.forward_logits, images, scale, self.size_divisor)
            for scale in self.method.adele_scales
        ]  # S × [V, C, h, w]
        costs = sum(self.labels.costs(scale_logits, labels).mean() for scale_logits in scaled)
        log_probs = [class_log_probabilities(scale_logits) for scale_logits in scaled]  # S × [V, K, h, w]
        consistency = multiscale_consistency(log_probs, self.method.adele_consistency_confidence)
        return (costs + self.method.adele_consistency_weight * consistency) / len(scaled)

    def smoothed_label_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CLSLSR: mean cross-entropy against soft targets smoothed at the batch's label errors.

        The errors come from confident learning on the network's own detached probabilities over the
        batch's pixels (:func:`~mlbseg.seg.selection.confident_label_errors`), the smoothing from
        :func:`~mlbseg.seg.selection.smoothed_targets` with ε = ``method.clslsr_epsilon``; binary data
        train their one logit on the soft foreground target (BCE), K > 2 their softmax (CE).
        """
        classes = self.labels.num_labels
        probs, _ = class_probabilities(logits.detach(), label_maps(labels, classes))  # [V, K, h, w]
        hard = labels[:, 0].long()  # [V, h, w]
        errors = confident_label_errors(probs, hard)
        targets = smoothed_targets(hard, errors, classes, self.method.clslsr_epsilon)  # [V, K, h, w]
        if logits.shape[1] == 1:
            targets = targets[:, 1:]  # the foreground probability
        return pixel_cross_entropy(logits, targets).mean()

    def reference_dice(self, probs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Batch Dice of the hard prediction against the clean reference, mean over the foreground classes.

        Only slices with a reference count; NaN (a device scalar) when the batch has none.
        """
        space = self.labels
        prediction = space.foreground(hard_labels(probs))
        return foreground_dice(prediction, space.foreground(batch.reference), batch.has_reference)

    def meta_weights(
        self, batch: Batch, meta: Batch, probs: torch.Tensor, extra: ExtraLoss | None
    ) -> MetaWeights:
        """α (and β with its pseudo-label) for ``batch`` from the meta engine; no parameter changes.

        Args:
            batch: The expanded training batch.
            meta: The expanded clean meta batch.
            probs: [V, C, h, w] the batch's predicted probabilities (detached).
            extra: The unweighted loss terms (:meth:`extra_loss`), which shift the look-ahead point.
        """
        space = self.labels
        pseudo = self._pseudo_labels(probs, batch.views) if self.method.uses_pseudo_labels else None
        alpha, beta = bootstrap_weights(
            self.model,
            self.optimizer,
            batch.images,
            space.targets(batch.labels),
            None if pseudo is None else space.targets(pseudo),
            meta.images,
            space.targets(meta.labels),
            loss=space.loss,
            method=self.method.engine,
            normalize=self.normalize,
            temperature=self.method.temperature,
            extra_loss=extra,
            distributed=self.dist.enabled,
            process_group=self.dist.group,
        )
        return MetaWeights(alpha, beta, pseudo)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """[V, C, h, w] probabilities (sigmoid or softmax) in train mode, without gradients (inspection)."""
        return self.labels.probabilities(self.forward_logits(images))

    def _autocast(self, images: torch.Tensor) -> contextlib.AbstractContextManager:
        """Autocast to ``amp_dtype`` for a real forward of ``images``; nothing without AMP."""
        return autocast_to(self.amp_dtype, images.device.type)

    def forward_logits(self, images: torch.Tensor, forward_model: nn.Module | None = None) -> torch.Tensor:
        """[V, C, h, w] float32 logits of the real step's model (compiled if enabled) under autocast.

        ``forward_model`` is a peer's (default: the first network's).
        """
        # NOTE: no channels_last conversion of the inputs: with one channel, [N, 1, H, W] already is
        # channels_last-contiguous (NCHW and NHWC strides coincide); with several, the first convolution
        # follows its channels_last weights.
        with self._autocast(images):
            return (forward_model or self.forward_model)(images).float()

    def _pseudo_labels(self, probs: torch.Tensor, views: ViewParams | None) -> torch.Tensor:
        """[V, 1, h, w] class indices: the multi-view average (or the single prediction) made hard."""
        if views is None:
            return hard_labels(probs).float()
        return average_pseudo_labels(probs, views)

    def extra_loss(self, batch: Batch) -> ExtraLoss | None:
        """Unweighted consistency terms as a function of the logits (they shift the meta look-ahead too)."""
        terms: list[Callable[[torch.Tensor], torch.Tensor]] = []
        weight, probabilities = self.method.consistency_weight, self.labels.probabilities
        if self.method.uses_consistency and batch.views is not None:
            views, pairing = batch.views, self.method.consistency_pairing
            terms.append(lambda logits: weight * multiview_consistency(probabilities(logits), views, pairing))
        if self.teacher is not None:
            teacher_probs = self._teacher_probs(batch.images)
            ema_weight = self.method.ema.weight
            terms.append(lambda logits: ema_weight * F.mse_loss(probabilities(logits), teacher_probs))
        if not terms:
            return None
        return lambda logits: sum(term(logits) for term in terms)  # type: ignore[return-value]

    @torch.no_grad()
    def _teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        noise = torch.randn(images.shape, generator=self.generator, device=images.device)
        with self._autocast(images):  # a target, no gradient: the real step's precision is enough
            logits = self.teacher.model(images + self.method.ema.noise_std * noise).float()
        return self.labels.probabilities(logits)

    def _meta_step(self, meta: Batch) -> torch.Tensor:
        """The supervised step on the clean meta batch (the reference's step 6)."""
        logits = self.forward_logits(meta.images)
        loss = self.labels.costs(logits, meta.labels).mean()
        extra = self.extra_loss(meta)
        if extra is not None:
            loss = loss + extra(logits)
        self.update(loss)
        return loss.detach()

    def update(self, loss: torch.Tensor, peer: PeerNetwork | None = None) -> None:
        """Backward, average the gradients over the processes, clip, optimizer step, teacher update.

        With ``peer``, the peer network's own update (its optimizer; no teacher) instead of the first's.
        """
        trainable, optimizer = (
            (self.trainable, self.optimizer) if peer is None else (peer.model, peer.optimizer)
        )
        apply_update(
            trainable,
            optimizer,
            loss,
            grad_clip_norm=self.grad_clip_norm,
            average_gradients=self.dist.average_gradients,
        )
        if self.teacher is not None and peer is None:
            self.teacher.update(self.model)


def robust_loss_for(method: MethodConfig) -> RobustLoss | None:
    """The robust loss of ``method`` (gce, mae, nr_dice, tloss) with its config parameters, else None.

    None is the mean cost of every other method; a returned loss still has to be moved to the model's
    device and its parameters (the T-Loss's ν) given to the optimizer, as the run does.
    """
    if method.noisy_loss == "mean":
        return None
    return RobustLoss(
        method.noisy_loss,
        gce_q=method.gce_q,
        nr_dice_gamma=method.nr_dice_gamma,
        tloss_nu=method.tloss_nu,
    )
