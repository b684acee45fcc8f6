"""mlbseg.seg.weight_maps: the α/β maps of one training iteration of a saved run (`mlbseg figure weights`)."""

import numpy as np
import pytest
import torch

import mlbseg.seg.step
from mlbseg.config import to_dict
from mlbseg.engine.checkpoint import save_checkpoint
from mlbseg.engine.config import OptimConfig
from mlbseg.engine.ema import EMATeacher
from mlbseg.engine.optim import build_optimizer, lr_factor
from mlbseg.errors import UserError
from mlbseg.seg.config import (
    DataConfig,
    EMAConfig,
    MethodConfig,
    ModelConfig,
    SegConfig,
    TrainConfig,
    ViewsConfig,
)
from mlbseg.seg.weight_maps import weight_map_rows

from ._prepared import MODEL, SIZE, ZONES, ZONES_SPLITS, small_model, write_prepared

KEYS = ["image", "noisy", "pseudo", "reference", "alpha", "beta", "title"]
FOREGROUND_SLICES = ["Case00 z=1", "Case01 z=1", "Case01 z=2"]  # train slices whose reference is non-empty
EPOCH = 3


def _config(prepared, name="mlbseg", views=True, batch_size=1, noise="L1") -> SegConfig:
    return SegConfig(
        # no flip, no rotation: the rows' image and labels are the prepared slices themselves
        data=DataConfig(prepared=str(prepared), noise=noise, flip_prob=0.0, rotation_degrees=0.0),
        model=ModelConfig(**MODEL),
        optim=OptimConfig(lr=0.01),
        method=MethodConfig(
            name=name,
            meta_batch_size=1,
            consistency_weight=1.0,
            views=ViewsConfig(enabled=views, zoom_pads=(2, 4)),
            ema=EMAConfig(enabled=True),
        ),
        train=TrainConfig(epochs=5, batch_size=batch_size, device="cpu"),
    )


