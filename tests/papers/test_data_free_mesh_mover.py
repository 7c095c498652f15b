"""Data-free mesh mover (ICLR 2024, MM-PDE): the paper contract's fast test, deterministic checks of the MA
residual pieces (Hessian by autograd, monitor at the moved point, importance sampling, exact targets) and the
card's small-scale claims."""
from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.meshes import FrontFieldDataModule, exact_front_mesh, front_fields, load_burgers_192
from launch.check import claims_of, run_claim
from launch.errors import UserError
from lit_models.common import mesh as M
from lit_models.pde.data_free_mesh_mover import DataFreeMeshMoverModule
from lit_models.pde.dmm_networks import DMMNet
from lit_models.pde.dmm_sampling import (
    candidate_points,
    importance_points,
    kernel_interpolate,
    pulled_back_monitor,
    sample_monitor,
)
from tests.papers.contract import fast_run

# a tiny network for the deterministic checks (branch 4/8/4/1 on a 12 x 12 grid, trunk 2-8-8, head 16-8-1)
TINY_NET = dict(branch_channels=[4, 8, 4, 1], branch_fc=[16], grid=12, trunk_layers=[2, 8, 8], head_layers=[16, 8, 1])
SMALL = ["data.n_train=16", "data.n_test=2", "data.n_test_aligned=2", "data.batch_size=2", "data.grid=16",
         "data.steps_per_epoch=3", "model.n_points=32", "model.n_eval_points=64", "model.n_interp_points=500"]


def test_fast_contract():
    run = fast_run("data_free_mesh_mover", *SMALL)
    run.assert_contract()
    for key in ("test/ma_residual", "test/min_det", "test/boundary_disp", "test/inverted", "test/interp_ratio",
                "test/node_rmse_cells"):
        assert key in run.metrics, sorted(run.metrics)
    x = run.model(torch.zeros(3, 1, 16, 16), torch.rand(3, 7, 2))
    assert x.shape == (3, 7, 2)
    figs = run.model.figures()
    assert set(figs) == {"moved_meshes"}
    import matplotlib.pyplot as plt

    plt.close(figs["moved_meshes"])


def test_fast_contract_hard_boundary_identity_and_ablations():
    run = fast_run("data_free_mesh_mover", *SMALL, "model.boundary=hard")
    run.assert_contract()
    assert run.metrics["test/boundary_disp"] < 1e-6
    ident = fast_run("data_free_mesh_mover", *SMALL, "model.mover=identity")
    assert ident.metrics["test/interp_ratio"] == pytest.approx(1.0)
    assert ident.metrics["test/min_det"] == pytest.approx(1.0)
    direct = fast_run("data_free_mesh_mover", *SMALL, "model.mover=direct", "model.det_term=false")
    direct.assert_contract()
    assert np.isfinite(direct.metrics["test/ma_residual"])


def test_bad_config_raises():
    with pytest.raises(ValueError):
        DataFreeMeshMoverModule(mover="coordinates")
    with pytest.raises(ValueError):
        DataFreeMeshMoverModule(mover="direct", boundary="hard")
    with pytest.raises(ValueError):
        DataFreeMeshMoverModule(boundary="mixed")
    with pytest.raises(ValueError):
        DataFreeMeshMoverModule(trunk_init_scale=0.0)
    with pytest.raises(ValueError):
        FrontFieldDataModule(monitor_derivative="laplacian")
    with pytest.raises(ValueError):
        FrontFieldDataModule(name="cylinder")


