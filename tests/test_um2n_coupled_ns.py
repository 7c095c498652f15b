"""UM2N's cylinder test as a coupled Navier-Stokes run (`lit_models.pde.um2n_coupled_ns`): the identity mover
reproduces the fixed-mesh forces exactly (reduction 0), a hand-made smooth mover runs untangled, a tangling mover
is rejected move by move (counted, the previous mesh kept), `model.coupled_cylinder` wires the run into
UM2NModule's test, and bad settings are one-line errors. Tiny settings: a 225-node mesh, short warm-up and horizon."""
from __future__ import annotations

import numpy as np
import pytest

from launch.errors import UserError
from lit_models.common import mesh as M
from lit_models.pde.um2n_coupled_ns import coupled_cylinder, coupled_cylinder_config
from tests.papers.contract import fast_run

CYL = {"n_ring": 16, "times": [0.0], "ns": {"warmup": 0.25, "settle": 0.0}}
TINY = {"n_side": 15, "t_end": 0.05, "move_every": 4, "cylinder": CYL}
SMALL = ["data.n_train=6", "data.train_sizes=[5,6]", "data.test_size=15", "model.n_interp_points=500",
         "data.cylinder.n_ring=16", "data.cylinder.times=[0.0]", "data.cylinder.ns.warmup=0.25",
         "data.cylinder.ns.settle=0.0", "trainer.limit_test_batches=1", "model.coupled_cylinder.t_end=0.05",
         "model.coupled_cylinder.move_every=4"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path))


def smooth(graph) -> np.ndarray:
    """A small smooth displacement (zero on the square's sides and the rim), its size following the monitor."""
    p = graph.pos.double().numpy()
    r = np.hypot(p[:, 0] - 0.3, p[:, 1] - 0.5)
    bump = np.sin(np.pi * p[:, 0]) * np.sin(np.pi * p[:, 1]) * (1.0 - np.exp(-(((r - 0.1) / 0.05) ** 2)))
    amp = 0.005 * (1.0 + float(graph.x[:, 3].double().mean()))
    return p + amp * bump[:, None] * np.array([1.0, 0.5])


def test_identity_mover_gives_the_fixed_mesh_forces():
    res = coupled_cylinder(lambda g: g.pos, **TINY)
    np.testing.assert_array_equal(res.coef_fixed, res.coef_moved)
    m = res.metrics()
    assert m["cylinder_coupled_error_reduction"] == 0.0 and m["cylinder_coupled_inverted"] == 0
    assert m["cylinder_coupled_error_fixed"] == m["cylinder_coupled_error_moved"] > 0
    assert res.n_steps == 40 and len(res.move_times) == 10 and not res.rejected.any()
    assert np.array_equal(res.pos_moved, res.pos_fixed)
    assert np.all(np.isfinite(res.coef_ref)) and len(res.coef_ref) == 50 and res.extra["ref_vertices"] > 3 * 225
    assert np.all(np.isfinite(list(m.values())))


def test_smooth_mover_runs_untangled_and_the_start_is_cached(tmp_path):
    res = coupled_cylinder(smooth, **TINY)
    assert res.inverted.sum() == 0 and not res.rejected.any() and len(res.move_times) == 10
    assert np.all(np.isfinite(res.coef_moved))
    assert not np.array_equal(res.coef_moved, res.coef_fixed)
    rel = np.abs(res.coef_moved[:, 0] / res.coef_fixed[:, 0] - 1.0)
    assert np.median(rel) < 0.1  # a small move, a similar drag (but a spike after each move)
    assert M.count_inverted(res.pos_moved, res.tri) == 0
    assert 0 < np.abs(res.pos_moved - res.pos_fixed).max() < 0.02
    m = res.metrics()
    assert np.isfinite(m["cylinder_coupled_error_reduction"]) and m["cylinder_coupled_diverged"] == 0
    assert res.seconds_ref is not None
    again = coupled_cylinder(lambda g: g.pos, **TINY)  # start state and reference from the cache
    assert again.seconds_ref is None
    np.testing.assert_array_equal(again.coef_ref, res.coef_ref)
    np.testing.assert_array_equal(again.coef_fixed, res.coef_fixed)


