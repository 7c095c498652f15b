"""Data-free mesh mover, cylinder case (official `dmm.py --experiment cy`): the offline exact potential flow and
its mesh, the loader of the official `cylinder_rot_tri` file format, the graph branch, a short training run and the
validity checks of the moved-mesh evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.cylinder_flow import (
    CylinderFlowDataModule,
    cylinder_mesh,
    hole_boundary_edges,
    kernel_interpolant,
    load_cylinder_rot_tri,
    make_potential_dataset,
    potential_flow,
    rim_normals,
)
from launch.errors import UserError
from lit_models.common import mesh as M
from lit_models.pde.data_free_mesh_mover import DataFreeMeshMoverModule
from lit_models.pde.dmm_networks import BranchGNN, DMMNet
from tests.papers.contract import fast_run

FLOW = (1.2, 0.3, 0.5, 0.3, 0.5, 0.1)  # U, theta, Gamma, x0, y0, R
SMALL = ["data.n_nodes=150", "data.n_ring=16", "data.n_traj=4", "data.n_steps=12", "data.n_train_traj=3",
         "data.batch_size=2", "data.n_test_frames=4", "model.n_points=32", "model.n_eval_points=64",
         "model.n_interp_points=400", "model.gnn_knn=8"]


# ------------------------------------------------------------------------------------------------ exact flow
def test_potential_flow_is_exact():
    """No penetration on the cylinder, divergence- and curl-free, circulation Gamma, Bernoulli, uniform far field."""
    U, th, gam, x0, y0, R = FLOW
    ang = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    n = np.stack([np.cos(ang), np.sin(ang)], 1)
    on = potential_flow(np.array([x0, y0]) + R * n, FLOW)
    assert np.abs(np.sum(on[:, :2] * n, 1)).max() < 1e-12
    rng = np.random.default_rng(0)
    p = rng.random((200, 2))
    p = p[np.hypot(p[:, 0] - x0, p[:, 1] - y0) > 1.3 * R]
    h = 1e-5
    dx, dy = np.array([h, 0.0]), np.array([0.0, h])
    du_dx = (potential_flow(p + dx, FLOW) - potential_flow(p - dx, FLOW)) / (2 * h)
    du_dy = (potential_flow(p + dy, FLOW) - potential_flow(p - dy, FLOW)) / (2 * h)
    scale = np.abs(du_dx[:, :2]).max()
    assert np.abs(du_dx[:, 0] + du_dy[:, 1]).max() < 1e-5 * scale  # div v = 0
    assert np.abs(du_dx[:, 1] - du_dy[:, 0]).max() < 1e-5 * scale  # curl v = 0
    r = 2 * R  # circulation = the line integral of v . t on a circle around the cylinder
    pts = np.array([x0, y0]) + r * n
    t = np.stack([-np.sin(ang), np.cos(ang)], 1)
    circ = np.sum(np.sum(potential_flow(pts, FLOW)[:, :2] * t, 1)) * (2 * np.pi * r / len(ang))
    assert circ == pytest.approx(gam, rel=1e-9)
    vals = potential_flow(p, FLOW)
    np.testing.assert_allclose(vals[:, 2] + 0.5 * np.sum(vals[:, :2] ** 2, 1), 0.5 * U**2, atol=1e-12)
    far = potential_flow(np.array([[x0 + 1e8, y0 + 1e8]]), FLOW)[0]
    np.testing.assert_allclose(far[:2], [U * np.cos(th), U * np.sin(th)], atol=1e-6)


def test_cylinder_mesh_and_offline_dataset():
    pos, tri = cylinder_mesh(200, 24, seed=1)
    assert pos.shape == (200, 2) and M.count_inverted(pos, tri) == 0
    c = pos[tri].mean(1)
    assert np.all(np.hypot(c[:, 0] - 0.3, c[:, 1] - 0.5) > 0.1)  # nothing inside the cylinder
    ring_area = 0.5 * 24 * np.sin(2 * np.pi / 24) * 0.1**2  # the square minus the inscribed 24-gon
    assert M.signed_areas(pos, tri).sum() == pytest.approx(1.0 - ring_area, abs=1e-12)
    assert len(hole_boundary_edges(pos, tri)) == 24
    rim, normals = rim_normals(pos, tri)  # on a circle the rim normals are radial
    radial = (pos[rim] - [0.3, 0.5]) / 0.1
    np.testing.assert_allclose(np.abs(np.sum(normals * radial, 1)), 1.0, atol=1e-12)
    data, flows = make_potential_dataset(2, 3, 200, 24, seed=1)
    assert data.shape == (2, 3, 200, 5) and data.dtype == torch.float32
    np.testing.assert_allclose(data[1, 2, :, :2].numpy() * 2, pos, atol=1e-6)  # the file's frame is the unit square / 2
    np.testing.assert_allclose(data[1, 2, :, 2:].numpy(), potential_flow(pos, flows[1, 2]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(flows[1, 0, 2], flows[1, 2, 2])  # the rotation varies in time


def test_kernel_interpolant_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    nodes = torch.rand(30, 2, generator=g, dtype=torch.float64)
    vals = torch.randn(2, 30, generator=g, dtype=torch.float64)
    q = (torch.rand(7, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    u, grad = kernel_interpolant(nodes, vals, q)
    auto = torch.stack([torch.autograd.grad(u[b].sum(), q, retain_graph=True)[0] for b in range(2)])
    torch.testing.assert_close(grad, auto)


# ---------------------------------------------------------------------------------------------- file loader
def _fixture(tmp_path, n_traj=3, n_t=12, n_nodes=120):
    data, _ = make_potential_dataset(n_traj, n_t, n_nodes, 16, seed=3)
    path = tmp_path / "cylinder_rot_tri"
    torch.save(data, path)
    return path, data


def test_loader_reads_the_official_format(tmp_path):
    path, data = _fixture(tmp_path)
    torch.testing.assert_close(load_cylinder_rot_tri(path), data)
    dm = CylinderFlowDataModule(name="cylinder_rot_tri", data_dir=str(tmp_path), n_nodes=120, n_train_traj=2,
                                drop_first=10, monitor_scale=0.01, n_test_frames=None)
    dm.setup()
    assert len(dm.train_set) == 2 * 2 and len(dm.test_set) == 2  # trajectories [:2] / [2:], steps [10:]
    item = dm.train_set[1]
    res = int(np.sqrt(120))
    assert item["u"].shape == (120, 3) and item["monitor"].shape == (res, res)
    torch.testing.assert_close(item["u"][:, 1:], data[0, 11, :, :2] * 2)  # official x2 scaling
    torch.testing.assert_close(item["u"][:, 0], data[0, 11, :, 2])  # column 2
    assert torch.isnan(item["flow"][:6]).all()  # a file carries no exact flow
    assert item["monitor"].min() >= 1.0 and item["c"] > 1.0
    assert M.count_inverted(dm.pos, dm.tri) == 0 and len(hole_boundary_edges(dm.pos, dm.tri)) == 16


def test_pulled_back_monitor_inputs_and_paper_variant_on_the_official_format(tmp_path):
    """data.with_gradient: each frame also carries grad u of the softmax-kernel interpolant on the monitor grid (the
    official uni_ux_, uni_uy_: autograd of the interpolant, here its exact gradient) and monitor_scale alpha, with
    |grad u| / (monitor_scale alpha) = m - 1; the cylinder paper-scale variant (official train_MA_res 'cy': pulled-back
    monitor by the softmax kernel, candidate collocation) trains on a file in the official format."""
    path, data = _fixture(tmp_path)
    dm = CylinderFlowDataModule(name="cylinder_rot_tri", path=str(path), n_nodes=120, n_train_traj=2,
                                n_test_frames=None, with_gradient=True)
    dm.setup()
    item, res = dm.train_set[1], int(np.sqrt(120))
    assert item["grad"].shape == (2, res, res) and item["monitor_norm"].shape == ()
    torch.testing.assert_close(item["grad"].norm(dim=0) / item["monitor_norm"], item["monitor"] - 1.0, rtol=1e-4,
                               atol=1e-5)
    s = torch.linspace(0.0, 1.0, res, dtype=torch.float64)
    X, Y = torch.meshgrid(s, s, indexing="xy")
    q = torch.stack([X, Y], -1).reshape(-1, 2)
    exact = kernel_interpolant(torch.as_tensor(dm.pos), data[0, 11, :, 2].double()[None], q)[1][0]  # frame 1: step 11
    torch.testing.assert_close(item["grad"], exact.reshape(res, res, 2).permute(2, 0, 1).float())
    plain = CylinderFlowDataModule(name="cylinder_rot_tri", path=str(path), n_nodes=120, n_train_traj=2)
    plain.setup()
    assert "grad" not in plain.train_set[0]
    torch.testing.assert_close(plain.train_set[1]["monitor"], item["monitor"])  # the monitor is unchanged
    run = fast_run("data_free_mesh_mover/cylinder", f"data.path={path}", "data.n_nodes=120", "data.n_train_traj=2",
                   "data.batch_size=2", "data.n_test_frames=2", "model.n_points=16", "model.n_boundary=4",
                   "model.n_eval_points=64", "model.n_interp_points=400", "model.gnn_knn=8", "model.rf_epochs=0",
                   "model.trunk_layers=[2,8,16]", "model.head_layers=[32,16,1]", steps=2)
    run.assert_contract()
    hp = run.model.hparams
    assert (hp.monitor_gradient, hp.gradient_interp, hp.collocation) == ("pulled_back", "kernel", "candidates")


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"not a tensor at all", "not a readable"),
    (torch.zeros(3, 12, 5), "expected a tensor"),
    ({"u": torch.zeros(3)}, "expected a tensor"),
    (torch.zeros(3, 12, 120, 4), "expected a tensor"),
    (torch.full((3, 12, 120, 5), float("nan")), "NaN"),
    (torch.zeros(3, 12, 120, 5, dtype=torch.long), "floating-point"),
])
def test_loader_bad_files(tmp_path, content, match):
    path = tmp_path / "cylinder_rot_tri"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=match) as err:
        load_cylinder_rot_tri(path)
    assert "\n" not in str(err.value)


def test_datamodule_config_errors(tmp_path):
    path, _ = _fixture(tmp_path)
    for kw, match in ((dict(n_nodes=100), "data.n_nodes=120"), (dict(n_nodes=120, drop_first=12), "drop_first"),
                      (dict(n_nodes=120, n_train_traj=3), "n_train_traj")):
        with pytest.raises(UserError, match=match):
            CylinderFlowDataModule(name="cylinder_rot_tri", path=str(path), **kw).setup()
    with pytest.raises(UserError, match="unknown cylinder dataset"):
        CylinderFlowDataModule(name="cylinder")


# --------------------------------------------------------------------------------------------- graph branch
def test_graph_branch_shapes_and_permutation():
    """Node-level message passing is permutation-equivariant; the official read-out reads nodes by index."""
    torch.manual_seed(0)
    V = 40
    br = BranchGNN(V, out_dim=6, hidden=4, n_layers=3, knn=7, readout=[16])
    u = torch.cat([torch.randn(3, V, 1), torch.rand(1, V, 2).expand(3, -1, -1)], -1)
    out = br(u)
    assert out.shape == (3, 6)
    perm = torch.randperm(V)
    torch.testing.assert_close(br.node_features(u[:, perm]), br.node_features(u)[:, perm])
    assert not torch.allclose(br(u[:, perm]), out)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in br.parameters())
    with pytest.raises(ValueError):
        br(u[:, :30])
    net = DMMNet([8, 16, 8, 1], [2, 8, 8], [14, 8, 1], grid=V, branch="gnn", gnn_knn=7, gnn_readout=[16])
    assert net(u, torch.rand(3, 5, 2)).shape == (3, 5)
    with pytest.raises(ValueError):
        DMMNet([8, 16, 8, 1], [2, 8, 8], [14, 8, 1], branch="transformer")


# ----------------------------------------------------------------------------------------- training + eval
def test_fast_contract_and_mesh_validity():
    run = fast_run("data_free_mesh_mover/cylinder_offline", *SMALL)
    run.assert_contract()
    for key in ("ma_residual", "min_det", "min_det_fluid", "boundary_disp", "inverted", "hole_disp", "equi_cv",
                "equi_ratio", "interp_ratio"):
        assert f"test/{key}" in run.metrics, sorted(run.metrics)
    assert run.metrics["test/min_det_fluid"] >= run.metrics["test/min_det"]
    figs = run.model.figures()
    assert set(figs) == {"moved_meshes"}
    import matplotlib.pyplot as plt

    plt.close(figs["moved_meshes"])
    hole = fast_run("data_free_mesh_mover/cylinder_offline", *SMALL, "model.w_hole=1000.0", steps=2)
    hole.assert_contract()
    assert "train/loss_hole" in hole.metrics
    ident = fast_run("data_free_mesh_mover/cylinder_offline", *SMALL, "model.mover=identity", steps=1)
    for key, value in (("interp_ratio", 1.0), ("equi_ratio", 1.0), ("inverted", 0.0), ("hole_disp", 0.0),
                       ("min_det", 1.0), ("boundary_disp", 0.0)):
        assert ident.metrics[f"test/{key}"] == pytest.approx(value), key


def test_evaluation_detects_a_folded_mesh():
    """The moved-mesh metrics count every triangle of a mirrored mesh as inverted and see the hole move."""
    dm = CylinderFlowDataModule(n_nodes=150, n_ring=16, n_traj=3, n_steps=11, n_train_traj=2, monitor_scale=1.0)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    m = DataFreeMeshMoverModule(branch="gnn", grid=150, gnn_knn=8, trunk_layers=[2, 8, 8], head_layers=[16, 8, 1],
                                gnn_readout=[16], mover="identity", n_interp_points=300)
    grid = torch.rand(50, 2)
    dets = torch.ones(len(batch["u"]), 50)
    m.forward = lambda u, xi: torch.stack([1 - xi[..., 0], xi[..., 1]], -1)  # a reflection: orientation flips
    out, _ = m._mesh_metrics(batch, grid, dets)
    assert out["inverted"] == len(batch["u"]) * len(dm.tri)
    assert out["hole_disp"] > 0.1  # the cylinder at x = 0.3 is mirrored to x = 0.7
    assert out["equi_ratio"] > 0 and np.isfinite(out["interp_ratio"])


def test_monge_ampere_reference_metrics():
    """model.ma_reference: the converged MA meshes of the same monitors on the data mesh (FEM relaxation). A mover
    that returns exactly those meshes has node distance 0 from them and their interpolation ratio; the identity
    mover is as far from them as they are from the original mesh; equidistribution improves on the MA meshes."""
    dm = CylinderFlowDataModule(n_nodes=150, n_ring=16, n_traj=3, n_steps=11, n_train_traj=2, monitor_scale=1.0)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    m = DataFreeMeshMoverModule(branch="gnn", grid=150, gnn_knn=8, trunk_layers=[2, 8, 8], head_layers=[16, 8, 1],
                                gnn_readout=[16], mover="identity", n_interp_points=300, ma_reference=True)
    grid, dets = torch.rand(50, 2), torch.ones(len(batch["u"]), 50)
    nodes, tri = batch["u"][0, :, 1:3].double().numpy(), batch["tri"][0].numpy()
    ma = m._ma_reference(batch, nodes, tri, hole_boundary_edges(nodes, tri))
    assert max(ma["residual"]) < 1e-3
    out, _ = m._mesh_metrics(batch, grid, dets)
    for key in ("ma_interp_ratio", "ma_equi_ratio", "ma_inverted", "ma_residual_fem", "node_rmse_to_ma_edges"):
        assert np.isfinite(out[key]), key
    assert out["ma_residual_fem"] < 1e-3 and out["ma_equi_ratio"] < 0.9
    assert out["ma_inverted"] == sum(M.count_inverted(p, tri) for p in ma["pos"])  # the rim can tangle (reported)
    edges = M.mesh_edges(tri)
    h = np.linalg.norm(nodes[edges[:, 0]] - nodes[edges[:, 1]], axis=1).mean()
    expected = np.mean([np.sqrt(np.mean(np.sum((p - nodes) ** 2, 1))) for p in ma["pos"]]) / h
    assert out["node_rmse_to_ma_edges"] == pytest.approx(expected) and expected > 0.1
    assert np.allclose(m._last["target"], np.stack(ma["pos"]))  # figures() draws them dashed over the moved mesh
    import matplotlib.pyplot as plt

    plt.close(m.figures()["moved_meshes"])
    ma_pos = torch.as_tensor(np.stack(ma["pos"]))
    m.forward = lambda u, xi: ma_pos.to(xi.dtype)  # the MA meshes themselves as the mover
    exact, _ = m._mesh_metrics(batch, grid, dets)
    assert exact["node_rmse_to_ma_edges"] == pytest.approx(0.0, abs=1e-5)  # the mover output is float32
    assert exact["interp_ratio"] == pytest.approx(out["ma_interp_ratio"])


# ------------------------------------------------------------------------------------ Navier-Stokes variant
NS_TINY = ["data.ns.dt=0.005", "data.ns.dt_snap=0.01", "data.ns.warmup=0.2", "data.ns.settle=0.05",
           "data.ns.phase_window=0.1", "data.ns.ramp=0.05"]


def test_navier_stokes_variant_trains_and_measures_interpolation(tmp_path):
    """The cylinder_ns experiment (solver-made Navier-Stokes data, tiny and cached in tmp_path) trains through the same
    path; the interpolation ratio uses the solver's fine reference (1 for the identity mover)."""
    small = [*SMALL, f"data.data_dir={tmp_path}", *NS_TINY]
    run = fast_run("data_free_mesh_mover/cylinder_ns", *small)
    run.assert_contract()
    for key in ("ma_residual", "inverted", "hole_disp", "equi_ratio", "interp_ratio"):
        assert f"test/{key}" in run.metrics, sorted(run.metrics)
    assert np.isfinite(run.metrics["test/interp_ratio"])
    assert len(list(tmp_path.glob("cylinder_ns_*.npz"))) == 1  # generated once, reused by the second run
    ident = fast_run("data_free_mesh_mover/cylinder_ns", *small, "model.mover=identity", steps=1)
    for key, value in (("interp_ratio", 1.0), ("equi_ratio", 1.0), ("inverted", 0.0), ("hole_disp", 0.0)):
        assert ident.metrics[f"test/{key}"] == pytest.approx(value), key
