"""datamodules.darcy: the finite-volume Darcy solver against exact and manufactured solutions, the GRF coefficients,
the .npz cache, and the FNO .mat loader on a tiny local fixture (never the network)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import torch

from datamodules import darcy
from datamodules.darcy import (
    DarcyDataModule,
    cached_darcy,
    darcy_matrix,
    load_fno_mat,
    piecewise_coefficient,
    solve_darcy,
)
from launch.errors import UserError
from tests.conftest import serve_directory


def _apply_naive(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The FV operator written cell by cell (independent of the vectorised assembly)."""
    n = a.shape[0]
    h = 1.0 / n
    out = np.zeros_like(u)
    for i in range(n):
        for j in range(n):
            total = 0.0
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                p, q = i + di, j + dj
                if 0 <= p < n and 0 <= q < n:
                    t = 2 * a[i, j] * a[p, q] / (a[i, j] + a[p, q])
                    total += t * (u[i, j] - u[p, q])
                else:  # wall at distance h/2 with u = 0
                    total += 2 * a[i, j] * u[i, j]
            out[i, j] = total / h**2
    return out


def test_solver_recovers_a_discrete_solution_exactly():
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 10, (12, 12))
    u = rng.standard_normal((12, 12))
    f = _apply_naive(a, u)
    np.testing.assert_allclose(darcy_matrix(a) @ u.ravel(), f.ravel(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(solve_darcy(a, f), u, atol=1e-10)


def test_constant_coefficient_is_the_five_point_laplacian():
    n = 8
    t = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).toarray()
    t[0, 0] = t[-1, -1] = 3.0  # wall face at h/2: weight 2 instead of 1
    lap = (np.kron(t, np.eye(n)) + np.kron(np.eye(n), t)) * n**2
    np.testing.assert_allclose(darcy_matrix(np.ones((n, n))).toarray(), lap, atol=1e-9)
    assert abs(darcy_matrix(np.full((n, n), 3.0)).toarray() - 3 * lap).max() < 1e-8


def test_manufactured_solution_converges_at_second_order():
    """u = sin(pi x) sin(pi y), a = 1 + x y, f = -div(a grad u): max error falls ~4x per refinement."""
    errors = []
    for n in (16, 32, 64):
        x = (np.arange(n) + 0.5) / n
        X, Y = np.meshgrid(x, x, indexing="ij")
        a = 1 + X * Y
        u = np.sin(np.pi * X) * np.sin(np.pi * Y)
        ux, uy = np.pi * np.cos(np.pi * X) * np.sin(np.pi * Y), np.pi * np.sin(np.pi * X) * np.cos(np.pi * Y)
        f = -(Y * ux + X * uy) + 2 * np.pi**2 * a * u
        errors.append(np.abs(solve_darcy(a, f) - u).max())
    assert errors[-1] < 5e-4
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5, errors


def test_piecewise_coefficient_and_positive_solution():
    rng = np.random.default_rng(0)
    a = piecewise_coefficient(32, rng)
    assert set(np.unique(a)) <= {3.0, 12.0} and 0.2 < (a == 12).mean() < 0.8
    again = piecewise_coefficient(32, np.random.default_rng(0))
    assert np.array_equal(a, again)
    u = solve_darcy(a, 1.0)
    assert u.min() > 0  # maximum principle: f = 1 > 0, u = 0 on the wall
    assert u[16, 16] > u[0, 16] and u[16, 16] > u[16, -1]


def test_cache_writes_once_and_honours_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERZOO_DARCY_CACHE", str(tmp_path / "c"))
    calls = []
    real = darcy.generate_darcy

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(darcy, "generate_darcy", counting)
    a1, u1 = cached_darcy(3, 8, seed=1)
    a2, u2 = cached_darcy(3, 8, seed=1)
    assert len(calls) == 1 and np.array_equal(u1, u2) and np.array_equal(a1, a2)
    assert len(list((tmp_path / "c").glob("darcy_8_3_*.npz"))) == 1
    assert not list((tmp_path / "c").glob(".*part*"))
    cached_darcy(3, 8, seed=2, cache_dir=tmp_path / "explicit")  # data.cache_dir wins over the env var
    assert len(calls) == 2 and list((tmp_path / "explicit").glob("*.npz"))
    # a cache file cut short (a full disk, a copy interrupted) is regenerated and replaced, not a zipfile traceback
    (path,) = (tmp_path / "c").glob("darcy_8_3_*.npz")
    path.write_bytes(path.read_bytes()[:100])
    a3, u3 = cached_darcy(3, 8, seed=1)
    assert len(calls) == 3 and np.array_equal(u3, u1)
    a4, u4 = cached_darcy(3, 8, seed=1)
    assert len(calls) == 3 and np.array_equal(u4, u1)


def test_offline_datamodule_normalises(tmp_path):
    dm = DarcyDataModule(resolution=16, n_train=10, n_test=4, batch_size=4, cache_dir=str(tmp_path))
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (4, 1, 16, 16) and b["y"].shape == (4, 1, 16, 16)
    t = dm.tensors
    assert abs(float(t["x_train"].mean())) < 1e-5 and abs(float(t["x_train"].std()) - 1) < 0.1
    assert abs(float(t["y_train"].std()) - 1) < 0.1 and float(t["y_train"].min()) > 0
    assert len(list(dm.test_dataloader())) == 1


def test_official_normalizers_pgn_and_gn(tmp_path):
    """normalizer_type PGN / GN = utilities3 UnitGaussianNormalizer / GaussianNormalizer fit on the training set
    (torch.std, unbiased, + 1e-5): inputs encoded when encode_inputs (--GN), outputs raw, u's statistics kept for the
    model's output decoder."""
    kw = dict(resolution=16, n_train=10, n_test=4, batch_size=4, cache_dir=str(tmp_path))
    raw = DarcyDataModule(**kw)
    raw.setup()
    a_tr, u_tr, _, u_te = raw._raw()
    a, u = torch.tensor(a_tr), torch.tensor(u_tr)
    pgn = DarcyDataModule(normalizer_type="PGN", **kw)
    pgn.setup()
    expect_x = (a - a.mean(0)) / (a.std(0) + 1e-5)
    torch.testing.assert_close(pgn.tensors["x_train"][:, 0], expect_x.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pgn.tensors["y_test"][:, 0], torch.tensor(u_te, dtype=torch.float32))
    mean, std = pgn.output_stats
    assert mean.shape == (16, 16)
    torch.testing.assert_close(mean, u.mean(0).float())
    torch.testing.assert_close(std, (u.std(0) + 1e-5).float())
    gn = DarcyDataModule(normalizer_type="GN", encode_inputs=False, **kw)
    gn.setup()
    torch.testing.assert_close(gn.tensors["x_train"][:, 0], a.float())  # without --GN the inputs stay raw
    mean, std = gn.output_stats
    torch.testing.assert_close(mean, torch.full((16, 16), float(u.mean())))
    torch.testing.assert_close(std, torch.full((16, 16), float(u.std() + 1e-5)))
    with pytest.raises(UserError, match="normalizer_type"):
        DarcyDataModule(normalizer_type="pointwise")


def test_bad_config_raises():
    with pytest.raises(ValueError, match="unknown Darcy dataset"):
        DarcyDataModule(name="rough")
    with pytest.raises(ValueError, match="resolution must be"):
        DarcyDataModule(name="piececonst_smooth", resolution=64, sampling_rate=2)
    with pytest.raises(ValueError, match="positive"):
        DarcyDataModule(a_low=-1.0)


# ------------------------------------------------------------------------------------ FNO .mat fixture
def _write_fixture(folder, n=3, s=421):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, name in darcy.FNO_DARCY_FILES.items():
        coeff = np.where(rng.standard_normal((n, s, s)) > 0, 12.0, 3.0).astype(np.float32)
        sol = rng.random((n, s, s)).astype(np.float32)
        scipy.io.savemat(folder / name, {"coeff": coeff, "sol": sol})
        out[split] = (coeff, sol)
    return out


def test_official_validation_rows(tmp_path):
    """n_val / val_from / val_offset: validation rows of the official getDataSize (smooth Darcy: rows 100..199 of
    the test file), normalised with the training statistics; without them validation uses the test split."""
    arrays = _write_fixture(tmp_path, n=5)
    kw = dict(name="piececonst_smooth", resolution=22, sampling_rate=20, n_train=3, n_test=2, batch_size=2,
              data_dir=str(tmp_path))
    dm = DarcyDataModule(n_val=2, val_from="test", val_offset=3, **kw)
    dm.setup()
    u_std = arrays["train"][1][:3, ::20, ::20].astype(np.float64).std()
    np.testing.assert_allclose(dm.tensors["y_val"][:, 0].numpy() * u_std, arrays["test"][1][3:5, ::20, ::20],
                               rtol=1e-5)
    torch.testing.assert_close(next(iter(dm.val_dataloader()))["y"], dm.tensors["y_val"])
    plain = DarcyDataModule(**kw)
    plain.setup()
    assert "x_val" not in plain.tensors
    torch.testing.assert_close(next(iter(plain.val_dataloader()))["y"], plain.tensors["y_test"])
    with pytest.raises(UserError, match="val_from"):
        DarcyDataModule(val_from="valid")
    from launch import config as zconfig

    d = zconfig.compose(["experiment=mgno/darcy_smooth"]).data
    assert (d.n_val, d.val_from, d.val_offset) == (100, "test", 100)


def test_smooth_darcy_paper_variant_trains_on_a_fixture(tmp_path):
    """experiment=mgno/darcy_smooth end to end on FNO-format files (421 x 421 subsampled x4 -> 106 x 106): the
    point-wise normalisers with the output decoder, the official validation rows and the smooth model's 3 x 3 / 4 x 4
    prolongations (onto 106, 53, 27, 14, 7 nodes: kernels 4, 3, 3, 4, 3)."""
    from tests.papers.contract import fast_run

    _write_fixture(tmp_path, n=4)
    run = fast_run("mgno/darcy_smooth", f"data.data_dir={tmp_path}", "data.sampling_rate=4", "data.resolution=106",
                   "data.n_train=3", "data.n_test=2", "data.n_val=1", "data.val_offset=2", "data.batch_size=2",
                   "data.eval_batch_size=2", "model.num_layer=2", "model.num_channel_u=4")
    run.assert_contract()
    model, dm = run.model, run.datamodule
    assert [p.weight.shape[-1] for p in model.net.convs[0].prolong] == [4, 3, 3, 4, 3]
    torch.testing.assert_close(model.y_mean, dm.output_stats[0].to(model.y_mean))
    assert dm.tensors["x_val"].shape == (1, 1, 106, 106)


def test_load_fno_mat_subsamples(tmp_path):
    arrays = _write_fixture(tmp_path, n=2)
    coeff, sol = load_fno_mat(tmp_path / darcy.FNO_DARCY_FILES["train"], 2, sampling_rate=20)
    assert coeff.shape == (2, 22, 22)
    np.testing.assert_array_equal(sol, arrays["train"][1][:, ::20, ::20])
    with pytest.raises(ValueError, match="asked for 5"):
        load_fno_mat(tmp_path / darcy.FNO_DARCY_FILES["train"], 5)


@pytest.mark.parametrize("key,bad", [("coeff", np.nan), ("sol", np.inf)])
def test_non_finite_values_in_the_used_samples_are_refused(tmp_path, key, bad):
    """NaN / inf at a grid point that is kept (sampling_rate 20: index 40) is a one-line error naming the file and
    the variable; at a point that the subsampling drops (index 41) the file loads as before."""
    arrays = _write_fixture(tmp_path, n=3)
    path = tmp_path / darcy.FNO_DARCY_FILES["train"]
    arr = {"coeff": arrays["train"][0], "sol": arrays["train"][1]}
    arr[key][1, 41, 41] = bad
    scipy.io.savemat(path, arr)
    kw = dict(name="piececonst_smooth", resolution=22, sampling_rate=20, n_train=2, n_test=2, batch_size=1,
              data_dir=str(tmp_path))
    dm = DarcyDataModule(**kw)
    dm.setup()
    assert all(torch.isfinite(t).all() for t in dm.tensors.values())
    arr[key][1, 40, 40] = bad
    scipy.io.savemat(path, arr)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: NaN or infinite values in {key}$"):
        DarcyDataModule(**kw).setup()
    with pytest.raises(UserError, match=key):  # the same check on the reader alone
        load_fno_mat(path, 2, sampling_rate=20)
    assert load_fno_mat(path, 1, sampling_rate=20)[0].shape == (1, 22, 22)  # sample 1 not read: loads


@pytest.mark.filterwarnings("error::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("key", ["coeff", "sol"])
def test_complex_values_are_refused_naming_file_and_variable(tmp_path, key):
    """A complex coeff or sol is a one-line DataFileError naming the file and the variable, worded as load_npy's
    check on .npy files (before: numpy warned and the imaginary part was dropped)."""
    from datamodules.data_files import DataFileError, load_npy

    arrays = _write_fixture(tmp_path, n=2, s=41)
    path = tmp_path / darcy.FNO_DARCY_FILES["train"]
    arr = {"coeff": arrays["train"][0], "sol": arrays["train"][1]}
    arr[key] = arr[key] * (1 + 0.5j)
    scipy.io.savemat(path, arr)
    with pytest.raises(DataFileError, match=rf"^{re.escape(str(path))}: expected a real numeric array for {key}, "
                                            rf"got dtype complex64$"):
        load_fno_mat(path, 2, sampling_rate=20)
    np.save(tmp_path / "c.npy", arr[key])  # the same helper's check on an .npy file, without a variable name
    with pytest.raises(DataFileError, match=r"c\.npy: expected a real numeric array, got dtype complex64$"):
        load_npy(tmp_path / "c.npy")


def test_data_file_helpers_are_still_importable_from_darcy():
    """The shared helpers moved to datamodules.data_files; the old import path re-exports the same objects."""
    from datamodules import data_files

    for name in ("DataFileError", "require_finite", "load_npy", "mat_read_errors", "read_mat_arrays"):
        assert getattr(darcy, name) is getattr(data_files, name)


def test_fno_datamodule_from_data_dir_and_through_download(tmp_path, monkeypatch):
    www = tmp_path / "www"
    arrays = _write_fixture(www)
    dm = DarcyDataModule(name="piececonst_smooth", resolution=22, sampling_rate=20, n_train=3, n_test=2,
                         batch_size=2, data_dir=str(www))
    dm.setup()
    assert dm.tensors["x_train"].shape == (3, 1, 22, 22) and dm.tensors["y_test"].shape == (2, 1, 22, 22)
    u_std = arrays["train"][1][:, ::20, ::20].astype(np.float64).std()
    np.testing.assert_allclose(dm.tensors["y_test"][:, 0].numpy() * u_std,
                               arrays["test"][1][:2, ::20, ::20], rtol=1e-5)
    # the same files through datamodules.download.fetch from a local HTTP server into $PAPERZOO_DATA
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    with serve_directory(www) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{file}}"
        dm2 = DarcyDataModule(name="piececonst_smooth", resolution=22, sampling_rate=20, n_train=3, n_test=2,
                              batch_size=2, url=url)
        dm2.prepare_data()
        dm2.setup()
    assert (tmp_path / "cache" / "darcy" / darcy.FNO_DARCY_FILES["train"]).is_file()
    assert (tmp_path / "cache" / "darcy" / (darcy.FNO_DARCY_FILES["train"] + ".sha256")).is_file()
    np.testing.assert_array_equal(dm2.tensors["y_test"].numpy(), dm.tensors["y_test"].numpy())
