"""UM2N's swirl advection test case, offline (no DG solve): the exact solution by RK4 characteristics of the
official reversing swirl velocity, the official monitor computed from it, the swirl test graphs and the
`experiment=um2n/swirl` variant (trained on offline Helmholtz problems, tested zero-shot on swirl snapshots)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.meshes import KIND_SWIRL, MeshGraphDataModule, swirl_config, swirl_graph
from lit_models.common import mesh as M
from tests.papers.contract import fast_run

SMALL = ["data.n_train=6", "data.train_sizes=[5,6]", "data.test_size=8", "model.n_interp_points=500",
         "data.swirl.times=[0.0,0.25,1.0]", "trainer.limit_test_batches=3"]


def test_swirl_velocity_is_the_official_field_and_tangent_to_the_boundary():
    p = np.array([[0.3, 0.2], [0.7, 0.9]])
    v = M.swirl_velocity(p, 1.0, 1.5)
    expect = 1.5 * np.stack([np.sin(np.pi * p[:, 0]) ** 2 * np.sin(2 * np.pi * p[:, 1]),
                             -np.sin(np.pi * p[:, 1]) ** 2 * np.sin(2 * np.pi * p[:, 0])], 1)
    np.testing.assert_allclose(v, expect, atol=1e-14)
    np.testing.assert_allclose(M.swirl_velocity(p, -1.0, 1.5), -expect, atol=1e-14)
    s = np.linspace(0, 1, 11)
    edges = np.concatenate([np.stack([np.zeros(11), s], 1), np.stack([np.ones(11), s], 1)])
    assert np.abs(M.swirl_velocity(edges, 1.0)[:, 0]).max() < 1e-14  # no flow through x = 0, 1
    assert np.abs(M.swirl_velocity(edges[:, ::-1], 1.0)[:, 1]).max() < 1e-14  # nor through y = 0, 1


def test_characteristics_invert_each_other_and_the_swirl_returns_at_T():
    pts = M.random_points(400, 3)
    for t in (0.3, 0.5, 0.8):
        back = M.swirl_trace(pts, t, 0.0)
        assert np.all((back > 0) & (back < 1))  # characteristics stay in the square
        np.testing.assert_allclose(M.swirl_trace(back, 0.0, t), pts, atol=1e-6)
    # the swirl moves the ring (u(., T/2) is not u0) and brings it back at T (velocity reversed at T/2)
    u0 = M.swirl_initial(pts)
    assert np.abs(M.swirl_solution(pts, 0.5) - u0).max() > 0.5
    np.testing.assert_allclose(M.swirl_solution(pts, 1.0), u0, atol=1e-6)
    np.testing.assert_array_equal(M.swirl_solution(pts, 0.0), u0)
    # RK4 converged: a 4x finer step changes the solution by < 1e-6
    np.testing.assert_allclose(M.swirl_solution(pts, 0.4, steps_per_unit=250),
                               M.swirl_solution(pts, 0.4, steps_per_unit=1000), atol=1e-6)


def test_p1_smoother_and_swirl_monitor():
    pos, tri = M.unit_square_mesh(9)
    A, mass = M.p1_stiffness_lumped_mass(pos, tri)
    np.testing.assert_allclose(np.asarray(A.sum(1)).ravel(), 0.0, atol=1e-12)  # constants in the kernel
    assert mass.sum() == pytest.approx(1.0)
    f = np.random.default_rng(0).random(len(pos))
    np.testing.assert_allclose(M.screened_poisson_smooth(pos, tri, f, 0.0), f, atol=1e-12)
    np.testing.assert_allclose(M.screened_poisson_smooth(pos, tri, np.full(len(pos), 2.5), 0.3), 2.5, atol=1e-12)
    sm = M.screened_poisson_smooth(pos, tri, f, 0.01)
    assert np.all(sm >= 0) and sm.std() < f.std()  # smoother, and positive (M-matrix)
    m = M.swirl_monitor(pos, tri, 0.0)
    assert np.all(np.isfinite(m)) and m.min() >= 1.0 and m.max() > 1.5


def test_swirl_graphs():
    g = swirl_graph(9, 0.25)
    assert g.x.shape == (81, 4) and g.pos.shape == (81, 2) and g.face.shape[0] == 3
    assert int(g.kind) == KIND_SWIRL and torch.isnan(g.y).all() and torch.isnan(g.params).all()
    assert g.swirl.shape == (1, 7) and float(g.swirl[0, 0]) == 0.25
    mon = g.x[:, 3]
    assert torch.isfinite(mon).all() and float(mon.max()) == pytest.approx(1.0) and float(mon.min()) > 0
    assert int(g.x[:, 2].sum()) == 4 * 8 == int((g.x_fixed | g.y_fixed).sum())
    ref = g.pos.double().numpy()
    corners = M.boundary_masks(ref)["corner"]
    assert bool((g.x_fixed & g.y_fixed)[torch.from_numpy(corners)].all())
    dm = MeshGraphDataModule(n_train=2, train_sizes=(5,), test_size=7, test_family="swirl", test_mesh="unstructured",
                             swirl={"times": [0.0, 0.5]})
    dm.setup()
    items = dm.test_set.items
    assert [float(d.swirl[0, 0]) for d in items] == [0.0, 0.5]
    assert all(M.count_inverted(d.pos.double().numpy(), d.face.T.numpy()) == 0 for d in items)
    assert torch.equal(items[0].pos, items[1].pos)  # one mesh for all snapshots
    assert dm.test_dataloader() is not None and len(list(dm.test_dataloader())) == 2


def test_fast_swirl_variant():
    run = fast_run("um2n/swirl", *SMALL)
    run.assert_contract()
    for key in ("interp_ratio_swirl", "inverted_swirl", "boundary_violation_swirl", "interp_ratio_swirl_t0.250",
                "inverted_swirl_t1.000", "boundary_violation_swirl_t0.000", "inverted", "boundary_violation"):
        assert np.isfinite(run.metrics[f"test/{key}"]), key
    assert "test/node_rmse_cells" not in run.metrics and "test/interp_ratio" not in run.metrics
    assert run.metrics["test/boundary_violation_swirl"] < 1e-6
    figs = run.model.figures()  # swirl meshes have no target mesh to draw: one row, titled with the time
    import matplotlib.pyplot as plt

    assert set(figs) == {"moved_meshes"}
    axes = figs["moved_meshes"].axes
    assert len(axes) == len(run.model._last) and all(ax.axison for ax in axes)
    assert all(" t = " in ax.get_title() for ax in axes), [ax.get_title() for ax in axes]
    plt.close(figs["moved_meshes"])
    ident = fast_run("um2n/swirl", *SMALL, "model.mover=identity", steps=1)
    assert ident.metrics["test/interp_ratio_swirl"] == pytest.approx(1.0)
    assert ident.metrics["test/inverted_swirl"] == 0


def test_bad_swirl_config_raises():
    with pytest.raises(ValueError, match="test_family must be one of"):
        MeshGraphDataModule(test_family="tsunami")
    with pytest.raises(ValueError, match="unknown swirl keys"):
        MeshGraphDataModule(test_family="swirl", swirl={"omega": 2.0})
    with pytest.raises(ValueError, match="swirl times"):
        swirl_config({"times": [0.5, 2.0]})
    with pytest.raises(ValueError, match="sigma"):
        swirl_config({"sigma": 0.0})
    from launch import config as zconfig
    from launch import train
    from launch.errors import UserError

    cfg = zconfig.compose(["experiment=um2n/swirl", "logger=none", "data.test_family=tsunami"])
    with pytest.raises(UserError, match="test_family must be one of"):
        train.run(cfg, make_run_dir=False)
