"""UM2N's flow-past-a-cylinder test case, offline (no Navier-Stokes solve): the exact potential flow past a rotating
cylinder, the official monitor min(||grad u||_F^2, clip) / max computed from it, the holed test graphs (rim nodes
fixed) and the `experiment=um2n/cylinder` variant (trained on offline Helmholtz problems, tested zero-shot on the
holed meshes); and the Navier-Stokes field option (`data.cylinder.field=navier_stokes`, `experiment=um2n/cylinder_ns`) with
tiny solver settings: the official monitor from the solver's vertex-averaged P2 velocity gradient, the interpolation
ratio against the solver's reference field, and its configuration errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.cylinder_flow import potential_flow, potential_velocity_gradient
from datamodules.meshes import (
    CYLINDER_DEFAULTS,
    KIND_CYLINDER,
    MeshGraphDataModule,
    cylinder_config,
    cylinder_graph,
)
from lit_models.common import mesh as M
from lit_models.pde.um2n import (
    UM2N,
    cylinder_fluid_points,
    cylinder_interp_ratio,
    cylinder_ns_interp_ratio,
)
from tests.papers.contract import fast_run

SMALL_CYL = {"n_ring": 16, "times": [0.0, 0.25]}
SMALL = ["data.n_train=6", "data.train_sizes=[5,6]", "data.test_size=10", "model.n_interp_points=500",
         "data.cylinder.times=[0.0,0.25]", "data.cylinder.n_ring=16", "trainer.limit_test_batches=2"]


def _rim_displacement(out: np.ndarray, g) -> float:
    rim = g.rim.numpy()
    return float(np.linalg.norm(out[rim] - g.pos.double().numpy()[rim], axis=1).max())


def test_velocity_gradient_and_official_monitor():
    """The exact velocity gradient matches central differences of `potential_flow` and is trace-free (divergence-
    free) and symmetric (curl-free); the monitor is min(||grad u||_F^2, clip)."""
    flow = (1.2, 0.3, 0.4, 0.3, 0.5, 0.1)
    p = np.random.default_rng(0).uniform(0.45, 0.95, (40, 2))
    g = potential_velocity_gradient(p, flow)
    h = 1e-6
    for k, e in enumerate(np.eye(2)):
        fd = (potential_flow(p + h * e, flow) - potential_flow(p - h * e, flow))[:, :2] / (2 * h)
        np.testing.assert_allclose(g[:, :, k], fd, atol=1e-7)
    np.testing.assert_allclose(g[:, 0, 0] + g[:, 1, 1], 0.0, atol=1e-12)
    np.testing.assert_allclose(g[:, 0, 1], g[:, 1, 0], atol=1e-12)
    from datamodules.meshes import cylinder_monitor_official

    f = cylinder_monitor_official(p, flow, clip=1e9)
    np.testing.assert_allclose(f, np.sum(g**2, axis=(1, 2)))
    near = np.array([[0.3, 0.601], [0.3, 0.399]])  # on the rim the gradient is ~ 2 U / R: clipped at 10
    assert np.all(cylinder_monitor_official(near, flow, clip=10.0) == 10.0)


def test_cylinder_graphs_are_valid_and_rim_nodes_fixed():
    g = cylinder_graph(10, 0.25, **SMALL_CYL)
    ref, tri = g.pos.double().numpy(), g.face.T.numpy()
    assert g.x.shape == (100, 4) and int(g.kind) == KIND_CYLINDER and torch.isnan(g.y).all()
    assert M.count_inverted(ref, tri) == 0
    rim = g.rim.numpy()
    assert rim.sum() == 16
    np.testing.assert_allclose(np.hypot(ref[rim, 0] - 0.3, ref[rim, 1] - 0.5), 0.1, atol=1e-6)
    sides = M.boundary_masks(ref)
    assert not (rim & sides["any"]).any()
    # masks: side nodes keep their normal coordinate only, rim nodes both, interior nodes none
    np.testing.assert_array_equal(g.x_fixed.numpy(), sides["x_fixed"] | rim)
    np.testing.assert_array_equal(g.y_fixed.numpy(), sides["y_fixed"] | rim)
    np.testing.assert_array_equal(g.x[:, 2].numpy() == 1.0, sides["any"] | rim)  # official: every boundary node
    assert int(sides["any"].sum()) == 4 * 9
    mon = g.x[:, 3]
    assert torch.isfinite(mon).all() and float(mon.max()) == pytest.approx(1.0) and float(mon.min()) >= 0
    assert float(mon[torch.from_numpy(rim)].mean()) > 10 * float(mon.median())  # peaked at the cylinder
    U, th, gam, x0, y0, R = g.cylinder[0, 1:].tolist()
    assert float(g.cylinder[0, 0]) == 0.25 and gam == pytest.approx(2 * np.pi * 0.1 * 1.5)  # sin(pi / 2) = 1
    free = cylinder_graph(10, 0.25, fix_rim=False, **SMALL_CYL)
    assert not (free.x_fixed & free.rim).any() and torch.equal(free.pos, g.pos)
    pts = cylinder_fluid_points(ref, tri, 300)
    assert len(pts) == 300 and np.all(np.hypot(pts[:, 0] - 0.3, pts[:, 1] - 0.5) > 0.1 * np.cos(np.pi / 16) - 1e-9)


def test_identity_ratio_and_datamodule():
    dm = MeshGraphDataModule(n_train=2, train_sizes=(5,), test_size=9, test_family="cylinder",
                             cylinder={"n_ring": 12, "times": [0.0, 0.5]})
    dm.setup()
    items = dm.test_set.items
    assert [float(d.cylinder[0, 0]) for d in items] == [0.0, 0.5] and torch.equal(items[0].pos, items[1].pos)
    assert len(list(dm.test_dataloader())) == 2
    d = items[1]
    ref, tri = d.pos.double().numpy(), d.face.T.numpy()
    flow = tuple(d.cylinder[0, 1:].tolist())
    assert cylinder_interp_ratio(ref, ref, tri, flow, 400) == pytest.approx(1.0)
    # moving interior nodes towards the cylinder (a valid mesh, rim and sides untouched) changes the ratio
    moved = ref.copy()
    inner = ~(M.boundary_masks(ref)["any"] | d.rim.numpy())
    towards = np.array([0.3, 0.5]) - moved[inner]
    moved[inner] += 0.15 * towards * np.exp(-4 * np.linalg.norm(towards, axis=1))[:, None]
    assert M.count_inverted(moved, tri) == 0
    assert cylinder_interp_ratio(moved, ref, tri, flow, 400) != pytest.approx(1.0)


def test_untrained_model_keeps_sides_and_rim_and_the_ablation_frees_the_rim():
    torch.manual_seed(0)
    net = UM2N(hidden=16, gat_heads=2, num_loop=6)
    g = cylinder_graph(10, 0.125, **SMALL_CYL)
    free = cylinder_graph(10, 0.125, fix_rim=False, **SMALL_CYL)
    with torch.no_grad():
        out, out_free = net(g).double().numpy(), net(free).double().numpy()
    ref = g.pos.double().numpy()
    assert M.boundary_violation(out, ref) < 1e-6 and _rim_displacement(out, g) == 0.0
    assert M.boundary_violation(out_free, ref) < 1e-6 and _rim_displacement(out_free, free) > 1e-5


def test_fast_cylinder_variant():
    run = fast_run("um2n/cylinder", *SMALL)
    run.assert_contract()
    dm = run.datamodule  # trained on the offline Helmholtz problems; their held-out split is not drawn (unused)
    assert dm.hparams.name == "helmholtz_offline" and len(dm.train_set) == 6 and "file" not in dm._test_sets
    for key in ("interp_ratio_cylinder", "inverted_cylinder", "boundary_violation_cylinder", "inverted",
                "boundary_violation", "interp_ratio_cylinder_t0.000", "inverted_cylinder_t0.250",
                "boundary_violation_cylinder_t0.250"):
        assert np.isfinite(run.metrics[f"test/{key}"]), key
    assert "test/interp_ratio" not in run.metrics and "test/node_rmse_cells" not in run.metrics
    assert run.metrics["test/boundary_violation_cylinder"] < 1e-6
    g = cylinder_graph(10, 0.25, **SMALL_CYL)  # the briefly trained model keeps rim and side nodes
    with torch.no_grad():
        out = run.model(g).double().numpy()
    assert M.boundary_violation(out, g.pos.double().numpy()) < 1e-6 and _rim_displacement(out, g) == 0.0
    import matplotlib.pyplot as plt

    figs = run.model.figures()
    assert set(figs) == {"moved_meshes"}
    plt.close(figs["moved_meshes"])
    ident = fast_run("um2n/cylinder", *SMALL, "model.mover=identity", steps=1)
    assert ident.metrics["test/interp_ratio_cylinder"] == pytest.approx(1.0)
    assert ident.metrics["test/inverted_cylinder"] == 0 and ident.metrics["test/boundary_violation_cylinder"] == 0


def test_bad_cylinder_config_raises():
    assert cylinder_config(None)["times"] == tuple(CYLINDER_DEFAULTS["times"])
    with pytest.raises(ValueError, match="unknown cylinder keys"):
        MeshGraphDataModule(test_family="cylinder", cylinder={"reynolds": 100})
    with pytest.raises(ValueError, match="inside the unit square"):
        cylinder_config({"radius": 0.5})
    with pytest.raises(ValueError, match="inside the unit square"):
        cylinder_config({"centre": [0.05, 0.5]})
    with pytest.raises(ValueError, match="times"):
        cylinder_config({"times": []})
    with pytest.raises(ValueError, match="n_ring"):
        cylinder_config({"n_ring": 3})
    with pytest.raises(ValueError, match="fix_rim"):
        cylinder_config({"fix_rim": "yes"})
    with pytest.raises(ValueError, match="U, period and clip"):
        cylinder_config({"U": 0.0})
    with pytest.raises(ValueError, match="non-numeric"):
        cylinder_config({"radius": "big"})
    with pytest.raises(ValueError, match="cylinder must be a mapping"):
        MeshGraphDataModule(test_family="cylinder", cylinder=[0.1])
    from launch import config as zconfig
    from launch import train
    from launch.errors import UserError

    cfg = zconfig.compose(["experiment=um2n/cylinder", "logger=none", "+data.cylinder.reynolds=100"])
    with pytest.raises(UserError, match="unknown cylinder keys"):
        train.run(cfg, make_run_dir=False)


# ------------------------------------------------------------------------------------------------ Navier-Stokes
NS_TINY = {"dt": 0.005, "dt_snap": 0.05, "warmup": 0.2, "settle": 0.05, "phase_window": 0.1, "ramp": 0.05}
NS_CYL = {"field": "navier_stokes", "ns": NS_TINY, "n_ring": 16, "times": [0.0, 0.05]}
SMALL_NS = SMALL[:4] + ["data.cylinder.times=[0.0,0.05]", "data.cylinder.n_ring=16", "trainer.limit_test_batches=2"] + [
    f"data.cylinder.ns.{k}={v}" for k, v in NS_TINY.items()]


@pytest.fixture(scope="module", autouse=True)
def _ns_cache(tmp_path_factory):
    """The Navier-Stokes snapshots are cached on disk under $PAPERZOO_DATA/cylinder_ns: a temporary folder here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAPERZOO_DATA", str(tmp_path_factory.mktemp("paperzoo_data")))
        yield


