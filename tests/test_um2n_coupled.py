"""UM2N's swirl test as a coupled PDE solve (`lit_models.pde.um2n_coupled`): the identity mover reproduces the
uniform-mesh solve exactly (reduction 0), a hand-made graded mover runs untangled with finite errors, the numerical
monitor shares the swirl graphs' layout, and `model.coupled_swirl` wires the solve into UM2NModule's test."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.meshes import swirl_graph, swirl_graph_on_mesh
from launch.errors import UserError
from lit_models.common import mesh as M
from lit_models.pde.um2n_coupled import coupled_config, coupled_swirl
from tests.papers.contract import fast_run

TINY = {"n_side": 10, "dt": 0.005, "t_end": 0.1, "record_every": 5, "n_ref": 60}
SMALL = ["data.n_train=6", "data.train_sizes=[5,6]", "data.test_size=8", "model.n_interp_points=500",
         "data.swirl.times=[0.0,0.25]", "trainer.limit_test_batches=2", "model.coupled_swirl.n_side=8",
         "model.coupled_swirl.dt=0.01", "model.coupled_swirl.t_end=0.05", "model.coupled_swirl.n_ref=50",
         "model.coupled_swirl.record_every=2"]


def graded(graph) -> np.ndarray:
    """Fixed positions: the exact MA mesh of a separable monitor peaked on the ring's centre (1-D
    equidistribution per axis), whatever the graph's monitor."""
    def m(s: np.ndarray) -> np.ndarray:
        return 1.0 + 3.0 * np.exp(-((s - 0.3) ** 2) / (2 * 0.15**2))

    return M.equidistributed_mesh(graph.pos.double().numpy(), m, m)


def test_identity_mover_gives_zero_reduction():
    res = coupled_swirl(lambda g: g.pos, **TINY)
    np.testing.assert_array_equal(res.error_uniform, res.error_moved)
    np.testing.assert_array_equal(res.u_uniform, res.u_moved)
    assert res.reduction == 0.0 and res.final_reduction == 0.0 and res.inverted.sum() == 0
    assert res.n_steps == 20 and len(res.move_times) == 20
    np.testing.assert_allclose(res.times, [0.005, 0.025, 0.05, 0.075, 0.1])
    assert np.all(np.isfinite(res.error_uniform)) and res.error_uniform.min() > 0
    # the transported-point error and the mesh-quadrature error at the end agree
    assert res.final_quadrature_error[0] == pytest.approx(res.error_uniform[-1], rel=0.1)


def test_graded_mover_runs_untangled():
    res = coupled_swirl(graded, move_every=2, **TINY)
    assert res.inverted.sum() == 0 and len(res.inverted) == 10
    assert M.boundary_violation(res.pos_moved, res.pos_uniform) < 1e-12
    assert np.all(np.isfinite(res.error_moved)) and np.all(np.isfinite(res.error_uniform))
    assert not np.array_equal(res.error_moved, res.error_uniform)
    assert np.isfinite(res.reduction) and -1.0 < res.reduction < 1.0
    assert res.final_quadrature_error[1] == pytest.approx(res.error_moved[-1], rel=0.1)
    # conservative: no normal velocity on the boundary and supermesh projections between the meshes
    assert abs(res.extra["mass_change_uniform"]) < 1e-12 and abs(res.extra["mass_change_moved"]) < 1e-12
    assert res.metrics()["swirl_coupled_mass_change_moved"] == res.extra["mass_change_moved"]


def test_unstable_step_is_reported():
    """A step far beyond the DG1 + SSPRK3 limit blows the solve up: a warning names the CFL number, and the
    metrics carry the CFL numbers of both meshes."""
    with pytest.warns(UserWarning, match="blew up"):
        res = coupled_swirl(lambda g: g.pos, **{**TINY, "dt": 0.05, "t_end": 0.5})
    m = res.metrics()
    assert m["swirl_coupled_cfl_uniform"] == m["swirl_coupled_cfl_moved_max"] > 1.0


def test_numerical_monitor_graph_has_the_swirl_graph_layout():
    g_exact = swirl_graph(9, 0.0)
    pos, tri = M.unit_square_mesh(9)
    g_num = swirl_graph_on_mesh(9, pos, tri, 0.0, M.swirl_initial(pos))
    for key in ("pos", "edge_index", "face", "x_fixed", "y_fixed", "kind", "swirl"):
        assert torch.equal(getattr(g_exact, key), getattr(g_num, key)), key
    assert torch.equal(g_exact.x[:, :3], g_num.x[:, :3])
    mon = g_num.x[:, 3]
    assert float(mon.max()) == pytest.approx(1.0) and float(mon.min()) > 0
    # nodal recovery is exact for linear fields; the numerical monitor of the exact nodal values tracks the exact one
    grad = M.recover_gradient(pos, tri, 2.0 * pos[:, 0] - pos[:, 1])
    np.testing.assert_allclose(grad, np.tile([2.0, -1.0], (len(pos), 1)), atol=1e-12)
    pos, tri = M.unit_square_mesh(35)
    exact, numeric = M.swirl_monitor(pos, tri, 0.0), M.swirl_monitor_from_field(pos, tri, M.swirl_initial(pos))
    assert np.corrcoef(exact, numeric)[0, 1] > 0.9


