"""Multi-class labels, several image channels, and nnU-Net v2 raw datasets as RAW."""

import json

import nibabel as nib
import numpy as np
import pytest

from mlbseg.errors import UserError
from mlbseg.prep.manifest import label_names, load_case
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.resize import resize_labels, resize_mask, resize_slices
from mlbseg.prep.volumes import read_volume, write_volume

from ._helpers import GEOMETRY, blob_mask, write_nnunet, write_pairs, zones_mask


def test_resize_labels_is_the_binary_threshold_for_two_classes_and_argmax_for_more():
    binary = blob_mask((5, 40, 36), 3)
    np.testing.assert_array_equal(resize_labels(binary, 16), resize_mask(binary, 16))
    zones = zones_mask((5, 40, 36), 3)
    small = resize_labels(zones, (20, 18))
    shares = np.stack([resize_slices(zones == value, (20, 18)) for value in range(3)])
    np.testing.assert_array_equal(small, shares.argmax(axis=0))
    for value in (1, 2):  # halving each axis keeps every class's area up to boundary rounding
        assert (small == value).sum() * 4 == pytest.approx((zones == value).sum(), rel=0.15)
    tie = np.array([[[1, 2]]], dtype=np.uint8)  # one output pixel, half 1 and half 2: the lower wins
    assert resize_labels(tie, (1, 1)).tolist() == [[[1]]]


@pytest.fixture(scope="module")
def nnunet_raw(tmp_path_factory):
    return write_nnunet(tmp_path_factory.mktemp("nnunet") / "Dataset001_Zones")


def test_nnunet_dataset_keeps_its_labels_and_stacks_channels(nnunet_raw, tmp_path):
    manifest = prepare_dataset(nnunet_raw, tmp_path / "p", size=16, channels=(0, 1), seed=1)
    assert manifest["layout"] == "nnunet"
    assert manifest["label_mode"] == "keep"
    assert manifest["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert label_names(manifest) == ["background", "PZ", "TZ"]
    assert manifest["channels"] == [0, 1]
    assert manifest["channel_names"] == ["T2", "ADC"]
    assert "--channels 0,1 --labels auto" in manifest["command"]
    case = manifest["cases"]["case_001"]
    assert case["source_files"] == {
        "images": ["imagesTr/case_001_0000.nii.gz", "imagesTr/case_001_0001.nii.gz"],
        "mask": "labelsTr/case_001.nii.gz",
    }
    t2, _ = read_volume(nnunet_raw / "imagesTr" / "case_001_0000.nii.gz")
    adc, _ = read_volume(nnunet_raw / "imagesTr" / "case_001_0001.nii.gz")
    windows = [np.percentile(volume, [0.5, 99.5]).tolist() for volume in (t2, adc)]
    np.testing.assert_allclose(case["intensity_window"], windows, rtol=1e-6)
    arrays = load_case(tmp_path / "p", "case_001")
    assert arrays["image"].shape == (6, 2, 16, 16)
    assert not np.allclose(arrays["image"][:, 0], arrays["image"][:, 1])  # two contrasts, two channels
    np.testing.assert_array_equal(arrays["mask_original"], zones_mask((6, 24, 24), 1))
    np.testing.assert_array_equal(arrays["mask"], resize_labels(zones_mask((6, 24, 24), 1), 16))
    assert set(np.unique(arrays["mask"])) == {0, 1, 2}
    train = manifest["split"]["train"]
    for level, entry in manifest["noise"].items():
        assert set(entry["strength"]) == {"PZ", "TZ"}
        means = [manifest["cases"][i]["noisy_dice"][level] for i in train]
        assert entry["mean_dice"] == pytest.approx(np.mean(means))
    for case_id in train:
        record, noisy = manifest["cases"][case_id], load_case(tmp_path / "p", case_id)
        assert set(np.unique(noisy["noisy_L2"])) <= {0, 1, 2}
        for level, per_class in record["noisy_dice_per_class"].items():
            mask, labels = noisy["mask"], noisy[f"noisy_{level}"]
            for name, value in (("PZ", 1), ("TZ", 2)):
                a, b = labels == value, mask == value
                assert per_class[name] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
            assert record["noisy_dice"][level] == pytest.approx(np.mean(list(per_class.values())))


def test_binary_merges_the_foreground_and_default_channel_is_t2(nnunet_raw, tmp_path):
    manifest = prepare_dataset(nnunet_raw, tmp_path / "p", size=16, labels="merge")
    assert manifest["labels"] == {"background": 0, "foreground": 1}
    assert (manifest["label_mode"], manifest["channels"], manifest["channel_names"]) == ("merge", [0], ["T2"])
    arrays = load_case(tmp_path / "p", "case_002")
    assert arrays["image"].shape[1] == 1
    np.testing.assert_array_equal(arrays["mask_original"], zones_mask((6, 24, 24), 2) > 0)


def _edit_json(root, **changes):
    spec = json.loads((root / "dataset.json").read_text())
    spec.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del spec[key]
    (root / "dataset.json").write_text(json.dumps(spec))


def _drop(root, name):
    (root / name).unlink()


def _relabel(root, name, value):
    path = root / "labelsTr" / name
    labels, geometry = read_volume(path)
    labels[2, 5, 5] = value
    write_volume(path, labels, geometry)


def _shifted_channel(root):
    path = root / "imagesTr" / "case_002_0001.nii.gz"
    image, geometry = read_volume(path)
    write_volume(path, image, {**geometry, "origin": [0.0, 0.0, 0.0]})


BAD_NNUNET = {
    "missing channel": (
        lambda r: _drop(r, "imagesTr/case_001_0001.nii.gz"),
        r"case_001_0001\.nii\.gz: missing \(channel 1 'ADC' of case case_001",
    ),
    "unknown channel": (
        lambda r: write_volume(r / "imagesTr/case_000_0002.nii.gz", np.zeros((6, 24, 24)), GEOMETRY),
        r"case_000_0002\.nii\.gz: channel 2 is not in dataset\.json's channel_names \(0\.\.1\)",
    ),
    "bad channel name": (
        lambda r: write_volume(r / "imagesTr/case_000_T2.nii.gz", np.zeros((6, 24, 24)), GEOMETRY),
        r"case_000_T2\.nii\.gz: not named <case>_<XXXX>\.nii\.gz",
    ),
    "label without images": (
        lambda r: write_volume(r / "labelsTr/case_009.nii.gz", np.zeros((6, 24, 24), np.uint8), GEOMETRY),
        r"case_009\.nii\.gz: label file without images \(expected imagesTr/case_009_0000\.nii\.gz\)",
    ),
    "image without label": (
        lambda r: _drop(r, "labelsTr/case_003.nii.gz"),
        r"case_003_0000\.nii\.gz: no mask for this image \(expected labelsTr/case_003\.nii\.gz",
    ),
    "missing key": (
        lambda r: _edit_json(r, file_ending=None),
        r"dataset\.json: missing required key\(s\) file_ending",
    ),
    "region-based labels": (
        lambda r: _edit_json(r, labels={"background": 0, "whole": [1, 2], "TZ": 2}),
        r"dataset\.json: label 'whole' is region-based",
    ),
    "label gap": (
        lambda r: _edit_json(r, labels={"background": 0, "PZ": 1, "TZ": 3}),
        r"dataset\.json: label values must be the consecutive integers 0\.\.2",
    ),
    "numTraining": (lambda r: _edit_json(r, numTraining=7), r"numTraining is 7 but imagesTr/ holds 4"),
    "unreadable ending": (lambda r: _edit_json(r, file_ending=".nrrd"), r"file_ending '\.nrrd' is not one"),
    "value not a label": (
        lambda r: _relabel(r, "case_002.nii.gz", 3),
        r"case_002\.nii\.gz: mask has values outside the dataset's labels 0\.\.2 \(3\)",
    ),
    "channel on another grid": (_shifted_channel, r"case_002_0001\.nii\.gz: channel 1 origin"),
}


@pytest.mark.parametrize("case", list(BAD_NNUNET), ids=list(BAD_NNUNET))
def test_bad_nnunet_datasets_are_one_line_errors_before_any_output(tmp_path, case):
    raw = write_nnunet(tmp_path / "raw", count=4)
    change, expected = BAD_NNUNET[case]
    change(raw)
    with pytest.raises(UserError, match=expected) as caught:
        prepare_dataset(raw, tmp_path / "p", size=16, channels=(0, 1))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "p").exists()


