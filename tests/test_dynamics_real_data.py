"""Real-data loaders of the dynamics family on tiny local fixtures written in the real file formats, and the
paper-scale experiment variants that use them (`configs/experiment/{itransformer,gtf_plrnn}/<dataset>.yaml`).

Formats: thuml CSV (`date, v1, ..., OT`) for ETT / Weather / ECL / Traffic / Exchange, Solar-Energy's header-less
comma-separated `solar_AL.txt`, PEMS `PEMSxx.npz` (array `data`, T x N x 3), and the GTF repository's T x N `.npy`
train/test files. (The offline defaults and the ETTh1 / weather CSV borders are tested in
tests/test_forecasting_data.py and tests/test_dynamics_data.py; every experiment file composes in test_configs.py.)
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from datamodules.dynamics import GTF_FILES, TrajectoryFileDataModule
from datamodules.forecasting import DATASETS, ForecastingDataModule, read_pems_npz, read_solar_txt
from launch import config as zconfig
from launch import train
from launch.errors import UserError

ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]

# variant -> (data name, rows of the fixture: the fewest that give every split a window)
ITRANSFORMER_VARIANTS = {
    "etth1": 14400, "etth2": 14400, "ettm1": 57600, "ettm2": 57600, "weather": 1000, "electricity": 1000,
    "traffic": 1000, "exchange": 1000, "solar": 1000, "pems03": 600, "pems04": 600, "pems07": 600, "pems08": 600,
}


def _values(rows: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a level shift along time: train and test statistics differ (the scaler must use train rows only)
    return (rng.standard_normal((rows, n)) + np.arange(rows)[:, None] / rows * 4.0).astype(np.float32)


def write_fixture(folder, name: str, rows: int, seed: int = 0) -> np.ndarray:
    """Write `DATASETS[name]`'s file in its real format into `folder`; return the T x N values as read back."""
    spec = DATASETS[name]
    n = spec.num_variates
    values = _values(rows, n, seed)
    path = folder / spec.file
    if spec.fmt == "solar_txt":
        np.savetxt(path, values, delimiter=",", fmt="%.6f")
        return np.loadtxt(path, delimiter=",", dtype=np.float32)
    if spec.fmt == "pems_npz":
        data = np.stack([values, values * 0.01 + 60.0, values * 0.1], axis=-1)  # flow, occupancy, speed
        np.savez(path, data=data)
        return values
    if name.startswith("ETT"):
        names = ETT_COLUMNS
    else:  # Dataset_Custom files: the target OT is the last column of the bundle's files
        names = [f"c{i}" for i in range(n - 1)] + ["OT"]
    freq = "15min" if name.startswith("ETTm") else "h"
    df = pd.DataFrame(values, columns=names)
    df.insert(0, "date", pd.date_range("2016-07-01", periods=rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False, float_format="%.6f")
    return pd.read_csv(path).drop(columns="date").to_numpy(np.float32)


# ------------------------------------------------------------------------------------------------ iTransformer
@pytest.mark.parametrize("variant", sorted(ITRANSFORMER_VARIANTS))
def test_itransformer_variant_reads_its_real_format(variant, tmp_path):
    cfg = zconfig.compose([f"experiment=itransformer/{variant}", f"data.data_dir={tmp_path}", "logger=none",
                           "data.reduced_copy=true"])  # the fixtures are shorter than the standard files
    name = cfg.data.name
    raw = write_fixture(tmp_path, name, ITRANSFORMER_VARIANTS[variant])
    # the paper's schedule (official run.py): 10 epochs, early stopping patience 3, lr halved every epoch
    assert cfg.trainer.max_epochs == 10 and cfg.model.scheduler.gamma == 0.5
    written = OmegaConf.load(zconfig.config_root() / "experiment" / "itransformer" / f"{variant}.yaml")
    assert written.early_stopping.patience == 3 and written.early_stopping.monitor == "val/mse"
    assert cfg.data.seq_len == 96 and cfg.model.d_model == cfg.model.d_ff
    dm, module = train.instantiate(cfg)
    dm.setup()
    n = DATASETS[name].num_variates
    assert dm.num_variates == n
    b0, b1 = dm.borders[0]
    np.testing.assert_allclose(dm.mean, raw[b0:b1].mean(0), rtol=1e-4, atol=1e-4)  # train rows only
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (cfg.data.batch_size, 96, n)
    assert batch["y"].shape == (cfg.data.batch_size, cfg.data.pred_len, n)
    assert ("x_mark" in batch) == bool(cfg.data.time_features)
    if n <= 21:  # one forward of the paper-size model (the many-variate ones are too large for a unit test)
        with torch.no_grad():
            out = module(batch["x"][:2], batch["x_mark"][:2] if "x_mark" in batch else None)
        assert out.shape == (2, cfg.data.pred_len, n) and torch.isfinite(out).all()


def test_solar_txt_borders_scaler_and_no_timestamps(tmp_path):
    raw = write_fixture(tmp_path, "solar", 1000)
    values, dates, names = read_solar_txt(tmp_path / "solar_AL.txt")
    assert values.shape == (1000, 137) and dates is None and len(names) == 137
    dm = ForecastingDataModule("solar", seq_len=96, pred_len=96, data_dir=str(tmp_path), reduced_copy=True)
    dm.setup()
    # Dataset_Solar: n_train = 700, n_test = 200, n_val = int(0.1 T) = 100
    assert dm.borders == [(0, 700), (700 - 96, 800), (1000 - 200 - 96, 1000)]
    np.testing.assert_allclose(dm.mean, raw[:700].mean(0), rtol=1e-5, atol=1e-5)
    item = dm.datasets["test"][0]
    torch.testing.assert_close(item["y"], torch.from_numpy((raw[800:896] - dm.mean) / dm.std), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="no timestamps"):
        ForecastingDataModule("solar", data_dir=str(tmp_path), time_features=True, reduced_copy=True).setup()


def test_pems_npz_flow_channel_borders_and_gap_filling(tmp_path):
    raw = write_fixture(tmp_path, "PEMS08", 600)
    values, _, _ = read_pems_npz(tmp_path / "PEMS08.npz")
    np.testing.assert_array_equal(values, raw)  # channel 0 (flow) of T x N x 3
    # a gap in the validation part: NaN, filled forward within the split after scaling (Dataset_PEMS)
    data = np.load(tmp_path / "PEMS08.npz")["data"].copy()
    data[400:403, 5, 0] = np.nan
    data[10, 7, 0] = np.nan  # a gap in train: the scaler ignores it
    np.savez(tmp_path / "PEMS08.npz", data=data)
    dm = ForecastingDataModule("PEMS08", seq_len=96, pred_len=12, data_dir=str(tmp_path), reduced_copy=True)
    dm.setup()
    assert dm.borders == [(0, 360), (360, 480), (480, 600)]  # 60/20/20, no lookback overlap
    assert math.isclose(float(dm.mean[7]), float(np.nanmean(data[:360, 7, 0])), rel_tol=1e-5)
    val = dm.datasets["val"].data
    assert torch.isfinite(val).all()
    expected = (data[399, 5, 0] - dm.mean[5]) / dm.std[5]
    assert torch.allclose(val[40:43, 5], torch.full((3,), float(expected)), atol=1e-5)
    with pytest.raises(UserError, match="npz"):
        (tmp_path / "bad").mkdir()
        np.savez(tmp_path / "bad" / "PEMS08.npz", other=np.zeros(3))
        ForecastingDataModule("PEMS08", data_dir=str(tmp_path / "bad")).setup()


def test_itransformer_etth1_variant_trains_on_fixture(tmp_path):
    """The paper-scale ETTh1 variant (d_model 256, timeF tokens, early stopping, best checkpoint) runs end to end."""
    from tests.papers.contract import fast_run

    write_fixture(tmp_path, "ETTh1", 14400)
    run = fast_run("itransformer/etth1", f"data.data_dir={tmp_path}", "checkpoint.monitor=null",
                   "checkpoint.test_on=final", steps=2)
    run.assert_contract()
    assert math.isfinite(run.metrics["test/mse"])


# ------------------------------------------------------------------------------------------------ GTF files
def _write_npy(folder, name: str, t_train: int = 2000, t_test: int = 400, flat: bool = False, seed: int = 0):
    train_rel, test_rel, n, _ = GTF_FILES[name]
    n = n or 4
    rng = np.random.default_rng(seed)
    t = np.arange(t_train + t_test)[:, None] * 0.05
    x = np.sin(t * (1 + np.arange(n))) + 0.05 * rng.standard_normal((t_train + t_test, n)) + 2.0
    out = {}
    for rel, part in ((train_rel, x[:t_train]), (test_rel, x[t_train:])):
        path = folder / (rel.split("/")[-1] if flat else rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, part.astype(np.float32))
        out[rel] = part.astype(np.float32)
    return out


@pytest.mark.parametrize("flat", [False, True])
def test_gtf_npy_files_layout_batches_and_eval_segments(tmp_path, flat):
    arrays = _write_npy(tmp_path, "ECG", flat=flat)
    dm = TrajectoryFileDataModule("ECG", data_dir=str(tmp_path), seq_len=200, batch_size=16, steps_per_epoch=3)
    dm.setup("fit")
    assert dm.dim == 5
    train, test = arrays[GTF_FILES["ECG"][0]], arrays[GTF_FILES["ECG"][1]]
    np.testing.assert_allclose(dm.train_segments[0].numpy(), train)  # used as is (official)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(b.shape == (16, 200, 5) for b in batches)
    (item,) = list(dm.test_dataloader())
    assert item["x"].shape == (1, 400, 5)
    np.testing.assert_allclose(item["x"][0].numpy(), test)
    assert [v["x"].shape for v in dm.val_dataloader()] == [(1, 400, 5)]  # validation = test (paper code)
    # deterministic by seed and epoch
    again = TrajectoryFileDataModule("ECG", data_dir=str(tmp_path), seq_len=200, batch_size=16, steps_per_epoch=3)
    assert all(torch.equal(a, b) for a, b in zip(batches, list(again.train_dataloader())))
    # z-scoring with the train file's statistics when asked
    z = TrajectoryFileDataModule("ECG", data_dir=str(tmp_path), standardize=True)
    z.setup()
    np.testing.assert_allclose(z.test_segments[0].numpy(), (test - train.mean(0)) / train.std(0), rtol=1e-4,
                               atol=1e-4)


def test_gtf_npy_errors(tmp_path):
    with pytest.raises(UserError, match="ECG"):
        TrajectoryFileDataModule("ECGX")
    with pytest.raises(UserError, match="data_dir"):
        TrajectoryFileDataModule("EEG").setup()  # not in the repository: no download link
    _write_npy(tmp_path, "Lorenz63")
    np.save(tmp_path / "Lorenz63" / "lorenz63_test.npy", np.zeros((10, 4), np.float32))
    with pytest.raises(UserError, match="3 dimensions"):
        TrajectoryFileDataModule("Lorenz63", data_dir=str(tmp_path)).setup()
    np.save(tmp_path / "Lorenz63" / "lorenz63_test.npy", np.zeros(10, np.float32))
    with pytest.raises(UserError, match="T x N"):
        TrajectoryFileDataModule("Lorenz63", data_dir=str(tmp_path)).setup()


def _npz_named_npy(path) -> None:
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros((10, 3)))