def test_ns_family_builds_with_the_official_monitor_and_reference():
    dm = MeshGraphDataModule(n_train=2, train_sizes=(5,), test_size=10, test_family="cylinder", cylinder=NS_CYL)
    items = dm.test_set.items
    assert [float(d.cylinder[0, 0]) for d in items] == [0.0, 0.05] and torch.equal(items[0].pos, items[1].pos)
    assert len(list(dm.test_dataloader())) == 2
    pot = cylinder_graph(10, 0.0, int(np.random.default_rng(5000).integers(2**31)), **SMALL_CYL)
    for d in items:
        ref, tri = d.pos.double().numpy(), d.face.T.numpy()
        assert int(d.kind) == KIND_CYLINDER and np.isnan(float(d.cylinder[0, 3])) and torch.isnan(d.y).all()
        assert torch.equal(d.pos, pot.pos) and torch.equal(d.x[:, :3], pot.x[:, :3])  # the potential family's mesh
        mon = d.x[:, 3]
        assert torch.isfinite(mon).all() and float(mon.max()) == pytest.approx(1.0) and float(mon.min()) >= 0
        rim = d.rim.numpy()
        assert float(mon[torch.from_numpy(rim)].mean()) > 2 * float(mon.median())  # no-slip rim: large shear
        # the reference carries the solver's field: its first points are the test mesh's nodes (P2 vertex DOFs)
        rp, rv = d.ns_ref_pos.numpy(), d.ns_ref_val.numpy()
        np.testing.assert_allclose(rp[:len(ref)], ref, atol=1e-6)
        assert np.abs(rv[:len(ref)][rim]).max() < 1e-6                       # fixed cylinder: no-slip rim
        inflow = (np.abs(ref[:, 0]) < 1e-9) & (ref[:, 1] > 0) & (ref[:, 1] < 1)
        np.testing.assert_allclose(rv[:len(ref)][inflow, 0], 6 * ref[inflow, 1] * (1 - ref[inflow, 1]), atol=1e-6)
        assert M.count_inverted(rp, d.ns_ref_tri.numpy()) == 0
        # identity mover: ratio 1; moving interior nodes changes it
        args = (rp, d.ns_ref_tri.numpy(), rv, 400)
        assert cylinder_ns_interp_ratio(ref, ref, tri, *args) == 1.0
        moved = ref.copy()
        inner = ~(M.boundary_masks(ref)["any"] | rim)
        towards = np.array([0.3, 0.5]) - moved[inner]
        moved[inner] += 0.15 * towards * np.exp(-4 * np.linalg.norm(towards, axis=1))[:, None]
        assert M.count_inverted(moved, tri) == 0
        assert cylinder_ns_interp_ratio(moved, ref, tri, *args) != pytest.approx(1.0)
    assert not torch.equal(items[0].x[:, 3], items[1].x[:, 3])                 # the flow evolves
    # the monitor is the official one: min(||grad u||_F^2, clip) / max (all nodes clipped -> all 1)
    clipped = cylinder_graph(10, 0.05, int(np.random.default_rng(5000).integers(2**31)), **NS_CYL, clip=1e-9)
    assert torch.all(clipped.x[:, 3] == 1.0)


