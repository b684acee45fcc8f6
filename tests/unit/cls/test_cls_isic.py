from __future__ import annotations

import numpy as np
import pytest
import torch
from cls_fakes import ISIC_HEADER

from mlbseg.cls.isic import build_isic, draw_isic_split, read_isic_csv
from mlbseg.cls.noise import l2b_unif_matrix
from mlbseg.errors import UserError

CSV = "ISIC_2019_Training_GroundTruth.csv"


def write_lists(root, labels, seed=0):
    """train/val/test lists in shuffled (not CSV) order; val = first 2 rows of each class, test = next 1."""
    ids = np.array([f"ISIC_{i:07d}" for i in range(labels.size)])
    rank = np.zeros(labels.size, dtype=int)
    for c in range(8):
        rank[labels == c] = np.arange(np.sum(labels == c))
    parts = {"val.lst": rank < 2, "test.lst": rank == 2, "train.lst": rank > 2}
    rng = np.random.default_rng(seed)
    for name, member in parts.items():
        (root / name).write_text("\n".join(rng.permutation(ids[member])) + "\n")
    return {name: np.flatnonzero(member) for name, member in parts.items()}


def test_csv_with_crlf_is_parsed(isic_root):
    root, labels = isic_root
    ids, parsed = read_isic_csv(root / CSV)
    assert ids[:2].tolist() == ["ISIC_0000000", "ISIC_0000001"]
    assert np.array_equal(parsed, labels)
    assert parsed.dtype == np.int64


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("ISIC_9,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0", "ISIC_9 is UNK"),
        ("ISIC_9,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "ISIC_9 must have exactly one"),
        ("ISIC_9,1.0", "malformed CSV"),
    ],
)
def test_bad_csv_rows_are_user_errors(tmp_path, row, match):
    (tmp_path / CSV).write_text(f"{ISIC_HEADER}\nISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n{row}\n")
    with pytest.raises(UserError, match=match):
        read_isic_csv(tmp_path / CSV)


def test_bad_header_and_missing_csv(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_isic_csv(tmp_path / CSV)
    (tmp_path / CSV).write_text("image,A,B\nx,1.0,0.0\n")
    with pytest.raises(UserError, match="expected the header"):
        read_isic_csv(tmp_path / CSV)


def test_split_lists_keep_csv_order_and_noise_reproduces_reference(isic_root):
    root, labels = isic_root
    members = write_lists(root, labels)
    data = build_isic(root, split_dir=root, noise="l2b_unif", noise_rate=0.4, seed=2)
    expected_files = [f"ISIC_{i:07d}.jpg" for i in members["train.lst"]]
    assert data.train.files.tolist() == expected_files
    assert np.array_equal(data.meta.labels, labels[members["val.lst"]])
    assert np.array_equal(data.test.labels, labels[members["test.lst"]])
    matrix, rs = l2b_unif_matrix(8, 0.4), np.random.RandomState(2)
    oracle = [rs.choice(8, p=matrix[y]) for y in labels[members["train.lst"]]]
    assert data.noisy_labels.tolist() == oracle
    assert np.array_equal(data.clean_labels, labels[members["train.lst"]])
    assert data.num_classes == 8


def test_split_list_errors(isic_root):
    root, labels = isic_root
    write_lists(root, labels)
    (root / "val.lst").write_text("ISIC_9999999\n")
    with pytest.raises(UserError, match=r"val\.lst: 1 ids are not in .*ISIC_9999999"):
        build_isic(root, split_dir=root)
    (root / "val.lst").write_text("ISIC_0000000\n")
    (root / "test.lst").write_text("ISIC_0000000\n")
    with pytest.raises(UserError, match="also in an earlier list"):
        build_isic(root, split_dir=root)
    (root / "test.lst").unlink()
    with pytest.raises(UserError, match=r"test\.lst not found"):
        build_isic(root, split_dir=root)


def test_drawn_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(8), [30, 50, 20, 12, 20, 10, 10, 12])
    train, meta, test = draw_isic_split(labels, 3, 0.2, np.random.default_rng(0))
    assert np.bincount(labels[meta], minlength=8).tolist() == [3] * 8
    assert np.bincount(labels[test], minlength=8).tolist() == [6, 10, 4, 2, 4, 2, 2, 2]
    assert np.unique(np.concatenate([train, meta, test])).size == labels.size
    assert np.all(np.diff(train) > 0)
    again = draw_isic_split(labels, 3, 0.2, np.random.default_rng(0))
    other = draw_isic_split(labels, 3, 0.2, np.random.default_rng(1))
    assert np.array_equal(meta, again[1])
    assert not np.array_equal(meta, other[1])


def test_drawn_split_build_and_items(isic_root):
    root, _ = isic_root
    data = build_isic(root, meta_per_class=2, test_fraction=0.2, noise="symmetric", noise_rate=0.5)
    assert np.bincount(data.meta.labels, minlength=8).tolist() == [2] * 8
    assert data.noise_rate == pytest.approx(round(0.5 * len(data.train)) / len(data.train))
    image, label, index = data.train[0]
    assert image.shape == (3, 224, 224)
    assert image.dtype == torch.float32
    assert (label, index) == (int(data.noisy_labels[0]), 0)
    assert data.test[0][0].shape == (3, 224, 224)
    with pytest.raises(UserError, match="class MEL has only 9 images"):
        build_isic(root)  # the default 80 meta images per class do not fit


def test_missing_image_is_named(isic_root):
    root, _ = isic_root
    (root / "ISIC_2019_Training_Input" / "ISIC_0000005.jpg").unlink()
    with pytest.raises(UserError, match=r"1 images of the split are missing \(first: ISIC_0000005\.jpg\)"):
        build_isic(root, meta_per_class=2, test_fraction=0.2)


def test_asymmetric_noise_is_refused_for_isic(isic_root):
    root, _ = isic_root
    with pytest.raises(UserError, match="pairflip"):
        build_isic(root, meta_per_class=2, test_fraction=0.2, noise="asymmetric")
