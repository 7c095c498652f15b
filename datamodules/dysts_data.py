"""The dysts benchmark's precomputed trajectories (paper card `dysts_benchmark`, arXiv 2110.05266, Sec. 3-4).

The paper's forecasting table is computed on fixed, published trajectories (williamgilpin/dysts_data, the
``dysts_data`` package; the older copies sit in williamgilpin/dysts under ``dysts/data/``):

    {split}_{univariate|multivariate}__pts_per_period_{100|15}__periods_12[_noise].json[.gz]

``split`` is ``train`` (one initial condition, used by the paper to tune hyperparameters) or ``test`` (another
initial condition, used for the reported scores); ``pts_per_period`` 100 is the "fine" and 15 the "coarse"
granularity; 12 dominant periods, so 1,200 / 180 points per system; ``_noise`` adds stochastic forcing. The JSON
maps each system name to ``{"dt": float, "time": [T floats], "values": [T floats]}`` (multivariate files: ``values``
is T lists of D floats). This layout was read from the stored files ``dysts/data/train_univariate__pts_per_period_15
__periods_12.json`` and dysts' ``TimeSeriesDataset``; the current files are gzip-compressed (``.json.gz``).

Split (dysts ``load_dataset`` / ``benchmarks/compute_benchmarks.py``): the first ``int(5/6 * T)`` points of a
series are the history a forecaster may fit, the remaining ``T/6`` points (2 periods: 200 fine / 30 coarse) are
forecast in one go from the end of the history.

``DystsPrecomputedDataModule`` serves one system as windows of ``lags`` -> ``horizon``:

- train: every window wholly inside the history of the ``test`` file's series (stride 1, shuffled by ``seed``), with
  ``train_horizon`` targets (default ``horizon``; 1 for the official one-step models); each epoch has every window,
  the last batch short (``drop_last=False``, as the training loader of darts' fit in the official benchmark);
- validation: the paper's tuning task on the ``train`` file's series (other initial condition): the window whose
  targets are its last ``horizon`` points;
- test: the paper's scored forecast, the window whose inputs end at the split point of the ``test`` series and
  whose targets are its last ``horizon`` points (``horizon`` defaults to the whole held-out sixth).

Files come through ``datamodules.download.fetch`` (no checksum is published upstream: trust on first use, the
sha256 of the first download is recorded beside the file) into ``$PAPERZOO_DATA/dysts_data``, or from a local
``data_dir``. ``base_url`` points elsewhere, e.g. a mirror of the HuggingFace copy (dataset ``williamgilpin/dysts``)
laid out with the same file names. A missing or corrupt file and an unknown system are one-line ``UserError``s.
"""
from __future__ import annotations

import difflib
import gzip
import json
import logging
import math
import warnings
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import TensorDataset

from datamodules.download import fetch
from datamodules.dysts_windows import WindowLoaders, sliding_windows
from launch.errors import UserError, check_min

__all__ = ["BASE_URL", "GRANULARITY", "PERIODS", "DystsPrecomputedDataModule", "dataset_filename", "forecast_split",
           "load_precomputed", "locate_file", "system_series"]

BASE_URL = "https://raw.githubusercontent.com/williamgilpin/dysts_data/main/dysts_data/data"
# the official per-system hyperparameters of compute_benchmarks.py (find_hyperparameters.py, tuned on the train file)
HYPERPARAMETERS_URL = "https://raw.githubusercontent.com/williamgilpin/dysts/master/benchmarks/hyperparameters"
GRANULARITY = {"fine": 100, "coarse": 15}  # points per dominant period
PERIODS = 12
SPLIT_FRACTION = 5 / 6                        # dysts: history = first 5/6, forecast = last 1/6
SUBDIR = "dysts_data"
log = logging.getLogger(__name__)


def dataset_filename(split: str, granularity: str, noise: bool = False, univariate: bool = True) -> str:
    """The published file name, e.g. ``test_univariate__pts_per_period_100__periods_12.json.gz``."""
    if split not in ("train", "test"):
        raise UserError(f"data: split must be 'train' or 'test', got {split!r}")
    if granularity not in GRANULARITY:
        raise UserError(f"data: granularity must be one of {sorted(GRANULARITY)}, got {granularity!r}")
    kind = "univariate" if univariate else "multivariate"
    suffix = "_noise" if noise else ""
    return f"{split}_{kind}__pts_per_period_{GRANULARITY[granularity]}__periods_{PERIODS}{suffix}.json.gz"


