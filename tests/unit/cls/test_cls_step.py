"""One classification step per method through the shared meta engine, its meters, and the data order."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mlbseg.cls.batches import EpochBatchSampler, MetaBatchSampler, SeededItems
from mlbseg.cls.config import MethodConfig
from mlbseg.cls.data import ArrayDataset
from mlbseg.cls.step import ClassificationStep, EpochMeter, StepOutput, WeightLog
from mlbseg.cls.transforms import cifar_transform
from mlbseg.meta import bootstrap_weights

K = 5


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, K),
    )  # fmt: skip


def make_step(name="l2b", clip=None, lr=0.1, momentum=0.9, weight_decay=5e-4, **method):
    model = tiny_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return ClassificationStep(
        model, optimizer, method=MethodConfig(name=name, **method), grad_clip_norm=clip, seed=3
    )


def batch(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, K, (n,), generator=gen)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture
def warm_step():
    """An l2b step whose optimizer already has momentum buffers (two plain steps taken)."""
    step = make_step("l2b")
    for seed in (10, 11):
        step(*batch(8, seed))
    return step


def test_l2b_step_uses_the_engine_with_argmax_pseudo_labels(warm_step):
    images, labels = batch(8, 0)
    meta = batch(6, 1)
    model = copy.deepcopy(warm_step.model)  # the engine's expected answer, computed before the step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer.load_state_dict(copy.deepcopy(warm_step.optimizer.state_dict()))
    pseudo = model(images).argmax(dim=1)
    expected_alpha, expected_beta = bootstrap_weights(
        model, optimizer, images, labels, pseudo, *meta, loss="ce", normalize="org"
    )
    before = params(warm_step.model)
    out = warm_step(images, labels, meta)
    assert out.alpha.shape == (8,)
    assert out.beta.shape == (8,)
    assert (out.alpha >= 0).all()
    assert (out.beta >= 0).all()
    torch.testing.assert_close(out.alpha.sum() + out.beta.sum(), torch.tensor(1.0))  # org: α, β jointly
    assert not torch.equal(params(warm_step.model), before)
    assert torch.equal(out.logits.argmax(dim=1), pseudo)
    torch.testing.assert_close(out.alpha, expected_alpha)
    torch.testing.assert_close(out.beta, expected_beta)
    expected_loss = (out.alpha * F.cross_entropy(out.logits, labels, reduction="none")).sum() + (
        out.beta * F.cross_entropy(out.logits, pseudo, reduction="none")
    ).sum()
    torch.testing.assert_close(out.loss, expected_loss)


def mixup_draws(state, n):
    """The λ and pairing π that a step with random-source ``state`` draws next (its ``_draw_mixup``)."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state["mixup_rng"]
    generator = torch.Generator()
    generator.set_state(state["generator"])
    return float(rng.beta(32.0, 32.0)), torch.randperm(n, generator=generator)


@pytest.mark.parametrize("name", ["l2b", "l2rw"])
def test_mixup_step_weights_the_mixed_costs_with_soft_targets(name):
    step = make_step(name, mixup=True, mixup_alpha=32.0)
    for seed in (10, 11):  # warm-up steps (mixed too): momentum buffers, and the random sources advance
        step(*batch(8, seed))
    images, labels = batch(8, 0)
    meta = batch(6, 1)
    lam, pairing = mixup_draws(copy.deepcopy(step.state_dict()), 8)
    mixed = lam * images + (1.0 - lam) * images[pairing]
    onehot = F.one_hot(labels, K).float()
    soft = lam * onehot + (1.0 - lam) * onehot[pairing]  # [N, K]
    model = copy.deepcopy(step.model)  # the engine's expected answer, computed before the step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer.load_state_dict(copy.deepcopy(step.optimizer.state_dict()))
    pseudo = model(mixed).argmax(dim=1) if name == "l2b" else None  # ŷ on the mixed batch
    expected_alpha, expected_beta = bootstrap_weights(
        model, optimizer, mixed, soft, pseudo, *meta, loss="ce", normalize="org"
    )
    before = params(step.model)
    out = step(images, labels, meta)
    assert out.alpha.shape == (8,)
    assert (out.alpha >= 0).all()
    assert not torch.equal(params(step.model), before)
    torch.testing.assert_close(out.alpha, expected_alpha)
    mixed_cost = lam * F.cross_entropy(out.logits, labels, reduction="none") + (1 - lam) * F.cross_entropy(
        out.logits, labels[pairing], reduction="none"
    )
    expected_loss = (out.alpha * mixed_cost).sum()
    total = out.alpha.sum()
    if name == "l2b":
        assert out.beta.shape == (8,)
        assert (out.beta >= 0).all()
        assert torch.equal(out.logits.argmax(dim=1), pseudo)
        torch.testing.assert_close(out.beta, expected_beta)
        expected_loss += (out.beta * F.cross_entropy(out.logits, pseudo, reduction="none")).sum()
        total += out.beta.sum()
    else:
        assert out.beta is None
    torch.testing.assert_close(total, torch.tensor(1.0))  # org: α (and β) jointly
    torch.testing.assert_close(out.loss, expected_loss)
    # The same batch unmixed gives other weights: the mix reaches the engine.
    hard_alpha, _ = bootstrap_weights(
        model, optimizer, images, labels, pseudo, *meta, loss="ce", normalize="org"
    )
    assert not torch.allclose(hard_alpha, expected_alpha)