def test_fast_ns_variant_and_identity():
    run = fast_run("um2n/cylinder_ns", *SMALL_NS)
    run.assert_contract()
    for key in ("interp_ratio_cylinder", "inverted_cylinder", "boundary_violation_cylinder",
                "interp_ratio_cylinder_t0.000", "interp_ratio_cylinder_t0.050"):
        assert np.isfinite(run.metrics[f"test/{key}"]), key
    assert run.metrics["test/boundary_violation_cylinder"] < 1e-6
    ident = fast_run("um2n/cylinder_ns", *SMALL_NS, "model.mover=identity", steps=1)
    assert ident.metrics["test/interp_ratio_cylinder"] == 1.0
    assert ident.metrics["test/inverted_cylinder"] == 0 and ident.metrics["test/boundary_violation_cylinder"] == 0


def test_cylinder_field_config():
    assert cylinder_config(None)["field"] == "potential" and cylinder_config(None)["ns"] is None
    c = cylinder_config(NS_CYL)
    assert c["ns"]["omega0_max"] == 0.0 and c["ns"]["dt"] == 0.005 and c["ns"]["U"] == 1.0
    assert cylinder_config(c) == c                                              # a completed config validates again
    for bad, match in (({"field": "stokes"}, "field must be one of"), ({"ns": [1]}, "ns must be a mapping"),
                       ({"ns": {"reynolds": 1}}, "unknown Navier-Stokes"), ({"ns": {"Re": -1}}, "Re must be > 0"),
                       ({"ns": {"U": 2.0}}, "cylinder U"), ({"times": [0.0, 0.07]}, "multiples of ns.dt_snap"),
                       ({"theta": 0.2}, "theta must be 0"), ({"ns": {"dt": 0.003}}, "whole number")):
        given = {**NS_CYL, **bad}
        if isinstance(bad.get("ns"), dict):
            given["ns"] = {**NS_TINY, **bad["ns"]}
        with pytest.raises(ValueError, match=match):
            cylinder_config(given)
    with pytest.raises(ValueError, match="test_size"):
        cylinder_config({**NS_CYL, "n_nodes": 400}, n_side=10)


