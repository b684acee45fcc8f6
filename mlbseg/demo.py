"""``mlbseg demo``: the whole path on built-in phantoms in one command (README "Results").

synth → prepare → train the baseline, the ``views_meta`` control and MLB-Seg at L1 → evaluate → figures →
the Dice table and the paired statistics, all in ``OUT``::

    OUT/demo.json                 the demo's data options (a rerun must match them)
    OUT/raw/                      phantoms, PROMISE12 layout (``mlbseg synth``)
    OUT/split.yaml, OUT/prepared/ the case split and the prepared dataset (``mlbseg prepare``)
    OUT/<method>-L1-seed<k>/      one run folder per method and seed (``mlbseg train`` + ``evaluate``)
    OUT/figures/                  overlay_<method>.png (Figure 5), methods.png (a test case, one row per
                                  method), compare_dice.png (per-case Dice), weights.png (α/β), curves.png
    OUT/table.{md,csv,json}       Dice and HD95, mean ± std over the seeds, in ``mlbseg repeat``'s format
    OUT/cases.csv, OUT/stats.*    per-case results; MLB-Seg against the baseline and against views_meta

``views_meta`` has MLB-Seg's five views, consistency, EMA teacher and clean meta-batch step with uniform
weights, so MLB-Seg minus ``views_meta`` is the meta-weighting's own share (docs/evaluation.md §4).
The training settings are ``mlbseg/demo.yaml`` (each run folder keeps its resolved ``config.yaml``);
``overrides`` (``--set``) change them for every run. Each stage skips what an earlier call completed:
folders and files are written atomically, finished runs are reused and interrupted ones resume from their
last epoch, so an interrupted demo (SIGINT/SIGTERM stop the stage in progress) continues where it stopped.
``overwrite`` builds the new demo where the earlier one stood (its run configs and tables name ``OUT``)
while the earlier one waits in a hidden sibling: it is deleted once the new demo is complete and put back
if the new one fails or is interrupted.

The phantoms use a prostate-centred 90–110 mm field of view, so at 48×48 the gland is large enough for a
short CPU run to learn it; everything else is the PROMISE12 path. ``zones`` (``mlbseg demo --zones``) is the
three-class variant: phantoms with a peripheral and a transition zone as an nnU-Net v2 raw dataset with two
channels (T2, ADC), prepared with both channels and the zones kept as classes, so the same path runs with
K = 3 labels, softmax cross-entropy and per-class results.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from mlbseg.engine.atomic import write_text_atomic
from mlbseg.engine.signals import RESTART, Interrupted
from mlbseg.errors import UserError
from mlbseg.figures.compare import compare_figure
from mlbseg.figures.curves import curves_figure, read_metrics_csv
from mlbseg.figures.weights import weight_map_figure
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.synth import case_ids, write_phantoms
from mlbseg.repeat import plan
from mlbseg.repeat.cases import write_case_results
from mlbseg.repeat.table import FINISHED, SKIPPED, RunRecord, aggregate, rich_table, write_tables
from mlbseg.repeat.tasks import get_task
from mlbseg.run_figures import repeat_case_values, write_method_overlays, write_overlays
from mlbseg.seg.config import check_zoom_pads
from mlbseg.seg.data import split_cases
from mlbseg.seg.weight_maps import weight_map_rows

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
METHODS = ("baseline", "views_meta", "mlbseg")
NOISE = "L1"
SETTINGS_NAME = "demo.json"
CONTINUE_HINT = f"{RESTART} (finished stages are reused, an interrupted run resumes)"
OWN_KEYS = {
    "data.prepared": "OUT/prepared",
    "data.noise": NOISE,
    "method.name": "baseline, views_meta and mlbseg",
    "train.seed": "use --seeds",
}


@dataclass(frozen=True)
class DemoData:
    """What the phantoms and the prepared dataset are made from (``OUT/demo.json``)."""

    cases: int = 24
    size: int = 48  # prepared slice size
    fov_mm: tuple[float, float] = (90.0, 110.0)
    in_plane: tuple[int, int] = (256, 320)
    seed: int = 0  # phantoms, split and noisy masks; the training seeds are separate
    zones: bool = False  # two structures (PZ, TZ) and two channels (T2, ADC): K = 3 labels

    def split(self) -> dict[str, list[str]]:
        """Cases 2/3 train, 1/12 meta (clean), 1/4 test, at least one each: 16/2/6 of 24.

        Example:
            >>> {name: len(ids) for name, ids in DemoData(cases=8).split().items()}
            {'train': 5, 'meta': 1, 'test': 2}
        """
        if self.cases < 3:
            raise UserError(f"--cases {self.cases}: the demo needs at least 3 (train, meta, test)")
        ids = case_ids(self.cases, "case_", 3) if self.zones else case_ids(self.cases)
        meta, test = max(1, round(self.cases / 12)), max(1, round(self.cases / 4))
        train = self.cases - meta - test
        return {"train": ids[:train], "meta": ids[train : train + meta], "test": ids[train + meta :]}


@dataclass(frozen=True)
class DemoResult:
    """The demo's folder, its table rows (as in ``table.json``) and the files it drew."""

    out: Path
    rows: list[dict[str, Any]]
    figures: list[Path]
    seconds: float


