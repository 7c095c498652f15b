"""MM-PDE (second half of "Better Neural PDE Solvers Through Data-Free Mesh Movers", ICLR 2024): the 2-D Burgers
solver against exact solutions and invariants, the paper contract's fast test for the two-branch model and the
fixed-mesh baseline, the graph / interpolation pieces, the paper-file loader and bad-input errors."""
from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.mm_pde_data import MMPDEDataModule, burgers2d, burgers2d_energy, random_smooth_field
from datamodules.pinn_data import burgers_cole_hopf, burgers_reference
from launch.errors import UserError
from lit_models.pde.data_free_mesh_mover import DataFreeMeshMoverModule
from lit_models.pde.mm_pde import InterpolationNet, MMPDEModule, knn_edges, uniform_nodes
from tests.papers.contract import fast_run

TINY_MOVER = dict(branch_channels=[4, 8, 4, 1], branch_fc=[16], trunk_layers=[2, 8, 8], head_layers=[16, 8, 1],
                  n_points=16, n_boundary=4)
_MOVER = "{" + ",".join(f"{k}:{v}".replace(" ", "") for k, v in TINY_MOVER.items()) + "}"
SMALL = ["data.n_train=4", "data.n_test=2", "data.grid=12", "data.solve_grid=24", "data.n_frames=6",
         "data.solver_dt=0.02", "data.batch_size=2", "data.passes_per_epoch=1", f"model.mover_net={_MOVER}",
         "model.mover_fit_steps=3", "model.mover_fit_frames=8", "model.mover_fit_batch=2", "model.hidden=16",
         "model.layers=2", "model.neighbors=4", "model.itp_neighbors=4", "model.itp_hidden_to_moved=[8]",
         "model.itp_hidden_to_uniform=[8]", "model.itp_pretrain_steps=1"]


# ---------------------------------------------------------------------------------------------- the solver
def test_y_independent_burgers_is_the_exact_1d_solution():
    """u0 = sin x on [0, 2 pi)^2 stays y-independent and equals the Cole-Hopf solution of 1-D Burgers (and the 1-D
    spectral reference)."""
    n, nu = 64, 0.1
    x = 2 * np.pi * np.arange(n) / n
    u = burgers2d(np.tile(np.sin(x), (n, 1)), nu, 1e-3, 500, 250, length=2 * np.pi)  # t = 0, 0.25, 0.5
    assert u.shape == (3, n, n)
    assert np.abs(u - u[:, :1]).max() < 1e-12
    np.testing.assert_allclose(u[2, 0], burgers_cole_hopf(x, 0.5, nu), atol=1e-6)
    ref = burgers_reference(nu, n, 1e-3, 0.5, 3)["u"]
    np.testing.assert_allclose(u[:, 7], ref, atol=1e-9)


def test_burgers_energy_decays_by_the_viscous_dissipation_and_is_symmetric():
    """d/dt mean(u^2/2) = -nu mean|grad u|^2 (advection conserves the energy); swapping x and y commutes with the
    solver (the equation is symmetric)."""
    n, nu, dt = 48, 0.02, 1e-3
    u0 = random_smooth_field(2, n, seed=3)
    u = burgers2d(u0, nu, dt, 200, 1)
    e = burgers2d_energy(u)
    assert np.all(np.diff(e, axis=1) < 0)
    k = 2 * np.pi * np.fft.fftfreq(n, 1 / n)
    uh = np.fft.fft2(u[:, 100])
    gx, gy = np.fft.ifft2(1j * k[None, :] * uh).real, np.fft.ifft2(1j * k[:, None] * uh).real
    rate = (e[:, 101] - e[:, 99]) / (2 * dt)
    np.testing.assert_allclose(rate, -nu * np.mean(gx**2 + gy**2, axis=(1, 2)), rtol=1e-3)
    ut = burgers2d(u0.transpose(0, 2, 1), nu, dt, 50, 50)
    np.testing.assert_allclose(ut[:, -1], u[:, 50].transpose(0, 2, 1), atol=1e-10)


