"""`mlbseg figure overlay|weights|curves` and `mlbseg predict` on one smoke-trained run of tiny phantoms."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from mlbseg.cli import app as main_app
from mlbseg.cli import figure
from mlbseg.cli._errors import reports_user_errors
from mlbseg.cli.predict import predict
from mlbseg.evaluation.resample import probabilities_to_original
from mlbseg.figures import DPI
from mlbseg.figures.overlay import default_slices
from mlbseg.prep.manifest import load_case, load_manifest
from mlbseg.seg.evaluate import load_trained_model
from mlbseg.seg.inference import predict_probabilities
from mlbseg.seg.weight_maps import weight_map_rows

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
runner = CliRunner()

app = typer.Typer(pretty_exceptions_enable=False)
app.command("predict")(reports_user_errors(predict))
app.add_typer(figure.app, name="figure")


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory):
    """The shared phantoms and one smoke run of MLB-Seg on them: (raw, prepared, run)."""
    raw, prepared = phantoms
    run = tmp_path_factory.mktemp("figures") / "run"
    result = runner.invoke(
        main_app, ["train", str(SMOKE), "--set", f"data.prepared={prepared}", "--run-dir", str(run)]
    )
    assert result.exit_code == 0, result.output
    return raw, prepared, run


def _invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _has(rgb, colour):
    return bool((np.abs(rgb - np.array(colour)).sum(axis=-1) < 60).any())


@pytest.mark.slow
def test_overlay_of_test_and_train_cases(trained):
    _, prepared, run = trained
    result = _invoke("figure", "overlay", run)
    assert result.exit_code == 0, result.output
    test_case = load_manifest(prepared)["split"]["test"][0]
    png = run / "figures" / f"overlay_{test_case}.png"
    shown = default_slices(load_case(prepared, test_case)["mask"])
    assert Image.open(png).size == (3 * DPI * len(shown), round((3 + 0.8) * DPI))
    rgb = _pixels(png)
    assert _has(rgb, (255, 0, 0))
    assert _has(rgb, (0, 255, 255))
    assert not _has(rgb, (255, 255, 0))  # test cases have no noisy label
    train_case = load_manifest(prepared)["split"]["train"][0]
    out = run / "train.png"
    result = _invoke(
        "figure", "overlay", run, "--split", "train", "--cases", train_case, "--slices", "4,6", "--out", out
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] == 2 * 3 * DPI
    assert _has(_pixels(out), (255, 255, 0))  # the noisy label (yellow) of Figure 5


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cases", "Case99"], "--cases: Case99 not in the test split"),
        (["--split", "meta"], "--split"),
        (["--slices", "999", "--out", "x.png"], "out of range"),
        (["--slices", "a"], "--slices"),
    ],
)
def test_overlay_bad_input(trained, tmp_path, args, message):
    _, _, run = trained
    if "--out" in args:
        args = [*args[:-1], str(tmp_path / "x.png")]
    result = _invoke("figure", "overlay", run, "--split", "test", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.slow
def test_figures_refuse_to_overwrite(trained, tmp_path):
    _, prepared, run = trained
    case = load_manifest(prepared)["split"]["test"][0]
    out = tmp_path / "o.png"
    assert _invoke("figure", "overlay", run, "--cases", case, "--out", out).exit_code == 0
    before = out.stat().st_mtime_ns
    again = _invoke("figure", "overlay", run, "--cases", case, "--out", out)
    assert again.exit_code == 2
    assert "--overwrite" in again.output
    assert out.stat().st_mtime_ns == before
    assert _invoke("figure", "overlay", run, "--cases", case, "--out", out, "--overwrite").exit_code == 0


@pytest.mark.slow
def test_weight_maps_take_no_step_and_are_reproducible(trained, tmp_path):
    _, _, run = trained
    checkpoints = {name: (run / "checkpoints" / name).read_bytes() for name in ("last.pt", "final.pt")}
    out = tmp_path / "weights.png"
    result = _invoke("figure", "weights", run, "--count", "2", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (round((6 * 1.6 + 0.6) * DPI), round((2 * 1.6 + 0.3) * DPI))
    for name, data in checkpoints.items():
        assert (run / "checkpoints" / name).read_bytes() == data, name
    rows = weight_map_rows(run, count=2, device="cpu")
    again = weight_map_rows(run, count=2, device="cpu")
    assert len(rows) == 2
    for row, other in zip(rows, again, strict=True):
        assert row["alpha"].shape == row["beta"].shape == row["image"].shape == (32, 32)
        assert (row["alpha"] >= 0).all()
        assert (row["beta"] >= 0).all()
        assert row["alpha"].sum() + row["beta"].sum() > 0
        assert set(np.unique(row["pseudo"])) <= {0.0, 1.0}
        assert row["reference"].any()  # slices are drawn among those with foreground
        np.testing.assert_array_equal(row["alpha"], other["alpha"])
        assert row["title"].startswith("Case")


@pytest.mark.slow
def test_weight_maps_need_a_meta_weighted_method(trained, tmp_path):
    _, _, run = trained
    baseline = tmp_path / "baseline"
    shutil.copytree(run, baseline)
    state = torch.load(baseline / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["method"]["name"] = "baseline"
    torch.save(state, baseline / "checkpoints" / "last.pt")
    result = _invoke("figure", "weights", baseline, "--out", tmp_path / "w.png")
    assert result.exit_code == 2
    assert "learns no α/β weights" in result.output


def _metrics_csv(run_dir, rows):
    run_dir.mkdir(parents=True)
    lines = ["epoch,lr,loss,alpha_mean,val_dice"] + [
        f"{e},0.005,{1 / e},,{0.1 * e}" for e in range(1, rows + 1)
    ]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_curves_of_one_and_several_runs(tmp_path):
    first, second = tmp_path / "a" / "run", tmp_path / "b" / "run"
    _metrics_csv(first, 3)
    _metrics_csv(second, 5)
    result = _invoke("figure", "curves", first, "--metrics", "loss", "--metrics", "val_dice")
    assert result.exit_code == 0, result.output
    assert Image.open(first / "figures" / "curves.png").size == (round(2 * 3.5 * DPI), round(3.0 * DPI))
    result = _invoke(
        "figure", "curves", first, second, "--metrics", "loss,val_dice,lr", "--out", tmp_path / "c.png"
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "c.png").size == (round(3 * 3.5 * DPI), round(3.0 * DPI))
    assert _has(_pixels(tmp_path / "c.png"), (31, 119, 180))  # the first run's line (matplotlib C0)
    assert _has(_pixels(tmp_path / "c.png"), (255, 127, 14))  # the second run's (C1)
    several = _invoke("figure", "curves", first, second)
    assert several.exit_code == 2
    assert "--out" in several.output
    missing = _invoke("figure", "curves", first, "--metrics", "alpha_mean", "--out", tmp_path / "d.png")
    assert missing.exit_code == 2
    assert "val_dice" in missing.output  # the message lists the columns that exist
    again = _invoke("figure", "curves", first)
    assert again.exit_code == 2
    assert "--overwrite" in again.output


def test_predict_checks_its_paths_before_loading_the_model(tmp_path):
    result = _invoke("predict", tmp_path / "no-run", tmp_path / "missing.nii.gz", tmp_path / "out.nii.gz")
    assert result.exit_code == 2
    assert "missing.nii.gz: no such file" in result.output
    (tmp_path / "empty").mkdir()
    result = _invoke("predict", tmp_path / "no-run", tmp_path / "empty", tmp_path / "out")
    assert result.exit_code == 2
    assert "no volumes" in result.output


def _oblique_copy(source, target):
    """Write ``source`` with a non-trivial spacing, origin and (rotated) direction to ``target``."""
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)[:, 3:-5, 2:]  # non-square in-plane
    copy = sitk.GetImageFromArray(array)
    copy.SetSpacing((0.7, 0.6, 3.5))
    copy.SetOrigin((-12.5, 30.25, 7.0))
    c, s = np.cos(0.3), np.sin(0.3)
    copy.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(copy, str(target))
    return array


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nii.gz", ".mhd"])
def test_predict_keeps_the_input_geometry(trained, tmp_path, suffix):
    raw, _, run = trained
    source = tmp_path / f"volume{suffix}"
    array = _oblique_copy(raw / "Case00.mhd", source)
    out = tmp_path / "out" / f"mask{suffix}"
    result = _invoke("predict", run, source, out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    given, written = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
    assert written.GetSize() == given.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), given.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), given.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), given.GetDirection(), atol=1e-6)
    mask = sitk.GetArrayFromImage(written)
    assert mask.dtype == np.uint8
    assert mask.shape == array.shape
    assert set(np.unique(mask)) <= {0, 1}
    if suffix == ".nii.gz":
        np.testing.assert_allclose(nib.load(out).affine, nib.load(source).affine, atol=1e-5)
        assert nib.load(out).shape == nib.load(source).shape


@pytest.mark.slow
def test_predict_matches_the_evaluation_pipeline_on_a_prepared_case(trained, tmp_path):
    raw, prepared, run = trained
    case = load_manifest(prepared)["split"]["test"][0]
    out = tmp_path / "mask.mha"
    assert _invoke("predict", run, raw / f"{case}.mhd", out, "--device", "cpu").exit_code == 0
    _, model, _ = load_trained_model(run, "final", torch.device("cpu"))
    arrays = load_case(prepared, case)
    probs = predict_probabilities(model, torch.from_numpy(arrays["image"]))[:, 0]  # the foreground channel
    expected = probabilities_to_original(probs.numpy(), arrays["mask_original"].shape[1:]) > 0.5
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), expected.astype(np.uint8))


@pytest.mark.slow
def test_predict_a_folder_and_refuse_to_overwrite(trained, tmp_path):
    raw, _, run = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("Case01.mhd", "Case01.raw", "Case01_segmentation.mhd", "Case01_segmentation.raw"):
        shutil.copy(raw / name, inputs / name)
    _oblique_copy(raw / "Case02.mhd", inputs / "other.nii.gz")
    result = _invoke("predict", run, inputs, tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "Case01.mhd",
        "Case01.raw",
        "other.nii.gz",
    ]
    again = _invoke("predict", run, inputs, tmp_path / "out")
    assert again.exit_code == 2
    assert "--overwrite" in again.output
    onto_input = _invoke("predict", run, inputs / "other.nii.gz", inputs / "other.nii.gz", "--overwrite")
    assert onto_input.exit_code == 2
    assert "replace the input" in onto_input.output


@pytest.mark.slow
def test_predict_a_folder_with_a_corrupt_volume_writes_nothing(trained, tmp_path):
    raw, _, run = trained
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("Case01.mhd", "Case01.raw"):
        shutil.copy(raw / name, inputs / name)
    _oblique_copy(raw / "Case02.mhd", inputs / "other.nii.gz")
    (inputs / "other.nii.gz").write_bytes((inputs / "other.nii.gz").read_bytes()[:-50])  # truncated
    result = _invoke("predict", run, inputs, out, "--device", "cpu")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "other.nii.gz: cannot read this volume's voxel data" in lines[0]
    assert "wrote" not in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in"]  # no mask, no staging folder
    out.mkdir()
    (out / "Case01.mhd").write_text("an earlier mask")
    again = _invoke("predict", run, inputs, out, "--device", "cpu", "--overwrite")
    assert again.exit_code == 2
    assert sorted(path.name for path in out.iterdir()) == ["Case01.mhd"]
    assert (out / "Case01.mhd").read_text() == "an earlier mask"


def test_predict_refuses_an_output_folder_that_holds_the_input(tmp_path):
    inputs = tmp_path / "data" / "in"
    inputs.mkdir(parents=True)
    (inputs / "a.nii.gz").write_bytes(b"")
    result = _invoke("predict", tmp_path / "no-run", inputs, tmp_path / "data", "--overwrite")
    assert result.exit_code == 2
    assert "OUTPUT must not be the INPUT folder" in result.output
    assert (inputs / "a.nii.gz").exists()
