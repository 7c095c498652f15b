"""ForecastingDataModule on tiny CSV fixtures: thuml borders, train-only scaler, window shapes, offline defaults
(leader-follower, dysts Lorenz-96)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.forecasting import (
    DATASETS,
    ForecastingDataModule,
    generate_leader_follower,
    generate_lorenz96,
    split_borders,
    time_features,
)
from launch.errors import UserError


def _write(path, rows: int, n: int, freq: str = "h", names=None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a per-row level shift so train and test statistics differ (the scaler must use train rows only)
    values = (rng.standard_normal((rows, n)) + np.arange(rows)[:, None] / rows * 5.0).astype(np.float32)
    df = pd.DataFrame(values, columns=names or [f"v{i}" for i in range(n)])
    df.insert(0, "date", pd.date_range("2016-07-01", periods=rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False)
    return pd.read_csv(path).drop(columns="date").to_numpy(np.float32)


def test_ett_hour_borders_scaler_and_windows(tmp_path):
    raw = _write(tmp_path / "ETTh1.csv", 14400 + 20, 7,
                 names=["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"])
    dm = ForecastingDataModule("ETTh1", seq_len=96, pred_len=24, batch_size=8, data_dir=str(tmp_path))
    dm.setup()
    assert dm.borders == [(0, 8640), (8640 - 96, 11520), (11520 - 96, 14400)]
    np.testing.assert_allclose(dm.mean, raw[:8640].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dm.std, raw[:8640].std(0), rtol=1e-5)
    assert not np.allclose(dm.mean, raw.mean(0), atol=1e-2)  # not fitted on everything
    # window counts: rows - L - S + 1 per split, stride 1
    assert len(dm.datasets["train"]) == 8640 - 96 - 24 + 1
    assert len(dm.datasets["val"]) == (11520 - 8640 + 96) - 96 - 24 + 1
    assert len(dm.datasets["test"]) == 2880 + 96 - 96 - 24 + 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 96, 7) and batch["y"].shape == (8, 24, 7) and "x_mark" not in batch
    # first test window: lookback = the last 96 val rows, target starts at row 11520, z-scored with train stats
    item = dm.datasets["test"][0]
    expected_x = (raw[11520 - 96:11520] - dm.mean) / dm.std
    expected_y = (raw[11520:11520 + 24] - dm.mean) / dm.std
    torch.testing.assert_close(item["x"], torch.from_numpy(expected_x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["y"], torch.from_numpy(expected_y), atol=1e-5, rtol=1e-5)


def test_ett_minute_borders_are_four_times_hourly():
    assert split_borders("ett_minute", 69680, 96) == [(0, 34560), (34560 - 96, 46080), (46080 - 96, 57600)]
    with pytest.raises(UserError):
        split_borders("ett_hour", 1000, 96)


def test_custom_ratio_borders_and_target_last(tmp_path):
    _write(tmp_path / "weather.csv", 1000, 21, freq="10min", names=["OT"] + [f"c{i}" for i in range(20)])
    dm = ForecastingDataModule("weather", seq_len=48, pred_len=12, data_dir=str(tmp_path), time_features=True,
                               reduced_copy=True)
    dm.setup()
    n_train, n_test = 700, 200
    assert dm.borders == [(0, n_train), (n_train - 48, n_train + 100), (1000 - n_test - 48, 1000)]
    assert dm.variate_names[-1] == "OT"  # Dataset_Custom moves the target last
    item = dm.datasets["val"][0]
    assert item["x"].shape == (48, 21) and item["y"].shape == (12, 21) and item["x_mark"].shape == (48, 4)
    assert float(item["x_mark"].abs().max()) <= 0.5 + 1e-6


def test_time_features_timef_hourly():
    dates = pd.to_datetime(["2016-07-01 00:00", "2016-07-03 23:00"]).to_numpy()
    f = time_features(dates, "h")
    # Friday 00:00, 1 July (day of year 183): hour, weekday, day, day-of-year
    np.testing.assert_allclose(f[0], [-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5], atol=1e-6)
    assert f[1, 0] == pytest.approx(0.5)


def test_leader_follower_offline_default(tmp_path):
    values, names = generate_leader_follower()
    assert values.shape == (8000, 8) and names[4] == "follower_0"
    np.testing.assert_array_equal(values[24:, 4:], values[:-24, :4])  # f_k(t) = l_k(t - 24)
    dm = ForecastingDataModule(seq_len=96, pred_len=24, data_dir=str(tmp_path))
    dm.setup()
    assert next(tmp_path.glob("leader_follower_*.csv")).is_file()  # written through the CSV path
    assert dm.variate_groups == {"leader": [0, 1, 2, 3], "follower": [4, 5, 6, 7]}
    assert dm.borders[0] == (0, 6000) and dm.borders[2] == (6000, 8000)
    assert len(dm.datasets["test"]) == len(range(0, 2000 - 96 - 24 + 1, 4))
    # the follower's target equals the leader's last 24 observed values (scaled with each column's stats)
    item = dm.datasets["test"][3]
    lead_tail = item["x"][-24:, 0] * dm.std[0] + dm.mean[0]
    follow_future = item["y"][:, 4] * dm.std[4] + dm.mean[4]
    torch.testing.assert_close(lead_tail, follow_future, atol=1e-4, rtol=1e-4)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="ETTh1"):
        ForecastingDataModule("etth1x")
    with pytest.raises(UserError, match="does not exist"):
        ForecastingDataModule("ETTh2", data_dir=str(tmp_path)).setup()
    with pytest.raises(UserError, match="data_dir"):
        ForecastingDataModule("traffic").setup()
    assert DATASETS["ETTm1"].url.endswith("ETT-small/ETTm1.csv")


def test_download_path_through_fetch(tmp_path, monkeypatch):
    """A URL goes through download.fetch (file:// here: tests never reach the network), cached under the cache dir."""
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "ETTh2.csv", 14400, 7)
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    dm = ForecastingDataModule("ETTh2", seq_len=96, pred_len=96, url=(src / "ETTh2.csv").as_uri())
    dm.prepare_data()
    dm.setup()
    cached = tmp_path / "cache" / "forecasting" / "ETTh2.csv"
    assert cached.is_file() and cached.with_name("ETTh2.csv.sha256").is_file()
    assert dm.num_variates == 7


