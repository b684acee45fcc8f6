"""Segment with a trained run: new volumes in their own geometry, and prepared cases for overlay figures.

``mlbseg predict RUN_DIR INPUT OUTPUT`` reads a volume (MetaImage or NIfTI) as (z, y, x), preprocesses it
exactly as ``mlbseg prepare`` preprocessed the run's training data (per image channel the percentile window
of the whole volume, the antialiased resize to the run's slice size:
:func:`mlbseg.prep.convert.volume_to_slices`), predicts every slice, resizes the **probabilities** back to
the original in-plane size, turns them into labels (binary: > 0.5; K > 2 labels: argmax) and writes a uint8
mask of label values 0..K-1 with the input's size, spacing, origin and direction
(:func:`~mlbseg.evaluation.write_mask_like`), the protocol of docs/evaluation.md §1.

The slice size, normalisation, image channels and label names come from the model's data record in the
checkpoint (``data``), so the prepared folder may be gone; a checkpoint without one falls back to the
manifest of the run's prepared dataset (:func:`mlbseg.seg.evaluate.model_data`).

Single-channel models read a 3-D volume, or channel ``channels[0]`` of a 4-D one. Models of several channels
read a folder in nnU-Net naming: ``<case>_<XXXX><ext>`` for each channel number XXXX of ``channels`` (e.g.
``case_0000.nii.gz`` and ``case_0001.nii.gz``), all on one voxel grid, giving ``OUTPUT/<case><ext>``.

A folder INPUT is all or nothing: the masks are written into a hidden staging sibling of OUTPUT that is
renamed into place only after the last one (:func:`predict_all`), so an unreadable volume anywhere in the
folder leaves no output and an existing OUTPUT as it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlbseg.engine.atomic import atomic_folder, check_target
from mlbseg.engine.seeding import resolve_device
from mlbseg.errors import UserError
from mlbseg.evaluation.export import write_mask_like
from mlbseg.evaluation.metrics import labels_from_probabilities
from mlbseg.evaluation.resample import probabilities_to_original
from mlbseg.prep.convert import volume_to_slices
from mlbseg.prep.discovery import MASK_TAG
from mlbseg.prep.manifest import load_case
from mlbseg.prep.normalize import NORMALIZATION
from mlbseg.prep.volumes import geometry_difference, read_header, read_volume, volume_suffix
from mlbseg.seg.config import SegConfig
from mlbseg.seg.evaluate import load_trained_model
from mlbseg.seg.inference import predict_probabilities

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net: <case>_<XXXX> before the extension
Job = tuple[tuple[Path, ...], Path]  # (the input's channel files in model order, the output mask)


@dataclass(frozen=True)
class Predictor:
    """A trained model with the preprocessing of its training data.

    Attributes:
        cfg: The run's config.
        model: The network in eval mode, on ``device``: [B, len(channels), size, size] -> [B, C_out, ...].
        device: Where slices are predicted.
        size: The prepared slice size (square) the model was trained on.
        channels: The image channels the model takes, in order (a 4-D volume's channel for one channel,
            the nnU-Net channel numbers of the input files for several).
        labels: Label names by value (0 = background); two for binary data.
    """

    cfg: SegConfig
    model: torch.nn.Module
    device: torch.device
    size: int
    channels: tuple[int, ...] = (0,)
    labels: tuple[str, ...] = ("background", "foreground")

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Probabilities [Z, C_out, Y, X] float32 in [0, 1] of an image [Z, Y, X] or [C, Z, Y, X].

        Each channel is normalised with its own percentile window and resized exactly as ``prepare`` does;
        C_out is 1 (foreground) for binary data and K (softmax over the labels) otherwise.
        """
        stack = image[None] if image.ndim == 3 else image  # [C, Z, Y, X]
        if len(stack) != len(self.channels):
            raise ValueError(f"the model takes {len(self.channels)} channels, the image has {len(stack)}")
        slices = np.stack([volume_to_slices(channel, self.size)[0] for channel in stack], axis=1)
        probs = predict_probabilities(self.model, torch.from_numpy(slices).to(self.device))
        return probabilities_to_original(probs.cpu().numpy(), stack.shape[2:])

    def mask(self, image: np.ndarray) -> np.ndarray:
        """The predicted label values [Z, Y, X] uint8 (0..K-1) of an image [Z, Y, X] or [C, Z, Y, X]."""
        labels = labels_from_probabilities(torch.from_numpy(self.probabilities(image)))
        return labels.numpy().astype(np.uint8)


