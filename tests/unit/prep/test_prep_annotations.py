"""`prepare --noisy-labels`: own noisy annotations, train cases without a reference, --meta/--test."""

import numpy as np
import pytest
from scipy import ndimage

from mlbseg.errors import UserError
from mlbseg.prep.manifest import load_case
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.resize import resize_mask
from mlbseg.prep.volumes import read_volume, write_volume

from ._helpers import GEOMETRY, blob_mask, write_nnunet, write_pairs

SHAPE = (6, 24, 24)


def _rater(mask):
    return ndimage.binary_erosion(mask, np.ones((1, 3, 3), bool)).astype(np.uint8)


@pytest.fixture
def own_data(tmp_path):
    """Case00..Case06; Case06 has no reference; rater2/ annotates Case01, Case03, Case06."""
    raw = write_pairs(tmp_path / "raw", count=7)
    for suffix in ("mhd", "raw"):
        (raw / f"Case06_segmentation.{suffix}").unlink()
    rater = tmp_path / "rater2"
    rater.mkdir()
    for index in (1, 3, 6):
        write_volume(rater / f"Case0{index}_segmentation.mhd", _rater(blob_mask(SHAPE, index)), GEOMETRY)
    return raw, rater


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_annotations_are_stored_scored_and_summarised(own_data, tmp_path):
    raw, rater = own_data
    manifest = prepare_dataset(raw, tmp_path / "p", size=16, seed=2, noisy_labels=[rater], meta=1, test=2)
    split, cases = manifest["split"], manifest["cases"]
    assert {name: len(ids) for name, ids in split.items()} == {"train": 4, "val": 0, "meta": 1, "test": 2}
    assert "Case06" in split["train"]
    assert f"--meta 1 --test 2 --noisy-labels {rater}" in manifest["command"]
    assert cases["Case06"]["has_reference"] is False
    assert cases["Case06"]["source_files"] == {"image": "Case06.mhd"}
    assert all(cases[i]["has_reference"] for i in cases if i != "Case06")
    arrays = load_case(tmp_path / "p", "Case06")
    assert set(arrays) == {"image", "noisy_rater2"}
    np.testing.assert_array_equal(arrays["noisy_rater2"], resize_mask(_rater(blob_mask(SHAPE, 6)), 16))
    assert "noisy_dice" not in cases["Case06"]
    dice = []
    for case_id in ("Case01", "Case03"):
        arrays = load_case(tmp_path / "p", case_id)
        expected = _dice(arrays["noisy_rater2"].astype(bool), arrays["mask"].astype(bool))
        assert cases[case_id]["noisy_dice"]["rater2"] == pytest.approx(expected)
        assert expected < 0.95
        dice.append(expected)
        if cases[case_id]["split"] == "train":
            assert {"noisy_L1", "noisy_L2", "noisy_L3", "noisy_rater2"} <= set(arrays)
            assert set(cases[case_id]["noisy_dice"]) == {"L1", "L2", "L3", "rater2"}
    assert manifest["annotations"] == {
        "rater2": {"source": str(rater), "num_cases": 3, "mean_dice": pytest.approx(np.mean(dice))}
    }
    assert "noisy_L1" not in load_case(tmp_path / "p", split["test"][0])


def test_a_case_without_reference_never_goes_to_meta_or_test(own_data, tmp_path):
    raw, rater = own_data
    for seed in range(6):
        split = prepare_dataset(raw, tmp_path / f"p{seed}", size=16, seed=seed, noisy_labels=[rater])["split"]
        assert "Case06" in split["train"]
    split_file = tmp_path / "split.yaml"
    split_file.write_text("train: [Case00, Case01]\nmeta: [Case06]\ntest: [Case02]\n")
    with pytest.raises(
        UserError, match=r"split\.yaml: case\(s\) without a reference mask in val, meta or test: Case06"
    ):
        prepare_dataset(raw, tmp_path / "q", split=str(split_file), noisy_labels=[rater])
    with pytest.raises(UserError, match=r"Case06\.mhd: no mask for this image"):
        prepare_dataset(raw, tmp_path / "q")
    with pytest.raises(UserError, match=r"--meta 4 --test 3: only 6 case\(s\) have a reference mask"):
        prepare_dataset(raw, tmp_path / "q", noisy_labels=[rater], meta=4, test=3)
    with pytest.raises(UserError, match="--meta/--test set the counts of --split random"):
        prepare_dataset(raw, tmp_path / "q", split="paper", meta=1, noisy_labels=[rater])
    assert not (tmp_path / "q").exists()


