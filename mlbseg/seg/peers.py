"""The iterations of the methods that train several networks: co-teaching, Tri-Net and DAST.

docs/method.md §5.3. Each function runs one iteration of its method with the parts of a
:class:`~mlbseg.seg.step.SegmentationStep`: its networks (the first and its :class:`PeerNetwork` s), label
space, forwards (:meth:`~mlbseg.seg.step.SegmentationStep.forward_logits`) and updates
(:meth:`~mlbseg.seg.step.SegmentationStep.update`); the step dispatches to them by ``method.rule``. The
rules themselves are the pure tensor functions of :mod:`mlbseg.seg.selection`. Co-teaching and Tri-Net
evaluate the first network, DAST the mean of both (:class:`~mlbseg.seg.model.LogitMean`). Everything
stays on the training device; the returned statistics are device tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mlbseg.engine.distributed import Distributed
from mlbseg.errors import UserError
from mlbseg.seg.label_space import hard_labels
from mlbseg.seg.selection import (
    class_log_probabilities,
    coteaching_masks,
    kl_divergence_map,
    masked_mean,
    noisiness_scores,
    ranked_extremes,
    refined_labels,
    sharpen,
    sigmoid_rampup,
    trinet_masks,
)

if TYPE_CHECKING:
    from mlbseg.seg.step import Batch, SegmentationStep


@dataclass
class PeerNetwork:
    """A further network of a method that trains several (co-teaching, Tri-Net, DAST), with its optimizer."""

    model: nn.Module
    optimizer: torch.optim.Optimizer


def selection_step(step: SegmentationStep, batch: Batch) -> dict[str, torch.Tensor]:
    """Co-teaching or Tri-Net: every network steps on the pixels the others select for it.

    Each network's per-pixel costs on the same augmented batch give the small-loss pixels
    (``step.keep_share`` of the process's batch); co-teaching trains each of the two on its peer's,
    Tri-Net each of the three on those its two peers agree on (:mod:`mlbseg.seg.selection`). The loss
    of a network is its mean cost over its selected pixels.
    """
    space = step.labels
    forwards = [step.forward_model, *step.peer_forward_models]
    logits = [step.forward_logits(batch.images, forward) for forward in forwards]  # each [V, C, h, w]
    costs = [space.costs(net_logits, batch.labels) for net_logits in logits]
    if step.method.rule == "coteaching":
        masks = list(coteaching_masks(costs[0], costs[1], step.keep_share))
    else:
        predictions = [hard_labels(space.probabilities(net.detach())) for net in logits]
        masks = trinet_masks(costs, predictions, step.keep_share)
    losses = [masked_mean(cost, mask) for cost, mask in zip(costs, masks, strict=True)]
    step.update(losses[0])
    for peer, loss in zip(step.peers, losses[1:], strict=True):
        step.update(loss, peer)
    probs = space.probabilities(logits[0].detach())
    selected = torch.stack([mask.float().mean() for mask in masks]).mean()
    return {
        "loss": losses[0].detach(),
        "selected_share": selected,
        "train_dice_reference": step.reference_dice(probs, batch),
    }


class NoisinessMemory:
    """DAST's FIFO memory of the last samples' noisiness scores, and the ranking of new scores against it.

    Yang et al., IEEE JBHI 2022. ``size`` is ``method.dast_queue`` (samples), ``share`` is
    ``method.dast_select_share``; across processes (``dist``) every process's scores join the memory, the
    global batch in rank order, so that all processes rank alike.
    """

    def __init__(self, size: int, share: float, dist: Distributed) -> None:
        self.size, self.share, self.dist = size, share, dist
        self.scores: torch.Tensor | None = None  # [n ≤ size], oldest first

    def rank(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push this process's [B] ``scores``; (severe [W·B] bool, slight [W·B] bool) of the global batch.

        The ranking set is the last max(size, W·B) scores, the current ones included
        (:func:`~mlbseg.seg.selection.ranked_extremes`); the memory keeps the last ``size`` of them.
        """
        everyone = self.dist.all_gather(scores)  # [W·B]
        ranking = everyone if self.scores is None else torch.cat([self.scores, everyone])
        ranking = ranking[-max(self.size, len(everyone)) :]
        self.scores = ranking[-self.size :]
        return ranked_extremes(ranking, everyone, self.share)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """``noisiness``: the memory's [n] float32 scores on the CPU, oldest first (None before a step)."""
        return {"noisiness": None if self.scores is None else self.scores.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor | None], device: torch.device) -> None:
        """Continue from :meth:`state_dict`, the memory on ``device``.

        Raises:
            UserError: For the state of the earlier DAST that ranked whole batches (``last.pt``'s ``dast``
                then holds ``divergences``).
        """
        if "noisiness" not in state:
            raise UserError(
                "last.pt: its dast state comes from an earlier mlbseg whose dast ranked whole batches; "
                "resuming would change the method mid-run: start the run again in a new folder"
            )
        scores = state["noisiness"]
        self.scores = None if scores is None else scores.to(device)


