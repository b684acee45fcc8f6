"""mlbseg.seg.data on K = 3 labels, two channels, a given annotation and a train case without reference."""

import json

import numpy as np
import pytest
import torch

from mlbseg.errors import UserError
from mlbseg.prep.manifest import case_path, save_npz
from mlbseg.seg.data import load_slices, load_training_slices, training_label_key

from ._prepared import SIZE, ZONES, ZONES_SPLITS, num_slices, write_prepared

CPU = torch.device("cpu")
ANNOTATED = ZONES["annotations"]["rater2"]  # Case01 and Case04 (which has no reference)


@pytest.fixture
def zones(tmp_path):
    """K = 3, C = 2: train Case00 (reference only), Case01 (both), Case04 (rater2 only); meta Case02."""
    folder = tmp_path / "zones"
    return folder, write_prepared(folder, ZONES_SPLITS, **ZONES)


def test_the_label_key_of_each_noise_name():
    assert [training_label_key(noise) for noise in ("clean", "L2", "rater2")] == [
        "mask",
        "noisy_L2",
        "noisy_rater2",
    ]


def test_a_given_annotation_trains_on_its_cases_and_leaves_the_others_out(zones):
    folder, arrays = zones
    slices = load_training_slices(folder, "rater2", CPU)
    assert slices.cases == ("Case01", "Case04")
    assert slices.left_out == ("Case00",)
    assert slices.num_labels == 3
    count = num_slices(1) + num_slices(4)
    assert slices.images.shape == (count, 2, SIZE, SIZE)
    assert slices.labels.shape == slices.reference.shape == (count, 1, SIZE, SIZE)
    expected_images = np.concatenate([arrays[case]["image"] for case in ANNOTATED])
    np.testing.assert_array_equal(slices.images.numpy(), expected_images)
    expected_labels = np.concatenate([arrays[case]["noisy_rater2"] for case in ANNOTATED])
    np.testing.assert_array_equal(slices.labels[:, 0].numpy(), expected_labels)
    assert set(slices.labels.unique().tolist()) == {0, 1, 2}
    # Case01 has its reference; Case04 has none: a zero reference and has_reference False
    assert slices.has_reference.tolist() == [True] * num_slices(1) + [False] * num_slices(4)
    np.testing.assert_array_equal(slices.reference[: num_slices(1), 0].numpy(), arrays["Case01"]["mask"])
    assert not slices.reference[num_slices(1) :].any()
    assert slices.cases_without_reference() == ["Case04"]
    assert slices.slice_names()[num_slices(1)] == "Case04 z=0"


@pytest.mark.parametrize("noise", ["L2", "clean"])
def test_a_case_without_reference_is_left_out_of_synthetic_levels_and_clean(zones, noise):
    folder, arrays = zones
    slices = load_training_slices(folder, noise, CPU)
    assert slices.cases == ("Case00", "Case01")
    assert slices.left_out == ("Case04",)
    assert bool(slices.has_reference.all())
    assert slices.cases_without_reference() == []
    key = training_label_key(noise)
    expected = np.concatenate([arrays[case][key] for case in ("Case00", "Case01")])
    np.testing.assert_array_equal(slices.labels[:, 0].numpy(), expected)


def test_an_unknown_noise_name_is_one_line_listing_the_datasets_labels(zones):
    folder, _ = zones
    with pytest.raises(UserError) as caught:
        load_training_slices(folder, "rater3", CPU)
    message = str(caught.value)
    assert "\n" not in message
    assert "manifest.json: 'data.noise' must be one of L1, L2, L3, clean, rater2" in message
    assert "got 'rater3'" in message


def test_no_train_case_with_the_chosen_labels_is_an_error(tmp_path):
    folder = tmp_path / "prepared"
    write_prepared(folder, annotations={"rater2": ["Case02"]})  # only a meta case has it
    with pytest.raises(UserError, match=r"manifest\.json: no train case has a 'noisy_rater2' array"):
        load_training_slices(folder, "rater2", CPU)


def test_the_meta_split_still_needs_every_reference(tmp_path):
    folder = tmp_path / "prepared"
    write_prepared(folder, num_labels=3)
    arrays = dict(np.load(case_path(folder, "Case02")))
    del arrays["mask"]
    save_npz(case_path(folder, "Case02"), arrays)
    with pytest.raises(UserError, match=r"Case02\.npz: no 'mask' array; every meta case needs it"):
        load_slices(folder, "meta", "mask", CPU)


def test_a_label_value_outside_the_manifests_labels_names_the_file(tmp_path):
    folder = tmp_path / "prepared"
    write_prepared(folder, num_labels=3)
    arrays = dict(np.load(case_path(folder, "Case01")))
    arrays["noisy_L1"] = arrays["noisy_L1"].copy()
    arrays["noisy_L1"][0, 0, 0] = 3
    save_npz(case_path(folder, "Case01"), arrays)
    with pytest.raises(UserError, match=r"Case01\.npz: 'noisy_L1' holds label value 3, .* 3 labels"):
        load_slices(folder, "train", "noisy_L1", CPU)


def test_images_with_another_channel_count_than_the_manifest_name_the_file(tmp_path):
    folder = tmp_path / "prepared"
    write_prepared(folder, channels=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["channels"] = [0, 1, 2]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"Case00\.npz: 'image' \[2, 2, 16, 16\] is not \[S, 3, h, w\]"):
        load_slices(folder, "train", "mask", CPU)


def test_a_case_the_manifest_gives_a_reference_must_have_its_mask(zones):
    folder, _ = zones
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["cases"]["Case04"]["has_reference"]  # absent means true
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"Case04\.npz: no 'mask' array, but the manifest gives"):
        load_training_slices(folder, "rater2", CPU)
