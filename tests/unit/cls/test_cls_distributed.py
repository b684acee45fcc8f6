"""One L2B classification iteration on 2 gloo processes equals one process on the concatenated batch.

float64 throughout, a BatchNorm-free net (batch statistics of a half batch would differ from the whole),
momentum and weight decay live in the optimizer (a warm-up step first), so the virtual step, the weights
normalised over the global batch, the weighted loss scaled by the process count, the averaged gradients
and the clipped update are all exercised.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mlbseg.cls.config import MethodConfig
from mlbseg.cls.step import ClassificationStep, EpochMeter
from mlbseg.engine.distributed import SINGLE, Distributed, distributed_session

WORLD, BATCH, META, CLASSES = 2, 8, 6, 4


def _batches() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {
        "warm": torch.randn(BATCH, 3, 4, 4, generator=generator, dtype=torch.float64),
        "images": torch.randn(BATCH, 3, 4, 4, generator=generator, dtype=torch.float64),
        "labels": torch.randint(0, CLASSES, (BATCH,), generator=generator),
        "meta_images": torch.randn(META, 3, 4, 4, generator=generator, dtype=torch.float64),
        "meta_labels": torch.randint(0, CLASSES, (META,), generator=generator),
    }


def _part(tensor: torch.Tensor, dist: Distributed) -> torch.Tensor:
    return tensor.chunk(dist.world_size)[dist.rank]


def _iteration(dist: Distributed) -> dict:
    """α, β, the statistics and the parameters after a warm-up step and one L2B step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, CLASSES)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step = ClassificationStep(
        model, optimizer, method=MethodConfig(name="l2b"), grad_clip_norm=1.0, seed=3, dist=dist
    )
    data = {name: _part(tensor, dist) for name, tensor in _batches().items()}
    step(data["warm"], data["labels"])  # mean CE: momentum buffers exist afterwards
    out = step(data["images"], data["labels"], (data["meta_images"], data["meta_labels"]))
    meter = EpochMeter(torch.device("cpu"), dist)
    meter.add(out, data["labels"], data["labels"])
    return {
        "alpha": out.alpha,
        "beta": out.beta,
        "stats": meter.means(),
        "params": [param.detach().clone() for param in model.parameters()],
    }


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)}
        | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    with distributed_session(torch.device("cpu")) as dist:
        torch.save(_iteration(dist), f"{out}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls_ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_two_processes_equal_one_process_on_the_concatenated_batch(parts):
    single = _iteration(SINGLE)
    for key in ("alpha", "beta"):
        both = torch.cat([part[key] for part in parts])
        torch.testing.assert_close(both, single[key], rtol=1e-10, atol=1e-12)
        assert float(single[key].sum()) > 0
    for part in parts:
        for actual, expected in zip(part["params"], single["params"], strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
        for name in ("loss", "train_acc_noisy", "train_acc_clean"):  # the shares are per-process means
            assert part["stats"][name] == pytest.approx(single["stats"][name], rel=1e-10), name


def test_one_process_on_half_the_batch_moves_differently(parts):
    """Without the collectives rank 0's half alone ends elsewhere: the parity above is not vacuous."""
    halves = _iteration(_HalfAlone())
    moved = [float((a - b).abs().max()) for a, b in zip(halves["params"], parts[0]["params"], strict=True)]
    assert max(moved) > 1e-6


class _HalfAlone(Distributed):
    """Rank 0 of 2 for the batch split, but a single process for every collective."""

    def __init__(self) -> None:
        super().__init__(rank=0, world_size=2)

    @property
    def enabled(self) -> bool:
        return False
