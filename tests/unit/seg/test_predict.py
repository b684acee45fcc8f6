"""`predict` on hostile inputs: corrupt or NaN volumes, folders that fail half-way, outputs onto inputs."""

import re
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.engine.checkpoint import save_checkpoint
from mlbseg.engine.run_dir import FINAL, LAST
from mlbseg.errors import UserError
from mlbseg.evaluation.resample import probabilities_to_original
from mlbseg.prep.convert import volume_to_slices
from mlbseg.prep.manifest import load_manifest
from mlbseg.prep.normalize import NORMALIZATION, apply_window, intensity_window
from mlbseg.prep.resize import resize_slices
from mlbseg.prep.volumes import read_volume, write_volume
from mlbseg.seg.data import data_record
from mlbseg.seg.inference import predict_probabilities
from mlbseg.seg.predict import Predictor, load_predictor, plan_outputs, predict_all

from ._prepared import MODEL, small_model, write_prepared
from .test_multiclass_eval import write_zones_prepared, write_zones_run, zones_model

GEOMETRY = {"spacing": [3.0, 0.5, 0.5], "origin": [1.0, 2.0, 3.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
SHAPE = (3, 20, 18)


@pytest.fixture
def predictor():
    """A 1×1 convolution for a network: foreground where the normalised intensity is above 0.5."""
    model = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(20.0)
        model.bias.fill_(-10.0)
    return Predictor(cfg=None, model=model, device=torch.device("cpu"), size=16, channels=(0,))


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


# --- a self-contained model: data record in the checkpoint, several channels, K = 3 labels -------------


def _invoke(*args):
    return CliRunner().invoke(app, ["predict", *(str(arg) for arg in args), "--device", "cpu"])


@pytest.fixture
def zones_run(tmp_path):
    """A 2-channel, 3-label run (random weights) whose prepared folder has been deleted."""
    prepared = tmp_path / "prepared"
    manifest, _ = write_zones_prepared(prepared)
    run = write_zones_run(tmp_path / "run", prepared, manifest, zones_model(seed=3))
    shutil.rmtree(prepared)
    return run


def _channel_files(folder, case, shape=SHAPE, scale=1000.0, geometry=GEOMETRY, channels=(0, 1)):
    """``<case>_0000.nii.gz`` (T2-like) and ``<case>_0001.nii.gz`` (``scale`` × another pattern)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(len(case))
    t2 = rng.normal(300.0, 50.0, shape).astype(np.float32)
    t2[:, 5:15, 4:14] += 400.0
    adc = (scale * rng.random(shape)).astype(np.float32)
    images = {0: t2, 1: adc}
    for channel in channels:
        write_volume(folder / f"{case}_{channel:04d}.nii.gz", images[channel], geometry)
    return np.stack([t2, adc])


def test_a_multi_channel_model_predicts_an_nnunet_folder_without_the_prepared_folder(zones_run, tmp_path):
    image = _channel_files(tmp_path / "in", "case_001")
    _channel_files(tmp_path / "in", "case_002")
    result = _invoke(zones_run, tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert _listing(tmp_path / "out") == ["case_001.nii.gz", "case_002.nii.gz"]
    mask, geometry = read_volume(tmp_path / "out" / "case_001.nii.gz")
    assert mask.shape == SHAPE
    assert geometry["spacing"] == pytest.approx(GEOMETRY["spacing"])
    # the evaluation pipeline by hand: each channel with its own window, [S, 2, 16, 16] through the model
    predictor = load_predictor(zones_run, device="cpu")
    assert (predictor.size, predictor.channels, predictor.labels) == (16, (0, 1), ("background", "PZ", "TZ"))
    slices = np.stack([volume_to_slices(channel, 16)[0] for channel in image], axis=1)
    probs = predict_probabilities(predictor.model, torch.from_numpy(slices))
    assert probs.shape == (3, 3, 16, 16)
    expected = probabilities_to_original(probs.numpy(), SHAPE[1:]).argmax(axis=1)
    np.testing.assert_array_equal(mask, expected)
    assert len(np.unique(mask)) > 1
    assert set(np.unique(mask)) <= {0, 1, 2}
    joint = intensity_window(image)  # one window over both channels: other inputs, another mask
    shared = np.stack([apply_window(resize_slices(channel, 16), joint) for channel in image], axis=1)
    shared_probs = predict_probabilities(predictor.model, torch.from_numpy(shared))
    assert not np.array_equal(probabilities_to_original(shared_probs.numpy(), SHAPE[1:]).argmax(axis=1), mask)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            lambda f: (f / "case_001_0001.nii.gz").unlink(),
            r"case_001_0001\.nii\.gz: missing; the model takes",
        ),
        (
            lambda f: shutil.copy(f / "case_001_0001.nii.gz", f / "case_001_0002.nii.gz"),
            r"channel 0002 is not",
        ),
        (
            lambda f: shutil.copy(f / "case_001_0001.nii.gz", f / "notes.nii.gz"),
            r"notes\.nii\.gz: not in nnU-Net",
        ),
        (
            lambda f: _channel_files(
                f, "case_001", geometry={**GEOMETRY, "spacing": [3.0, 0.6, 0.5]}, channels=(1,)
            ),
            r"case_001_0001\.nii\.gz: spacing differs from case_001_0000\.nii\.gz",
        ),
        (
            lambda f: _channel_files(f, "case_001", shape=(3, 20, 17), channels=(1,)),
            r"case_001_0001\.nii\.gz: size differs",
        ),
    ],
    ids=["missing channel", "extra channel", "not nnU-Net naming", "other spacing", "other size"],
)
def test_channel_files_that_do_not_fit_are_one_line_each(zones_run, tmp_path, setup, message):
    _channel_files(tmp_path / "in", "case_001")
    setup(tmp_path / "in")
    result = _invoke(zones_run, tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


def test_a_single_file_for_a_multi_channel_model_is_refused(zones_run, tmp_path):
    _channel_files(tmp_path / "in", "case_001")
    result = _invoke(zones_run, tmp_path / "in" / "case_001_0000.nii.gz", tmp_path / "mask.nii.gz")
    assert result.exit_code == 2
    assert "this model takes 2 channels; give a folder" in result.stderr


def test_a_binary_model_with_a_data_record_needs_no_prepared_folder(tmp_path):
    prepared = tmp_path / "prepared"
    write_prepared(prepared)
    manifest = load_manifest(prepared)
    manifest["normalization"] = NORMALIZATION
    run = tmp_path / "run"
    cfg = {"data": {"prepared": str(prepared)}, "model": dict(MODEL)}
    model = small_model()
    save_checkpoint({"model": model.state_dict(), "config": cfg, "data": data_record(manifest)}, run / FINAL)
    save_checkpoint({"model": model.state_dict(), "config": cfg}, run / LAST)  # an older checkpoint
    shutil.rmtree(prepared)
    source = _volume(tmp_path / "v.nii.gz")
    result = _invoke(run, source, tmp_path / "mask.nii.gz")
    assert result.exit_code == 0, result.output
    mask, _ = read_volume(tmp_path / "mask.nii.gz")
    predictor = load_predictor(run, device="cpu")
    assert predictor.channels == (0,)
    np.testing.assert_array_equal(mask, predictor.mask(read_volume(source)[0]))
    assert set(np.unique(mask)) <= {0, 1}
    old = _invoke(run, source, tmp_path / "old.nii.gz", "--checkpoint", "last")
    assert old.exit_code == 2
    assert "prepared: no such folder" in old.stderr
    assert "(the run's slice size and normalisation come from it; see --prepared)" in old.stderr
