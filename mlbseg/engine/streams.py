"""Index streams on the training device: epoch permutations and the infinite meta-batch stream.

The reference re-created its meta loader iterator every step (docs/reference.md §7 items 1–2); here one stream
lives for the whole run, reshuffles when exhausted, and its position is part of the checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch


class IndexStream:
    """Endless batches of indices into ``range(size)``: a fresh random permutation each pass.

    Batches never straddle two passes: a pass yields ``size // batch_size`` full batches (at least one,
    drawing with replacement when ``size < batch_size``).
    """

    def __init__(self, size: int, batch_size: int, generator: torch.Generator) -> None:
        self.size = size
        self.batch_size = batch_size
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long, device=generator.device)
        self._position = 0

    def _reshuffle(self) -> None:
        device = self.generator.device
        if self.size >= self.batch_size:
            self._order = torch.randperm(self.size, generator=self.generator, device=device)
        else:
            self._order = torch.randint(
                self.size, (self.batch_size,), generator=self.generator, device=device
            )
        self._position = 0

    def next(self) -> torch.Tensor:
        """The next batch of indices, [batch_size] int64 on the generator's device."""
        if self._position + self.batch_size > len(self._order):
            self._reshuffle()
        batch = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Permutation and position (the generator's state is saved by its owner)."""
        return {"order": self._order.cpu(), "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self._order = state["order"].to(self.generator.device)
        self._position = state["position"]


class MixedIndexStream:
    """Batches that take a fixed share from a subset of indices (e.g. slices with foreground).

    Each batch is ``groups`` groups (one per process) of ``batch_size`` indices; in every group the first
    ``subset_count`` come from ``subset`` and the rest from ``range(size)``, each pool an endless
    :class:`IndexStream`. Grouping per process keeps the share the same on every process when the global
    batch is split into equal chunks (nnU-Net's foreground oversampling, made shard-safe).
    """

    def __init__(
        self,
        subset: torch.Tensor,
        size: int,
        batch_size: int,
        *,
        subset_count: int,
        groups: int,
        generator: torch.Generator,
    ) -> None:
        self.subset, self.groups = subset, groups
        self.batch_size, self.subset_count = batch_size, subset_count
        self.from_subset = IndexStream(len(subset), subset_count * groups, generator)
        self.from_all = IndexStream(size, (batch_size - subset_count) * groups, generator)

    def next(self) -> torch.Tensor:
        """The next batch of indices, [groups · batch_size] int64 on the generator's device."""
        chosen = self.subset[self.from_subset.next()].view(self.groups, self.subset_count)
        rest = self.from_all.next().view(self.groups, self.batch_size - self.subset_count)
        return torch.cat([chosen, rest], dim=1).flatten()

    def state_dict(self) -> dict[str, Any]:
        """Both pools' permutations and positions."""
        return {"subset": self.from_subset.state_dict(), "all": self.from_all.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.from_subset.load_state_dict(state["subset"])
        self.from_all.load_state_dict(state["all"])
