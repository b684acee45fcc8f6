"""The classification config: every shipped YAML, the paper's recipes, dataset options, cross-key checks."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlbseg.cli.classify import app
from mlbseg.cls.config import (
    ClsConfig,
    DataConfig,
    MethodConfig,
    TrainConfig,
    check_config,
    dataset_kwargs,
    with_absolute_paths,
)
from mlbseg.cls.datasets import dataset_options
from mlbseg.config import load_config
from mlbseg.engine.run_dir import save_config
from mlbseg.errors import UserError

CONFIG_DIR = Path(__file__).parents[3] / "mlbseg" / "configs" / "cls"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_config_dir_is_not_empty():
    assert {p.stem for p in ALL_CONFIGS} >= {"cifar10", "cifar100", "clothing1m", "isic2019", "smoke"}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_validates_and_round_trips(path, tmp_path):
    cfg = load_config(ClsConfig, path)
    check_config(cfg)
    assert set(dataset_kwargs(cfg)) <= set(dataset_options(cfg.data.dataset))
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(ClsConfig, tmp_path / "config.yaml") == cfg
    header = path.read_text().splitlines()[:6]
    assert any(f"mlbseg classify train {path.stem} " in line for line in header), "header gives the command"
    assert any("--set" in line for line in header), "header gives an override example"


# docs/reference.md §1.1 (README recipes) and docs/method.md §7.1.
COMMON = {"schedule.name": "cosine", "method.name": "l2b", "optim.momentum": 0.9, "optim.weight_decay": 5e-4}
RECIPES = {
    "cifar10": {
        "model.arch": "preact_resnet18", "train.batch_size": 512, "optim.lr": 0.15,
        "optim.grad_clip_norm": 0.25, "train.epochs": 300, "method.warmup_epochs": 10,
        "method.normalize": "org", "data.num_meta": 1000, "data.noise": "l2b_unif", "data.noise_rate": 0.2,
    },
    "cifar100": {
        "model.arch": "preact_resnet18", "train.batch_size": 256, "optim.lr": 0.15,
        "optim.grad_clip_norm": 0.8, "train.epochs": 300, "method.warmup_epochs": 10,
        "method.normalize": "org", "data.num_meta": 1000,
    },
    "isic2019": {
        "model.arch": "resnet50", "train.batch_size": 64, "optim.lr": 0.01, "optim.grad_clip_norm": 0.8,
        "train.epochs": 30, "method.warmup_epochs": 1, "method.normalize": "softmax",
        "method.temperature": 10.0,
    },
    "clothing1m": {
        "model.arch": "resnet18", "train.batch_size": 256, "optim.lr": 0.005, "optim.grad_clip_norm": None,
        "train.epochs": 300, "method.warmup_epochs": 0, "data.num_batches": 250, "data.num_meta": None,
        "method.normalize": "org",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_recipes_match_the_paper(name):
    cfg = load_config(ClsConfig, CONFIG_DIR / f"{name}.yaml")
    for key, expected in {**COMMON, **RECIPES[name]}.items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == expected, key
    assert cfg.method.meta_batch_size == cfg.train.batch_size  # the reference's meta batch, now explicit
    assert cfg.schedule.warmup_epochs == 0  # the reference has no LR ramp; its warm-up is plain-CE epochs


def test_dataset_kwargs_pass_only_set_keys_with_run_defaults():
    cfg = ClsConfig(data=DataConfig(dataset="cifar10", noise="symmetric"), train=TrainConfig(seed=7))
    assert dataset_kwargs(cfg) == {"noise": "symmetric", "seed": 7}
    own_seed = ClsConfig(data=DataConfig(dataset="cifar10", seed=3), train=TrainConfig(seed=7))
    assert dataset_kwargs(own_seed)["seed"] == 3
    clothing = ClsConfig(
        data=DataConfig(dataset="clothing1m", num_batches=4), train=TrainConfig(batch_size=16)
    )
    assert dataset_kwargs(clothing) == {"num_batches": 4, "batch_size": 16, "seed": 0}


def test_an_option_the_dataset_does_not_take_is_an_error():
    cfg = ClsConfig(data=DataConfig(dataset="cifar10", num_batches=250))
    with pytest.raises(UserError, match=r"data\.num_batches: not an option of dataset cifar10.*data\.split"):
        check_config(cfg)
    with pytest.raises(UserError, match=r"data\.noise"):
        check_config(ClsConfig(data=DataConfig(dataset="clothing1m", noise="symmetric")))


@pytest.mark.parametrize("name", ["baseline", "l2rw", "l2b"])
def test_mixup_is_allowed_with_every_method(name):
    check_config(ClsConfig(method=MethodConfig(name=name, mixup=True)))
    with pytest.raises(UserError, match=r"method\.mixup_alpha: must be above 0"):
        check_config(ClsConfig(method=MethodConfig(name=name, mixup=True, mixup_alpha=0.0)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": MethodConfig(normalize="hard")}, r"method.normalize: .*clamp_sum"),
        ({"train": TrainConfig(batch_size=0)}, "train.batch_size: must be 1 or more"),
        ({"method": MethodConfig(meta_batch_size=0)}, "method.meta_batch_size: must be 1 or more"),
        ({"train": TrainConfig(steps_per_epoch=0)}, "train.steps_per_epoch: must be 1 or more"),
        ({"train": TrainConfig(log_weights_for=-1)}, "train.log_weights_for: must be 0 or more"),
    ],
)
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(UserError, match=message):
        check_config(ClsConfig(**changes))


def test_overrides_beat_yaml_and_keep_types():
    cfg = load_config(ClsConfig, CONFIG_DIR / "cifar10.yaml", ["data.noise_rate=0.4", "method.mixup=false"])
    assert cfg.data.noise_rate == 0.4
    assert cfg.method.mixup is False
    assert cfg.data.root == "data/cifar10"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.nam=l2b", "did you mean 'method.name'"),
        ("method.name=l2x", "'method.name' must be one of"),
        ("data.dataset=mnist", "'data.dataset' must be one of"),
        ("data.split_dir=lists", "data.split_dir: not an option of dataset cifar10"),
    ],
)
def test_cli_reports_config_mistakes_in_one_line(tmp_path, override, message):
    args = ["train", str(CONFIG_DIR / "smoke.yaml"), "--set", override, "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_with_absolute_paths_resolves_root_and_weights_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = with_absolute_paths(load_config(ClsConfig, None, ["data.root=data/cifar10", "model.weights=w.pt"]))
    assert (cfg.data.root, cfg.model.weights) == (str(tmp_path / "data" / "cifar10"), str(tmp_path / "w.pt"))