def test_weighted_mixup_steps_resume_exactly():
    step = make_step("l2b", mixup=True)
    step(*batch(8, 0), meta=batch(6, 5))
    state = copy.deepcopy(step.state_dict())
    weights = copy.deepcopy((step.model.state_dict(), step.optimizer.state_dict()))
    first = step(*batch(8, 1), meta=batch(6, 6))
    fresh = make_step("l2b", mixup=True)
    fresh.model.load_state_dict(weights[0])
    fresh.optimizer.load_state_dict(weights[1])
    fresh.load_state_dict(state)
    again = fresh(*batch(8, 1), meta=batch(6, 6))
    assert torch.equal(again.loss, first.loss)
    assert torch.equal(again.alpha, first.alpha)
    assert torch.equal(again.beta, first.beta)


def test_l2rw_step_has_alpha_only():
    step = make_step("l2rw")
    out = step(*batch(8, 0), meta=batch(6, 1))
    assert out.beta is None
    assert out.alpha.shape == (8,)
    total = float(out.alpha.sum())
    assert total == pytest.approx(1.0, abs=1e-5) or total == 0.0


def test_softmax_weights_with_temperature_are_all_positive_and_sum_to_one():
    step = make_step("l2b", normalize="softmax", temperature=10.0)
    out = step(*batch(8, 0), meta=batch(6, 1))
    assert (out.alpha > 0).all()
    assert (out.beta > 0).all()
    torch.testing.assert_close(out.alpha.sum() + out.beta.sum(), torch.tensor(1.0))


def test_mean_ce_step_without_meta_batch():
    step = make_step("l2b")  # warm-up: no meta batch given
    images, labels = batch(8, 0)
    before = params(step.model)
    out = step(images, labels)
    assert out.alpha is None
    assert out.beta is None
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert not torch.equal(params(step.model), before)


def test_mixup_loss_is_the_reference_convex_combination():
    step = make_step("baseline", mixup=True, mixup_alpha=32.0)
    reference = copy.deepcopy(step.model)
    images, labels = batch(8, 0)
    out = step(images, labels)
    lam = np.random.default_rng([3, 0x6D6978]).beta(32.0, 32.0)
    pairing = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    logits = reference(lam * images + (1 - lam) * images[pairing])
    expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[pairing])
    torch.testing.assert_close(out.loss, expected.float())


def test_step_random_sources_resume_exactly():
    step = make_step("baseline", mixup=True)
    step(*batch(8, 0))
    state = copy.deepcopy(step.state_dict())
    first = step(*batch(8, 1)).loss
    step.load_state_dict(state)
    step.model.load_state_dict(make_step("baseline").model.state_dict())  # same weights as a fresh model
    fresh = make_step("baseline", mixup=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(*batch(8, 1)).loss, step(*batch(8, 1)).loss)
    assert not torch.equal(first, fresh(*batch(8, 1)).loss)  # the sources do advance


def test_gradient_clipping_bounds_the_update():
    step = make_step("baseline", clip=1e-3, lr=1.0, momentum=0.0, weight_decay=0.0)
    before = params(step.model)
    step(*batch(8, 0))
    change = (params(step.model) - before).norm()
    assert 0 < change <= 1e-3 * (1 + 1e-5)


def test_epoch_meter_statistics():
    meter = EpochMeter(torch.device("cpu"))
    logits = torch.eye(K)[[0, 1, 2, 3]] * 5  # predicts 0, 1, 2, 3
    labels, clean = torch.tensor([0, 1, 4, 4]), torch.tensor([0, 2, 2, -1])
    alpha, beta = torch.tensor([0.1, 0.2, 0.3, 0.0]), torch.tensor([0.1, 0.1, 0.1, 0.1])
    meter.add(StepOutput(torch.tensor(2.0), logits, alpha, beta), labels, clean)
    meter.add(StepOutput(torch.tensor(4.0), logits, torch.zeros(4), torch.zeros(4)), labels, clean)
    stats = meter.means()
    assert stats["loss"] == pytest.approx(3.0)
    assert stats["train_acc_noisy"] == pytest.approx(0.5)  # samples 0, 1 of 4, twice
    assert stats["train_acc_clean"] == pytest.approx(2 / 3)  # samples 0, 2 of the 3 known, twice
    assert stats["beta_share"] == pytest.approx(0.4 / 1.0 / 2)  # 0.4 in step 1, 0 in step 2 (all zero)
    assert stats["alpha_on_noisy"] == pytest.approx((0.2 + 0.3) / 0.6 / 2)  # samples 1, 2 are corrupted
    assert stats["zero_weight_steps"] == 1.0
    plain = EpochMeter(torch.device("cpu"))
    plain.add(StepOutput(torch.tensor(1.0), logits), labels, torch.full((4,), -1))
    assert set(plain.means()) == {"loss", "train_acc_noisy"}