def test_initial_conditions_are_deterministic_and_normalised():
    a, b = random_smooth_field(3, 16, seed=1), random_smooth_field(3, 16, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.abs(a).max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(a.mean(axis=(1, 2)), 0.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- the model
def test_fast_contract_two_branch_with_a_fitted_dmm():
    run = fast_run("data_free_mesh_mover/mm_pde", *SMALL, steps=3)
    run.assert_contract()
    for key in ("test/rollout_rel_l2", "test/one_step_mse"):
        assert key in run.metrics, sorted(run.metrics)
    m = run.model
    assert bool(m.mover_ready) and all(not p.requires_grad for p in m.mover.parameters())
    assert any(n.startswith("net.gnn_moved.") for n in run.coverage.touched)
    assert any(n.startswith("net.itp.") for n in run.coverage.touched)
    traj = torch.randn(2, 6, 12, 12, dtype=m.dtype)
    m.eval()
    assert m.rollout(traj).shape == (2, 5, 12, 12)
    moved = m.moved_nodes(traj[:, 0])
    assert moved.shape == (2, 144, 2) and torch.isfinite(moved).all()
    m._last["pred"] = 3 * m._last["true"]  # out of the truth's range: the colour bars' arrows say so
    figs = m.figures()
    assert set(figs) == {"rollout", "moved_mesh"}
    bars = {ax.get_title().split(",")[0]: [] for ax in figs["rollout"].axes if ax.images}
    for ax in figs["rollout"].axes:
        if ax.images:
            bars[ax.get_title().split(",")[0]].append(ax.images[0].colorbar.extend)
    assert set(bars["truth"]) == {"neither"} and set(bars["prediction"]) == {"both"}
    background = figs["moved_mesh"].axes[0].images[0]  # the field under the mesh has a colour bar, symmetric if signed
    assert background.colorbar is not None
    low, high = background.get_clim()
    assert low == -high or low >= 0
    import matplotlib.pyplot as plt

    for f in figs.values():
        plt.close(f)


def test_identity_mover_is_the_fixed_mesh_gnn():
    run = fast_run("data_free_mesh_mover/mm_pde", *SMALL, "model.mesh_mover=identity", steps=2)
    run.assert_contract()
    m = run.model
    assert m.mover is None and not m.net.two_branch
    assert all(n.startswith("net.gnn.") for n, _ in m.named_parameters())
    assert set(m.figures()) == {"rollout"}


def test_knn_graph_and_interpolation_net():
    pos = uniform_nodes(5)[None].repeat(2, 1, 1)
    e = knn_edges(pos, 4)
    assert e.shape == (2, 2 * 25 * 4) and not torch.any(e[0] == e[1])
    assert torch.all(torch.bincount(e[1], minlength=50) == 4)
    assert torch.all((e[0] < 25) == (e[1] < 25))  # no edges between the two graphs
    itp = InterpolationNet(5, n_neighbors=3, hidden_to_moved=[8], hidden_to_uniform=[8])
    vals = torch.randn(2, 25, 1)
    out = itp.interpolate(vals, pos, torch.rand(2, 7, 2), "to_moved")
    assert out.shape == (2, 7, 1)


def test_unrolled_training_step_and_time_window(monkeypatch):
    """Pushforward: from epoch >= 1 the start frame is unrolled up to `unrolling` steps without gradient."""
    torch.manual_seed(0)
    m = MMPDEModule(mesh_mover="identity", grid=6, time_window=2, hidden=8, layers=1, neighbors=3,
                    output_head="mlp", unrolling=2)
    monkeypatch.setattr(MMPDEModule, "current_epoch", property(lambda self: 3))
    calls = []
    step = m.step
    monkeypatch.setattr(m, "step", lambda *a: calls.append(torch.is_grad_enabled()) or step(*a))
    traj = torch.randn(2, 9, 6, 6)
    for _ in range(8):
        loss = m.training_step(traj)
        assert torch.isfinite(loss) and loss.requires_grad
    assert False in calls and calls.count(True) == 8  # some no-grad unrolled steps, one graded step per call
    assert m.rollout(traj).shape == (2, 6, 6, 6)  # frames 2..7 in steps of 2
    with pytest.raises(ValueError, match="conv"):
        MMPDEModule(mesh_mover="identity", grid=6, hidden=8, neighbors=3, output_head="conv")


def _mover_ckpt(tmp_path, grid: int = 12):
    mover = DataFreeMeshMoverModule(grid=grid, **TINY_MOVER)
    path = tmp_path / "dmm.ckpt"
    torch.save({"state_dict": mover.state_dict(), "hyper_parameters": dict(mover.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def test_mover_checkpoint_is_loaded_frozen_and_resized(tmp_path):
    m = MMPDEModule(mover_ckpt=str(_mover_ckpt(tmp_path)), grid=8, hidden=8, layers=1, neighbors=3,
                    output_head="mlp", itp_neighbors=4, itp_hidden_to_moved=[8], itp_hidden_to_uniform=[8])
    assert bool(m.mover_ready) and all(not p.requires_grad for p in m.mover.parameters())
    moved = m.moved_nodes(torch.randn(3, 8, 8))  # DMM branch grid 12, solver grid 8: the frame is resized
    assert moved.shape == (3, 64, 2)
    out = m.step(torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]), 5)
    assert out.shape == (3, 1, 8, 8)


# ---------------------------------------------------------------------------------------------- data + errors
def test_paper_file_loader_subsamples_and_splits(tmp_path):
    a = np.random.default_rng(0).standard_normal((3, 4, 192, 192)).astype(np.float32)
    np.save(tmp_path / "burgers_192.npy", a)
    dm = MMPDEDataModule(name="burgers", data_dir=str(tmp_path), n_burgers_train=2, grid=48, sub=4, batch_size=2)
    dm.setup()
    np.testing.assert_array_equal(dm.train_u, a[:2, :, ::4, ::4])
    np.testing.assert_array_equal(dm.test_u, a[2:, :, ::4, ::4])
    assert next(iter(dm.train_dataloader())).shape == (2, 4, 48, 48)
    assert dm.train_frames(5).shape == (5, 48, 48)


def test_bad_inputs_raise_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        MMPDEDataModule(name="burgers", data_dir=str(tmp_path)).setup()
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 100, 100), np.float32))
    with pytest.raises(UserError, match="expected an array"):
        MMPDEDataModule(name="burgers", path=str(tmp_path / "bad.npy")).setup()
    np.save(tmp_path / "short.npy", np.zeros((2, 3, 192, 192), np.float32))
    with pytest.raises(UserError, match="cannot be split"):
        MMPDEDataModule(name="burgers", path=str(tmp_path / "short.npy"), n_burgers_train=80).setup()
    with pytest.raises(UserError, match="data.grid"):
        MMPDEDataModule(name="burgers", path=str(tmp_path / "short.npy"), n_burgers_train=1, grid=32).setup()
    with pytest.raises(UserError, match="unknown MM-PDE dataset"):
        MMPDEDataModule(name="navier_stokes")
    with pytest.raises(UserError, match="intervals"):
        MMPDEDataModule(t_end=1.0, solver_dt=0.01, n_frames=7)
    with pytest.raises(UserError, match="not found"):
        MMPDEModule(mover_ckpt=str(tmp_path / "missing.ckpt"))
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a DataFreeMeshMoverModule checkpoint"):
        MMPDEModule(mover_ckpt=str(tmp_path / "garbage.ckpt"))
    diverged = torch.load(_mover_ckpt(tmp_path), weights_only=False)  # stop 44's audit: trained to a NaN loss
    diverged["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                              for k, v in diverged["state_dict"].items()}
    torch.save(diverged, tmp_path / "nan.ckpt")
    with pytest.raises(UserError, match="holds NaN weights"):
        MMPDEModule(mover_ckpt=str(tmp_path / "nan.ckpt"))
    m = MMPDEModule(grid=8, hidden=8, layers=1, neighbors=3, output_head="mlp", itp_neighbors=4)
    with pytest.raises(UserError, match="mover_ckpt"):
        m.on_fit_start()  # dmm without a checkpoint and without a fit budget
    with pytest.raises(ValueError):
        MMPDEModule(mesh_mover="monge")
