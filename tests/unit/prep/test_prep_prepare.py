"""`prepare_dataset` end to end at library level: format, determinism, atomicity, MSD and NIfTI inputs."""

import json

import nibabel as nib
import numpy as np
import pytest

from mlbseg.errors import UserError
from mlbseg.prep.manifest import FORMAT_VERSION, load_case, load_manifest
from mlbseg.prep.noise import TARGET_DICE, draw_noise, noise_case, noisy_mask, slice_stack
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.synth import write_phantoms
from mlbseg.prep.volumes import read_volume

from ._helpers import blob_mask, write_pairs

SMALL = {"in_plane": (40, 64), "slices": (8, 14)}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    raw = tmp_path_factory.mktemp("phantoms") / "raw"
    write_phantoms(raw, cases=6, seed=2, **SMALL)
    return raw


@pytest.fixture(scope="module")
def prepared(phantoms):
    out = phantoms.parent / "prepared"
    prepare_dataset(phantoms, out, size=32, seed=3)
    return out


def test_manifest_follows_the_format(prepared, phantoms):
    manifest = load_manifest(prepared)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["slice_size"] == 32
    assert manifest["source"] == str(phantoms.absolute())
    assert manifest["seed"] == 3
    assert manifest["noise_model"] == "relative"
    assert "--noise-model relative" in manifest["command"]
    assert "--val" not in manifest["command"]
    assert manifest["command"].startswith("mlbseg prepare ")
    assert "--size 32" in manifest["command"]
    assert {name: len(ids) for name, ids in manifest["split"].items()} == {
        "train": 4,
        "val": 0,
        "meta": 1,
        "test": 1,
    }
    assert sorted(manifest["cases"]) == [f"Case{i:02d}" for i in range(6)]
    case = manifest["cases"]["Case01"]
    image, geometry = read_volume(phantoms / "Case01.mhd")
    assert case["original_shape"] == list(image.shape)
    assert case["num_slices"] == image.shape[0]
    assert case["spacing"] == pytest.approx(geometry["spacing"])
    assert case["origin"] == pytest.approx(geometry["origin"])
    assert case["source_files"] == {"image": "Case01.mhd", "mask": "Case01_segmentation.mhd"}
    for level, entry in manifest["noise"].items():
        assert entry["target"] == TARGET_DICE[level]
        assert 0 < entry["strength"] <= 1
        assert abs(entry["mean_dice"] - entry["target"]) <= 0.02
    assert all(("noisy_dice" in c) == (c["split"] == "train") for c in manifest["cases"].values())


def test_case_arrays(prepared, phantoms):
    manifest = load_manifest(prepared)
    for case_id, case in manifest["cases"].items():
        arrays = load_case(prepared, case_id)
        num = case["num_slices"]
        expected = {"image", "mask", "mask_original"} | (
            {"noisy_L1", "noisy_L2", "noisy_L3"} if case["split"] == "train" else set()
        )
        assert set(arrays) == expected
        assert arrays["image"].dtype == np.float32
        assert arrays["image"].shape == (num, 1, 32, 32)
        assert arrays["image"].min() >= 0
        assert arrays["image"].max() <= 1
        original, _ = read_volume(phantoms / f"{case_id}_segmentation.mhd")
        np.testing.assert_array_equal(arrays["mask_original"], original)
        for key in expected - {"image", "mask_original"}:
            assert arrays[key].dtype == np.uint8
            assert arrays[key].shape == (num, 32, 32)
            assert set(np.unique(arrays[key])) <= {0, 1}
        for level, dice in case.get("noisy_dice", {}).items():
            noisy, clean = arrays[f"noisy_{level}"], arrays["mask"]
            assert dice == pytest.approx(2 * (noisy & clean).sum() / (noisy.sum() + clean.sum()))
            # the relative model is today's operations, unchanged: the noise module's own primitives
            strength = manifest["noise"][level]["strength"]
            draws = draw_noise(3, case_id, level, num)
            np.testing.assert_array_equal(noisy, noisy_mask(noise_case(slice_stack(clean), draws), strength))


def test_same_seed_same_bytes_and_jobs_do_not_matter(prepared, phantoms, tmp_path):
    again = tmp_path / "again"
    prepare_dataset(phantoms, again, size=32, seed=3, jobs=2)
    for case in sorted((prepared / "cases").iterdir()):
        assert (again / "cases" / case.name).read_bytes() == case.read_bytes(), case.name
    first, second = (json.loads((p / "manifest.json").read_text()) for p in (prepared, again))
    assert first.pop("command") != second.pop("command")  # the output path differs, nothing else
    assert first == second