def test_weight_log_keeps_the_tracked_samples(tmp_path):
    noisy, clean = np.arange(20) % K, (np.arange(20) + 1) % K
    log = WeightLog.spread(3, noisy, clean, torch.device("cpu"))
    assert log.tracked.tolist() == [0, 10, 19]
    logits = torch.eye(K)[[1, 2, 3, 4]]
    out = StepOutput(
        torch.tensor(0.0), logits, torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1.0, 2, 3, 4])
    )
    log.record(torch.tensor([5, 19, 0, 7]), out)
    log.save(tmp_path / "w.npz")
    saved = np.load(tmp_path / "w.npz")
    assert saved["index"].tolist() == [0, 10, 19]
    assert saved["noisy_label"].tolist() == noisy[[0, 10, 19]].tolist()
    assert saved["clean_label"].tolist() == clean[[0, 10, 19]].tolist()
    assert saved["pseudo_label"].tolist() == [3, -1, 2]
    np.testing.assert_allclose(saved["alpha"], [0.3, np.nan, 0.2])
    np.testing.assert_allclose(saved["beta"], [3.0, np.nan, 2.0])
    log.reset()
    assert torch.isnan(log.values).all()


def test_epoch_batches_depend_on_seed_and_epoch_only():
    sampler = EpochBatchSampler(10, 4, seed=5)
    sampler.set_epoch(2)
    first = list(sampler)
    assert [len(b) for b in first] == [4, 4, 2]  # the last partial batch is kept
    assert sorted(i for b in first for i, _ in b) == list(range(10))
    again = EpochBatchSampler(10, 4, seed=5)
    again.set_epoch(2)
    assert list(again) == first
    sampler.set_epoch(3)
    assert list(sampler) != first
    short = EpochBatchSampler(10, 4, seed=5, max_batches=2)
    short.set_epoch(2)
    assert list(short) == first[:2]
    assert len(short) == 2


def test_epoch_batches_follow_a_dataset_sampler():
    class EveryOther:
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

        def indices(self):
            return np.arange(self.epoch, 12, 2)

        def __len__(self):
            return len(self.indices())

    sampler = EpochBatchSampler(12, 4, seed=0, sampler=EveryOther())
    sampler.set_epoch(1)
    assert [[i for i, _ in b] for b in sampler] == [[1, 3, 5, 7], [9, 11]]
    assert len(sampler) == 2


def test_meta_batches_restart_anywhere_in_the_stream():
    stream = iter(MetaBatchSampler(10, 3, seed=1))
    batches = [next(stream) for _ in range(7)]
    first_pass = [i for b in batches[:3] for i, _ in b]
    assert len(set(first_pass)) == 9  # one pass: three disjoint batches of a permutation
    assert batches[3] != batches[0]  # the next pass reshuffles
    restarted = iter(MetaBatchSampler(10, 3, seed=1, start=4))
    assert [next(restarted) for _ in range(3)] == batches[4:7]
    small = next(iter(MetaBatchSampler(2, 5, seed=0)))
    assert len(small) == 5
    assert {i for i, _ in small} <= {0, 1}  # drawn with replacement


def test_augmentation_depends_on_item_seeds_not_on_workers():
    rng = np.random.default_rng(0)
    data = ArrayDataset(
        rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
        np.arange(6) % 3,
        cifar_transform("cifar10", True),
    )
    sampler = EpochBatchSampler(6, 3, seed=0)
    sampler.set_epoch(0)
    state = torch.get_rng_state()
    serial = [b[0] for b in DataLoader(SeededItems(data), batch_sampler=sampler, generator=torch.Generator())]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    parallel = [b[0] for b in DataLoader(SeededItems(data), batch_sampler=sampler, num_workers=2)]
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a, b)
    first, _, _ = SeededItems(data)[(0, 1)]
    assert torch.equal(first, SeededItems(data)[(0, 1)][0])
    assert any(not torch.equal(first, SeededItems(data)[(0, seed)][0]) for seed in range(2, 6))
