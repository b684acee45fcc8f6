"""Figures of trained runs: gathers a run's arrays through its task and draws them with :mod:`mlbseg.figures`.

:mod:`mlbseg.figures` is a drawing layer (arrays in, file out) that knows no task; this module sits above the
tasks and feeds it: the Figure-5 overlays of prepared cases predicted by a segmentation run.
"""

from __future__ import annotations

from pathlib import Path

from mlbseg.errors import UserError
from mlbseg.figures.overlay import default_slices, overlay_figure
from mlbseg.seg.data import split_cases
from mlbseg.seg.predict import case_layers, load_predictor


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
    """Figure-5 overlays of prepared cases at the prepared size, one PNG per case.

    Test cases show the reference (red) and the prediction (cyan); train cases add the run's noisy label
    (yellow), as in the paper's Figure 5. With K > 2 labels each class has its colour and each layer its
    line style (:func:`~mlbseg.figures.overlay.draw_overlay`). Default cases: the first three of ``split``;
    default slices: :func:`~mlbseg.figures.overlay.default_slices`; default files:
    ``RUN_DIR/figures/overlay_<case>.png``.

    Raises:
        UserError: Unknown split or case, ``out`` with several cases, a slice out of range, an existing PNG
            without ``overwrite`` (checked before drawing).
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
        raise UserError("--out: names one PNG; choose one case with --cases, or leave --out out")
    targets = [out] if out is not None else [run_dir / "figures" / f"overlay_{case}.png" for case in chosen]
    for target in targets:
        if target.exists() and not overwrite:
            raise UserError(f"{target}: already exists; pass --overwrite to replace it")
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
