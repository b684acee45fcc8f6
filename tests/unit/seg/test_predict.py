"""`predict` on hostile inputs: corrupt or NaN volumes, folders that fail half-way, outputs onto inputs."""

import numpy as np
import pytest
import torch

from mlbseg.errors import UserError
from mlbseg.prep.volumes import read_volume, write_volume
from mlbseg.seg.predict import Predictor, plan_outputs, predict_all

GEOMETRY = {"spacing": [3.0, 0.5, 0.5], "origin": [1.0, 2.0, 3.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
SHAPE = (3, 20, 18)


@pytest.fixture
def predictor():
    """A 1×1 convolution for a network: foreground where the normalised intensity is above 0.5."""
    model = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(20.0)
        model.bias.fill_(-10.0)
    return Predictor(cfg=None, model=model, device=torch.device("cpu"), size=16, channel=0)


def _volume(path, value=None):
    """A [3, 20, 18] image with a bright square; ``value`` goes into one voxel (float32 then)."""
    image = np.full(SHAPE, 100.0, np.float32)
    image[:, 5:15, 4:14] = 900.0
    if value is not None:
        image[1, 2, 3] = value
    write_volume(path, image, GEOMETRY)
    return path


def _folder(tmp_path, bad=None):
    """INPUT folder with good volumes a.nii.gz and b.mhd, and ``bad(folder)`` applied to it."""
    folder = tmp_path / "in"
    folder.mkdir()
    _volume(folder / "a.nii.gz")
    _volume(folder / "b.mhd")
    if bad is not None:
        bad(folder)
    return folder


def _truncate(path, keep=-20):
    path.write_bytes(path.read_bytes()[:keep])


BAD_VOLUMES = {
    "truncated nii.gz": lambda f: _truncate(_volume(f / "c.nii.gz")),
    "truncated nii": lambda f: _truncate(_volume(f / "c.nii")),
    "truncated raw": lambda f: _truncate(_volume(f / "c.mhd").with_suffix(".raw")),
    "missing raw": lambda f: _volume(f / "c.mhd").with_suffix(".raw").unlink(),
    "bad header": lambda f: (f / "c.mha").write_text("NDims = banana\n"),
    "NaN voxel": lambda f: _volume(f / "c.nii.gz", np.nan),
    "inf voxel": lambda f: _volume(f / "c.mhd", np.inf),
}


def _listing(folder):
    return sorted(path.name for path in folder.iterdir())


def test_a_good_folder_gives_every_mask(predictor, tmp_path):
    source, target = _folder(tmp_path), tmp_path / "out"
    predict_all(predictor, source, target, plan_outputs(source, target, False))
    assert _listing(target) == ["a.nii.gz", "b.mhd", "b.raw"]
    mask, geometry = read_volume(target / "b.mhd")
    assert mask.dtype == np.uint8
    assert mask[1, 10, 9] == 1
    assert mask[1, 1, 1] == 0
    assert geometry["origin"] == pytest.approx(GEOMETRY["origin"])
    assert _listing(tmp_path) == ["in", "out"]  # no staging folder left


@pytest.mark.parametrize("kind", list(BAD_VOLUMES))
def test_one_bad_volume_in_a_folder_leaves_no_output(predictor, tmp_path, kind):
    source, target = _folder(tmp_path, BAD_VOLUMES[kind]), tmp_path / "out"
    pairs = plan_outputs(source, target, False)
    with pytest.raises(UserError, match=r"/in/c\.(nii\.gz|nii|mhd|mha): ") as error:
        predict_all(predictor, source, target, pairs)
    assert "\n" not in str(error.value)
    assert _listing(tmp_path) == ["in"]  # neither out/ nor a staging folder


@pytest.mark.parametrize("kind", ["truncated nii.gz", "NaN voxel"])
def test_a_failed_overwrite_keeps_the_existing_output(predictor, tmp_path, kind):
    source, target = _folder(tmp_path, BAD_VOLUMES[kind]), tmp_path / "out"
    target.mkdir()
    (target / "a.nii.gz").write_bytes(b"previous mask")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(UserError):
        predict_all(predictor, source, target, plan_outputs(source, target, True), overwrite=True)
    assert (target / "a.nii.gz").read_bytes() == b"previous mask"
    assert _listing(target) == ["a.nii.gz", "notes.txt"]
    assert _listing(tmp_path) == ["in", "out"]


def test_an_existing_output_folder_needs_overwrite_and_is_then_replaced(predictor, tmp_path):
    source, target = _folder(tmp_path), tmp_path / "out"
    target.mkdir()
    (target / "old.nii.gz").write_bytes(b"old")
    with pytest.raises(UserError, match=r"out: already exists; pass --overwrite to replace it"):
        plan_outputs(source, target, False)
    predict_all(predictor, source, target, plan_outputs(source, target, True), overwrite=True)
    assert _listing(target) == ["a.nii.gz", "b.mhd", "b.raw"]


def test_a_non_finite_single_volume_writes_nothing(predictor, tmp_path):
    source, target = _volume(tmp_path / "v.nii.gz", -np.inf), tmp_path / "mask.nii.gz"
    with pytest.raises(UserError, match=r"v\.nii\.gz: the image contains NaN or inf values"):
        predict_all(predictor, source, target, plan_outputs(source, target, False))
    assert _listing(tmp_path) == ["v.nii.gz"]


@pytest.mark.parametrize("output", [".", ".."], ids=["the input folder", "its parent"])
def test_output_must_not_replace_the_input_folder(tmp_path, output):
    source = _folder(tmp_path)
    with pytest.raises(UserError, match="OUTPUT must not be the INPUT folder"):
        plan_outputs(source, source / output, True)


def test_output_inside_the_input_folder_is_fine(predictor, tmp_path):
    source = _folder(tmp_path)
    target = source / "masks"
    predict_all(predictor, source, target, plan_outputs(source, target, False))
    assert _listing(target) == ["a.nii.gz", "b.mhd", "b.raw"]
    assert _listing(source) == ["a.nii.gz", "b.mhd", "b.raw", "masks"]
