"""Fixtures with tiny datasets in each native format (writers in cls_fakes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cls_fakes import write_cifar10, write_clothing1m, write_isic


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path)


@pytest.fixture
def clothing_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_clothing1m(tmp_path)


@pytest.fixture
def isic_root(tmp_path: Path) -> tuple[Path, np.ndarray]:
    return tmp_path, write_isic(tmp_path)