def locate_file(filename: str, data_dir: str | None = None, base_url: str = BASE_URL) -> Path:
    """``data_dir/filename`` (also accepted without ``.gz``) when ``data_dir`` is set, else a verified download."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
        raise UserError(f"data: {filename} not found in {folder} (download it from {BASE_URL})")
    return fetch(f"{base_url.rstrip('/')}/{filename}", subdir=SUBDIR)


def load_precomputed(path: str | Path) -> dict[str, dict]:
    """Parse one dataset file (plain or gzip JSON) into ``{system: {"dt", "values": ndarray (T,) or (T, D)}}``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        data = json.loads(text)
    except FileNotFoundError:
        raise UserError(f"data: {path} not found") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"data: {path.name} is corrupt ({type(err).__name__}); delete it to download again") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"data: {path.name} is not a dysts dataset (expected an object of systems)")
    return {name: _parse_entry(path.name, name, entry) for name, entry in data.items()}


def _parse_entry(filename: str, name: str, entry) -> dict:
    if not isinstance(entry, dict) or "values" not in entry:
        raise UserError(f"data: {filename}: system {name!r} has no 'values'")
    try:
        values = np.asarray(entry["values"], dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"data: {filename}: system {name!r} has non-numeric or ragged 'values'") from None
    if values.ndim not in (1, 2) or len(values) < 2 or not np.isfinite(values).all():
        raise UserError(f"data: {filename}: system {name!r} 'values' must be a finite (T,) or (T, D) array")
    dt = entry.get("dt", float("nan"))  # absent: NaN, no Lyapunov time for this system
    if "dt" in entry and (isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt)
                          or dt <= 0):
        raise UserError(f"data: {filename}: system {name!r} has 'dt' {dt!r}, not a positive number")
    return {"dt": float(dt), "values": values}


