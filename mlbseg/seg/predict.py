"""Segment with a trained run: new volumes in their own geometry, and prepared cases for overlay figures.

``mlbseg predict RUN_DIR INPUT OUTPUT`` reads a volume (MetaImage or NIfTI) as (z, y, x), preprocesses it
exactly as ``mlbseg prepare`` preprocessed the run's training data (the percentile window of the whole
volume, the antialiased resize to the run's slice size: :func:`mlbseg.prep.convert.volume_to_slices`),
predicts every slice, resizes the **probabilities** back to the original in-plane size, thresholds at 0.5
and writes a 0/1 uint8 mask with the input's size, spacing, origin and direction
(:func:`~mlbseg.evaluation.write_mask_like`), the protocol of docs/evaluation.md §1. The slice size, the image
channel and the normalisation come from the manifest of the prepared dataset the run was trained on.

A folder INPUT is all or nothing: the masks are written into a hidden staging sibling of OUTPUT that is
renamed into place only after the last one (:func:`predict_all`), so an unreadable volume anywhere in the
folder leaves no output and an existing OUTPUT as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlbseg.engine.atomic import atomic_folder, check_target
from mlbseg.engine.seeding import resolve_device
from mlbseg.errors import UserError
from mlbseg.evaluation.export import write_mask_like
from mlbseg.evaluation.resample import probabilities_to_original
from mlbseg.prep.convert import volume_to_slices
from mlbseg.prep.discovery import MASK_TAG
from mlbseg.prep.manifest import load_case, load_manifest
from mlbseg.prep.normalize import NORMALIZATION
from mlbseg.prep.volumes import read_volume, volume_suffix
from mlbseg.seg.config import SegConfig
from mlbseg.seg.evaluate import load_trained_model
from mlbseg.seg.inference import predict_probabilities

THRESHOLD = 0.5


@dataclass(frozen=True)
class Predictor:
    """A trained model with the preprocessing of its training data.

    Attributes:
        cfg: The run's config.
        model: The network in eval mode, on ``device``.
        device: Where slices are predicted.
        size: The prepared slice size (square) the model was trained on.
        channel: Image channel of 4-D inputs (MSD Task05: 0 = T2), as in the prepared dataset.
    """

    cfg: SegConfig
    model: torch.nn.Module
    device: torch.device
    size: int
    channel: int

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Foreground probabilities [Z, Y, X] float32 in [0, 1] of an image [Z, Y, X] (any real dtype)."""
        slices, _ = volume_to_slices(image, self.size)  # [Z, size, size], exactly as `prepare`
        probs = predict_probabilities(self.model, torch.from_numpy(slices).unsqueeze(1).to(self.device))
        return probabilities_to_original(probs.cpu().numpy(), image.shape[1:])

    def mask(self, image: np.ndarray) -> np.ndarray:
        """The predicted mask [Z, Y, X] uint8 0/1 of an image volume [Z, Y, X]."""
        return (self.probabilities(image) > THRESHOLD).astype(np.uint8)


def load_predictor(
    run_dir: Path, checkpoint: str = "final", prepared: Path | None = None, device: str = "auto"
) -> Predictor:
    """The run's model (``final``, ``last`` or a checkpoint path) and its data's preprocessing.

    Raises:
        UserError: No run folder, an unreadable checkpoint, the prepared dataset (default: the run's
            ``data.prepared``) missing, or a normalisation this version does not know.
    """
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    torch_device = resolve_device(device)
    cfg, model, _ = load_trained_model(run_dir, checkpoint, torch_device)
    folder = prepared or Path(cfg.data.prepared)
    try:
        manifest = load_manifest(folder)
    except UserError as err:
        raise UserError(
            f"{err} (the run's slice size and normalisation come from it; see --prepared)"
        ) from None
    if manifest.get("normalization") != NORMALIZATION:
        raise UserError(
            f"{folder / 'manifest.json'}: normalisation {manifest.get('normalization')!r} is not "
            f"{NORMALIZATION!r}, the only one this mlbseg applies; prepare the data again with this version"
        )
    return Predictor(cfg, model, torch_device, int(manifest["slice_size"]), int(manifest["channels"][0]))


def predict_file(predictor: Predictor, image_path: Path, out_path: Path, *, overwrite: bool = False) -> Path:
    """Segment one volume file and write the mask in its geometry (format from ``out_path``'s extension)."""
    image, _ = read_volume(image_path, predictor.channel)
    return write_mask_like(predictor.mask(image), image_path, out_path, overwrite=overwrite)


def _folder_outputs(source: Path, target: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) pairs for every volume of the folder ``source``, the outputs in ``target``."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: INPUT is a folder, so OUTPUT must be a folder, but this is a file")
    real_source, real_target = source.resolve(), target.resolve()
    if real_target == real_source or real_target in real_source.parents:
        raise UserError(f"{target}: OUTPUT must not be the INPUT folder {source} or contain it")
    check_target(target, overwrite)
    volumes = [
        path
        for path in sorted(source.iterdir())
        if path.is_file() and path.name[0] not in "._" and volume_suffix(path) is not None
    ]
    volumes = [path for path in volumes if not path.name[: -len(volume_suffix(path))].endswith(MASK_TAG)]
    if not volumes:
        raise UserError(f"{source}: no volumes (.mhd, .mha, .nii, .nii.gz) in this folder")
    return [(path, target / path.name) for path in volumes]


def plan_outputs(source: Path, target: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one file, or every volume of a folder into the folder ``target``.

    A folder's hidden and ``_``-prefixed files and PROMISE12 masks (``*_segmentation.*``) are skipped. A
    folder ``target`` is the output as a whole: it must not exist unless ``overwrite``, and then it is
    replaced (:func:`predict_all`).

    Raises:
        UserError: Missing input, an empty folder, a file as target of a folder, a target that is or holds
            the input, or an existing output without ``overwrite`` (all checked before anything is written).
    """
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if source.is_dir():
        return _folder_outputs(source, target, overwrite)
    if target.resolve() == source.resolve():
        raise UserError(f"{target}: OUTPUT would replace the input volume; choose another output")
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    return [(source, target)]


def predict_all(
    predictor: Predictor,
    source: Path,
    target: Path,
    pairs: list[tuple[Path, Path]],
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
        for image, out in pairs:
            predict_file(predictor, image, staging / out.name)


def case_layers(predictor: Predictor, prepared: Path, case_id: str, noisy_key: str | None) -> dict[str, Any]:
    """A prepared case at the prepared size for an overlay: image, reference, noisy label, prediction.

    Args:
        predictor: The run's model.
        prepared: The prepared dataset.
        case_id: A case of ``prepared``.
        noisy_key: ``noisy_L1``… to include the noisy label (train cases only), or None.

    Returns:
        ``{"image": float32 [S, h, w], "reference", "noisy" (or None), "prediction": uint8 [S, h, w]}``.
    """
    arrays = load_case(prepared, case_id)
    if noisy_key is not None and noisy_key not in arrays:
        raise UserError(
            f"{prepared / 'cases' / case_id}.npz: no '{noisy_key}'; noisy labels exist for train cases"
        )
    images = torch.from_numpy(arrays["image"]).to(predictor.device)
    probs = predict_probabilities(predictor.model, images).cpu().numpy()
    return {
        "image": arrays["image"][:, 0],
        "reference": arrays["mask"],
        "noisy": arrays[noisy_key] if noisy_key is not None else None,
        "prediction": (probs > THRESHOLD).astype(np.uint8),
    }
