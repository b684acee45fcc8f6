from __future__ import annotations

import numpy as np
import pytest
import torch

from mlbseg.cls.clothing1m import (
    BalancedEpochSampler,
    balanced_epoch_indices,
    build_clothing1m,
    load_clothing1m_lists,
)
from mlbseg.errors import UserError


def test_lists_are_parsed_with_labels(clothing_root):
    root, fake = clothing_root
    lists = load_clothing1m_lists(root)
    assert np.array_equal(lists.train_labels, fake["train_labels"])  # kv file order differs from list order
    assert lists.train_keys[0] == "images/0/00/n0.jpg"
    assert np.array_equal(lists.train_clean[:20], fake["train_clean"])
    assert np.all(lists.train_clean[20:] == -1)
    assert np.array_equal(lists.val_labels, fake["val_labels"])
    assert lists.test_keys.size == 28


def test_build_bundles_train_meta_test(clothing_root):
    root, fake = clothing_root
    data = build_clothing1m(root, num_batches=2, batch_size=8)
    assert data.num_classes == 14
    assert len(data.train) == fake["train_labels"].size
    assert len(data.meta) == 42
    assert len(data.test) == 28
    assert data.noise_rate == pytest.approx(0.5)  # 10 of the 20 images with a clean label disagree
    assert len(data.train_sampler) == 16
    image, label, index = data.train[1]
    assert image.shape == (3, 224, 224)
    assert image.dtype == torch.float32
    assert (label, index) == (int(fake["train_labels"][1]), 1)
    assert data.meta[0][0].shape == (3, 224, 224)


def test_balanced_sample_counts_and_reproducibility():
    labels = np.repeat(np.arange(14), 10 + np.arange(14))
    indices = balanced_epoch_indices(labels, 47, 14, seed=0, epoch=0)
    assert indices.size == 47
    assert np.unique(indices).size == 47
    assert set(np.bincount(labels[indices], minlength=14).tolist()) == {3, 4}
    assert np.array_equal(indices, balanced_epoch_indices(labels, 47, 14, seed=0, epoch=0))
    assert not np.array_equal(indices, balanced_epoch_indices(labels, 47, 14, seed=0, epoch=1))
    assert not np.array_equal(indices, balanced_epoch_indices(labels, 47, 14, seed=1, epoch=0))
    assert not np.array_equal(indices, np.sort(indices))  # shuffled, not grouped by class


def test_small_classes_give_all_they_have():
    labels = np.repeat(np.arange(14), 3 + np.arange(14))  # class 0 has 3 images
    indices = balanced_epoch_indices(labels, 14 * 5, 14, seed=0, epoch=0)
    counts = np.bincount(labels[indices], minlength=14)
    assert counts[:2].tolist() == [3, 4]
    assert np.all(counts[2:] == 5)


def test_sampler_follows_set_epoch():
    labels = np.repeat(np.arange(14), 20)
    sampler = BalancedEpochSampler(labels, 28, 14, seed=5)
    first = list(sampler)
    assert first == list(sampler)
    assert first == balanced_epoch_indices(labels, 28, 14, seed=5, epoch=0).tolist()
    sampler.set_epoch(3)
    assert list(sampler) == balanced_epoch_indices(labels, 28, 14, seed=5, epoch=3).tolist()
    assert len(sampler) == 28


def test_meta_subset_is_balanced_and_seeded(clothing_root):
    root, _ = clothing_root
    data = build_clothing1m(root, num_meta=28, seed=0)
    assert np.bincount(data.meta.labels, minlength=14).tolist() == [2] * 14
    again = build_clothing1m(root, num_meta=28, seed=0)
    other = build_clothing1m(root, num_meta=28, seed=4)
    assert np.array_equal(data.meta.files, again.meta.files)
    assert not np.array_equal(data.meta.files, other.meta.files)
    with pytest.raises(UserError, match="num_meta=30"):
        build_clothing1m(root, num_meta=30)
    with pytest.raises(UserError, match="rarest class"):
        build_clothing1m(root, num_meta=56)


@pytest.mark.parametrize(
    "name",
    [
        "noisy_label_kv.txt",
        "clean_label_kv.txt",
        "noisy_train_key_list.txt",
        "clean_val_key_list.txt",
        "clean_test_key_list.txt",
    ],
)
def test_missing_list_file_is_named(clothing_root, name):
    root, _ = clothing_root
    (root / name).unlink()
    with pytest.raises(UserError, match=rf"{name} not found"):
        build_clothing1m(root)


def test_unlabelled_key_and_broken_kv_are_user_errors(clothing_root):
    root, _ = clothing_root
    with (root / "clean_test_key_list.txt").open("a") as f:
        f.write("images/9/99/unknown.jpg\n")
    with pytest.raises(UserError, match=r"1 keys have no label in clean_label_kv\.txt.*unknown\.jpg"):
        build_clothing1m(root)
    (root / "noisy_label_kv.txt").write_text("images/a.jpg x\n")
    with pytest.raises(UserError, match=r"noisy_label_kv\.txt: expected lines"):
        build_clothing1m(root)


def test_missing_image_is_a_user_error(clothing_root):
    root, _ = clothing_root
    data = build_clothing1m(root)
    with pytest.raises(UserError, match=r"n5\.jpg not found"):
        data.train[5]
