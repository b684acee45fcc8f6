"""``mlbseg classify train``: one classification run, from config to ``checkpoints/final.pt``.

:class:`ClassificationRun` implements :class:`mlbseg.engine.fit.TrainingRun`; :func:`mlbseg.engine.fit.fit`
drives it epoch by epoch and writes config, checkpoints and ``metrics.csv``. After every epoch the test
accuracy is logged as ``test_acc`` (the paper's curves; no model selection: the final model is the last
epoch's). The run folder also gets ``noisy_labels.npy`` (the training labels used), ``data.json`` (set
sizes, realised noise rate) and, with ``train.log_weights_for``, ``weights/epoch_XXX.npz``.

Data order is a function of the seed alone: epoch e's training batches depend on (seed, e), meta batch k on
(seed, k), and every image's augmentation on a seed drawn with its batch (:class:`SeededItems`). Results
therefore do not depend on ``train.num_workers``, and ``--resume`` continues exactly. The meta batches come
from one persistent DataLoader iterator over an endless batch sampler (never ``next(iter(loader))`` per
step, REFERENCE.md §7 item 1); its position is the number of meta batches consumed.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlbseg.cls.config import ClsConfig, check_config, dataset_kwargs
from mlbseg.cls.data import ClassificationData
from mlbseg.cls.evaluate import eval_loader, evaluate_accuracy
from mlbseg.cls.step import ClassificationStep, EpochMeter, WeightLog
from mlbseg.engine.atomic import write_atomic
from mlbseg.engine.fit import fit
from mlbseg.engine.logbook import Logbook
from mlbseg.engine.optim import build_optimizer, build_scheduler
from mlbseg.engine.progress import EpochProgress
from mlbseg.engine.seeding import amp_dtype_for, make_generator, resolve_device, seed_everything
from mlbseg.errors import UserError

TRAIN_STREAM, META_STREAM = 1, 2  # keep the training and meta orders independent for one seed
Batch = list[tuple[int, int]]  # (item index, augmentation seed) per image


def default_run_dir(cfg: ClsConfig) -> Path:
    """``runs/<name>-<method>-seed<seed>``."""
    return Path("runs") / f"{cfg.name}-{cfg.method.name}-seed{cfg.train.seed}"


def train(cfg: ClsConfig, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Train one run end to end (or continue it with ``resume``) and return its folder.

    The config, the weights file and the dataset are checked before the run folder is created, so a
    mistake there leaves nothing behind.
    """
    from mlbseg.cls.datasets import build_datasets

    check_config(cfg)
    if cfg.model.weights is not None and not Path(cfg.model.weights).is_file():
        raise UserError(f"model.weights: {cfg.model.weights} not found; give a local torchvision state dict")
    data = build_datasets(cfg.data.dataset, cfg.data.root, **dataset_kwargs(cfg))
    run_dir = run_dir or default_run_dir(cfg)
    build = functools.partial(ClassificationRun, run_dir=run_dir, data=data)
    return fit(cfg, run_dir, resume, cfg.train.epochs, build)


