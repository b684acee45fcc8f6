"""Phantom data shared by the end-to-end tests, made once per session through the CLI."""

import pytest
from typer.testing import CliRunner

from mlbseg.cli import app


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory):
    """Six small PROMISE12-layout phantoms and their prepared dataset at 32²: (raw, prepared). Read-only."""
    base = tmp_path_factory.mktemp("phantoms")
    raw, prepared = base / "raw", base / "prepared"
    runner = CliRunner()
    synth = [
        "synth",
        str(raw),
        "--cases",
        "6",
        "--seed",
        "1",
        "--slices",
        "12",
        "16",
        "--in-plane",
        "64",
        "96",
    ]
    for args in (synth, ["prepare", str(raw), str(prepared), "--size", "32"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return raw, prepared
