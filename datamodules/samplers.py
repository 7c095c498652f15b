"""Training samplers that keep their epoch length under DDP, and the evaluation sampler that counts each sample once."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, Sampler

from datamodules.context import sampling_context


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


class PassBatchSampler(BatchSampler):
    """`passes` shuffled passes over the dataset per epoch, each pass cut into batches of `batch_size` with a short
    last batch: a `DataLoader(shuffle=True)` iterated `passes` times, as the MM-PDE training loop does (mmpde.train:
    t_res = 31 passes of ceil(80 / 6) = 14 batches, 434 steps an epoch; one sampler over all the draws would give
    floor(31 x 80 / 6) = 413). Pass k of epoch e is a permutation seeded by (seed, e, k), so a run resumed at an epoch
    boundary draws what the uninterrupted run drew. Under DDP every rank draws the same permutation, pads it to a
    multiple of the world size (as DistributedSampler does) and keeps every world-size-th item from its rank on, so
    the ranks share each pass and agree on the number of steps. `sampler` only gives the dataset size: Lightning
    passes its DistributedSampler there under DDP."""

    def __init__(self, sampler, batch_size: int, drop_last: bool = False, *, passes: int, seed: int,
                 datamodule=None) -> None:
        if batch_size < 1 or passes < 1:
            raise ValueError(f"need batch_size >= 1 and passes >= 1, got {batch_size} and {passes}")
        super().__init__(sampler, batch_size, drop_last)
        self.passes, self.seed, self.datamodule = passes, seed, datamodule
        self.n = len(getattr(sampler, "dataset", sampler))

    def _share(self, world: int) -> int:
        return -(-self.n // world)

    def _per_pass(self, world: int) -> int:
        share = self._share(world)
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __len__(self) -> int:
        _, _, world = sampling_context(self.datamodule)
        return self.passes * self._per_pass(world)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, rank, world = sampling_context(self.datamodule)
        share = self._share(world)
        for k in range(self.passes):
            words = np.random.SeedSequence([self.seed, epoch, k]).generate_state(1)
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(int(words[0])))
            order = order.repeat(-(-share * world // self.n))[:share * world][rank::world].tolist()
            for b in range(self._per_pass(world)):
                yield order[b * self.batch_size:(b + 1) * self.batch_size]


class EvalShardSampler(DistributedSampler):
    """The validation / test samples of one DDP rank, each sample on exactly one rank (strided: rank r takes r, r + W,
    ...). Lightning's default for an evaluation loader is `DistributedSampler`, which pads the set to a multiple of the
    world size W by repeating its first samples, so the metrics, reduced over the ranks, count those twice (471 test
    windows of iTransformer on 2 ranks: 472). A set smaller than W goes whole to every rank (`replicated`: every rank
    needs a batch; means or extremes over W identical copies are the set's own, and the metrics gathered from the
    ranks' samples take one rank's copy: `lit_models.common.ddp_eval.eval_set_replicated`). A subclass of
    DistributedSampler, so Lightning keeps it."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        # world size and rank: from torch.distributed unless given
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)
        self.replicated = n < self.num_replicas  # the whole set on every rank (`ddp_eval.eval_set_replicated`)
        self.indices = list(range(n)) if self.replicated else list(range(self.rank, n, self.num_replicas))
        self.num_samples = self.total_size = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_sampler(dataset) -> EvalShardSampler | None:
    """The sampler of an evaluation DataLoader: `EvalShardSampler` under DDP (a process group of several ranks),
    None (sequential) otherwise."""
    return EvalShardSampler(dataset) if _ranks() else None


class EveryRankSampler(DistributedSampler):
    """Every index of a generated training set on every DDP rank: a datamodule that makes each step's batch itself
    (fresh collocation points, each rank its own draw: `collocation.own_draw`; or the same full batch) has
    `steps_per_epoch` steps per epoch whatever the number of ranks. Lightning's default DistributedSampler split the
    indices, so under 2 ranks every epoch had half its steps and a run of `max_epochs` trained half the steps (and an
    L-BFGS phase at the end of `max_steps` never came). A subclass of DistributedSampler, so Lightning keeps it."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.dataset)))

    def __len__(self) -> int:
        return len(self.dataset)


def generated_train_sampler(dataset) -> EveryRankSampler | None:
    """The sampler of a generated training set's DataLoader: `EveryRankSampler` under DDP, None (sequential)
    otherwise."""
    return EveryRankSampler(dataset) if _ranks() else None


def _ranks() -> bool:
    """Whether this process is one of several DDP ranks (a process group of two or more)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() >= 2