class SeededItems(Dataset):
    """``items[(index, seed)]`` is ``dataset[index]`` with torch's CPU RNG seeded by ``seed`` meanwhile.

    torchvision's random transforms draw from that RNG, so each image's augmentation is fixed by its seed,
    in any worker. The caller's RNG state is restored afterwards.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone
            return self.dataset[index]


def _with_seeds(order: np.ndarray, rng: np.random.Generator) -> Batch:
    seeds = rng.integers(2**62, size=len(order))
    return list(zip(order.tolist(), seeds.tolist(), strict=True))


class EpochBatchSampler:
    """One epoch's training batches (a function of seed and epoch); call ``set_epoch`` before iterating.

    The order is a seeded permutation, or the dataset's own per-epoch sampler (Clothing1M's balanced
    sample). Batches keep the last partial one, as the reference; ``max_batches`` truncates the epoch.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, sampler: Any = None, max_batches: int | None = None
    ) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.sampler, self.max_batches = sampler, max_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        if self.sampler is not None:
            return np.asarray(self.sampler.indices(), dtype=np.int64)
        return rng.permutation(self.size)

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, TRAIN_STREAM, self.epoch])
        items = _with_seeds(self._order(rng), rng)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield items[start : start + self.batch_size]

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else self.size
        batches = -(-count // self.batch_size)
        return min(batches, self.max_batches) if self.max_batches is not None else batches


class MetaBatchSampler:
    """Endless meta batches; batch k depends on (seed, k) only, so a stream can restart at any ``start``.

    Pass p is a seeded permutation cut into ``size // batch_size`` full batches (one batch drawn with
    replacement when the meta set is smaller than a batch).
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0) -> None:
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.per_pass = max(1, size // batch_size)

    def _pass(self, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, META_STREAM, index])
        enough = self.size >= self.batch_size
        order = rng.permutation(self.size) if enough else rng.integers(self.size, size=self.batch_size)
        return _with_seeds(order[: self.per_pass * self.batch_size], rng)

    def __iter__(self) -> Iterator[Batch]:
        batch = self.start
        while True:
            pass_index, position = divmod(batch, self.per_pass)
            if position == 0 or batch == self.start:
                items = self._pass(pass_index)
            yield items[position * self.batch_size : (position + 1) * self.batch_size]
            batch += 1


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
    """Everything that changes during a classification run, and one epoch of training."""

    def __init__(self, cfg: ClsConfig, run_dir: Path, data: ClassificationData) -> None:
        from mlbseg.cls.models import build_classifier

        self.cfg, self.run_dir, self.data = cfg, run_dir, data
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        _write_data_files(run_dir, cfg, data)
        model = build_classifier(cfg.model.arch, data.num_classes, cfg.model.weights).to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.epochs)
        self.amp_dtype = amp_dtype_for(self.device) if cfg.train.amp else None
        self.step = ClassificationStep(
            model, optimizer, cfg.method, cfg.optim.grad_clip_norm, cfg.train.seed, self.amp_dtype
        )
        self.train_batches = EpochBatchSampler(
            len(data.train),
            cfg.train.batch_size,
            cfg.train.seed,
            data.train_sampler,
            cfg.train.steps_per_epoch,
        )
        self.train_loader = _loader(data.train, self.train_batches, cfg, self.device)
        self.test_loader = eval_loader(
            data.test, cfg.train.eval_batch_size, cfg.train.num_workers, self.device
        )
        self.clean_labels = torch.as_tensor(data.clean_labels, device=self.device)
        self.weight_log = WeightLog.spread(
            cfg.train.log_weights_for, data.noisy_labels, data.clean_labels, self.device
        )
        self.meta_consumed = 0
        self._meta_batches: Iterator[Any] | None = None
        self.epoch = 0
        self.global_step = 0

    def _meta_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next clean meta batch on the device: images [M, 3, H, W], labels [M]."""
        if self._meta_batches is None:
            cfg = self.cfg
            sampler = MetaBatchSampler(
                len(self.data.meta), cfg.method.meta_batch_size, cfg.train.seed, start=self.meta_consumed
            )
            self._meta_batches = iter(_loader(self.data.meta, sampler, cfg, self.device))
        images, labels, _ = next(self._meta_batches)
        self.meta_consumed += 1
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def train_epoch(self, logbook: Logbook) -> dict[str, float]:
        """One epoch of steps, the test accuracy, the weights file, and the LR schedule step."""
        cfg, step = self.cfg, self.step
        weighted = cfg.method.uses_meta_weights and self.epoch >= cfg.method.warmup_epochs
        self.train_batches.set_epoch(self.epoch)
        num_steps, meter = len(self.train_batches), EpochMeter(self.device)
        self.weight_log.reset()
        step.model.train()
        started = time.perf_counter()
        with EpochProgress(f"epoch {self.epoch + 1}/{cfg.train.epochs}", num_steps) as progress:
            for index, (images, labels, ids) in enumerate(self.train_loader):
                images, labels, ids = (t.to(self.device, non_blocking=True) for t in (images, labels, ids))
                out = step(images, labels, self._meta_batch() if weighted else None)
                meter.add(out, labels, self.clean_labels[ids])
                self.weight_log.record(ids, out)
                self.global_step += 1
                if (index + 1) % cfg.train.log_every == 0 or index + 1 == num_steps:
                    stats = meter.means()
                    logbook.scalars("step", stats, self.global_step)
                    progress.update(index + 1, loss=stats["loss"])
        row: dict[str, float] = {"epoch": self.epoch + 1, "lr": step.optimizer.param_groups[0]["lr"]}
        row.update(meter.means())
        test = evaluate_accuracy(step.model, self.test_loader, self.amp_dtype)
        row.update(test_acc=test["accuracy"], test_loss=test["loss"], seconds=time.perf_counter() - started)
        if weighted:
            self.weight_log.save(self.run_dir / "weights" / f"epoch_{self.epoch + 1:03d}.npz")
        self.scheduler.step()
        self.epoch += 1
        return row

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, schedule, the step's random sources, meta-stream position, counters."""
        return {
            "model": self.step.model.state_dict(),
            "optimizer": self.step.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step.state_dict(),
            "meta_consumed": self.meta_consumed,
            "epoch": self.epoch,
            "global_step": self.global_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the epoch's batches follow from the epoch number)."""
        self.step.model.load_state_dict(state["model"])
        self.step.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step.load_state_dict(state["step"])
        self.meta_consumed, self._meta_batches = state["meta_consumed"], None
        self.epoch, self.global_step = state["epoch"], state["global_step"]

    def final_state(self) -> dict[str, Any]:
        """The last epoch's weights (no model selection) and the class count evaluation needs."""
        return {"model": self.step.model.state_dict(), "num_classes": self.data.num_classes}


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
