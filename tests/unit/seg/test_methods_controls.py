"""The meta-weighting variants and controls: views_meta, l2b_seg and mlbseg, and the per-method defaults.

``method.consistency_weight`` and ``method.ema.enabled`` are null in the schema, meaning the method's
default; they are resolved when the config is built and saved resolved, and a YAML can turn them off.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch._inductor.config  # imported while collecting, as in test_trainer.py
import torch.nn.functional as F
from torch import nn

from mlbseg.config import config_text, load_config
from mlbseg.engine.distributed import SINGLE
from mlbseg.engine.seeding import seed_everything
from mlbseg.engine.trainer import Runtime
from mlbseg.seg.config import METHODS, DataConfig, EMAConfig, MethodConfig, SegConfig, ViewsConfig
from mlbseg.seg.consistency import multiview_consistency
from mlbseg.seg.step import SegmentationStep
from mlbseg.seg.trainer import TASK, SegmentationRun

from ._prepared import write_prepared
from ._runs import SMALL_MODEL

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")

SHIPPED = Path(__file__).parents[3] / "mlbseg" / "configs" / "seg"
# method -> (consistency weight, EMA teacher) when the config leaves both null
DEFAULTS = {
    "baseline": (0.0, False),
    "baseline_plus_meta": (0.0, False),
    "views_meta": (1.0, True),
    "l2rw": (0.0, False),
    "l2b_seg": (0.0, False),
    "mlbseg": (1.0, True),
    "gce": (0.0, False),
    "mae": (0.0, False),
    "nr_dice": (0.0, False),
    "tloss": (0.0, False),
    "coteaching": (0.0, False),
    "trinet": (0.0, False),
    "clslsr": (0.0, False),
    "adele": (0.0, False),
    "dast": (0.0, False),
}


def test_every_registered_method_has_its_defaults_listed_here():
    assert set(DEFAULTS) == set(METHODS)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_null_resolves_to_the_methods_default_and_is_saved_resolved(tmp_path, name):
    path = tmp_path / "c.yaml"
    path.write_text(f"method:\n  name: {name}\n  consistency_weight: null\n  ema:\n    enabled: null\n")
    cfg = load_config(SegConfig, path)
    assert (cfg.method.consistency_weight, cfg.method.ema.enabled) == DEFAULTS[name]
    saved = tmp_path / "config.yaml"
    saved.write_text(config_text(cfg))
    text = saved.read_text()
    assert f"consistency_weight: {DEFAULTS[name][0]}" in text
    assert f"enabled: {str(DEFAULTS[name][1]).lower()}" in text
    assert load_config(SegConfig, saved) == cfg  # a resume compares equal


@pytest.mark.parametrize("name", ["mlbseg", "views_meta"])
def test_a_yaml_turns_consistency_and_the_teacher_off(name):
    cfg = load_config(
        SegConfig, None, [f"method.name={name}", "method.consistency_weight=0", "method.ema.enabled=false"]
    )
    assert not cfg.method.uses_consistency
    assert not cfg.method.uses_ema
    assert cfg.method.uses_views


@pytest.mark.parametrize("name", ["l2b_seg", "l2rw", "baseline", "gce"])
def test_a_method_without_the_parts_runs_without_them_whatever_the_yaml_says(name):
    cfg = load_config(SegConfig, SHIPPED / "promise12_mlbseg.yaml", [f"method.name={name}"])
    assert (cfg.method.consistency_weight, cfg.method.ema.enabled) == (0.0, False)  # saved as it ran
    mlbseg = dataclasses.replace(cfg.method, name="mlbseg")  # explicit values stay explicit
    assert (mlbseg.consistency_weight, mlbseg.ema.enabled) == (0.0, False)


def test_mlbseg_and_its_controls_differ_only_in_the_parts_they_isolate():
    def parts(name: str, *without: str) -> dict:
        traits = dataclasses.asdict(METHODS[name])
        return {key: value for key, value in traits.items() if key not in without}

    # MLB-Seg minus views_meta: the meta-weighting (α/β with the pseudo-label) alone
    assert parts("mlbseg", "meta_weights", "pseudo_labels") == parts(
        "views_meta", "meta_weights", "pseudo_labels"
    )
    assert not METHODS["views_meta"].meta_weights
    assert METHODS["mlbseg"].meta_weights
    # MLB-Seg minus l2b_seg: consistency and the EMA teacher alone
    assert parts("mlbseg", "consistency_weight", "ema") == parts("l2b_seg", "consistency_weight", "ema")
    assert METHODS["l2b_seg"].consistency_weight is None
    assert METHODS["l2b_seg"].ema is None


# ---------------------------------------------------------------------------------------- the steps


def _step(method: MethodConfig) -> SegmentationStep:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    return SegmentationStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        method=method,
        data=DataConfig(),
        grad_clip_norm=0.2,
        generator=torch.Generator().manual_seed(0),
    )


def _slices(count: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(count, 1, size, size)
    masks[:, :, 4:11, 5:12] = 1
    return images, masks, masks.clone()


def test_views_meta_trains_on_the_mean_cost_of_the_views_plus_consistency_with_uniform_weights():
    method = MethodConfig(
        name="views_meta",
        consistency_weight=0.5,
        views=ViewsConfig(zoom_pads=(2, 4)),
        ema=EMAConfig(enabled=False),
    )
    step = _step(method)
    batch, meta = step.expand(*_slices()), step.expand(*_slices(1))
    assert batch.images.shape[0] == 10
    assert meta.images.shape[0] == 5
    with torch.no_grad():
        logits = step.model(batch.images)
        expected = F.binary_cross_entropy_with_logits(logits, batch.labels) + 0.5 * multiview_consistency(
            logits.sigmoid(), batch.views
        )
    stats = step(batch, meta, meta_weighting=True)
    assert float(stats["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert "alpha_mean" not in stats  # no meta-weighting
    assert "meta_loss" in stats  # the clean meta-batch step


def test_l2b_seg_weights_the_views_with_alpha_and_beta_without_consistency_or_teacher():
    step = _step(MethodConfig(name="l2b_seg", views=ViewsConfig(zoom_pads=(2, 4))))
    batch, meta = step.expand(*_slices()), step.expand(*_slices(1))
    assert batch.views is not None
    assert step.extra_loss(batch) is None  # no consistency, no EMA term
    stats = step(batch, meta, meta_weighting=True)
    assert float(stats["beta_mean"]) > 0.0  # the pseudo-label is weighted
    assert float(stats["alpha_mean"] + stats["beta_mean"]) * batch.labels.numel() == pytest.approx(
        1.0, rel=1e-5
    )
    mlbseg = _step(MethodConfig(name="mlbseg", views=ViewsConfig(zoom_pads=(2, 4))))
    assert mlbseg.extra_loss(batch) is not None  # consistency on by default


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_methods_controls") / "prepared"
    write_prepared(folder)
    return folder


def _build(prepared: Path, tmp_path: Path, name: str) -> SegmentationRun:
    """The shipped promise12_mlbseg config with ``method.name``, small model, smoke-sized views."""
    sets = [
        f"data.prepared={prepared}",
        f"method.name={name}",
        "train.device=cpu",
        "method.meta_batch_size=1",
        "method.views.zoom_pads=[2,4]",
        *SMALL_MODEL,
    ]
    cfg = load_config(SegConfig, SHIPPED / "promise12_mlbseg.yaml", sets)
    TASK.check_config(cfg)
    seed_everything(0, True)
    return TASK.build(cfg, Runtime(torch.device("cpu"), SINGLE, None, tmp_path / "run"))


@pytest.mark.parametrize(
    ("name", "teacher", "consistency"),
    [("mlbseg", True, True), ("views_meta", True, True), ("l2b_seg", False, False)],
)
def test_built_runs_have_the_teacher_and_consistency_of_their_method(
    prepared, tmp_path, name, teacher, consistency
):
    run = _build(prepared, tmp_path, name)
    assert (run.step.teacher is not None) == teacher
    assert run.cfg.method.uses_consistency == consistency
    run.begin_epoch(0)
    run.train_step()
    stats = run.running_stats()
    assert ("alpha_mean" in stats) == (name != "views_meta")
