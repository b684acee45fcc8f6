"""``mlbseg classify train``: the classification task on the shared training loop (docs/design.md §4).

:data:`TASK` plugs into :func:`mlbseg.engine.trainer.train`, which writes config, checkpoints and
``metrics.csv``; :class:`ClassificationRun` trains one step at a time. After every epoch the test
accuracy is logged as ``test_acc`` (the paper's curves; no model selection: the final model is the last
epoch's). The run folder also gets ``noisy_labels.npy`` (the training labels used), ``data.json`` (set
sizes, realised noise rate) and, with ``train.log_weights_for``, ``weights/epoch_XXX.npz``.

Data order is a function of the seed alone: epoch e's training batches depend on (seed, e), meta batch k on
(seed, k), and every image's augmentation on a seed drawn with its batch (:class:`SeededItems`). Results
therefore do not depend on ``train.num_workers``, and ``--resume`` continues exactly. The meta batches come
from one persistent DataLoader iterator over an endless batch sampler (never ``next(iter(loader))`` per
step, docs/reference.md §7 item 1); its position is the number of meta batches consumed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlbseg.cls.batches import EpochBatchSampler, MetaBatchSampler, SeededItems
from mlbseg.cls.config import ClsConfig, check_config, dataset_kwargs
from mlbseg.cls.data import ClassificationData
from mlbseg.cls.datasets import build_datasets
from mlbseg.cls.evaluate import eval_loader, evaluate_accuracy
from mlbseg.cls.models import build_classifier
from mlbseg.cls.step import ClassificationStep, EpochMeter, WeightLog
from mlbseg.engine import trainer as engine
from mlbseg.engine.atomic import write_atomic
from mlbseg.engine.optim import build_optimizer
from mlbseg.engine.seeding import make_generator
from mlbseg.errors import UserError


def default_run_dir(cfg: ClsConfig) -> Path:
    """``runs/<name>-<method>-seed<seed>``."""
    return Path("runs") / f"{cfg.name}-{cfg.method.name}-seed{cfg.train.seed}"


def train(cfg: ClsConfig, run_dir: Path | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Train one run end to end (or continue it with ``resume``) and return its folder."""
    return engine.train(TASK, cfg, run_dir or default_run_dir(cfg), resume=resume, overwrite=overwrite)


class ClassificationTask:
    """Classification for :func:`mlbseg.engine.trainer.train`."""

    def check_config(self, cfg: ClsConfig) -> None:
        """:func:`mlbseg.cls.config.check_config` and the local weights file."""
        check_config(cfg)
        if cfg.model.weights is not None and not Path(cfg.model.weights).is_file():
            raise UserError(
                f"model.weights: {cfg.model.weights} not found; give a local torchvision state dict"
            )

    def build(self, cfg: ClsConfig, runtime: engine.Runtime) -> ClassificationRun:
        """Read the dataset and build model, optimizer, step and loaders."""
        if runtime.dist.enabled and cfg.train.log_weights_for:
            raise UserError("train.log_weights_for: not available under torchrun; set it to 0")
        data = build_datasets(cfg.data.dataset, cfg.data.root, **dataset_kwargs(cfg))
        return ClassificationRun(cfg, runtime, data)


TASK = ClassificationTask()


