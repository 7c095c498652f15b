"""`zoo bench dysts_benchmark`: the chaos forecasting benchmark (arXiv 2110.05266) over many dysts systems.

Data (``dataset``):
- ``None`` (offline default): coordinate 0 of a timescale-aligned trajectory (3000 points, 50 per dominant period,
  RK45 at 1e-9, `datamodules.dysts_windows.load_series`), first 2000 points train, the rest test; test windows of
  30 lags -> 25 steps every 20 points.
- ``fine`` / ``coarse`` (+ ``_noise``): the paper's published test series (williamgilpin/dysts_data, 100 / 15 points
  per period, 12 periods, `datamodules.dysts_data`): the first 5/6 are the history, the last sixth (200 / 30 points)
  is forecast once from the last period (100 / 15 lags) of the history, as in the paper.

Forecasters: naive (last value), ridge AR(lags) (`ridge_ar30`, `ridge_ar100` or `ridge_ar15`; alpha 1e-3, recursive
one-step), and the framework's N-BEATS-lite (`lit_models.dynamics.dysts_benchmark.NBeatsLite`, direct, a short
plain-torch training on ``device``, cpu or cuda). Rows: one per
(system, forecaster) with the mean test sMAPE and NRMSE, the system's largest Lyapunov exponent from the dysts
metadata (`maximum_lyapunov_estimated`, in the system's time units) and the exponent per dominant period
(lambda * period, the chaos measure on the common resampled timescale); then one summary row per forecaster with
the Spearman rank correlation across systems between its sMAPE (and NRMSE) and each chaos measure. The table is
written as CSV and markdown to ``out_dir`` (``zoo bench dysts_benchmark --out DIR``; default ``runs/bench``).

Cost (wall-clock seconds, one reading each, not paired or repeated; on ``cuda`` synchronised before each clock read):
``data_seconds``, the system's data step (its trajectory or published series and its dysts metadata), once per system,
on the system's first row only; ``fit_seconds`` on each forecaster's row, its own training and forecast (data
normalisation and windowing included). Each column therefore sums to the run's cost. Each summary row adds
``fit_seconds_median`` / ``fit_seconds_total`` of its forecaster over the systems it ran on; the first summary row
also ``data_seconds_median`` / ``_total`` and ``system_seconds_median`` / ``_total`` (data + every forecaster of a
system) over every system of the table, a skipped one with the cost of its failed data step. Before the first timed
system (of each shard) one untimed warm-up runs the forecasters on a short series (a 200-point trajectory, or the first
system's published series), so that imports, dysts' metadata and torch's (CUDA's) first calls are not charged to the
first system; it changes no result (every forecaster seeds itself; the short trajectory is not the cached one).

Protocol (``--protocol``): ``direct`` (default) as above; ``official`` (needs ``--dataset``) runs the N-BEATS row as the
official benchmarks/compute_benchmarks.py: darts' NBEATSModel defaults (generic, 30 blocks of 4 x 256 ReLU layers,
expansion coefficients theta of dimension 5, Adam 1e-3, batch 32, 100 epochs; ``--quick``: 2 epochs of a 3-block lite
net) as a one-step model on raw values, trained on every window of the history with its next point, rolled forward over
the held-out sixth and scored on all but its last point; its input length per system is the file's ``NBEATSModel``
``input_chunk_length`` when ``--hyperparameters`` names the official hyperparameter JSON (``official``: that file,
downloaded like the data; williamgilpin/dysts
benchmarks/hyperparameters/hyperparameters_train_univariate__pts_per_period_{100,15}__periods_12.json), else one period.
Row name ``nbeats_official``.

Systems: ``--systems Lorenz,Rossler`` or ``--all-systems`` (every continuous flow of
``dysts.systems.get_attractor_list``, or with ``--dataset`` every system of the data file); default 26 systems
(3 with ``--quick``).

Sharding (SLURM job array or any scheduler): ``--shard i/n`` (or ``--shard slurm``: i = SLURM_ARRAY_TASK_ID,
n = SLURM_ARRAY_TASK_COUNT) runs every n-th system starting at i and writes only its per-system rows to
``dysts_runner[_<dataset>][_quick]_shard{i}of{n}.csv`` (array indices 0..n-1); ``--merge`` then reads the shard
files in ``--out``, checks that all n are there and writes the full table with the Spearman rows
(``dysts_runner[_<dataset>][_quick].csv`` / ``.md``). With sbatch::

    #!/bin/bash
    #SBATCH --array=0-15 --cpus-per-task=2 --gres=gpu:1 --time=02:00:00
    zoo bench dysts_benchmark --all-systems --dataset fine --device cuda --shard slurm --out runs/bench/dysts_fine

    # after the array: sbatch --dependency=afterok:<array job id> --wrap \
    #   "zoo bench dysts_benchmark --merge --dataset fine --out runs/bench/dysts_fine"

or from Python with submitit: ``executor.map_array(lambda i: dysts_runner.run(systems=..., shard=f"{i}/16",
out_dir=out), range(16))`` followed by ``dysts_runner.merge_shards(out)``.
"""
from __future__ import annotations

