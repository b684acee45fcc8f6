"""Shipped configs as package data and by name, ``-h``, and run folders that work from any folder."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.config import SHIPPED_DIR, load_config
from mlbseg.seg.config import SegConfig

ROOT = Path(__file__).parents[2]
runner = CliRunner()


def test_the_wheel_ships_every_config(tmp_path):
    source = tmp_path / "src"  # a copy, so that the build writes nothing into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mlbseg", source / "mlbseg", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    result = subprocess.run(
        [*build, "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("mlbseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"mlbseg/configs/{path.relative_to(SHIPPED_DIR).as_posix()}" for path in SHIPPED_DIR.rglob("*.yaml")
    }
    assert len(shipped) >= 8
    assert shipped | {"mlbseg/demo.yaml"} <= names


def test_configs_lists_the_shipped_configs_with_their_summary():
    result = runner.invoke(app, ["configs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    mlbseg_line = next(line for line in lines if line.startswith("promise12_mlbseg "))
    assert mlbseg_line.split()[1] == "seg"
    assert "MLB-Seg on PROMISE12 with the paper's settings" in mlbseg_line
    assert any(line.split()[:2] == ["cifar10", "cls"] for line in lines)


@pytest.mark.parametrize(
    "args",
    [["-h"], ["train", "-h"], ["classify", "train", "-h"], ["figure", "overlay", "-h"], ["configs", "-h"]],
)
def test_h_is_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: mlbseg")
    assert "-h, --help" in result.output


def test_help_names_no_machine():
    for args in (["synth", "-h"], ["prepare", "-h"], ["demo", "-h"], ["repeat", "-h"]):
        output = runner.invoke(app, args).output
        assert "this machine" not in output
        assert "2-core" not in output


def test_unknown_config_name_is_one_line_listing_the_shipped_names(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "shipped: promise12_baseline, promise12_mlbseg, promise12_reference, smoke" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_shipped_name_and_relative_data_path_work_from_any_folder(phantoms, tmp_path, monkeypatch):
    prepared = phantoms[1]
    monkeypatch.chdir(prepared.parent)
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "smoke", "--set", f"data.prepared={prepared.name}", "--run-dir", str(run_dir)]
    )
    assert result.exit_code == 0, result.output
    assert load_config(SegConfig, run_dir / "config.yaml").data.prepared == str(prepared)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["evaluate", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "summary.json").is_file()
