from dataclasses import replace
from pathlib import Path

import pytest

from mlbseg.config import load_config
from mlbseg.engine.run_dir import save_config
from mlbseg.errors import UserError
from mlbseg.seg.config import SegConfig

CONFIG_DIR = Path(__file__).parents[2] / "configs"
DEMO_CONFIG = Path(__file__).parents[2] / "mlbseg" / "demo.yaml"  # packaged: `mlbseg demo` reads it
SEG_CONFIGS = [*sorted((CONFIG_DIR / "seg").rglob("*.yaml")), DEMO_CONFIG]


def test_seg_config_dir_is_not_empty():
    assert len(SEG_CONFIGS) >= 4


@pytest.mark.parametrize("path", SEG_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_seg_config_validates(path):
    cfg = load_config(SegConfig, path)
    assert cfg.name == path.stem


def test_defaults_are_the_paper_settings():
    cfg = load_config(SegConfig, None)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.005, 0.9, 5e-4)
    assert cfg.optim.grad_clip_norm == 0.2
    assert (cfg.train.batch_size, cfg.method.meta_batch_size) == (1, 2)
    assert cfg.method.views.zoom_pads == tuple(range(4, 31, 2))


def test_yaml_and_overrides_are_coerced_to_the_schema(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  weight_decay: 5e-4\n  lr: 1\nmethod:\n  views:\n    zoom_pads: [4, 8]\n")
    cfg = load_config(SegConfig, path, ["method.ema.enabled=true", "train.epochs=3", "data.noise=L1"])
    assert cfg.optim.weight_decay == pytest.approx(5e-4)
    assert isinstance(cfg.optim.lr, float)
    assert cfg.method.views.zoom_pads == (4, 8)
    assert cfg.method.ema.enabled is True
    assert (cfg.train.epochs, cfg.data.noise) == (3, "L1")


def test_override_beats_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n")
    assert load_config(SegConfig, path, ["optim.lr=0.01"]).optim.lr == 0.01


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.nrmalize=org", "did you mean 'method.normalize'"),
        ("train.epochs=abc", "'train.epochs' must be an integer"),
        ("train.amp=maybe", "'train.amp' must be true or false"),
        ("data.noise=L4", "'data.noise' must be one of"),
        ("optim=3", "'optim' is a section"),
        ("novalue", "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(SegConfig, None, [override])


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(UserError, match=r"bad\.yaml: not valid YAML"):
        load_config(SegConfig, path)
    with pytest.raises(UserError, match="config file not found"):
        load_config(SegConfig, tmp_path / "missing.yaml")


def test_save_then_load_round_trips(tmp_path):
    cfg = replace(load_config(SegConfig, None, ["method.name=l2rw", "model.encoder_weights=/w.pth"]))
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(SegConfig, tmp_path / "config.yaml") == cfg
