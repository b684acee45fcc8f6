"""What ``mlbseg repeat`` needs to know about a task, so one driver serves segmentation and classification.

A :class:`RepeatTask` names the task's config schema, its method names, the config key that the ``--noise``
axis sets, the checks to run before any run starts, how one run is trained and evaluated (in the worker
process), and which numbers of the run's ``summary.json`` go into the table. Segmentation (``seg``, the
PROMISE12 noise levels L1/L2/L3) and classification (``cls``, noise rates such as 0.2 or 0.4 for
``data.noise_rate``) are registered here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlbseg.cls import config as cls_config
from mlbseg.cls import evaluate as cls_evaluate
from mlbseg.cls import trainer as cls_trainer
from mlbseg.config import load_config
from mlbseg.errors import UserError
from mlbseg.prep.manifest import load_manifest
from mlbseg.seg import config as seg_config
from mlbseg.seg import data as seg_data
from mlbseg.seg import evaluate as seg_evaluate
from mlbseg.seg import trainer as seg_trainer

TASK_CHOICES = ("auto", "seg", "cls")


@dataclass(frozen=True)
class Metric:
    """One reported number: ``key`` names the CSV/JSON columns (``<key>_mean``, ``<key>_std``)."""

    key: str
    label: str  # Markdown/console column header, with its unit
    scale: float  # summary values are multiplied by this (100: a fraction shown in %)


@dataclass(frozen=True)
class RepeatTask:
    """A task's hooks for ``mlbseg repeat``; see the module docstring."""

    name: str
    methods: tuple[str, ...]
    noise_key: str  # config key set by each --noise value
    noise_help: str  # what a --noise value is, for error messages
    metrics: tuple[Metric, ...]
    load: Callable[[Path, Sequence[str]], Any]  # (config file, overrides) -> validated config
    check: Callable[[Any], None]  # UserError for what would make every run fail (data missing, ...)
    parse_noise: Callable[[str], str]  # a --noise value -> its canonical label; UserError if invalid
    noise_of: Callable[[Any], str]  # the config's own noise label (when --noise is not given)
    values: Callable[[Mapping[str, Any]], dict[str, float | None]]  # summary.json -> {metric key: value}
    train: Callable[[Any, Path, bool], Any]  # (config, run folder, resume); runs in the worker
    evaluate: Callable[[Path], Mapping[str, Any]]  # run folder -> summary (writes summary.json)


# --- segmentation ---------------------------------------------------------------------------------------


def _seg_load(path: Path, overrides: Sequence[str]) -> Any:
    return seg_config.with_absolute_paths(load_config(seg_config.SegConfig, path, overrides))


def _seg_check(cfg: Any) -> None:
    manifest = load_manifest(cfg.data.prepared)  # UserError naming the folder when it is missing or damaged
    choices = seg_data.available_labels(manifest)
    if cfg.data.noise not in choices:
        raise UserError(
            f"--noise: unknown noise level {cfg.data.noise!r} for {cfg.data.prepared}; choose from "
            f"{', '.join(choices)}"
        )


def _seg_noise(value: str) -> str:
    """A noise level (L1, L2, L3, clean) or a given annotation's name; the prepared data is checked later."""
    if value not in seg_config.NOISE_LEVELS and not seg_config.ANNOTATION_NAME.fullmatch(value):
        levels = ", ".join(seg_config.NOISE_LEVELS)
        raise UserError(
            f"--noise: {value!r} is neither a noise level ({levels}) nor an annotation name "
            "(letters, digits, _ and -)"
        )
    return value


def _seg_values(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """``dice``, ``hd95`` (K > 2: the mean over classes) and per class ``dice_<name>``, ``hd95_<name>``."""
    mean = summary["mean"]
    values = {name: mean.get(name, {}).get("mean") for name in ("dice", "hd95")}
    for label, stats in mean.get("classes", {}).items():
        values.update({f"{name}_{label}": stats.get(name, {}).get("mean") for name in ("dice", "hd95")})
    return values


def _seg_train(cfg: Any, run_dir: Path, resume: bool) -> Any:
    return seg_trainer.train(cfg, run_dir, resume=resume)


def _seg_evaluate(run_dir: Path) -> Mapping[str, Any]:
    return seg_evaluate.evaluate_run(run_dir)


# --- classification -------------------------------------------------------------------------------------


def _cls_load(path: Path, overrides: Sequence[str]) -> Any:
    return cls_config.with_absolute_paths(load_config(cls_config.ClsConfig, path, overrides))


def _cls_check(cfg: Any) -> None:
    cls_config.check_config(cfg)
    if not Path(cfg.data.root).exists():
        raise UserError(f"data.root: {cfg.data.root} not found; give the dataset's folder")


def _cls_noise(value: str) -> str:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"--noise: {value!r} is not a noise rate; give numbers in [0, 1], e.g. 0.2,0.4")
    return f"{rate:g}"


def _cls_noise_of(cfg: Any) -> str:
    return "default" if cfg.data.noise_rate is None else f"{cfg.data.noise_rate:g}"


def _cls_train(cfg: Any, run_dir: Path, resume: bool) -> Any:
    return cls_trainer.train(cfg, run_dir, resume=resume)


def _cls_evaluate(run_dir: Path) -> Mapping[str, Any]:
    return cls_evaluate.evaluate_run(run_dir)


def get_task(name: str) -> RepeatTask:
    """The registered task ``seg`` or ``cls``."""
    if name == "seg":
        return RepeatTask(
            name="seg",
            methods=tuple(seg_config.METHODS),
            noise_key="data.noise",
            noise_help="noise levels L1, L2, L3, clean or a given annotation's name",
            metrics=(Metric("dice", "Dice (%)", 100.0), Metric("hd95", "HD95 (mm)", 1.0)),
            load=_seg_load,
            check=_seg_check,
            parse_noise=_seg_noise,
            noise_of=lambda cfg: cfg.data.noise,
            values=_seg_values,
            train=_seg_train,
            evaluate=_seg_evaluate,
        )
    if name == "cls":
        return RepeatTask(
            name="cls",
            methods=tuple(cls_config.METHODS),
            noise_key="data.noise_rate",
            noise_help="noise rates in [0, 1] for data.noise_rate",
            metrics=(Metric("accuracy", "Accuracy (%)", 100.0),),
            load=_cls_load,
            check=_cls_check,
            parse_noise=_cls_noise,
            noise_of=_cls_noise_of,
            values=lambda summary: {"accuracy": summary.get("accuracy")},
            train=_cls_train,
            evaluate=_cls_evaluate,
        )
    raise UserError(f"--task: unknown task {name!r}; choose from {', '.join(TASK_CHOICES)}")


def detect_task(config: Path, requested: str = "auto") -> RepeatTask:
    """The task of ``config``: ``requested`` unless it is ``auto``.

    ``auto`` picks classification for a config in a folder named ``cls`` (``mlbseg/configs/cls/…``) or whose
    ``data`` section names a ``dataset`` (a key only classification configs have), segmentation otherwise.
    """
    if requested != "auto":
        return get_task(requested)
    if config.absolute().parent.name == "cls":
        return get_task("cls")
    try:
        loaded = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        loaded = None  # load_config reports the problem with the file itself
    data = loaded.get("data") if isinstance(loaded, dict) else None
    return get_task("cls" if isinstance(data, dict) and "dataset" in data else "seg")
