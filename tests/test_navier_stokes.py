"""The 2D Navier-Stokes vorticity solver (datamodules.navier_stokes) against an exact solution and invariants, and
the FNO-benchmark file loader (MATLAB v5 and v7.3/HDF5) on tiny local fixtures."""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io

from datamodules.navier_stokes import navier_stokes_2d, random_vorticity
from datamodules.semilinear_data import SemilinearDataModule, load_fno_navier_stokes
from launch.errors import UserError


def test_taylor_green_vorticity_decays_exactly():
    """w = cos(a x) cos(a y) has u . grad w = 0 (a steady Euler flow): without forcing it decays as
    exp(-2 nu a^2 t). Crank-Nicolson's error at nu a^2 dt = 0.0016 is O((nu a^2 dt)^3) per step."""
    n, a, nu, dt, steps = 32, 4 * np.pi, 1e-2, 1e-3, 200
    x = np.arange(n) / n
    w0 = np.cos(a * x)[:, None] * np.cos(a * x)[None, :]
    w = navier_stokes_2d(w0[None], visc=nu, dt=dt, n_steps=steps, save_every=100, forcing=None)
    assert w.shape == (1, 2, n, n)
    exact = w0 * np.exp(-2 * nu * a * a * dt * steps)
    np.testing.assert_allclose(w[0, -1], exact, atol=1e-6)


def test_unforced_flow_keeps_zero_mean_and_loses_enstrophy():
    w0 = random_vorticity(3, n=16, seed=1)
    w = navier_stokes_2d(w0, visc=1e-3, dt=1e-2, n_steps=300, save_every=50, forcing=None)
    assert np.abs(w.mean(axis=(2, 3))).max() < 1e-12
    enstrophy = (w ** 2).mean(axis=(2, 3))
    assert np.all(np.diff(enstrophy, axis=1) <= 1e-12)
    assert np.all(enstrophy[:, -1] > 0.5 * (w0 ** 2).mean(axis=(1, 2)))  # viscosity 1e-3: slow decay


def test_random_vorticity_is_seeded_and_zero_mean():
    a, b = random_vorticity(2, n=16, seed=0), random_vorticity(2, n=16, seed=0)
    np.testing.assert_array_equal(a, b)
    assert abs(a.mean()) < 1e-12 and a.std() > 0.1
    assert not np.allclose(a, random_vorticity(2, n=16, seed=1))


def test_bad_solver_arguments():
    with pytest.raises(ValueError, match="multiple"):
        navier_stokes_2d(np.zeros((1, 8, 8)), 1e-3, 1e-2, n_steps=10, save_every=3)
    with pytest.raises(ValueError, match="batch, n, n"):
        navier_stokes_2d(np.zeros((8, 8)), 1e-3, 1e-2, n_steps=10)


