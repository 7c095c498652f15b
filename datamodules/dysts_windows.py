"""Univariate forecasting windows over dysts trajectories (paper card `dysts_benchmark`, offline default).

``DystsWindowsDataModule(name="Rossler")`` integrates one ``dysts.flows.<name>`` trajectory with timescale-aligned
resampling (``make_trajectory(n_points, pts_per_period=..., resample=True, method="RK45", rtol=atol=1e-9)``, through
``datamodules.dynamics.make_trajectories``: deterministic and cached per process), keeps one coordinate
(``coordinate``, default 0) and splits it by time: the first ``train_points`` samples are train, the rest test.

- Train: every window of ``lags`` inputs followed by ``horizon`` targets lying wholly inside the train segment
  (stride 1), shuffled with a generator seeded by ``seed``, in whole batches (``drop_last``, default true).
- Test (and validation, as there is no separate segment): windows of ``lags`` -> ``horizon`` starting every
  ``eval_stride`` points, lying wholly inside the test segment, so no test value is ever seen in training.
- Items are ``{"x": (lags,), "y": (horizon,)}`` in the raw units of the system (sMAPE is computed on raw values,
  as in the paper); ``self.mean`` / ``self.std`` (train segment) are exposed for models that standardise.
- ``self.lyapunov_per_step`` = lambda_max * period / pts_per_period (dysts' estimated largest Lyapunov exponent and
  dominant period): the lead time of one sample in Lyapunov times, for valid prediction times.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.dynamics import INTEGRATORS, is_map, make_trajectories
from datamodules.resumable import CheckpointedShuffle, ResumableDataLoader
from datamodules.samplers import eval_sampler
from launch.errors import UserError, check_choice, check_min

__all__ = ["DystsWindowsDataModule", "load_series", "lyapunov_per_step", "sliding_windows"]


def load_series(name: str, n_points: int = 3000, pts_per_period: int = 50, coordinate: int = 0,
                method: str = "RK45", rtol: float = 1e-9, atol: float = 1e-9) -> np.ndarray:
    """One coordinate of the system's default-ic trajectory, float64 (n_points,)."""
    traj = make_trajectories(name, 1, int(n_points), int(pts_per_period), method, float(rtol), float(atol),
                             0.0, 0, 0)[0]
    if not 0 <= coordinate < traj.shape[1]:
        raise UserError(f"data: coordinate {coordinate} out of range for '{name}' ({traj.shape[1]} dimensions)")
    return traj[:, coordinate].copy()


def lyapunov_per_step(name: str, pts_per_period: int) -> float:
    """lambda_max * dt of a timescale-aligned dysts trajectory (dt = period / pts_per_period), from dysts' metadata."""
    import dysts.flows

    system = getattr(dysts.flows, name)()
    return float(system.maximum_lyapunov_estimated) * float(system.period) / int(pts_per_period)


def sliding_windows(series: np.ndarray, lags: int, horizon: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(W, lags) inputs and (W, horizon) targets of every window inside `series` starting every `stride` points."""
    total = lags + horizon
    if len(series) < total:
        raise UserError(f"data: segment of {len(series)} points is shorter than lags + horizon ({total})")
    starts = np.arange(0, len(series) - total + 1, stride)
    idx = starts[:, None] + np.arange(total)[None, :]
    w = series[idx]
    return w[:, :lags], w[:, lags:]


class WindowLoaders(CheckpointedShuffle):
    """Loaders over TensorDatasets of (input window, target window) pairs: `train_set` (shuffled with a generator
    seeded by `hparams.seed`; whole batches only when `hparams.drop_last`, else a short last batch too), `val_set`
    (the test set when a module has none) and `test_set`, batches as {"x": (B, lags), "y": (B, horizon)}."""

    @staticmethod
    def _collate(items):
        x, y = zip(*items)
        return {"x": torch.stack(x), "y": torch.stack(y)}

    def _eval_loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, collate_fn=self._collate,
                          sampler=eval_sampler(dataset))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        batch = min(int(self.hparams.batch_size), len(self.train_set))
        return ResumableDataLoader(self.train_set, batch_size=batch, shuffle=True,
                                   drop_last=bool(self.hparams.drop_last), collate_fn=self._collate,
                                   generator=self.shuffle_generator(int(self.hparams.seed)), datamodule=self)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._eval_loader(getattr(self, "val_set", self.test_set))

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._eval_loader(self.test_set)


class DystsWindowsDataModule(WindowLoaders, L.LightningDataModule):
    def __init__(
        self,
        name: str = "Rossler",
        n_points: int = 3000,        # card offline default: make_trajectory(3000, pts_per_period=50)
        train_points: int = 2000,    # first 2000 train, rest test
        pts_per_period: int = 50,
        coordinate: int = 0,         # univariate: keep coordinate 0
        method: str = "RK45",        # dysts' default Radau/1e-12 is ~100x slower (card pitfall)
        rtol: float = 1e-9,
        atol: float = 1e-9,
        lags: int = 30,              # 30 lags
        horizon: int = 25,           # 25-step (half-period) forecast
        eval_stride: int = 20,       # a test window every 20 points
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 0,
        drop_last: bool = True,      # whole train batches only: the beats_naive claim's 600 steps were measured so
                                     # (this N-BEATS-lite check does not follow darts' loader, which keeps the rest)
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if is_map(name):  # also a one-line error for an unknown name, before any integration
            raise UserError(f"data.name: {name!r} is a dysts map, not a dysts flow: the benchmark windows need a flow "
                            f"(timescale-aligned resampling, Lyapunov time per step)")
        if not 0 < train_points < n_points:
            raise UserError(f"data: need 0 < train_points ({train_points}) < n_points ({n_points})")
        check_min("data", 1, pts_per_period=pts_per_period, lags=lags, horizon=horizon, eval_stride=eval_stride,
                  batch_size=batch_size, eval_batch_size=eval_batch_size)
        check_min("data", 0, coordinate=coordinate)  # the upper bound (the system's dimension) is checked in setup
        check_min("data", 0, rtol=rtol, atol=atol)
        check_choice("data.method", "integrator", method, INTEGRATORS)
        self.name = name
        self._loaded = False

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        h = self.hparams
        series = load_series(h.name, h.n_points, h.pts_per_period, h.coordinate, h.method, h.rtol, h.atol)
        train, test = series[: h.train_points], series[h.train_points:]
        self.series = series
        self.mean, self.std = float(train.mean()), float(train.std() or 1.0)
        self.lyapunov_per_step = lyapunov_per_step(h.name, h.pts_per_period)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
        xtr, ytr = sliding_windows(train, h.lags, h.horizon, 1)
        xte, yte = sliding_windows(test, h.lags, h.horizon, h.eval_stride)
        self.train_set = TensorDataset(as_t(xtr), as_t(ytr))
        self.test_set = TensorDataset(as_t(xte), as_t(yte))
        self._loaded = True