def test_table_checksum_is_verified(tmp_path, monkeypatch):
    """A table entry with a sha256 (the ETT files) is verified: a file that differs from it is a one-line error and
    nothing is cached; the matching file loads. (A user's data.url is trusted on first use instead:
    test_download_path_through_fetch.)"""
    import dataclasses

    from datamodules import forecasting
    from datamodules.download import file_sha256

    src = tmp_path / "src"
    src.mkdir()
    _write(src / "ETTh1.csv", 14400, 7)
    good = file_sha256(src / "ETTh1.csv")
    assert all(len(DATASETS[n].sha256) == 64 for n in ("ETTh1", "ETTh2", "ETTm1", "ETTm2"))
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "forecasting" / "ETTh1.csv"
    spec = dataclasses.replace(DATASETS["ETTh1"], url=(src / "ETTh1.csv").as_uri(), sha256="0" * 64)
    monkeypatch.setitem(forecasting.DATASETS, "ETTh1", spec)
    with pytest.raises(UserError, match="sha256"):
        ForecastingDataModule("ETTh1", seq_len=96, pred_len=96).prepare_data()
    assert not cached.exists()
    monkeypatch.setitem(forecasting.DATASETS, "ETTh1", dataclasses.replace(spec, sha256=good))
    dm = ForecastingDataModule("ETTh1", seq_len=96, pred_len=96)
    dm.prepare_data()
    dm.setup()
    assert cached.is_file() and dm.num_variates == 7


# a short Lorenz-96 series (20 variates, 600 rows, ~1 s to integrate); the default is 30 variates x 8000 rows
SMALL_L96 = {"length": 600, "num_variates": 20, "burn_in": 100}


def _lorenz96_module(tmp_path, **kw):
    dm = ForecastingDataModule("lorenz96", **{"seq_len": 48, "pred_len": 12, "batch_size": 8,
                                              "data_dir": str(tmp_path), "offline": SMALL_L96, **kw})
    dm.setup()
    return dm


