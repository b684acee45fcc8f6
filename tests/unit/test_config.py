from dataclasses import replace
from pathlib import Path

import pytest

from mlbseg.config import load_config, resolve_config_path, shipped_configs
from mlbseg.engine.run_dir import save_config
from mlbseg.errors import UserError
from mlbseg.seg.config import SegConfig, with_absolute_paths

CONFIG_DIR = Path(__file__).parents[2] / "mlbseg" / "configs"
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
        ("method.engine=fast", "'method.engine' must be one of"),
        ("optim=3", "'optim' is a section"),
        ("novalue", "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(SegConfig, None, [override])


def test_an_error_names_the_file_and_the_overrides_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(UserError) as raised:
        load_config(SegConfig, path, ["optim.lr=0.01", "train.epochs=2", "train.threads=1"])
    assert str(raised.value).startswith(f"{path} (with --set): unknown config key 'train.threads'")


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


# --- shipped configs by name, absolute data paths ---------------------------------------------------------


def test_shipped_configs_cover_both_tasks_with_summaries():
    shipped = shipped_configs()
    assert {(c.task, c.name) for c in shipped} >= {("seg", "promise12_mlbseg"), ("cls", "cifar10")}
    assert all(c.path.is_file() and c.summary for c in shipped)
    assert {c.task for c in shipped_configs("cls")} == {"cls"}


@pytest.mark.parametrize(
    ("name", "task", "expected"),
    [
        ("promise12_mlbseg", "seg", "seg/promise12_mlbseg.yaml"),
        ("cifar10", "cls", "cls/cifar10.yaml"),
        ("cls/cifar10", None, "cls/cifar10.yaml"),
        ("seg/smoke.yaml", None, "seg/smoke.yaml"),
        ("smoke", "cls", "cls/smoke.yaml"),
    ],
)
def test_resolve_config_path_finds_shipped_names(name, task, expected):
    assert resolve_config_path(name, task) == CONFIG_DIR / expected


def test_resolve_config_path_prefers_an_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("smoke").write_text("name: mine\n")
    assert resolve_config_path("smoke", "seg") == Path("smoke")


@pytest.mark.parametrize(
    ("name", "task", "message"),
    [
        ("nope", "seg", "shipped: promise12_baseline, promise12_mlbseg, promise12_reference, smoke"),
        ("cifar10", "seg", "no shipped segmentation config"),
        ("smoke", None, "give seg/smoke or cls/smoke"),
        ("configs/seg/smoke.yaml", "seg", "no such file"),
    ],
)
def test_resolve_config_path_errors_name_the_shipped_configs(name, task, message):
    with pytest.raises(UserError, match=message) as err:
        resolve_config_path(name, task)
    assert "\n" not in str(err.value)


def test_with_absolute_paths_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(SegConfig, None, ["data.prepared=data/prepared", "model.encoder_weights=w.pt"])
    absolute = with_absolute_paths(cfg)
    assert absolute.data.prepared == str(tmp_path / "data" / "prepared")
    assert absolute.model.encoder_weights == str(tmp_path / "w.pt")
    assert with_absolute_paths(absolute) == absolute
    assert with_absolute_paths(load_config(SegConfig, None)).model.encoder_weights is None