def test_a_channel_the_dataset_does_not_declare(nnunet_raw, tmp_path):
    with pytest.raises(UserError, match=r"--channels 0,2: dataset\.json declares channels 0\.\.1"):
        prepare_dataset(nnunet_raw, tmp_path / "p", channels=(0, 2))
    with pytest.raises(UserError, match="--channels 1,1: expected distinct channel indices"):
        prepare_dataset(nnunet_raw, tmp_path / "p", channels=(1, 1))


def test_pairs_keep_their_consecutive_values_and_refuse_a_gap(tmp_path):
    raw = write_pairs(tmp_path / "raw", count=3)
    for index in range(3):
        write_volume(raw / f"Case{index:02d}_segmentation.mhd", zones_mask((6, 24, 24), index), GEOMETRY)
    manifest = prepare_dataset(raw, tmp_path / "p", size=16, labels="keep")
    assert manifest["labels"] == {"background": 0, "label1": 1, "label2": 2}
    assert manifest["label_mode"] == "keep"
    gap = zones_mask((6, 24, 24), 1)
    write_volume(raw / "Case01_segmentation.mhd", np.where(gap == 2, 3, gap).astype(np.uint8), GEOMETRY)
    for index in (0, 2):
        write_volume(raw / f"Case{index:02d}_segmentation.mhd", blob_mask((6, 24, 24), index), GEOMETRY)
    with pytest.raises(UserError, match=r"Case01_segmentation\.mhd: label value 3 but no mask holds 2"):
        prepare_dataset(raw, tmp_path / "q", size=16, labels="keep")
    assert not (tmp_path / "q").exists()


def test_msd_zones_kept_with_task05_names_and_both_channels(tmp_path):
    root = tmp_path / "Task05"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    affine = np.diag([0.6, 0.6, 3.6, 1.0])
    for index in range(3):
        zones = zones_mask((5, 20, 24), index)
        t2 = np.random.default_rng(index).normal(100, 10, zones.shape) + 50 * zones
        xyzc = np.stack([t2, 1000.0 - 100 * zones], axis=-1).transpose(2, 1, 0, 3).astype(np.float32)
        nib.save(nib.Nifti1Image(xyzc, affine), root / "imagesTr" / f"prostate_{index:02d}.nii.gz")
        nib.save(
            nib.Nifti1Image(zones.transpose(2, 1, 0), affine),
            root / "labelsTr" / f"prostate_{index:02d}.nii.gz",
        )
    manifest = prepare_dataset(root, tmp_path / "p", size=16, labels="keep", channels=(1, 0))
    assert manifest["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert manifest["channel_names"] == ["ADC", "T2"]
    arrays = load_case(tmp_path / "p", "prostate_02")
    assert arrays["image"].shape == (5, 2, 16, 16)
    assert manifest["cases"]["prostate_02"]["intensity_window"][0][1] == pytest.approx(1000.0)