def test_hessian_and_map_match_finite_differences():
    """x = xi + grad phi and det(I + Hess phi) from autograd agree with central differences of phi."""
    torch.manual_seed(0)
    m = DataFreeMeshMoverModule(**TINY_NET)
    net = m.net.double()
    u = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    xi = torch.rand(2, 5, 2, dtype=torch.float64) * 0.8 + 0.1
    m.net.float()
    x, hess, g = m.mesh_map(u.float(), xi.float())
    net.double()
    eps = 1e-4

    def phi(p):
        return net(u, p)

    for d in range(2):
        e = torch.zeros(2)
        e[d] = eps
        fd = (phi(xi + e) - phi(xi - e)) / (2 * eps)
        torch.testing.assert_close(g[..., d].double(), fd, atol=2e-4, rtol=1e-3)
    fd_xx = (phi(xi + torch.tensor([eps, 0])) - 2 * phi(xi) + phi(xi - torch.tensor([eps, 0]))) / eps**2
    torch.testing.assert_close(hess[..., 0, 0].double(), fd_xx, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(x, xi.float() + g)


def test_direct_baseline_map_and_jacobian_match_finite_differences():
    """mover="direct" (the card's "outputs x directly" baseline): x = xi + d(u, xi) from a 2-vector head, and the
    det term uses the full, non-symmetric Jacobian I + grad d (checked against central differences of d)."""
    torch.manual_seed(0)
    m = DataFreeMeshMoverModule(**TINY_NET, mover="direct")
    u = torch.randn(2, 1, 12, 12)
    xi = torch.rand(2, 5, 2) * 0.8 + 0.1
    x, jac, d = m.mesh_map(u, xi)
    torch.testing.assert_close(d, m.net(u, xi))
    torch.testing.assert_close(x, xi + d)
    net = m.net.double()
    eps = 1e-5
    for j in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[j] = eps
        fd = (net(u.double(), xi.double() + e) - net(u.double(), xi.double() - e)) / (2 * eps)  # (B, P, 2): d d_i / d xi_j
        torch.testing.assert_close(jac[..., :, j].double(), fd, atol=1e-4, rtol=1e-3)
    assert float((jac[..., 0, 1] - jac[..., 1, 0]).abs().max()) > 1e-4  # not a Hessian: no symmetry imposed
    det = m.det(jac)
    torch.testing.assert_close(det, torch.linalg.det(torch.eye(2) + jac))


def test_det_term_ablation_changes_only_the_training_residual():
    """det_term=false (the card's ablation) trains on m(x)/c - 1; evaluation keeps the full MA residual."""
    torch.manual_seed(0)
    m = DataFreeMeshMoverModule(**TINY_NET, det_term=False)
    batch = {"u": torch.randn(2, 1, 12, 12), "monitor": 1 + torch.rand(2, 12, 12), "c": torch.tensor([1.5, 1.4])}
    xi = torch.rand(2, 6, 2)
    r_full, hess = m.residual(batch, xi)
    r_nodet, _ = m.residual(batch, xi, with_det=False)
    x = m(batch["u"], xi)
    mon = sample_monitor(batch["monitor"], x)
    torch.testing.assert_close(r_nodet, mon / batch["c"][:, None] - 1)
    torch.testing.assert_close(r_full, mon * m.det(hess) / batch["c"][:, None] - 1)
    assert m.hparams.det_term is False


def test_monitor_is_sampled_at_the_moved_point_and_points_follow_m():
    R = 33
    s = np.linspace(0, 1, R)
    mon = torch.tensor(1.0 + np.tile(s, (R, 1)) * 3.0, dtype=torch.float32)[None]  # m = 1 + 3x
    x = torch.tensor([[[0.25, 0.9], [0.5, 0.1]]])
    torch.testing.assert_close(sample_monitor(mon, x), torch.tensor([[1.75, 2.5]]))
    pts = importance_points(mon, 20000, torch.Generator().manual_seed(0))
    # density (1 + 3x) / 2.5 has mean x = (1/2 + 1) / 2.5 = 0.6
    assert float(pts[..., 0].mean()) == pytest.approx(0.6, abs=0.01)
    assert float(pts[..., 1].mean()) == pytest.approx(0.5, abs=0.01)


def test_official_kernel_interpolation_and_pulled_back_monitor():
    """monitor_gradient=pulled_back (official dmm_utils loss): grad u at x(xi) by interpolate()'s softmax(-R d)
    weights over all nodes, pulled back by J = I + Hess phi (u_xi_x = u_x (1 + phi_xx) + u_y phi_yx,
    u_xi_y = u_x phi_xy + u_y (1 + phi_yy)), m = 1 + |grad_xi u| / (scale alpha)."""
    R = 9
    g = torch.Generator().manual_seed(0)
    field = torch.randn(2, 3, R, R, generator=g, dtype=torch.float64)
    x = torch.rand(2, 5, 2, generator=g, dtype=torch.float64)
    # the official formula written out: nodes on linspace(0, 1, R), node [j, i] at (x_i, y_j)
    s = np.linspace(0, 1, R)
    nodes = np.array([(s[i], s[j]) for j in range(R) for i in range(R)])
    for b in range(2):
        for p in range(5):
            w = np.exp(-R * np.linalg.norm(nodes - x[b, p].numpy(), axis=1))
            w /= w.sum()
            expect = field[b].reshape(3, -1).numpy() @ w
            np.testing.assert_allclose(kernel_interpolate(field, x)[b, p].numpy(), expect, rtol=1e-10)
    xg = x.clone().requires_grad_(True)
    kernel_interpolate(field, xg).sum().backward()
    assert float(xg.grad.abs().sum()) > 0  # the map's gradient flows through the weights
    grad = field[:, :2]
    hess = torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64) * 0.3
    hess = (hess + hess.transpose(-1, -2)) / 2  # a potential's Hessian
    norm = torch.tensor([0.7, 1.3], dtype=torch.float64)
    m = pulled_back_monitor(grad, norm, x, hess)
    gx = kernel_interpolate(grad, x)
    ux, uy = gx[..., 0], gx[..., 1]
    pxx, pxy, pyx, pyy = hess[..., 0, 0], hess[..., 0, 1], hess[..., 1, 0], hess[..., 1, 1]
    u_xi_x, u_xi_y = ux * (1 + pxx) + uy * pyx, ux * pxy + uy * (1 + pyy)
    torch.testing.assert_close(m, 1 + torch.sqrt(u_xi_x**2 + u_xi_y**2) / norm[:, None])
    # identity map, bilinear, at the nodes: the physical monitor 1 + |grad u| / norm
    at_nodes = torch.tensor([[[0.25, 0.5], [1.0, 0.0]]], dtype=torch.float64)
    m0 = pulled_back_monitor(grad[:1], norm[:1], at_nodes, torch.zeros(1, 2, 2, 2, dtype=torch.float64), "bilinear")
    gn = grad[0].permute(1, 2, 0).norm(dim=-1)
    torch.testing.assert_close(m0[0], 1 + torch.stack([gn[4, 2], gn[0, 8]]) / norm[0])


