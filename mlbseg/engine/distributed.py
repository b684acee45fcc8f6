"""One training run across processes started by ``torchrun`` (docs/design.md §8).

``torchrun --nproc-per-node N -m mlbseg train CONFIG`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. :func:`distributed_session` joins them into one process group (NCCL on CUDA, gloo on
the CPU), each process on ``cuda:LOCAL_RANK`` or the CPU. Without those variables, or with
``WORLD_SIZE=1``, it yields :data:`SINGLE`, whose collectives do nothing, so one code path serves both.

Why there is no ``DistributedDataParallel`` wrapper: the meta engine's ``functional_call`` forwards and its
forward-mode JVP cannot run through a DDP module (pytorch#102197, #130932), and an MLB-Seg iteration takes
two optimizer steps (the weighted step and the step on the meta batch). Instead every process runs the
bare model, and after each backward :meth:`Distributed.average_gradients` averages every gradient with
one all-reduce of a flat buffer: DDP's arithmetic without its overlap of communication and backward (about
44 MB for the 10.9 M parameters of UNet++/resnet34, milliseconds over NVLink). The meta engine fills no
``.grad`` and averages its own two gradients (``bootstrap_weights(distributed=True)``). State-dict keys
stay those of the bare model, so checkpoints are the same for one and for N processes, and the model can be
``torch.compile``-d for the real steps.

BatchNorm stays per process (each normalises with its own part of the batch), not SyncBatchNorm: torch's
``sync_batch_norm`` function has no forward-mode derivative, so the forward engine cannot pass through it
once there are several processes; SyncBatchNorm rejects CPU tensors as soon as a process group exists; and
per-process statistics keep the paper's BatchNorm batch (the five views of one slice on each GPU). Running
statistics are averaged over the processes at the end of every epoch (:meth:`Distributed.average_buffers`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mlbseg.errors import UserError
from mlbseg.meta.scores import average_across_processes

T = TypeVar("T")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run, and the collectives a training step needs.

    Attributes:
        rank: Global rank, 0 to ``world_size - 1``; rank 0 writes the run folder.
        world_size: Number of processes in the run.
        local_rank: Rank on this machine: the CUDA device index.
        group: The process group; None for the default (world) group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: dist.ProcessGroup | None = None

    @property
    def enabled(self) -> bool:
        """More than one process: the collectives communicate."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, metrics and TensorBoard events."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """``cuda:LOCAL_RANK`` for a CUDA run across processes; ``device`` otherwise."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def rank_seed(self, seed: int) -> int:
        """Seed of this process's own randomness: ``seed`` on one process, else derived from (seed, rank).

        Example:
            >>> Distributed().rank_seed(7), Distributed(1, 2).rank_seed(7) != Distributed(0, 2).rank_seed(7)
            (7, True)
        """
        if not self.enabled:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1, dtype=np.uint64)[0] >> 1)

    def shard(self, index: Tensor) -> Tensor:
        """This process's part of a global batch: chunk ``rank`` of ``world_size`` equal chunks.

        Args:
            index: [world_size·B] indices of the global batch, the same on every process.

        Returns:
            [B] indices.
        """
        return index.view(self.world_size, -1)[self.rank] if self.enabled else index

    def average(self, tensors: list[Tensor]) -> None:
        """Replace every tensor by its mean over the processes (one all-reduce; same list everywhere)."""
        if self.enabled:
            average_across_processes(tensors, self.group)

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every process's ``tensor`` concatenated along dim 0 in rank order (one collective).

        Args:
            tensor: [n, ...], the same shape on every process.

        Returns:
            [world_size·n, ...] on every process (``tensor`` itself for one process).
        """
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts)

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average the ``.grad`` of every parameter that has one (the same set on every process).

        Call after ``backward`` and before clipping: every process then clips and steps identically.
        """
        self.average([param.grad for param in parameters if param.grad is not None])

    def average_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) of ``modules``."""
        buffers = [buffer for module in modules for buffer in module.buffers() if buffer.is_floating_point()]
        self.average(buffers)

    def mean_values(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each scalar's mean over the processes (one all-reduce), e.g. the statistics to log."""
        if not self.enabled or not values:
            return values
        stacked = torch.stack([value.detach().float() for value in values.values()])  # [len(values)]
        self.average([stacked])
        return dict(zip(values, stacked.unbind(), strict=True))

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process (once, before training)."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0, group=self.group)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def on_main(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0 only; every process returns its result or raises its error.

        A :class:`UserError` on rank 0 is raised on every process (each exits with its one-line message);
        any other error becomes a ``RuntimeError`` on the others. No process returns before rank 0's
        ``action`` has finished, so this is also a barrier.
        """
        if not self.enabled:
            return action()
        if not self.is_main:
            kind, value = self._broadcast(None)
            if kind == "user_error":
                raise UserError(value)
            if kind == "failed":
                raise RuntimeError(f"rank 0 failed: {value}")
            return value
        try:
            result = action()
        except UserError as err:
            self._broadcast(("user_error", str(err)))
            raise
        except BaseException as err:
            self._broadcast(("failed", f"{type(err).__name__}: {err}"))
            raise
        self._broadcast(("ok", result))
        return result

    def _broadcast(self, outcome: tuple[str, Any] | None) -> tuple[str, Any]:
        box = [outcome]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


SINGLE = Distributed()


def launched_world_size(environ: dict[str, str] | None = None) -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 without it).

    Example:
        >>> launched_world_size({}), launched_world_size({"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0"})
        (1, 4)
    """
    environ = dict(os.environ) if environ is None else environ
    world_size = int(environ.get("WORLD_SIZE", "1"))
    missing = [name for name in LAUNCH_VARIABLES if name not in environ]
    if world_size > 1 and missing:
        raise UserError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; start several processes with "
            "torchrun --nproc-per-node N -m mlbseg train ..."
        )
    return world_size


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[Distributed]:
    """Join the processes started by ``torchrun`` for the length of a run; :data:`SINGLE` without torchrun.

    Initialises the default process group (NCCL for CUDA, gloo for the CPU) unless one exists already
    (then it is used and left alone), pins this process to ``cuda:LOCAL_RANK``, and destroys the group it
    created on exit, after a barrier when the run ended normally (a gloo peer whose partner has already
    torn its connections down can abort at exit).

    Args:
        device: The run's device (``train.device`` resolved); its type chooses the backend.

    Raises:
        UserError: Incomplete torchrun variables, or more local processes than CUDA devices.
    """
    world_size = launched_world_size()
    if world_size == 1:
        yield SINGLE
        return
    context = Distributed(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
    cuda = device.type == "cuda"
    if cuda:
        if context.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK={context.local_rank} but only {torch.cuda.device_count()} CUDA device(s); "
                "use at most that many processes per node (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(context.place(device))
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, device_id=context.place(device) if cuda else None)
    try:
        yield context
        if created:  # every process reaches the end before any tears the group down
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()