def _write(path, array, geometry=GEOMETRY):
    write_volume(path, array, geometry)


BAD = {
    "other shape": (
        lambda r: _write(r / "Case01_segmentation.mhd", np.zeros((6, 24, 20), np.uint8)),
        r"rater2/Case01_segmentation\.mhd: noisy mask shape \(z, y, x\)",
    ),
    "other origin": (
        lambda r: _write(
            r / "Case03_segmentation.mhd", _rater(blob_mask(SHAPE, 3)), {**GEOMETRY, "origin": [0, 0, 0]}
        ),
        r"rater2/Case03_segmentation\.mhd: noisy mask origin",
    ),
    "value outside labels": (
        lambda r: _write(r / "Case01_segmentation.mhd", 2 * blob_mask(SHAPE, 1)),
        r"rater2/Case01_segmentation\.mhd: mask has values other than 0 and 1 \(2\)",
    ),
    "unknown case": (
        lambda r: _write(r / "Case42_segmentation.mhd", blob_mask(SHAPE, 1)),
        r"rater2/Case42_segmentation\.mhd: no case of the raw folder has a reference named like it",
    ),
    "matches no case": (
        lambda r: [p.unlink() for p in r.iterdir()],
        r"rater2: matches no case \(expected masks named like the references, e.g. Case00_segm",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_annotations_are_one_line_errors_before_any_output(own_data, tmp_path, case):
    raw, rater = own_data
    change, expected = BAD[case]
    change(rater)
    with pytest.raises(UserError, match=expected) as caught:
        prepare_dataset(raw, tmp_path / "p", size=16, noisy_labels=[rater])
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "p").exists()


def test_annotation_names(own_data, tmp_path):
    raw, rater = own_data
    twin = tmp_path / "other" / "rater2"
    twin.mkdir(parents=True)
    with pytest.raises(UserError, match=r"other/rater2: a second annotation named 'rater2'"):
        prepare_dataset(raw, tmp_path / "p", noisy_labels=[rater, twin])
    for name, match in (
        ("L2", "is reserved"),
        ("clean", "is reserved"),
        ("my rater", "may hold only letters"),
    ):
        renamed = rater.rename(rater.parent / name)
        with pytest.raises(UserError, match=match):
            prepare_dataset(raw, tmp_path / "p", noisy_labels=[renamed])
        rater = renamed.rename(tmp_path / "rater2")
    with pytest.raises(UserError, match="--noisy-labels nowhere: no such folder"):
        prepare_dataset(raw, tmp_path / "p", noisy_labels=["nowhere"])


def test_multi_class_annotations_in_nnunet_layout(tmp_path):
    raw = write_nnunet(tmp_path / "raw", count=4)
    rater = tmp_path / "weak"
    rater.mkdir()
    labels, geometry = read_volume(raw / "labelsTr" / "case_002.nii.gz")
    write_volume(rater / "case_002.nii.gz", np.where(labels == 2, 1, labels).astype(np.uint8), geometry)
    manifest = prepare_dataset(raw, tmp_path / "p", size=16, noisy_labels=[rater])
    record = manifest["cases"]["case_002"]
    per_class = record["noisy_dice_per_class"]["weak"]
    assert per_class["TZ"] == 0.0
    assert 0.0 < per_class["PZ"] < 1.0
    assert record["noisy_dice"]["weak"] == pytest.approx((per_class["PZ"] + per_class["TZ"]) / 2)
    write_volume(rater / "case_002.nii.gz", np.where(labels == 2, 3, labels).astype(np.uint8), geometry)
    with pytest.raises(
        UserError, match=r"weak/case_002\.nii\.gz: mask has values outside the dataset's labels"
    ):
        prepare_dataset(raw, tmp_path / "q", size=16, noisy_labels=[rater])
