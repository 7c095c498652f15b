"""`zoo bench dysts_benchmark`: the chaos forecasting benchmark (arXiv 2110.05266) over many dysts systems.

For each system: coordinate 0 of a timescale-aligned trajectory (3000 points, 50 per dominant period, RK45 at 1e-9,
`datamodules.dysts_windows.load_series`), first 2000 points train, the rest test; test windows of 30 lags ->
25 steps every 20 points. Forecasters: naive (last value), ridge AR(30) (alpha 1e-3, recursive one-step), and the
framework's N-BEATS-lite (`lit_models.dynamics.dysts_benchmark.NBeatsLite`, direct 25-step, a short plain-torch
training). Rows: one per (system, forecaster) with the mean test sMAPE and NRMSE, the system's largest Lyapunov
exponent from the dysts metadata (`maximum_lyapunov_estimated`, in the system's time units) and the exponent per
dominant period (lambda * period, the chaos measure on the common resampled timescale); then one summary row per
forecaster with the Spearman rank correlation across systems between its sMAPE (and NRMSE) and each chaos measure.
The table is also written as CSV and markdown under `runs/bench/` (or `out_dir`).
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

SUMMARY = ("Forecast sMAPE (25 steps = half a period, %) of naive / ridge AR(30) / N-BEATS-lite per dysts system, with "
           "the largest Lyapunov exponent (metadata) and lambda*period; 'spearman' rows: rank correlation across "
           "systems between sMAPE and chaos (paper: error grows with the largest Lyapunov exponent).")

QUICK_SYSTEMS = ["Rossler", "Chua", "Lorenz"]
SYSTEMS = ["Lorenz", "Rossler", "Chua", "Thomas", "Lorenz96", "HindmarshRose", "Aizawa", "AnishchenkoAstakhov",
           "Arneodo", "ArnoldBeltramiChildress", "Bouali2", "BurkeShaw", "CaTwoPlus", "ChenLee", "Colpitts",
           "Coullet", "DequanLi", "GenesioTesi", "Chen", "Dadras", "HyperCai", "HyperRossler", "SprottB", "SprottF",
           "Sakarya", "RabinovichFabrikant"]
LAGS, HORIZON, STRIDE, N_POINTS, TRAIN, PPP = 30, 25, 20, 3000, 2000, 50


def _system(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dysts.flows as flows
    return getattr(flows, name)()


def _smape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(200.0 * np.mean(np.abs(pred - y) / np.maximum(np.abs(pred) + np.abs(y), 1e-8), -1)))


def _ridge_ar(train: np.ndarray, xte: np.ndarray, alpha: float = 1e-3) -> np.ndarray:
    """Fit a ridge AR(LAGS) one-step model on the train segment, forecast HORIZON steps recursively."""
    from sklearn.linear_model import Ridge

    from datamodules.dysts_windows import sliding_windows

    mu, sd = train.mean(), train.std() or 1.0
    x, y = sliding_windows((train - mu) / sd, LAGS, 1, 1)
    model = Ridge(alpha=alpha).fit(x, y[:, 0])
    window = (xte - mu) / sd
    out = []
    for _ in range(HORIZON):
        step = model.predict(window)
        out.append(step)
        window = np.concatenate([window[:, 1:], step[:, None]], 1)
    return np.stack(out, 1) * sd + mu


def _nbeats(train: np.ndarray, xte: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
    from datamodules.dysts_windows import sliding_windows
    from lit_models.dynamics.dysts_benchmark import NBeatsLite

    torch.manual_seed(seed)
    mu, sd = train.mean(), train.std() or 1.0
    x, y = sliding_windows((train - mu) / sd, LAGS, HORIZON, 1)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    model = NBeatsLite(LAGS, HORIZON, width=128, num_layers=3, num_blocks=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = torch.as_tensor((xte - mu) / sd, dtype=torch.float32)
        return model(z).double().numpy() * sd + mu


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def run(quick: bool = False, out_dir: Path | None = None, systems: list[str] | None = None) -> list[dict]:
    from datamodules.dysts_windows import load_series, sliding_windows

    systems = systems or (QUICK_SYSTEMS if quick else SYSTEMS)
    steps = 150 if quick else 800
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict] = []
    try:
        for name in systems:
            start = time.perf_counter()
            try:
                series = load_series(name, N_POINTS, PPP)
            except Exception as err:  # a system that fails to integrate is skipped, not fatal
                rows.append({"system": name, "forecaster": "skipped", "note": str(err)[:80]})
                continue
            meta = _system(name)
            lyap = float(meta.maximum_lyapunov_estimated or float("nan"))
            period = float(meta.period or float("nan"))
            train, test = series[:TRAIN], series[TRAIN:]
            xte, yte = sliding_windows(test, LAGS, HORIZON, STRIDE)
            sd = train.std() or 1.0
            preds = {"naive": np.repeat(xte[:, -1:], HORIZON, 1), "ridge_ar30": _ridge_ar(train, xte),
                     "nbeats_lite": _nbeats(train, xte, steps)}
            seconds = time.perf_counter() - start
            for forecaster, pred in preds.items():
                rows.append({"system": name, "forecaster": forecaster, "smape": _smape(pred, yte),
                             "nrmse": float(np.sqrt(np.mean((pred - yte) ** 2)) / sd), "max_lyapunov": lyap,
                             "lyapunov_per_period": lyap * period, "windows": len(xte), "seconds": seconds})
    finally:
        torch.set_num_threads(threads)
    done = [r for r in rows if r["forecaster"] != "skipped"]
    for forecaster in ("naive", "ridge_ar30", "nbeats_lite"):
        sub = [r for r in done if r["forecaster"] == forecaster and math.isfinite(r["max_lyapunov"])]
        err = [r["smape"] for r in sub]
        rows.append({"system": f"spearman over {len(sub)} systems", "forecaster": forecaster,
                     "smape": float(np.mean(err)) if err else float("nan"),
                     "rho_smape_lyapunov": _spearman(err, [r["max_lyapunov"] for r in sub]),
                     "rho_smape_lyapunov_per_period": _spearman(err, [r["lyapunov_per_period"] for r in sub]),
                     # sMAPE depends on the series' offset from zero (card pitfall): the scale-free NRMSE too
                     "rho_nrmse_lyapunov": _spearman([r["nrmse"] for r in sub], [r["max_lyapunov"] for r in sub]),
                     "rho_nrmse_lyapunov_per_period": _spearman([r["nrmse"] for r in sub],
                                                                [r["lyapunov_per_period"] for r in sub])})
    _write(rows, out_dir if out_dir is not None else Path("runs") / "bench", quick)
    return rows


def _write(rows: list[dict], out_dir: Path, quick: bool) -> None:
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"dysts_runner{'_quick' if quick else ''}"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    Path(f"{stem}.md").write_text(SUMMARY + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