def load_predictor(
    run_dir: Path, checkpoint: str = "final", prepared: Path | None = None, device: str = "auto"
) -> Predictor:
    """The run's model (``final``, ``last`` or a checkpoint path) and its data's preprocessing.

    Raises:
        UserError: No run folder, an unreadable checkpoint, a checkpoint without a data record whose
            prepared dataset (default: the run's ``data.prepared``) is missing, or a normalisation this
            version does not know.
    """
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    torch_device = resolve_device(device)
    cfg, model, state = load_trained_model(run_dir, checkpoint, torch_device, prepared)
    record = state["data"]
    if record.get("normalization") != NORMALIZATION:
        raise UserError(
            f"{run_dir} ({checkpoint}): normalisation {record.get('normalization')!r} is not "
            f"{NORMALIZATION!r}, the only one this mlbseg applies; prepare the data again with this version"
        )
    labels = record["labels"]
    return Predictor(
        cfg,
        model,
        torch_device,
        int(record["slice_size"]),
        tuple(int(channel) for channel in record["channels"]),
        tuple(sorted(labels, key=labels.__getitem__)),
    )


def read_channels(predictor: Predictor, paths: Sequence[Path]) -> np.ndarray:
    """One input's image: [Z, Y, X] from one file (4-D: channel ``channels[0]``), else [C, Z, Y, X].

    Raises:
        UserError: Unreadable files, or channel files on different voxel grids (shape, spacing, origin or
            direction), naming the file that differs from the first.
    """
    if len(paths) == 1:
        return read_volume(paths[0], predictor.channels[0])[0]
    first_size, first_geometry = read_header(paths[0])
    for path in paths[1:]:
        size, geometry = read_header(path)
        difference = "size" if size != first_size else geometry_difference(geometry, first_geometry)
        if difference is not None:
            raise UserError(
                f"{path}: {difference} differs from {paths[0].name}; "
                "the channels of a case must lie on one voxel grid"
            )
    return np.stack([read_volume(path)[0] for path in paths])


def predict_file(
    predictor: Predictor, image_paths: Sequence[Path], out_path: Path, *, overwrite: bool = False
) -> Path:
    """Segment one input (its channel files) and write the mask in its geometry (format from ``out_path``)."""
    image = read_channels(predictor, image_paths)
    return write_mask_like(predictor.mask(image), image_paths[0], out_path, overwrite=overwrite)


def _volumes_in(folder: Path) -> list[Path]:
    """Volume files of ``folder``, sorted, without hidden and ``_``-prefixed names."""
    return [
        path
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name[0] not in "._" and volume_suffix(path) is not None
    ]


def _stem(path: Path) -> str:
    return path.name[: -len(volume_suffix(path))]  # type: ignore[arg-type]


def _channel_list(channels: Sequence[int]) -> str:
    return ", ".join(f"{channel:04d}" for channel in channels)


def _channel_jobs(source: Path, target: Path, channels: Sequence[int]) -> list[Job]:
    """One job per case of a folder in nnU-Net naming, its files in the order of ``channels``."""
    cases: dict[tuple[str, str], dict[int, Path]] = {}
    for path in _volumes_in(source):
        match = CHANNEL_FILE.match(_stem(path))
        if match is None:
            raise UserError(
                f"{path}: not in nnU-Net naming <case>_<XXXX>; this model takes channels "
                f"{_channel_list(channels)} of each case"
            )
        case, channel, suffix = match["case"], int(match["channel"]), volume_suffix(path)
        if channel not in channels:
            raise UserError(
                f"{path}: channel {channel:04d} is not one the model takes ({_channel_list(channels)})"
            )
        cases.setdefault((case, suffix), {})[channel] = path  # type: ignore[arg-type]
    jobs = []
    for (case, suffix), files in cases.items():
        missing = [c for c in channels if c not in files]
        if missing:
            raise UserError(
                f"{source / f'{case}_{missing[0]:04d}{suffix}'}: missing; the model takes channels "
                f"{_channel_list(channels)} of each case"
            )
        jobs.append((tuple(files[c] for c in channels), target / f"{case}{suffix}"))
    if not jobs:
        raise UserError(f"{source}: no volumes (.mhd, .mha, .nii, .nii.gz) in this folder")
    return jobs


