"""``mlbseg train``: one segmentation run, from config to ``checkpoints/final.pt`` (DESIGN.md §4).

:class:`SegmentationRun` holds the model, optimizer, schedule, EMA teacher, generator and the two index
streams (training slices, meta slices); :func:`mlbseg.engine.fit.fit` drives it epoch by epoch and writes
the checkpoints. After every epoch the validation Dice on the clean meta cases (never the test cases) is
logged.

Under ``torchrun`` (:mod:`mlbseg.engine.distributed`) every process trains the same run on its part of
each global batch: ``train.batch_size`` and ``method.meta_batch_size`` are per process, both index streams
draw global batches from one generator seeded alike on every process (the same permutation everywhere,
a different part on each process, new meta slices every step), and augmentation uses a generator of each
process's own. With one process everything is as before: one generator for streams and augmentation.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch

from mlbseg.engine.distributed import SINGLE, Distributed, distributed_session
from mlbseg.engine.ema import EMATeacher
from mlbseg.engine.fit import fit
from mlbseg.engine.logbook import Logbook
from mlbseg.engine.optim import build_optimizer, build_scheduler
from mlbseg.engine.progress import EpochProgress
from mlbseg.engine.seeding import amp_dtype_for, make_generator, resolve_device, seed_everything
from mlbseg.engine.streams import IndexStream, MixedIndexStream
from mlbseg.errors import UserError
from mlbseg.seg.config import SegConfig
from mlbseg.seg.data import SliceSet, load_slices, load_volumes
from mlbseg.seg.inference import validation_dice
from mlbseg.seg.model import build_model
from mlbseg.seg.step import SegmentationStep


def default_run_dir(cfg: SegConfig) -> Path:
    """``runs/<name>-<noise>-seed<seed>``."""
    return Path("runs") / f"{cfg.name}-{cfg.data.noise}-seed{cfg.train.seed}"


def train(cfg: SegConfig, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Train one run end to end (or continue it with ``resume``) and return its folder.

    Started by ``torchrun``, the processes train one run together (see the module docstring).
    """
    with distributed_session(resolve_device(cfg.train.device)) as dist:
        build = functools.partial(SegmentationRun, dist=dist)
        return fit(cfg, run_dir or default_run_dir(cfg), resume, cfg.train.epochs, build, dist)


