"""EpochSampler: RandomSampler's draws, but Lightning keeps its epoch length under DDP (it wraps the sampler instead of
replacing it by one pass of DistributedSampler over the dataset)."""
from __future__ import annotations

import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from torch.utils.data import DataLoader, RandomSampler

from datamodules.samplers import EpochSampler


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