def run_demo(
    out: Path,
    *,
    seeds: Sequence[int] = (0,),
    data: DemoData | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    jobs: int = 1,
    console: Console | None = None,
) -> DemoResult:
    """Run (or continue) the demo in ``out``; see the module docstring.

    Args:
        out: The demo folder; created, continued, or (``overwrite``) replaced if it is a demo folder.
        seeds: Training seeds; one run of each of :data:`METHODS` each.
        data: Phantom and preparation options (default: :class:`DemoData`).
        overrides: ``--set key=value`` items for every run's config.
        overwrite: Start afresh; an earlier demo in ``out`` is replaced once the new one is complete.
        jobs: Worker processes for synth and prepare.
        console: Where progress goes.

    Raises:
        UserError: ``out`` is not a demo folder or was made with other data options; a bad override.
    """
    console = console or Console()
    data = data or DemoData()
    task = get_task("seg")
    started = time.perf_counter()
    # every config checked before any write
    overrides = _run_overrides(out, data, seeds=seeds, overrides=overrides, task=task)
    try:
        with _claimed(out, data, overwrite, console):
            rows, figures = _run_stages(
                out, data, seeds=seeds, overrides=overrides, jobs=jobs, console=console
            )
    except Interrupted as err:
        if not overwrite:  # a rerun of --overwrite starts afresh again
            err.hint = CONTINUE_HINT
        raise
    seconds = time.perf_counter() - started
    console.print(f"demo finished in {seconds / 60:.1f} min; table: {out / 'table.md'}")
    return DemoResult(out, rows, figures, seconds)


