from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from cls_fakes import write_cifar100

from mlbseg.cls.cifar import build_cifar, load_cifar
from mlbseg.cls.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from mlbseg.errors import UserError


def reference_oracle(labels, num_meta, num_classes, seed, scheme, p):
    """The reference's algorithm with sequential draws; RandomState(seed) stands in for np.random.seed."""
    rs = np.random.RandomState(seed)
    meta, train = [], []
    for c in range(num_classes):
        idx = [i for i, y in enumerate(labels) if y == c]  # a Python list, shuffled in place
        rs.shuffle(idx)
        meta += idx[: num_meta // num_classes]
        train += idx[num_meta // num_classes :]
    if scheme == "l2b_flip":
        rs = np.random.RandomState(1)
        matrix = (1 - p) * np.eye(num_classes)
        for i in range(num_classes):
            matrix[i][rs.choice([j for j in range(num_classes) if j != i])] = p
    else:
        matrix = p / num_classes * np.ones((num_classes, num_classes)) + (1 - p) * np.eye(num_classes)
    noisy = [rs.choice(num_classes, p=matrix[labels[i]]) for i in train]
    return meta, train, noisy


def test_load_cifar_reads_pickles_as_hwc(cifar10_root):
    arrays = load_cifar(cifar10_root, "cifar10", train=True)
    assert arrays.images.shape == (300, 32, 32, 3)
    assert arrays.images.dtype == np.uint8
    assert arrays.labels.dtype == np.int64
    assert np.bincount(arrays.labels).tolist() == [30] * 10
    with (cifar10_root / "cifar-10-batches-py" / "data_batch_1").open("rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    c, y, x = 2, 5, 7
    assert arrays.images[0, y, x, c] == raw[0, c * 1024 + y * 32 + x]
    assert arrays.coarse_labels is None


@pytest.mark.parametrize("scheme", ["l2b_unif", "l2b_flip"])
@pytest.mark.parametrize("seed", [0, 3])
def test_reference_split_and_noise_reproduce_the_reference(cifar10_root, scheme, seed):
    arrays = load_cifar(cifar10_root, "cifar10", train=True)
    meta, train, noisy = reference_oracle(arrays.labels, 50, 10, seed, scheme, 0.4)
    data = build_cifar(cifar10_root, noise=scheme, noise_rate=0.4, num_meta=50, seed=seed)
    assert np.array_equal(data.meta.images, arrays.images[meta])
    assert np.array_equal(data.train.images, arrays.images[train])
    assert data.noisy_labels.tolist() == noisy
    assert np.array_equal(data.clean_labels, arrays.labels[train])
    assert data.noise_rate == pytest.approx(np.mean(np.array(noisy) != arrays.labels[train]))


def test_meta_set_is_clean_balanced_and_disjoint(cifar10_root):
    arrays = load_cifar(cifar10_root, "cifar10", train=True)
    for split in ("reference", "random"):
        data = build_cifar(cifar10_root, noise="symmetric", noise_rate=0.5, num_meta=50, split=split)
        assert np.bincount(data.meta.labels).tolist() == [5] * 10
        assert len(data.train) == 250
        assert np.sum(data.noisy_labels != data.clean_labels) == 125
        # every image is in exactly one of the two sets, and meta labels are the true ones
        both = np.concatenate([data.meta.images, data.train.images]).reshape(300, -1)
        assert np.unique(both, axis=0).shape[0] == 300
        lookup = {img.tobytes(): y for img, y in zip(arrays.images, arrays.labels, strict=True)}
        assert [lookup[img.tobytes()] for img in data.meta.images] == data.meta.labels.tolist()


def test_random_split_keeps_image_order_and_depends_on_seed(cifar10_root):
    arrays = load_cifar(cifar10_root, "cifar10", train=True)
    first = build_cifar(cifar10_root, num_meta=50, seed=1, split="random")
    again = build_cifar(cifar10_root, num_meta=50, seed=1, split="random")
    other = build_cifar(cifar10_root, num_meta=50, seed=2, split="random")
    assert np.array_equal(first.noisy_labels, again.noisy_labels)
    assert not np.array_equal(first.meta.images, other.meta.images)
    positions = [
        np.flatnonzero((arrays.images == img).all(axis=(1, 2, 3)))[0] for img in first.train.images[:20]
    ]
    assert positions == sorted(positions)


def test_items_are_normalised_tensors_with_index(cifar10_root):
    data = build_cifar(cifar10_root, num_meta=50)
    image, label, index = data.test[3]
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.float32
    assert (label, index) == (int(data.test.labels[3]), 3)
    pixel = data.test.images[3, 4, 6]
    expected = (pixel / 255 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    np.testing.assert_allclose(image[:, 4, 6].numpy(), expected, atol=1e-5)
    train_image, train_label, _ = data.train[0]
    assert train_image.shape == (3, 32, 32)
    assert train_label == data.noisy_labels[0]


@pytest.mark.parametrize(("num_meta", "match"), [(55, "multiple of the 10 classes"), (300, "too large")])
def test_bad_num_meta_is_a_user_error(cifar10_root, num_meta, match):
    with pytest.raises(UserError, match=match):
        build_cifar(cifar10_root, num_meta=num_meta)


def test_missing_data_names_the_folder_and_the_archive(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py not found.*cifar-10-python\.tar\.gz"):
        build_cifar(tmp_path)


def test_missing_batch_and_bad_pickle(cifar10_root):
    folder = cifar10_root / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="test_batch is not a readable CIFAR pickle"):
        build_cifar(cifar10_root, num_meta=50)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3 not found"):
        build_cifar(cifar10_root, num_meta=50)


def test_cifar100_asymmetric_noise_and_statistics(tmp_path):
    root, coarse_of = write_cifar100(tmp_path)
    data = build_cifar(root, "cifar100", noise="asymmetric", noise_rate=0.5, num_meta=100, split="random")
    assert data.num_classes == 100
    assert np.bincount(data.meta.labels, minlength=100).tolist() == [1] * 100
    changed = data.noisy_labels != data.clean_labels
    assert changed.sum() == 200  # 3 training images per class → rint(1.5) = 2 per class
    assert np.all(coarse_of[data.noisy_labels] == coarse_of[data.clean_labels])
    image, _, _ = data.test[0]
    pixel = data.test.images[0, 0, 0]
    expected = (pixel / 255 - np.array(CIFAR100_MEAN)) / np.array(CIFAR100_STD)
    np.testing.assert_allclose(image[:, 0, 0].numpy(), expected, atol=1e-5)


def test_unknown_split_is_a_user_error(cifar10_root):
    with pytest.raises(UserError, match="choose from"):
        build_cifar(cifar10_root, split="stratified")
