from __future__ import annotations

import numpy as np
import pytest
from cls_fakes import write_isic

from mlbseg.cls.data import ClassificationData
from mlbseg.cls.datasets import DATASETS, build_datasets, dataset_options
from mlbseg.errors import UserError


def test_registry_builds_cifar10(cifar10_root):
    data = build_datasets("cifar10", cifar10_root, num_meta=50, noise="pairflip", noise_rate=0.2, seed=1)
    assert isinstance(data, ClassificationData)
    assert data.num_classes == 10
    assert (len(data.train), len(data.meta), len(data.test)) == (250, 50, 50)
    assert np.array_equal(data.train.labels, data.noisy_labels)
    assert data.noise_rate == pytest.approx(0.2)
    assert data.train_sampler is None


def test_registry_builds_clothing1m_and_isic(clothing_root, tmp_path):
    root, _ = clothing_root
    assert build_datasets("clothing1m", root, num_batches=1, batch_size=14).train_sampler is not None
    isic_root = tmp_path / "isic"
    isic_root.mkdir()
    write_isic(isic_root)
    data = build_datasets("isic2019", isic_root, meta_per_class=1, test_fraction=0.1)
    assert data.num_classes == 8


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(
        UserError, match=r"unknown dataset 'mnist'.*'cifar10', 'cifar100', 'clothing1m', 'isic2019'"
    ):
        build_datasets("mnist", ".")


def test_unknown_option_lists_the_valid_ones(cifar10_root):
    with pytest.raises(UserError, match=r"dataset cifar10: unknown option\(s\) \['num_metas'\].*'num_meta'"):
        build_datasets("cifar10", cifar10_root, num_metas=50)
    with pytest.raises(UserError, match="unknown option"):
        build_datasets("cifar10", cifar10_root, name="cifar100")  # bound by the registry, not an option


def test_every_dataset_documents_its_options():
    assert set(DATASETS) == {"cifar10", "cifar100", "clothing1m", "isic2019"}
    assert dataset_options("clothing1m") == ["num_batches", "batch_size", "num_meta", "seed"]
    assert "split_dir" in dataset_options("isic2019")