def _run_stages(
    out: Path,
    data: DemoData,
    *,
    seeds: Sequence[int],
    overrides: Sequence[str],
    jobs: int,
    console: Console,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Every stage in the claimed ``out``; return the table rows and the figures."""
    task = get_task("seg")
    stage = _Stages(console, 3 + len(seeds) * len(METHODS))
    stage.begin(f"{out / 'raw'}: {data.cases} phantoms")
    _synth(out, data, jobs)
    stage.begin(f"{out / 'prepared'}: {data.size}×{data.size} slices, L1–L3 noisy masks")
    _prepare(out, data, jobs)

    records = []  # the plan refuses a run folder that holds a different run
    for spec in plan.plan_runs(
        task, DEMO_CONFIG, seeds=seeds, noises=[NOISE], methods=METHODS, overrides=overrides, out=out
    ):
        stage.begin(f"{spec.run_dir}: {_label(spec.method)}, train and evaluate")
        records.append(_train_and_evaluate(task, spec, console))

    stage.begin(f"{out / 'figures'}: overlays, per-case Dice, α/β maps, curves; the table and statistics")
    rows = _table(out, task, records)
    first = seeds[0]
    figures = _figures(out, {method: out / f"{method}-{NOISE}-seed{first}" for method in METHODS})
    console.print(rich_table(task, rows, _title(out, records)))
    console.print(escape(f"paired statistics (MLB-Seg − baseline, MLB-Seg − views_meta): {out / 'stats.md'}"))
    return rows, figures


class _Stages:
    """Numbered stage headers: ``[3/7] ...``."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.done = console, total, 0

    def begin(self, text: str) -> None:
        self.done += 1
        self.console.rule(escape(f"[{self.done}/{self.total}] {text}"), align="left")


def _label(method: str) -> str:
    return {
        "baseline": "baseline (noisy labels)",
        "views_meta": "views_meta (MLB-Seg with uniform weights)",
        "mlbseg": "MLB-Seg",
    }[method]


def _run_overrides(
    out: Path, data: DemoData, *, seeds: Sequence[int], overrides: Sequence[str], task: Any
) -> list[str]:
    """The user's ``--set`` items plus the demo's data folder, validated for every run of the demo."""
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    data.split()  # enough cases
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in OWN_KEYS:
            raise UserError(f"--set {item!r}: the demo sets {key} itself ({OWN_KEYS[key]})")
    items = [*overrides, f"data.prepared={(out / 'prepared').absolute()}"]
    for seed in seeds:
        for method in METHODS:
            axes = [f"data.noise={NOISE}", f"method.name={method}", f"train.seed={seed}"]
            check_zoom_pads(task.load(DEMO_CONFIG, [*items, *axes]), data.size)
    return items


@contextmanager
def _claimed(out: Path, data: DemoData, overwrite: bool, console: Console) -> Iterator[None]:
    """Make ``out`` this demo's folder for the block (with its ``demo.json``).

    ``out`` is new, an earlier demo with the same data options (continued), or, with ``overwrite``, an
    earlier demo that waits aside until the block succeeds (:func:`_replacing`).
    """
    if _earlier_demo(out, data, overwrite):
        with _replacing(out, console):
            _write_settings(out, data)
            yield
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_settings(out, data)
    yield


def _settings(data: DemoData) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(data)))  # tuples as lists, as read back


def _write_settings(out: Path, data: DemoData) -> None:
    write_text_atomic(out / SETTINGS_NAME, json.dumps(_settings(data), indent=2) + "\n")


def _earlier_demo(out: Path, data: DemoData, overwrite: bool) -> bool:
    """Whether ``out`` holds a demo that ``overwrite`` replaces; UserError if ``out`` may not be used."""
    settings = out / SETTINGS_NAME
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not settings.is_file():
        raise UserError(f"{out}: exists and is not a demo folder (no {SETTINGS_NAME}); choose another --out")
    if overwrite:
        return True
    try:
        earlier = json.loads(settings.read_text())
    except (OSError, ValueError):
        earlier = None
    if earlier != _settings(data):
        raise UserError(
            f"{settings}: this demo folder was made with other options ({earlier}); "
            "pass --overwrite to start afresh or choose another --out"
        )
    return False


@contextmanager
def _replacing(out: Path, console: Console) -> Iterator[None]:
    """Move the demo in ``out`` aside and give the block an empty ``out``.

    The old demo is deleted once the block succeeds, or put back in place of the new one's remains if the
    block fails (SIGINT/SIGTERM included): the runs' configs and the tables name ``out`` itself, so the
    new demo cannot be built in a staging folder and renamed.
    """
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, aside / out.name)
    console.print(escape(f"the earlier demo waits in {aside / out.name} until the new one is complete"))
    try:
        out.mkdir()
        yield
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        os.rename(aside / out.name, out)
        aside.rmdir()
        raise
    shutil.rmtree(aside)


def _synth(out: Path, data: DemoData, jobs: int) -> None:
    """The phantoms of ``data`` in ``out/raw`` (skipped when an earlier call wrote them)."""
    if (out / "raw").is_dir():  # written atomically: present means complete
        return
    write_phantoms(
        out / "raw",
        cases=data.cases,
        seed=data.seed,
        in_plane=data.in_plane,
        fov=data.fov_mm,
        jobs=jobs,
        zones=data.zones,
    )