def test_pulled_back_monitor_trains_with_the_fields_gradients():
    """data.with_gradient gives grad u and scale alpha with each field (consistent with its monitor); the official
    pulled-back loss then trains end to end; without the gradients it is a one-line error."""
    dm = FrontFieldDataModule(n_train=4, n_test=2, n_test_aligned=2, grid=16, with_gradient=True)
    dm.setup()
    item = dm.train_set[0]
    gn = item["grad"].norm(dim=0)
    torch.testing.assert_close(item["monitor"], 1 + gn / item["monitor_norm"], rtol=1e-5, atol=1e-5)
    run = fast_run("data_free_mesh_mover", *SMALL, "data.monitor_derivative=grad", "data.with_gradient=true",
                   "model.monitor_gradient=pulled_back")
    run.assert_contract()
    assert np.isfinite(run.metrics["test/ma_residual"])
    with pytest.raises(UserError, match="with_gradient"):
        fast_run("data_free_mesh_mover", *SMALL, "model.monitor_gradient=pulled_back")
    with pytest.raises(UserError, match="monitor_derivative"):
        FrontFieldDataModule(with_gradient=True, monitor_derivative="normal")
    with pytest.raises(ValueError, match="monitor_gradient"):
        DataFreeMeshMoverModule(**TINY_NET, monitor_gradient="pushed")
    from launch import config as zconfig

    paper = zconfig.compose(["experiment=data_free_mesh_mover/burgers"])  # the paper scale uses the official loss
    assert (paper.model.monitor_gradient, paper.model.gradient_interp, paper.data.with_gradient) == \
        ("pulled_back", "kernel", True)
    cpu = zconfig.compose(["experiment=data_free_mesh_mover"])  # the calibrated CPU check keeps m(x(xi))
    assert cpu.model.monitor_gradient == "physical" and not cpu.data.with_gradient


def test_official_candidate_collocation_follows_m_without_replacement():
    """collocation=candidates (official sample_train_data): 40 n uniform candidates, n drawn ~ m without
    replacement; on m = 1 + 3x the points' mean x approaches the density's 0.6 and no point repeats."""
    R = 33
    s = np.linspace(0, 1, R)
    mon = torch.tensor(1.0 + np.tile(s, (R, 1)) * 3.0, dtype=torch.float32)[None].repeat(2, 1, 1)
    for interp in ("kernel", "bilinear"):
        pts = candidate_points(mon, 400, 40, interp, torch.Generator().manual_seed(0))
        assert pts.shape == (2, 400, 2) and float(pts.min()) >= 0 and float(pts.max()) <= 1
        assert float(pts[..., 0].mean()) == pytest.approx(0.6, abs=0.03)
        assert float(pts[..., 1].mean()) == pytest.approx(0.5, abs=0.03)
        assert len(torch.unique(pts[0], dim=0)) == 400  # without replacement
    run = fast_run("data_free_mesh_mover", *SMALL, "model.collocation=candidates", "model.candidates_per_point=4")
    run.assert_contract()
    from launch import config as zconfig

    assert zconfig.compose(["experiment=data_free_mesh_mover/burgers"]).model.collocation == "candidates"
    assert zconfig.compose(["experiment=data_free_mesh_mover"]).model.collocation == "jitter"


def test_front_fields_and_exact_targets():
    d = front_fields(3, 16, 61, seed=0, monitor_scale=1.0, monitor_derivative="normal", force_aligned_k=20)
    assert d["u"].shape == (3, 16, 16) and d["monitor"].shape == (3, 61, 61)
    # aligned fronts with the normal-derivative monitor depend on x only, and c is the domain mean of m
    np.testing.assert_allclose(d["monitor"][:, 0], d["monitor"][:, -1])
    assert np.all(d["c"] == pytest.approx(2.0, rel=0.05))
    pos, tri = M.unit_square_mesh(20)
    tgt = exact_front_mesh(pos, d["monitor"][0][0])
    ref = M.equidistributed_mesh(pos, M.front_monitor_1d(20, d["params"][0, 1]))
    assert np.sqrt(np.mean((tgt - ref) ** 2)) < 0.05 * M.cell_size(20)
    assert M.count_inverted(tgt, tri) == 0


def test_figure_shows_oblique_fronts_beside_the_aligned_ones():
    """The moved-mesh figure shows two axis-aligned test fronts (their exact MA meshes in a second row) and two
    oblique ones, titled as having no exact MA mesh, although the aligned fronts come first in the test set; the
    figure's title names the split and the mean MA residual."""
    import matplotlib.pyplot as plt

    dm = FrontFieldDataModule(n_train=2, n_test=6, n_test_aligned=4, grid=12, eval_nodes=8, aligned_fraction=0.0,
                              monitor_scale=1.0, monitor_derivative="normal", seed=0)
    dm.setup()
    torch.manual_seed(0)
    m = DataFreeMeshMoverModule(**TINY_NET, eval_nodes=8, n_eval_points=32, n_interp_points=100)
    m.test_step(next(iter(dm.test_dataloader())))
    fig = m.figures()["moved_meshes"]
    titles = [ax.get_title() for ax in fig.axes]
    aligned = [ax for ax, t in zip(fig.axes, titles) if "axis-aligned front" in t]
    oblique = [ax for ax, t in zip(fig.axes, titles) if "oblique front" in t and "no exact MA mesh" in t]
    assert len(aligned) == 2 and len(oblique) == 2, titles
    exact = [ax for ax, t in zip(fig.axes, titles) if t.startswith("exact MA mesh of field")]
    assert len(exact) == 2 and all(len(ax.lines) == 2 for ax in aligned + oblique + exact), titles
    title = fig._suptitle.get_text()
    assert title.startswith("test set") and f"MA residual {m._last['residual'].mean():.3f}" in title
    plt.close(fig)