def _write_run(run, cfg, in_channels=1, classes=1):
    """``last.pt`` (with the optimizer's momentum buffers, after one real SGD step) and ``final.pt``."""
    torch.manual_seed(0)
    model = small_model(in_channels=in_channels, classes=classes)
    optimizer = build_optimizer(model, cfg.optim)
    model(torch.rand(2, in_channels, SIZE, SIZE)).square().mean().backward()
    optimizer.step()
    teacher = EMATeacher(model, cfg.method.ema.decay).state_dict()
    common = {"model": model.state_dict(), "teacher": teacher, "epoch": EPOCH, "config": to_dict(cfg)}
    save_checkpoint({**common, "optimizer": optimizer.state_dict()}, run / "checkpoints" / "last.pt")
    save_checkpoint(common, run / "checkpoints" / "final.pt")
    return {index: state["momentum_buffer"] for index, state in optimizer.state_dict()["state"].items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module's many tiny ops, restored afterwards.

    On a shared 2-core machine every OpenMP region of a two-thread torch waits for a descheduled thread:
    measured at load 4, this file took 68 s with two threads and 9 s with one (under 3 s when idle).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def prepared(tmp_path):
    """(folder, arrays by case id): train Case00 (2 slices) + Case01 (3), meta Case02 (4 slices)."""
    folder = tmp_path / "prepared"
    return folder, write_prepared(folder)


def _run(tmp_path, prepared, **config):
    run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    buffers = _write_run(run, _config(prepared, **config))
    return run, buffers


@pytest.fixture
def spy(monkeypatch):
    """Every call of the meta engine made through the step: its lr, momentum buffers and full α, β."""
    calls = []
    engine = mlbseg.seg.step.bootstrap_weights

    def recording(model, optimizer, *args, **kwargs):
        alpha, beta = engine(model, optimizer, *args, **kwargs)
        buffers = [optimizer.state[p].get("momentum_buffer") for p in optimizer.param_groups[0]["params"]]
        calls.append(
            {"lr": optimizer.param_groups[0]["lr"], "buffers": buffers, "alpha": alpha, "beta": beta}
        )
        return alpha, beta

    monkeypatch.setattr(mlbseg.seg.step, "bootstrap_weights", recording)
    return calls


def _parse(title):
    case, z = title.split(" z=")
    return case, int(z)


def test_rows_are_the_identity_views_of_the_named_foreground_slices(tmp_path, prepared):
    folder, arrays = prepared
    run, _ = _run(tmp_path, folder)
    rows = weight_map_rows(run, count=2, device="cpu")
    assert len(rows) == 2
    assert [row["title"] for row in rows] == sorted(row["title"] for row in rows)  # slice order
    for row in rows:
        assert list(row) == KEYS
        assert row["title"] in FOREGROUND_SLICES
        case, z = _parse(row["title"])
        for key in KEYS[:-1]:
            assert row[key].shape == (SIZE, SIZE)
            assert row[key].dtype == np.float32
        np.testing.assert_array_equal(row["noisy"], arrays[case]["noisy_L1"][z])
        np.testing.assert_array_equal(row["reference"], arrays[case]["mask"][z])
        np.testing.assert_allclose(row["image"], arrays[case]["image"][z, 0], atol=1e-6)
        assert set(np.unique(row["pseudo"])) <= {0.0, 1.0}
        assert (row["alpha"] >= 0).all()
        assert (row["beta"] >= 0).all()


def test_rows_hold_the_identity_view_of_weights_that_sum_to_one_over_all_views(tmp_path, prepared, spy):
    folder, _ = prepared
    run, _ = _run(tmp_path, folder)  # batch size 1: one engine call per slice, on its 5 views
    rows = weight_map_rows(run, count=3, device="cpu")
    assert [row["title"] for row in rows] == FOREGROUND_SLICES
    assert len(spy) == 3
    for row, call in zip(rows, spy, strict=True):
        assert call["alpha"].shape == call["beta"].shape == (5, 1, SIZE, SIZE)
        total = float(call["alpha"].sum() + call["beta"].sum())
        assert total == pytest.approx(1.0, abs=1e-5)  # org: α and β of the call sum to 1 together
        np.testing.assert_array_equal(row["alpha"], call["alpha"][0, 0].numpy())  # view 0: identity
        np.testing.assert_array_equal(row["beta"], call["beta"][0, 0].numpy())
        shown = float(row["alpha"].sum() + row["beta"].sum())
        assert 0.0 < shown < total


def test_without_views_the_rows_of_one_batch_share_the_normalisation(tmp_path, prepared, spy):
    folder, _ = prepared
    run, _ = _run(tmp_path, folder, views=False, batch_size=2)
    rows = weight_map_rows(run, count=3, device="cpu")
    assert len(spy) == 2  # slices [0, 1] in one call, slice [2] in the next
    assert [call["alpha"].shape[0] for call in spy] == [2, 1]
    sums = [float(row["alpha"].sum() + row["beta"].sum()) for row in rows]
    assert sums[0] + sums[1] == pytest.approx(1.0, abs=1e-5)
    assert sums[2] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < sums[0] < 1.0


def test_l2rw_rows_have_zero_beta_and_the_thresholded_prediction(tmp_path, prepared, spy):
    folder, _ = prepared
    run, _ = _run(tmp_path, folder, name="l2rw")
    rows = weight_map_rows(run, count=3, device="cpu")
    assert len(rows) == 3
    assert all(call["beta"] is None for call in spy)
    for row in rows:
        assert not row["beta"].any()
        assert set(np.unique(row["pseudo"])) <= {0.0, 1.0}
        assert float(row["alpha"].sum()) == pytest.approx(1.0, abs=1e-5)  # no views: one slice per call


def test_the_engine_sees_the_checkpoints_momentum_and_the_last_epochs_learning_rate(tmp_path, prepared, spy):
    folder, _ = prepared
    run, saved = _run(tmp_path, folder)
    last = weight_map_rows(run, checkpoint="last", count=1, device="cpu")
    expected_lr = 0.01 * lr_factor(EPOCH - 1, _config(folder).schedule, epochs=5)
    assert spy[0]["lr"] == pytest.approx(expected_lr, rel=1e-12)
    assert expected_lr != 0.01
    assert saved  # the real step gave every parameter that took part a momentum buffer
    for index, expected in saved.items():
        assert torch.equal(spy[0]["buffers"][index], expected)
    final = weight_map_rows(run, checkpoint="final", count=1, device="cpu")
    assert all(buffer is None for buffer in spy[1]["buffers"])  # final.pt holds no optimizer state
    assert last[0]["title"] == final[0]["title"]
    assert not np.array_equal(last[0]["alpha"], final[0]["alpha"])  # momentum moves the look-ahead point


def test_the_same_seed_gives_the_same_rows_and_the_run_folder_is_not_written(tmp_path, prepared):
    folder, _ = prepared
    run, _ = _run(tmp_path, folder)
    files = sorted(run.rglob("*"))
    stamps = [(path, path.stat().st_mtime_ns, path.stat().st_size) for path in files]
    first = weight_map_rows(run, count=1, seed=1, device="cpu")
    again = weight_map_rows(run, count=1, seed=1, device="cpu")
    for key in KEYS[:-1]:
        np.testing.assert_array_equal(first[0][key], again[0][key])
    assert first[0]["title"] == again[0]["title"]
    titles = {weight_map_rows(run, count=1, seed=seed, device="cpu")[0]["title"] for seed in range(4)}
    assert len(titles) > 1  # the seed picks the slice
    assert sorted(run.rglob("*")) == files
    assert [(path, path.stat().st_mtime_ns, path.stat().st_size) for path in files] == stamps


def test_only_foreground_slices_are_drawn_however_many_are_asked_for(tmp_path, prepared):
    folder, _ = prepared
    run, _ = _run(tmp_path, folder, views=False, batch_size=3)
    rows = weight_map_rows(run, count=10, device="cpu")
    assert [row["title"] for row in rows] == FOREGROUND_SLICES


def test_bad_requests_are_user_errors(tmp_path, prepared):
    folder, _ = prepared
    with pytest.raises(UserError, match="run folder not found"):
        weight_map_rows(tmp_path / "nowhere", device="cpu")
    run, _ = _run(tmp_path, folder, name="baseline")
    with pytest.raises(UserError, match="method 'baseline' learns no α/β weights"):
        weight_map_rows(run, device="cpu")
    run, _ = _run(tmp_path, folder)
    with pytest.raises(UserError, match="--count: must be 1 or more, got 0"):
        weight_map_rows(run, count=0, device="cpu")
    with pytest.raises(UserError, match="checkpoint not found"):
        weight_map_rows(run, checkpoint=str(tmp_path / "missing.pt"), device="cpu")
    # an optimizer state of one more parameter (a last.pt from before the unused encoder stage went)
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    group["params"] = [*group["params"], len(group["params"])]
    save_checkpoint(state, last)
    with pytest.raises(UserError, match=r"\(last\): its optimizer state does not fit.*--checkpoint final"):
        weight_map_rows(run, device="cpu")
    assert len(weight_map_rows(run, checkpoint="final", count=1, device="cpu")) == 1


def test_three_label_rows_show_class_maps_in_grey_levels_and_per_pixel_weights(tmp_path, spy):
    folder = tmp_path / "zones"
    arrays = write_prepared(folder, ZONES_SPLITS, **ZONES)  # rater2: Case01 and Case04 (no reference)
    run = tmp_path / "run-zones"
    _write_run(run, _config(folder, noise="rater2"), in_channels=ZONES["channels"], classes=3)
    rows = weight_map_rows(run, count=3, device="cpu")
    # the slices with foreground in their reference: Case04 has none, so Case01's two
    assert [row["title"] for row in rows] == ["Case01 z=1", "Case01 z=2"]
    for row, call in zip(rows, spy, strict=True):
        _, z = _parse(row["title"])
        assert call["alpha"].shape == call["beta"].shape == (5, SIZE, SIZE)  # [V, h, w]: per pixel
        np.testing.assert_array_equal(row["alpha"], call["alpha"][0].numpy())
        np.testing.assert_array_equal(row["noisy"], arrays["Case01"]["noisy_rater2"][z] / 2)
        np.testing.assert_array_equal(row["reference"], arrays["Case01"]["mask"][z] / 2)
        np.testing.assert_allclose(row["image"], arrays["Case01"]["image"][z, 0], atol=1e-6)
        assert set(np.unique(row["reference"])) == {0.0, 0.5, 1.0}
        assert set(np.unique(row["pseudo"])) <= {0.0, 0.5, 1.0}
        assert (row["alpha"] >= 0).all()
        assert (row["beta"] >= 0).all()