def _prepare(out: Path, data: DemoData, jobs: int) -> None:
    """``out/split.yaml`` and the prepared dataset in ``out/prepared`` (skipped when already written)."""
    split_file = out / "split.yaml"
    write_text_atomic(split_file, yaml.safe_dump(data.split(), default_flow_style=None))
    if (out / "prepared").is_dir():  # written atomically: present means complete
        return
    prepare_dataset(
        out / "raw",
        out / "prepared",
        size=data.size,
        split=str(split_file),
        seed=data.seed,
        channels=(0, 1) if data.zones else (0,),
        jobs=jobs,
    )


def _train_and_evaluate(task: Any, spec: Any, console: Console) -> Any:
    """Train (or continue, or reuse) one planned run and evaluate it; return its table record."""
    run_dir, started = spec.run_dir, time.perf_counter()
    if spec.state == plan.FRESH and run_dir.exists():
        shutil.rmtree(run_dir)  # an attempt stopped before its first checkpoint: nothing to keep
    if spec.state in (plan.FRESH, plan.RESUME):
        task.train(task.load(DEMO_CONFIG, spec.overrides), run_dir, spec.state == plan.RESUME)
    if spec.state == plan.FINISHED:
        console.print(escape(f"finished earlier; reusing {run_dir / plan.SUMMARY_NAME}"))
        summary = json.loads((run_dir / plan.SUMMARY_NAME).read_text())
    else:
        summary = task.evaluate(run_dir)
    dice = summary["mean"]["dice"]
    cases = len(summary["cases"])
    console.print(f"test Dice {100 * dice['mean']:.2f} ± {100 * dice['std']:.2f} % over {cases} cases")
    finished_earlier = spec.state == plan.FINISHED
    seconds = None if finished_earlier else time.perf_counter() - started
    return RunRecord(
        spec.method,
        spec.noise,
        spec.seed,
        spec.name,
        SKIPPED if finished_earlier else FINISHED,
        task.values(summary),
        run_dir,  # the demo's runs print to the terminal; the record points at the run folder
        seconds,
    )


def _figures(out: Path, runs: dict[str, Path]) -> list[Path]:
    """The demo's figures from the first seed's runs (the per-case Dice from every seed's).

    Figure-5 overlays of every method on one training case, the methods on the first test case at original
    resolution, the per-case test Dice, MLB-Seg's α/β maps and the runs' curves.
    """
    folder = out / "figures"
    case = split_cases(out / "prepared", "train")[0]
    paths = []
    for method, run_dir in runs.items():
        target = folder / f"overlay_{method}.png"
        paths += write_overlays(run_dir, cases=[case], slices=[], split="train", out=target, overwrite=True)
    names = [_label(method) for method in runs]
    paths.append(
        write_method_overlays(list(runs.values()), folder / "methods.png", names=names, overwrite=True)
    )
    values = repeat_case_values(out, "dice")
    paths.append(compare_figure(values, folder / "compare_dice.png", "dice", overwrite=True))
    rows = weight_map_rows(runs["mlbseg"], checkpoint="last", count=4, seed=0)
    paths.append(weight_map_figure(rows, folder / "weights.png", overwrite=True))
    metrics = {
        _label(method): [read_metrics_csv(run_dir / "metrics.csv")] for method, run_dir in runs.items()
    }
    chosen = ["train_dice_reference", "meta_dice"]  # the methods' losses are not comparable
    paths.append(curves_figure(metrics, folder / "curves.png", chosen, overwrite=True))
    return paths


def _title(out: Path, records: list[Any]) -> str:
    seeds = sorted({record.seed for record in records})
    return f"mlbseg demo in {out}: {NOISE} noise, seeds {', '.join(map(str, seeds))}"


def _table(out: Path, task: Any, records: list[Any]) -> list[dict[str, Any]]:
    """Write ``OUT/table.{md,csv,json}`` in the repeat format, ``cases.csv`` and ``stats.{md,json}``."""
    rows = aggregate(task, records)
    write_tables(out, task, rows=rows, records=records, title=_title(out, records))
    write_case_results(out, records)
    return rows
