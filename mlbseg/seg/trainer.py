"""``mlbseg train``: the segmentation task on the shared training loop (docs/design.md §4).

:data:`TASK` plugs into :func:`mlbseg.engine.trainer.train`: :meth:`SegmentationTask.build` loads the
prepared slices onto the device and builds UNet++, the optimizer, the EMA teacher and the step;
:class:`SegmentationRun` draws each step's training and meta slices from two index streams, trains, and
after every epoch logs the mean per-volume Dice on the clean meta cases (``meta_dice``) and, when the
prepared data have a ``val`` split, on its cases (``val_dice``; without one it is not logged). The test
cases are never read. ``train.select: best_val`` keeps the weights of the epoch with the best
``val_dice`` for ``final.pt`` (the row's ``best_epoch``/``best_val_dice``, the checkpoint's ``best``).

The robust-loss methods' parameters (the T-Loss's ν, :class:`mlbseg.seg.losses.RobustLoss`) join the run's
optimizer as a second parameter group without weight decay (a decay of η = log ν would pull ν to 1, a
prior the paper does not have), are clipped and averaged with the network's gradients, and are saved in
both checkpoints (``robust_loss``).

Under ``torchrun`` (:mod:`mlbseg.engine.distributed`) every process trains the same run on its part of
each global batch: ``train.batch_size`` and ``method.meta_batch_size`` are per process, both index streams
draw global batches from one generator seeded alike on every process (the same permutation everywhere,
a different part on each process, new meta slices every step), and augmentation uses a generator of each
process's own. With one process everything is as before: one generator for streams and augmentation.

The data decide the network's shape: ``len(channels)`` input channels and ``output_channels(K)`` logit
maps for the K labels of the manifest (binary: one); both checkpoints keep the manifest's ``data`` record
(:func:`mlbseg.seg.data.data_record`). ``data.noise`` names the training labels; train cases that lack
them (a case without a reference under a synthetic level, a case without the chosen annotation) are left
out, and train cases without a reference are not monitored (``train_dice_reference``); both are said once
on stderr.

``adele`` (:class:`~mlbseg.seg.correction.EarlyLearningCorrection`) keeps each foreground class's
training-IoU curve, its turning point and the corrected label maps of the train slices, which the steps
then train on; all three are in ``last.pt`` (``correction``) and resume bit for bit. ``dast``'s memory of
the last samples' noisiness scores is in ``last.pt`` (``dast``) too
(:class:`mlbseg.seg.peers.NoisinessMemory`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from mlbseg.engine import trainer as engine
from mlbseg.engine.ema import EMATeacher
from mlbseg.engine.optim import build_optimizer
from mlbseg.engine.seeding import make_generator
from mlbseg.engine.streams import IndexStream, MixedIndexStream
from mlbseg.errors import UserError
from mlbseg.figures.weights import draw_weight_maps
from mlbseg.prep.manifest import MANIFEST, label_names, load_manifest
from mlbseg.seg.config import SegConfig, check_adele_scales_fit, check_config, check_zoom_pads
from mlbseg.seg.correction import EarlyLearningCorrection
from mlbseg.seg.data import (
    SliceSet,
    data_record,
    load_slices,
    load_training_slices,
    load_volumes,
    training_label_key,
)
from mlbseg.seg.inference import validation_dice
from mlbseg.seg.model import LogitMean, build_model, output_channels, size_divisor
from mlbseg.seg.peers import PeerNetwork
from mlbseg.seg.step import SegmentationStep, robust_loss_for
from mlbseg.seg.tensorboard import overlay_of_volume
from mlbseg.seg.weight_maps import live_weight_rows

# Statistics that a batch may not cover (NaN then): averaged over the steps whose batch they cover.
MONITORING_STATS = ("train_dice_reference",)


def default_run_dir(cfg: SegConfig) -> Path:
    """``runs/<name>-<noise>-seed<seed>``."""
    return Path("runs") / f"{cfg.name}-{cfg.data.noise}-seed{cfg.train.seed}"


def train(cfg: SegConfig, run_dir: Path | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Train one run end to end (or continue it with ``resume``) and return its folder."""
    return engine.train(TASK, cfg, run_dir or default_run_dir(cfg), resume=resume, overwrite=overwrite)


