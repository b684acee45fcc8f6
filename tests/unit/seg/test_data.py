"""mlbseg.seg.data: the prepared dataset as stacked slices (training) and as volumes (evaluation)."""

import json

import numpy as np
import pytest
import torch

from mlbseg.errors import UserError
from mlbseg.prep.manifest import case_path
from mlbseg.seg.data import SliceSet, load_slices, load_volumes, split_cases

from ._prepared import ORIGINAL_HW, SIZE, SPACING, write_prepared

CPU = torch.device("cpu")


@pytest.fixture
def prepared(tmp_path):
    """(folder, arrays by case id): train Case00 (2 slices) + Case01 (3), meta Case02 (4), test Case03 (2)."""
    folder = tmp_path / "prepared"
    return folder, write_prepared(folder)


def _stacked(arrays, ids, key):
    """The cases' arrays stacked along the slices, [N, 1, h, w] (images are stored [S, 1, h, w] already)."""
    stacked = np.concatenate([arrays[case_id][key] for case_id in ids])
    return stacked if key == "image" else stacked[:, None]


@pytest.mark.parametrize("label_key", ["noisy_L1", "noisy_L3", "mask"])
def test_train_slices_are_the_cases_stacked_with_the_chosen_label(prepared, label_key):
    folder, arrays = prepared
    slices = load_slices(folder, "train", label_key, CPU)
    assert len(slices) == 5
    assert slices.images.shape == slices.labels.shape == slices.reference.shape == (5, 1, SIZE, SIZE)
    assert slices.images.dtype == torch.float32
    assert slices.labels.dtype == slices.reference.dtype == torch.uint8
    ids = ["Case00", "Case01"]
    np.testing.assert_array_equal(slices.images.numpy(), _stacked(arrays, ids, "image"))
    np.testing.assert_array_equal(slices.labels.numpy(), _stacked(arrays, ids, label_key))
    np.testing.assert_array_equal(slices.reference.numpy(), _stacked(arrays, ids, "mask"))
    assert torch.equal(slices.labels, slices.reference) == (label_key == "mask")
    assert slices.num_labels == 2  # binary: {background, foreground}
    assert slices.has_reference.dtype == torch.bool
    assert slices.has_reference.tolist() == [True] * 5
    assert (slices.cases, slices.case_slices, slices.left_out) == (("Case00", "Case01"), (2, 3), ())
    assert slices.slice_names() == ["Case00 z=0", "Case00 z=1", "Case01 z=0", "Case01 z=1", "Case01 z=2"]


def test_each_split_loads_only_its_own_cases(prepared):
    folder, arrays = prepared
    meta = load_slices(folder, "meta", "mask", CPU)
    test = load_slices(folder, "test", "mask", CPU)
    assert (len(meta), len(test)) == (4, 2)
    np.testing.assert_array_equal(meta.images.numpy(), arrays["Case02"]["image"])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["Case03"]["mask"][:, None])


def test_slices_follow_the_manifest_order_of_the_split(tmp_path):
    folder = tmp_path / "prepared"
    arrays = write_prepared(folder, {"train": ["Case01", "Case00"], "meta": ["Case02"], "test": ["Case03"]})
    assert split_cases(folder, "train") == ["Case01", "Case00"]
    slices = load_slices(folder, "train", "noisy_L2", CPU)
    np.testing.assert_array_equal(slices.labels.numpy(), _stacked(arrays, ["Case01", "Case00"], "noisy_L2"))


def test_slices_live_on_the_requested_device(prepared):
    folder, _ = prepared
    slices = load_slices(folder, "train", "noisy_L1", torch.device("meta"))  # a device without storage
    assert slices.images.device.type == slices.labels.device.type == slices.reference.device.type == "meta"
    assert (slices.images.dtype, slices.labels.dtype) == (torch.float32, torch.uint8)
    images, labels, reference = slices.batch(torch.tensor([0, 3]))
    assert images.device.type == labels.device.type == reference.device.type == "meta"
    assert labels.shape == (2, 1, SIZE, SIZE)


@pytest.mark.gpu
def test_slices_and_batches_on_cuda(prepared):
    folder, arrays = prepared
    cuda = torch.device("cuda")
    slices = load_slices(folder, "train", "noisy_L1", cuda)
    assert slices.images.is_cuda
    assert slices.labels.is_cuda
    assert slices.reference.is_cuda
    images, labels, _ = slices.batch(torch.tensor([4], device=cuda))
    assert images.is_cuda
    assert labels.dtype == torch.float32
    np.testing.assert_array_equal(labels.cpu().numpy()[0, 0], arrays["Case01"]["noisy_L1"][2])