def test_figure_marks_inverted_triangles_and_nodes_outside_the_square():
    """Figures audit (stop 42): the moved mesh was drawn in white on a white ground outside the monitor, so nodes
    moved out of the unit square could not be seen, and inverted triangles were not marked. Now the view holds every
    node, the square is outlined, inverted triangles are filled red and the title counts both."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    pos, tri = M.unit_square_mesh(4)
    moved = pos.copy()
    moved[5] = [0.9, 0.9]  # an interior node pushed across its neighbours: folds the triangles around it
    moved[0] = [-0.1, -0.05]  # a corner moved out of the square
    m = DataFreeMeshMoverModule(**TINY_NET, eval_nodes=4)
    m._last = {"moved": moved[None], "tri": tri, "monitor": np.ones((1, 8, 8)), "target": None,
               "residual": np.array([0.5])}
    n_inverted = M.count_inverted(moved, tri)
    assert n_inverted > 0
    fig = m.figures()["moved_meshes"]
    ax = fig.axes[0]
    assert ax.get_xlim()[0] < -0.1 and ax.get_ylim()[0] < -0.05  # the node outside is in view
    red = [c for c in ax.collections if isinstance(c, PolyCollection) and len(c.get_paths()) == n_inverted]
    assert red, "inverted triangles are filled"
    assert f"{n_inverted} inverted, 1 nodes outside the square" in ax.get_title()
    plt.close(fig)
    moved[7] = np.nan  # a non-finite node sets no axis limit (review, stop 42: set_xlim raised on NaN)
    fig = m.figures()["moved_meshes"]
    assert np.isfinite(fig.axes[0].get_xlim()).all() and fig.axes[0].get_xlim()[0] < -0.1
    plt.close(fig)


def test_figure_picks_distinct_aligned_fronts_and_masks_the_cylinder():
    """Figures audit (stop 42, low): the first two aligned test fronts shown were often near-duplicates (c = 0.53 /
    0.56): now the two nearest to either side; on cylinder meshes the monitor is not drawn inside the hole."""
    import matplotlib.pyplot as plt

    params = np.array([[20, c, 0.0, 0.3] for c in (0.53, 0.56, 0.31, 0.72)])
    d = {"moved": np.zeros((4, 3, 2)), "params": params, "aligned": np.ones(4, bool)}
    assert DataFreeMeshMoverModule._figure_fields(d)[:2] == [2, 3]
    pos, tri = M.unit_square_mesh(4)
    angle = np.linspace(0, 2 * np.pi, 17)
    ring = np.stack([0.5 + 0.2 * np.cos(angle), 0.5 + 0.2 * np.sin(angle)], 1)
    m = DataFreeMeshMoverModule(**TINY_NET, eval_nodes=4)
    m._last = {"moved": pos[None], "tri": tri, "monitor": np.ones((1, 20, 20)), "target": None,
               "residual": np.array([0.1]), "rim": np.stack([ring[:-1], ring[1:]], 1)}
    fig = m.figures()["moved_meshes"]
    image = fig.axes[0].images[0].get_array()
    assert np.ma.is_masked(image[10, 10]) and not np.ma.is_masked(image[1, 1])  # centre hidden, corner drawn
    plt.close(fig)


def test_exact_map_zeroes_the_ma_residual():
    """The exact 1-D equidistribution map of an aligned front satisfies m(x) x'(xi) = c (the MA residual the DMM
    minimises), and the identity does not (card: the identity map's residual is large near the front)."""
    d = front_fields(1, 16, 401, seed=1, monitor_scale=1.0, monitor_derivative="normal", force_aligned_k=20)
    xi = np.linspace(0, 1, 2001)
    mrow = d["monitor"][0][0]
    x = exact_front_mesh(np.stack([xi, xi], 1), mrow)[:, 0]
    m_at_x = np.interp(x, np.linspace(0, 1, 401), mrow)
    r = m_at_x * np.gradient(x, xi) / d["c"][0] - 1
    assert np.median(np.abs(r)) < 0.01
    r_id = np.interp(xi, np.linspace(0, 1, 401), mrow) / d["c"][0] - 1
    assert np.median(np.abs(r_id)) > 0.4


def test_burgers_loader_reads_the_paper_file_format(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 2, 192, 192)).astype(np.float32)
    np.save(tmp_path / "burgers_192.npy", a)
    np.testing.assert_array_equal(load_burgers_192(tmp_path / "burgers_192.npy"), a)
    dm = FrontFieldDataModule(name="burgers", data_dir=str(tmp_path), n_burgers_train=2, batch_size=2,
                              steps_per_epoch=1)
    dm.setup()
    item = dm.train_set[0]
    assert item["u"].shape == (1, 48, 48) and item["monitor"].shape == (48, 48)
    assert len(dm.train_set) == 4 and len(dm.test_set) == 2
    # the official monitor (dmm_utils.sample_train_data): diff_x / diff_y forward differences x (n - 1) on the
    # sub-sampled field, the last row / column repeated; m = 1 + |grad u| / (monitor_scale alpha)
    ub = torch.from_numpy(a[0, 0, ::4, ::4].astype(np.float64))[None]
    dx, dy = torch.zeros_like(ub), torch.zeros_like(ub)
    dx[:, :-1], dy[:, :, :-1] = torch.diff(ub, dim=-2), torch.diff(ub, dim=-1)
    dx[:, -1], dy[:, :, -1] = dx[:, -2], dy[:, :, -2]
    d = (torch.sqrt(dx**2 + dy**2) * 47)[0].numpy()
    w = np.ones(48)
    w[[0, -1]] = 0.5
    alpha = float(np.einsum("ij,i,j->", d, w, w) / w.sum() ** 2)
    np.testing.assert_allclose(item["monitor"], 1 + d / (0.01 * alpha), rtol=1e-6)
    grad = FrontFieldDataModule(name="burgers", data_dir=str(tmp_path), n_burgers_train=2, batch_size=2,
                                steps_per_epoch=1, with_gradient=True)
    grad.setup()
    g = grad.train_set[0]
    np.testing.assert_allclose(g["grad"][1].numpy(), dx[0].numpy() * 47, rtol=1e-5, atol=1e-4)  # [1] = along rows
    np.testing.assert_allclose(g["monitor_norm"].item(), 0.01 * alpha, rtol=1e-6)
    full = FrontFieldDataModule(name="burgers", data_dir=str(tmp_path), n_burgers_train=2, batch_size=2,
                                steps_per_epoch=1, burgers_monitor="full")
    full.setup()
    assert full.train_set[0]["monitor"].shape == (193, 193)
    with pytest.raises(ValueError, match="burgers_monitor"):
        FrontFieldDataModule(burgers_monitor="fine")
    # bad files are one-line errors (UserError, exit 2), for the DMM as for MM-PDE
    np.save(tmp_path / "bad.npy", a[:, :, :10])
    with pytest.raises(UserError, match="expected an array"):
        load_burgers_192(tmp_path / "bad.npy")
    with pytest.raises(UserError, match="not found"):
        load_burgers_192(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read"):
        load_burgers_192(tmp_path / "junk.npy")


def test_burgers_bad_settings_and_files_are_one_line_errors(tmp_path):
    """Burgers fields have no front normal: monitor_derivative=normal (the offline experiment's) is refused when the
    datamodule is built (was a ValueError traceback at setup); a file with no trajectory left for the test split (was
    "not enough values to unpack") or with non-finite values (was accepted) is a UserError (exit 2)."""
    with pytest.raises(UserError, match="data.monitor_derivative=grad"):
        FrontFieldDataModule(name="burgers", monitor_derivative="normal")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 2, 192, 192)).astype(np.float32)
    np.save(tmp_path / "burgers_192.npy", a)
    for n_train in (3, 80):
        dm = FrontFieldDataModule(name="burgers", data_dir=str(tmp_path), n_burgers_train=n_train, batch_size=2,
                                  steps_per_epoch=1)
        with pytest.raises(UserError, match=f"3 trajectories cannot be split at data.n_burgers_train={n_train}"):
            dm.setup()
    a[2, 1, 100, 7] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(UserError, match="NaN or infinite values in the Burgers array"):
        load_burgers_192(tmp_path / "nan.npy")
    dm = FrontFieldDataModule(name="burgers", path=str(tmp_path / "nan.npy"), n_burgers_train=2, batch_size=2,
                              steps_per_epoch=1)
    with pytest.raises(UserError, match="NaN or infinite values in the Burgers array"):
        dm.setup()