def test_lorenz96_written_as_csv_with_standard_splits_and_train_only_scaler(tmp_path):
    dm = _lorenz96_module(tmp_path)
    # the generated series goes through the real files' format: date column + one column per variate
    (path,) = tmp_path.glob("lorenz96_*.csv")
    df = pd.read_csv(path)
    assert list(df.columns) == ["date"] + [f"x_{i}" for i in range(20)] and len(df) == 600
    assert pd.to_datetime(df["date"]).diff().iloc[1:].eq(pd.Timedelta("1h")).all()
    raw = df.drop(columns="date").to_numpy(np.float32)
    assert dm.num_variates == 20 and dm.variate_groups == {}
    # Dataset_Custom 70/10/20 borders, val/test starting one lookback early
    assert dm.borders == [(0, 420), (420 - 48, 480), (600 - 120 - 48, 600)]
    assert len(dm.datasets["train"]) == 420 - 48 - 12 + 1
    assert len(dm.datasets["val"]) == (60 + 48) - 48 - 12 + 1
    assert len(dm.datasets["test"]) == (120 + 48) - 48 - 12 + 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 48, 20) and batch["y"].shape == (8, 12, 20)
    # scaler fitted on the train rows only, applied to every split
    np.testing.assert_allclose(dm.mean, raw[:420].mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dm.std, raw[:420].std(0), rtol=1e-5)
    assert np.abs(dm.mean - raw.mean(0)).max() > 1e-3
    item = dm.datasets["test"][0]
    z = (raw - dm.mean) / dm.std
    torch.testing.assert_close(item["x"], torch.from_numpy(z[480 - 48:480]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["y"], torch.from_numpy(z[480:492]), atol=1e-5, rtol=1e-5)


def test_lorenz96_is_dysts_lorenz96_deterministic_by_seed():
    kw = {"length": 300, "num_variates": 12, "burn_in": 50}
    a, names = generate_lorenz96(**kw, seed=0)
    b, _ = generate_lorenz96(**kw, seed=0)
    c, _ = generate_lorenz96(**kw, seed=1)
    assert a.shape == (300, 12) and a.dtype == np.float32 and names == [f"x_{i}" for i in range(12)]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0  # another initial condition: another (chaotic) trajectory
    # the samples solve dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + f (f = 20): five-point differences with dysts'
    # sampling step dt = period * n / pts_per_period / (n - 1), n = length + burn_in, period 2.1969 (measured 0.008;
    # the mirrored stencil gives 1.1, f = 8 gives 0.14)
    n = 300 + 50
    dt = 2.1969 * n / 100 / (n - 1)
    x = a.astype(np.float64)
    dxdt = (-x[4:] + 8 * x[3:-1] - 8 * x[1:-3] + x[:-4]) / (12 * dt)
    rhs = ((np.roll(x, -1, 1) - np.roll(x, 2, 1)) * np.roll(x, 1, 1) - x + 20.0)[2:-2]
    rel = np.linalg.norm(dxdt - rhs) / np.linalg.norm(rhs)
    assert rel < 0.03, rel


def test_lorenz96_seed_and_size_select_the_cached_file(tmp_path):
    a = _lorenz96_module(tmp_path)
    b = _lorenz96_module(tmp_path, offline={**SMALL_L96, "seed": 1})
    assert len(list(tmp_path.glob("lorenz96_*.csv"))) == 2
    assert not torch.equal(a.datasets["train"].data, b.datasets["train"].data)
    again = _lorenz96_module(tmp_path)  # read back from the cache: the same windows
    assert torch.equal(a.datasets["test"].data, again.datasets["test"].data)


def test_offline_parameters_checked(tmp_path):
    with pytest.raises(UserError, match="unknown key.*num_leaders"):
        ForecastingDataModule("lorenz96", offline={"num_leaders": 3})
    with pytest.raises(UserError, match="at least 4 variates"):
        ForecastingDataModule("lorenz96", data_dir=str(tmp_path), offline={"num_variates": 3}).setup()
    assert ForecastingDataModule().name == "leader_follower"  # the card's offline set stays the default


def test_itransformer_fast_run_on_lorenz96(tmp_path, monkeypatch):
    from tests.papers.contract import fast_run

    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path))
    run = fast_run("itransformer", "data=lorenz96", "data.seq_len=48", "data.pred_len=12",
                   "data.offline.num_variates=20",
                   "+data.offline.length=600", "+data.offline.burn_in=100")
    run.assert_contract()
    assert "test/mse" in run.metrics and "test/mse_follower" not in run.metrics
    assert next((tmp_path / "forecasting").glob("lorenz96_600_20_*.csv")).is_file()


def test_eval_stride_must_be_positive():
    """data.eval_stride=-1 was a RuntimeError traceback in the window dataset and 0 silently meant the default: both
    are now a one-line error; null keeps the dataset's default (4 for leader_follower)."""
    for bad in (-1, 0):
        with pytest.raises(UserError, match=rf"^data.eval_stride must be >= 1, got {bad}$"):
            ForecastingDataModule(eval_stride=bad)
    assert ForecastingDataModule(eval_stride=None).eval_stride == 4
    assert ForecastingDataModule(eval_stride=2).eval_stride == 2