class SegmentationTask:
    """Segmentation for :func:`mlbseg.engine.trainer.train`."""

    def check_config(self, cfg: SegConfig) -> None:
        """:func:`mlbseg.seg.config.check_config`."""
        check_config(cfg)

    def build(self, cfg: SegConfig, runtime: engine.Runtime) -> SegmentationRun:
        """Load the prepared data onto the device and build model, optimizer and step."""
        return SegmentationRun(cfg, runtime)


TASK = SegmentationTask()


class SegmentationRun:
    """Everything that changes during a segmentation run, one step at a time."""

    def __init__(self, cfg: SegConfig, runtime: engine.Runtime) -> None:
        self.cfg, self.dist = cfg, runtime.dist
        device = runtime.device
        prepared = Path(cfg.data.prepared)
        manifest = load_manifest(prepared)
        has_val = bool(manifest["split"].get("val"))
        if cfg.train.select == "best_val" and not has_val:
            raise UserError(
                f"{prepared / MANIFEST}: train.select=best_val needs a 'val' split, and this dataset has "
                "none; prepare it with one (mlbseg prepare --val N) or use train.select=final"
            )
        self.data_record = data_record(manifest)
        self.train_set = load_training_slices(prepared, cfg.data.noise, device)
        self.meta_set = load_slices(prepared, "meta", "mask", device)
        self.meta_volumes = load_volumes(prepared, "meta", device)
        self.val_volumes = load_volumes(prepared, "val", device) if has_val else None
        self.best: dict[str, Any] | None = None  # train.select=best_val: the best epoch so far
        self.epoch = 0
        check_zoom_pads(cfg, self.train_set.images.shape[-1])
        check_adele_scales_fit(cfg, *self.train_set.images.shape[-2:])
        # None when every train slice has a reference: the step then monitors the whole batch.
        monitored = self.train_set.has_reference
        self.train_has_reference = None if bool(monitored.all()) else monitored
        if self.dist.is_main:
            _say_what_is_left_out(self.train_set, cfg.data.noise)
        num_labels = self.train_set.num_labels
        shape = {"in_channels": self.train_set.images.shape[1], "classes": output_channels(num_labels)}
        self.model = runtime.place_model(build_model(cfg.model, **shape))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.robust_loss = robust_loss_for(cfg.method)
        if self.robust_loss is not None:
            self.robust_loss.to(device)
            learnt = list(self.robust_loss.parameters())
            if learnt:  # ν: stepped by the run's optimizer, without weight decay
                self.optimizer.add_param_group({"params": learnt, "weight_decay": 0.0})
        self.correction = (
            EarlyLearningCorrection(
                self.train_set,
                slope_drop=cfg.method.adele_slope_drop,
                confidence=cfg.method.adele_confidence,
                scales=cfg.method.adele_scales if cfg.method.uses_multiscale_consistency else (),
                size_divisor=size_divisor(cfg.model),
            )
            if cfg.method.rule == "adele"
            else None
        )
        self.peers = [
            PeerNetwork(peer, build_optimizer(peer, cfg.optim))
            for peer in (
                runtime.place_model(build_model(cfg.model, **shape)) for _ in range(cfg.method.networks - 1)
            )
        ]
        # What validation, the overlays and final.pt see: the first network, or all networks' mean (dast)
        networks = [self.model, *(peer.model for peer in self.peers)][: cfg.method.evaluated_networks]
        self.evaluated = self.model if len(networks) == 1 else LogitMean(networks)
        teacher = EMATeacher(self.model, cfg.method.ema.decay) if cfg.method.uses_ema else None
        generator = make_generator(self.dist.rank_seed(cfg.train.seed), device)  # augmentation, views
        self.stream_generator = make_generator(cfg.train.seed, device) if self.dist.enabled else generator
        self.step = SegmentationStep(
            self.model,
            self.optimizer,
            method=cfg.method,
            data=cfg.data,
            grad_clip_norm=cfg.optim.grad_clip_norm,
            teacher=teacher,
            generator=generator,
            amp_dtype=runtime.amp_dtype,
            dist=self.dist,
            compile_model=cfg.train.compile,
            num_labels=num_labels,
            robust_loss=self.robust_loss,
            peers=self.peers,
            size_divisor=size_divisor(cfg.model),
            epochs=cfg.train.epochs,
        )
        world, fraction = self.dist.world_size, cfg.data.foreground_fraction
        self.train_stream = slice_stream(
            self.train_set,
            cfg.train.batch_size,
            foreground_fraction=fraction,
            groups=world,
            generator=self.stream_generator,
        )
        self.meta_stream = slice_stream(
            self.meta_set,
            cfg.method.meta_batch_size,
            foreground_fraction=fraction,
            groups=world,
            generator=self.stream_generator,
        )
        self.meta_weighting = False
        self.totals: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}  # steps that covered each of MONITORING_STATS
        self.steps_done = 0

    def steps_in_epoch(self, epoch: int) -> int:
        """``train.steps_per_epoch``, or one pass over the training slices (by all processes together)."""
        global_batch = self.cfg.train.batch_size * self.dist.world_size
        return self.cfg.train.steps_per_epoch or max(1, len(self.train_set) // global_batch)

    def begin_epoch(self, epoch: int) -> None:
        """Meta-weighting starts after ``method.warmup_epochs``; the statistics start afresh.

        The peers' optimizers take the first's learning rate (the schedule steps the first only), and the
        step the epoch's forget rate.
        """
        self.meta_weighting = epoch >= self.cfg.method.warmup_epochs
        self.totals, self.counts, self.steps_done = {}, {}, 0
        self.epoch = epoch
        rate = self.optimizer.param_groups[0]["lr"]
        for peer in self.peers:
            for group in peer.optimizer.param_groups:
                group["lr"] = rate
        self.step.begin_epoch(epoch)

    def train_step(self) -> None:
        """Draw this process's training and meta slices, expand them, and take the method's step."""
        step, dist, views = self.step, self.dist, self.meta_weighting
        index = dist.shard(self.train_stream.next())
        monitored = None if self.train_has_reference is None else self.train_has_reference[index]
        batch = step.expand(*self.train_set.batch(index), has_reference=monitored, views=views)
        meta = step.expand(*self.meta_set.batch(dist.shard(self.meta_stream.next())), views=views)
        for name, value in step(batch, meta, self.meta_weighting).items():
            if name in MONITORING_STATS:  # NaN for a batch without a reference: not counted
                covered = value.isfinite()
                value = torch.where(covered, value, torch.zeros_like(value))
                self.counts[name] = self.counts[name] + covered if name in self.counts else covered.float()
            self.totals[name] = self.totals[name] + value if name in self.totals else value
        self.steps_done += 1

    def running_stats(self) -> dict[str, float]:
        """Means over the epoch's steps so far (monitoring: the steps they covered), over the processes."""
        means = {name: total / self.counts.get(name, self.steps_done) for name, total in self.totals.items()}
        return {name: float(value) for name, value in self.dist.mean_values(means).items()}

    def end_epoch(self) -> dict[str, float]:
        """Average BatchNorm statistics over the processes; rank 0 logs ``meta_dice`` and ``val_dice``.

        ``val_dice`` only with a val split; with ``train.select: best_val`` also ``best_epoch`` (1-based,
        as ``epoch``) and ``best_val_dice``, the best so far (the first of equal ones). ``adele``: every
        process first updates the curves, turning points and corrected labels alike
        (:meth:`EarlyLearningCorrection.end_epoch`: ``train_iou``, ``corrected_classes``,
        ``corrected_share``).
        """
        step = self.step
        networks = [step.model, *(peer.model for peer in self.peers)]
        self.dist.average_buffers(networks if step.teacher is None else [*networks, step.teacher.model])
        corrected: dict[str, float] = {}
        if self.correction is not None:
            corrected = self.correction.end_epoch(
                self.epoch, step.class_overlap(), step.model, dist=self.dist, amp_dtype=step.amp_dtype
            )
        if not self.dist.is_main:  # rank 0 alone validates and writes the row
            return {**{name: float("nan") for name in self._epoch_metric_names()}, **corrected}
        metrics = {**corrected}
        evaluated = self.evaluated
        metrics["meta_dice"] = validation_dice(evaluated, self.meta_volumes, amp_dtype=step.amp_dtype)
        if self.val_volumes is not None:
            metrics["val_dice"] = validation_dice(evaluated, self.val_volumes, amp_dtype=step.amp_dtype)
        if self.cfg.train.select == "best_val":
            if self.best is None or metrics["val_dice"] > self.best["val_dice"]:
                self.best = self._snapshot(self.epoch + 1, metrics["val_dice"])
            metrics.update(best_epoch=self.best["epoch"], best_val_dice=self.best["val_dice"])
        return metrics

    def _epoch_metric_names(self) -> list[str]:
        names = ["meta_dice"] + (["val_dice"] if self.val_volumes is not None else [])
        return names + (["best_epoch", "best_val_dice"] if self.cfg.train.select == "best_val" else [])

    def _snapshot(self, epoch: int, val_dice: float) -> dict[str, Any]:
        """Copies of the evaluated model's (and the teacher's) state after ``epoch``, for ``best_val``."""
        teacher = self.step.teacher
        return {
            "epoch": epoch,
            "val_dice": val_dice,
            "model": _copy(self.evaluated.state_dict()),
            "teacher": _copy(teacher.state_dict()) if teacher is not None else None,
        }

    def write_inputs(self) -> None:
        """Nothing beyond ``config.yaml``: the prepared folder describes the inputs."""

    def state_dict(self) -> dict[str, Any]:
        """Teacher, robust loss (ν), peers, generators, stream positions, best epoch and the data record.

        ``peers`` holds each further network's ``model`` and ``optimizer`` state ([] for one network);
        ``correction`` ``adele``'s curves, turning points and corrected labels (None for other methods);
        ``dast`` ``dast``'s memory of noisiness scores (None for other methods);
        ``best`` holds the epoch, its ``val_dice``, model and teacher (None unless ``train.select:
        best_val``); ``data`` is for ``predict``.

        Across processes (every process must call it) also the shared stream generator and every
        process's own generator.
        """
        step = self.step
        state = {
            "teacher": step.teacher.state_dict() if step.teacher is not None else None,
            "generator": step.generator.get_state(),
            "train_stream": self.train_stream.state_dict(),
            "meta_stream": self.meta_stream.state_dict(),
            "robust_loss": self.robust_loss.state_dict() if self.robust_loss is not None else None,
            "peers": [
                {"model": peer.model.state_dict(), "optimizer": peer.optimizer.state_dict()}
                for peer in self.peers
            ],
            "correction": self.correction.state_dict() if self.correction is not None else None,
            "dast": step.noisiness.state_dict() if step.noisiness is not None else None,
            "best": self.best,
            "data": self.data_record,
        }
        if self.dist.enabled:
            state["stream_generator"] = self.stream_generator.get_state()
            state["rank_generators"] = self.dist.gather(step.generator.get_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (written by as many processes as this run has).

        ``data`` is not read back (checkpoints written before it existed resume alike): the prepared
        folder is read afresh. ``best`` (absent in older checkpoints: None) continues the selection.
        """
        step = self.step
        if step.teacher is not None:
            step.teacher.load_state_dict(state["teacher"])
        if self.robust_loss is not None:
            self.robust_loss.load_state_dict(state["robust_loss"])
        for peer, saved in zip(self.peers, state.get("peers", []), strict=True):
            peer.model.load_state_dict(saved["model"])
            peer.optimizer.load_state_dict(saved["optimizer"])
        if self.correction is not None:
            self.correction.load_state_dict(state["correction"])
        if step.noisiness is not None:
            step.noisiness.load_state_dict(state["dast"], next(self.model.parameters()).device)
        self.best = state.get("best")
        if self.dist.enabled:
            self.stream_generator.set_state(state["stream_generator"])
            step.generator.set_state(state["rank_generators"][self.dist.rank])
        else:
            step.generator.set_state(state["generator"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.meta_stream.load_state_dict(state["meta_stream"])

    def tensorboard_figures(self, epoch: int) -> dict[str, Any]:
        """Every ``train.figures_every`` epochs: an overlay, and α/β maps once meta-weighting is on.

        The overlay is of the first val case (else meta case); the α/β maps, for methods with meta weights,
        of four fixed training slices. Both leave the run as it was (:mod:`mlbseg.seg.tensorboard`,
        :func:`mlbseg.seg.weight_maps.live_weight_rows`), so training is the same with or without them.
        """
        every = self.cfg.train.figures_every
        if every == 0 or epoch % every:
            return {}
        step = self.step
        volume = (self.val_volumes or self.meta_volumes)[0]
        names = label_names(self.data_record)[1:]
        figures = {"overlay": overlay_of_volume(self.evaluated, volume, names, amp_dtype=step.amp_dtype)}
        if self.cfg.method.uses_meta_weights and self.meta_weighting:
            rows = live_weight_rows(step, self.cfg, self.train_set, self.meta_set, epoch=epoch)
            figures["weights"] = draw_weight_maps(rows)
        return figures

    def final_state(self) -> dict[str, Any]:
        """The EMA teacher's weights (when enabled), the robust loss (ν) and the data record (``data``).

        ``model`` is the evaluated model's: the first network's, also for co-teaching and Tri-Net (their peers
        stay in ``last.pt``), or for ``dast`` the :class:`~mlbseg.seg.model.LogitMean` of both networks.

        With ``train.select: best_val`` the weights are the best epoch's: ``model`` and ``teacher`` replace
        the last epoch's, and ``selected_epoch`` / ``selected_val_dice`` say which epoch they are.
        """
        teacher = self.step.teacher
        final = {
            "teacher": teacher.state_dict() if teacher else None,
            "robust_loss": self.robust_loss.state_dict() if self.robust_loss is not None else None,
            "data": self.data_record,
        }
        if self.evaluated is not self.model:
            final["model"] = self.evaluated.state_dict()
        if self.best is not None:
            final.update(model=self.best["model"], teacher=self.best["teacher"])
            final.update(selected_epoch=self.best["epoch"], selected_val_dice=self.best["val_dice"])
        return final


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a (nested) state dict's tensors; other values as they are."""
    return {
        key: _copy(value) if isinstance(value, dict) else value.clone() if torch.is_tensor(value) else value
        for key, value in state.items()
    }


def _say_what_is_left_out(train_set: SliceSet, noise: str) -> None:
    """One stderr line each: train cases left out for lacking the labels, and those not monitored."""
    if train_set.left_out:
        count, total = len(train_set.left_out), len(train_set.left_out) + len(train_set.cases)
        print(
            f"data.noise={noise}: left out {count} of {total} train cases without "
            f"'{training_label_key(noise)}' labels ({_some(train_set.left_out)})",
            file=sys.stderr,
        )
    unmonitored = train_set.cases_without_reference()
    if unmonitored:
        print(
            f"train_dice_reference: {len(unmonitored)} train case(s) without a reference are not monitored "
            f"({_some(unmonitored)})",
            file=sys.stderr,
        )


def _some(ids: tuple[str, ...] | list[str], shown: int = 3) -> str:
    """``a, b, c`` or ``a, b, c, …`` for more than ``shown`` ids."""
    return ", ".join(ids[:shown]) + (", …" if len(ids) > shown else "")


def slice_stream(
    slices: SliceSet, batch_size: int, *, foreground_fraction: float, groups: int, generator: torch.Generator
) -> IndexStream | MixedIndexStream:
    """Batch indices into ``slices``, uniform or with foreground oversampling.

    With ``foreground_fraction`` > 0, that share of each process's batch comes from the slices whose
    training label has foreground (``data.foreground_fraction``): ``fraction × batch`` rounded half up,
    and at least one slice, so that a positive share never silently turns the oversampling off (0.5 of a
    batch of 1 is one foreground slice, not Python's round-half-to-even 0).
    """
    count = max(1, math.floor(foreground_fraction * batch_size + 0.5)) if foreground_fraction > 0 else 0
    if count == 0:
        return IndexStream(len(slices), batch_size * groups, generator)
    foreground = slices.labels.flatten(1).any(dim=1).nonzero().flatten()  # [F]
    if len(foreground) == 0:
        raise UserError("data.foreground_fraction: no slice of this split has a foreground label")
    return MixedIndexStream(
        foreground, len(slices), batch_size, subset_count=count, groups=groups, generator=generator
    )
