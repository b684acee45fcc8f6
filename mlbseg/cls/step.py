"""One classification training iteration for every method (docs/reference.md §1.3, docs/design.md §3).

``l2b``: real forward → argmax pseudo-labels ŷ (detached) → α, β from the meta engine on a clean meta batch
→ loss ``Σ α·CE(y) + β·CE(ŷ)`` → clipped SGD step. ``l2rw`` drops β. ``baseline`` (and every method during
its warm-up epochs) is the mean CE.

The reference's optional mixup works with every method: λ ~ Beta(a, a) per batch, a random pairing π,
images ``λ·x + (1−λ)·x[π]``. The mean CE becomes ``λ·CE(y) + (1−λ)·CE(y[π])``; with meta-weighting the
noisy-label cost of sample i becomes ``λ·CE_i(y) + (1−λ)·CE_i(y[π])``, given to the engine as the soft
targets ``λ·onehot(y) + (1−λ)·onehot(y[π])`` ``[N, K]``, while ŷ is the argmax on the mixed batch and the
meta batch is not mixed (docs/reference.md §1.3 steps 1 and 4c).
Everything stays on the training device; nothing here reads a value back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mlbseg.cls.config import MethodConfig
from mlbseg.engine.atomic import write_atomic
from mlbseg.engine.distributed import SINGLE, Distributed
from mlbseg.engine.optim import apply_update, autocast_to
from mlbseg.engine.seeding import make_generator
from mlbseg.meta import bootstrap_weights

_TINY = 1e-30  # guards the weight-share ratios of a step whose weights are all zero


@dataclass
class StepOutput:
    """What one iteration produced; device tensors, detached.

    Attributes:
        loss: Scalar, the loss that was minimised.
        logits: [N, K] float32 logits of the real forward (of the mixed images under mixup).
        alpha: [N] weights of the noisy-label costs (≥ 0), or None without meta-weighting.
        beta: [N] weights of the pseudo-label costs (≥ 0), or None (also for l2rw).
    """

    loss: Tensor
    logits: Tensor
    alpha: Tensor | None = None
    beta: Tensor | None = None


class ClassificationStep:
    """Holds what a step needs (model, optimizer, random sources) and runs one iteration."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        method: MethodConfig,
        grad_clip_norm: float | None,
        seed: int,
        amp_dtype: torch.dtype | None = None,
        dist: Distributed = SINGLE,
        compile_model: bool = False,
    ) -> None:
        self.model, self.optimizer, self.method = model, optimizer, method
        self.grad_clip_norm, self.amp_dtype, self.dist = grad_clip_norm, amp_dtype, dist
        self.forward_model = torch.compile(model, dynamic=False) if compile_model else model
        self.generator = make_generator(seed, next(model.parameters()).device)  # mixup pairings
        self.mixup_rng = np.random.default_rng([seed, 0x6D6978])  # mixup λ, drawn on the host (no sync)

    def __call__(
        self, images: Tensor, labels: Tensor, meta: tuple[Tensor, Tensor] | None = None
    ) -> StepOutput:
        """One iteration on ``images`` [N, 3, H, W] with (noisy) class indices ``labels`` [N].

        Args:
            images: Normalised training images on the model's device.
            labels: int64 [N], the labels trained on.
            meta: A clean meta batch ``(images [M, 3, H, W], labels [M])`` to meta-weight this step with
                (l2rw, l2b after warm-up), or None for the mean CE (baseline, warm-up).
        """
        if meta is None:
            return self._mean_step(images, labels)
        return self._weighted_step(images, labels, *meta)

    def _mean_step(self, images: Tensor, labels: Tensor) -> StepOutput:
        if not self.method.mixup:
            logits = self._forward(images)  # [N, K]
            loss = F.cross_entropy(logits, labels)
        else:
            lam, pairing = self._draw_mixup(labels)
            logits = self._forward(lam * images + (1.0 - lam) * images[pairing])
            loss = lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(
                logits, labels[pairing]
            )
        self._apply(loss)
        return StepOutput(loss.detach(), logits.detach())

    def _weighted_step(
        self, images: Tensor, labels: Tensor, meta_images: Tensor, meta_labels: Tensor
    ) -> StepOutput:
        mix = self._draw_mixup(labels) if self.method.mixup else None
        if mix is not None:
            lam, pairing = mix
            images = lam * images + (1.0 - lam) * images[pairing]  # the meta batch is not mixed
        logits = self._forward(images)  # [N, K]
        pseudo = logits.detach().argmax(dim=1) if self.method.uses_pseudo_labels else None  # [N]
        noisy_cost = F.cross_entropy(logits, labels, reduction="none")  # [N]
        targets = labels  # the engine's noisy-label targets: class indices [N]
        if mix is not None:  # soft targets [N, K], whose engine cost is the mixed CE below
            onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
            targets = lam * onehot + (1.0 - lam) * onehot[pairing]
            paired_cost = F.cross_entropy(logits, labels[pairing], reduction="none")
            noisy_cost = lam * noisy_cost + (1.0 - lam) * paired_cost
        alpha, beta = bootstrap_weights(
            self.model,
            self.optimizer,
            images,
            targets,
            pseudo,
            meta_images,
            meta_labels,
            loss="ce",
            method=self.method.engine,
            normalize=self.method.normalize,
            temperature=self.method.temperature,
            distributed=self.dist.enabled,
            process_group=self.dist.group,
        )
        loss = (alpha * noisy_cost).sum()
        if beta is not None:
            loss = loss + (beta * F.cross_entropy(logits, pseudo, reduction="none")).sum()
        loss = self.dist.world_size * loss  # a share of a global sum; gradients are averaged
        self._apply(loss)
        return StepOutput(loss.detach(), logits.detach(), alpha, beta)

    def _draw_mixup(self, labels: Tensor) -> tuple[float, Tensor]:
        """λ ~ Beta(a, a) from the host generator, then a pairing π [N] from the device generator."""
        lam = float(self.mixup_rng.beta(self.method.mixup_alpha, self.method.mixup_alpha))
        pairing = torch.randperm(len(labels), generator=self.generator, device=labels.device)
        return lam, pairing

    def _forward(self, images: Tensor) -> Tensor:
        with autocast_to(self.amp_dtype, images.device.type):
            return self.forward_model(images).float()

    def _apply(self, loss: Tensor) -> None:
        apply_update(
            self.model,
            self.optimizer,
            loss,
            grad_clip_norm=self.grad_clip_norm,
            average_gradients=self.dist.average_gradients,
        )

    def state_dict(self) -> dict[str, Any]:
        """The random sources' states (model and optimizer are saved by the run)."""
        return {"generator": self.generator.get_state(), "mixup_rng": self.mixup_rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the random sources from :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
        self.mixup_rng.bit_generator.state = state["mixup_rng"]


class EpochMeter:
    """Running sums of one epoch's step outputs on the device; :meth:`means` reads them back once.

    Reports ``loss`` (mean over steps), ``train_acc_noisy`` (top-1 against the labels trained on, the
    reference's number), ``train_acc_clean`` (against the true labels where known) and, with meta-weighting,
    ``beta_share`` (mean per step of Σβ / Σ(α+β)), ``alpha_on_noisy`` (mean per step of the share of Σα on
    samples whose label is wrong) and ``zero_weight_steps`` (steps where no score was positive: loss 0).
    """

    def __init__(self, device: torch.device, dist: Distributed = SINGLE) -> None:
        self.sums = torch.zeros(9, dtype=torch.float64, device=device)
        self.steps, self.dist = 0, dist

    def add(self, out: StepOutput, labels: Tensor, clean: Tensor) -> None:
        """Add one step; ``labels`` [N] the labels trained on, ``clean`` [N] the true ones (−1 unknown)."""
        predicted = out.logits.argmax(dim=1)
        known = clean >= 0
        values = [out.loss, (predicted == labels).sum(), ((predicted == clean) & known).sum(), known.sum()]
        values.append(torch.full((), float(len(labels)), device=labels.device))  # a fill, not a host copy
        if out.alpha is not None:
            alpha_total = out.alpha.sum()
            beta_total = out.beta.sum() if out.beta is not None else torch.zeros_like(alpha_total)
            total = alpha_total + beta_total
            on_noisy = (out.alpha * ((labels != clean) & known)).sum()
            values += [beta_total / total.clamp_min(_TINY), on_noisy / alpha_total.clamp_min(_TINY)]
            values += [(total <= 0).float(), torch.ones((), device=labels.device)]
        else:
            values += [torch.zeros((), device=labels.device)] * 4
        self.sums += torch.stack([v.to(torch.float64) for v in values])
        self.steps += 1

    def means(self) -> dict[str, float]:
        """The epoch's statistics (one host read); weight statistics only if a step had weights.

        Across processes (a collective: every process calls it) loss and accuracies are those of the
        global batches; ``beta_share`` and ``alpha_on_noisy`` are means of each process's share.
        """
        sums = self.sums.clone()
        self.dist.average([sums])
        loss, right_noisy, right_clean, known, seen, beta, noisy_alpha, zero, weighted = sums.tolist()
        stats = {"loss": loss / max(self.steps, 1), "train_acc_noisy": right_noisy / max(seen, 1.0)}
        if known > 0:
            stats["train_acc_clean"] = right_clean / known
        if weighted > 0:
            stats.update(beta_share=beta / weighted, alpha_on_noisy=noisy_alpha / weighted)
            stats["zero_weight_steps"] = zero
        return stats


class WeightLog:
    """α, β and the pseudo-label of chosen training samples, as last seen in the epoch (the paper's Figure 4).

    Kept on the device: each step scatters its values into one slot per tracked sample (one spare slot takes
    all the others), so recording never syncs; :meth:`save` reads them back once per epoch.
    """

    def __init__(
        self, tracked: np.ndarray, noisy: np.ndarray, clean: np.ndarray, device: torch.device
    ) -> None:
        self.tracked = np.asarray(tracked, dtype=np.int64)  # [T] training indices
        self.noisy, self.clean = noisy[self.tracked], clean[self.tracked]
        spare = len(self.tracked)
        self.slots = torch.full((len(noisy),), spare, dtype=torch.long, device=device)  # [len(train)]
        self.slots[torch.as_tensor(self.tracked, device=device)] = torch.arange(spare, device=device)
        self.values = torch.full((3, spare + 1), float("nan"), device=device)  # α, β, pseudo-label × slot

    @classmethod
    def spread(cls, count: int, noisy: np.ndarray, clean: np.ndarray, device: torch.device) -> WeightLog:
        """Track ``count`` indices spread evenly over the training set (class-grouped orders: every class)."""
        size = min(count, len(noisy))
        tracked = np.unique(np.linspace(0, len(noisy) - 1, size).round().astype(np.int64))
        return cls(tracked, noisy, clean, device)

    def reset(self) -> None:
        """Forget the previous epoch's values."""
        self.values.fill_(float("nan"))

    def record(self, ids: Tensor, out: StepOutput) -> None:
        """Store the weights of the tracked samples among ``ids`` [N] (no-op without weights)."""
        if out.alpha is None or not len(self.tracked):
            return
        beta = out.beta if out.beta is not None else torch.full_like(out.alpha, float("nan"))
        pseudo = out.logits.argmax(dim=1).to(out.alpha.dtype)
        self.values[:, self.slots[ids]] = torch.stack([out.alpha, beta, pseudo])

    def save(self, path: Path) -> None:
        """Write ``index, noisy_label, clean_label, pseudo_label, alpha, beta`` ([T] each) to ``path``.

        Samples not seen in the epoch have NaN weights and pseudo-label −1; β is NaN for l2rw; clean label −1
        where unknown.
        """
        if not len(self.tracked):
            return
        alpha, beta, pseudo = self.values[:, :-1].cpu().numpy()
        arrays = {
            "index": self.tracked,
            "noisy_label": self.noisy,
            "clean_label": self.clean,
            "pseudo_label": np.where(np.isnan(pseudo), -1, np.nan_to_num(pseudo)).astype(np.int64),
            "alpha": alpha,
            "beta": beta,
        }
        write_atomic(path, lambda file: np.savez(file, **arrays))
