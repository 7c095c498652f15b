"""Malformed real-data files (wrong keys, random bytes, truncated, misshapen) are one-line UserErrors naming the file,
exit status 2 through `zoo`, never a traceback; non-PEMS forecasting files with gaps are refused while PEMS gaps are
still filled (thuml Dataset_PEMS); Darcy's prepare_data only fetches the files, without reading them."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

from datamodules import darcy
from datamodules.darcy import FNO_DARCY_FILES, DarcyDataModule
from datamodules.data_files import DataFileError
from datamodules.forecasting import ForecastingDataModule
from datamodules.mgno_data import DATASETS as MGNO_FILES
from datamodules.mgno_data import MgNODataModule
from datamodules.pinn_data import CausalPINNDataModule
from datamodules.semilinear_data import FNO_NS_DEFAULT_FILE, SemilinearDataModule
from launch.errors import UserError
from tests.conftest import zoo_in_process
from tests.test_mgno_real_data import save_mat73  # a MATLAB v7.3 file as MATLAB writes it

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------- helpers
def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def raises_naming(path, call, match: str | None = None) -> str:
    """`call()` raises a one-line UserError whose message names `path` (and matches `match`); returns the message."""
    with pytest.raises(UserError) as info:
        call()
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


def zoo_fails_naming(path, runs_root, *overrides: str) -> str:
    """`zoo train ...` exits 2 with one error line on stderr naming `path`, no traceback, and no run files left."""
    code, _, err = zoo_in_process("train", *overrides, f"runs_root={runs_root}", "logger=none", "progress_bar=false",
                                  "threads=1", "trainer.max_steps=1")
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("zoo train: error: "), err
    assert str(path) in errors[0], err
    assert not [f for f in runs_root.rglob("*") if f.is_file()], "a failed run left files behind"
    return errors[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------ M1: Darcy .mat files
def _darcy_field(n: int, s: int) -> np.ndarray:
    return RNG.random((n, s, s)).astype(np.float32)


def _random_bytes(path) -> None:
    path.write_bytes(np.random.default_rng(123).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def _truncated_v5(path) -> None:
    scipy.io.savemat(path, {"coeff": _darcy_field(2, 9), "sol": _darcy_field(2, 9)})
    truncate(path)


def _truncated_v73(path) -> None:
    save_mat73(path, {"coeff": _darcy_field(2, 9), "sol": _darcy_field(2, 9)})
    truncate(path)


DARCY_BAD_TRAIN = {  # case -> (writer of the train file, a word of the message)
    "wrong_keys": (lambda p: scipy.io.savemat(p, {"a": _darcy_field(2, 9), "u": _darcy_field(2, 9)}),
                   "no variable coeff, sol"),
    "random_bytes": (_random_bytes, "cannot read"),
    "empty": (lambda p: p.write_bytes(b""), "cannot read"),
    "truncated_v5": (_truncated_v5, "cannot read"),
    "shape_mismatch": (lambda p: scipy.io.savemat(p, {"coeff": _darcy_field(2, 9), "sol": _darcy_field(2, 5)}),
                       "same shape"),
    "wrong_grid": (lambda p: scipy.io.savemat(p, {"coeff": _darcy_field(2, 85), "sol": _darcy_field(2, 85)}),
                   "grid is 2 x 2"),
    "too_few_samples": (lambda p: scipy.io.savemat(p, {"coeff": _darcy_field(1, 9), "sol": _darcy_field(1, 9)}),
                        "asked for 2 samples"),
    "v73_wrong_keys": (lambda p: save_mat73(p, {"a": _darcy_field(2, 9)}), "no variable coeff, sol"),
    "v73_truncated": (_truncated_v73, "cannot read"),
}


@pytest.mark.parametrize("case", sorted(DARCY_BAD_TRAIN))
def test_darcy_bad_mat_file_is_one_line_error(tmp_path, case):
    write, match = DARCY_BAD_TRAIN[case]
    bad = tmp_path / FNO_DARCY_FILES["train"]
    write(bad)
    scipy.io.savemat(tmp_path / FNO_DARCY_FILES["test"], {"coeff": _darcy_field(1, 421), "sol": _darcy_field(1, 421)})
    dm = DarcyDataModule(name="piececonst_smooth", resolution=6, sampling_rate=84, n_train=2, n_test=1,
                         batch_size=1, data_dir=str(tmp_path))
    raises_naming(bad, dm.setup, match)


def test_darcy_smooth_through_zoo_exits_2(tmp_path, cache):
    bad = tmp_path / "dd" / FNO_DARCY_FILES["train"]
    bad.parent.mkdir()
    scipy.io.savemat(bad, {"a": _darcy_field(2, 9)})
    scipy.io.savemat(bad.parent / FNO_DARCY_FILES["test"], {"coeff": _darcy_field(2, 9), "sol": _darcy_field(2, 9)})
    line = zoo_fails_naming(bad, tmp_path / "runs", "experiment=mgno/darcy_smooth", f"data.data_dir={bad.parent}",
                            "data.n_train=2", "data.n_test=2", "data.n_val=1",
                            "data.val_offset=2", "data.batch_size=1", "data.eval_batch_size=1",
                            "model.num_channel_u=4", "model.num_layer=1")
    assert "coeff" in line


# ---------------------------------------------------------------------- L4: Darcy prepare_data only fetches
def test_darcy_prepare_data_fetches_without_reading(tmp_path, cache, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    for file in FNO_DARCY_FILES.values():
        scipy.io.savemat(www / file, {"coeff": _darcy_field(1, 9), "sol": _darcy_field(1, 9)})
    calls = []

    def no_read(*args, **kwargs):
        calls.append(args)
        raise AssertionError("prepare_data must not read the .mat arrays")

    monkeypatch.setattr(darcy, "load_fno_mat", no_read)
    dm = DarcyDataModule(name="piececonst_smooth", resolution=22, sampling_rate=20, n_train=1, n_test=1,
                         batch_size=1, url=www.as_uri() + "/{file}")
    dm.prepare_data()
    assert calls == []
    for file in FNO_DARCY_FILES.values():
        assert (cache / "darcy" / file).read_bytes() == (www / file).read_bytes()


# ------------------------------------------------------------------------------ M1: causal PINN .mat files
def _ks(path, keys=("t", "x", "usol"), nt=11, nx=8, usol_shape=None) -> None:
    t, x = np.linspace(0, 1, nt)[None], np.linspace(0, 2 * np.pi, nx)[None]
    u = RNG.random(usol_shape or (nx, nt))
    scipy.io.savemat(path, dict(zip(keys, (t, x, u), strict=True)))


PINN_BAD = {
    "wrong_keys": (lambda p: _ks(p, keys=("tt", "x", "uu")), "missing keys"),
    "random_bytes": (_random_bytes, "cannot read"),
    "truncated": (lambda p: (_ks(p, nt=200, nx=64), truncate(p)), "cannot read"),
    "v73": (lambda p: save_mat73(p, {"t": np.zeros((1, 3)), "x": np.zeros((1, 4)), "usol": np.zeros((4, 3))}),
            "v7.3"),
    "shape": (lambda p: _ks(p, usol_shape=(5, 5)), "has shape"),
}


@pytest.mark.parametrize("case", sorted(PINN_BAD))
def test_causal_pinn_bad_mat_file_is_one_line_error(tmp_path, case):
    write, match = PINN_BAD[case]
    bad = tmp_path / "ks_chaotic.mat"
    write(bad)
    dm = CausalPINNDataModule(name="ks_chaotic_mat", n_t=4, n_x=4, data_dir=str(tmp_path))
    raises_naming(bad, dm.setup, match)


def test_causal_pinn_ks_chaotic_through_zoo_exits_2(tmp_path, cache):
    bad = tmp_path / "dd" / "ks_chaotic.mat"
    bad.parent.mkdir()
    _ks(bad, keys=("tt", "x", "uu"))
    line = zoo_fails_naming(bad, tmp_path / "runs", "experiment=causal_pinn/ks_chaotic",
                            f"data.data_dir={bad.parent}")
    assert "missing keys" in line


# ------------------------------------------------------------------------- M1 and M3: forecasting files
WEATHER_COLUMNS = [f"v{i}" for i in range(10)] + ["OT"] + [f"w{i}" for i in range(10)]  # 21 variates


def _weather_frame(rows: int = 120) -> pd.DataFrame:
    df = pd.DataFrame(RNG.standard_normal((rows, len(WEATHER_COLUMNS))).round(3), columns=WEATHER_COLUMNS)
    df.insert(0, "date", pd.date_range("2020-01-01", periods=rows, freq="10min").strftime("%Y-%m-%d %H:%M:%S"))
    return df


def _weather(tmp_path, df: pd.DataFrame):
    path = tmp_path / "weather.csv"
    df.to_csv(path, index=False)
    return path, ForecastingDataModule("weather", seq_len=8, pred_len=8, batch_size=2, data_dir=str(tmp_path))


def test_weather_bad_date_cell_is_one_line_error(tmp_path):
    df = _weather_frame()
    df.loc[5, "date"] = "notadate"
    path, dm = _weather(tmp_path, df)
    msg = raises_naming(path, dm.setup, "data row 6")
    assert "notadate" in msg


def test_weather_missing_date_is_one_line_error(tmp_path):
    df = _weather_frame()
    df.loc[70, "date"] = None
    path, dm = _weather(tmp_path, df)
    raises_naming(path, dm.setup, "data row 71")


def test_weather_bad_date_through_zoo_exits_2(tmp_path, cache):
    df = _weather_frame()
    df.loc[5, "date"] = "notadate"
    (tmp_path / "dd").mkdir()
    path, _ = _weather(tmp_path / "dd", df)
    zoo_fails_naming(path, tmp_path / "runs", "experiment=itransformer/weather", f"data.data_dir={path.parent}",
                     "data.seq_len=8", "data.pred_len=8", "data.batch_size=2")


def test_weather_with_a_gap_is_refused_naming_row_and_column(tmp_path):
    df = _weather_frame()
    df.loc[37, "v3"] = np.nan
    df.loc[90, "OT"] = np.nan
    path, dm = _weather(tmp_path, df)
    msg = raises_naming(path, dm.setup, "data row 38")
    assert "'v3'" in msg and "2020-01-01 06:10:00" in msg and "2 in all" in msg


def test_truncated_weather_csv_is_refused(tmp_path):
    """A download cut in the last row (no Content-Length) leaves a partial row: NaN values, not filled."""
    df = _weather_frame()
    path, dm = _weather(tmp_path, df)
    text = path.read_text().rstrip("\n")
    start = text.rfind("\n") + 1
    cut = start + len(",".join(text[start:].split(",")[:4]))  # the last row's date and three values, then cut
    path.write_text(text[:cut])
    raises_naming(path, dm.setup, f"data row {len(df)}")


def test_short_weather_through_zoo_exits_2_unless_reduced_copy(tmp_path, cache):
    """A standard file far shorter than the standard one (a broken download; before: read as a "reduced copy" when
    under a quarter of its rows) is refused through `zoo`, naming the file, both lengths and data.reduced_copy."""
    (tmp_path / "dd").mkdir()
    path, _ = _weather(tmp_path / "dd", _weather_frame())
    line = zoo_fails_naming(path, tmp_path / "runs", "experiment=itransformer/weather", f"data.data_dir={path.parent}",
                            "data.seq_len=8", "data.pred_len=8", "data.batch_size=2")
    assert "expected 52696 time steps (rows) for weather, found 120" in line and "data.reduced_copy=true" in line
    dm = ForecastingDataModule("weather", seq_len=8, pred_len=8, batch_size=2, data_dir=str(path.parent),
                               reduced_copy=True)
    dm.setup()
    assert dm.borders[2][1] == 120


def test_solar_with_a_gap_is_refused(tmp_path):
    values = RNG.random((60, 137)).round(3)
    values[12, 100] = np.nan
    path = tmp_path / "solar_AL.txt"
    np.savetxt(path, values, delimiter=",", fmt="%.3f")
    dm = ForecastingDataModule("solar", seq_len=4, pred_len=4, batch_size=2, data_dir=str(tmp_path))
    raises_naming(path, dm.setup, "data row 13")


def test_pems_gaps_are_still_filled(tmp_path):
    """thuml Dataset_PEMS forward- then backward-fills each split after scaling: PEMS files with gaps still load."""
    data = RNG.random((100, 170, 3)).astype(np.float32)
    data[3, 7, 0] = data[70, 9, 0] = np.nan
    np.savez(tmp_path / "PEMS08.npz", data=data)
    dm = ForecastingDataModule("PEMS08", seq_len=8, pred_len=8, batch_size=2, data_dir=str(tmp_path),
                               reduced_copy=True)
    dm.setup()
    for ds in dm.datasets.values():
        assert bool(torch.isfinite(ds.data).all())
    train = dm.datasets["train"].data
    assert float(train[3, 7]) == pytest.approx(float(train[2, 7]))  # forward-filled (scaled) value


# --------------------------------------------------------------------------------- M1: MgNO .npy files
def _helmholtz(folder, s: int = 16, n: int = 12):
    x, y = RNG.uniform(1, 2, (s, s, n)), RNG.standard_normal((s, s, n))
    np.save(folder / MGNO_FILES["helmholtz"]["x"], x)
    np.save(folder / MGNO_FILES["helmholtz"]["y"], y)
    return folder / MGNO_FILES["helmholtz"]["x"]


def _corrupt(path) -> None:
    path.write_bytes(b"\x93NUMPY garbage")


def _npz_named_npy(path) -> None:
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros(3))


NPY_BAD = {
    "corrupt": (_corrupt, "cannot read"),
    "truncated": (truncate, "cannot read"),
    "empty": (lambda p: p.write_bytes(b""), "cannot read"),
    "pickled": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "cannot read"),
    "npz": (_npz_named_npy, "expected a numpy .npy array"),
    "strings": (lambda p: np.save(p, np.array(["a", "b"])), "numeric"),
}


@pytest.mark.parametrize("case", sorted(NPY_BAD))
def test_helmholtz_bad_npy_is_one_line_error(tmp_path, case):
    write, match = NPY_BAD[case]
    bad = _helmholtz(tmp_path)
    write(bad)
    dm = MgNODataModule(name="helmholtz", resolution=16, n_train=4, n_test=3, test_offset=8, sampling_rate=1,
                        data_dir=str(tmp_path))
    raises_naming(bad, dm.setup, match)


def test_pipe_bad_npy_is_one_line_error(tmp_path):
    for c in "XY":
        np.save(tmp_path / f"Pipe_{c}.npy", RNG.random((10, 17, 17)))
    np.save(tmp_path / "Pipe_Q.npy", RNG.random((10, 3, 17, 17)))
    truncate(tmp_path / "Pipe_Q.npy")
    dm = MgNODataModule(name="pipe", resolution=16, n_train=6, n_test=3, n_total=10, data_dir=str(tmp_path))
    raises_naming(tmp_path / "Pipe_Q.npy", dm.setup, "cannot read")


def test_mgno_grid_mismatch_is_a_user_error_naming_the_files(tmp_path):
    x = _helmholtz(tmp_path)
    dm = MgNODataModule(name="helmholtz", resolution=8, n_train=4, n_test=3, test_offset=8, sampling_rate=1,
                        data_dir=str(tmp_path))
    raises_naming(x, dm.setup, "resolution 8")


# ---------------------------------------------------------------------------- M1: Navier-Stokes .mat files
def _ns_u(n: int = 6, s: int = 8, t: int = 12) -> np.ndarray:
    return RNG.standard_normal((n, s, s, t)).astype(np.float32)


NS_BAD = {
    "truncated_v5": (lambda p: (scipy.io.savemat(p, {"u": _ns_u()}), truncate(p)), "cannot read"),
    "truncated_v73": (lambda p: (save_mat73(p, {"u": _ns_u()}), truncate(p)), "cannot read"),
    "v73_3d": (lambda p: save_mat73(p, {"u": _ns_u()[..., 0]}), "expected N x H x W x T"),
    "v73_wrong_key": (lambda p: save_mat73(p, {"w": _ns_u()}), "no dataset 'u'"),
    "random_bytes": (_random_bytes, "cannot read"),
}


@pytest.mark.parametrize("case", sorted(NS_BAD))
def test_navier_stokes_bad_mat_is_one_line_error(tmp_path, case):
    write, match = NS_BAD[case]
    bad = tmp_path / FNO_NS_DEFAULT_FILE
    write(bad)
    dm = SemilinearDataModule(name="ns_fno", data_dir=str(tmp_path), n_train=3, n_test=2, n_frames=10, unroll=4)
    raises_naming(bad, dm.setup, match)


def test_mgno_navier_stokes_truncated_v73_is_one_line_error(tmp_path):
    bad = tmp_path / MGNO_FILES["navier_stokes"]["u"]
    save_mat73(bad, {"u": _ns_u()})
    truncate(bad)
    dm = MgNODataModule(name="navier_stokes", resolution=8, n_train=3, n_test=2, n_total=6, t_steps=3,
                        normalize=False, data_dir=str(tmp_path))
    raises_naming(bad, dm.setup, "cannot read")


# ----------------------------------------------------- complex .mat variables (before: imaginary part dropped)
def _cplx(arr: np.ndarray) -> np.ndarray:
    return arr + 1j * arr


def _complex_darcy(folder, v73: bool):
    """FNO Darcy train / test files (421 x 421, loaded at sampling_rate 84 -> 6 x 6) with a complex train `sol`."""
    save = save_mat73 if v73 else scipy.io.savemat
    save(folder / FNO_DARCY_FILES["train"], {"coeff": _darcy_field(2, 421), "sol": _cplx(_darcy_field(2, 421))})
    scipy.io.savemat(folder / FNO_DARCY_FILES["test"], {"coeff": _darcy_field(1, 421), "sol": _darcy_field(1, 421)})
    dm = DarcyDataModule(name="piececonst_smooth", resolution=6, sampling_rate=84, n_train=2, n_test=1, batch_size=1,
                         data_dir=str(folder))
    return folder / FNO_DARCY_FILES["train"], "sol", dm


def _complex_mgno_darcy(folder, v73: bool):
    coeff = _cplx(_darcy_field(5, 32))  # a complex coefficient this time
    path = folder / MGNO_FILES["darcy_rough"]["train"]
    (save_mat73 if v73 else scipy.io.savemat)(path, {"coeff": coeff, "sol": _darcy_field(5, 32)})
    scipy.io.savemat(folder / MGNO_FILES["darcy_rough"]["test"], {"coeff": _darcy_field(3, 32),
                                                                  "sol": _darcy_field(3, 32)})
    dm = MgNODataModule(name="darcy_rough", resolution=16, n_train=4, n_test=2, data_dir=str(folder))
    return path, "coeff", dm


def _complex_ns(folder, v73: bool):
    path = folder / FNO_NS_DEFAULT_FILE
    (save_mat73 if v73 else scipy.io.savemat)(path, {"u": _cplx(_ns_u())})
    dm = SemilinearDataModule(name="ns_fno", data_dir=str(folder), n_train=3, n_test=2, n_frames=10, unroll=4)
    return path, "u", dm


def _complex_mgno_ns(folder, v73: bool):
    path = folder / MGNO_FILES["navier_stokes"]["u"]
    (save_mat73 if v73 else scipy.io.savemat)(path, {"u": _cplx(_ns_u())})
    dm = MgNODataModule(name="navier_stokes", resolution=8, n_train=3, n_test=2, n_total=6, t_steps=3,
                        normalize=False, data_dir=str(folder))
    return path, "u", dm


def _complex_pinn(folder, v73: bool):
    t, x = np.linspace(0, 1, 11)[None], np.linspace(0, 2 * np.pi, 8)[None]
    path = folder / "ks_chaotic.mat"
    scipy.io.savemat(path, {"t": t, "x": x, "usol": _cplx(RNG.random((8, 11)))})  # (official files are v5 only)
    return path, "usol", CausalPINNDataModule(name="ks_chaotic_mat", n_t=4, n_x=4, data_dir=str(folder))


COMPLEX_MAT = {"darcy": _complex_darcy, "mgno_darcy_rough": _complex_mgno_darcy, "ns_fno": _complex_ns,
               "mgno_navier_stokes": _complex_mgno_ns, "causal_pinn": _complex_pinn}


@pytest.mark.filterwarnings("error::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("v73", [False, True], ids=["v5", "v73"])
@pytest.mark.parametrize("case", sorted(COMPLEX_MAT))
def test_complex_mat_variable_is_refused_naming_file_and_variable(tmp_path, case, v73):
    """A complex variable in a .mat file is a one-line DataFileError naming the file and the variable (before: numpy
    warned and the real part was used)."""
    if v73 and case == "causal_pinn":
        pytest.skip("the causal-PINN reader refuses v7.3 files altogether")
    path, var, dm = COMPLEX_MAT[case](tmp_path, v73)
    with pytest.raises(DataFileError) as info:
        dm.setup()
    assert re.fullmatch(rf"{re.escape(str(path))}: expected a real numeric array for {var}, got dtype complex\d+",
                        str(info.value)), info.value


def test_complex_darcy_mat_through_zoo_exits_2(tmp_path, cache):
    bad = tmp_path / "dd" / FNO_DARCY_FILES["train"]
    bad.parent.mkdir()
    scipy.io.savemat(bad, {"coeff": _cplx(_darcy_field(2, 9)), "sol": _darcy_field(2, 9)})
    scipy.io.savemat(bad.parent / FNO_DARCY_FILES["test"], {"coeff": _darcy_field(2, 9), "sol": _darcy_field(2, 9)})
    line = zoo_fails_naming(bad, tmp_path / "runs", "experiment=mgno/darcy_smooth", f"data.data_dir={bad.parent}",
                            "data.n_train=2", "data.n_test=2", "data.n_val=1",
                            "data.val_offset=2", "data.batch_size=1", "data.eval_batch_size=1",
                            "model.num_channel_u=4", "model.num_layer=1")
    assert line.endswith(f"{bad}: expected a real numeric array for coeff, got dtype complex64"), line


# ------------------------------------------------------------------- PEMS .npz files (iTransformer real data)
def _pems08(**arrays):
    def write(path):
        np.savez(path, **arrays)
    return write


def _pems08_truncated(path) -> None:
    np.savez(path, data=RNG.random((100, 170, 3)).astype(np.float32))
    truncate(path)


def _npy_named_npz(path) -> None:
    with open(path, "wb") as f:  # np.save(path) would append .npy to the name
        np.save(f, RNG.random((100, 170, 3)).astype(np.float32))


PEMS_BAD = {  # case -> (writer, a word of the message); before: BadZipFile / EOFError / TypeError / ValueError
    "truncated": (_pems08_truncated, "BadZipFile"),
    "empty": (lambda p: p.write_bytes(b""), "EOFError"),
    "npy_under_npz_name": (_npy_named_npz, "bare .npy array"),
    "strings": (_pems08(data=np.full((100, 170, 3), "a")), "dtype <U1"),
    "complex": (_pems08(data=np.ones((100, 170, 3), np.complex64)), "dtype complex64"),  # lost its .imag
}


@pytest.mark.parametrize("case", sorted(PEMS_BAD))
def test_pems_bad_npz_is_one_line_error(tmp_path, case):
    write, match = PEMS_BAD[case]
    path = tmp_path / "PEMS08.npz"
    write(path)
    dm = ForecastingDataModule("PEMS08", seq_len=8, pred_len=8, batch_size=2, data_dir=str(tmp_path))
    raises_naming(path, dm.setup, match)


def test_pems08_truncated_through_zoo_exits_2(tmp_path, cache):
    (tmp_path / "dd").mkdir()
    path = tmp_path / "dd" / "PEMS08.npz"
    _pems08_truncated(path)
    zoo_fails_naming(path, tmp_path / "runs", "experiment=itransformer/pems08", f"data.data_dir={path.parent}",
                     "data.seq_len=8", "data.pred_len=8", "data.batch_size=2")


def _pems_setup(tmp_path, data):
    path = tmp_path / "PEMS08.npz"
    np.savez(path, data=data)
    return path, ForecastingDataModule("PEMS08", seq_len=8, pred_len=8, batch_size=2, data_dir=str(tmp_path),
                                       reduced_copy=True).setup


def test_pems_infinite_value_is_refused_naming_row_and_column(tmp_path):
    """Before: loaded, with a non-finite scaler mean / std and non-finite windows."""
    data = RNG.random((100, 170, 3)).astype(np.float32)
    data[5, 3, 0] = np.inf
    data[7, 9, 1] = np.inf  # another channel: not read
    path, setup = _pems_setup(tmp_path, data)
    msg = raises_naming(path, setup, "infinite value in data row 6, column '3'")
    assert "(1 in all)" in msg


@pytest.mark.parametrize("split,rows", [("train", slice(0, 60)), ("val", slice(60, 80)), ("test", slice(80, 100))])
def test_pems_sensor_without_values_in_a_split_is_refused(tmp_path, split, rows):
    """A sensor all-NaN within a split stays NaN after Dataset_PEMS's forward / backward fill (before: loaded)."""
    data = RNG.random((100, 170, 3)).astype(np.float32)
    data[rows, 4, 0] = np.nan
    data[rows.start + 1:rows.stop, 11, 0] = np.nan  # one value left in the split: filled, not refused
    path, setup = _pems_setup(tmp_path, data)
    msg = raises_naming(path, setup, f"sensor column 4 has no value in the {split} split")
    assert f"data rows {rows.start + 1}-{rows.stop}" in msg and "1 column(s) in all" in msg
    data[rows, 4, 0] = 1.0
    _pems_setup(tmp_path, data)[1]()  # the partly empty sensor 11 alone is filled
