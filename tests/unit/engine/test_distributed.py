"""The collectives of a run across processes, and one full MLB-Seg iteration on 2 gloo processes.

The iteration test runs :class:`~mlbseg.seg.step.SegmentationStep` (meta weights, the weighted step scaled
by the number of processes, consistency and EMA terms, gradient averaging, clipping, the meta-batch step)
on each half of a batch and checks it against one process on the whole batch, and so does the DAST test
(two networks, the noisiness ranked over the global batch, the kept labels' mean over the global count).
The nets use GroupNorm: BatchNorm statistics would differ between a half batch and the whole.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mlbseg.engine.distributed import SINGLE, Distributed, distributed_session, launched_world_size
from mlbseg.engine.ema import EMATeacher
from mlbseg.errors import UserError
from mlbseg.seg.config import DataConfig, EMAConfig, MethodConfig, ViewsConfig
from mlbseg.seg.peers import PeerNetwork
from mlbseg.seg.step import Batch, SegmentationStep
from mlbseg.seg.views import ViewParams, make_views

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

WORLD = 2
METHOD = MethodConfig(
    name="mlbseg",
    meta_batch_size=1,
    consistency_weight=1.0,
    views=ViewsConfig(zoom_pads=(2, 4)),
    ema=EMAConfig(enabled=True, noise_std=0.0),  # no input noise: the teacher's targets are deterministic
)


# --- one process ------------------------------------------------------------------------------------------


def test_single_process_collectives_are_identities():
    index = torch.arange(6)
    assert SINGLE.shard(index) is index
    assert SINGLE.gather("x") == ["x"]
    assert SINGLE.all_gather(index) is index
    assert SINGLE.on_main(lambda: 3) == 3
    assert SINGLE.rank_seed(11) == 11
    values = {"loss": torch.tensor(2.0)}
    assert SINGLE.mean_values(values) is values
    tensor = torch.ones(3)
    SINGLE.average([tensor])
    assert torch.equal(tensor, torch.ones(3))
    assert SINGLE.place(torch.device("cpu")) == torch.device("cpu")


def test_shards_partition_the_global_batch_and_seeds_differ_per_rank():
    index = torch.tensor([5, 1, 4, 0, 2, 3])
    parts = [Distributed(rank, 3).shard(index) for rank in range(3)]
    assert [part.tolist() for part in parts] == [[5, 1], [4, 0], [2, 3]]
    seeds = {Distributed(rank, 3).rank_seed(0) for rank in range(3)}
    assert len(seeds) == 3
    assert Distributed(1, 3).rank_seed(0) == Distributed(1, 3).rank_seed(0)  # reproducible


def test_incomplete_torchrun_environment_is_a_user_error():
    assert launched_world_size({}) == 1
    assert launched_world_size({"WORLD_SIZE": "1"}) == 1
    with pytest.raises(UserError, match="RANK, LOCAL_RANK not set"):
        launched_world_size({"WORLD_SIZE": "2"})


# --- two processes ----------------------------------------------------------------------------------------


class GroupNormSegNet(nn.Module):
    """[N, 1, H, W] -> logits [N, 1, H, W]; every sample computed on its own (GroupNorm)."""

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


def _global_batches() -> tuple[Batch, Batch]:
    """Two training and two meta slices of 16×16, each expanded to five views (seeded)."""
    generator = torch.Generator().manual_seed(3)

    def expand(count: int) -> Batch:
        images = torch.randn(count, 1, 16, 16, generator=generator)
        masks = (torch.rand(count, 1, 16, 16, generator=generator) > 0.6).float()
        noisy = (torch.rand(count, 1, 16, 16, generator=generator) > 0.6).float()
        images, (noisy, masks), views = make_views(images, (noisy, masks), generator, zoom_pads=(2, 4))
        return Batch(images, noisy, masks, views)

    return expand(2), expand(2)


def _part(batch: Batch, rank: int) -> Batch:
    """Rank ``rank``'s half of ``batch`` (one slice: its five views)."""
    rows = slice(5 * rank, 5 * rank + 5)
    assert batch.views is not None
    views = ViewParams(batch.views.theta[rows], batch.views.inverse_theta[rows])
    return Batch(batch.images[rows], batch.labels[rows], batch.reference[rows], views)