def test_paper_epoch_length_and_lr_milestones(tmp_path):
    """Official dmm_utils.train_MA_res: int(5000 N / (120 x 160)) Adam steps per epoch (5000/120 passes over the N
    training frames at 160 per batch) and MultiStepLR milestones [100, 150] x 0.2 (one decay in 150 epochs)."""
    from omegaconf import OmegaConf

    from launch.config import compose

    a = np.zeros((5, 48, 192, 192), np.float32)  # 4 x 48 = 192 training frames
    np.save(tmp_path / "burgers_192.npy", a)
    dm = FrontFieldDataModule(name="burgers", data_dir=str(tmp_path), n_burgers_train=4, batch_size=16,
                              steps_per_epoch=None, passes_per_epoch=5000 / 120)
    dm.setup()
    assert len(dm.train_dataloader()) == int(5000 * 192 / (120 * 16)) == 500
    one_pass = FrontFieldDataModule(name="burgers", data_dir=str(tmp_path), n_burgers_train=4, batch_size=16,
                                    steps_per_epoch=None)
    one_pass.setup()
    assert len(one_pass.train_dataloader()) == 192 // 16
    with pytest.raises(ValueError, match="passes_per_epoch"):
        FrontFieldDataModule(passes_per_epoch=0.0)
    cfg = compose(["experiment=data_free_mesh_mover/burgers"])
    assert cfg.data.steps_per_epoch is None and abs(cfg.data.passes_per_epoch * 120 - 5000) < 1e-2
    assert cfg.data.batch_size == 160 and cfg.model.n_points == 120 and cfg.trainer.max_epochs == 150
    sched = OmegaConf.to_container(cfg.model.scheduler)
    assert sched["_target_"].endswith("MultiStepLR") and sched["milestones"] == [100, 150] and sched["gamma"] == 0.2


