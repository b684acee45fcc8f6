"""Tiny raw datasets for the prep tests, written in the native formats."""

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from mlbseg.prep.phantom import make_phantom
from mlbseg.prep.resize import resize_mask
from mlbseg.prep.volumes import write_volume

GEOMETRY = {
    "spacing": [3.0, 0.5, 0.5],
    "origin": [-10.0, -20.0, 5.0],
    "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
}


def blob_mask(shape, seed):
    """A [S, H, W] uint8 0/1 mask: an ellipse that grows and shrinks over the middle slices."""
    rng = np.random.default_rng(seed)
    num, height, width = shape
    rows, cols = np.mgrid[0:height, 0:width]
    mask = np.zeros(shape, dtype=np.uint8)
    for k in range(1, num - 1):
        scale = np.sin(np.pi * k / (num - 1))
        ry, rx = scale * height * rng.uniform(0.2, 0.3), scale * width * rng.uniform(0.2, 0.3)
        mask[k] = ((rows - height / 2) / ry) ** 2 + ((cols - width / 2) / rx) ** 2 <= 1
    return mask


def write_pairs(folder: Path, count=3, shape=(6, 24, 24), suffix=".mhd", geometry=GEOMETRY):
    """``Case00{suffix}`` + ``Case00_segmentation{suffix}`` …: int16 images, uint8 masks."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        mask = blob_mask(shape, index)
        image = (np.random.default_rng(index).normal(200, 20, shape) + 300.0 * mask).astype(np.int16)
        write_volume(folder / f"Case{index:02d}{suffix}", image, geometry)
        write_volume(folder / f"Case{index:02d}_segmentation{suffix}", mask, geometry)
    return folder


def zones_mask(shape, seed):
    """A [S, H, W] uint8 label map with 1 (a shell) around 2 (a core), from :func:`blob_mask`."""
    gland = blob_mask(shape, seed)
    core = ndimage.binary_erosion(gland, np.ones((1, 5, 5), bool))
    return (gland + core).astype(np.uint8)


def write_nnunet(root: Path, count=4, shape=(6, 24, 24), *, ending=".nii.gz", labels=None, channels=None):
    """An nnU-Net v2 raw dataset: dataset.json, imagesTr/case_NNN_000{0,1}, labelsTr/case_NNN (0/1/2)."""
    labels = labels or {"background": 0, "PZ": 1, "TZ": 2}
    channels = channels or {"0": "T2", "1": "ADC"}
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        zones = zones_mask(shape, index)
        rng = np.random.default_rng(index)
        for channel in range(len(channels)):
            contrast = (300.0, 120.0) if channel == 0 else (-50.0, 80.0)
            image = rng.normal(200, 20, shape) + contrast[0] * (zones == 1) + contrast[1] * (zones == 2)
            write_volume(
                root / "imagesTr" / f"case_{index:03d}_{channel:04d}{ending}",
                image.astype(np.float32),
                GEOMETRY,
            )
        write_volume(root / "labelsTr" / f"case_{index:03d}{ending}", zones, GEOMETRY)
    spec = {"channel_names": channels, "labels": labels, "numTraining": count, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def phantom_family(count, size):
    """Gland masks ({id: [S, size, size] uint8 0/1}) of the synthetic phantoms, resized like prepare does."""
    rng = np.random.default_rng(7)
    return {
        f"Case{i:02d}": resize_mask(make_phantom(rng, (48, 96), (10, 24)).mask, size) for i in range(count)
    }
