"""Containers shared by the classification datasets: in-memory and on-disk datasets, and the bundle.

Every dataset item is ``(image, label, index)``: the transformed image (float tensor [3, H, W]), the label the
model is trained against (noisy for the training set, clean for meta and test) as an int, and the item's index
in its dataset, so a trainer can look up per-sample clean labels or record per-sample weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from mlbseg.errors import UserError

Transform = Callable[[Image.Image], torch.Tensor]


class ArrayDataset(Dataset):
    """Images held in memory as one uint8 array (CIFAR).

    Attributes:
        images: uint8 [N, H, W, 3] (HWC, RGB), the raw pixels; a trainer may move them to the GPU itself.
        labels: int64 [N].
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index]), int(index)


class ImageListDataset(Dataset):
    """Images read from files named relative to a root folder (Clothing1M, ISIC 2019).

    Attributes:
        root: Folder the file names are relative to.
        files: Relative file names, object or str array [N].
        labels: int64 [N].
    """

    def __init__(self, root: Path, files: np.ndarray, labels: np.ndarray, transform: Transform) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.root = Path(root)
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path = self.root / str(self.files[index])
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except FileNotFoundError as err:
            raise UserError(f"{path} not found: the image lists name it; restore the file") from err
        except OSError as err:
            raise UserError(f"{path} is not a readable image ({err}); replace the file") from err
        return self.transform(rgb), int(self.labels[index]), int(index)


@dataclass(frozen=True)
class ClassificationData:
    """Everything a classification run needs from a dataset.

    Attributes:
        train: Training set; items carry the noisy labels.
        meta: Clean meta set (clean labels), used to steer the sample weights.
        test: Clean test set.
        num_classes: K.
        noisy_labels: int64 [len(train)], the training labels (= ``train.labels``).
        clean_labels: int64 [len(train)], the true training labels; -1 where unknown (Clothing1M images
            outside its clean subset).
        noise_rate: Realised fraction of changed labels over the samples whose clean label is known; None
            if there are none.
        train_sampler: Per-epoch sampler for ``train`` (Clothing1M's balanced subsample; call
            ``set_epoch(epoch)`` before each epoch), or None for plain shuffling.
    """

    train: Dataset
    meta: Dataset
    test: Dataset
    num_classes: int
    noisy_labels: np.ndarray
    clean_labels: np.ndarray
    noise_rate: float | None
    train_sampler: Sampler | None = None


def realised_rate(noisy: np.ndarray, clean: np.ndarray) -> float | None:
    """Fraction of ``noisy != clean`` over entries with a known clean label (>= 0); None if there are none."""
    known = clean >= 0
    return float(np.mean(noisy[known] != clean[known])) if known.any() else None