GTF_BAD_NPY = {  # file content -> what the one-line error says (before: tracebacks, or silently loaded)
    "empty": (lambda p: p.write_bytes(b""), "cannot read"),  # was EOFError
    "npz": (_npz_named_npy, "expected a numpy .npy array, got NpzFile"),  # was AttributeError
    "strings": (lambda p: np.save(p, np.full((10, 3), "a")), "expected a real numeric array"),  # was TypeError
    "complex": (lambda p: np.save(p, np.ones((10, 3)) + 1j), "expected a real numeric array"),  # lost its .imag
    "bool": (lambda p: np.save(p, np.ones((10, 3), bool)), "expected a real numeric array"),  # read as 0 / 1
    "no_rows": (lambda p: np.save(p, np.zeros((0, 3))), "T >= 2"),  # was accepted
    "one_row": (lambda p: np.save(p, np.zeros((1, 3))), "T >= 2"),
    "nan": (lambda p: np.save(p, np.where(np.eye(10, 3) > 0, np.nan, 1.0)), "NaN or infinite values in the series"),
}


@pytest.mark.parametrize("case", sorted(GTF_BAD_NPY))
def test_gtf_bad_npy_file_is_a_one_line_error_naming_it(tmp_path, case):
    write, match = GTF_BAD_NPY[case]
    _write_npy(tmp_path, "Lorenz63")
    bad = tmp_path / "Lorenz63" / "lorenz63_test.npy"
    write(bad)
    with pytest.raises(UserError, match=match) as err:
        TrajectoryFileDataModule("Lorenz63", data_dir=str(tmp_path)).setup()
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_gtf_npy_download_through_fetch(tmp_path, monkeypatch):
    """URLs go through download.fetch (file:// here: tests never reach the network), cached under gtf_plrnn/."""
    src = tmp_path / "src"
    _write_npy(src, "Lorenz63", flat=True)
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    dm = TrajectoryFileDataModule("Lorenz63", train_url=(src / "lorenz63_on0.05_train.npy").as_uri(),
                                  test_url=(src / "lorenz63_test.npy").as_uri())
    dm.prepare_data()
    dm.setup()
    cached = tmp_path / "cache" / "gtf_plrnn" / "lorenz63_test.npy"
    assert cached.is_file() and cached.with_name("lorenz63_test.npy.sha256").is_file()
    assert dm.dim == 3
    # the default URL points into the official repository's ICML2023_datasets/ folder
    from datamodules.dynamics import GTF_REPO_RAW

    assert GTF_REPO_RAW.startswith("https://raw.githubusercontent.com/DurstewitzLab/GTF-shPLRNN/")


@pytest.mark.parametrize("variant,name,dims", [("ecg", "ECG", 5), ("lorenz63", "Lorenz63", 3)])
def test_gtf_variant_trains_on_fixture(variant, name, dims, tmp_path):
    """The paper-scale GTF variants (ECG: M = 5, L = 250, alpha 0.3; Lorenz63: aGTF, M = 3, L = 50) train a few
    steps on fixture files and evaluate by free-running the test file."""
    from tests.papers.contract import fast_run

    _write_npy(tmp_path, name, t_test=300)
    cfg = zconfig.compose([f"experiment=gtf_plrnn/{variant}", "logger=none"])
    assert cfg.trainer.max_epochs == 5000 and cfg.data.steps_per_epoch == 50 and cfg.data.seq_len == 200
    run = fast_run(f"gtf_plrnn/{variant}", f"data.data_dir={tmp_path}", steps=2)
    assert run.coverage.losses and all(math.isfinite(v) for v in run.coverage.losses)
    assert not run.coverage.names - run.coverage.touched
    assert run.model.model.latent_dim == dims and "test/d_stsp" in run.metrics and "test/d_h" in run.metrics
