"""EpochSampler: RandomSampler's draws, but Lightning keeps its epoch length under DDP (it wraps the sampler instead of
replacing it by one pass of DistributedSampler over the dataset). PassBatchSampler: whole shuffled passes with a short
last batch each, shared by the ranks under DDP."""
from __future__ import annotations

import math
import types

import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.utilities.data import _dataloader_init_kwargs_resolve_sampler
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from datamodules.samplers import EpochSampler, PassBatchSampler


def test_draws_equal_random_samplers():
    for replacement, num in ((True, 70), (False, 23)):
        ours = list(EpochSampler(10, num, replacement, torch.Generator().manual_seed(3)))
        ref = list(RandomSampler(range(10), replacement=replacement, num_samples=num,
                                 generator=torch.Generator().manual_seed(3)))
        assert ours == ref and len(ours) == num
    passes = list(EpochSampler(10, 30, False, torch.Generator().manual_seed(0)))
    assert all(sorted(passes[k:k + 10]) == list(range(10)) for k in (0, 10, 20))  # whole shuffled passes


def test_ddp_splits_the_epoch_instead_of_dropping_it():
    """What Lightning does to a training loader under DDP (world size 2): a RandomSampler with num_samples becomes
    one pass over the 10 items (5 per rank); the EpochSampler keeps its 40 draws per epoch (20 per rank)."""
    data = list(range(10))
    plain = DataLoader(data, batch_size=2, sampler=RandomSampler(data, replacement=True, num_samples=40))
    ours = DataLoader(data, batch_size=2, sampler=EpochSampler(10, 40, True, torch.Generator().manual_seed(0)))
    lost = _get_distributed_sampler(plain, shuffle=True, overfit_batches=0, num_replicas=2, rank=0)
    kept = [_get_distributed_sampler(ours, shuffle=True, overfit_batches=0, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(lost) == 5
    assert isinstance(kept[0], DistributedSamplerWrapper) and [len(s) for s in kept] == [20, 20]
    for s in kept:
        s.set_epoch(0)
    assert all(0 <= i < 10 for s in kept for i in s)


class _Context:
    """What `datamodules.context.sampling_context` reads from a datamodule's trainer."""

    def __init__(self, epoch: int, rank: int, world: int) -> None:
        progress = types.SimpleNamespace(current=types.SimpleNamespace(processed=epoch))
        self.trainer = types.SimpleNamespace(fit_loop=types.SimpleNamespace(epoch_progress=progress),
                                             global_rank=rank, world_size=world)


def test_pass_batches_are_the_official_mm_pde_epoch():
    """MM-PDE's epoch (mmpde.train): 31 passes of a shuffled DataLoader over 80 trajectories, batch 6, so 31 x 14 =
    434 steps, each pass ending in a batch of 2 and covering every trajectory once (one sampler over all 2,480 draws
    with drop_last gave 413). Passes differ, epochs differ, and an epoch is the same when drawn again (resume)."""
    data = list(range(80))
    sampler = PassBatchSampler(SequentialSampler(data), 6, passes=31, seed=0)
    batches = list(DataLoader(data, batch_sampler=sampler))
    assert len(sampler) == len(batches) == 434
    passes = [batches[k * 14:(k + 1) * 14] for k in range(31)]
    for p in passes:
        assert [len(b) for b in p] == [6] * 13 + [2]
        assert sorted(int(i) for b in p for i in b) == data
    assert torch.cat(passes[0]).tolist() != torch.cat(passes[1]).tolist()
    again = [b.tolist() for b in DataLoader(data, batch_sampler=PassBatchSampler(SequentialSampler(data), 6, passes=31,
                                                                                 seed=0))]
    assert again == [b.tolist() for b in batches]
    later = PassBatchSampler(SequentialSampler(data), 6, passes=31, seed=0, datamodule=_Context(1, 0, 1))
    assert [list(b) for b in later] != [b.tolist() for b in batches]
    assert len(PassBatchSampler(SequentialSampler(data), 6, True, passes=31, seed=0)) == 31 * 13


def test_pass_batches_under_ddp_share_each_pass_and_agree_on_steps():
    """Two and three ranks over 7 items: every rank draws the same pass and keeps its share (padded as
    DistributedSampler pads), so the ranks run the same number of steps and together cover every item each pass.
    Lightning's own injection under DDP (its DistributedSampler passed as `sampler`) keeps the class and its passes."""
    data = list(range(7))
    for world in (2, 3):
        ranks = [list(PassBatchSampler(SequentialSampler(data), 2, passes=3, seed=5, datamodule=_Context(0, r, world)))
                 for r in range(world)]
        share = math.ceil(7 / world)
        per_pass = math.ceil(share / 2)
        assert all(len(r) == 3 * per_pass for r in ranks)
        for k in range(3):
            seen = [i for r in ranks for b in r[k * per_pass:(k + 1) * per_pass] for i in b]
            assert set(seen) == set(data) and len(seen) == share * world
    with _replace_dunder_methods(BatchSampler):
        loader = DataLoader(data, batch_sampler=PassBatchSampler(SequentialSampler(data), 2, passes=3, seed=5,
                                                                 datamodule=_Context(0, 1, 2)))
    dist = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=1)
    injected = _dataloader_init_kwargs_resolve_sampler(loader, dist)["batch_sampler"]
    assert isinstance(injected, PassBatchSampler) and injected.passes == 3 and injected.n == 7
    assert list(injected) == list(loader.batch_sampler)