def _step(dist: Distributed) -> SegmentationStep:
    """A warmed-up step (momentum buffers exist), the same on every process."""
    torch.manual_seed(0)
    model = GroupNormSegNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    teacher = EMATeacher(model, decay=0.99)
    generator = torch.Generator().manual_seed(1)
    step = SegmentationStep(
        model,
        optimizer,
        method=METHOD,
        data=DataConfig(),
        grad_clip_norm=10.0,
        generator=generator,
        teacher=teacher,
        dist=dist,
    )
    batch, meta = _global_batches()
    step(batch, meta, meta_weighting=False)  # a plain step on the whole batch, same everywhere
    return step


def _iteration(dist: Distributed) -> dict:
    """α, β before and the parameters, teacher and mean statistics after one MLB-Seg iteration."""
    step = _step(dist)
    batch, meta = _global_batches()
    if dist.enabled:
        batch, meta = _part(batch, dist.rank), _part(meta, dist.rank)
    weights = step.meta_weights(batch, meta, step.probabilities(batch.images), step.extra_loss(batch))
    stats = step(batch, meta, meta_weighting=True)
    stats.pop("train_dice_reference")  # a batch Dice: not an average of per-process values
    return {
        "alpha": weights.alpha,
        "beta": weights.beta,
        "stats": {name: float(value) for name, value in dist.mean_values(stats).items()},
        "params": [param.detach().clone() for param in step.model.parameters()],
        "teacher": [param.clone() for param in step.teacher.model.parameters()],
    }


def _collectives(dist: Distributed) -> dict:
    """Each collective's result on this process (errors recorded, not raised)."""
    results: dict = {"gather": dist.gather(dist.rank), "main": dist.on_main(lambda: 7 + dist.rank)}
    for name, error in (("user_error", UserError("folder exists")), ("failed", ValueError("disk full"))):
        try:
            dist.on_main(lambda error=error: (_ for _ in ()).throw(error))
        except Exception as err:
            results[name] = (type(err).__name__, str(err))
    tensors = [torch.tensor([float(dist.rank)]), torch.full((2, 2), 2.0 * dist.rank)]
    dist.average(tensors)
    results["average"] = tensors
    module = nn.Linear(2, 2)
    nn.init.constant_(module.weight, float(dist.rank + 1))
    dist.broadcast_module(module)
    results["broadcast"] = module.weight.detach().clone()
    results["mean_values"] = dist.mean_values({"a": torch.tensor(float(dist.rank)), "b": torch.tensor(4.0)})
    results["all_gather"] = dist.all_gather(torch.tensor([10.0 * dist.rank, 10.0 * dist.rank + 1]))
    return results


def _dast_batches() -> tuple[Batch, Batch]:
    """Four training and two meta slices of 16×16 without views (seeded); their labels differ in quality."""
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(6, 1, 16, 16, generator=generator)
    labels = torch.rand(6, 1, 16, 16, generator=generator) > torch.linspace(0.2, 0.8, 6)[:, None, None, None]
    labels = labels.float()
    return Batch(images[:4], labels[:4], labels[:4].clone(), None), Batch(
        images[4:], labels[4:], labels[4:], None
    )