def system_series(dataset: dict[str, dict], name: str, coordinate: int = 0) -> np.ndarray:
    """One coordinate of one system as float64 (T,); a univariate file has a single coordinate 0."""
    if name not in dataset:
        close = difflib.get_close_matches(name, list(dataset), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" ({len(dataset)} systems in the file)"
        raise UserError(f"data: unknown dysts system {name!r}{hint}")
    values = dataset[name]["values"]
    values = values[:, None] if values.ndim == 1 else values
    if not 0 <= coordinate < values.shape[1]:
        raise UserError(f"data: coordinate {coordinate} out of range for {name!r} ({values.shape[1]} dimensions)")
    return values[:, coordinate].copy()


def forecast_split(length: int) -> int:
    """Index of the first forecast point: ``int(5/6 * T)`` as in dysts (1000 of 1200, 150 of 180)."""
    return int(SPLIT_FRACTION * length)


def _final_window(series: np.ndarray, lags: int, horizon: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """The window whose inputs are the ``lags`` points before ``split`` and targets the ``horizon`` after it."""
    if split - lags < 0 or split + horizon > len(series):
        raise UserError(f"data: lags {lags} + horizon {horizon} do not fit around the split at {split} of a "
                        f"{len(series)}-point series")
    return series[None, split - lags:split], series[None, split:split + horizon]


def _lyapunov_per_step(name: str, dt: float) -> float | None:
    """lambda_max (dysts metadata) x the file's sampling step, or None for systems dysts does not know."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import dysts.flows
        system = getattr(dysts.flows, name, None)
        lyap = float(system().maximum_lyapunov_estimated) if system is not None else float("nan")
    except Exception:  # noqa: BLE001 - metadata is optional; VPT is just not logged without it
        return None
    return lyap * dt if np.isfinite(lyap * dt) else None


def hyperparameter_filename(granularity: str) -> str:
    """The official hyperparameter file compute_benchmarks.py reads for a granularity."""
    return f"hyperparameters_train_univariate__pts_per_period_{GRANULARITY[granularity]}__periods_{PERIODS}.json"


def official_hyperparameter_file(granularity: str, data_dir: str | None = None,
                                 url: str = HYPERPARAMETERS_URL) -> Path:
    """The official hyperparameter JSON of a granularity: `data_dir/<name>` when there, else downloaded from `url`."""
    name = hyperparameter_filename(granularity)
    if data_dir is not None and (Path(data_dir).expanduser() / name).is_file():
        return Path(data_dir).expanduser() / name
    return fetch(f"{url.rstrip('/')}/{name}", subdir=SUBDIR)


def official_input_lengths(path: str | Path) -> dict[str, int]:
    """System -> NBEATSModel input_chunk_length from the official hyperparameter JSON (systems without an entry are
    left out)."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"hyperparameters {path}: not a readable JSON file ({type(err).__name__})") from None
    if not isinstance(table, dict):
        raise UserError(f"hyperparameters {path}: expected an object of systems")
    out = {}
    for name, models in table.items():
        spec = models.get("NBEATSModel") if isinstance(models, dict) else None
        if isinstance(spec, dict) and "input_chunk_length" in spec:
            lags = spec["input_chunk_length"]
            if (isinstance(lags, bool) or not isinstance(lags, (int, float)) or not math.isfinite(lags)
                    or lags != int(lags) or lags < 1):
                raise UserError(f"hyperparameters {path}: {name}'s NBEATSModel input_chunk_length is {lags!r}, not a "
                                "whole number >= 1")
            out[name] = int(lags)
    return out


class DystsPrecomputedDataModule(WindowLoaders, L.LightningDataModule):
    """The paper's published benchmark trajectories of one system (Sec. 3 datasets, Sec. 4 forecasting split)."""

    def __init__(
        self,
        system: str = "Lorenz",
        granularity: str = "fine",     # fine: 100 points/period, coarse: 15
        noise: bool = False,           # the `_noise` files (stochastic forcing)
        measurement_noise: float = 0.0,  # official compute_benchmarks_noise_{fine,coarse}.py: the clean test series
                                       # + measurement_noise x std(series) x N(0, 1), scored against the noisy series
        univariate: bool = True,       # the univariate files (the paper's forecasting table)
        coordinate: int = 0,           # which coordinate of a multivariate file
        lags: int | None = None,       # input window; None: one dominant period (100 / 15 points)
        hyperparameters: str | None = None,  # official hyperparameter JSON: lags = the system's input_chunk_length;
                                       # "official": that file for this granularity, from data_dir or downloaded
        hyperparameters_url: str = HYPERPARAMETERS_URL,
        horizon: int | None = None,    # None: the whole held-out sixth (200 / 30 points), as in the paper
        train_horizon: int | None = None,  # targets per training window; None: horizon (1: a one-step model's)
        batch_size: int = 64,
        eval_batch_size: int = 256,
        data_dir: str | None = None,   # local folder with the files; None: download
        base_url: str = BASE_URL,
        seed: int = 0,
        drop_last: bool = False,       # False: every training window each epoch, the last batch short (darts' fit)
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        dataset_filename("test", granularity, noise, univariate)  # validates granularity early
        self.name = system
        self.lags = int(lags) if lags is not None else GRANULARITY[granularity]
        if hyperparameters is not None and hyperparameters != "official":  # the per-system N-BEATS input length
            self.lags = self._official_lags(hyperparameters)
        self.horizon = int(horizon) if horizon is not None else None
        check_min("data", 1, lags=self.lags, horizon=self.horizon, train_horizon=train_horizon)
        check_min("data", 0, measurement_noise=measurement_noise)
        self._loaded = False

    def _file(self, split: str) -> Path:
        h = self.hparams
        return locate_file(dataset_filename(split, h.granularity, h.noise, h.univariate), h.data_dir, h.base_url)

    def prepare_data(self) -> None:
        for split in ("train", "test"):
            self._file(split)
        if self.hparams.hyperparameters == "official":
            self._hyperparameter_file()

    def _hyperparameter_file(self) -> Path:
        h = self.hparams
        return official_hyperparameter_file(h.granularity, h.data_dir, h.hyperparameters_url)

    def _official_lags(self, path: str | Path) -> int:
        """The system's NBEATSModel input_chunk_length in the hyperparameter file, else one period (with a warning)."""
        system, period = self.hparams.system, GRANULARITY[self.hparams.granularity]
        lags = official_input_lengths(path).get(system)
        if lags is None:
            log.warning("data.hyperparameters: %s has no NBEATSModel input_chunk_length for %s: using one period "
                        "(%d points) as input length", Path(path).name, system, period)
        return period if lags is None else lags

    def _series(self, split: str) -> tuple[np.ndarray, float]:
        dataset = load_precomputed(self._file(split))
        return system_series(dataset, self.hparams.system, self.hparams.coordinate), dataset[self.hparams.system]["dt"]

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        if self.hparams.hyperparameters == "official":  # the system's official input length, one period without
            self.lags = self._official_lags(self._hyperparameter_file())
        test_series, dt = self._series("test")
        tune_series, _ = self._series("train")
        if self.hparams.measurement_noise:  # the noisy benchmark: the whole test series, history and scored future
            rng = np.random.default_rng([self.hparams.seed, 7])  # seeded here (the official script draws unseeded)
            test_series = test_series + self.hparams.measurement_noise * float(np.std(test_series)) * \
                rng.standard_normal(test_series.shape)
        split = forecast_split(len(test_series))
        if self.horizon is None:
            self.horizon = len(test_series) - split
        history = test_series[:split]
        self.series, self.split = test_series, split
        self.mean, self.std = float(history.mean()), float(history.std() or 1.0)
        self.lyapunov_per_step = _lyapunov_per_step(self.hparams.system, dt)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
        xtr, ytr = sliding_windows(history, self.lags, self.hparams.train_horizon or self.horizon, 1)
        xva, yva = _final_window(tune_series, self.lags, self.horizon, len(tune_series) - self.horizon)
        xte, yte = _final_window(test_series, self.lags, self.horizon, split)
        self.train_set = TensorDataset(as_t(xtr), as_t(ytr))
        self.val_set = TensorDataset(as_t(xva), as_t(yva))
        self.test_set = TensorDataset(as_t(xte), as_t(yte))
        self._loaded = True

