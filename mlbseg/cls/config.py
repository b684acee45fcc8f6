"""The classification run config (``mlbseg classify train CONFIG``): schema, checks and dataset options.

Defaults are neutral; the paper's recipes (REFERENCE.md §1.1) live in ``configs/cls/*.yaml``. The ``data``
section names the dataset and only the builder options a YAML sets: a ``None`` key means "the builder's own
default" (:func:`mlbseg.cls.datasets.build_datasets`), and a key the dataset does not take is an error
(:func:`check_config`), so a Clothing1M option cannot be silently ignored on CIFAR.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mlbseg.config import choice
from mlbseg.engine.config import OptimConfig, ScheduleConfig
from mlbseg.errors import UserError

DATASETS = ("cifar10", "cifar100", "clothing1m", "isic2019")
ARCHS = ("preact_resnet18", "resnet18", "resnet50")
METHODS = ("baseline", "l2rw", "l2b")
NOT_BUILDER_OPTIONS = ("dataset", "root")


@dataclass(frozen=True)
class DataConfig:
    """The dataset and its builder options; ``None`` = the builder's default (see the module docstring)."""

    dataset: str = choice("cifar10", DATASETS)
    root: str = "data/cifar10"  # the dataset's folder in its native layout; nothing is downloaded
    noise: str | None = None  # cifar/isic: none, l2b_unif, l2b_flip, symmetric, asymmetric, pairflip
    noise_rate: float | None = None  # the scheme's parameter (l2b_unif: expected rate p·(K−1)/K)
    num_meta: int | None = None  # cifar: clean meta images (multiple of K); clothing1m: None = whole val list
    seed: int | None = None  # split and noise seed; None = train.seed (the reference: run i uses seed i)
    split: str | None = None  # cifar: reference | random
    num_batches: int | None = None  # clothing1m: batches per epoch of the balanced sample (paper: 250)
    split_dir: str | None = None  # isic2019: folder with train.lst/val.lst/test.lst; None = drawn split
    meta_per_class: int | None = None  # isic2019, drawn split
    test_fraction: float | None = None  # isic2019, drawn split
    split_seed: int | None = None  # isic2019, drawn split


@dataclass(frozen=True)
class ModelConfig:
    """The network (:func:`mlbseg.cls.models.build_classifier`)."""

    arch: str = choice("preact_resnet18", ARCHS)
    weights: str | None = None  # local torchvision ImageNet state dict (resnet18/50); nothing is downloaded


@dataclass(frozen=True)
class MethodConfig:
    """The method switch and the meta engine's settings.

    ``baseline``: mean CE on the noisy labels. ``l2rw``: per-sample α from the meta engine (Ren et al.
    2018). ``l2b``: α for the noisy label and β for the model's argmax pseudo-label (the paper).
    ``mixup`` (the reference's ``--mixup``, REFERENCE.md §1.3) mixes every training batch of every method;
    with l2rw/l2b the noisy-label cost ``λ·CE(y) + (1−λ)·CE(y[π])`` is what the engine weights.
    """

    name: str = choice("l2b", METHODS)
    engine: str = choice("forward", ("forward", "lookahead"))  # exact first-order form, or the reference's
    normalize: str = "org"  # mlbseg.meta normaliser: org (clamp_sum), softmax (over the batch, /T), sigmoid
    temperature: float = 1.0  # divides the scores of softmax/sigmoid (the reference's ISIC: 10)
    meta_batch_size: int = 100  # clean images per meta batch (the reference silently used the train batch)
    warmup_epochs: int = 0  # first epochs trained with plain mean CE (the reference's --warm_up)
    mixup: bool = False  # mix each training batch (every method; l2rw/l2b: soft targets for the engine)
    mixup_alpha: float = 32.0  # λ ~ Beta(a, a) per batch, the reference's Beta(32, 32)

    @property
    def uses_meta_weights(self) -> bool:
        """α (and β) come from the meta engine after warm-up: l2rw and l2b."""
        return self.name in ("l2rw", "l2b")

    @property
    def uses_pseudo_labels(self) -> bool:
        """β weights the argmax pseudo-label: l2b only."""
        return self.name == "l2b"


@dataclass(frozen=True)
class TrainConfig:
    """Loop length, batch sizes, loaders, device, reproducibility and logging."""

    epochs: int = 300
    batch_size: int = 128
    eval_batch_size: int = 128
    steps_per_epoch: int | None = None  # None = one pass over the epoch's training sample
    num_workers: int = 4  # DataLoader workers; results do not depend on it (per-item augmentation seeds)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast for the real forward on CUDA (ignored on CPU)
    deterministic: bool = True  # deterministic kernels: --resume reproduces an uninterrupted run
    log_every: int = 50  # steps between progress/TensorBoard updates (the only host syncs in a step)
    log_weights_for: int = 0  # track α/β of this many training samples → weights/epoch_XXX.npz (Fig. 4)


@dataclass(frozen=True)
class ClsConfig:
    """A whole classification run."""

    name: str = "cls"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def dataset_kwargs(cfg: ClsConfig) -> dict[str, Any]:
    """The keyword options for ``build_datasets(cfg.data.dataset, cfg.data.root, **options)``.

    Only the ``data`` keys that are set are passed; ``seed`` defaults to ``train.seed`` and Clothing1M's
    sample is sized for ``train.batch_size``.

    Raises:
        UserError: A set ``data`` key that the dataset does not take (the message lists those it does).
    """
    from mlbseg.cls.datasets import dataset_options

    accepted = dataset_options(cfg.data.dataset)
    options = {
        f.name: getattr(cfg.data, f.name)
        for f in fields(DataConfig)
        if f.name not in NOT_BUILDER_OPTIONS and getattr(cfg.data, f.name) is not None
    }
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        keys = ", ".join(f"data.{key}" for key in unknown)
        valid = ", ".join(f"data.{key}" for key in accepted if key != "batch_size")
        raise UserError(f"{keys}: not an option of dataset {cfg.data.dataset}; it takes {valid}")
    if "seed" in accepted:
        options.setdefault("seed", cfg.train.seed)
    if "batch_size" in accepted:
        options["batch_size"] = cfg.train.batch_size
    return options


def check_config(cfg: ClsConfig) -> None:
    """Checks beyond the schema's types (cross-key rules, ranges), done before anything is built.

    Raises:
        UserError: Naming the key and what to do.
    """
    dataset_kwargs(cfg)
    method = cfg.method
    from mlbseg.meta import resolve_normalizer_name

    try:
        resolve_normalizer_name(method.normalize, "ce")
    except ValueError as err:
        raise UserError(f"method.normalize: {err}") from None
    _check_ranges(cfg)


def _check_ranges(cfg: ClsConfig) -> None:
    method = cfg.method
    positive = {
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "train.log_every": cfg.train.log_every,
        "method.meta_batch_size": method.meta_batch_size,
        "method.temperature": method.temperature,
        "method.mixup_alpha": method.mixup_alpha,
        "optim.lr": cfg.optim.lr,
    }
    if cfg.train.steps_per_epoch is not None:
        positive["train.steps_per_epoch"] = cfg.train.steps_per_epoch
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{key}: must be positive, got {value}")
    non_negative = {
        "train.num_workers": cfg.train.num_workers,
        "train.log_weights_for": cfg.train.log_weights_for,
        "method.warmup_epochs": method.warmup_epochs,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"{key}: must be 0 or more, got {value}")