def test_standard_lengths_match_the_papers_split_sizes():
    """num_steps reproduces the (train, val, test) sample counts of the iTransformer paper's Table 4 through our
    borders (L = 96; the table counts rows - L + 1 for weather / ECL / traffic, rows - L - S + 1 with S = 96 for
    exchange and solar) and the TimesNet table's ILI counts (L = 36, S = 24); PEMS: days x 288 five-minute
    steps of the published arrays."""
    counts = {  # name -> (train, val, test) samples in the table, L, rows - samples
        "weather": ((36792, 5271, 10540), 96, 95), "electricity": ((18317, 2633, 5261), 96, 95),
        "traffic": ((12185, 1757, 3509), 96, 95), "exchange_rate": ((5120, 665, 1422), 96, 191),
        "solar": ((36601, 5161, 10417), 96, 191), "national_illness": ((617, 74, 170), 36, 59)}
    for name, (expected, seq_len, k) in counts.items():
        spec = DATASETS[name]
        assert tuple(b - a - k for a, b in split_borders(spec.split, spec.num_steps, seq_len)) == expected, name
    assert {n: DATASETS[n].num_steps / 288 for n in ("PEMS03", "PEMS04", "PEMS07", "PEMS08")} == {
        "PEMS03": 91, "PEMS04": 59, "PEMS07": 98, "PEMS08": 62}


def _exchange(path, rows: int) -> None:
    _write(path / "exchange_rate.csv", rows, 8, freq="D", names=[f"c{i}" for i in range(7)] + ["OT"])


def test_standard_file_with_another_length_is_refused(tmp_path, caplog):
    """Only the ETT files are checksummed: a standard file cut at a line boundary (before: loaded, the 70/10/20
    borders shifted) or with rows added is refused, naming the file, both lengths and data.reduced_copy; with
    reduced_copy=true (a deliberately shortened copy) any length is read, with a warning."""
    _exchange(tmp_path, 7588)
    dm = ForecastingDataModule("exchange_rate", seq_len=96, pred_len=96, data_dir=str(tmp_path))
    dm.setup()
    assert dm.borders == [(0, 5311), (5311 - 96, 5311 + 760), (7588 - 1517 - 96, 7588)]
    path = tmp_path / "exchange_rate.csv"
    lines = path.read_text().splitlines(keepends=True)
    # a cut copy, one just above a quarter of the rows, one below (before: read as a reduced copy), one row too many
    for rows in (6000, 1897, 1000, 7589):
        path.write_text("".join(lines[:rows + 1]) if rows < 7588 else "".join(lines) + lines[-1])
        dm = ForecastingDataModule("exchange_rate", seq_len=96, pred_len=96, data_dir=str(tmp_path))
        with pytest.raises(UserError, match=f"expected 7588 time steps .* found {rows}") as err:
            dm.setup()
        msg = str(err.value)
        assert str(path) in msg and "data.reduced_copy=true" in msg and "\n" not in msg
        caplog.clear()
        with caplog.at_level("WARNING", logger="datamodules.forecasting"):
            dm = ForecastingDataModule("exchange_rate", seq_len=96, pred_len=96, data_dir=str(tmp_path),
                                       reduced_copy=True)
            dm.setup()
        assert f"{rows} time steps" in caplog.text and "reduced copy" in caplog.text and str(path) in caplog.text
        assert dm.borders[2][1] == rows  # the borders follow the copy's length


def test_truncated_file_under_a_quarter_is_refused_without_reduced_copy(tmp_path):
    """A real file cut below a quarter of its rows (a broken download) loaded silently as a "reduced copy"
    before; now only data.reduced_copy=true reads it."""
    _write(tmp_path / "weather.csv", 1000, 21, freq="10min")
    with pytest.raises(UserError, match=r"weather.csv: expected 52696 time steps \(rows\) for weather, found 1000"):
        ForecastingDataModule("weather", seq_len=48, pred_len=12, data_dir=str(tmp_path)).setup()
    dm = ForecastingDataModule("weather", seq_len=48, pred_len=12, data_dir=str(tmp_path), reduced_copy=True)
    dm.setup()
    assert dm.borders[0] == (0, 700) and dm.num_variates == 21


def test_pems_standard_length_is_checked(tmp_path):
    np.savez(tmp_path / "PEMS08.npz", data=np.ones((17000, 170), np.float32))
    with pytest.raises(UserError, match="expected 17856 time steps .* found 17000.*data.reduced_copy=true"):
        ForecastingDataModule("PEMS08", seq_len=96, pred_len=12, data_dir=str(tmp_path)).setup()
    np.savez(tmp_path / "PEMS08.npz", data=np.ones((600, 170), np.float32))  # under a quarter: refused too
    with pytest.raises(UserError, match="expected 17856 time steps .* found 600"):
        ForecastingDataModule("PEMS08", seq_len=96, pred_len=12, data_dir=str(tmp_path)).setup()
    ForecastingDataModule("PEMS08", seq_len=96, pred_len=12, data_dir=str(tmp_path), reduced_copy=True).setup()


def test_no_pinned_link_points_to_the_official_mirror():
    with pytest.raises(UserError, match="huggingface.co/datasets/thuml/Time-Series-Library"):
        ForecastingDataModule("weather").setup()