def test_burgers_paper_variant_trains_with_the_official_loss_on_a_fixture(tmp_path):
    """experiment=data_free_mesh_mover/burgers end to end on a small file in the paper's format: the pulled-back
    monitor with the softmax kernel, candidate collocation and the random-feature BFGS epochs (shrunk sizes)."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 192, endpoint=False)
    frames = [np.tanh(20 * (x[None, :] - c)) + 1e-3 * rng.standard_normal((192, 192)) for c in (0.3, 0.5, 0.6)]
    np.save(tmp_path / "burgers_192.npy", np.stack(frames)[:, None].repeat(2, 1).astype(np.float32))
    run = fast_run("data_free_mesh_mover/burgers", f"data.data_dir={tmp_path}", "data.n_burgers_train=2",
                   "data.batch_size=2", "data.steps_per_epoch=4", "data.passes_per_epoch=1.0", "model.n_points=16",
                   "model.n_boundary=4", "model.candidates_per_point=4", "model.n_eval_points=32",
                   "model.n_interp_points=200", "model.rf_epochs=1", "model.rf_fields=2", "model.rf_max_iter=5",
                   "model.trunk_layers=[2,8,8]", "model.head_layers=[16,8,1]", "model.branch_fc=[16]", steps=4)
    run.assert_contract()
    hp = run.model.hparams
    assert (hp.monitor_gradient, hp.gradient_interp, hp.collocation) == ("pulled_back", "kernel", "candidates")
    assert np.isfinite(run.metrics["test/ma_residual"])


def test_dmm_net_rejects_bad_layer_sizes():
    with pytest.raises(ValueError):
        DMMNet([4], [3, 8], [16, 1])
    with pytest.raises(ValueError):
        DMMNet([4], [2, 32], [16, 1])
    with pytest.raises(ValueError):  # the residual link needs channels[0] == channels[-2]
        DMMNet([8, 16, 4, 1], [2, 8], [16, 1], grid=16)


def test_branch_matches_the_official_conv_net_layout():
    """dmm_model.ConvNet (branch_layers=7): 5x5 convs 1->8 (stride 2), 8->16, 16->8 (+ residual from the first
    layer's output), 8->1 (stride 2), flatten 12 x 12 = 144 for a 48 x 48 input, fc 1024 (tanh) -> linear; trunk
    and head end in a linear layer (DenseNet)."""
    net = DMMNet([8, 16, 8, 1], [2, 32, 512], [1024, 512, 1], grid=48, branch_fc=[1024])
    convs = net.branch.convs
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 8, (5, 5), (2, 2)), (8, 16, (5, 5), (1, 1)), (16, 8, (5, 5), (1, 1)), (8, 1, (5, 5), (2, 2))]
    fcs = [m for m in net.branch.fc if isinstance(m, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(144, 1024), (1024, 512)]
    assert net.branch(torch.zeros(3, 1, 48, 48)).shape == (3, 512)
    for mlp in (net.trunk, net.head, net.branch.fc):
        assert isinstance(mlp[-1], torch.nn.Linear)


RF = ["model.rf_epochs=2", "model.rf_fields=2", "model.rf_max_iter=30"]


class RandomFeatureProbe(L.Callback):
    """Per training step: the optimiser, the parameters after the step and, in the random-feature (BFGS) epochs,
    the epoch sample's loss before the solve, after it, and recomputed through the full network at the sample."""

    def __init__(self) -> None:
        self.optimizers: list[str] = []
        self.params: list[dict[str, torch.Tensor]] = []
        self.rf: list[tuple[float, float, float]] = []
        self.last_layer = ""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.optimizers.append(type(trainer.optimizers[0]).__name__)
        self.last_layer = f"net.head.{len(pl_module.net.head) - 1}.weight"
        self.params.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})
        if self.optimizers[-1] == "LBFGS":
            cache = pl_module._rf_cache
            after = float(pl_module.rf_objective(cache)[0].detach())
            self.rf.append((float(cache["start_loss"]), after, float(pl_module.network_objective(cache))))


def _rf_run(*overrides, steps=4):
    from launch import config as zconfig
    from launch import train
    from tests.papers.contract import FAST

    probe = RandomFeatureProbe()
    cfg = zconfig.compose(["experiment=data_free_mesh_mover", *FAST, f"trainer.max_steps={steps}",
                           f"trainer.limit_train_batches={steps}", *SMALL, "data.steps_per_epoch=4", *overrides])
    metrics = train.run(cfg, make_run_dir=False, extra_callbacks=[probe])
    return probe, metrics