def dast_step(
    step: SegmentationStep, batch: Batch, meta: Batch, meta_weighting: bool
) -> dict[str, torch.Tensor]:
    """DAST: a clean branch on the clean data, a noisy branch on the labels it does not rank noisiest.

    Yang, Wang, Sun, Luo, Sun, Li, Wang & Zhang, "Learning COVID-19 Pneumonia Lesion Segmentation from
    Imperfect Annotations via Divergence-Aware Selective Training", IEEE JBHI 2022. The first network (the
    clean branch) trains on the clean meta batch, the peer (the noisy branch) on the noisy batch; the run
    evaluates the mean of their logits. Each noisy sample's label gets the clean branch's divergence-aware
    noisiness score (:func:`~mlbseg.seg.selection.noisiness_scores`), ranked against the memory of the last
    ``method.dast_queue`` samples' (:class:`NoisinessMemory`, ``step.noisiness``). A *severely* noisy sample
    (top ``method.dast_select_share``) does not train the noisy branch on its label; instead the two branches
    are pulled together on it, each toward the other's detached prediction, with weight
    ½·``method.dast_consistency_weight`` (dual-branch consistency). A *slightly* noisy sample (bottom share)
    also trains the clean branch: the mean |p − t| of its class probabilities against the sharpened vote t of
    both branches' predicted classes and the label (supplementary training,
    ``method.dast_supplementary_weight``). Both weights follow the epoch's sigmoid ramp-up (``step.epoch``
    over ``step.dast_ramp_epochs``); the regularisers are means over the batch, unselected samples counting 0.
    During warm-up (``meta_weighting`` False) no sample is ranked into either share (the memory still fills).
    Across processes the kept labels' mean is over the global batch's kept samples (this process's sum over
    their global count, times the number of processes), so the averaged gradients are those of one process on
    the concatenated batch. The choices are tensors, so a step has no host sync.
    """
    method, space, dist = step.method, step.labels, step.dist
    assert step.noisiness is not None
    count = len(meta.images)
    clean_net, noisy_net = step.forward_model, step.peer_forward_models[0]
    both = step.forward_logits(torch.cat([meta.images, batch.images]), clean_net)  # [M + B, C, h, w]
    meta_logits, clean_logits = both[:count], both[count:]
    noisy_logits = step.forward_logits(batch.images, noisy_net)  # [B, C, h, w]
    clean_log_probs = class_log_probabilities(clean_logits)  # [B, K, h, w]
    noisy_log_probs = class_log_probabilities(noisy_logits)
    clean_target, noisy_target = clean_log_probs.detach(), noisy_log_probs.detach()
    labels = batch.labels[:, 0].long()  # [B, h, w]
    scores = noisiness_scores(clean_target, noisy_target, labels, method.dast_divergence_scale)  # [B]
    severe_all, slight_all = (share & meta_weighting for share in step.noisiness.rank(scores))  # [W·B]
    mine = slice(dist.rank * len(scores), (dist.rank + 1) * len(scores))
    severe, slight = severe_all[mine], slight_all[mine]  # [B] this process's samples

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        return values.flatten(1).mean(dim=1)  # [B]

    weight = sigmoid_rampup(step.epoch, step.dast_ramp_epochs)
    consistency = 0.5 * weight * method.dast_consistency_weight
    kept_costs = (per_sample(space.costs(noisy_logits, batch.labels)) * ~severe).sum()
    kept_labels = dist.world_size * kept_costs / (~severe_all).sum().clamp_min(1)
    pulled_noisy = (per_sample(kl_divergence_map(clean_target, noisy_log_probs)) * severe).mean()
    noisy_loss = kept_labels + consistency * pulled_noisy
    target = sharpen(refined_labels(clean_target, noisy_target, labels), method.dast_temperature)
    supplementary = (per_sample((clean_log_probs.exp() - target).abs()) * slight).mean()
    pulled_clean = (per_sample(kl_divergence_map(noisy_target, clean_log_probs)) * severe).mean()
    meta_loss = space.costs(meta_logits, meta.labels).mean()
    clean_loss = (
        meta_loss + consistency * pulled_clean + weight * method.dast_supplementary_weight * supplementary
    )
    step.update(clean_loss)
    step.update(noisy_loss, step.peers[0])
    probs = space.probabilities(clean_logits.detach())
    return {
        "loss": clean_loss.detach(),
        "noisy_branch_loss": noisy_loss.detach(),
        "noisiness": scores.mean(),
        "severe_share": severe.float().mean(),
        "slight_share": slight.float().mean(),
        "train_dice_reference": step.reference_dice(probs, batch),
        "meta_loss": meta_loss.detach(),
    }
