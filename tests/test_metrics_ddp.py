"""Shared torchmetrics objects give the same value under DDP (2 gloo CPU processes, each with half the samples) as
in one process over all samples: their states are sums and counts reduced across ranks."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_models.common.dynamics_metrics import PowerSpectrumDistance, StateSpaceDivergence, SymbolicAccuracy
from lit_models.common.forecast_metrics import ValidPredictionTime
from lit_models.common.pde import RelativeL2
from lit_models.common.ranking import NDCGAtK, RecallAtK


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    hits = torch.rand(10, 20, generator=g) < 0.3
    relevant = torch.randint(0, 8, (10,), generator=g)
    truth = torch.sin(torch.linspace(0, 20, 128, dtype=torch.float64))[None, :, None] * torch.ones(10, 1, 3)
    trajectories = torch.stack([truth, truth + 0.3 * torch.randn(10, 128, 3, generator=g, dtype=torch.float64)])
    return pred, target, hits, relevant, trajectories


def _values(part: slice) -> dict[str, float]:
    pred, target, hits, relevant, traj = _data()
    metrics = {"rel_l2": RelativeL2(), "vpt": ValidPredictionTime(threshold=1.0),
               "recall": RecallAtK(k=20), "ndcg": NDCGAtK(k=20),
               "d_stsp": StateSpaceDivergence(n_bins=8), "d_h": PowerSpectrumDistance(smoothing=5.0),
               "symbolic": SymbolicAccuracy()}
    metrics["symbolic"].update(hits[part, :4])  # 4 predictions per sample judged right or wrong
    metrics["d_stsp"].update(traj[0, part], traj[1, part])
    metrics["d_h"].update(traj[0, part], traj[1, part])
    metrics["rel_l2"].update(pred[part], target[part])
    metrics["vpt"].update(0.3 * pred[part], 0.3 * target[part], 1.0, lyapunov_per_step=0.1)
    metrics["recall"].update(hits[part], relevant[part])
    metrics["ndcg"].update(hits[part], relevant[part])
    return {k: float(m.compute()) for k, m in metrics.items()}


def _worker(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # uneven shards: rank 0 gets 3 samples, rank 1 gets 7
        out[rank] = _values(slice(0, 3) if rank == 0 else slice(3, 10))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shared_metrics_reduce_exactly_across_two_ranks():
    single = _values(slice(0, 10))
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        ranks = dict(out)
    assert all(v == v for v in single.values()), single  # no NaN
    for rank in (0, 1):
        for key, value in single.items():
            assert ranks[rank][key] == pytest.approx(value, rel=1e-6), (rank, key)
    # and the shards alone differ from the whole (the reduction actually happened)
    assert _values(slice(0, 3))["rel_l2"] != pytest.approx(single["rel_l2"])
    assert _values(slice(0, 3))["symbolic"] != pytest.approx(single["symbolic"])


def test_symbolic_accuracy_counts_predictions():
    metric = SymbolicAccuracy()
    metric.update(torch.tensor([True, False, True]))
    metric.update(torch.tensor([[True], [True]]))
    assert float(metric.compute()) == pytest.approx(0.8)
    # no predictions yet: NaN, with torchmetrics' warning
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(SymbolicAccuracy().compute())