def _folder_outputs(source: Path, target: Path, overwrite: bool, channels: Sequence[int]) -> list[Job]:
    """Jobs for every case of the folder ``source``, the outputs in ``target``."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: INPUT is a folder, so OUTPUT must be a folder, but this is a file")
    real_source, real_target = source.resolve(), target.resolve()
    if real_target == real_source or real_target in real_source.parents:
        raise UserError(f"{target}: OUTPUT must not be the INPUT folder {source} or contain it")
    check_target(target, overwrite)
    if len(channels) > 1:
        return _channel_jobs(source, target, channels)
    volumes = [path for path in _volumes_in(source) if not _stem(path).endswith(MASK_TAG)]
    if not volumes:
        raise UserError(f"{source}: no volumes (.mhd, .mha, .nii, .nii.gz) in this folder")
    return [((path,), target / path.name) for path in volumes]


def plan_outputs(source: Path, target: Path, overwrite: bool, channels: Sequence[int] = (0,)) -> list[Job]:
    """Jobs (input channel files, output): one file, or every case of a folder into the folder ``target``.

    One channel: a file, or every volume of a folder (its hidden and ``_``-prefixed files and PROMISE12
    masks ``*_segmentation.*`` skipped). Several ``channels``: a folder in nnU-Net naming (module
    docstring), one output per case. A folder ``target`` is the output as a whole: it must not exist unless
    ``overwrite``, and then it is replaced (:func:`predict_all`).

    Raises:
        UserError: Missing input, an empty folder, a file as target of a folder, a target that is or holds
            the input, an existing output without ``overwrite``, and for several channels a single file, a
            file not in nnU-Net naming, a channel the model does not take or a missing channel file (all
            checked before anything is written).
    """
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if source.is_dir():
        return _folder_outputs(source, target, overwrite, channels)
    if len(channels) > 1:
        raise UserError(
            f"{source}: this model takes {len(channels)} channels; give a folder of <case>_<XXXX> files "
            f"(channels {_channel_list(channels)})"
        )
    if target.resolve() == source.resolve():
        raise UserError(f"{target}: OUTPUT would replace the input volume; choose another output")
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    return [((source,), target)]


def predict_all(
    predictor: Predictor,
    source: Path,
    target: Path,
    pairs: list[Job],
    *,
    overwrite: bool = False,
) -> None:
    """Write the masks of :func:`plan_outputs`: one file atomically, or a whole folder all or nothing.

    A folder's masks go into a hidden staging sibling of ``target``, renamed to ``target`` after the last
    one (:func:`~mlbseg.engine.atomic.atomic_folder`); on any error the staging folder is removed and an
    existing ``target`` is untouched. With ``overwrite`` an existing ``target`` is replaced only once the
    new one is complete.
    """
    if not source.is_dir():
        predict_file(predictor, *pairs[0], overwrite=overwrite)
        return
    with atomic_folder(target, overwrite) as staging:
        for images, out in pairs:
            predict_file(predictor, images, staging / out.name)


def case_layers(predictor: Predictor, prepared: Path, case_id: str, noisy_key: str | None) -> dict[str, Any]:
    """A prepared case at the prepared size for an overlay: image, reference, noisy label, prediction.

    Args:
        predictor: The run's model.
        prepared: The prepared dataset.
        case_id: A case of ``prepared``.
        noisy_key: ``noisy_L1``… to include the noisy label (train cases only), or None.

    Returns:
        ``{"image": float32 [S, h, w] (the first channel), "reference", "noisy" (or None), "prediction":
        uint8 [S, h, w] label values}``.
    """
    arrays = load_case(prepared, case_id)
    if noisy_key is not None and noisy_key not in arrays:
        raise UserError(
            f"{prepared / 'cases' / case_id}.npz: no '{noisy_key}'; noisy labels exist for train cases"
        )
    images = torch.from_numpy(arrays["image"]).to(predictor.device)
    labels = labels_from_probabilities(predict_probabilities(predictor.model, images)).cpu()
    return {
        "image": arrays["image"][:, 0],
        "reference": arrays["mask"],
        "noisy": arrays[noisy_key] if noisy_key is not None else None,
        "prediction": labels.numpy().astype(np.uint8),
    }
