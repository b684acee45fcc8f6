"""Registry of the classification datasets: ``build_datasets(name, root, **options)``.

=========== ===================================== ==========================================================
name        builder                               keyword options
=========== ===================================== ==========================================================
cifar10     ``cifar.build_cifar``                 noise, noise_rate, num_meta, seed, split
cifar100    ``cifar.build_cifar``                 noise, noise_rate, num_meta, seed, split
clothing1m  ``clothing1m.build_clothing1m``       num_batches, batch_size, num_meta, seed
isic2019    ``isic.build_isic``                   noise, noise_rate, seed, split_dir, meta_per_class,
                                                  test_fraction, split_seed
=========== ===================================== ==========================================================

Example:
    >>> dataset_options("cifar100")
    ['noise', 'noise_rate', 'num_meta', 'seed', 'split']
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlbseg.cls.cifar import build_cifar
from mlbseg.cls.clothing1m import build_clothing1m
from mlbseg.cls.data import ClassificationData
from mlbseg.cls.isic import build_isic
from mlbseg.errors import UserError

DATASETS: dict[str, Callable[..., ClassificationData]] = {
    "cifar10": functools.partial(build_cifar, name="cifar10"),
    "cifar100": functools.partial(build_cifar, name="cifar100"),
    "clothing1m": build_clothing1m,
    "isic2019": build_isic,
}


def dataset_options(name: str) -> list[str]:
    """The keyword options the builder of dataset ``name`` accepts."""
    builder = DATASETS[name]
    fixed = getattr(builder, "keywords", {})  # bound by functools.partial, e.g. cifar's ``name``
    params = inspect.signature(builder).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY and p not in fixed]


def build_datasets(name: str, root: str | Path, /, **options: Any) -> ClassificationData:
    """Build train/meta/test sets of dataset ``name`` from the files under ``root``.

    Args:
        name: One of :data:`DATASETS`.
        root: The dataset's folder (see each builder for the layout it expects).
        **options: Builder keywords (table above); anything else is a UserError listing the valid ones.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose from {sorted(DATASETS)}")
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"dataset {name}: unknown option(s) {unknown}; valid options are {accepted}")
    return DATASETS[name](root, **options)
