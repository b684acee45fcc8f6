"""`mlbseg synth` + `mlbseg prepare` through the CLI: a tiny end-to-end run and every kind of bad input."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.prep.volumes import read_volume, write_volume

from .processes import alive, children

runner = CliRunner()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "raw"
    args = [
        "synth",
        str(folder),
        "--cases",
        "6",
        "--seed",
        "1",
        "--in-plane",
        "40",
        "64",
        "--slices",
        "6",
        "10",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Wrote 6 phantom cases (Case00..Case05)" in result.stdout
    return folder


def test_help_answers_and_the_command_module_stays_light():
    for args in (["--help"], ["prepare", "--help"], ["synth", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert "Usage" in result.stdout
    assert "--labels" in runner.invoke(app, ["prepare", "--help"]).stdout
    heavy = "{'numpy', 'SimpleITK', 'scipy', 'torch'}"
    code = f"import sys, mlbseg.cli.data; print(sorted({heavy} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "[]\n"
    )


def test_synth_then_prepare(raw, tmp_path):
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["prepare", str(raw), str(out), "--size", "32", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "Prepared 6 cases (4 train, 0 val, 1 meta, 1 test) at 32²" in result.stdout
    for level, target in (("L1", "0.4148"), ("L2", "0.6206"), ("L3", "0.8031")):
        assert f"{level} " in result.stdout
        assert target in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in (out / "cases").iterdir()) == [f"Case{i:02d}.npz" for i in range(6)]
    assert all(abs(entry["mean_dice"] - entry["target"]) <= 0.02 for entry in manifest["noise"].values())
    with np.load(out / "cases" / f"{manifest['split']['train'][0]}.npz") as arrays:
        assert arrays["noisy_L2"].shape == arrays["image"][:, 0].shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temporary folder left


def _rewrite(path, change):
    array, geometry = read_volume(path)
    array, geometry = change(array, geometry)
    write_volume(path, array, geometry)


def _with_value_two(array, geometry):
    array = array.copy()
    array[array.shape[0] // 2, 0, 0] = 2
    return array, geometry


def _with_nan(array, geometry):
    array = array.astype(np.float32)
    array[0, 0, 0] = np.nan
    return array, geometry


BAD_INPUTS = {
    "missing mask": (
        lambda r: [(r / f"Case02_segmentation.{e}").unlink() for e in ("mhd", "raw")],
        "Case02.mhd: no mask",
    ),
    "mask without image": (
        lambda r: [(r / f"Case02.{e}").unlink() for e in ("mhd", "raw")],
        "mask without an image",
    ),
    "truncated raw": (
        lambda r: (r / "Case02.raw").write_bytes(b"\0" * 64),
        "Case02.mhd: cannot read this volume's voxel data",
    ),
    "unreadable header": (
        lambda r: (r / "Case02.mhd").write_text("NDims = banana\n"),
        "Case02.mhd: cannot read this volume's header",
    ),
    "shape mismatch": (
        lambda r: _rewrite(r / "Case02_segmentation.mhd", lambda a, g: (a[:, :-3], g)),
        "Case02_segmentation.mhd: mask shape",
    ),
    "spacing mismatch": (
        lambda r: _rewrite(
            r / "Case02_segmentation.mhd", lambda a, g: (a, {**g, "spacing": [9.0, 1.0, 1.0]})
        ),
        "Case02_segmentation.mhd: mask spacing",
    ),
    "mask not 0/1": (
        lambda r: _rewrite(r / "Case02_segmentation.mhd", _with_value_two),
        "Case02_segmentation.mhd: mask has values other than 0 and 1 (2); pass --labels merge",
    ),
    "NaN in image": (
        lambda r: _rewrite(r / "Case02.mhd", _with_nan),
        "Case02.mhd: the image contains NaN or inf",
    ),
    "empty folder": (lambda r: [p.unlink() for p in r.iterdir()], "raw: no cases found"),
    "wrong folder": (lambda r: shutil.rmtree(r), "raw: no such folder"),
}


def _assert_one_line_error(result, expected):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(raw, tmp_path, case):
    broken = tmp_path / "raw"
    shutil.copytree(raw, broken)
    change, expected = BAD_INPUTS[case]
    change(broken)
    result = runner.invoke(app, ["prepare", str(broken), str(tmp_path / "prepared"), "--size", "16"])
    _assert_one_line_error(result, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["raw"] if broken.exists() else [])


def test_merge_accepts_other_labels_and_existing_output_needs_overwrite(raw, tmp_path):
    labelled = tmp_path / "raw"
    shutil.copytree(raw, labelled)
    _rewrite(labelled / "Case02_segmentation.mhd", _with_value_two)
    out = tmp_path / "prepared"
    assert (
        runner.invoke(
            app, ["prepare", str(labelled), str(out), "--size", "16", "--labels", "merge"]
        ).exit_code
        == 0
    )
    before = {p.name: p.read_bytes() for p in (out / "cases").iterdir()}
    result = runner.invoke(app, ["prepare", str(raw), str(out), "--size", "16"])
    _assert_one_line_error(result, "prepared: already exists; pass --overwrite to replace it")
    assert {p.name: p.read_bytes() for p in (out / "cases").iterdir()} == before
    result = runner.invoke(app, ["prepare", str(raw), str(out), "--size", "16", "--overwrite", "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["label_mode"] == "binary"


def _workers(pid):
    """The pool's worker processes among the children of ``pid`` (not multiprocessing's tracker)."""
    return [child for child in children(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm"]
)
def test_a_signal_ends_every_worker_and_leaves_nothing(raw, tmp_path, signum, to_group):
    out = tmp_path / "out" / "prepared"
    command = [sys.executable, "-m", "mlbseg", "prepare", str(raw), str(out), "--size", "16", "--jobs", "2"]
    # its own process group, as a terminal's job: a Ctrl-C there sends SIGINT to the whole group
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while len(_workers(proc.pid)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = children(proc.pid)
        workers = _workers(proc.pid)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # held mid-work: none can finish before the signal lands
        os.killpg(proc.pid, signum) if to_group else proc.send_signal(signum)
        time.sleep(0.2)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # SIGTERM ends a stopped process too
                os.kill(pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a failure left running
    assert proc.returncode == 128 + signum, stderr.decode()
    assert stderr.decode() == "interrupted; continue with the same command\n"  # no worker's traceback
    deadline = time.monotonic() + 10  # multiprocessing's tracker ends when it sees the parent gone
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in started)
    assert list(tmp_path.iterdir()) == []  # neither staging folder nor the parent folder it created