def _dast_iteration(dist: Distributed) -> dict:
    """Both networks' parameters, the memory and the mean statistics after one DAST step."""
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(GroupNormSegNet())
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) for model in models]
    # a memory of the four current scores: the top one is severe, the bottom one slight
    method = MethodConfig(name="dast", dast_queue=4, dast_select_share=0.25, dast_ramp_epochs=0)
    step = SegmentationStep(
        models[0],
        optimizers[0],
        method=method,
        data=DataConfig(),
        grad_clip_norm=10.0,
        generator=torch.Generator().manual_seed(1),
        dist=dist,
        peers=[PeerNetwork(models[1], optimizers[1])],
    )
    batch, meta = _dast_batches()
    if dist.enabled:
        half, meta_half = slice(2 * dist.rank, 2 * dist.rank + 2), slice(dist.rank, dist.rank + 1)
        batch = Batch(batch.images[half], batch.labels[half], batch.reference[half], None)
        meta = Batch(meta.images[meta_half], meta.labels[meta_half], meta.reference[meta_half], None)
    stats = step(batch, meta, meta_weighting=True)
    stats.pop("train_dice_reference")
    return {
        "params": [param.detach().clone() for model in models for param in model.parameters()],
        "memory": step.noisiness.state_dict()["noisiness"],
        "stats": {name: float(value) for name, value in dist.mean_values(stats).items()},
    }


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)}
        | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    with distributed_session(torch.device("cpu")) as dist:
        results = {
            "rank": dist.rank,
            "collectives": _collectives(dist),
            "iteration": _iteration(dist),
            "dast": _dast_iteration(dist),
        }
    torch.save(results, f"{out}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both processes' results (one spawn for every test of this module)."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_collectives_on_two_processes(ranks):
    for rank, result in enumerate(ranks):
        assert result["rank"] == rank
        found = result["collectives"]
        assert found["gather"] == [0, 1]
        assert found["main"] == 7  # rank 0's result everywhere
        assert found["user_error"] == ("UserError", "folder exists")
        expected_failure = "disk full" if rank == 0 else "rank 0 failed: ValueError: disk full"
        assert found["failed"][1] == expected_failure
        torch.testing.assert_close(found["average"][0], torch.tensor([0.5]))
        torch.testing.assert_close(found["average"][1], torch.ones(2, 2))
        torch.testing.assert_close(found["broadcast"], torch.ones(2, 2))
        assert {name: float(value) for name, value in found["mean_values"].items()} == {"a": 0.5, "b": 4.0}
        assert found["all_gather"].tolist() == [0.0, 1.0, 10.0, 11.0]  # rank order on every process


def test_two_process_iteration_equals_one_process_on_the_concatenated_batch(ranks):
    single = _iteration(SINGLE)
    parts = [result["iteration"] for result in ranks]
    for key in ("alpha", "beta"):
        both = torch.cat([part[key] for part in parts])
        torch.testing.assert_close(both, single[key], rtol=1e-4, atol=1e-5 * float(single[key].max()))
        assert float(both.sum()) > 0
    for part in parts:
        for name in ("params", "teacher"):
            for actual, expected in zip(part[name], single[name], strict=True):
                torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
        assert part["stats"].keys() == single["stats"].keys() >= {"loss", "meta_loss", "alpha_mean"}
        for name, value in single["stats"].items():
            assert part["stats"][name] == pytest.approx(value, rel=1e-4), name


def test_one_process_on_its_half_alone_moves_differently(ranks):
    """Teeth: the agreement above needs the global weights; rank 0's half on its own gives other weights."""
    step = _step(SINGLE)
    batch, meta = _global_batches()
    step(_part(batch, 0), _part(meta, 0), meta_weighting=True)
    alone = [param.detach() for param in step.model.parameters()]
    joint = ranks[0]["iteration"]["params"]
    assert not all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(alone, joint, strict=True))


def test_two_process_dast_step_equals_one_process_on_the_concatenated_batch(ranks):
    single = _dast_iteration(SINGLE)
    assert single["stats"]["severe_share"] == 0.25 == single["stats"]["slight_share"]
    for part in (result["dast"] for result in ranks):
        torch.testing.assert_close(part["memory"], single["memory"])  # every process ranks alike
        for actual, expected in zip(part["params"], single["params"], strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
        for name, value in single["stats"].items():
            assert part["stats"][name] == pytest.approx(value, rel=1e-4), name
