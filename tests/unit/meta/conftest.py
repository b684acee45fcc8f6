"""Tiny BatchNorm networks and warmed-up SGD, Adam and AdamW optimisers for the meta-engine tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The reference's setting is "momentum_wd"; the others cover every branch of the SGD update.
SGD_SETTINGS = {
    "plain": {"lr": 0.1},
    "momentum_wd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "nesterov_wd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True},
    "dampening_wd": {"lr": 0.1, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-4},
}
# Adam with coupled weight decay (λθ added to the gradient), AdamW with decoupled decay θ(1 − lr·λ), and
# both without decay (the first step's fallback needs g0 = 0).
ADAM_SETTINGS = {
    "adam_wd": (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 1e-2}),
    "adam": (torch.optim.Adam, {"lr": 1e-2}),
}


def make_optimizer(setting: str, params) -> torch.optim.Optimizer:
    """The optimiser of ``setting``: an SGD_SETTINGS key (SGD) or an ADAM_SETTINGS key."""
    if setting in ADAM_SETTINGS:
        kind, kwargs = ADAM_SETTINGS[setting]
        return kind(params, **kwargs)
    return torch.optim.SGD(params, **SGD_SETTINGS[setting])


class TinySegNet(nn.Module):
    """Two-level BN conv net: [N, 1, H, W] -> logits [N, classes, H, W] (H, W even)."""

    def __init__(self, width: int = 4, classes: int = 1) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.head = nn.Conv2d(2 * width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.enc(x)
        up = F.interpolate(self.down(skip), scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([skip, up], dim=1))


class TinyClsNet(nn.Module):
    """BN conv net: [N, 1, 8, 8] -> logits [N, 4]."""

    def __init__(self, width: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


def tiny_unetpp() -> nn.Module:
    """smp UNet++ with a resnet18 encoder cut at depth 3 (its layer3/layer4 stay unused)."""
    import segmentation_models_pytorch as smp

    return smp.UnetPlusPlus(
        "resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(16, 8, 4),
        in_channels=1,
        classes=1,
    )


@dataclass
class Case:
    """A model, its warmed-up optimiser and one call's batches."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: Tensor
    noisy: Tensor
    pseudo: Tensor
    meta_inputs: Tensor
    meta_targets: Tensor
    loss: str

    def call_args(self) -> tuple:
        return (
            self.model,
            self.optimizer,
            self.inputs,
            self.noisy,
            self.pseudo,
            self.meta_inputs,
            self.meta_targets,
        )


SEG_CE_CLASSES = 3  # "seg_ce": K = 3 labels, per-pixel softmax cross-entropy
LOSSES = {"seg": "bce", "unetpp": "bce", "cls": "ce", "seg_ce": "ce"}


def _batch(kind: str, n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Float64 images [n, 1, size, size] and targets: class indices [n] ("cls") or [n, size, size]
    ("seg_ce"), or 0/1 masks [n, 1, size, size]."""
    images = torch.randn(n, 1, size, size, generator=generator, dtype=torch.float64)
    if kind == "cls":
        return images, torch.randint(0, 4, (n,), generator=generator)
    if kind == "seg_ce":
        return images, torch.randint(0, SEG_CE_CLASSES, (n, size, size), generator=generator)
    return images, (torch.rand(n, 1, size, size, generator=generator) > 0.5).double()


def _mean_cost(kind: str, logits: Tensor, targets: Tensor) -> Tensor:
    if LOSSES[kind] == "ce":
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def make_case(
    kind: str, setting: str = "momentum_wd", *, steps: int = 3, seed: int = 0, device: str = "cpu"
) -> Case:
    """Build ``kind`` ("seg", "cls", "unetpp", "seg_ce") in float64 on ``device``, then take ``steps`` real
    steps."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # data drawn on the CPU: the same on every device
    data_kind = "seg" if kind == "unetpp" else kind
    size = {"seg": 16, "cls": 8, "unetpp": 32, "seg_ce": 16}[kind]

    def batch(n: int) -> tuple[Tensor, Tensor]:
        images, targets = _batch(data_kind, n, size, generator)
        return images.to(device), targets.to(device)

    networks = {
        "seg": TinySegNet,
        "cls": TinyClsNet,
        "unetpp": tiny_unetpp,
        "seg_ce": lambda: TinySegNet(classes=SEG_CE_CLASSES),
    }
    model = networks[kind]().double().to(device).train()
    optimizer = make_optimizer(setting, model.parameters())
    for _ in range(steps):
        images, targets = batch(4)
        optimizer.zero_grad()
        _mean_cost(data_kind, model(images), targets).backward()
        optimizer.step()
    inputs, noisy = batch(6)
    meta_inputs, meta_targets = batch(4)
    with torch.no_grad():
        logits = model(inputs)
    loss = LOSSES[kind]
    pseudo = logits.argmax(dim=1) if loss == "ce" else (logits > 0).double()
    return Case(model, optimizer, inputs, noisy, pseudo, meta_inputs, meta_targets, loss)


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: the nets are tiny, and on a shared CPU OpenMP spin-waits make timings erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=sorted(SGD_SETTINGS))
def sgd_setting(request) -> str:
    """Each SGD setting in turn."""
    return request.param


@pytest.fixture
def sgd_kwargs(sgd_setting) -> dict:
    """The ``torch.optim.SGD`` keyword arguments of each setting in turn."""
    return SGD_SETTINGS[sgd_setting]


@pytest.fixture
def case_factory():
    """``make_case`` as a fixture: ``case_factory(kind, setting, steps=..., seed=...)``."""
    return make_case