def test_random_feature_bfgs_epochs_refine_only_the_last_layer():
    """The official random-feature method (dmm_utils.train_MA_res, `rf=True`): after the Adam steps, the last
    rf_epochs steps are BFGS solves over the head's last-layer weight alone (hidden layers frozen), each on its own
    sample, whose loss falls; the random-feature loss equals the full network's loss at the same points."""
    torch.manual_seed(0)
    probe, metrics = _rf_run(*RF)
    assert probe.optimizers == ["Adam", "Adam", "LBFGS", "LBFGS"]
    before, after = probe.params[1], probe.params[-1]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {probe.last_layer}, changed  # the head's bias-free last linear layer
    assert len(probe.rf) == 2
    for start, end, network in probe.rf:
        assert np.isfinite(start) and np.isfinite(end)
        assert end < 0.9 * start, probe.rf
        assert network == pytest.approx(end, rel=1e-4, abs=1e-6), probe.rf
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert "train/rf_loss_start" in metrics


def test_random_feature_loss_matches_the_network_for_every_mover():
    """rf_objective (map and Hessian linear in the last-layer weight, features' derivatives by forward-mode AD)
    equals the training loss of the full network at the same sample: potential (soft and hard boundary) and the
    direct-displacement baseline."""
    for kw in ({}, {"boundary": "hard"}, {"mover": "direct"}):
        torch.manual_seed(0)
        m = DataFreeMeshMoverModule(**TINY_NET, rf_fields=2, rf_points=12, **kw)
        batch = {"u": torch.randn(3, 1, 12, 12), "monitor": 1 + torch.rand(3, 12, 12),
                 "c": torch.tensor([1.5, 1.4, 1.3])}
        cache = m.rf_sample(batch)
        assert cache["xi"].shape == (2, 12, 2)
        rf_loss, rf_parts = m.rf_objective(cache)
        torch.testing.assert_close(rf_loss, m.network_objective(cache), atol=1e-6, rtol=1e-4)
        r, _ = m.residual(cache["batch"], cache["xi"])
        torch.testing.assert_close(rf_parts["loss_interior"], torch.mean(r**2), atol=1e-6, rtol=1e-4)
        assert ("loss_boundary" in rf_parts) == (kw.get("boundary", "soft") == "soft")
        # only the last-layer weight receives a gradient
        rf_loss.backward()
        grads = {k for k, p in m.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0}
        assert grads == {f"net.head.{len(m.net.head) - 1}.weight"}, grads


def test_random_feature_bad_config_raises():
    for bad in ({"rf_epochs": -1}, {"rf_max_iter": 0}, {"rf_fields": 0}, {"rf_points": 0}, {"rf_convex_rel": -1.0}):
        with pytest.raises(ValueError, match="random-feature"):
            DataFreeMeshMoverModule(**TINY_NET, **bad)
    m = DataFreeMeshMoverModule(**TINY_NET, rf_fields=4)
    with pytest.raises(ValueError, match="rf_fields"):
        m.rf_sample({"u": torch.randn(2, 1, 12, 12), "monitor": 1 + torch.rand(2, 12, 12), "c": torch.ones(2)})
    assert DataFreeMeshMoverModule(**TINY_NET, mover="identity").lbfgs_steps == 0  # nothing to refine


def test_random_feature_method_is_off_at_cpu_scale_and_on_at_paper_scale():
    from launch.config import compose

    assert compose(["experiment=data_free_mesh_mover"]).model.rf_epochs == 0
    paper = compose(["experiment=data_free_mesh_mover/burgers"]).model
    assert (paper.rf_epochs, paper.rf_max_iter, paper.rf_fields, paper.rf_points, paper.rf_convex_rel) == (
        5, 300, 20, 16, 0.0)


def test_rf_fields_above_the_batch_size_is_a_one_line_error_before_training(runs_root, monkeypatch):
    """A random-feature epoch takes rf_fields fields of a training batch: a smaller data.batch_size was a ValueError
    traceback when the BFGS phase began, after all the Adam steps; now exit 2 at setup, no run directory left."""
    from tests.conftest import zoo_in_process

    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    small = [o for o in SMALL if not o.startswith("data.batch_size=")]
    code, out, err = zoo_in_process("train", "experiment=data_free_mesh_mover", *small, "model.rf_epochs=1",
                                    "model.rf_fields=8", "data.batch_size=4", "trainer.max_steps=3",
                                    f"runs_root={runs_root}", "progress_bar=false", "logger=csv")
    assert code == 2 and "model.rf_fields=8 but data.batch_size=4" in err, err + out
    assert [line for line in err.splitlines() if "error" in line.lower()] == [err.strip().splitlines()[-1]], err
    assert not list(runs_root.iterdir()), list(runs_root.rglob("*"))