def _seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a loader worker from its torch seed (torch's is set by the DataLoader)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loader(dataset: Dataset, batch_sampler: Any, cfg: ClsConfig, device: torch.device) -> DataLoader:
    workers = cfg.train.num_workers
    return DataLoader(
        SeededItems(dataset),
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_seed_worker,
        generator=make_generator(cfg.train.seed, torch.device("cpu")),
        persistent_workers=workers > 0,
    )


class ClassificationRun:
    """Everything that changes during a classification run, one step at a time.

    Under torchrun each process takes its chunk of every global batch (``train.batch_size`` and
    ``method.meta_batch_size`` are per process); an epoch's last partial global batch is dropped there so
    every process takes equal steps. Mixup pairs images within each process's chunk.
    """

    def __init__(self, cfg: ClsConfig, runtime: engine.Runtime, data: ClassificationData) -> None:
        self.cfg, self.data, self.runtime, self.dist = cfg, data, runtime, runtime.dist
        self.device = device = runtime.device
        world = self.dist.world_size
        self.model = runtime.place_model(build_classifier(cfg.model, data.num_classes))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.step = ClassificationStep(
            self.model,
            self.optimizer,
            method=cfg.method,
            grad_clip_norm=cfg.optim.grad_clip_norm,
            seed=self.dist.rank_seed(cfg.train.seed),
            amp_dtype=runtime.amp_dtype,
            dist=self.dist,
            compile_model=cfg.train.compile,
        )
        self.train_batches = EpochBatchSampler(
            len(data.train),
            cfg.train.batch_size * world,
            cfg.train.seed,
            sampler=data.train_sampler,
            max_batches=cfg.train.steps_per_epoch,
            shard=(self.dist.rank, world),
        )
        self.train_loader = _loader(data.train, self.train_batches, cfg, device)
        self.test_loader = eval_loader(data.test, cfg.train.eval_batch_size, cfg.train.num_workers, device)
        self.clean_labels = torch.as_tensor(data.clean_labels, device=device)
        self.weight_log = WeightLog.spread(
            cfg.train.log_weights_for, data.noisy_labels, data.clean_labels, device
        )
        self.meta_consumed = 0
        self._meta_batches: Iterator[Any] | None = None
        self._train_batches: Iterator[Any] | None = None
        self.meter = EpochMeter(device, self.dist)
        self.weighted = False

    def _meta_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next clean meta batch on the device: images [M, 3, H, W], labels [M]."""
        if self._meta_batches is None:
            cfg, world = self.cfg, self.dist.world_size
            sampler = MetaBatchSampler(
                len(self.data.meta),
                cfg.method.meta_batch_size * world,
                cfg.train.seed,
                start=self.meta_consumed,
                shard=(self.dist.rank, world),
            )
            self._meta_batches = iter(_loader(self.data.meta, sampler, cfg, self.device))
        images, labels, _ = next(self._meta_batches)
        self.meta_consumed += 1
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def steps_in_epoch(self, epoch: int) -> int:
        """The batches of one epoch (of this process's chunks)."""
        return len(self.train_batches)

    def begin_epoch(self, epoch: int) -> None:
        """Meta-weighting after warm-up; this epoch's batches; fresh statistics and weight log."""
        self.weighted = self.cfg.method.uses_meta_weights and epoch >= self.cfg.method.warmup_epochs
        self.epoch = epoch
        self.train_batches.set_epoch(epoch)
        self._train_batches = iter(self.train_loader)
        self.meter = EpochMeter(self.device, self.dist)
        self.weight_log.reset()
        self.model.train()

    def train_step(self) -> None:
        """One iteration on the next training batch (and a meta batch after warm-up)."""
        assert self._train_batches is not None
        images, labels, ids = (t.to(self.device, non_blocking=True) for t in next(self._train_batches))
        out = self.step(images, labels, self._meta_batch() if self.weighted else None)
        self.meter.add(out, labels, self.clean_labels[ids])
        self.weight_log.record(ids, out)

    def running_stats(self) -> dict[str, float]:
        """Loss, training accuracy against the noisy and the clean labels, weight shares."""
        return self.meter.means()

    def end_epoch(self) -> dict[str, float]:
        """Test accuracy (rank 0; no model selection) and the epoch's α/β file."""
        self._train_batches = None
        if not self.dist.is_main:
            return {"test_acc": float("nan"), "test_loss": float("nan")}
        test = evaluate_accuracy(self.model, self.test_loader, self.runtime.amp_dtype)
        if self.weighted:
            self.weight_log.save(self.runtime.run_dir / "weights" / f"epoch_{self.epoch + 1:03d}.npz")
        return {"test_acc": test["accuracy"], "test_loss": test["loss"]}

    def write_inputs(self) -> None:
        """``noisy_labels.npy`` and ``data.json`` (see the module docstring)."""
        _write_data_files(self.runtime.run_dir, self.cfg, self.data)

    def state_dict(self) -> dict[str, Any]:
        """The step's random sources and the meta-stream position (the epoch's batches follow from it)."""
        return {"step": self.step.state_dict(), "meta_consumed": self.meta_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.step.load_state_dict(state["step"])
        self.meta_consumed, self._meta_batches = state["meta_consumed"], None

    def tensorboard_figures(self, epoch: int) -> dict[str, Any]:
        """None: classification logs its α/β as files (``train.log_weights_for``), drawn by ``figure``."""
        return {}

    def final_state(self) -> dict[str, Any]:
        """The class count evaluation needs."""
        return {"num_classes": self.data.num_classes}


def _write_data_files(run_dir: Path, cfg: ClsConfig, data: ClassificationData) -> None:
    """``noisy_labels.npy`` and ``data.json`` (set sizes, realised noise rate); one line on stderr."""
    from rich.console import Console

    info = {"dataset": cfg.data.dataset, "num_classes": data.num_classes, "train": len(data.train)}
    info.update(meta=len(data.meta), test=len(data.test), noise=cfg.data.noise, noise_rate=data.noise_rate)
    write_atomic(run_dir / "noisy_labels.npy", lambda file: np.save(file, data.noisy_labels))
    write_atomic(run_dir / "data.json", lambda file: file.write(json.dumps(info, indent=2).encode()))
    rate = "unknown" if data.noise_rate is None else f"{100 * data.noise_rate:.2f} %"
    Console(stderr=True).print(
        f"{cfg.data.dataset}: {info['train']} train (realised noise rate {rate}), {info['meta']} meta, "
        f"{info['test']} test images"
    )
