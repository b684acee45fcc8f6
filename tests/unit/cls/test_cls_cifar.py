from __future__ import annotations

import builtins
import os
import pathlib
import pickle
import re

import numpy as np
import pytest
import torch
from cls_fakes import python2_pickle, with_numpy1_paths, write_cifar10, write_cifar100

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
    raw = _batch(cifar10_root)["data"]
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


def _batch(root, name="data_batch_1"):
    """A batch the tests wrote themselves (trusted), read back with plain pickle."""
    return pickle.loads((root / "cifar-10-batches-py" / name).read_bytes(), encoding="latin1")


def _replace_batch(root, blob, name="data_batch_1"):
    path = root / "cifar-10-batches-py" / name
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_legitimate_pickles_of_every_protocol_load(tmp_path, protocol):
    expected = load_cifar(write_cifar10(tmp_path / "default"), "cifar10", train=True)
    arrays = load_cifar(write_cifar10(tmp_path / "p", protocol=protocol), "cifar10", train=True)
    np.testing.assert_array_equal(arrays.images, expected.images)
    np.testing.assert_array_equal(arrays.labels, expected.labels)


@pytest.mark.parametrize("protocol", [0, 2, 3])
def test_numpy1_pickles_load(cifar10_root, protocol):
    batch = {**_batch(cifar10_root), "batch_label": b"training batch 1 of 5", "filenames": [b"a.png"] * 60}
    blob = with_numpy1_paths(pickle.dumps(batch, protocol=protocol))
    assert b"numpy.core.multiarray" in blob
    _replace_batch(cifar10_root, blob)
    np.testing.assert_array_equal(
        load_cifar(cifar10_root, "cifar10", train=True).labels[:60], batch["labels"]
    )


def test_python2_pickles_like_the_original_files_load(cifar10_root):
    batch = _batch(cifar10_root)
    original = load_cifar(cifar10_root, "cifar10", train=True)
    blob = python2_pickle({"batch_label": b"training batch 1 of 5", **batch, "filenames": b"x.png"})
    _replace_batch(cifar10_root, blob)
    arrays = load_cifar(cifar10_root, "cifar10", train=True)
    np.testing.assert_array_equal(arrays.images, original.images)
    np.testing.assert_array_equal(arrays.labels, original.labels)


class _Payload:
    """Unpickles by calling ``call(*args)``: what a hostile pickle does."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


HOSTILE = {
    "builtins.open": lambda target: _Payload(builtins.open, str(target), "w"),
    "os.system": lambda target: _Payload(os.system, f"touch {target}"),
    "Path.touch": lambda target: _Payload(pathlib.Path.touch, pathlib.Path(target)),
    "numpy.save": lambda target: _Payload(np.save, str(target), np.zeros(1)),
    "inside a batch": lambda target: {
        "data": np.zeros((1, 3072), np.uint8),
        "labels": [0],
        "x": _Payload(open, str(target), "w"),
    },
}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_pickle_runs_nothing(cifar10_root, tmp_path, kind, protocol):
    target = tmp_path / "pwned.npy"  # np.save would add .npy
    blob = pickle.dumps(HOSTILE[kind](target), protocol=protocol)
    pickle.loads(blob)  # plain pickle would create the file …
    assert target.exists()
    target.unlink()
    path = _replace_batch(cifar10_root, blob)
    with pytest.raises(UserError) as error:
        build_cifar(cifar10_root, num_meta=50)  # … `mlbseg classify train` does not
    assert not target.exists()
    pattern = rf"{re.escape(str(path))}: not a CIFAR pickle \(refuses global [\w.]+\.\w+\)"
    assert re.fullmatch(pattern, str(error.value)), str(error.value)


def _with(root, name="data_batch_1", **changes):
    return _replace_batch(root, pickle.dumps({**_batch(root, name), **changes}), name)


BAD_BATCHES = {
    "fewer labels": (
        {"labels": list(range(10)) * 5},
        r"'labels' must hold 60 integer labels, one per image, got 50",
    ),
    "more labels": ({"labels": [0] * 61}, "'labels' must hold 60 integer labels"),
    "label 10": ({"labels": [10] + [0] * 59}, r"'labels' holds labels 0\.\.10, outside 0\.\.9"),
    "label -1": ({"labels": [-1] + [0] * 59}, r"holds labels -1\.\.0, outside 0\.\.9"),
    "string labels": ({"labels": ["cat"] * 60}, "must hold 60 integer labels"),
    "no labels": ({"labels": None}, "must hold 60 integer labels"),
    "3071 columns": (
        {"data": np.zeros((60, 3071), np.uint8)},
        r"expected uint8 'data' \[N, 3072\], got uint8 \[60, 3071\]",
    ),
    "int64 data": ({"data": np.zeros((60, 3072), np.int64)}, r"expected uint8 'data' \[N, 3072\], got int64"),
    "3-D data": ({"data": np.zeros((60, 3, 1024), np.uint8)}, r"expected uint8 'data'"),
    "list data": ({"data": [[0] * 3072] * 60}, r"expected uint8 'data' \[N, 3072\], got list"),
}


@pytest.mark.parametrize("kind", list(BAD_BATCHES))
def test_malformed_cifar10_batches_are_user_errors_naming_the_file(cifar10_root, kind):
    changes, match = BAD_BATCHES[kind]
    path = _with(cifar10_root, **changes)
    with pytest.raises(UserError, match=match) as error:
        load_cifar(cifar10_root, "cifar10", train=True)
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)


def test_missing_label_key_and_non_dict_pickles(cifar10_root):
    batch = _batch(cifar10_root)
    del batch["labels"]
    path = _replace_batch(cifar10_root, pickle.dumps(batch))
    with pytest.raises(UserError, match=f"{path}: no 'labels': not a CIFAR pickle"):
        load_cifar(cifar10_root, "cifar10", train=True)
    _replace_batch(cifar10_root, pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match=r"data_batch_1: not a CIFAR pickle \(holds a list, not a dict\)"):
        load_cifar(cifar10_root, "cifar10", train=True)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("fine_labels", 100, r"'fine_labels' holds labels 0\.\.100, outside 0\.\.99"),
        ("coarse_labels", 20, r"'coarse_labels' holds labels 0\.\.20, outside 0\.\.19"),
    ],
)
def test_cifar100_label_ranges(tmp_path, key, value, match):
    root, _ = write_cifar100(tmp_path)
    path = root / "cifar-100-python" / "test"
    batch = pickle.loads(path.read_bytes())
    batch[key][0] = value
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(UserError, match=match):
        load_cifar(root, "cifar100", train=False)
