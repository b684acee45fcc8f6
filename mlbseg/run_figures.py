"""Figures of trained runs: gathers a run's arrays through its task and draws them with :mod:`mlbseg.figures`.

:mod:`mlbseg.figures` is a drawing layer (arrays in, file out) that knows no task; this module sits above the
tasks and feeds it: the Figure-5 overlays of prepared cases predicted by a segmentation run, the overlays of
several runs on one test case at original resolution, and the per-case results of a repeat's runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from mlbseg.engine.seeding import resolve_device
from mlbseg.errors import UserError
from mlbseg.figures import check_figure_path, save_figure
from mlbseg.figures.overlay import default_slices, draw_method_overlays, overlay_figure
from mlbseg.prep.manifest import label_names, load_manifest
from mlbseg.seg.config import METHODS
from mlbseg.seg.data import load_volumes, split_cases
from mlbseg.seg.evaluate import load_trained_model
from mlbseg.seg.inference import image_at_original_resolution, labels_at_original_resolution
from mlbseg.seg.predict import case_layers, load_predictor

SUMMARY = "summary.json"


def write_method_overlays(
    run_dirs: Sequence[Path],
    out: Path,
    *,
    names: Sequence[str] = (),
    case: str | None = None,
    slices: Sequence[int] = (),
    checkpoint: str = "final",
    device: str = "auto",
    overwrite: bool = False,
) -> Path:
    """One row per run on one test case at original resolution, as evaluated (docs/evaluation.md §1).

    Contours of ``mask_original`` and of each run's prediction resampled to the original grid and turned
    into labels exactly as ``evaluate`` does; the grey image is the prepared slice resized back to that grid
    (its first channel). The runs must share their prepared dataset, so every row shows the same slices.

    Args:
        run_dirs: Run folders, drawn top to bottom.
        out: The figure (PNG, PDF or SVG).
        names: One row name per run; default each run's ``method.name`` (the folder name if two repeat).
        case: A test case; default the first.
        slices: Slice indices; default apex, mid-gland and base of the reference.
        checkpoint: ``final``, ``last`` or a checkpoint path, for every run.
        device: Where the networks run.
        overwrite: Replace an existing ``out``.

    Raises:
        UserError: No runs, names not one per run, runs on different prepared datasets, an unknown case or
            slice, a bad ``out`` (all before any prediction).
    """
    check_figure_path(out, overwrite=overwrite)
    if not run_dirs or (names and len(names) != len(run_dirs)):
        raise UserError(f"--label: {len(names)} name(s) for {len(run_dirs)} run(s); give one per run")
    torch_device = resolve_device(device)
    runs = [load_trained_model(run_dir, checkpoint, torch_device) for run_dir in run_dirs]
    prepared = {Path(cfg.data.prepared) for cfg, _, _ in runs}
    if len(prepared) != 1:
        raise UserError(
            f"the runs were trained on different prepared datasets ({sorted(map(str, prepared))})"
        )
    (folder,) = prepared
    volumes = {volume.case_id: volume for volume in load_volumes(folder, "test", torch_device)}
    chosen = case or next(iter(volumes))
    if chosen not in volumes:
        raise UserError(f"--case: {chosen} is not a test case of {folder}: {sorted(volumes)}")
    volume = volumes[chosen]
    shown = list(slices) or default_slices(volume.mask_original > 0)
    if not all(0 <= k < len(volume.mask_original) for k in shown):
        raise UserError(
            f"--slices: {list(shown)} out of range for {chosen} (0..{len(volume.mask_original) - 1})"
        )
    methods = [cfg.method.name for cfg, _, _ in runs]
    rows = list(names) or (methods if len(set(methods)) == len(methods) else [path.name for path in run_dirs])
    predictions = {}
    for row, (_, model, _) in zip(rows, runs, strict=True):
        predictions[row] = labels_at_original_resolution(model, volume)
    image = image_at_original_resolution(volume)
    classes = label_names(load_manifest(folder))[1:]
    figure = draw_method_overlays(
        image,
        volume.mask_original,
        predictions,
        slices=shown,
        class_names=classes if len(classes) > 1 else None,
    )
    figure.suptitle(f"{chosen} (test), original resolution", fontsize=10)
    return save_figure(figure, out, overwrite=overwrite)


def repeat_case_values(repeat_dir: Path, metric: str) -> dict[str, dict[str, list[float]]]:
    """``{noise: {method: [metric per (seed, case)]}}`` from the ``summary.json`` of a repeat's runs.

    Only summaries of the ``final`` checkpoint count (those ``mlbseg repeat`` reports); a case's missing
    value (JSON null: HD95 of an empty prediction) is infinite. Methods are ordered as ``METHODS`` lists
    them (baseline first), noise levels by name.

    Raises:
        UserError: ``repeat_dir`` is not a folder or holds no segmentation run with a final summary.
    """
    if not repeat_dir.is_dir():
        raise UserError(f"{repeat_dir}: no such folder; give the --out folder of `mlbseg repeat`")
    found: dict[str, dict[str, list[float]]] = {}
    for path in sorted(repeat_dir.glob(f"*/{SUMMARY}")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            if summary.get("checkpoint") != "final" or summary.get("method") not in METHODS:
                continue
            values = [case[metric] for case in summary["cases"].values()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path}: not a segmentation summary; run `mlbseg evaluate` again") from None
        runs = found.setdefault(str(summary["noise"]), {}).setdefault(summary["method"], [])
        runs.extend(math.inf if value is None else float(value) for value in values)
    if not found:
        raise UserError(f"{repeat_dir}: no segmentation run with a final {SUMMARY}; is it a repeat's folder?")
    order = list(METHODS)
    return {
        noise: {method: found[noise][method] for method in sorted(found[noise], key=order.index)}
        for noise in sorted(found)
    }


def write_overlays(
    run_dir: Path,
    *,
    cases: list[str],
    slices: list[int],
    split: str = "test",
    checkpoint: str = "final",
    out: Path | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> list[Path]:
    """Figure-5 overlays of prepared cases at the prepared size, one figure per case.

    Test cases show the reference (red) and the prediction (cyan); train cases add the run's noisy label
    (yellow), as in the paper's Figure 5. With K > 2 labels each class has its colour and each layer its
    line style (:func:`~mlbseg.figures.overlay.draw_overlay`). Default cases: the first three of ``split``;
    default slices: :func:`~mlbseg.figures.overlay.default_slices`; default files:
    ``RUN_DIR/figures/overlay_<case>.png``.

    Raises:
        UserError: Unknown split or case, ``out`` with several cases or another extension than PNG, PDF or
            SVG, a slice out of range, an existing figure without ``overwrite`` (checked before drawing).
    """
    if split not in ("train", "test"):
        raise UserError(f"--split: {split!r} is not a split to draw; use test or train")
    predictor = load_predictor(run_dir, checkpoint, None, device)
    prepared = Path(predictor.cfg.data.prepared)
    available = split_cases(prepared, split)
    chosen = list(cases) or available[:3]
    unknown = [case for case in chosen if case not in available]
    if unknown:
        raise UserError(f"--cases: {', '.join(unknown)} not in the {split} split of {prepared}: {available}")
    if out is not None and len(chosen) != 1:
        raise UserError("--out: names one figure; choose one case with --cases, or leave --out out")
    targets = [out] if out is not None else [run_dir / "figures" / f"overlay_{case}.png" for case in chosen]
    for target in targets:
        check_figure_path(target, overwrite=overwrite)
    noise = predictor.cfg.data.noise
    noisy_key = f"noisy_{noise}" if split == "train" and noise != "clean" else None
    for case, target in zip(chosen, targets, strict=True):
        layers = case_layers(predictor, prepared, case, noisy_key)
        shown = slices or default_slices(layers["reference"] > 0)
        bad = [k for k in shown if not 0 <= k < len(layers["image"])]
        if bad:
            raise UserError(f"--slices: {bad} out of range for {case} (slices 0..{len(layers['image']) - 1})")
        titles = [f"{case} z={k}" for k in shown]
        overlay_figure(
            layers["image"],
            layers["reference"],
            layers["noisy"],
            layers["prediction"],
            out_path=target,
            slices=shown,
            titles=titles,
            overwrite=overwrite,
            class_names=predictor.labels[1:],
        )
    return targets
