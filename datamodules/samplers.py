"""Training samplers that keep their epoch length under DDP."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import RandomSampler, Sampler


class EpochSampler(Sampler[int]):
    """`num_samples` indices per epoch into a dataset of `n` items, drawn by a seeded generator: with replacement, or
    as successive shuffled passes (the last one cut). The draws are exactly `torch.utils.data.RandomSampler`'s (it
    runs one inside), but this is not a RandomSampler: under DDP Lightning replaces a RandomSampler by
    `DistributedSampler(dataset)`, one pass over the dataset per epoch, which drops `num_samples` (e.g. the 31
    passes per epoch of MM-PDE, the DMM's official steps per epoch). Any other sampler it wraps in a
    `DistributedSamplerWrapper`, which splits this epoch's indices across the ranks."""

    def __init__(self, n: int, num_samples: int, replacement: bool, generator: torch.Generator) -> None:
        self._inner = RandomSampler(range(n), replacement=replacement, num_samples=num_samples, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)