import csv
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import check_device, device_sync
from datamodules.dysts_data import official_input_lengths
from launch.errors import UserError

SUMMARY = ("Forecast sMAPE (%) of naive / ridge AR / N-BEATS-lite per dysts system (offline default: 25 steps = half "
           "a period; fine/coarse: the paper's last sixth), with the largest Lyapunov exponent (metadata) and "
           "lambda*period; 'spearman' rows: rank correlation across systems between sMAPE and chaos (paper: error "
           "grows with the largest Lyapunov exponent).")

QUICK_SYSTEMS = ["Rossler", "Chua", "Lorenz"]
SYSTEMS = ["Lorenz", "Rossler", "Chua", "Thomas", "Lorenz96", "HindmarshRose", "Aizawa", "AnishchenkoAstakhov",
           "Arneodo", "ArnoldBeltramiChildress", "Bouali2", "BurkeShaw", "CaTwoPlus", "ChenLee", "Colpitts",
           "Coullet", "DequanLi", "GenesioTesi", "Chen", "Dadras", "HyperCai", "HyperRossler", "SprottB", "SprottF",
           "Sakarya", "RabinovichFabrikant"]
DATASETS = ("fine", "coarse", "fine_noise", "coarse_noise")
LAGS, HORIZON, STRIDE, N_POINTS, TRAIN, PPP = 30, 25, 20, 3000, 2000, 50
STEM = "dysts_runner"


