"""`evaluate` of a model with K = 3 labels and two input channels: summary.json per class, by label name.

The prepared dataset and the run are written directly (no training): a zones dataset (peripheral zone 1
around a transition zone 2) with two image channels, and checkpoints whose network predicts one label
everywhere, so every score is known.
"""

import json

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.config import to_dict
from mlbseg.engine.checkpoint import save_checkpoint
from mlbseg.errors import UserError
from mlbseg.evaluation.metrics import summarize, volume_dice, volume_hd95
from mlbseg.prep.manifest import CASES, FORMAT_VERSION, case_path, save_npz, write_manifest
from mlbseg.seg.config import DataConfig, MethodConfig, ModelConfig, SegConfig, TrainConfig
from mlbseg.seg.data import data_record, load_volumes
from mlbseg.seg.evaluate import evaluate_run, load_trained_model
from mlbseg.seg.inference import validation_dice

from ._prepared import MODEL, ORIGINAL_HW, SIZE, SPACING

LABELS = {"background": 0, "PZ": 1, "TZ": 2}
CHANNELS = [0, 1]
ZONE_SPLITS = {"train": ["Case00"], "meta": ["Case02"], "test": ["Case03", "Case01"]}


def zones(shape_hw, slices, scale=1):
    """Labels [S, H, W]: a centred square of PZ (1) with a TZ (2) square inside, on slices 1.."""
    labels = np.zeros((slices, *shape_hw), np.uint8)
    row, col = shape_hw[0] // 2, shape_hw[1] // 2
    labels[1:, row - 4 * scale : row + 4 * scale, col - 4 * scale : col + 4 * scale] = 1
    labels[1:, row - 2 * scale : row + 2 * scale, col - 2 * scale : col + 2 * scale] = 2
    return labels


def write_zones_prepared(folder, splits=ZONE_SPLITS):
    """A prepared dataset (format 2) with labels :data:`LABELS` and image channels :data:`CHANNELS`."""
    (folder / CASES).mkdir(parents=True, exist_ok=True)
    records, written = {}, {}
    for split, ids in splits.items():
        for case_id in ids:
            slices = 2 + int(case_id[4:]) % 2
            mask = zones((SIZE, SIZE), slices)
            rng = np.random.default_rng(int(case_id[4:]))
            image = np.stack([0.3 * mask, 0.1 * rng.random(mask.shape)], axis=1).astype(np.float32)
            arrays = {"image": image, "mask": mask, "mask_original": zones(ORIGINAL_HW, slices)}
            if split == "train":
                arrays["noisy_L1"] = np.roll(mask, 1, axis=2)
            save_npz(case_path(folder, case_id), arrays)
            written[case_id] = arrays
            records[case_id] = {
                "id": case_id,
                "split": split,
                "num_slices": slices,
                "original_shape": list(arrays["mask_original"].shape),
                "spacing": list(SPACING),
            }
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": 0,
        "slice_size": SIZE,
        "normalization": "percentile_window_0.5_99.5_to_unit",
        "labels": LABELS,
        "label_mode": "keep",
        "channels": CHANNELS,
        "channel_names": ["T2", "ADC"],
        "split": {name: list(ids) for name, ids in splits.items()},
        "cases": records,
    }
    write_manifest(folder, manifest)
    return manifest, written


def zones_model(bias=None, seed=0):
    """The run's network for 2 channels and 3 labels: random (``bias`` None) or constant logits ``bias``."""
    torch.manual_seed(seed)
    model = smp.Unet(
        encoder_name=MODEL["encoder"],
        encoder_depth=MODEL["encoder_depth"],
        encoder_weights=None,
        decoder_channels=MODEL["decoder_channels"],
        in_channels=len(CHANNELS),
        classes=len(LABELS),
    )
    if bias is not None:
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()
            model.segmentation_head[0].bias.copy_(torch.tensor(bias))
    return model.eval()


def zones_config(prepared):
    return SegConfig(
        data=DataConfig(prepared=str(prepared), noise="L1"),
        model=ModelConfig(**MODEL),
        method=MethodConfig(name="baseline"),
        train=TrainConfig(seed=1, device="cpu"),
    )


def write_zones_run(run, prepared, manifest, model, name="final", with_data=True):
    """A run folder with ``checkpoints/<name>.pt`` holding ``model`` and (``with_data``) the data record."""
    state = {"model": model.state_dict(), "epoch": 4, "config": to_dict(zones_config(prepared))}
    if with_data:
        state["data"] = data_record(manifest)
    save_checkpoint(state, run / "checkpoints" / f"{name}.pt")
    return run