class SegmentationRun:
    """Everything that changes during a segmentation run, and one epoch of training."""

    def __init__(self, cfg: SegConfig, dist: Distributed = SINGLE) -> None:
        self.cfg, self.dist = cfg, dist
        self.device = dist.place(resolve_device(cfg.train.device))
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        prepared = Path(cfg.data.prepared)
        label_key = "mask" if cfg.data.noise == "clean" else f"noisy_{cfg.data.noise}"
        self.train_set = load_slices(prepared, "train", label_key, self.device)
        self.meta_set = load_slices(prepared, "meta", "mask", self.device)
        self.meta_volumes = load_volumes(prepared, "meta", self.device)
        check_zoom_pads(cfg, self.train_set.images.shape[-1])
        _check_normalizer(cfg)
        model = self._build_model()
        dist.broadcast_module(model)
        optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.epochs)
        teacher = EMATeacher(model, cfg.method.ema.decay) if cfg.method.uses_ema else None
        generator = make_generator(dist.rank_seed(cfg.train.seed), self.device)  # augmentation, views
        self.stream_generator = make_generator(cfg.train.seed, self.device) if dist.enabled else generator
        amp_dtype = amp_dtype_for(self.device) if cfg.train.amp else None
        self.step = SegmentationStep(
            model,
            optimizer,
            cfg.method,
            cfg.data,
            cfg.optim.grad_clip_norm,
            teacher,
            generator,
            amp_dtype,
            dist=dist,
            compile_model=cfg.train.compile,
        )
        world = dist.world_size  # the streams draw global batches; each process takes its part
        fraction = cfg.data.foreground_fraction
        self.train_stream = slice_stream(
            self.train_set, cfg.train.batch_size, fraction, world, self.stream_generator
        )
        self.meta_stream = slice_stream(
            self.meta_set, cfg.method.meta_batch_size, fraction, world, self.stream_generator
        )
        self.epoch = 0
        self.global_step = 0

    def _build_model(self) -> torch.nn.Module:
        model = build_model(
            arch=self.cfg.model.arch,
            encoder=self.cfg.model.encoder,
            encoder_depth=self.cfg.model.encoder_depth,
            decoder_channels=self.cfg.model.decoder_channels,
            encoder_weights=self.cfg.model.encoder_weights,
            foreground_prior=self.cfg.model.foreground_prior,
        ).to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model

    @property
    def steps_per_epoch(self) -> int:
        """``train.steps_per_epoch``, or one pass over the training slices (by all processes together)."""
        global_batch = self.cfg.train.batch_size * self.dist.world_size
        return self.cfg.train.steps_per_epoch or max(1, len(self.train_set) // global_batch)

    def train_epoch(self, logbook: Logbook) -> dict[str, float]:
        """One epoch of steps, the LR schedule step, and the validation Dice on the meta cases."""
        cfg, step, dist = self.cfg, self.step, self.dist
        meta_weighting = self.epoch >= cfg.method.warmup_epochs
        num_steps = self.steps_per_epoch
        totals: dict[str, torch.Tensor] = {}
        started = time.perf_counter()
        with EpochProgress(f"epoch {self.epoch + 1}/{cfg.train.epochs}", num_steps) as progress:
            for index in range(num_steps):
                batch = self.train_set.batch(dist.shard(self.train_stream.next()))
                meta = self.meta_set.batch(dist.shard(self.meta_stream.next()))
                batch, meta = (
                    step.expand(*batch, views=meta_weighting),
                    step.expand(*meta, views=meta_weighting),
                )
                for name, value in step(batch, meta, meta_weighting).items():
                    totals[name] = totals[name] + value if name in totals else value
                self.global_step += 1
                if (index + 1) % cfg.train.log_every == 0 or index + 1 == num_steps:
                    means = _floats(dist.mean_values({k: v / (index + 1) for k, v in totals.items()}))
                    logbook.scalars("step", means, self.global_step)
                    progress.update(index + 1, loss=means["loss"])
        row: dict[str, float] = {"epoch": self.epoch + 1, "lr": step.optimizer.param_groups[0]["lr"]}
        row.update(_floats(dist.mean_values({k: v / num_steps for k, v in totals.items()})))
        dist.average_buffers([step.model] if step.teacher is None else [step.model, step.teacher.model])
        row["val_dice"] = float("nan")  # rank 0 alone validates and writes the row
        if dist.is_main:
            row["val_dice"] = validation_dice(step.model, self.meta_volumes, amp_dtype=step.amp_dtype)
        row["seconds"] = time.perf_counter() - started
        self.scheduler.step()
        self.epoch += 1
        return row

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, schedule, teacher, generator and stream positions, counters.

        Across processes (every process must call it) also the shared stream generator, every
        process's own generator, and the number of processes.
        """
        step = self.step
        state = {
            "model": step.model.state_dict(),
            "optimizer": step.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "teacher": step.teacher.state_dict() if step.teacher is not None else None,
            "generator": step.generator.get_state(),
            "train_stream": self.train_stream.state_dict(),
            "meta_stream": self.meta_stream.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
        }
        if self.dist.enabled:
            state["world_size"] = self.dist.world_size
            state["stream_generator"] = self.stream_generator.get_state()
            state["rank_generators"] = self.dist.gather(step.generator.get_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (written by as many processes as this run has)."""
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise UserError(
                f"the checkpoint was written by {saved_world} process(es), this run has "
                f"{self.dist.world_size}; resume with torchrun --nproc-per-node {saved_world}"
                + (" (or without torchrun)" if saved_world == 1 else "")
            )
        step = self.step
        step.model.load_state_dict(state["model"])
        step.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if step.teacher is not None:
            step.teacher.load_state_dict(state["teacher"])
        if self.dist.enabled:
            self.stream_generator.set_state(state["stream_generator"])
            step.generator.set_state(state["rank_generators"][self.dist.rank])
        else:
            step.generator.set_state(state["generator"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.meta_stream.load_state_dict(state["meta_stream"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]

    def final_state(self) -> dict[str, Any]:
        """The student's weights and, when enabled, the EMA teacher's."""
        teacher = self.step.teacher
        return {"model": self.step.model.state_dict(), "teacher": teacher.state_dict() if teacher else None}


def _floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Read device scalars (a host synchronisation: only when logging)."""
    return {name: float(value) for name, value in values.items()}


def slice_stream(
    slices: SliceSet, batch_size: int, foreground_fraction: float, groups: int, generator: torch.Generator
) -> IndexStream | MixedIndexStream:
    """Batch indices into ``slices``, uniform or with foreground oversampling.

    With ``foreground_fraction`` > 0, that share of each process's batch comes from the slices whose
    training label has foreground (``data.foreground_fraction``).
    """
    if not 0.0 <= foreground_fraction <= 1.0:
        raise UserError(f"data.foreground_fraction: must be in [0, 1], got {foreground_fraction}")
    count = round(foreground_fraction * batch_size)
    if count == 0:
        return IndexStream(len(slices), batch_size * groups, generator)
    foreground = slices.labels.flatten(1).any(dim=1).nonzero().flatten()  # [F]
    if len(foreground) == 0:
        raise UserError("data.foreground_fraction: no slice of this split has a foreground label")
    return MixedIndexStream(foreground, len(slices), batch_size, count, groups, generator)


def check_zoom_pads(cfg: SegConfig, size: int) -> None:
    """UserError when the zoom pads of an MLB-Seg config do not fit ``size``×``size`` slices."""
    pads = set(cfg.method.views.zoom_pads)
    if cfg.method.uses_views and (len(pads) < 2 or 2 * max(pads) >= size):
        raise UserError(
            f"method.views.zoom_pads: need at least two distinct pads, each below {size // 2} for "
            f"{size}×{size} slices; got {list(cfg.method.views.zoom_pads)}"
        )


def _check_normalizer(cfg: SegConfig) -> None:
    """An unknown ``method.normalize`` is a config error, reported before the first step."""
    from mlbseg.meta import resolve_normalizer_name

    try:
        resolve_normalizer_name(cfg.method.normalize, loss="bce")
    except ValueError as err:
        raise UserError(f"method.normalize: {err}") from None
