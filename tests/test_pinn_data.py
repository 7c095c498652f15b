"""Reference solvers and collocation datamodules for the PINN papers (datamodules.pinn_data): Allen-Cahn ETDRK4 against
the exact spatially uniform solution and its energy law, the KS form of the causal-PINN paper against the standard
KS solver after rescaling, Burgers against the exact Cole-Hopf solution and Galilean invariance, the datamodules."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from datamodules.pde_solvers import ks_etdrk4
from datamodules.pinn_data import (
    CausalPINNDataModule,
    LagrangianPINNDataModule,
    allen_cahn_energy,
    allen_cahn_reference,
    burgers_cole_hopf,
    burgers_reference,
    convection_exact,
    galilean_shift,
    ks_causal_reference,
    load_mat_reference,
    oscillator_exact,
)
from launch.errors import UserError


def test_allen_cahn_uniform_state_follows_the_exact_logistic_solution():
    """A spatially uniform u0 = a stays uniform and solves u' = 5u - 5u^3 exactly:
    u(t) = a e^{5t} / sqrt(1 + a^2 (e^{10t} - 1))."""
    for a in (0.3, -0.7):
        ref = allen_cahn_reference(n=16, dt=1e-3, t_end=1.0, n_snapshots=11, u0=lambda x, a=a: a + 0 * x)
        t = ref["t"][:, None]
        exact = a * np.exp(5 * t) / np.sqrt(1 + a ** 2 * (np.exp(10 * t) - 1))
        np.testing.assert_allclose(ref["u"], exact * np.ones((1, 16)), atol=1e-9)


def test_allen_cahn_reference_energy_decreases_and_states_stay_bounded():
    ref = allen_cahn_reference()  # the paper's problem: 512 modes, dt = 1e-4, 201 snapshots
    assert ref["u"].shape == (201, 512) and ref["x"][0] == -1.0
    np.testing.assert_allclose(ref["u"][0], ref["x"] ** 2 * np.cos(np.pi * ref["x"]))
    energy = allen_cahn_energy(ref["u"])
    assert np.all(np.diff(energy) <= 1e-10), np.diff(energy).max()
    assert np.abs(ref["u"]).max() <= 1.0 + 1e-6
    # metastable plateaus at +-1 by t = 1 (the known AC.mat picture): most of the domain sits near +-1
    assert np.mean(np.abs(np.abs(ref["u"][-1]) - 1) < 0.05) > 0.6


def test_allen_cahn_etdrk4_converges_in_the_time_step():
    fine = allen_cahn_reference(n=128, dt=1e-4, t_end=0.5, n_snapshots=2)["u"][-1]
    errors = [np.abs(allen_cahn_reference(n=128, dt=dt, t_end=0.5, n_snapshots=2)["u"][-1] - fine).max()
              for dt in (2e-3, 1e-3)]
    assert errors[1] < 1e-6 and errors[0] / errors[1] > 8  # fourth order: ratio ~16


def test_causal_ks_form_matches_the_standard_ks_solver_after_rescaling():
    """u_t + 5uu_x + 0.5u_xx + 0.005u_xxxx = 0 on [-1, 1) is v_tau + v v_xi + v_xixi + v_xixixixi = 0 with
    x = 0.1 xi, t = 0.02 tau, u = v (period 20 in xi): compare with datamodules.pde_solvers.ks_etdrk4."""
    n, dt, t_end = 128, 1e-4, 0.2
    ours = ks_causal_reference(n=n, dt=dt, t_end=t_end, n_snapshots=3)
    theirs = ks_etdrk4(ours["u"][0], L=20.0, dt=dt / 0.02, n_steps=int(round(t_end / dt)),
                       save_every=int(round(t_end / dt)) // 2)
    np.testing.assert_allclose(ours["u"][1:], theirs, atol=1e-7)
    assert abs(ours["u"][-1].mean() - ours["u"][0].mean()) < 1e-12


@pytest.mark.parametrize("nu,t,atol", [(0.1, 1.0, 1e-11), (0.01, 0.5, 1e-11), (0.01, 1.0, 1e-6)])
def test_burgers_solver_matches_cole_hopf(nu, t, atol):
    n_snap = 3
    ref = burgers_reference(nu=nu, n=512, dt=1e-3, t_end=t, n_snapshots=n_snap)
    for i, ti in enumerate(ref["t"]):
        np.testing.assert_allclose(ref["u"][i], burgers_cole_hopf(ref["x"], ti, nu), atol=atol)


def test_galilean_shift_is_exact_and_matches_solving_with_the_shifted_ic():
    x = 2 * np.pi * np.arange(64) / 64
    t = np.linspace(0, 1, 5)
    v = np.sin(x)[None] * np.exp(-t)[:, None]
    exact = 1.7 + np.exp(-t)[:, None] * np.sin(x[None] - 1.7 * t[:, None])
    np.testing.assert_allclose(galilean_shift(v, t, 1.7), exact, atol=1e-12)
    base = burgers_reference(nu=0.05, n=128, dt=1e-3, t_end=0.5, n_snapshots=6)
    direct = burgers_reference(nu=0.05, n=128, dt=1e-3, t_end=0.5, n_snapshots=6, u0=lambda x: np.sin(x) + 2.0)
    np.testing.assert_allclose(galilean_shift(base["u"], base["t"], 2.0), direct["u"], atol=1e-8)


def test_closed_forms():
    t = np.linspace(0, 2, 20001)
    osc = oscillator_exact(t)
    np.testing.assert_allclose(np.gradient(osc[:, 0], t, edge_order=2), 2 * np.pi * osc[:, 1], atol=1e-5)
    np.testing.assert_allclose(np.gradient(osc[:, 1], t, edge_order=2), -2 * np.pi * osc[:, 0], atol=1e-5)
    np.testing.assert_allclose(osc[:, 0] ** 2 + osc[:, 1] ** 2, 1.0)
    np.testing.assert_allclose(convection_exact(np.array([0.5]), np.array([0.1]), 30.0), np.sin(0.5 - 3.0))


def test_causal_datamodule_batches_and_reference():
    dm = CausalPINNDataModule(name="oscillator", n_t=16, steps_per_epoch=3)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["t"].shape == (16,) and b["x"].shape == (1,) and torch.all(b["t"][1:] > b["t"][:-1])
    assert b["u_ic"].tolist() == [[1.0, 0.0]]
    e = next(iter(dm.test_dataloader()))
    assert e["u"].shape == (201, 1, 2) and e["t_col"].shape == (16,)
    rnd = CausalPINNDataModule(name="ks", n_t=8, n_x=5, sampling="random", t_end=0.1, n_modes=64, dt=1e-3,
                               n_snapshots=101, steps_per_epoch=2)
    rnd.setup()
    state = rnd.state_dict()
    batches = list(rnd.train_dataloader())
    # fresh points every step and every epoch (official DataGenerator: a new key per batch), reproducible by seed,
    # and a checkpoint's generator state continues the same stream
    again = list(rnd.train_dataloader())
    assert not torch.equal(batches[0]["t"], batches[1]["t"]) and not torch.equal(batches[0]["t"], again[0]["t"])
    twin = CausalPINNDataModule(name="ks", n_t=8, n_x=5, sampling="random", t_end=0.1, n_modes=64, dt=1e-3,
                                n_snapshots=101, steps_per_epoch=2)
    twin.setup()
    assert torch.equal(next(iter(twin.train_dataloader()))["x"], batches[0]["x"])
    rnd.load_state_dict(state)
    assert torch.equal(next(iter(rnd.train_dataloader()))["x"], batches[0]["x"])
    for b in batches:
        assert torch.all(b["t"][1:] >= b["t"][:-1]) and float(b["t"].max()) <= 0.1
        assert float(b["x"].min()) >= -1 and float(b["x"].max()) <= 1
    assert rnd.reference["t"][-1] == pytest.approx(0.1) and rnd.reference["u"].shape == (11, 64)


def test_paper_mat_files_load_from_a_local_folder(tmp_path):
    from scipy.io import savemat

    x, t = np.linspace(-1, 1, 8), np.linspace(0, 1, 5)
    uu = np.outer(x ** 2 * np.cos(np.pi * x), np.ones(5))
    savemat(tmp_path / "AC.mat", {"tt": t[None], "x": x[:, None], "uu": uu})
    savemat(tmp_path / "ks_simple.mat", {"t": t[None], "x": x[None], "usol": uu})
    for name in ("allen_cahn_mat", "ks_mat"):
        dm = CausalPINNDataModule(name=name, n_t=4, n_x=4, data_dir=str(tmp_path))
        dm.setup()
        assert dm.reference["u"].shape == (5, 8)
        np.testing.assert_allclose(dm.initial_condition[1], x ** 2 * np.cos(np.pi * x))
    savemat(tmp_path / "bad.mat", {"t": t[None], "x": x[None], "u": uu})
    with pytest.raises(ValueError, match="missing keys"):
        load_mat_reference(tmp_path / "bad.mat", "ks_mat")


@pytest.mark.parametrize("key", ["tt", "x", "uu"])
def test_paper_mat_file_with_non_finite_values_is_a_one_line_error(tmp_path, key):
    """NaN / inf in AC.mat's time grid, space grid or solution: a one-line error naming the file and the variable
    (before: loaded, and the NaN reached the reference and the initial condition)."""
    from scipy.io import savemat

    from launch.errors import UserError

    x, t = np.linspace(-1, 1, 8), np.linspace(0, 1, 5)
    arrays = {"tt": t[None], "x": x[:, None], "uu": np.outer(x ** 2, np.ones(5))}
    arrays[key].flat[3] = np.nan if key != "uu" else np.inf
    savemat(tmp_path / "AC.mat", arrays)
    msg = rf"^{re.escape(str(tmp_path / 'AC.mat'))}: NaN or infinite values in {key}$"
    with pytest.raises(UserError, match=msg):
        load_mat_reference(tmp_path / "AC.mat", "allen_cahn_mat")
    with pytest.raises(UserError, match=msg):
        CausalPINNDataModule(name="allen_cahn_mat", n_t=4, n_x=4, data_dir=str(tmp_path)).setup()


def test_paper_mat_files_download_through_fetch_from_a_local_server(tmp_path, monkeypatch):
    """The `*_mat` names fetch AC.mat / ks_simple.mat through `datamodules.download.fetch` (the real download path:
    HTTP, cache under $PAPERZOO_DATA, trust-on-first-use sidecar) when no local folder has them. Fixtures in the
    real layouts (AC.mat: tt (1, T), x (X, 1), uu (X, T); ks_simple.mat: t (1, T), x (1, X), usol (X, T)), MAT v5,
    served from 127.0.0.1; the second setup reads the cache without the server."""
    from scipy.io import savemat

    from datamodules import pinn_data
    from tests.conftest import serve_directory

    www = tmp_path / "www"
    www.mkdir()
    x, t = np.linspace(-1, 1, 9), np.linspace(0, 1, 6)
    uu = np.outer(x ** 2 * np.cos(np.pi * x), np.exp(-t))
    savemat(www / "AC.mat", {"tt": t[None], "x": x[:, None], "uu": uu})
    savemat(www / "ks_simple.mat", {"t": t[None], "x": x[None], "usol": 2 * uu})
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    with serve_directory(www) as server:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for name in ("allen_cahn_mat", "ks_mat"):  # ks_chaotic_mat: its own test below
            _, sha, fname = pinn_data.PAPER_FILES[name]
            monkeypatch.setitem(pinn_data.PAPER_FILES, name, (f"{base}/{fname}", sha, fname))
            dm = CausalPINNDataModule(name=name, n_t=4, n_x=4)
            dm.setup()
            scale = 2.0 if name == "ks_mat" else 1.0
            np.testing.assert_allclose(dm.reference["u"], scale * uu.T)
            np.testing.assert_allclose(dm.reference["t"], t)
            np.testing.assert_allclose(dm.initial_condition[1], scale * x ** 2 * np.cos(np.pi * x))
            assert (tmp_path / "cache" / fname).is_file() and (tmp_path / "cache" / (fname + ".sha256")).is_file()
    again = CausalPINNDataModule(name="allen_cahn_mat", n_t=4, n_x=4)  # server gone: served from the cache
    again.setup()
    np.testing.assert_allclose(again.reference["u"], uu.T)


def test_lagrangian_datamodule_grid_and_references():
    dm = LagrangianPINNDataModule(name="convection", c=10.0, nu=0.01, n_x=8, n_t=5, eval_n_x=16, eval_n_t=4)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (40,) and int((b["t"] == 0).sum()) == 8 and float(b["x"].max()) < 2 * np.pi
    r = dm.reference
    np.testing.assert_allclose(r["u"], np.exp(-0.01 * r["t"][:, None]) * np.sin(r["x"][None] - 10 * r["t"][:, None]))
    bg = LagrangianPINNDataModule(name="burgers", nu=0.05, shift=1.0, eval_n_x=32, eval_n_t=11, solver_modes=128)
    bg.setup()
    np.testing.assert_allclose(bg.reference["u"][0], np.sin(bg.reference["x"]) + 1.0, atol=1e-10)
    exact = burgers_cole_hopf(bg.reference["x"] - 1.0 * 0.5, 0.5, 0.05) + 1.0
    np.testing.assert_allclose(bg.reference["u"][5], exact, atol=1e-6)


@pytest.mark.parametrize("shift", [20.0, 50.0])
def test_burgers_reference_at_a_large_shift_matches_the_exact_solution(shift):
    """u = C + v(x - C t, t) with v the exact Cole-Hopf solution, at evaluation times between the solver's 101
    snapshots (the default 256 x 100 grid, nu = 0.01; C = 50 is the official --C default, 20 in the documented sweep).
    Interpolating in time after the shift smeared the moving shock (relative error 1.1e-2 at C = 20, 5.6e-2 at
    C = 50); in the co-moving frame it is 1.1e-5, as at C = 0."""
    dm = LagrangianPINNDataModule(name="burgers", nu=0.01, shift=shift)
    dm.setup()
    x, t, u = dm.reference["x"], dm.reference["t"], dm.reference["u"]
    rows = list(range(30, len(t), 7))  # t in [0.30, 1.0), none on a solver snapshot
    assert all(abs(t[i] * 100 - round(t[i] * 100)) > 0.05 for i in rows)
    exact = np.stack([shift + burgers_cole_hopf(x - shift * t[i], t[i], 0.01) for i in rows])
    assert np.linalg.norm(u[rows] - exact) / np.linalg.norm(exact - shift) < 3e-5


@pytest.mark.parametrize("kwargs", [{"name": "heat"}, {"sampling": "sobol"}, {"n_t": 1}, {"name": "oscillator",
                                                                                         "n_x": 4},
                                    # the ETDRK4 reference on [0, 1]: dt must split it into n_snapshots - 1 intervals
                                    {"name": "allen_cahn", "n_snapshots": 7}, {"name": "ks", "dt": 0.3}])
def test_causal_datamodule_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        CausalPINNDataModule(**kwargs)


@pytest.mark.parametrize("kwargs", [{"name": "kdv"}, {"nu": -1.0}, {"name": "burgers", "nu": 0.0}, {"n_x": 1},
                                    {"eval_n_x": 4},  # the spectral error cuts 2 points at each x-end: NaN
                                    # the Burgers solve needs a multiple of 100 steps of solver_dt on [0, t_end]
                                    {"name": "burgers", "nu": 0.01, "solver_dt": 0.3},
                                    {"name": "burgers", "nu": 0.01, "t_end": 0.333}])
def test_lagrangian_datamodule_rejects_bad_config(kwargs):
    with pytest.raises((ValueError, UserError)):  # grid sizes: check_min's UserError naming the key
        LagrangianPINNDataModule(**kwargs)


@pytest.mark.parametrize("overrides", [
    ["experiment=causal_pinn", "data.name=allen_cahn", "model.problem=allen_cahn", "model.fourier_modes=1",
     "data.n_snapshots=7"],
    ["experiment=causal_pinn", "data.name=ks", "model.problem=ks", "model.fourier_modes=1", "data.dt=0.3"],
    ["experiment=lagrangian_pinn", "data.name=burgers", "model.problem=burgers", "data.nu=0.01", "data.t_end=0.333"],
])
def test_bad_solver_steps_through_zoo_exit_2_with_one_line(tmp_path, overrides):
    """They passed the constructor and failed with a traceback (exit 1) at the first setup."""
    from tests.conftest import zoo_in_process

    code, _, err = zoo_in_process("train", *overrides, f"runs_root={tmp_path}", "logger=none", "progress_bar=false",
                                  "threads=1", "trainer.max_steps=1")
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "must split [0, " in errors[0], err


def _ks_chaotic_fixture(folder, n_t: int = 26, t_end: float = 1.0):
    """ks_chaotic.mat in the official layout (KS/chaotic_KS.py reads usol[:, k] as the state at t[0][k] on x[0]):
    t (1, T), x (1, X), usol (X, T), MAT v5; u0 = cos(x)(1 + sin(x)) on [0, 2 pi), decaying in time (format only,
    not a KS solution). Returns (t, x, usol)."""
    from scipy.io import savemat

    x, t = 2 * np.pi * np.arange(16) / 16, np.linspace(0.0, t_end, n_t)
    usol = np.outer(np.cos(x) * (1 + np.sin(x)), np.exp(-t))
    savemat(folder / "ks_chaotic.mat", {"t": t[None], "x": x[None], "usol": usol})
    return t, x, usol


def test_ks_chaotic_mat_downloads_through_fetch_and_keeps_the_official_layout(tmp_path, monkeypatch):
    """`ks_chaotic_mat` (CausalPINNs data/ks_chaotic.mat) through the real download path from 127.0.0.1: u, t, x and
    the initial condition come back from the file's (X, T) layout, the file lands in the cache with its
    trust-on-first-use sidecar, and training batches use the chaotic script's collocation (t in [0, 1.01 t_end]
    sorted, x in [0, 2 pi])."""
    from datamodules import pinn_data
    from tests.conftest import serve_directory

    www = tmp_path / "www"
    www.mkdir()
    t, x, usol = _ks_chaotic_fixture(www)
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    _, sha, fname = pinn_data.PAPER_FILES["ks_chaotic_mat"]
    assert fname == "ks_chaotic.mat" and sha is None
    with serve_directory(www) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/{fname}"
        monkeypatch.setitem(pinn_data.PAPER_FILES, "ks_chaotic_mat", (url, sha, fname))
        dm = CausalPINNDataModule(name="ks_chaotic_mat", t_end=0.1, time_windows=10, t_overshoot=0.01, n_t=8,
                                  n_x=32, sampling="random", steps_per_epoch=2)
        dm.setup()
    assert (tmp_path / "cache" / fname).is_file() and (tmp_path / "cache" / (fname + ".sha256")).is_file()
    np.testing.assert_allclose(dm.reference["u"], usol.T)
    np.testing.assert_allclose(dm.reference["t"], t)
    np.testing.assert_allclose(dm.reference["x"], x)
    x0, u0 = dm.initial_condition
    np.testing.assert_allclose(u0, np.cos(x) * (1 + np.sin(x)))
    for b in dm.train_dataloader():
        assert torch.all(b["t"][1:] >= b["t"][:-1]) and float(b["t"].max()) <= 0.101
        assert float(b["x"].min()) >= 0.0 and float(b["x"].max()) <= 2 * np.pi
        np.testing.assert_allclose(b["u_ic"].numpy(), u0, rtol=1e-6)
    e = next(iter(dm.val_dataloader()))
    assert e["u"].shape == (26, 16) and float(e["x_col"].max()) == pytest.approx(2 * np.pi)


def test_paper_file_short_of_the_horizon_is_a_one_line_error(tmp_path):
    from launch.errors import UserError

    _ks_chaotic_fixture(tmp_path, n_t=6, t_end=0.5)
    dm = CausalPINNDataModule(name="ks_chaotic_mat", t_end=0.1, time_windows=10, data_dir=str(tmp_path))
    with pytest.raises(UserError, match="t ends at 0.5, short of time_windows x t_end = 1"):
        dm.setup()
    ok = CausalPINNDataModule(name="ks_chaotic_mat", t_end=0.1, time_windows=5, data_dir=str(tmp_path))
    ok.setup()
    assert ok.reference["u"].shape == (6, 16)
    # a data_dir without the file is an error naming both (it fell back to a download without a word)
    empty = CausalPINNDataModule(name="ks_chaotic_mat", t_end=0.1, time_windows=5, data_dir=str(tmp_path / "none"))
    with pytest.raises(UserError, match="ks_chaotic.mat is not in data.data_dir"):
        empty.setup()


@pytest.mark.parametrize("grids", ["late_start", "x_outside", "x_short", "t_unsorted"])
def test_paper_mat_file_on_other_grids_is_a_one_line_error(tmp_path, grids):
    """AC.mat with t from 0.5 (the initial condition would be the t = 0.5 snapshot) or x outside or short of the
    problem's [-1, 1] trained without a word (bad-data audit, stop 44); only the horizon was checked."""
    from scipy.io import savemat

    from launch.errors import UserError

    t, x = np.linspace(0.0, 1.0, 5), np.linspace(-1.0, 1.0, 8)
    if grids == "late_start":
        t = t + 0.5
    elif grids == "x_outside":
        x = np.linspace(0.0, 4.0, 8)
    elif grids == "x_short":
        x = np.linspace(-0.5, 0.5, 8)
    else:
        t = t[[0, 2, 1, 3, 4]]
    savemat(tmp_path / "AC.mat", {"tt": t[None], "x": x[:, None], "uu": np.zeros((8, 5))})
    with pytest.raises(UserError, match="must start at 0 and increase" if grids in ("late_start", "t_unsorted")
                       else r"the problem's domain is \[-1, 1\]"):
        CausalPINNDataModule(name="allen_cahn_mat", n_t=4, n_x=4, data_dir=str(tmp_path)).setup()
