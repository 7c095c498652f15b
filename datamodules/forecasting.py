"""Long-horizon multivariate forecasting data (iTransformer and other thuml-style forecasters).

The standard CSV format: a ``date`` column followed by one column per variate (ETT, Weather, ECL, Traffic,
Exchange, ILI as distributed with Autoformer / Time-Series-Library). One ``ForecastingDataModule`` serves every
dataset by ``name``; all of them, including the offline default, go through the same CSV reader:

- ``leader_follower`` (offline default, paper card `itransformer`): N = 8 variates, T = 8000 hourly steps.
  Leaders l_k (k = 0..3) are AR(1): l_t = 0.8 l_{t-1} + 0.6 eps_t, eps ~ N(0, 1) (numpy seed 0);
  followers f_k(t) = l_k(t - 24). With L = 96, S = 24 a follower's future is an exact copy of its leader's last
  24 observed values (cross-variate information), while leaders are unpredictable beyond a few steps.
  The series is written once as a CSV (``date, leader_0..3, follower_0..3``) into the download cache and read
  back through the CSV path. Train windows lie in t < 6000, test windows in t >= 6000 (stride 4); there is
  no separate validation range, validation (monitoring only) uses the test windows.
- ``lorenz96`` (offline, issue 3's "multivariate series from dysts with tens of variates"): ``dysts.flows.Lorenz96``
  with N = 30 variates (set by the length of the initial condition; dysts' forcing f = 20), initial condition
  f + N(0, 1) per variate (numpy seed ``seed``), integrated with RK45 at rtol = atol = 1e-9 (dysts' default
  Radau at 1e-12 is ~100x slower) and resampled to 100 points per dysts period (2.1969 time units, dt ~ 0.022);
  the first 500 samples (transient) are dropped, T = 8000 rows are kept. Written once into the download cache
  as ``date, x_0..x_{N-1}`` (hourly dates) and read back like a real file, with the real files' 70/10/20
  ``Dataset_Custom`` borders and stride-1 windows. Takes ~20 s to build the first time, then it is cached.
- ``ETTh1``/``ETTh2`` (hourly) and ``ETTm1``/``ETTm2`` (15 min): 12/4/4-month chronological borders as in
  thuml's ``Dataset_ETT_hour`` / ``Dataset_ETT_minute``: train [0, 8640), val [8640 - L, 11520), test
  [11520 - L, 14400) rows for ETTh, all four numbers x4 for ETTm (the rest of the file is unused).
- ``weather``, ``electricity``, ``traffic``, ``exchange_rate``, ``national_illness``: ``Dataset_Custom``
  borders, 70/10/20 chronological: n_train = int(0.7 T), n_test = int(0.2 T), n_val = T - n_train - n_test;
  train [0, n_train), val [n_train - L, n_train + n_val), test [T - n_test - L, T). Column order: the
  ``target`` column (``OT``) is moved last as in ``Dataset_Custom`` (irrelevant to iTransformer, which is
  permutation-equivariant in the variates).
- ``solar`` (Solar-Energy, ``solar_AL.txt``: 137 comma-separated columns, no header, no dates; thuml
  ``Dataset_Solar``): n_train = int(0.7 T), n_test = int(0.2 T), n_val = int(0.1 T); train [0, n_train),
  val [n_train - L, n_train + n_val), test [T - n_test - L, T).
- ``PEMS03``/``PEMS04``/``PEMS07``/``PEMS08`` (``PEMSxx.npz``, array ``data`` of shape T x N x C; channel 0 (flow)
  is used, thuml ``Dataset_PEMS``): train [0, int(0.6 T)), val [int(0.6 T), int(0.8 T)), test [int(0.8 T), T),
  without the L-row overlap of the other datasets; missing values are forward- then backward-filled within each
  split after scaling (the scaler ignores them); an infinite value, or a sensor with no value in a split, is an
  error naming the file, row and column. The other datasets have no gaps: a missing or non-finite value there (a
  damaged or truncated file) is such an error too.

The borders follow the file's length, and only the ETT files are checksummed, so the other standard files must
have their standard number of time steps (``DatasetSpec.num_steps``: weather 52696, electricity 26304, traffic
17544, exchange_rate 7588, national_illness 966, solar 52560, PEMS03/04/07/08 26208/16992/28224/17856); a file
of another length is an error, unless ``reduced_copy=true`` says it is a deliberately shortened copy (test
fixtures, smoke runs): then it is read, its borders follow its length, and a warning is logged.

The scaler (per-variate mean / std, numpy std with ddof=0 as sklearn's StandardScaler) is fitted on the train
rows only and applied to the whole series; losses and metrics are in these z-scored units (card: "Report
metrics on z-scored data"). Windows: x = rows [s, s + L), y = rows [s + L, s + L + S), stride 1 (offline
default: eval stride 4), every window is evaluated (no ``drop_last`` on val/test; the thuml loaders drop the
last incomplete test batch, which slightly changes their reported numbers).

Optional timestamp covariates (``time_features=true``): thuml's ``timeF`` encoding for ``freq='h'``
(HourOfDay, DayOfWeek, DayOfMonth, DayOfYear, each scaled to [-0.5, 0.5]; ``freq='t'`` adds MinuteOfHour
first), returned as ``x_mark`` (B x L x 4); iTransformer turns them into extra tokens.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.resumable import CheckpointedShuffle, ResumableDataLoader
from datamodules.samplers import eval_sampler
from launch.errors import UserError, check_choice, check_min, one_line
from lit_models.common.checks import check_option_kinds

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "ForecastingDataModule",
    "WindowDataset",
    "generate_leader_follower",
    "generate_lorenz96",
    "read_csv",
    "read_pems_npz",
    "read_solar_txt",
    "split_borders",
    "time_features",
]

ETT_BASE = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small"


@dataclass(frozen=True)
class DatasetSpec:
    file: str
    split: str  # "ett_hour" | "ett_minute" | "ratio" | "solar" | "pems" | "offline"
    url: str | None  # None: no pinned (checksummed) URL, only through data_dir or url= (see the note below DATASETS)
    num_variates: int | None  # expected, checked when set
    target: str = "OT"
    fmt: str = "csv"  # "csv" (date, v1, ...) | "solar_txt" (no header, no dates) | "pems_npz" (npz "data" T x N x C)
    generated: bool = False  # written offline by a generator (OFFLINE_DEFAULTS) instead of downloaded
    sha256: str | None = None  # of the file at `url`, verified on download and on every later use of the cache
    num_steps: int | None = None  # time steps (rows) of the standard file, checked by check_num_steps when set


# name -> spec. URLs without checksum: trust on first use (download.fetch records the sha256 in a sidecar).
# ETT sha256: the files at these raw-GitHub addresses as recorded in the tsdm package's ETT loader (the same four
# digests across its releases; not re-downloaded here, the machine has no route to GitHub).
# The Weather/ECL/Traffic/Exchange/ILI/Solar/PEMS files come from the thuml dataset bundle. The Time-Series-Library
# README links it on Google Drive, Baidu Drive and an official Hugging Face mirror (huggingface.co/datasets/thuml/
# Time-Series-Library); public download scripts fetch single files from .../resolve/main/<folder>/<file> (e.g.
# weather/weather.csv, electricity/electricity.csv, illness/national_illness.csv). None of those files was
# downloaded here (no route from this machine), so the table pins no URL or checksum for them: pass
# data.data_dir=<folder with the file>, or data.url=<that address> (trust on first use).
# num_steps (no checksum guards these files' length): weather, electricity, traffic, exchange_rate and solar
# reproduce the (train, val, test) sample counts of the iTransformer paper's dataset table (Table 4) through the
# borders below (L = 96; solar 52560 = 365 days of 10-minute steps, the table also allows 52561);
# national_illness the TimesNet table's (617, 74, 170) (L = 36, S = 24); PEMS03/04/07/08 the published
# ASTGNN/STSGCN array shapes, 91/59/98/62 days of 5-minute steps (the iTransformer table's PEMS counts do not pin
# the length: their offset from the split sizes differs between datasets and splits).
DATASETS: dict[str, DatasetSpec] = {
    "leader_follower": DatasetSpec("leader_follower.csv", "offline", None, 8, generated=True),
    "lorenz96": DatasetSpec("lorenz96.csv", "ratio", None, None, generated=True),  # N = offline.num_variates
    "ETTh1": DatasetSpec("ETTh1.csv", "ett_hour", f"{ETT_BASE}/ETTh1.csv", 7,
                         sha256="f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"),
    "ETTh2": DatasetSpec("ETTh2.csv", "ett_hour", f"{ETT_BASE}/ETTh2.csv", 7,
                         sha256="a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b"),
    "ETTm1": DatasetSpec("ETTm1.csv", "ett_minute", f"{ETT_BASE}/ETTm1.csv", 7,
                         sha256="6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e"),
    "ETTm2": DatasetSpec("ETTm2.csv", "ett_minute", f"{ETT_BASE}/ETTm2.csv", 7,
                         sha256="db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd"),
    "weather": DatasetSpec("weather.csv", "ratio", None, 21, num_steps=52696),
    "electricity": DatasetSpec("electricity.csv", "ratio", None, 321, num_steps=26304),
    "traffic": DatasetSpec("traffic.csv", "ratio", None, 862, num_steps=17544),
    "exchange_rate": DatasetSpec("exchange_rate.csv", "ratio", None, 8, num_steps=7588),
    "national_illness": DatasetSpec("national_illness.csv", "ratio", None, 7, num_steps=966),
    "solar": DatasetSpec("solar_AL.txt", "solar", None, 137, fmt="solar_txt", num_steps=52560),
    "PEMS03": DatasetSpec("PEMS03.npz", "pems", None, 358, fmt="pems_npz", num_steps=26208),
    "PEMS04": DatasetSpec("PEMS04.npz", "pems", None, 307, fmt="pems_npz", num_steps=16992),
    "PEMS07": DatasetSpec("PEMS07.npz", "pems", None, 883, fmt="pems_npz", num_steps=28224),
    "PEMS08": DatasetSpec("PEMS08.npz", "pems", None, 170, fmt="pems_npz", num_steps=17856),
}

LEADER_FOLLOWER_DEFAULTS: dict[str, Any] = {
    "length": 8000,  # T
    "num_leaders": 4,  # N = 2 * num_leaders
    "lag": 24,  # f_k(t) = l_k(t - lag)
    "phi": 0.8,  # AR(1) coefficient
    "sigma": 0.6,  # innovation scale
    "train_end": 6000,  # train windows in t < train_end, test windows in t >= train_end
    "eval_stride": 4,
    "seed": 0,
}

LORENZ96_DEFAULTS: dict[str, Any] = {
    "length": 8000,  # T rows kept
    "num_variates": 30,  # N (dysts sets the dimension by the initial condition's length)
    "forcing": 20.0,  # dysts' parameter f (Lorenz's classic value: 8)
    "pts_per_period": 100,  # dysts resampling: dt = period / pts_per_period (period 2.1969)
    "burn_in": 500,  # leading samples dropped (transient from the initial condition)
    "method": "RK45",
    "rtol": 1e-9,
    "atol": 1e-9,
    "seed": 0,  # initial condition f + N(0, 1) from numpy default_rng(seed)
}

# generated dataset name -> its parameters (the datamodule's ``offline`` dict overrides them)
OFFLINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "leader_follower": LEADER_FOLLOWER_DEFAULTS,
    "lorenz96": LORENZ96_DEFAULTS,
}


# --------------------------------------------------------------------------------------------------
# reading and splitting


def read_csv(path: Path, target: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(values T x N float32, dates as datetime64[s] (T,), variate names) from a ``date, v1, ...`` CSV.

    With ``target`` present among the columns it is moved last (``Dataset_Custom``).
    """
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {one_line(e, 200)}") from None
    if "date" not in df.columns:
        raise UserError(f"{path}: expected a 'date' column followed by the variates, got {list(df.columns)[:8]}")
    cols = [c for c in df.columns if c != "date"]
    if target is not None and target in cols:
        cols = [c for c in cols if c != target] + [target]
    if not cols:
        raise UserError(f"{path}: no variate columns besides 'date'")
    try:
        values = df[cols].to_numpy(dtype=np.float32)
    except ValueError as e:
        raise UserError(f"{path}: non-numeric variate values ({one_line(e, 120)})") from None
    try:
        dates, why = pd.to_datetime(df["date"]).to_numpy().astype("datetime64[s]"), None
    except (ValueError, TypeError, OverflowError) as e:
        dates, why = None, one_line(e, 160)
    if dates is None or np.isnat(dates).any():  # name the first row without a readable date
        try:
            bad = np.flatnonzero(pd.to_datetime(df["date"], errors="coerce").isna().to_numpy())
        except (ValueError, TypeError, OverflowError):
            bad = np.zeros(0, dtype=int)
        if bad.size:
            row = int(bad[0])
            raise UserError(f"{path}: data row {row + 1} (after the header) has no readable date: "
                            f"{one_line(repr(df['date'].iloc[row]), 60)}")
        raise UserError(f"{path}: unreadable 'date' column ({why})")
    return values, dates, cols


