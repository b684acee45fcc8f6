"""`export_nnunet`: a prepared dataset as an nnU-Net v2 raw dataset with the chosen noisy training labels."""

import json

import numpy as np
import pytest

from mlbseg.errors import UserError
from mlbseg.prep.discovery import discover_dataset
from mlbseg.prep.manifest import load_case
from mlbseg.prep.nnunet_export import export_nnunet
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.volumes import read_volume, write_volume

from ._helpers import write_nnunet

REQUIRED = {"channel_names": dict, "labels": dict, "numTraining": int, "file_ending": str}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    raw = write_nnunet(root / "raw", count=6)
    rater = root / "rater"
    rater.mkdir()
    for case_id in ("case_000", "case_001", "case_002", "case_003", "case_004"):
        labels, geometry = read_volume(raw / "labelsTr" / f"{case_id}.nii.gz")
        write_volume(rater / f"{case_id}.nii.gz", np.roll(labels, 1, axis=2), geometry)
    prepare_dataset(
        raw, root / "prepared", size=16, channels=(0, 1), noisy_labels=[rater], meta=1, test=1, val=1
    )
    return root / "prepared"


@pytest.mark.parametrize("noise", ["L1", "rater", "clean"])
def test_export_is_a_valid_nnunet_dataset_whose_masks_round_trip(prepared, tmp_path, noise):
    manifest = json.loads((prepared / "manifest.json").read_text())
    counts = export_nnunet(prepared, tmp_path / "out", noise=noise)
    out = tmp_path / "out"
    spec = json.loads((out / "dataset.json").read_text())
    assert set(spec) == set(REQUIRED) | {"name", "description", "reference"}
    for key, kind in REQUIRED.items():
        assert type(spec[key]) is kind, key
    assert spec["channel_names"] == {"0": "T2", "1": "ADC"}
    assert spec["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert spec["file_ending"] == ".nii.gz"
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert spec["numTraining"] == len(labels) == counts["train"] + counts["meta"]
    assert len(list((out / "imagesTr").iterdir())) == 2 * len(labels)
    assert len(list((out / "imagesTs").iterdir())) == 2 * counts["test"] == 2 * len(manifest["split"]["test"])
    lacking = [i for i in manifest["split"]["train"] if noise == "rater" and i == "case_005"]
    assert counts["left_out"] == len(lacking)
    (val_id,) = manifest["split"]["val"]
    assert counts["val"] == 1  # held out from training for every method: not exported
    assert not any(
        p.name.startswith(val_id) for sub in ("imagesTr", "imagesTs") for p in (out / sub).iterdir()
    )
    for name in labels:
        case_id = name.removesuffix(".nii.gz")
        case, arrays = manifest["cases"][case_id], load_case(prepared, case_id)
        key = "mask" if case["split"] == "meta" or noise == "clean" else f"noisy_{noise}"
        written, geometry = read_volume(out / "labelsTr" / name)
        np.testing.assert_array_equal(written, arrays[key])
        t2, _ = read_volume(out / "imagesTr" / f"{case_id}_0000.nii.gz")
        adc, _ = read_volume(out / "imagesTr" / f"{case_id}_0001.nii.gz")
        np.testing.assert_allclose(np.stack([t2, adc], axis=1), arrays["image"], atol=1e-6)
        extent = np.array(geometry["spacing"][1:]) * 16
        np.testing.assert_allclose(
            extent, np.array(case["spacing"][1:]) * case["original_shape"][1:], rtol=1e-5
        )
    dataset = discover_dataset(out)  # mlbseg reads its own export as RAW again
    assert dataset.layout == "nnunet"
    assert len(dataset.cases) == spec["numTraining"]


def test_export_refuses_unknown_noise_and_existing_output(prepared, tmp_path):
    with pytest.raises(UserError, match="--noise L4: choose one of L1, L2, L3, clean, rater"):
        export_nnunet(prepared, tmp_path / "out", noise="L4")
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export_nnunet(prepared, tmp_path / "out", noise="L1")
    export_nnunet(prepared, tmp_path / "out", noise="L1", overwrite=True)
    assert (tmp_path / "out" / "dataset.json").is_file()
