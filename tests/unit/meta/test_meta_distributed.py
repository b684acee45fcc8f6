"""Two gloo processes, each with half of the batch, reproduce one process on the concatenated batch.

``bootstrap_weights(distributed=True)`` must return each process's part of the single-process weights, and
one optimiser step (SGD, Adam, AdamW) on ``world_size · Σ α·ℓ`` (+ mean terms) with averaged gradients must
equal the single-process step. The nets use GroupNorm: BatchNorm couples the samples of a batch, so its
statistics (and everything after them) differ between a half batch and the whole.
"""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mlbseg.meta import bootstrap_weights
from mlbseg.meta.scores import average_across_processes

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

WORLD = 2
# name: (loss, method, normaliser, with an extra mean-type loss, optimiser)
SCENARIOS = {
    "seg_forward_org_extra": ("bce", "forward", "org", True, "sgd"),
    "seg_lookahead_org_extra": ("bce", "lookahead", "org", True, "sgd"),
    "seg_forward_softmax_per_sample": ("bce", "forward", "softmax", False, "sgd"),
    "seg_forward_sigmoid": ("bce", "forward", "sigmoid_sum", False, "sgd"),
    "cls_forward_softmax_over_batch_extra": ("ce", "forward", "softmax", True, "sgd"),
    "cls_lookahead_org": ("ce", "lookahead", "org", False, "sgd"),
    "seg_forward_org_extra_adamw": ("bce", "forward", "org", True, "adamw"),
    "cls_lookahead_org_adam": ("ce", "lookahead", "org", False, "adam"),
}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
}


class GroupNormSegNet(nn.Module):
    """[N, 1, H, W] -> logits [N, 1, H, W]; GroupNorm, so every sample is computed on its own."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.GroupNorm(2, width),
            nn.ReLU(),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, x):
        return self.body(x)


class GroupNormClsNet(nn.Module):
    """[N, 1, 8, 8] -> logits [N, 4]."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.fc = nn.Linear(4 * width, 4)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def _extra(logits):
    return 0.3 * logits.float().sigmoid().square().mean()


def _costs(loss, logits, targets):
    if loss == "ce":
        return F.cross_entropy(logits, targets, reduction="none")
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def _case(loss: str, optimizer_name: str = "sgd"):
    """Model (2 warm-up steps: momentum buffers or Adam moments exist), optimiser, global batches; float64."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(5)
    model = (GroupNormClsNet() if loss == "ce" else GroupNormSegNet()).double()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())

    def batch(n):
        images = torch.randn(n, 1, 8, 8, generator=generator, dtype=torch.float64)
        if loss == "ce":
            return images, torch.randint(0, 4, (n,), generator=generator)
        return images, (torch.rand(n, 1, 8, 8, generator=generator) > 0.5).double()

    for _ in range(2):
        images, targets = batch(4)
        optimizer.zero_grad()
        _costs(loss, model(images), targets).mean().backward()
        optimizer.step()
    inputs, noisy = batch(4)
    meta_inputs, meta_targets = batch(4)
    with torch.no_grad():
        logits = model(inputs)
    pseudo = logits.argmax(dim=1) if loss == "ce" else (logits > 0).double()
    return model, optimizer, (inputs, noisy, pseudo, meta_inputs, meta_targets)


def _weights_and_step(scenario, rank: int | None):
    """α, β and the parameters after one step: one process (rank None) or this rank's half of the batch."""
    loss, method, normalize, with_extra, optimizer_name = scenario
    model, optimizer, batches = _case(loss, optimizer_name)
    world = 1 if rank is None else WORLD
    if rank is not None:
        half = len(batches[0]) // WORLD
        batches = tuple(part[rank * half : (rank + 1) * half] for part in batches)
    inputs, noisy, pseudo = batches[:3]
    extra = _extra if with_extra else None
    alpha, beta = bootstrap_weights(
        model, optimizer, *batches, loss=loss, method=method, normalize=normalize, extra_loss=extra,
        distributed=rank is not None,
    )  # fmt: skip
    logits = model(inputs)
    weighted = (alpha * _costs(loss, logits, noisy)).sum() + (beta * _costs(loss, logits, pseudo)).sum()
    total = world * weighted + (0 if extra is None else extra(logits))
    optimizer.zero_grad()
    total.backward()
    if rank is not None:
        average_across_processes([param.grad for param in model.parameters()])
    optimizer.step()  # no clipping here: it would hide a wrong overall scale of the gradient
    return {"alpha": alpha, "beta": beta, "params": [param.detach().clone() for param in model.parameters()]}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {name: _weights_and_step(scenario, rank) for name, scenario in SCENARIOS.items()}
    finally:
        dist.destroy_process_group()
    torch.save(results, f"{out}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's results for every scenario (both ranks run in one spawn, to pay the start-up once)."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_two_processes_equal_one_process_on_the_concatenated_batch(ranks, name):
    single = _weights_and_step(SCENARIOS[name], rank=None)
    for key in ("alpha", "beta"):
        both = torch.cat([ranks[0][name][key], ranks[1][name][key]])
        torch.testing.assert_close(both, single[key], rtol=1e-9, atol=1e-12 * float(single[key].abs().max()))
    for rank in range(WORLD):  # every rank takes the single-process update
        for actual, expected in zip(ranks[rank][name]["params"], single["params"], strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_weights_of_the_half_batch_alone_differ(ranks):
    """The comparison has teeth: rank 0's weights are not what its half batch gives on its own."""
    model, optimizer, batches = _case("bce")
    half = tuple(part[:2] for part in batches)
    alpha, _ = bootstrap_weights(model, optimizer, *half, loss="bce", extra_loss=_extra)
    assert not torch.allclose(alpha, ranks[0]["seg_forward_org_extra"]["alpha"], rtol=1e-3)


def test_syncbatchnorm_without_a_process_group_gives_the_batchnorm_weights():
    """mlbseg does not convert to SyncBatchNorm (see mlbseg.engine.distributed); a user's converted model
    still works on one process: without a process group SyncBatchNorm is plain BatchNorm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
    model = model.double()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert isinstance(synced[1], nn.SyncBatchNorm)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(6, 1, 8, 8, generator=generator, dtype=torch.float64)
    masks = (torch.rand(6, 1, 8, 8, generator=generator) > 0.5).double()
    weights = []
    for net in (model, synced):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        weights.append(
            bootstrap_weights(net, optimizer, images[:4], masks[:4], None, images[4:], masks[4:])[0]
        )
    torch.testing.assert_close(weights[1], weights[0])
