"""Tiny raw datasets for the prep tests, written in the native formats."""

from pathlib import Path

import numpy as np

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