# ------------------------------------------------------------------------------------------------- systems
def _system(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dysts.flows as flows
    return getattr(flows, name)()


def all_systems() -> list[str]:
    """Every continuous dysts flow (the paper's 131 at publication; more in current dysts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dysts.systems import get_attractor_list
    return list(get_attractor_list("continuous"))


def parse_shard(shard: str | None, environ=os.environ) -> tuple[int, int] | None:
    """'i/n' -> (i, n); 'slurm' -> (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT); None -> None."""
    if shard is None:
        return None
    if shard == "slurm":
        if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
            raise UserError("--shard slurm needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (run it in a job array)")
        shard = f"{environ['SLURM_ARRAY_TASK_ID']}/{environ['SLURM_ARRAY_TASK_COUNT']}"
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        raise UserError(f"--shard must be 'i/n' (e.g. 0/8) or 'slurm', got {shard!r}") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {shard}: need 0 <= i < n")
    return index, count


def shard_systems(systems: list[str], index: int, count: int) -> list[str]:
    """Every count-th system starting at index: shards are disjoint and together cover all systems."""
    return systems[index::count]


def _resolve_systems(systems: list[str] | str | None, all_systems_flag: bool, quick: bool) -> list[str]:
    if all_systems_flag:
        return all_systems()
    if isinstance(systems, str):
        systems = [s.strip() for s in systems.split(",") if s.strip()]
    # a system named twice runs once (it was counted twice in the Spearman rows)
    return list(dict.fromkeys(systems)) if systems else list(QUICK_SYSTEMS if quick else SYSTEMS)


# ------------------------------------------------------------------------------------------------ forecasts
def _smape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(200.0 * np.mean(np.abs(pred - y) / np.maximum(np.abs(pred) + np.abs(y), 1e-8), -1)))


def _ridge_ar(train: np.ndarray, xte: np.ndarray, alpha: float = 1e-3, horizon: int = HORIZON) -> np.ndarray:
    """Fit a ridge AR(lags) one-step model on the train segment, forecast `horizon` steps recursively."""
    from sklearn.linear_model import Ridge

    from datamodules.dysts_windows import sliding_windows

    lags = xte.shape[1]
    mu, sd = train.mean(), train.std() or 1.0
    x, y = sliding_windows((train - mu) / sd, lags, 1, 1)
    model = Ridge(alpha=alpha).fit(x, y[:, 0])
    window = (xte - mu) / sd
    out = []
    for _ in range(horizon):
        step = model.predict(window)
        out.append(step)
        window = np.concatenate([window[:, 1:], step[:, None]], 1)
    return np.stack(out, 1) * sd + mu


def _nbeats_one_step(history: np.ndarray, lags: int, horizon: int, epochs: int, size: tuple[int, int, int],
                     seed: int = 0, device: str = "cpu", batch: int = 32) -> np.ndarray:
    """The official protocol's N-BEATS: one-step model (output 1) on raw values, every window of the history with
    its next point, `epochs` shuffled passes in batches of `batch`, then `horizon` steps rolled forward from the end
    of the history (darts' predict with output_chunk_length 1). (1, horizon)."""
    from datamodules.dysts_windows import sliding_windows
    from lit_models.dynamics.dysts_benchmark import NBeatsLite, roll_forward

    torch.manual_seed(seed)
    x, y = sliding_windows(history, lags, 1, 1)
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    y = torch.as_tensor(y, dtype=torch.float32, device=device)
    blocks, layers, width = size
    model = NBeatsLite(lags, 1, width=width, num_layers=layers, num_blocks=blocks, theta_dim=5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    window = torch.as_tensor(history[None, -lags:], dtype=torch.float32, device=device)
    with torch.no_grad():
        return roll_forward(model, window, horizon).double().cpu().numpy()


def _nbeats(train: np.ndarray, xte: np.ndarray, steps: int, seed: int = 0, horizon: int = HORIZON,
            device: str = "cpu") -> np.ndarray:
    """Train N-BEATS-lite (direct lags -> horizon) on every train window for `steps` Adam steps, forecast xte."""
    from datamodules.dysts_windows import sliding_windows
    from lit_models.dynamics.dysts_benchmark import NBeatsLite

    torch.manual_seed(seed)
    lags = xte.shape[1]
    mu, sd = train.mean(), train.std() or 1.0
    x, y = sliding_windows((train - mu) / sd, lags, horizon, 1)
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    y = torch.as_tensor(y, dtype=torch.float32, device=device)
    model = NBeatsLite(lags, horizon, width=128, num_layers=3, num_blocks=3).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(64, len(x)),), generator=gen).to(device)
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = torch.as_tensor((xte - mu) / sd, dtype=torch.float32, device=device)
        return model(z).double().cpu().numpy() * sd + mu


# ---------------------------------------------------------------------------------------------------- data
def _integrated_task(name: str):
    """Offline default: (train, xte, yte, horizon) from an integrated trajectory."""
    from datamodules.dysts_windows import load_series, sliding_windows

    series = load_series(name, N_POINTS, PPP)
    train, test = series[:TRAIN], series[TRAIN:]
    xte, yte = sliding_windows(test, LAGS, HORIZON, STRIDE)
    return train, xte, yte, HORIZON


def _precomputed_loader(dataset: str, data_dir: str | None, base_url: str | None):
    """(task, systems in the file): task(name) -> (train, xte, yte, horizon) on the paper's published test series
    (history 5/6, forecast 1/6)."""
    from datamodules import dysts_data

    if dataset not in DATASETS:
        raise UserError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    granularity, _, noise = dataset.partition("_")
    filename = dysts_data.dataset_filename("test", granularity, noise=bool(noise))
    table = dysts_data.load_precomputed(dysts_data.locate_file(filename, data_dir, base_url or dysts_data.BASE_URL))
    lags = dysts_data.GRANULARITY[granularity]

    def task(name: str):
        series = dysts_data.system_series(table, name)
        split = dysts_data.forecast_split(len(series))
        return series[:split], series[None, split - lags:split], series[None, split:], len(series) - split

    return task, sorted(table)


def _forecasters(name: str, train: np.ndarray, xte: np.ndarray, horizon: int, steps: int, device: str,
                 official: dict | None) -> dict:
    """Forecaster name -> a call that fits it on `train` and forecasts `xte` ((windows, horizon)), in row order."""
    forecasters = {"naive": lambda: np.repeat(xte[:, -1:], horizon, 1),
                   f"ridge_ar{xte.shape[1]}": lambda: _ridge_ar(train, xte, horizon=horizon)}
    if official is None:
        forecasters["nbeats_lite"] = lambda: _nbeats(train, xte, steps, horizon=horizon, device=device)
    else:
        lags = official["lags"].get(name, xte.shape[1])
        forecasters["nbeats_official"] = lambda: _nbeats_one_step(train, lags, horizon, official["epochs"],
                                                                   official["size"], device=device)
    return forecasters


def _timed(call, sync) -> tuple[object, float]:
    """(result, wall-clock seconds) of one call; `sync` before each clock read (device_sync)."""
    sync()
    start = time.perf_counter()
    out = call()
    sync()
    return out, time.perf_counter() - start


WARM_UP_POINTS = 200  # warm-up trajectory: shorter than N_POINTS, so make_trajectories' cache serves no timed system


def _warm_up(name: str, task, device: str, official: dict | None) -> None:
    """Untimed, once before the first timed system: every forecaster once (2 N-BEATS steps, 1 official epoch of a
    one-block net) on a short series of `name`, with its dysts metadata, so that the one-time costs (imports, dysts'
    metadata file, torch's and CUDA's first calls) are not charged to the first timed system. Best effort: a failure
    here is left to the timed run to report."""
    try:
        _system(name)
        if task is _integrated_task:
            from datamodules.dysts_windows import load_series, sliding_windows

            series = load_series(name, WARM_UP_POINTS, PPP)
            train = series[:WARM_UP_POINTS - LAGS - HORIZON]
            xte, _ = sliding_windows(series[len(train) - LAGS:], LAGS, HORIZON, STRIDE)
            horizon = HORIZON
        else:  # the published series: a lookup in the loaded file, nothing cached
            train, xte, _, horizon = task(name)
        tiny = None if official is None else {"epochs": 1, "size": (1, 1, 8), "lags": {}}
        for call in _forecasters(name, train, xte, horizon, 2, device, tiny).values():
            call()
        device_sync(device)()
    except Exception:  # a system that fails to integrate becomes the timed run's 'skipped' row (or its UserError)
        pass


# Not a paired speed measurement: each system's data step and each forecaster's fit + forecast are timed once
# (`data_seconds`, `fit_seconds`: costs, not ratios of timings), so nothing here is interleaved.
def _system_rows(name: str, task, steps: int, device: str, official: dict | None = None) -> list[dict]:
    """The three forecasters' rows for one system (or one 'skipped' row when its data cannot be made), with the
    system's `data_seconds` on its first row and each forecaster's `fit_seconds` on its own. `official` (protocol
    official): {"epochs", "size", "lags": per-system input lengths} for the one-step N-BEATS row."""
    sync = device_sync(device)
    start = time.perf_counter()
    try:
        train, xte, yte, horizon = task(name)
        meta = _system(name)
    except UserError:
        raise
    except Exception as err:  # a system that fails to integrate is skipped, not fatal
        return [{"system": name, "forecaster": "skipped", "note": str(err)[:80],
                 "data_seconds": time.perf_counter() - start}]
    lyap = float(meta.maximum_lyapunov_estimated or float("nan"))
    period = float(meta.period or float("nan"))
    data_seconds = time.perf_counter() - start
    sd = train.std() or 1.0
    forecasters = _forecasters(name, train, xte, horizon, steps, device, official)
    # compute_benchmarks.py: darts scores the rolled official forecast against y_val[:-1]
    scored = {"nbeats_official": horizon - 1}
    rows = []
    for forecaster, call in forecasters.items():
        pred, fit_seconds = _timed(call, sync)
        n = scored.get(forecaster, horizon)
        p, y = pred[:, :n], yte[:, :n]
        rows.append({"system": name, "forecaster": forecaster, "smape": _smape(p, y),
                     "nrmse": float(np.sqrt(np.mean((p - y) ** 2)) / sd), "max_lyapunov": lyap,
                     "lyapunov_per_period": lyap * period, "windows": len(xte)})
        if len(rows) == 1:  # the system's data step, once per system
            rows[-1]["data_seconds"] = data_seconds
        rows[-1]["fit_seconds"] = fit_seconds
        if forecaster == "nbeats_official":
            rows[-1]["lags"] = official["lags"].get(name, xte.shape[1])
    return rows


# ------------------------------------------------------------------------------------------------ summary
def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def summary_rows(rows: list[dict]) -> list[dict]:
    """One row per forecaster: mean sMAPE and Spearman rho of sMAPE / NRMSE against each chaos measure, and the
    forecaster's cost over systems (`fit_seconds_median` / `_total`); the first row also the per-system cost
    (`data_seconds_*`, `system_seconds_*`: data + every forecaster)."""
    done = [r for r in rows if r["forecaster"] != "skipped"]
    out = []
    for forecaster in dict.fromkeys(r["forecaster"] for r in done):
        sub = [r for r in done if r["forecaster"] == forecaster and math.isfinite(r["max_lyapunov"])]
        err, nrmse = [r["smape"] for r in sub], [r["nrmse"] for r in sub]
        lyap, per_period = [r["max_lyapunov"] for r in sub], [r["lyapunov_per_period"] for r in sub]
        out.append({"system": f"spearman over {len(sub)} systems", "forecaster": forecaster,
                    "smape": float(np.mean(err)) if err else float("nan"),
                    "rho_smape_lyapunov": _spearman(err, lyap),
                    "rho_smape_lyapunov_per_period": _spearman(err, per_period),
                    # sMAPE depends on the series' offset from zero (card pitfall): the scale-free NRMSE too
                    "rho_nrmse_lyapunov": _spearman(nrmse, lyap),
                    "rho_nrmse_lyapunov_per_period": _spearman(nrmse, per_period)})
        out[-1].update(_cost("fit_seconds", [r.get("fit_seconds") for r in done if r["forecaster"] == forecaster]))
    if out:  # per system: over every system of the table (a skipped one: its failed data step)
        data, whole = {}, {}
        for r in rows:
            for column in ("data_seconds", "fit_seconds"):
                if column in r:
                    whole[r["system"]] = whole.get(r["system"], 0.0) + r[column]
            if "data_seconds" in r:
                data[r["system"]] = r["data_seconds"]
        out[0].update(_cost("data_seconds", list(data.values())))
        out[0].update(_cost("system_seconds", list(whole.values())))
    return out


def _cost(column: str, seconds: list) -> dict:
    """{column_median, column_total} over the timed values (none for tables from before the cost columns)."""
    seconds = [s for s in seconds if s is not None]
    if not seconds:
        return {}
    return {f"{column}_median": float(np.median(seconds)), f"{column}_total": float(np.sum(seconds))}


# -------------------------------------------------------------------------------------------------- entry
def run(quick: bool = False, out_dir: Path | None = None, systems: list[str] | str | None = None,
        all_systems: bool = False, shard: str | None = None, dataset: str | None = None, device: str = "cpu",
        data_dir: str | None = None, base_url: str | None = None, merge: bool = False, protocol: str = "direct",
        hyperparameters: str | None = None) -> list[dict]:
    """Run the benchmark (or one shard of it) and write its table; `merge=True` only combines finished shard
    tables (see `merge_shards`). The module docstring describes the options."""
    out_dir = Path(out_dir) if out_dir is not None else Path("runs") / "bench"
    if merge:
        return merge_shards(out_dir, quick, dataset, protocol)
    device = check_device(device)
    if protocol not in ("direct", "official"):
        raise UserError(f"--protocol must be direct or official, got {protocol!r}")
    if protocol == "official" and dataset is None:
        raise UserError("--protocol official runs on the paper's published series: add --dataset fine|coarse|...")
    if hyperparameters is not None and protocol != "official":
        raise UserError("--hyperparameters sets the official protocol's input lengths: add --protocol official")
    official = None
    if protocol == "official":  # darts NBEATSModel defaults: 30 blocks x 4 layers x 256, 100 epochs
        if hyperparameters == "official":  # the file of this granularity, from data_dir or downloaded
            from datamodules.dysts_data import official_hyperparameter_file

            hyperparameters = str(official_hyperparameter_file(dataset.partition("_")[0], data_dir))
        official = {"epochs": 2 if quick else 100, "size": (3, 2, 32) if quick else (30, 4, 256),
                    "lags": official_input_lengths(hyperparameters) if hyperparameters else {}}
    part = parse_shard(shard)
    task, file_systems = _integrated_task, None
    if dataset is not None:
        task, file_systems = _precomputed_loader(dataset, data_dir, base_url)
    names = file_systems if all_systems and file_systems else _resolve_systems(systems, all_systems, quick)
    if part is not None:
        names = shard_systems(names, *part)
    steps = 150 if quick else 800
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict] = []
    try:
        if names:
            _warm_up(names[0], task, device, official)
        for name in names:
            rows += _system_rows(name, task, steps, device, official)
    finally:
        torch.set_num_threads(threads)
    if part is not None:  # a partial table: per-system rows only, summarised by merge_shards()
        _write_csv(rows, out_dir / f"{_stem(quick, dataset, protocol)}_shard{part[0]}of{part[1]}.csv")
        return rows
    rows += summary_rows(rows)
    _write(rows, out_dir / _stem(quick, dataset, protocol))
    return rows


