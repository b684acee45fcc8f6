"""`mlbseg export model`: a torch.export program that plain torch loads and runs like mlbseg's network."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.seg.data import data_record
from mlbseg.seg.evaluate import load_trained_model
from mlbseg.seg.export import DATA_FILE

from .test_multiclass_eval import CHANNELS, LABELS, write_zones_prepared, write_zones_run, zones_model

# Runs in a fresh interpreter: only torch is imported, and mlbseg must stay out of sys.modules.
PLAIN_TORCH = """
import json, sys
import torch
extra = {"DATA_FILE": ""}
program = torch.export.load(sys.argv[1], extra_files=extra)
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    logits = {str(n): program.module()(x) for n, x in inputs.items()}
torch.save(logits, sys.argv[3])
print(json.dumps({"mlbseg_loaded": any(m.split(".")[0] == "mlbseg" for m in sys.modules),
                  "data": json.loads(extra["DATA_FILE"])}))
""".replace("DATA_FILE", DATA_FILE)


def _invoke(*args):
    return CliRunner().invoke(app, ["export", "model", *(str(arg) for arg in args)])


@pytest.fixture
def run(tmp_path):
    prepared = tmp_path / "prepared"
    manifest, _ = write_zones_prepared(prepared)
    return write_zones_run(tmp_path / "run", prepared, manifest, zones_model(seed=5)), manifest


def _logits(model, x):
    with torch.no_grad():
        return model(x)


def test_the_loaded_program_gives_the_logits_of_the_network_for_any_batch_size(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "model.pt2"
    out.write_bytes(b"an older export")
    result = _invoke(run_dir, out, "--overwrite")
    assert result.exit_code == 0, result.output
    extra = {DATA_FILE: ""}
    program = torch.export.load(out, extra_files=extra)
    assert json.loads(extra[DATA_FILE])["channels"] == CHANNELS
    _, model, _ = load_trained_model(run_dir, "final", torch.device("cpu"))
    exported = program.module()
    for n in (1, 5):
        x = torch.rand(n, len(CHANNELS), 16, 16, generator=torch.Generator().manual_seed(n))
        difference = (_logits(exported, x) - _logits(model, x)).abs().max().item()
        assert difference <= 1e-5, n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "prepared", "run"]  # nothing staged


@pytest.mark.slow
def test_plain_torch_reproduces_the_logits_for_any_batch_size(run, tmp_path):
    run_dir, manifest = run
    out = tmp_path / "model.pt2"
    result = _invoke(run_dir, out)
    assert result.exit_code == 0, result.output
    generator = torch.Generator().manual_seed(0)
    inputs = {n: torch.rand(n, len(CHANNELS), 16, 16, generator=generator) for n in (1, 3)}
    torch.save(inputs, tmp_path / "inputs.pt")
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_TORCH,
            str(out),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "logits.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["mlbseg_loaded"] is False
    data = report["data"]
    assert {key: data[key] for key in data_record(manifest)} == data_record(manifest)
    assert (data["labels"], data["activation"]) == (LABELS, "softmax")
    assert data["output"] == "[N, 3, 16, 16] float32 logits"
    _, model, _ = load_trained_model(run_dir, "final", torch.device("cpu"))
    exported = torch.load(tmp_path / "logits.pt")
    for n, x in inputs.items():
        assert exported[str(n)].shape == (n, 3, 16, 16)
        assert (exported[str(n)] - _logits(model, x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nowhere", "{tmp}/m.pt2"], "nowhere: run folder not found"),
        (["{run}", "{tmp}/m.onnx"], "m.onnx: the exported program's file must end in .pt2"),
        (["{run}", "{tmp}/m.pt2", "--checkpoint", "last"], "last.pt: checkpoint not found"),
        (["{run}", "{tmp}/exists.pt2"], "exists.pt2: already exists; pass --overwrite"),
    ],
    ids=["no run folder", "not .pt2", "no checkpoint", "existing output"],
)
def test_mistakes_are_one_line_and_write_nothing(run, tmp_path, args, message):
    run_dir, _ = run
    (tmp_path / "exists.pt2").write_bytes(b"mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _invoke(*(arg.format(tmp=tmp_path, run=run_dir) for arg in args))
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "exists.pt2").read_bytes() == b"mine"
