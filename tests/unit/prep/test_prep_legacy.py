"""Exchange with the reference code's .npy layout, and the data_prep/ helper scripts."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat

from mlbseg.errors import UserError
from mlbseg.prep.discovery import discover_cases
from mlbseg.prep.legacy import export_legacy, import_legacy
from mlbseg.prep.manifest import load_case
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.volumes import read_volume, write_volume

from ._helpers import write_nnunet, write_pairs

DATA_PREP = Path(__file__).parents[3] / "data_prep"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, DATA_PREP / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def prepared(tmp_path):
    raw = write_pairs(tmp_path / "raw", count=4)
    prepare_dataset(raw, tmp_path / "prepared", size=16, seed=1)
    return tmp_path / "prepared"


def test_export_writes_the_reference_layout(prepared, tmp_path):
    counts = export_legacy(prepared, tmp_path / "legacy", level="L1")
    legacy = tmp_path / "legacy"
    split = loadmat(legacy / "split_info.mat")
    train, meta = [str(s).strip() for s in split["train_l2b"]], [str(s).strip() for s in split["meta_l2b"]]
    assert len(train) == 2
    assert len(meta) == 1
    assert len(split["test"]) == 1
    assert counts == {"original_data": 4, "train": 12, "meta_train": 6}
    volume = np.load(legacy / "original_data" / f"{train[0]}.npy", allow_pickle=True).item()
    arrays = load_case(prepared, train[0])
    np.testing.assert_array_equal(volume["img"], arrays["image"][:, 0])
    piece = np.load(legacy / "train" / f"{train[0]}_3.npy", allow_pickle=True).item()
    assert set(piece) == {"img", "label", "noisy_label"}
    assert piece["img"].shape == (16, 16)
    np.testing.assert_array_equal(piece["noisy_label"], arrays["noisy_L1"][3])
    assert set(np.load(legacy / "meta_train" / f"{meta[0]}_0.npy", allow_pickle=True).item()) == {
        "img",
        "label",
    }
    with pytest.raises(UserError, match="--level L4"):
        export_legacy(prepared, tmp_path / "other", level="L4")


def test_import_turns_legacy_volumes_into_a_raw_folder(tmp_path):
    volumes = tmp_path / "original_data"
    volumes.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        label = np.zeros((4, 12, 10), np.uint8)
        label[1:3, 3:8, 2:7] = 255
        np.save(volumes / f"Case{index:02d}.npy", {"img": rng.random((4, 12, 10)), "label": label})
    (volumes / "._Case00.npy").write_bytes(b"junk")
    assert import_legacy(volumes, tmp_path / "raw") == ["Case00", "Case01", "Case02"]
    cases, _ = discover_cases(tmp_path / "raw")
    assert next(case.mask.name for case in cases) == "Case00_segmentation.nii.gz"
    manifest = prepare_dataset(tmp_path / "raw", tmp_path / "prepared", size=16)
    assert manifest["cases"]["Case01"]["original_shape"] == [4, 12, 10]
    assert load_case(tmp_path / "prepared", "Case01")["mask_original"].sum() == 2 * 5 * 5
    np.save(volumes / "Case09.npy", np.zeros(3))
    with pytest.raises(UserError, match=r"Case09\.npy: not a saved dict"):
        import_legacy(volumes, tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


class _Payload:
    """Unpickling this runs ``os.system``: what a hostile .npy could hide in a saved object array."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_legacy_npy_cannot_run_code(tmp_path):
    volumes = tmp_path / "original_data"
    volumes.mkdir()
    marker = tmp_path / "pwned"
    hostile = np.empty((), dtype=object)
    hostile[()] = {"img": _Payload(marker), "label": np.zeros((2, 4, 4), np.uint8)}
    np.save(volumes / "Case00.npy", hostile, allow_pickle=True)
    with pytest.raises(UserError, match=r"Case00\.npy: not a saved dict .* \(refuses global posix\.system\)"):
        import_legacy(volumes, tmp_path / "raw")
    assert not marker.exists()
    assert not (tmp_path / "raw").exists()


def test_promise12_parts_are_merged_by_symlinks(tmp_path):
    write_pairs(tmp_path / "TrainingData_Part1", count=2)
    part2 = tmp_path / "TrainingData_Part2"
    part2.mkdir()
    image, geometry = read_volume(tmp_path / "TrainingData_Part1" / "Case00.mhd")
    write_volume(part2 / "Case07.mhd", image, geometry)
    write_volume(part2 / "Case07_segmentation.mhd", (image > 400).astype(np.uint8), geometry)
    merge = _script("promise12_merge")
    parts = [tmp_path / "TrainingData_Part1", part2]
    assert merge.merge_parts(parts, tmp_path / "raw", copy=False) == 3
    assert (tmp_path / "raw" / "Case07.raw").is_symlink()
    np.testing.assert_array_equal(read_volume(tmp_path / "raw" / "Case07.mhd")[0], image)
    assert [case.case_id for case in discover_cases(tmp_path / "raw")[0]] == ["Case00", "Case01", "Case07"]
    with pytest.raises(UserError, match="parts must not overlap"):
        merge.merge_parts([parts[0], parts[0]], tmp_path / "again", copy=True)
    assert not (tmp_path / "again").exists()


def test_export_refuses_multi_channel_or_multi_class_data(tmp_path):
    raw = write_nnunet(tmp_path / "raw", count=4)
    prepare_dataset(raw, tmp_path / "zones", size=16)
    with pytest.raises(
        UserError, match=r"manifest\.json: the reference layout holds one channel and binary masks"
    ):
        export_legacy(tmp_path / "zones", tmp_path / "legacy")
    prepare_dataset(raw, tmp_path / "two", size=16, channels=(0, 1), labels="merge")
    with pytest.raises(UserError, match=r"this dataset has 2 channel\(s\) and 2 labels"):
        export_legacy(tmp_path / "two", tmp_path / "legacy")
    assert not (tmp_path / "legacy").exists()