def test_output_is_atomic_and_never_silently_replaced(phantoms, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prepare_dataset(phantoms, out, size=16)
    broken = tmp_path / "broken"
    write_pairs(broken, count=4)
    (broken / "Case03.raw").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match=r"Case03\.mhd: cannot read"):
        prepare_dataset(broken, out, size=16, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(UserError, match=r"Case03\.mhd: cannot read"):
        prepare_dataset(broken, tmp_path / "new" / "prepared", size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out"]
    prepare_dataset(phantoms, out, size=16, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["cases", "manifest.json"]
    with pytest.raises(UserError, match="must not be the raw folder"):
        prepare_dataset(phantoms, phantoms, size=16, overwrite=True)
    with pytest.raises(UserError, match="must not be the raw folder"):
        prepare_dataset(phantoms, phantoms.parent, size=16, overwrite=True)


def _write_msd(root, count=3, shape=(5, 20, 24)):
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for index in range(count):
        zones = blob_mask(shape, index).astype(np.uint8)
        zones[:, : shape[1] // 2] *= 2  # two zones: 1 (PZ) and 2 (TZ)
        t2 = np.random.default_rng(index).normal(100, 10, shape) + 50 * zones
        adc = np.full(shape, 1000.0)
        xyzc = np.stack([t2, adc], axis=-1).transpose(2, 1, 0, 3).astype(np.float32)  # nibabel (x, y, z, c)
        affine = np.diag([0.6, 0.6, 3.6, 1.0])
        nib.save(nib.Nifti1Image(xyzc, affine), root / "imagesTr" / f"prostate_{index:02d}.nii.gz")
        nib.save(
            nib.Nifti1Image(zones.transpose(2, 1, 0), affine),
            root / "labelsTr" / f"prostate_{index:02d}.nii.gz",
        )
        (root / "imagesTr" / f"._prostate_{index:02d}.nii.gz").write_bytes(b"\0\0")


def test_msd_layout_merges_zones_and_selects_the_channel(tmp_path):
    _write_msd(tmp_path / "Task05")
    manifest = prepare_dataset(tmp_path / "Task05", tmp_path / "p", size=16)
    assert manifest["layout"] == "msd"
    assert manifest["label_mode"] == "merge"
    assert manifest["labels"] == {"background": 0, "foreground": 1}
    case = manifest["cases"]["prostate_01"]
    assert case["original_shape"] == [5, 20, 24]
    assert case["spacing"] == pytest.approx([3.6, 0.6, 0.6])
    arrays = load_case(tmp_path / "p", "prostate_01")
    np.testing.assert_array_equal(arrays["mask_original"], blob_mask((5, 20, 24), 1))
    adc = prepare_dataset(tmp_path / "Task05", tmp_path / "adc", size=16, channels=(1,))
    assert adc["cases"]["prostate_01"]["intensity_window"] == [[1000.0, 1000.0]]
    with pytest.raises(UserError, match=r"prostate_00\.nii\.gz: mask has values other than 0 and 1 \(2\)"):
        prepare_dataset(tmp_path / "Task05", tmp_path / "binary", size=16, labels="binary")
    assert not (tmp_path / "binary").exists()


def test_nifti_pairs_and_option_checks(tmp_path):
    raw = write_pairs(tmp_path / "raw", count=3, suffix=".nii")
    manifest = prepare_dataset(raw, tmp_path / "p", size=16, split="random")
    assert manifest["cases"]["Case02"]["source_files"]["mask"] == "Case02_segmentation.nii"
    with pytest.raises(UserError, match="--labels maybe: choose one of auto, binary, merge, keep"):
        prepare_dataset(raw, tmp_path / "q", labels="maybe")
    with pytest.raises(UserError, match="--split paper needs PROMISE12 cases"):
        prepare_dataset(raw, tmp_path / "q", split="paper")
    empty = write_pairs(tmp_path / "empty", count=3)
    for index in range(3):
        (empty / f"Case{index:02d}_segmentation.raw").write_bytes(bytes(6 * 24 * 24))
    with pytest.raises(UserError, match="every train mask is empty"):
        prepare_dataset(empty, tmp_path / "q", size=16)
    assert not (tmp_path / "q").exists()


def test_reference_noise_model_and_a_val_split(prepared, phantoms, tmp_path):
    out = tmp_path / "reference"
    manifest = prepare_dataset(phantoms, out, size=32, seed=3, val=1, noise_model="reference")
    assert manifest["noise_model"] == "reference"
    assert "--noise-model reference" in manifest["command"]
    assert "--val 1" in manifest["command"]
    assert {name: len(ids) for name, ids in manifest["split"].items()} == {
        "train": 3,
        "val": 1,
        "meta": 1,
        "test": 1,
    }
    relative = load_manifest(prepared)
    assert (manifest["split"]["meta"], manifest["split"]["test"]) == (
        relative["split"]["meta"],
        relative["split"]["test"],
    )
    (val_id,) = manifest["split"]["val"]
    assert val_id in relative["split"]["train"]
    val_case = manifest["cases"][val_id]
    assert val_case["split"] == "val"
    assert "noisy_dice" not in val_case
    assert set(load_case(out, val_id)) == {"image", "mask", "mask_original"}
    assert all(0 < entry["strength"] < 4 for entry in manifest["noise"].values())
    for case_id in manifest["split"]["train"]:
        arrays, reference_case = load_case(out, case_id), load_case(prepared, case_id)
        assert set(arrays) == {"image", "mask", "mask_original", "noisy_L1", "noisy_L2", "noisy_L3"}
        np.testing.assert_array_equal(arrays["mask"], reference_case["mask"])
        assert not np.array_equal(arrays["noisy_L1"], reference_case["noisy_L1"])
        for level, dice in manifest["cases"][case_id]["noisy_dice"].items():
            noisy, clean = arrays[f"noisy_{level}"], arrays["mask"]
            assert dice == pytest.approx(2 * (noisy & clean).sum() / (noisy.sum() + clean.sum()))


def test_unknown_noise_model_and_impossible_val_leave_nothing(phantoms, tmp_path):
    with pytest.raises(UserError, match="--noise-model published: choose one of relative, reference"):
        prepare_dataset(phantoms, tmp_path / "p", size=16, noise_model="published")
    with pytest.raises(UserError, match="--val 5: only 4 train case"):
        prepare_dataset(phantoms, tmp_path / "p", size=16, val=5)
    assert list(tmp_path.iterdir()) == []
