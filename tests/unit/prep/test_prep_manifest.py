"""The prepared folder's files: deterministic npz, and loaders that fail with one clear line."""

import json
import zipfile

import numpy as np
import pytest

from mlbseg.errors import UserError
from mlbseg.prep.manifest import (
    FORMAT_VERSION,
    case_path,
    load_case,
    load_manifest,
    save_npz,
    write_manifest,
)


def test_npz_is_plain_numpy_and_byte_identical(tmp_path):
    arrays = {
        "image": np.random.default_rng(0).random((2, 4, 4), dtype=np.float32),
        "mask": np.eye(4, dtype=np.uint8),
    }
    save_npz(tmp_path / "a.npz", arrays)
    save_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as loaded:  # allow_pickle=False by default
        assert loaded.files == ["image", "mask"]
        np.testing.assert_array_equal(loaded["image"], arrays["image"])
        assert loaded["mask"].dtype == np.uint8
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        kinds = {info.filename: info.compress_type for info in archive.infolist()}
    assert kinds == {"image.npy": zipfile.ZIP_STORED, "mask.npy": zipfile.ZIP_DEFLATED}


def test_load_case_reads_all_arrays_or_explains(tmp_path):
    (tmp_path / "cases").mkdir()
    save_npz(tmp_path / "cases" / "Case00.npz", {"mask": np.ones((1, 2, 2), np.uint8)})
    assert load_case(tmp_path, "Case00")["mask"].shape == (1, 2, 2)
    with pytest.raises(UserError, match=r"Case01\.npz: no such file"):
        load_case(tmp_path, "Case01")
    (tmp_path / "cases" / "Case02.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"Case02\.npz: cannot read this case file"):
        load_case(tmp_path, "Case02")


def test_load_manifest_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(UserError, match=r"manifest\.json: missing"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(tmp_path)
    write_manifest(tmp_path, {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(UserError, match=f"format version {FORMAT_VERSION + 1}"):
        load_manifest(tmp_path)
    write_manifest(tmp_path, {"format_version": FORMAT_VERSION, "cases": {}})
    assert load_manifest(tmp_path) == {"format_version": FORMAT_VERSION, "cases": {}}
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == FORMAT_VERSION


ESCAPING_IDS = ["../outside", "..", ".", "", "/etc/passwd", "sub/Case00", "sub\\Case00", "Case\x0000", 7]


@pytest.mark.parametrize("case_id", ESCAPING_IDS)
def test_case_path_refuses_ids_that_leave_the_cases_folder(tmp_path, case_id):
    with pytest.raises(UserError, match=r"manifest\.json: case id .* is not a plain file name") as error:
        case_path(tmp_path, case_id)
    assert repr(case_id) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("where", "case_id"),
    [("split", case_id) for case_id in ESCAPING_IDS]
    + [("cases", case_id) for case_id in ESCAPING_IDS if isinstance(case_id, str)],  # JSON keys are str
)
def test_load_manifest_refuses_ids_that_leave_the_cases_folder(tmp_path, where, case_id):
    content = {"cases": {case_id: {}}} if where == "cases" else {"split": {"test": ["Case00", case_id]}}
    write_manifest(tmp_path, {"format_version": FORMAT_VERSION, **content})
    with pytest.raises(UserError, match=r"manifest\.json: case id .* is not a plain file name") as error:
        load_manifest(tmp_path)
    assert repr(case_id) in str(error.value)


@pytest.mark.parametrize(
    "content", [{"cases": ["Case00"]}, {"split": ["Case00"]}, {"split": {"test": "Case00"}}]
)
def test_load_manifest_refuses_malformed_case_lists(tmp_path, content):
    write_manifest(tmp_path, {"format_version": FORMAT_VERSION, **content})
    with pytest.raises(UserError, match=r"manifest\.json: 'cases' must map ids"):
        load_manifest(tmp_path)


def test_plain_ids_are_accepted(tmp_path):
    split = {"train": ["Case00", "prostate_02"], "meta": ["a.b"], "test": ["..x"]}
    write_manifest(tmp_path, {"format_version": FORMAT_VERSION, "split": split, "cases": {"Case00": {}}})
    assert load_manifest(tmp_path)["split"] == split
    assert case_path(tmp_path, "..x") == tmp_path / "cases" / "..x.npz"
