"""Shared PDE pieces: the relative L2 error (`relative_l2` and the `RelativeL2` metric; their DDP reduction is in
test_metrics_ddp.py) against hand computations, and the mesh data modules (data_free_mesh_mover, um2n) deterministic
by seed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datamodules.meshes import FrontFieldDataModule, MeshGraphDataModule
from lit_models.common.pde import RelativeL2, relative_l2


# ============================================================================================ relative L2
def test_relative_l2_per_sample_by_hand():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, 1.0], [3.0, 4.0], [3.0, 4.0]])
    # ||(0, 1)|| / ||(1, 1)|| = 1/sqrt(2); ||(-3, -4)|| / 5 = 1; 0 / 5 = 0
    expected = torch.tensor([1 / math.sqrt(2), 1.0, 0.0])
    torch.testing.assert_close(relative_l2(pred, target), expected)


def test_relative_l2_reduces_over_all_but_the_batch_dimension():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 5, 2, generator=g), torch.randn(4, 3, 5, 2, generator=g)
    by_hand = torch.stack([((p - t) ** 2).sum().sqrt() / (t**2).sum().sqrt() for p, t in zip(pred, target)])
    out = relative_l2(pred, target)
    assert out.shape == (4,)
    torch.testing.assert_close(out, by_hand)


def test_relative_l2_of_a_flat_field_is_one_pooled_sample():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    pooled = relative_l2(pred.reshape(-1), target.reshape(-1))
    assert pooled.shape == (1,)
    # sqrt(0 + 1 + 9 + 16) / sqrt(1 + 1 + 9 + 16): not the mean of the per-sample errors (1/sqrt(2) + 1) / 2
    torch.testing.assert_close(pooled, torch.tensor([math.sqrt(26 / 27)]))
    assert not math.isclose(float(pooled), float(relative_l2(pred, target).mean()), rel_tol=1e-3)
    assert relative_l2(torch.tensor(2.0), torch.tensor(4.0)).shape == (1,)  # a scalar is one sample too


def test_relative_l2_is_zero_for_identical_inputs():
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(relative_l2(x, x.clone()), torch.zeros(3, dtype=torch.float64))
    metric = RelativeL2()
    metric.update(x, x.clone())
    assert float(metric.compute()) == 0.0


@pytest.mark.parametrize("shapes", [((3, 4), (3, 5)), ((3, 4), (4, 3)), ((3, 1), (3,)), ((2, 3), (1, 3))])
def test_relative_l2_shape_mismatch_is_a_clear_error(shapes):
    a, b = torch.zeros(shapes[0]), torch.ones(shapes[1])
    with pytest.raises(ValueError, match="shapes differ"):
        relative_l2(a, b)
    with pytest.raises(ValueError, match="shapes differ"):
        RelativeL2().update(a, b)


def test_relative_l2_zero_target_is_finite_as_documented():
    zero = torch.zeros(2, 3, dtype=torch.float64)
    pred = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
    out = relative_l2(pred, zero)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([0.0, 5.0 / 1e-12], dtype=torch.float64))  # ||pred|| / eps
    torch.testing.assert_close(relative_l2(pred, zero, eps=1.0), torch.tensor([0.0, 5.0], dtype=torch.float64))


def test_relative_l2_metric_is_the_mean_over_all_samples_across_updates():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    metric = RelativeL2()
    metric.update(pred[:2], target[:2])  # unequal batches: a mean of batch means would differ
    metric.update(pred[2:], target[2:])
    per_sample = ((pred - target).norm(dim=1) / target.norm(dim=1)).double()
    assert math.isclose(float(metric.compute()), float(per_sample.mean()), rel_tol=1e-6)
    batch_means = (per_sample[:2].mean() + per_sample[2:].mean()) / 2
    assert not math.isclose(float(metric.compute()), float(batch_means), rel_tol=1e-4)
    metric.reset()
    assert float(metric.compute()) == 0.0  # no samples: 0, not NaN


# ============================================================================== mesh data modules by seed
def _front_dm(seed: int) -> FrontFieldDataModule:
    dm = FrontFieldDataModule(n_train=4, n_test=2, n_test_aligned=1, grid=8, eval_nodes=4, batch_size=2,
                              steps_per_epoch=2, monitor_derivative="normal", seed=seed)
    dm.setup("fit")
    return dm


def _items(dataset) -> list[dict[str, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


def _assert_same_items(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, equal_nan=True)


def test_front_fields_same_seed_same_data_other_seed_different():
    a, b, c = _front_dm(0), _front_dm(0), _front_dm(1)
    _assert_same_items(_items(a.train_set), _items(b.train_set))
    _assert_same_items(_items(a.test_set), _items(b.test_set))
    assert np.isfinite(a.test_set[0]["target"].numpy()).all()  # the aligned test front has its exact MA mesh
    for x, y in zip(next(iter(a.train_dataloader())).values(), next(iter(b.train_dataloader())).values()):
        assert torch.equal(x, y)  # the same shuffled batches
    assert not torch.equal(a.train_set[0]["u"], c.train_set[0]["u"])
    assert not np.allclose(a.train_set.d["params"], c.train_set.d["params"])
    assert not np.allclose(a.test_set.d["params"][1:], c.test_set.d["params"][1:])  # random (non-forced) test fronts


def _graph_dm(seed: int, mesh: str) -> MeshGraphDataModule:
    dm = MeshGraphDataModule(n_train=3, train_sizes=(4, 5), test_size=5, n_test_fronts=1, n_test_bumps=1,
                             bump_test_size=4, batch_size=2, mesh=mesh, seed=seed)
    dm.setup("fit")
    return dm


def _graph_tensors(graphs) -> list[dict[str, torch.Tensor]]:
    return [{k: g[k] for k in g.keys()} for g in graphs]


@pytest.mark.parametrize("mesh", ["structured", "unstructured"])
def test_mesh_graphs_same_seed_same_data_other_seed_different(mesh):
    a, b, c = _graph_dm(0, mesh), _graph_dm(0, mesh), _graph_dm(1, mesh)
    _assert_same_items(_graph_tensors(a.train_set.items), _graph_tensors(b.train_set.items))
    _assert_same_items(_graph_tensors(a.test_set.items), _graph_tensors(b.test_set.items))
    assert torch.equal(next(iter(a.train_dataloader())).y, next(iter(b.train_dataloader())).y)
    # another seed: other monitors and targets (and, unstructured, other meshes)
    assert not torch.equal(a.train_set[0].x[:, 3], c.train_set[0].x[:, 3])
    assert not torch.equal(a.test_set[0].params, c.test_set[0].params)  # front position c
    if mesh == "unstructured":
        assert any(not torch.equal(ga.pos, gc.pos) or ga.pos.shape != gc.pos.shape
                   for ga, gc in zip(a.train_set.items, c.train_set.items))