def _write_v73(path, u: np.ndarray) -> None:
    """A MATLAB v7.3 file: a 512-byte MATLAB header as HDF5 user block, `u` stored with reversed axes."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("u", data=np.ascontiguousarray(u.transpose(3, 2, 1, 0)))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_fno_file_loader_reads_both_mat_versions(tmp_path, version):
    rng = np.random.default_rng(0)
    u = rng.standard_normal((6, 8, 8, 12)).astype(np.float32)  # N x H x W x T as in the FNO files
    path = tmp_path / "ns.mat"
    if version == "v5":
        scipy.io.savemat(path, {"u": u, "a": u[..., 0]})
    else:
        _write_v73(path, u)
    loaded = load_fno_navier_stokes(path, 4)
    assert loaded.shape == (4, 12, 8, 8)
    np.testing.assert_allclose(loaded, u[:4].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_fno_file_with_non_finite_values_is_a_one_line_error(tmp_path, version):
    """NaN / inf in a trajectory that is read: a one-line error naming the file and `u`; in one past the n read
    trajectories: ignored."""
    u = np.random.default_rng(2).standard_normal((6, 8, 8, 12)).astype(np.float32)
    u[5, 0, 0, 0] = np.inf  # not read (n <= 5)
    u[3, 2, 1, 7] = np.nan
    path = tmp_path / "NavierStokes_V1e-5_N1200_T20.mat"
    if version == "v5":
        scipy.io.savemat(path, {"u": u})
    else:
        _write_v73(path, u)
    assert load_fno_navier_stokes(path, 3).shape == (3, 12, 8, 8)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: NaN or infinite values in u$"):
        load_fno_navier_stokes(path, 5)
    with pytest.raises(UserError, match="NaN or infinite values in u"):
        SemilinearDataModule(name="ns_fno", data_dir=str(tmp_path), n_train=3, n_test=2, n_frames=10).setup()


def test_mm_pde_burgers_file_of_strings_is_a_one_line_error(tmp_path):
    """datamodules.meshes.load_burgers_192 (MM-PDE's burgers_192.npy; here as the PDE-file reader tests are): an
    array of the right shape but not of real numbers is refused in one line (before: a ValueError traceback)."""
    from datamodules.meshes import load_burgers_192

    path = tmp_path / "burgers_192.npy"
    for values in (np.full((1, 2, 192, 192), "a"), np.ones((1, 2, 192, 192), dtype=np.complex64)):
        np.save(path, values)
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: expected a real numeric array"):
            load_burgers_192(path)
    with open(path, "wb") as archive:  # an .npz archive under the .npy name (was an AttributeError traceback)
        np.savez(archive, u=np.ones((1, 2, 192, 192)))
    with pytest.raises(UserError, match="expected a numpy .npy array, got NpzFile"):
        load_burgers_192(path)
    np.save(path, np.ones((1, 2, 192, 192), dtype=np.float16))
    assert load_burgers_192(path).dtype == np.float32


def test_fno_datamodule_from_data_dir_and_url(tmp_path, monkeypatch):
    u = np.random.default_rng(1).standard_normal((5, 8, 8, 12)).astype(np.float32)
    scipy.io.savemat(tmp_path / "NavierStokes_V1e-5_N1200_T20.mat", {"u": u})
    dm = SemilinearDataModule(name="ns_fno", data_dir=str(tmp_path), n_train=3, n_test=2, n_frames=10,
                              batch_size=2, unroll=4, steps_per_epoch=1)
    dm.setup()
    assert dm.u_train.shape == (3, 10, 8, 8) and dm.u_test.shape == (2, 10, 8, 8)
    assert dm.mask.shape == (8, 8) and int(dm.mask.sum()) == 64  # the default: the whole grid (data.obs_fraction=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["u"].shape == (2, 4, 8, 8) and batch["mask"].shape == (2, 8, 8)
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    via_url = SemilinearDataModule(name="ns_fno", url=(tmp_path / "NavierStokes_V1e-5_N1200_T20.mat").as_uri(),
                                   n_train=3, n_test=2, n_frames=10)
    via_url.prepare_data()
    via_url.setup()
    assert (tmp_path / "cache" / "fno" / "NavierStokes_V1e-5_N1200_T20.mat").is_file()
    np.testing.assert_array_equal(via_url.u_test.numpy(), dm.u_test.numpy())


def test_fno_datamodule_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="data_dir"):
        SemilinearDataModule(name="ns_fno").setup()
    with pytest.raises(UserError, match="not found"):
        SemilinearDataModule(name="ns_fno", data_dir=str(tmp_path)).setup()
    (tmp_path / "NavierStokes_V1e-5_N1200_T20.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(UserError, match="cannot read"):
        SemilinearDataModule(name="ns_fno", data_dir=str(tmp_path)).setup()
    scipy.io.savemat(tmp_path / "NavierStokes_V1e-5_N1200_T20.mat", {"u": np.zeros((2, 4, 4, 6))})
    with pytest.raises(UserError, match="holds 2 trajectories"):
        SemilinearDataModule(name="ns_fno", data_dir=str(tmp_path), n_train=3, n_test=1).setup()
