"""ForecastingDataModule on tiny CSV fixtures: thuml borders, train-only scaler, window shapes, offline default."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.forecasting import (
    DATASETS,
    ForecastingDataModule,
    generate_leader_follower,
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
    dm = ForecastingDataModule("weather", seq_len=48, pred_len=12, data_dir=str(tmp_path), time_features=True)
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
