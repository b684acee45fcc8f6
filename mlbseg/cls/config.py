"""The classification run config (``mlbseg classify train CONFIG``): schema, checks and dataset options.

Defaults are neutral; the paper's recipes (docs/reference.md §1.1) ship as ``mlbseg/configs/cls/*.yaml``. The
``data`` section names the dataset and only the builder options a YAML sets: a ``None`` key means "the
builder's own default" (:func:`mlbseg.cls.datasets.build_datasets`), and a key the dataset does not take is an
error (:func:`check_config`), so a Clothing1M option cannot be silently ignored on CIFAR.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from mlbseg.cls.datasets import DATASETS, dataset_options
from mlbseg.cls.models import ARCHS
from mlbseg.config import absolute_path, check_range, choice
from mlbseg.engine.config import OptimConfig, ScheduleConfig, check_shared_sections
from mlbseg.errors import UserError
from mlbseg.meta import resolve_normalizer_name

# The registry of training methods: ``method.name`` → (α from the meta engine, β for the pseudo-label).
METHODS: dict[str, tuple[bool, bool]] = {
    "baseline": (False, False),  # mean CE on the noisy labels
    "l2rw": (True, False),  # per-sample α (Ren et al., 2018)
    "l2b": (True, True),  # α and β (Zhou et al., L2B)
}
NOT_BUILDER_OPTIONS = ("dataset", "root")


@dataclass(frozen=True)
class DataConfig:
    """The dataset and its builder options; ``None`` = the builder's default (see the module docstring)."""

    dataset: str = choice("cifar10", tuple(DATASETS))
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

    arch: str = choice("preact_resnet18", tuple(ARCHS))
    weights: str | None = None  # local torchvision ImageNet state dict (resnet18/50); nothing is downloaded


@dataclass(frozen=True)
class MethodConfig:
    """The method switch and the meta engine's settings.

    ``baseline``: mean CE on the noisy labels. ``l2rw``: per-sample α from the meta engine (Ren et al. 2018).
    ``l2b``: α for the noisy label and β for the model's argmax pseudo-label (the paper). ``mixup`` (the
    reference's ``--mixup``, docs/reference.md §1.3) mixes every training batch of every method; with l2rw/l2b
    the noisy-label cost ``λ·CE(y) + (1−λ)·CE(y[π])`` is what the engine weights.
    """

    name: str = choice("l2b", tuple(METHODS))
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
        return METHODS[self.name][0]

    @property
    def uses_pseudo_labels(self) -> bool:
        """β weights the argmax pseudo-label: l2b only."""
        return METHODS[self.name][1]


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
    compile: bool = False  # torch.compile the model for the real steps (the meta engine stays eager)
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


def with_absolute_paths(cfg: ClsConfig) -> ClsConfig:
    """``cfg`` with ``data.root`` and ``model.weights`` made absolute, relative to the working directory.

    The run's saved config and checkpoints then name the same files from any folder (docs/design.md §4.6).
    """
    data = replace(cfg.data, root=absolute_path(cfg.data.root))
    model = replace(cfg.model, weights=absolute_path(cfg.model.weights))
    return replace(cfg, data=data, model=model)


def dataset_kwargs(cfg: ClsConfig) -> dict[str, Any]:
    """The keyword options for ``build_datasets(cfg.data.dataset, cfg.data.root, **options)``.

    Only the ``data`` keys that are set are passed; ``seed`` defaults to ``train.seed`` and Clothing1M's
    sample is sized for ``train.batch_size``.

    Raises:
        UserError: A set ``data`` key that the dataset does not take (the message lists those it does).
    """
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
    """Checks beyond the schema's types (ranges, names, cross-key rules), before anything is read or built.

    Raises:
        UserError: Naming the key and what to do.
    """
    check_shared_sections(cfg)
    dataset_kwargs(cfg)
    method, train = cfg.method, cfg.train
    try:
        resolve_normalizer_name(method.normalize, "ce")
    except ValueError as err:
        raise UserError(f"method.normalize: {err}") from None
    check_range("train.eval_batch_size", train.eval_batch_size, 1)
    check_range("train.num_workers", train.num_workers, 0)
    check_range("train.log_weights_for", train.log_weights_for, 0)
    check_range("method.meta_batch_size", method.meta_batch_size, 1)
    check_range("method.temperature", method.temperature, 0.0, strict="low")
    check_range("method.mixup_alpha", method.mixup_alpha, 0.0, strict="low")
    check_range("method.warmup_epochs", method.warmup_epochs, 0)
    data = cfg.data
    check_range("data.noise_rate", data.noise_rate, 0.0, 1.0)
    check_range("data.test_fraction", data.test_fraction, 0.0, 1.0, strict="both")
    for key in ("num_meta", "num_batches", "meta_per_class"):
        check_range(f"data.{key}", getattr(data, key), 1)
