"""The offline UM2N Helmholtz data (datamodules/helmholtz_offline.py): the official source distribution, the P1
Helmholtz solve against its exact solution, the released sets' monitor, valid Monge-Ampere targets, and a short UM2N
run on the `um2n/helmholtz_offline` experiment."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules import helmholtz_offline
from datamodules.helmholtz_offline import (
    exact_solution,
    helmholtz_graph,
    helmholtz_graphs,
    helmholtz_sample,
    random_sources,
    solve_helmholtz,
)
from lit_models.common import mesh as M
from tests.papers.contract import fast_run


def test_sources_follow_the_official_distribution():
    rng = np.random.default_rng(0)
    draws = [random_sources(rng) for _ in range(300)]
    counts = {len(s) for s in draws}
    assert counts == set(range(1, 7))  # n_dist ~ U{1..max_dist = 6}
    s = np.concatenate(draws)
    z, mu, sigma = s[:, 0], s[:, 1:3], s[:, 3:5]
    assert 0 <= z.min() and z.max() <= 1 and 0.2 <= mu.min() and mu.max() <= 0.8
    assert sigma.min() == pytest.approx(0.125) and abs(np.median(sigma) - 0.25) < 0.03  # max(N(1/4, 1/6), 1/8)


def test_laplacian_and_second_order_p1_solve():
    src = random_sources(np.random.default_rng(3))
    p = np.random.default_rng(1).uniform(0.1, 0.9, (50, 2))
    h = 1e-4
    u = lambda q: exact_solution(q, src)[0]
    fd = sum(u(p + e) - 2 * u(p) + u(p - e) for e in (np.array([h, 0.0]), np.array([0.0, h]))) / h**2
    assert np.allclose(exact_solution(p, src)[1], fd, atol=1e-4 * max(1.0, np.abs(fd).max()))
    errors = []
    for n in (11, 21, 41):
        pos, tri = M.unit_square_mesh(n)
        errors.append(np.abs(solve_helmholtz(pos, tri, src) - exact_solution(pos, src)[0]).max())
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5, errors  # O(h^2)


def test_sample_has_the_released_monitor_and_a_valid_ma_target():
    s = helmholtz_sample(13, np.random.default_rng(0), mesh_seed=5)
    assert s["monitor"].min() >= 1.0 and s["monitor"].max() == pytest.approx(6.0)
    assert s["converged"] and s["ma_residual"] < 1e-3
    assert M.count_inverted(s["target"], s["tri"]) == 0 and M.boundary_violation(s["target"], s["pos"]) == 0.0
    moved = np.sqrt(np.mean(np.sum((s["target"] - s["pos"]) ** 2, 1))) / M.cell_size(13)
    assert moved > 0.3  # the target concentrates nodes where the Hessian is large, not the identity


def test_generated_meshes_are_cached(tmp_path, monkeypatch):
    """helmholtz_graphs draws the graphs helmholtz_graph draws in turn from one seeded stream, writes them once to the
    download cache and reads them back there (no solve) with the same count, sizes and seed."""
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path))
    graphs = helmholtz_graphs(3, [7, 8], seed=4)
    rng = np.random.default_rng(4)
    for i, g in enumerate(graphs):
        ref = helmholtz_graph([7, 8][i % 2], rng, int(rng.integers(2**31)))
        assert g.pos.shape == ref.pos.shape and all(
            np.array_equal(np.asarray(g[k]), np.asarray(ref[k])) for k in ("pos", "x", "y", "face", "edge_index"))
    assert len(list((tmp_path / "helmholtz_offline").glob("helmholtz_*.npz"))) == 1

    def no_solve(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(helmholtz_offline, "helmholtz_sample", no_solve)
    again = helmholtz_graphs(3, [7, 8], seed=4)
    assert all(np.array_equal(a.y.numpy(), b.y.numpy()) for a, b in zip(graphs, again))
    with pytest.raises(AssertionError, match="regenerated"):
        helmholtz_graphs(3, [7, 8], seed=5)  # another seed is another cache entry


def test_um2n_trains_on_offline_helmholtz_data():
    run = fast_run("um2n/helmholtz_offline", "data.n_train=5", "data.train_sizes=[7,8]", "model.hidden=16",
                   "model.num_loop=2", "model.n_interp_points=200")
    run.assert_contract()
    assert np.isfinite(run.metrics["test/node_rmse_cells_dataset"]) and "test/inverted" in run.metrics
