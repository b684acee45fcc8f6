"""Golden numbers of two seeded L2B iterations (ClassificationStep), in float64 on the CPU.

L2B's loss is ``Σ α·CE(y) + β·CE(ŷ)`` with α, β from the forward-mode meta engine on a clean meta batch;
with mixup the noisy-label cost is ``λ·CE(y) + (1−λ)·CE(y[π])``. The numbers are pinned, so any change in
how the terms are combined (β's term dropped, a weight halved, α and β swapped, λ applied the wrong way
round) fails here even when every property test still passes. If a change is meant to alter them,
recompute them (see ``EXPECTED``) and say so in the commit.

Precision: parameters, inputs and the meta engine are float64, but the real forward returns float32 logits
(``ClassificationStep._forward`` casts, as it does for AMP), so the loss carries float32 rounding. Measured
spread between ATen's scalar and its AVX2/AVX-512 CPU kernels (``ATEN_CPU_CAPABILITY``): at most 3e-9
relative; ``REL`` = 1e-7. The changes this file is meant to catch move the numbers far more (dropping β's
term, or mixup_alpha 2 → 4: at least 2e-4 relative).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
from torch import nn

from mlbseg.cls.config import MethodConfig
from mlbseg.cls.step import ClassificationStep
from mlbseg.engine.config import OptimConfig
from mlbseg.engine.optim import build_optimizer

K = 3
METHOD = MethodConfig(name="l2b", engine="forward", normalize="org", meta_batch_size=3)
MIXUP = dataclasses.replace(METHOD, mixup=True, mixup_alpha=2.0)
OPTIM = OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, grad_clip_norm=1.0)
SEED = 3


def build_step(model: nn.Module, method=METHOD, optim=OPTIM, seed=SEED) -> ClassificationStep:
    """The only place that constructs the step: adapt this when the constructor changes.

    SGD from ``optim``, the step's random sources (mixup pairing and λ) seeded with ``seed``, full precision.
    """
    optimizer = build_optimizer(model, optim)
    return ClassificationStep(
        model, optimizer, method=method, grad_clip_norm=optim.grad_clip_norm, seed=seed, amp_dtype=None
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Default dtype ``dtype`` inside the block (parameters, inputs, random draws); restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def tiny_net() -> nn.Module:
    """Conv → BatchNorm → ReLU → pool → Linear, seeded: [N, 3, 8, 8] -> [N, K] logits."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, K),
    )  # fmt: skip


def images_of(classes: torch.Tensor, seed: int) -> torch.Tensor:
    """[N, 3, 8, 8]: class c brightens channel c, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(classes), 3, 8, 8, generator=generator, dtype=torch.float64)
    return noise + 1.5 * nn.functional.one_hot(classes, K).to(torch.float64)[:, :, None, None]


def batches(index: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Training images with two wrong labels out of six, and a clean meta batch of one image per class."""
    clean = torch.tensor([0, 1, 2, 0, 1, 2])
    noisy = torch.tensor([0, 1, 2, 1, 2, 2]) if index == 0 else torch.tensor([2, 1, 2, 0, 0, 2])
    meta_labels = torch.arange(K)
    return images_of(clean, 30 + index), noisy, (images_of(meta_labels, 40 + index), meta_labels)


def params_abs_sum(model: nn.Module) -> float:
    return float(sum(param.detach().abs().sum() for param in model.parameters()))


def measure(method=METHOD) -> dict[str, float]:
    """Two meta-weighted iterations; the numbers pinned by :data:`EXPECTED`."""
    model = tiny_net()
    step = build_step(model, method=method)
    before = [param.detach().clone() for param in model.parameters()]
    numbers: dict[str, float] = {}
    for index in range(2):
        images, labels, meta = batches(index)
        out = step(images, labels, meta)
        position = torch.arange(1, len(labels) + 1, dtype=out.alpha.dtype)  # an order-sensitive fingerprint
        numbers[f"loss_{index}"] = float(out.loss)
        numbers[f"alpha_sum_{index}"] = float(out.alpha.sum())
        numbers[f"beta_sum_{index}"] = float(out.beta.sum())
        numbers[f"alpha_by_position_{index}"] = float((position * out.alpha).sum())
        numbers[f"beta_by_position_{index}"] = float((position * out.beta).sum())
        numbers[f"logits_sum_{index}"] = float(out.logits.sum())
    numbers["params_abs_sum"] = params_abs_sum(model)
    numbers["update_abs_sum"] = float(
        sum((param.detach() - old).abs().sum() for param, old in zip(model.parameters(), before, strict=True))
    )
    numbers["bn_running_mean_abs_sum"] = float(model[1].running_mean.abs().sum())
    numbers["bn_running_var_sum"] = float(model[1].running_var.sum())
    return numbers


# Produced at commit a7544e8 (git -C /work/main rev-parse --short HEAD) on 2026-12-01, CPU, torch 2.14.1:
# `with default_dtype(torch.float64): measure()` and `measure(MIXUP)`, each value printed with repr().
EXPECTED = {
    "loss_0": 1.0003565486795483,
    "alpha_sum_0": 0.6321540718008577,
    "beta_sum_0": 0.36784592819914236,
    "alpha_by_position_0": 1.9051191136130479,
    "beta_by_position_0": 1.6408109700113327,
    "logits_sum_0": -2.860666513442993,
    "loss_1": 0.8679849555665549,
    "alpha_sum_1": 0.6452404978876323,
    "beta_sum_1": 0.3547595021123676,
    "alpha_by_position_1": 2.8034838482866977,
    "beta_by_position_1": 1.5720286960169654,
    "logits_sum_1": -2.9055700302124023,
    "params_abs_sum": 18.22423152129852,
    "update_abs_sum": 2.223428530336613,
    "bn_running_mean_abs_sum": 0.08934293190531585,
    "bn_running_var_sum": 3.6372800954048645,
}
EXPECTED_MIXUP = {
    "loss_0": 0.8455022567448792,
    "alpha_sum_0": 0.6621561266658729,
    "beta_sum_0": 0.3378438733341271,
    "alpha_by_position_0": 2.8862375594511214,
    "beta_by_position_0": 2.0270632400047623,
    "logits_sum_0": -2.832963466644287,
    "loss_1": 0.8843738299858351,
    "alpha_sum_1": 0.589797372445565,
    "beta_sum_1": 0.41020262755443526,
    "alpha_by_position_1": 2.7851637032685774,
    "beta_by_position_1": 2.2842158546610714,
    "logits_sum_1": -2.9071264266967773,
    "params_abs_sum": 18.259156024293432,
    "update_abs_sum": 2.229828550545778,
    "bn_running_mean_abs_sum": 0.08596153357484881,
    "bn_running_var_sum": 3.5094148816101147,
}
REL = 1e-7


@pytest.fixture(scope="module")
def numbers() -> dict[str, float]:
    """:func:`measure` in float64, once for the module."""
    with default_dtype(torch.float64):
        return measure()


def test_two_l2b_iterations_reproduce_the_golden_numbers(numbers):
    assert numbers == pytest.approx(EXPECTED, rel=REL)


def test_two_l2b_iterations_with_mixup_reproduce_the_golden_numbers():
    with default_dtype(torch.float64):
        numbers = measure(MIXUP)
    assert numbers == pytest.approx(EXPECTED_MIXUP, rel=REL)


def test_alpha_and_beta_together_sum_to_one(numbers):
    for index in range(2):
        assert math.isclose(numbers[f"alpha_sum_{index}"] + numbers[f"beta_sum_{index}"], 1.0, rel_tol=1e-9)
        assert numbers[f"beta_sum_{index}"] > 0.0