def test_bad_coupled_config_is_a_user_error():
    assert coupled_config({})["t_end"] == 1.0
    for bad, key in (({"dt": 0.0}, "dt"), ({"move_every": 0}, "move_every"), ({"n_side": 2}, "n_side"),
                     ({"omega": 1}, "unknown"), ({"swirl": {"sigma": -1.0}}, "sigma"), ({"dt": 2.0}, "dt"),
                     ({"mesh": "hex"}, "mesh")):
        with pytest.raises(UserError, match=key) as err:
            coupled_config(bad)
        assert "\n" not in str(err.value)
    from launch import config as zconfig
    from launch import train

    cfg = zconfig.compose(["experiment=um2n/swirl_coupled", "model.coupled_swirl.move_every=0"])
    with pytest.raises(UserError, match="model.coupled_swirl.move_every"):
        train.instantiate(cfg)


def test_um2n_module_logs_the_coupled_metrics():
    run = fast_run("um2n/swirl_coupled", *SMALL)
    run.assert_contract()
    keys = ("swirl_pde_error_uniform", "swirl_pde_error_moved", "swirl_pde_error_reduction",
            "swirl_pde_error_reduction_final", "swirl_coupled_inverted", "interp_ratio_swirl")
    for key in keys:
        assert np.isfinite(run.metrics[f"test/{key}"]), key
    figs = run.model.figures()
    assert {"swirl_pde_error", "swirl_pde_final", "moved_meshes"} <= set(figs)
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)
    ident = fast_run("um2n/swirl_coupled", *SMALL, "model.mover=identity", steps=1)
    assert ident.metrics["test/swirl_pde_error_reduction"] == 0.0
    assert ident.metrics["test/swirl_pde_error_uniform"] == ident.metrics["test/swirl_pde_error_moved"]


def test_coupled_solve_runs_on_rank_zero_only_under_ddp():
    """`common.steps.computed_once`: with several processes only global rank 0 computes, every rank receives rank 0's
    result through the strategy's broadcast; without a trainer or with one process it just computes."""
    from types import SimpleNamespace

    from lit_models.common.steps import computed_once

    calls = []

    def compute():
        calls.append(1)
        return {"error": 0.5}

    sent = {}

    def broadcast(obj, src=0):
        sent["obj"], sent["src"] = obj, src
        return {"error": 0.5}  # what rank 0 sent

    def module(rank: int, world: int):
        trainer = SimpleNamespace(world_size=world, is_global_zero=rank == 0,
                                  strategy=SimpleNamespace(broadcast=broadcast))
        return SimpleNamespace(_trainer=trainer)

    assert computed_once(SimpleNamespace(_trainer=None), compute) == {"error": 0.5} and len(calls) == 1
    assert computed_once(module(0, 1), compute) == {"error": 0.5} and len(calls) == 2
    assert computed_once(module(1, 2), compute) == {"error": 0.5} and len(calls) == 2  # rank 1 computes nothing
    assert sent == {"obj": None, "src": 0}
    assert computed_once(module(0, 2), compute) == {"error": 0.5} and len(calls) == 3
    assert sent == {"obj": {"error": 0.5}, "src": 0}


def test_coupled_solve_under_two_ddp_ranks(tmp_path):
    """`zoo train ... trainer=ddp trainer.devices=2` (gloo): rank 0 solves, rank 1 waits in the broadcast; the run
    ends (no hang) with finite coupled metrics in its final_metrics.json."""
    import json

    from tests.conftest import zoo_subprocess

    proc = zoo_subprocess("train", "experiment=um2n/swirl_coupled", *SMALL, "model.coupled_swirl.ma_baseline=false",
                          "trainer.max_steps=2", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                          "logger=csv", "progress_bar=false", f"runs_root={tmp_path}", check=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 0" in log and "GLOBAL_RANK: 1" in log
    final = json.loads(next(tmp_path.glob("*/*/final_metrics.json")).read_text())
    for key in ("test/swirl_pde_error_uniform", "test/swirl_pde_error_moved", "test/swirl_pde_error_reduction"):
        assert np.isfinite(final[key]), key