def check_finite(values: np.ndarray, path: Path, names: list[str], dates: np.ndarray | None,
                 gaps: bool = False) -> None:
    """A one-line UserError naming the file, the first data row (and its date) and the column of a missing (NaN)
    or infinite value; with ``gaps`` (PEMS) of an infinite value only. Only PEMS gaps are NaN and filled (thuml
    ``Dataset_PEMS``, see ``check_pems_gaps``); the other official datasets (``Dataset_ETT_*``,
    ``Dataset_Custom``, ``Dataset_Solar``) are complete, so a gap there is a damaged or truncated file."""
    bad = np.isinf(values) if gaps else ~np.isfinite(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        when = f" ({np.datetime_as_string(dates[row], unit='s').replace('T', ' ')})" if dates is not None else ""
        what, rule = ("infinite", "PEMS gaps must be NaN") if gaps else ("missing or non-finite",
                                                                          "only PEMS gaps are filled")
        raise UserError(f"{path}: {what} value in data row {row + 1}{when}, column {names[col]!r} "
                        f"({int(bad.sum())} in all); {rule}: repair or download the file again")


def check_num_steps(values: np.ndarray, path: Path, name: str, num_steps: int | None,
                    reduced_copy: bool = False) -> None:
    """A one-line UserError when the file of a standard dataset has another number of time steps than the
    standard file (``DatasetSpec.num_steps``): the 70/10/20 and 60/20/20 borders follow the length, so a file cut
    at a line boundary would silently shift them. With ``reduced_copy`` (a deliberately shortened copy: test
    fixtures, smoke runs) any length is read, with a logged warning."""
    found = len(values)
    if num_steps is None or found == num_steps:
        return
    if reduced_copy:
        log.warning("%s: %d time steps, the standard %s file has %d: read as a reduced copy (data.reduced_copy=true; "
                    "split borders follow its length)", path, found, name, num_steps)
        return
    raise UserError(f"{path}: expected {num_steps} time steps (rows) for {name}, found {found}: a truncated or "
                    "otherwise altered file, download it again (for a deliberately shortened copy set "
                    "data.reduced_copy=true)")


def check_pems_gaps(values: np.ndarray, path: Path, borders: list[tuple[int, int]]) -> None:
    """PEMS gaps are NaN and get filled within each split (``Dataset_PEMS``; infinite values are refused by
    ``check_finite``); a one-line UserError naming the file, rows and column of a sensor with no value at all
    within a split (it would stay NaN after the forward / backward fill)."""
    for split, (a, b) in zip(("train", "val", "test"), borders):
        empty = np.flatnonzero(np.isnan(values[a:b]).all(axis=0))
        if empty.size:
            raise UserError(f"{path}: sensor column {int(empty[0])} has no value in the {split} split (data rows "
                            f"{a + 1}-{b}; {empty.size} column(s) in all), so its gaps cannot be filled: repair "
                            "or download the file again")


def read_solar_txt(path: Path) -> tuple[np.ndarray, None, list[str]]:
    """(values T x N float32, no dates, column numbers) from Solar-Energy's ``solar_AL.txt`` (comma-separated,
    no header)."""
    try:
        values = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2).astype(np.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {one_line(e, 200)}") from None
    return values, None, [str(i) for i in range(values.shape[1])]


def read_pems_npz(path: Path) -> tuple[np.ndarray, None, list[str]]:
    """(values T x N float32 = data[:, :, 0] (traffic flow), no dates, sensor numbers) from a ``PEMSxx.npz``.

    A damaged file (truncated or empty archive, a bare ``.npy`` array under the ``.npz`` name, a non-numeric
    ``data`` array) is a one-line UserError naming the file."""
    import zipfile
    import zlib

    expected = "expected an npz with a numeric array 'data' of shape T x N x C"
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"cannot read {path} ({expected}): it is a bare .npy array, not an npz archive")
        with loaded as f:
            data = np.asarray(f["data"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"cannot read {path} ({expected}): {type(e).__name__}: {one_line(e, 160)}") from None
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise UserError(f"cannot read {path} ({expected}): 'data' has dtype {data.dtype}")
    if data.ndim == 3:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise UserError(f"{path}: 'data' must be T x N x C or T x N, got shape {data.shape}")
    values = data.astype(np.float32)
    return values, None, [str(i) for i in range(values.shape[1])]


def split_borders(split: str, length: int, seq_len: int, train_end: int | None = None
                  ) -> list[tuple[int, int]]:
    """Row ranges [begin, end) of train / val / test; val and test begin L rows early (their first lookback)."""
    if split in ("ett_hour", "ett_minute"):
        k = 1 if split == "ett_hour" else 4
        a, b, c = 12 * 30 * 24 * k, (12 + 4) * 30 * 24 * k, (12 + 8) * 30 * 24 * k
        if length < c:
            raise UserError(f"ETT split needs at least {c} rows, the file has {length}")
        return [(0, a), (a - seq_len, b), (b - seq_len, c)]
    if split == "ratio":
        n_train, n_test = int(length * 0.7), int(length * 0.2)
        n_val = length - n_train - n_test
        return [(0, n_train), (n_train - seq_len, n_train + n_val), (length - n_test - seq_len, length)]
    if split == "solar":
        n_train, n_test, n_val = int(length * 0.7), int(length * 0.2), int(length * 0.1)
        return [(0, n_train), (n_train - seq_len, n_train + n_val), (length - n_test - seq_len, length)]
    if split == "pems":
        a, b = int(length * 0.6), int(length * 0.8)
        return [(0, a), (a, b), (b, length)]
    if split == "offline":
        end = int(train_end)
        return [(0, end), (end, length), (end, length)]
    raise ValueError(f"unknown split {split!r}")


def time_features(dates: np.ndarray, freq: str = "h") -> np.ndarray:
    """thuml ``timeF`` covariates (T x F, each in [-0.5, 0.5]): [MinuteOfHour (freq 't'),] HourOfDay,
    DayOfWeek, DayOfMonth, DayOfYear."""
    import pandas as pd

    idx = pd.DatetimeIndex(dates)
    feats = [idx.hour / 23.0 - 0.5, idx.dayofweek / 6.0 - 0.5, (idx.day - 1) / 30.0 - 0.5,
             (idx.dayofyear - 1) / 365.0 - 0.5]
    if freq in ("t", "min"):
        feats = [idx.minute / 59.0 - 0.5, *feats]
    elif freq != "h":
        raise UserError(f"data.freq must be 'h' or 't', got {freq!r}")
    return np.stack([np.asarray(f, dtype=np.float32) for f in feats], axis=1)


def generate_leader_follower(length: int = 8000, num_leaders: int = 4, lag: int = 24, phi: float = 0.8,
                             sigma: float = 0.6, seed: int = 0, **_: Any) -> tuple[np.ndarray, list[str]]:
    """(T x 2K float32, names): K AR(1) leaders, then K followers f_k(t) = l_k(t - lag) (card `itransformer`)."""
    rng = np.random.default_rng(seed)
    total = length + lag  # burn the lag so every follower value is a real leader value
    eps = rng.standard_normal((total, num_leaders))
    lead = np.zeros((total, num_leaders))
    lead[0] = sigma * eps[0] / math.sqrt(1.0 - phi**2)  # stationary start
    for t in range(1, total):
        lead[t] = phi * lead[t - 1] + sigma * eps[t]
    leaders, followers = lead[lag:], lead[:-lag] if lag > 0 else lead
    values = np.concatenate([leaders, followers], axis=1).astype(np.float32)
    names = [f"leader_{k}" for k in range(num_leaders)] + [f"follower_{k}" for k in range(num_leaders)]
    return values, names


def generate_lorenz96(length: int = 8000, num_variates: int = 30, forcing: float = 20.0,
                      pts_per_period: int = 100, burn_in: int = 500, method: str = "RK45", rtol: float = 1e-9,
                      atol: float = 1e-9, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(T x N float32, names x_0..x_{N-1}): dysts' Lorenz-96 flow dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + f
    with N variates, started at f + N(0, 1) (seed), resampled by dysts, the first ``burn_in`` samples dropped."""
    if int(num_variates) < 4:
        raise UserError(f"data.offline.num_variates: Lorenz-96 needs at least 4 variates, got {num_variates}")
    if int(length) < 1 or int(pts_per_period) < 1 or int(burn_in) < 0:
        raise UserError("data.offline: need length >= 1, pts_per_period >= 1 and burn_in >= 0 for lorenz96")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dysts import flows

        system = flows.Lorenz96(parameters={"f": float(forcing)})
        system.ic = float(forcing) + np.random.default_rng(int(seed)).standard_normal(int(num_variates))
        x = system.make_trajectory(int(length) + int(burn_in), pts_per_period=int(pts_per_period),
                                   resample=True, method=method, rtol=float(rtol), atol=float(atol))
    if x is None or not np.all(np.isfinite(x)):
        raise UserError(f"data: dysts Lorenz96 (N={num_variates}, f={forcing}) failed to integrate with {method}")
    values = np.asarray(x, dtype=np.float64)[int(burn_in):].astype(np.float32)
    return values, [f"x_{i}" for i in range(int(num_variates))]


GENERATORS = {"leader_follower": generate_leader_follower, "lorenz96": generate_lorenz96}


def write_csv(path: Path, values: np.ndarray, names: list[str], start: str = "2016-07-01 00:00:00",
              freq: str = "h") -> None:
    """Write the standard CSV atomically (temporary name, then rename)."""
    import os
    import tempfile

    import pandas as pd

    from datamodules.download import _shareable

    dates = pd.date_range(start, periods=len(values), freq=freq.replace("t", "min"))
    df = pd.DataFrame(values, columns=names)
    df.insert(0, "date", dates.strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        df.to_csv(tmp, index=False, float_format="%.7g")
        _shareable(Path(tmp))  # as a plain write (mkstemp: 0600), for a cache shared by a group of users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def offline_params(name: str, overrides: dict | None) -> dict[str, Any]:
    """The generated dataset ``name``'s parameters (``OFFLINE_DEFAULTS``) with ``overrides``; {} for real data."""
    if name not in OFFLINE_DEFAULTS:
        return {}
    defaults = OFFLINE_DEFAULTS[name]
    if overrides is not None and not isinstance(overrides, Mapping):
        raise UserError(f"data.offline takes a mapping of the generated data's parameters ({', '.join(defaults)}) or "
                        f"null, got {overrides!r}")
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise UserError(f"data.offline: unknown key(s) {', '.join(unknown)} for {name}; known: {', '.join(defaults)}")
    params = {**defaults, **dict(overrides or {})}
    check_option_kinds("data.offline", params, defaults)  # text, NaN or 2.5 for a length were tracebacks
    check_min("data.offline", 1, **{key: params.get(key) for key in ("length", "num_leaders", "eval_stride")})
    check_min("data.offline", 0, **{key: params.get(key) for key in ("lag", "sigma", "seed")})
    if "train_end" in params and not 0 < params["train_end"] < params["length"]:
        raise UserError(f"data.offline.train_end splits the series: it must lie in (0, length = {params['length']}), "
                        f"got {params['train_end']}")
    if "phi" in params and not abs(params["phi"]) < 1:
        raise UserError(f"data.offline.phi is the leaders' AR(1) coefficient: |phi| must be < 1, got {params['phi']}")
    return params


# leader_follower's cache-file tag (kept as before: existing caches stay valid); other generators tag every parameter
_TAG_KEYS = {"leader_follower": ("length", "num_leaders", "lag", "phi", "sigma", "seed")}


def generated_csv(name: str, params: dict[str, Any], folder: Path) -> Path:
    """Path of the generated dataset's CSV in ``folder``, named by its parameters; written on first use."""
    keys = _TAG_KEYS.get(name, tuple(params))
    tag = "_".join(str(params[k]) for k in keys)
    path = Path(folder) / f"{name}_{tag}.csv"
    if not path.is_file():
        values, names = GENERATORS[name](**params)
        write_csv(path, values, names)
    return path


# --------------------------------------------------------------------------------------------------
# windows


class WindowDataset(Dataset):
    """Sliding windows over a scaled (T x N) series: x = [s, s+L), y = [s+L, s+L+S), s = 0, stride, ..."""

    def __init__(self, data: np.ndarray, seq_len: int, pred_len: int, stride: int = 1,
                 marks: np.ndarray | None = None) -> None:
        self.data = torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32)
        self.marks = None if marks is None else torch.as_tensor(np.ascontiguousarray(marks), dtype=torch.float32)
        self.seq_len, self.pred_len, self.stride = int(seq_len), int(pred_len), int(stride)
        n = len(self.data) - self.seq_len - self.pred_len + 1
        self.starts = torch.arange(0, max(n, 0), self.stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(self.starts[i])
        m = s + self.seq_len
        item = {"x": self.data[s:m], "y": self.data[m:m + self.pred_len]}
        if self.marks is not None:
            item["x_mark"] = self.marks[s:m]
        return item


# --------------------------------------------------------------------------------------------------
# datamodule


class ForecastingDataModule(CheckpointedShuffle, L.LightningDataModule):
    """Lookback/horizon windows of a multivariate CSV series, z-scored with train-split statistics.

    Args:
        name: a key of ``DATASETS``; ``leader_follower`` (default) and ``lorenz96`` are generated, no network.
        seq_len: lookback L. pred_len: horizon S.
        batch_size / eval_batch_size: windows per train / val-test batch (train is shuffled, drop_last as thuml).
        data_dir: folder holding the dataset file (the bundle's file names, e.g. ``ETTh1.csv``, ``solar_AL.txt``,
            ``PEMS08.npz``) to read instead
            of downloading; for the generated datasets the CSV is written there.
        url: download URL overriding the table (no checksum: trust on first use).
        time_features: also return thuml ``timeF`` covariates as ``x_mark``; ``freq``: ``h`` or ``t``.
        eval_stride: stride of val/test windows (null: 1, 4 for ``leader_follower``).
        scale: z-score with train statistics (always on in the papers).
        offline: overrides of the generated dataset's parameters (``OFFLINE_DEFAULTS[name]``:
            ``LEADER_FOLLOWER_DEFAULTS`` or ``LORENZ96_DEFAULTS``); ignored for real data.
        reduced_copy: read a standard file (``DatasetSpec.num_steps``) of another length, with a warning (a
            deliberately shortened copy: test fixtures, smoke runs); without it that length is an error.
    """

    def __init__(
        self,
        name: str = "leader_follower",
        seq_len: int = 96,
        pred_len: int = 96,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        data_dir: str | None = None,
        url: str | None = None,
        time_features: bool = False,
        freq: str = "h",
        eval_stride: int | None = None,
        scale: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        offline: dict | None = None,
        reduced_copy: bool = False,
    ) -> None:
        super().__init__()
        check_choice("data.name", "dataset", name, DATASETS)
        if int(seq_len) < 1 or int(pred_len) < 1 or int(batch_size) < 1 or int(eval_batch_size) < 1:
            raise UserError("data: seq_len, pred_len, batch_size and eval_batch_size must be >= 1")
        self.name, self.spec = name, DATASETS[name]
        self.seq_len, self.pred_len = int(seq_len), int(pred_len)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.url = url
        self.use_time_features, self.freq = bool(time_features), freq
        self.offline = offline_params(name, offline)
        check_min("data", 1, eval_stride=eval_stride)  # null: the dataset's default
        self.eval_stride = int(eval_stride) if eval_stride is not None else int(self.offline.get("eval_stride", 1))
        self.scale, self.num_workers, self.seed = bool(scale), int(num_workers), int(seed)
        self.reduced_copy = bool(reduced_copy)
        self._loaded = False

    # ---- where the file comes from ------------------------------------------------------------

    def csv_path(self) -> Path:
        if self.spec.generated:
            from datamodules.download import cache_dir

            return generated_csv(self.name, self.offline, self.data_dir or cache_dir() / "forecasting")
        if self.data_dir is not None:
            path = self.data_dir / self.spec.file
            if not path.is_file():
                raise UserError(f"data.data_dir: {path} does not exist")
            return path
        url = self.url or self.spec.url
        if url is None:
            raise UserError(f"dataset {self.name!r} has no pinned download link: get {self.spec.file} from the "
                            "thuml Time-Series-Library bundle (Google Drive, or the Hugging Face mirror "
                            "huggingface.co/datasets/thuml/Time-Series-Library) and pass data.data_dir=<folder>, "
                            "or data.url=<url>")
        from datamodules.download import DownloadError, fetch

        try:
            # the table's checksum belongs to the table's URL; a user's data.url is trusted on first use
            sha256 = self.spec.sha256 if url == self.spec.url else None
            return fetch(url, sha256=sha256, filename=self.spec.file, subdir="forecasting")
        except DownloadError as e:
            raise UserError(str(e)) from None

    def prepare_data(self) -> None:
        self.csv_path()

    # ---- splits -------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        path = self.csv_path()
        if self.spec.fmt == "solar_txt":
            values, dates, names = read_solar_txt(path)
        elif self.spec.fmt == "pems_npz":
            values, dates, names = read_pems_npz(path)
        else:
            values, dates, names = read_csv(path, target=None if self.spec.generated else self.spec.target)
        if self.use_time_features and dates is None:
            raise UserError(f"{self.name}: the file has no timestamps; set data.time_features=false")
        expected = self.offline.get("num_variates", self.spec.num_variates)
        if expected is not None and values.shape[1] != expected:
            raise UserError(f"{self.name}: expected {expected} variates, the file has {values.shape[1]}")
        check_finite(values, path, names, dates, gaps=self.spec.fmt == "pems_npz")
        check_num_steps(values, path, self.name, self.spec.num_steps, self.reduced_copy)
        self.borders = split_borders(self.spec.split, len(values), self.seq_len, self.offline.get("train_end"))
        if self.spec.fmt == "pems_npz":
            check_pems_gaps(values, path, self.borders)
        b0, b1 = self.borders[0]
        train = values[b0:b1]
        # PEMS may have gaps (the other formats were checked above): the scaler ignores them (as sklearn's)
        missing = self.spec.fmt == "pems_npz" and bool(np.isnan(values).any())
        self.mean = (np.nanmean if missing else np.mean)(train, axis=0).astype(np.float32)
        self.std = (np.nanstd if missing else np.std)(train, axis=0)
        self.std = np.where(self.std > 0, self.std, 1.0).astype(np.float32)
        data = (values - self.mean) / self.std if self.scale else values
        marks = time_features(dates, self.freq) if self.use_time_features else None
        self.variate_names = names
        self.num_variates = len(names)
        self.num_time_features = 0 if marks is None else marks.shape[1]
        # groups of variates with their own metrics (card: follower MSE); empty for real data
        groups = {}
        for prefix in ("leader", "follower"):
            idx = [i for i, n in enumerate(names) if n.startswith(prefix + "_")]
            if idx:
                groups[prefix] = idx
        self.variate_groups = groups
        self.datasets = {}
        for split, (a, b), stride in zip(("train", "val", "test"), self.borders,
                                         (1, self.eval_stride, self.eval_stride)):
            part = data[a:b]
            if missing:  # Dataset_PEMS: forward- then backward-fill within the split, after scaling
                import pandas as pd

                part = pd.DataFrame(part).ffill().bfill().to_numpy(np.float32)
            ds = WindowDataset(part, self.seq_len, self.pred_len, stride,
                               None if marks is None else marks[a:b])
            if len(ds) == 0:
                raise UserError(f"{self.name}: the {split} split ({b - a} rows) is shorter than "
                                f"seq_len + pred_len = {self.seq_len + self.pred_len}")
            self.datasets[split] = ds
        self._loaded = True

    def inverse_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Back to raw units (last dim = variates)."""
        return x * torch.as_tensor(self.std, device=x.device) + torch.as_tensor(self.mean, device=x.device)

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        kind = {"generator": self.shuffle_generator(self.seed), "datamodule": self} if train else \
            {"sampler": eval_sampler(dataset)}
        # workers restart each epoch (persistent ones would break exact resume: datamodules.resumable)
        return (ResumableDataLoader if train else DataLoader)(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
            drop_last=train, num_workers=self.num_workers, **kind)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def describe(self) -> dict[str, Any]:
        self.setup()
        return {"name": self.name, "num_variates": self.num_variates, "seq_len": self.seq_len,
                "pred_len": self.pred_len, "borders": self.borders,
                **{f"num_{k}_windows": len(v) for k, v in self.datasets.items()},
                "variate_groups": self.variate_groups}