@pytest.fixture
def zones_run(tmp_path):
    prepared = tmp_path / "prepared"
    manifest, arrays = write_zones_prepared(prepared)
    run = write_zones_run(tmp_path / "run", prepared, manifest, zones_model(bias=[0.0, 3.0, 0.0]))
    write_zones_run(run, prepared, manifest, zones_model(bias=[3.0, 0.0, 0.0]), name="last", with_data=False)
    return run, prepared, arrays


def test_the_model_is_built_for_the_record_channels_and_labels(zones_run):
    run, prepared, _ = zones_run
    _, model, state = load_trained_model(run, "final", torch.device("cpu"))
    assert state["data"]["labels"] == LABELS
    with torch.no_grad():
        logits = model(torch.rand(1, 2, SIZE, SIZE))
    assert logits.shape == (1, 3, SIZE, SIZE)
    _, _, old = load_trained_model(run, "last", torch.device("cpu"))  # no record: the manifest's
    assert old["data"] == data_record(json.loads((prepared / "manifest.json").read_text()))


def test_summary_holds_each_class_by_label_name_and_the_mean_over_classes(zones_run):
    run, _, arrays = zones_run
    summary = evaluate_run(run, device="cpu")  # final: PZ (label 1) everywhere
    for case in ("Case03", "Case01"):
        reference = arrays[case]["mask_original"]
        everywhere = np.ones_like(reference)
        pz = {
            "dice": volume_dice(everywhere, reference == 1),
            "hd95": volume_hd95(everywhere, reference == 1, SPACING),
        }
        scores = summary["cases"][case]
        assert list(scores) == ["dice", "hd95", "classes"]
        assert scores["classes"] == {"PZ": pz, "TZ": {"dice": 0.0, "hd95": None}}  # TZ never predicted
        assert scores["dice"] == pytest.approx(pz["dice"] / 2)
        assert scores["hd95"] is None  # the mean over classes of an inf is inf
    mean = summary["mean"]
    assert list(mean) == ["dice", "hd95", "classes"]
    assert mean["hd95"] == {"mean": None, "std": None, "n": 0, "n_nonfinite": 2}
    assert mean["classes"]["TZ"]["dice"] == {"mean": 0.0, "std": 0.0, "n": 2, "n_nonfinite": 0}
    pz_dice = [summary["cases"][case]["classes"]["PZ"]["dice"] for case in ("Case03", "Case01")]
    assert mean["classes"]["PZ"]["dice"]["mean"] == pytest.approx(np.mean(pz_dice))
    assert mean["classes"]["PZ"]["hd95"]["n"] == 2
    assert json.loads((run / "summary.json").read_text()) == summary


def test_background_everywhere_scores_zero_dice_for_every_class(zones_run):
    run, _, _ = zones_run
    summary = evaluate_run(run, checkpoint="last", device="cpu")
    for scores in summary["cases"].values():
        assert scores["classes"] == {"PZ": {"dice": 0.0, "hd95": None}, "TZ": {"dice": 0.0, "hd95": None}}
    assert summary["mean"] == summarize(
        {case: _with_inf(scores) for case, scores in summary["cases"].items()}
    )


def _with_inf(scores):
    return {
        k: _with_inf(v) if isinstance(v, dict) else (float("inf") if v is None else v)
        for k, v in scores.items()
    }


def test_validation_dice_on_zones_is_the_mean_over_classes(zones_run):
    run, prepared, arrays = zones_run
    _, model, _ = load_trained_model(run, "final", torch.device("cpu"))
    volumes = load_volumes(prepared, "test", torch.device("cpu"))
    expected = np.mean(
        [
            volume_dice(
                np.ones_like(arrays[v.case_id]["mask_original"]), arrays[v.case_id]["mask_original"] == 1
            )
            / 2
            for v in volumes
        ]
    )
    assert validation_dice(model, volumes) == pytest.approx(expected)


def test_evaluating_on_data_with_other_labels_is_refused(zones_run, tmp_path):
    run, _, _ = zones_run
    other = tmp_path / "other"
    manifest, _ = write_zones_prepared(other)
    manifest["labels"] = {"background": 0, "PZ": 1, "CZ": 2}
    write_manifest(other, manifest)
    with pytest.raises(UserError, match=r"other/manifest.json: labels .* differ from the model's"):
        evaluate_run(run, prepared=other, device="cpu")
    assert not (run / "summary.json").exists()


def test_the_evaluate_command_prints_each_class(zones_run):
    run, _, _ = zones_run
    result = CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "PZ Dice" in result.output
    assert "TZ HD95" in result.output
    assert "mean over the foreground classes PZ, TZ" in result.output