def test_tangling_moves_are_counted_and_not_applied():
    def fold(graph):  # every interior node reflected through the square's centre line x = 0.5: tangles
        p = graph.pos.double().numpy().copy()
        inner = ~(graph.x_fixed.numpy() | graph.y_fixed.numpy())
        p[inner, 0] = 1.0 - p[inner, 0]
        return p

    res = coupled_cylinder(fold, **TINY)
    assert res.rejected.all() and (res.inverted > 0).all()
    np.testing.assert_array_equal(res.coef_moved, res.coef_fixed)  # the original mesh was kept throughout
    m = res.metrics()
    assert m["cylinder_coupled_rejected_moves"] == 10 and m["cylinder_coupled_inverted"] == res.inverted.sum()


def test_bad_coupled_cylinder_config_is_a_user_error():
    cfg = coupled_cylinder_config({})
    assert cfg["t_end"] == 2.0 and cfg["cylinder"]["field"] == "navier_stokes"
    for bad, key in (({"t_end": 0.0}, "t_end"), ({"move_every": 0}, "move_every"), ({"n_side": 3}, "n_side"),
                     ({"omega": 1}, "unknown"), ({"ref_refine": 3}, "ref_refine"), ({"ref_dt": -1.0}, "ref_dt"),
                     ({"move_every": 1.5}, "move_every"), ({"cylinder": {"radius": -1.0}}, "cylinder"),
                     ({"cylinder": {"ns": {"omega0_max": 1.0}}}, "fixed cylinder"), ({"ref_dt": 0.0007}, "ref_dt"),
                     ({"cylinder": {"ns": {"refine": 1}}}, "refine"), ({"t_end": "x"}, "t_end"),
                     ({"project": 1}, "project")):
        with pytest.raises(UserError, match=key) as err:
            coupled_cylinder_config(bad)
        assert "\n" not in str(err.value)
    from launch import config as zconfig
    from launch import train

    cfg = zconfig.compose(["experiment=um2n/cylinder_coupled", "model.coupled_cylinder.move_every=0"])
    with pytest.raises(UserError, match="model.coupled_cylinder.move_every"):
        train.instantiate(cfg)


def test_um2n_module_logs_the_coupled_cylinder_metrics():
    run = fast_run("um2n/cylinder_coupled", *SMALL)
    run.assert_contract()
    keys = ("cylinder_coupled_cd_mean_fixed", "cylinder_coupled_cd_mean_moved", "cylinder_coupled_cd_mean_ref",
            "cylinder_coupled_st_error_moved", "cylinder_coupled_error_reduction", "cylinder_coupled_inverted",
            "cylinder_coupled_seconds_per_step_moved", "interp_ratio_cylinder")
    for key in keys:
        assert np.isfinite(run.metrics[f"test/{key}"]), key
    figs = run.model.figures()
    assert {"cylinder_coupled_forces", "cylinder_coupled_mesh", "moved_meshes"} <= set(figs)
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)
    ident = fast_run("um2n/cylinder_coupled", *SMALL, "model.mover=identity", steps=1)
    assert ident.metrics["test/cylinder_coupled_error_reduction"] == 0.0
    assert ident.metrics["test/cylinder_coupled_cd_mean_moved"] == ident.metrics["test/cylinder_coupled_cd_mean_fixed"]


def test_developed_state_is_the_datasets_first_snapshot():
    """`developed_state` reproduces snapshot 0 of `cylinder_ns.make_ns_dataset` (one trajectory, a fixed cylinder):
    both take the warm-up seed from `cylinder_ns.trajectory_draws`, so the coupled run starts where the test data do."""
    from datamodules.cylinder_flow import cylinder_mesh
    from datamodules.cylinder_ns import CylinderNS, check_ns_params, cylinder_solver_mesh, make_ns_dataset
    from lit_models.pde.um2n_coupled_ns import developed_state

    opts = {"warmup": 0.2, "settle": 0.05, "omega0_max": 0.0, "omega1_max": 0.0}
    n_nodes, seed = 225, 3
    data, _, _ = make_ns_dataset(1, 1, n_nodes=n_nodes, n_ring=16, seed=seed, with_reference=False, **opts)
    o = check_ns_params(**opts)
    pos, tri = cylinder_mesh(n_nodes, 16, (0.3, 0.5), 0.1, seed=seed)
    ns = CylinderNS(cylinder_solver_mesh(pos, tri, (0.3, 0.5), 0.1, int(o["refine"])), float(o["Re"]), float(o["U"]),
                    float(o["dt"]), (0.3, 0.5), 0.1)
    nodal = ns.nodal(developed_state(ns, o, seed), n_nodes)[0]
    np.testing.assert_allclose(nodal, data[0, 0, :, 2:].double().numpy(), rtol=0, atol=1e-6)