@pytest.mark.parametrize("override, match", [
    ("data.cylinder.field=stokes", "field must be one of"),
    ("data.cylinder.ns.Re=-1", "Re must be > 0"),
    ("+data.cylinder.ns.reynolds=100", "unknown Navier-Stokes"),
    ("data.cylinder.times=[0.0,0.01]", "multiples of ns.dt_snap"),
    ("data.cylinder.n_nodes=400", "test_size"),
])
def test_bad_ns_config_is_one_line_through_the_cli(override, match):
    from launch import config as zconfig
    from launch import train
    from launch.errors import UserError

    cfg = zconfig.compose(["experiment=um2n/cylinder_ns", "logger=none", override])
    with pytest.raises(UserError, match=match) as err:
        train.run(cfg, make_run_dir=False)
    assert "\n" not in str(err.value)


def test_diverging_ns_solve_is_a_user_error():
    from launch.errors import UserError

    ns = {**NS_TINY, "dt": 0.05, "dt_snap": 0.05, "warmup": 2.0, "omega0_max": 3.0}  # far above the step limit
    with np.errstate(all="ignore"), pytest.raises(UserError, match="diverged.*reduce dt"):
        cylinder_graph(10, 0.0, 3, **{**NS_CYL, "ns": ns, "times": [0.0]})
