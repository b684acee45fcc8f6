"""`mlbseg.repeat` without training: arguments, run planning, the process scheduler and its stop, tables."""

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from mlbseg.engine.lock import run_lock
from mlbseg.engine.run_dir import save_config
from mlbseg.engine.signals import Interrupted
from mlbseg.errors import UserError
from mlbseg.repeat import parse_list, parse_seeds, repeat, scheduler
from mlbseg.repeat.plan import EVALUATE, FINISHED, FRESH, RESUME, plan_runs
from mlbseg.repeat.scheduler import Job, child_env, cpu_count, make_slots, run_jobs
from mlbseg.repeat.table import RunRecord, aggregate, csv_text, markdown
from mlbseg.repeat.tasks import detect_task, get_task

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
SEG = get_task("seg")


@pytest.fixture
def prepared(tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format_version": 2}))
    return folder


# --- arguments ------------------------------------------------------------------------------------------


def test_seeds_accept_ranges_lists_and_repeats():
    assert parse_seeds(["0..4"]) == [0, 1, 2, 3, 4]
    assert parse_seeds(["3", "1,2", "2..3"]) == [3, 1, 2]


@pytest.mark.parametrize("bad", ["x", "3..1", "-1", "1,,2", "0..b"])
def test_bad_seeds_are_user_errors(bad):
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds([bad])


def test_lists_split_commas_and_drop_duplicates():
    assert parse_list(["baseline,mlbseg", "baseline"], "--methods") == ["baseline", "mlbseg"]


# --- planning -------------------------------------------------------------------------------------------


def _plan(prepared, out, **kwargs):
    args = {
        "seeds": [0, 1],
        "noises": ["L1"],
        "methods": ["baseline"],
        "overrides": [f"data.prepared={prepared}"],
    }
    args.update(kwargs)
    return plan_runs(
        SEG,
        SMOKE,
        seeds=args["seeds"],
        noises=args["noises"],
        methods=args["methods"],
        overrides=args["overrides"],
        out=out,
    )


def _fake_run(spec, files):
    """A run folder with the right config.yaml and the given (empty) files."""
    spec.run_dir.joinpath("checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(SEG.load(SMOKE, spec.overrides), spec.run_dir / "config.yaml")
    for name in files:
        (spec.run_dir / name).write_text("{}")


def test_plan_lists_every_combination_seed_major(prepared, tmp_path):
    specs = _plan(
        prepared, tmp_path / "out", seeds=[0, 1], noises=["L1", "L2"], methods=["baseline", "mlbseg"]
    )
    assert [spec.name for spec in specs[:4]] == [
        "baseline-L1-seed0",
        "mlbseg-L1-seed0",
        "baseline-L2-seed0",
        "mlbseg-L2-seed0",
    ]
    assert len(specs) == 8
    assert {spec.state for spec in specs} == {FRESH}
    last = specs[-1]
    cfg = SEG.load(SMOKE, last.overrides)
    assert (cfg.method.name, cfg.data.noise, cfg.train.seed) == ("mlbseg", "L2", 1)
    assert last.run_dir == tmp_path / "out" / "mlbseg-L2-seed1"


def _summary(spec, checkpoint):
    (spec.run_dir / "summary.json").write_text(json.dumps({"checkpoint": checkpoint, "mean": {}}))


def test_plan_reads_the_state_of_existing_run_folders(prepared, tmp_path):
    out = tmp_path / "out"
    seeds = [0, 1, 2, 3, 4]
    specs = _plan(prepared, out, seeds=seeds)
    _fake_run(specs[0], ["checkpoints/final.pt"])
    _summary(specs[0], "final")
    _fake_run(specs[1], ["checkpoints/final.pt", "checkpoints/last.pt"])
    _fake_run(specs[2], ["checkpoints/last.pt", "metrics.csv"])
    _fake_run(specs[3], ["log.txt"])  # died before its first checkpoint
    _fake_run(specs[4], ["checkpoints/final.pt"])
    _summary(specs[4], "last")  # `mlbseg evaluate --checkpoint last` replaced final's summary
    assert [spec.state for spec in _plan(prepared, out, seeds=seeds)] == [
        FINISHED,
        EVALUATE,
        RESUME,
        FRESH,
        EVALUATE,
    ]


def test_plan_refuses_a_folder_holding_another_experiment(prepared, tmp_path):
    out = tmp_path / "out"
    (spec,) = _plan(prepared, out, seeds=[0])
    _fake_run(spec, ["checkpoints/last.pt"])
    with pytest.raises(UserError, match=r"different experiment \(optim.lr differ"):
        _plan(prepared, out, seeds=[0], overrides=[f"data.prepared={prepared}", "optim.lr=0.5"])
    stranger = out / "baseline-L1-seed1"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an mlbseg run folder"):
        _plan(prepared, out, seeds=[0, 1])


def test_plan_refuses_a_run_that_another_process_trains(prepared, tmp_path):
    out = tmp_path / "out"
    busy = _plan(prepared, out)[1].run_dir
    with run_lock(busy):  # as the engine holds it while a run (say, an orphaned worker's) trains
        with pytest.raises(UserError) as caught:
            _plan(prepared, out)
        assert str(caught.value) == (
            f"{busy}: another process is training this run (lock held); wait for it or stop it"
        )
    assert [spec.state for spec in _plan(prepared, out)] == [FRESH, FRESH]  # a lone .lock is no run


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ["mlbsek"]}, "--methods: unknown method 'mlbsek'"),
        ({"noises": ["L7"]}, "--noise: unknown noise level 'L7'"),
        ({"seeds": []}, "--seeds: give at least one seed"),
        ({"overrides": ["train.seed=3"]}, "repeat sets train.seed itself; use --seeds"),
        ({"overrides": ["data.noise=L2"]}, "use --noise"),
        ({"overrides": ["optim.lrr=1"]}, "did you mean 'optim.lr'"),
        ({"overrides": ["data.prepared=/nonexistent/prepared"]}, "/nonexistent/prepared"),
    ],
)
def test_plan_rejects_bad_input(prepared, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        _plan(prepared, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_task_detection(tmp_path):
    assert detect_task(SMOKE).name == "seg"
    assert detect_task(ROOT / "mlbseg" / "configs" / "cls" / "smoke.yaml").name == "cls"
    elsewhere = tmp_path / "mine.yaml"
    elsewhere.write_text("data:\n  dataset: cifar100\n")
    assert detect_task(elsewhere).name == "cls"
    assert detect_task(elsewhere, "seg").name == "seg"
    with pytest.raises(UserError, match="--task"):
        detect_task(elsewhere, "detection")


def test_classification_noise_axis_is_the_noise_rate():
    task = get_task("cls")
    assert task.noise_key == "data.noise_rate"
    assert task.parse_noise("0.40") == "0.4"
    with pytest.raises(UserError, match="not a noise rate"):
        task.parse_noise("L1")


# --- scheduler ------------------------------------------------------------------------------------------


def test_slots_and_child_environment():
    assert make_slots(4, ["2", "5"]) == ["2", "5"]
    assert make_slots(1, ["2", "5"]) == ["2"]
    assert make_slots(3, []) == [None, None, None]
    env = child_env("5", 3, base={"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert child_env(None, 3, base={"OMP_NUM_THREADS": "7"}) == {"OMP_NUM_THREADS": "7"}


def _python(code):
    return [sys.executable, "-c", code]


def test_jobs_run_in_parallel_with_logs_exit_codes_and_gpu_pinning(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    timed = "import os, time; t = time.time(); time.sleep(0.5); "
    timed += "print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ['OMP_NUM_THREADS'], t, time.time())"
    failing = _python("import sys; print('boom'); sys.exit(3)")
    jobs = [Job(name, _python(timed), tmp_path / name / "log.txt") for name in "ab"]
    jobs.append(Job("c", failing, tmp_path / "c" / "log.txt", preamble="top\n"))
    events = []
    outcomes = run_jobs(jobs, ["0", "1"], lambda event, job, outcome: events.append((event, job.name)))
    assert {outcome.job.name: outcome.returncode for outcome in outcomes} == {"a": 0, "b": 0, "c": 3}
    (gpu_a, threads, start_a, end_a), (gpu_b, _, start_b, end_b) = (
        (tmp_path / name / "log.txt").read_text().split() for name in "ab"
    )
    assert {gpu_a, gpu_b} == {"0", "1"}  # one job per GPU at a time
    assert threads == str(max(1, cpu_count() // 2))
    assert float(start_a) < float(end_b)
    assert float(start_b) < float(end_a)  # a and b overlapped
    assert (tmp_path / "c" / "log.txt").read_text() == "top\nboom\n"
    assert events[:2] == [("start", "a"), ("start", "b")]
    assert sorted(events) == sorted([(e, n) for n in "abc" for e in ("start", "end")])


def test_a_pending_log_moves_into_the_run_folder_once_claimed(tmp_path):
    run_dir = tmp_path / "run"
    code = f"import pathlib, time; p = pathlib.Path(r'{run_dir}'); print('before', flush=True); "
    code += "p.mkdir(); (p / 'config.yaml').write_text('x'); time.sleep(1.0); "
    code += "print('placed while running:', (p / 'log.txt').exists())"
    job = Job("r", _python(code), run_dir / "log.txt", run_dir / "config.yaml", tmp_path / ".r.log", "head\n")
    seen = []

    def report(event, job, outcome):
        seen.append((event, job.log.exists(), job.pending_log.exists()))

    (outcome,) = run_jobs([job], [None], report)
    assert outcome.returncode == 0
    assert (run_dir / "log.txt").read_text() == "head\nbefore\nplaced while running: True\n"
    assert not (tmp_path / ".r.log").exists()
    assert seen[0] == ("start", False, True)


def test_a_job_that_dies_before_claiming_still_leaves_its_log(tmp_path):
    job = Job(
        "r",
        _python("raise SystemExit('nope')"),
        tmp_path / "run" / "log.txt",
        tmp_path / "run" / "config.yaml",
        tmp_path / ".r.log",
    )
    (outcome,) = run_jobs([job], [None])
    assert outcome.returncode == 1
    assert "nope" in (tmp_path / "run" / "log.txt").read_text()
    assert os.listdir(tmp_path / "run") == ["log.txt"]


def _wait_for(paths, text, seconds=60):
    deadline = time.monotonic() + seconds
    while not all(path.is_file() and text in path.read_text() for path in paths):
        assert time.monotonic() < deadline, [path.read_text() for path in paths if path.is_file()]
        time.sleep(0.01)


def test_an_interruption_stops_every_process_and_places_pending_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "GRACE_SECONDS", 0.5)
    ready = "import os, signal, time; {}print('ready', os.getpid(), flush=True); time.sleep(60)"
    stubborn = ready.format("signal.signal(signal.SIGTERM, signal.SIG_IGN); ")  # needs the SIGKILL
    run_dir = tmp_path / "b"
    jobs = [
        Job("a", _python(stubborn), tmp_path / "a" / "log.txt"),
        Job(
            "b", _python(ready.format("")), run_dir / "log.txt", run_dir / "config.yaml", tmp_path / ".b.log"
        ),
    ]

    def report(event, job, outcome):
        if job.name == "b":  # both running and ready: Ctrl-C now
            _wait_for([tmp_path / "a" / "log.txt", tmp_path / ".b.log"], "ready")
            raise Interrupted(signal.SIGINT)

    started = time.monotonic()
    with pytest.raises(Interrupted):
        run_jobs(jobs, [None, None], report)
    assert 0.5 <= time.monotonic() - started < 30
    logs = [tmp_path / "a" / "log.txt", run_dir / "log.txt"]  # the pending log is in place
    assert not (tmp_path / ".b.log").exists()
    for log in logs:
        pid = int(log.read_text().split()[-1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ended and reaped


# --- tables ---------------------------------------------------------------------------------------------


def _record(method, noise, seed, status, dice=None, hd95=None):
    values = {} if status == "failed" else {"dice": dice, "hd95": hd95}
    return RunRecord(
        method,
        noise,
        seed,
        f"{method}-{noise}-seed{seed}",
        status,
        values,
        Path(f"out/{method}-{seed}/log.txt"),
    )


def test_aggregate_mean_and_sample_std_in_percent():
    records = [
        _record("baseline", "L1", 0, "finished", 0.60, 10.0),
        _record("baseline", "L1", 1, "skipped", 0.70, None),
        _record("baseline", "L1", 2, "finished", 0.80, 14.0),
        _record("mlbseg", "L1", 0, "failed"),
        _record("mlbseg", "L1", 1, "finished", 0.75, 8.0),
    ]
    baseline, mlbseg = aggregate(SEG, records)
    assert baseline["n"] == 3
    assert baseline["dice_mean"] == pytest.approx(70.0)
    assert baseline["dice_std"] == pytest.approx(10.0)  # sample std of 60, 70, 80
    assert (baseline["hd95_mean"], baseline["hd95_n"]) == (pytest.approx(12.0), 2)
    assert (mlbseg["n"], mlbseg["failed"], mlbseg["dice_std"]) == (1, 1, None)
    assert mlbseg["failed_logs"] == ["out/mlbseg-0/log.txt"]
    text = markdown(SEG, [baseline, mlbseg], "t")
    assert "| baseline | L1 | 3 | 70.00 ± 10.00 | 12.00 ± 2.83 (2 of 3) | 0 |" in text
    assert "| mlbseg | L1 | 1 | 75.00 | 8.00 | 1 |" in text
    assert "- `out/mlbseg-0/log.txt`" in text
    assert "sample standard deviation" in text
    lines = csv_text(SEG, [baseline, mlbseg]).splitlines()
    assert lines[0] == "method,noise,n,dice_mean,dice_std,dice_n,hd95_mean,hd95_std,hd95_n,failed,failed_logs"
    assert lines[2].startswith("mlbseg,L1,1,75.0,,1,8.0,,1,1,out/mlbseg-0/log.txt")


def test_repeat_of_finished_runs_only_reads_their_summaries(prepared, tmp_path):
    out = tmp_path / "out"
    specs = _plan(prepared, out, seeds=[0, 1])
    for spec, dice in zip(specs, (0.5, 0.9), strict=True):
        _fake_run(spec, ["checkpoints/final.pt"])
        summary = {"checkpoint": "final", "mean": {"dice": {"mean": dice}, "hd95": {"mean": 3.0}}}
        (spec.run_dir / "summary.json").write_text(json.dumps(summary))
    console = Console(record=True, width=200)
    result = repeat(
        SMOKE,
        seeds=[0, 1],
        noises=["L1"],
        methods=["baseline"],
        overrides=[f"data.prepared={prepared}"],
        out=out,
        console=console,
    )
    assert console.export_text().count("skipped") == 2
    assert [record.status for record in result.records] == ["skipped", "skipped"]
    document = json.loads((out / "table.json").read_text())
    (row,) = document["rows"]
    assert (row["n"], row["dice_mean"], row["dice_std"]) == (
        2,
        pytest.approx(70.0),
        pytest.approx(28.2842712),
    )
    assert [run["values"]["dice"] for run in document["runs"]] == [0.5, 0.9]
    assert (out / "table.md").is_file()
    assert (out / "table.csv").is_file()


def test_a_second_repeat_in_the_same_folder_is_refused(prepared, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another `mlbseg repeat` is running"):
            repeat(SMOKE, seeds=[0], methods=["baseline"], overrides=[f"data.prepared={prepared}"], out=out)


def _zones_record(seed, dice, pz, tz, status="finished"):
    values = {"dice": dice, "hd95": 4.0, "dice_PZ": pz, "hd95_PZ": 3.0, "dice_TZ": tz, "hd95_TZ": 5.0}
    return RunRecord("mlbseg", "L1", seed, f"mlbseg-L1-seed{seed}", status, values, Path("log.txt"))


def test_tables_of_k_labels_show_the_class_mean_and_each_class():
    summary = {
        "mean": {
            "dice": {"mean": 0.7},
            "hd95": {"mean": None},
            "classes": {"PZ": {"dice": {"mean": 0.6}, "hd95": {"mean": 3.5}}, "TZ": {"dice": {"mean": 0.8}}},
        }
    }
    assert SEG.values(summary) == {
        "dice": 0.7,
        "hd95": None,
        "dice_PZ": 0.6,
        "hd95_PZ": 3.5,
        "dice_TZ": 0.8,
        "hd95_TZ": None,
    }
    (row,) = aggregate(SEG, [_zones_record(0, 0.70, 0.60, 0.80), _zones_record(1, 0.80, 0.70, 0.90)])
    assert row["classes"] == ["PZ", "TZ"]
    assert (row["dice_mean"], row["dice_PZ_mean"], row["dice_TZ_mean"]) == (
        pytest.approx(75.0),
        pytest.approx(65.0),
        pytest.approx(85.0),
    )
    assert row["dice_TZ_std"] == pytest.approx(7.0710678)
    assert (row["hd95_PZ_mean"], row["hd95_PZ_n"]) == (3.0, 2)
    text = markdown(SEG, [row], "t")
    columns = "Dice (%) | HD95 (mm) | PZ Dice (%) | PZ HD95 (mm) | TZ Dice (%) | TZ HD95 (mm)"
    assert f"| Method | Noise | n | {columns} | Failed |" in text
    assert (
        "| mlbseg | L1 | 2 | 75.00 ± 7.07 | 4.00 ± 0.00 | 65.00 ± 7.07 | 3.00 ± 0.00 | 85.00 ± 7.07 |" in text
    )
    assert "mean over the foreground classes" in text
    header = csv_text(SEG, [row]).splitlines()[0].split(",")
    assert header[3:9] == ["dice_mean", "dice_std", "dice_n", "hd95_mean", "hd95_std", "hd95_n"]
    assert header[9:12] == ["dice_PZ_mean", "dice_PZ_std", "dice_PZ_n"]
    assert "classes" not in header
    binary = aggregate(SEG, [_record("baseline", "L1", 0, "finished", 0.6, 10.0)])
    assert "classes" not in binary[0]
    assert "mean over the foreground classes" not in markdown(SEG, binary, "t")