def test_batch_picks_the_indexed_slices_as_float_0_1(prepared):
    folder, arrays = prepared
    slices = load_slices(folder, "train", "noisy_L1", CPU)
    index = torch.tensor([4, 1, 1])  # Case01 z=2, Case00 z=1 twice
    images, labels, reference = slices.batch(index)
    assert images.shape == labels.shape == reference.shape == (3, 1, SIZE, SIZE)
    assert images.dtype == labels.dtype == reference.dtype == torch.float32
    expected_labels = np.stack([arrays["Case01"]["noisy_L1"][2], *[arrays["Case00"]["noisy_L1"][1]] * 2])
    np.testing.assert_array_equal(labels[:, 0].numpy(), expected_labels.astype(np.float32))
    np.testing.assert_array_equal(images[0, 0].numpy(), arrays["Case01"]["image"][2, 0])
    np.testing.assert_array_equal(reference[1, 0].numpy(), arrays["Case00"]["mask"][1].astype(np.float32))
    assert set(labels.unique().tolist()) == {0.0, 1.0}
    assert labels.data_ptr() != slices.labels.data_ptr()  # the uint8 store itself is untouched


def test_slice_set_is_frozen(prepared):
    folder, _ = prepared
    slices = load_slices(folder, "meta", "mask", CPU)
    assert isinstance(slices, SliceSet)
    with pytest.raises(AttributeError):
        slices.images = slices.images  # type: ignore[misc]


def test_volumes_keep_the_original_reference_and_spacing(prepared):
    folder, arrays = prepared
    (volume,) = load_volumes(folder, "test", CPU)
    assert volume.case_id == "Case03"
    assert volume.images.shape == (2, 1, SIZE, SIZE)
    assert volume.images.dtype == torch.float32
    assert volume.images.device == CPU
    np.testing.assert_array_equal(volume.images.numpy(), arrays["Case03"]["image"])
    assert volume.mask_original.shape == (2, *ORIGINAL_HW)
    assert volume.mask_original.dtype == np.uint8
    np.testing.assert_array_equal(volume.mask_original, arrays["Case03"]["mask_original"])
    assert volume.spacing == SPACING
    assert all(type(value) is float for value in volume.spacing)


def test_volumes_come_in_manifest_order_on_the_device(prepared):
    folder, _ = prepared
    volumes = load_volumes(folder, "train", torch.device("meta"))
    assert [volume.case_id for volume in volumes] == ["Case00", "Case01"]
    assert [volume.images.shape[0] for volume in volumes] == [2, 3]
    assert all(volume.images.device.type == "meta" for volume in volumes)
    assert all(isinstance(volume.mask_original, np.ndarray) for volume in volumes)


def test_a_missing_label_key_names_the_case_file_and_the_key(prepared):
    folder, _ = prepared
    # meta cases carry no noisy levels: only train cases of a prepared dataset have them
    with pytest.raises(UserError, match=r"Case02\.npz: no 'noisy_L1' array"):
        load_slices(folder, "meta", "noisy_L1", CPU)
    with pytest.raises(UserError, match="no 'noisy_L9' array"):
        load_slices(folder, "train", "noisy_L9", CPU)


def test_an_empty_split_is_a_user_error(tmp_path):
    folder = tmp_path / "prepared"
    write_prepared(folder, {"train": ["Case00"], "meta": [], "test": ["Case03"]})
    with pytest.raises(UserError, match=r"manifest\.json: the 'meta' split is empty"):
        load_slices(folder, "meta", "mask", CPU)
    with pytest.raises(UserError, match="the 'meta' split is empty"):
        load_volumes(folder, "meta", CPU)


def test_a_split_missing_from_the_manifest_is_a_user_error(prepared):
    folder, _ = prepared
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["split"]["test"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="the 'test' split is empty or missing"):
        load_volumes(folder, "test", CPU)


def test_a_missing_folder_or_case_file_is_a_user_error(prepared, tmp_path):
    folder, _ = prepared
    with pytest.raises(UserError, match="no such folder"):
        load_slices(tmp_path / "nowhere", "train", "mask", CPU)
    with pytest.raises(UserError, match="no such folder"):
        load_volumes(tmp_path / "nowhere", "test", CPU)
    case_path(folder, "Case01").unlink()
    with pytest.raises(UserError, match=r"Case01\.npz: no such file"):
        load_slices(folder, "train", "mask", CPU)