def test_evaluation_in_chunks_of_fields_gives_the_same_metrics():
    """eval_chunk_fields (the test set comes as one batch; the 100 x 100 grid's Hessian graph grows with the fields)
    maps at most that many fields at a time and leaves every test metric and the validation residual as one pass
    gives them (per-field values, reduced as before)."""
    torch.manual_seed(0)
    dm = FrontFieldDataModule(n_train=2, n_test=4, n_test_aligned=3, grid=12, eval_nodes=6, monitor_scale=1.0,
                              monitor_derivative="normal", batch_size=2)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert len(batch["u"]) == 7
    m = DataFreeMeshMoverModule(**TINY_NET, trunk_init_scale=3.0, eval_nodes=6, n_eval_points=64,
                                n_interp_points=500, eval_chunk_fields=None)
    seen: list[int] = []
    mesh_map = m.mesh_map

    def counting(u, xi, create_graph=True):
        seen.append(len(u))
        return mesh_map(u, xi, create_graph)

    m.mesh_map = counting
    results = {}
    for chunk in (None, 3):
        m.hparams.eval_chunk_fields = chunk
        seen.clear()
        m.on_test_epoch_start()
        m.test_step(batch)
        results[chunk] = ({k: (v, w, red) for k, v, w, red in m._test_rows}, m._eval_residual(batch), list(seen))
    (one, res_one, seen_one), (chunked, res_chunked, seen_chunked) = results[None], results[3]
    assert set(seen_one) == {7} and set(seen_chunked) == {3, 1}, (seen_one, seen_chunked)
    assert {"ma_residual", "min_det", "boundary_disp", "inverted", "interp_ratio", "node_rmse_cells"} <= set(one)
    assert one["interp_ratio"][1] == int(batch["aligned"].sum()) >= 3  # weighted by the fields with a target
    assert abs(one["min_det"][0] - 1) > 0.1  # an untrained map that moves the nodes
    for key, (value, weight, reduction) in one.items():
        assert chunked[key][1:] == (weight, reduction), key
        assert chunked[key][0] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, value, chunked[key][0])
    torch.testing.assert_close(res_chunked, res_one, rtol=1e-5, atol=1e-7)
    with pytest.raises(UserError, match="eval_chunk_fields"):
        DataFreeMeshMoverModule(**TINY_NET, eval_chunk_fields=0)


CLAIMS = ["ma_residual", "valid_mesh", "boundary", "interpolation_ratio", "node_rmse"]


@pytest.mark.slow
@pytest.mark.parametrize("claim", CLAIMS)
def test_claim(claim):
    """Measured (seed 0, 1,500 CPU steps, official branch layout and linear trunk/head outputs, trunk_init_scale 3):
    ma_residual 0.315 (identity 0.593, threshold 0.15: known gap), min det J 0.066 (baseline: det term dropped from the
    training residual, -0.591 with 1,266 inverted triangles; not folding: no convexity/boundary terms 0.081, direct
    displacement output 0.362), boundary 0.019 (threshold 1e-3: known gap), interp_ratio 0.493 (identity
    1.0, threshold 0.6), node_rmse 1.19 cells (identity 2.44, threshold 0.5: known gap). Seeds 1 / 2: residual 0.254 /
    0.314, min det -0.024 / 0.105, boundary 0.037 / 0.103, interp_ratio 0.496 / 0.435, node_rmse 0.84 / 1.02:
    valid_mesh does not pass at every seed, hence its known gap. At 600 steps interp_ratio was 0.512 / 0.600 / 0.825
    (seeds 0 / 1 / 2), hence 1,500 steps. Budget sweep up to 4,500 steps and lr decay: see the experiment config
    (residual, boundary and node RMSE stay above the card's thresholds at seed 0). With one pass for the interior and
    the boundary points (same gradients to float rounding) seed 0 gives 0.297 / 0.119 / 0.029 / 0.462 / 1.15."""
    result = run_claim("data_free_mesh_mover", claim)
    if result.verdict == "KNOWN GAP":  # finite values and the claim's floors met
        pytest.xfail(result.report())
    assert result.passed, result.report()
    if not claims_of("data_free_mesh_mover")[claim].get("baseline"):
        return
    swapped = run_claim("data_free_mesh_mover", claim, swap_baseline=True)
    assert not swapped.passed, swapped.report()


@pytest.mark.slow
def test_test_metrics_reduce_right_under_ddp(runs_root):
    """The test metrics of one checkpoint, evaluated by 1 process and by 2 DDP ranks (gloo), each rank on half the
    fields: `inverted` adds up, `min_det` is the minimum and `boundary_disp` the maximum over all fields. With the
    default mean over ranks (before) DDP halved the count and averaged the per-rank minima, which can pass
    min det J > 0 where one rank's mesh folds."""
    import json

    from tests.conftest import zoo_subprocess

    tiny = ["experiment=data_free_mesh_mover", "trainer.max_steps=3", "data.n_test=8", "data.n_test_aligned=4",
            f"runs_root={runs_root}", "run_id=ddp_eval", "logger=csv", "progress_bar=false"]
    zoo_subprocess("train", *tiny, check=True)
    ckpt = runs_root / "data_free_mesh_mover" / "ddp_eval" / "checkpoints" / "last.ckpt"
    results = {}
    for name, extra in (("one", []), ("ddp", ["trainer.strategy=ddp", "trainer.devices=2"])):
        out = runs_root / f"{name}.json"
        zoo_subprocess("eval", f"ckpt={ckpt}", f"out={out}", *extra, check=True)
        results[name] = json.loads(out.read_text())["metrics"]
    one, ddp = results["one"], results["ddp"]
    assert one["test/inverted"] > 0, one  # an untrained mover tangles: a count worth comparing
    assert ddp["test/inverted"] == one["test/inverted"]
    for key in ("test/min_det", "test/boundary_disp"):  # float32 maps of 4 vs 8 fields a batch: ~1e-4 apart
        assert ddp[key] == pytest.approx(one[key], rel=1e-3), (key, one[key], ddp[key])