def merge_shards(out_dir: Path, quick: bool = False, dataset: str | None = None,
                 protocol: str = "direct") -> list[dict]:
    """Combine the shard tables in `out_dir` into the results table with the Spearman rows; all shards required."""
    out_dir = Path(out_dir)
    stem = _stem(quick, dataset, protocol)
    files = sorted(out_dir.glob(f"{stem}_shard*of*.csv"))
    if not files:
        raise UserError(f"no shard tables {stem}_shard<i>of<n>.csv in {out_dir}")
    counts = {int(f.stem.rsplit("of", 1)[1]) for f in files}
    if len(counts) != 1:
        raise UserError(f"shard tables in {out_dir} come from different shard counts {sorted(counts)}")
    (count,) = counts
    have = {int(f.stem.rsplit("_shard", 1)[1].split("of")[0]) for f in files}
    missing = sorted(set(range(count)) - have)
    if missing:
        raise UserError(f"missing shard tables {', '.join(f'{i}/{count}' for i in missing)} in {out_dir}")
    rows = [row for f in files for row in _read_csv(f)]
    rows += summary_rows(rows)
    _write(rows, out_dir / stem)
    return rows


def result_name(quick: bool = False, dataset: str | None = None, protocol: str = "direct", shard: str | None = None,
                merge: bool = False, **_) -> str:
    """The name of `zoo bench`'s JSON of this run, as its tables are named: one per dataset, protocol and shard (the
    tasks of a job array wrote one file, each over the other)."""
    part = None if merge else parse_shard(shard)
    stem = _stem(quick, dataset, protocol)
    return stem if part is None else f"{stem}_shard{part[0]}of{part[1]}"


def _stem(quick: bool, dataset: str | None, protocol: str = "direct") -> str:
    official = "_official" if protocol == "official" else ""
    return f"{STEM}{f'_{dataset}' if dataset else ''}{official}{'_quick' if quick else ''}"


def _write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["system", "forecaster"]
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _read_csv(path: Path) -> list[dict]:
    """Shard rows back with numbers as numbers (empty cells dropped)."""
    def value(text: str):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text

    with open(path, newline="") as fh:
        return [{k: value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def _write(rows: list[dict], stem: Path) -> None:
    _write_csv(rows, stem.with_name(stem.name + ".csv"))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    stem.with_name(stem.name + ".md").write_text(SUMMARY + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
