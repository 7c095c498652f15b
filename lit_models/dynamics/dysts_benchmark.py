"""Chaos as an interpretable benchmark for forecasting (Gilpin, NeurIPS 2021 D&B, arXiv 2110.05266).

The paper is a benchmark: univariate forecasts of each dysts system's timescale-aligned trajectory, scored by
sMAPE = 200/H * sum_h |y_h - yhat_h| / (|y_h| + |yhat_h|), the error then correlated with the degree of chaos.
N-BEATS ranked best on average, so the framework's learned forecaster is an N-BEATS-lite (generic architecture,
Oreshkin et al. 2020): ``num_blocks`` residual blocks, each an MLP (``num_layers`` ReLU layers of ``width``) whose
last hidden state is projected to a backcast (``lags``) and a forecast (``horizon``); the block input minus its
backcast feeds the next block and the forecasts are summed (doubly residual stacking). Inputs are z-scored with
the train-segment mean/std of the datamodule (standardise per system, card pitfall); outputs are mapped back and
the metrics are computed on raw values.

``output_chunk`` (official benchmarks/compute_benchmarks.py: darts models with ``output_chunk_length=1``) makes the
network forecast that many steps and rolls it forward over the horizon (`roll_forward`; training targets: the first
``output_chunk`` steps of each window); ``standardize=False`` fits raw values, as the official code; ``scored_steps``
scores the first steps only (official: all but the last point of the window, darts' metrics on the intersection with
``y_val[:-1]``).

``forecaster="naive"`` replaces the network by the last observed value repeated over the horizon (the paper's
naive baseline; the card's claim baseline). It has no trainable effect (its forward ignores the network), so use
it with ``trainer.max_steps=0``. The classical ridge AR(30) reference lives in ``benchmarks/dysts_runner.py``.
On the paper's published data (``experiment=dysts_benchmark/dysts_data_{fine,coarse}``, datamodule
``datamodules.dysts_data``) the same module forecasts the last sixth of each series (200 / 30 points) in one go,
validates on the train initial condition and sizes the network as darts' N-BEATS defaults.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from launch.errors import UserError, check_min
from lit_models.common.forecast_metrics import ValidPredictionTime, smape
from lit_models.common.steps import attached_datamodule

__all__ = ["DystsForecastModule", "NBeatsBlock", "NBeatsLite", "roll_forward", "smape"]


class NBeatsBlock(nn.Module):
    """One generic N-BEATS block: `num_layers` ReLU layers, then linear backcast / forecast heads; with `theta_dim`
    each head is darts' generic waveform generator, Linear(width, theta_dim) -> Linear(theta_dim, length) (the
    expansion coefficients theta, darts default 5)."""

    def __init__(self, lags: int, horizon: int, width: int, num_layers: int, backcast: bool = True,
                 theta_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = lags
        for _ in range(num_layers):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.mlp = nn.Sequential(*layers)

        def head(length: int) -> nn.Module:
            if theta_dim is None:
                return nn.Linear(width, length)
            return nn.Sequential(nn.Linear(width, theta_dim), nn.Linear(theta_dim, length))

        self.backcast = head(lags) if backcast else None
        self.forecast = head(horizon)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        h = self.mlp(x)
        return (self.backcast(h) if self.backcast is not None else None), self.forecast(h)


class NBeatsLite(nn.Module):
    """(B, lags) -> (B, horizon), generic N-BEATS with doubly residual stacking."""

    def __init__(self, lags: int = 30, horizon: int = 25, width: int = 128, num_layers: int = 3,
                 num_blocks: int = 3, theta_dim: int | None = None) -> None:
        super().__init__()
        # the last block's backcast would feed nothing, so it has none (every parameter gets a gradient)
        self.blocks = nn.ModuleList(NBeatsBlock(lags, horizon, width, num_layers, backcast=i < num_blocks - 1,
                                                theta_dim=theta_dim) for i in range(num_blocks))
        self.horizon = horizon

    def forward(self, x: Tensor) -> Tensor:
        residual, out = x, x.new_zeros(x.shape[0], self.horizon)
        for block in self.blocks:
            back, fore = block(residual)
            if back is not None:
                residual = residual - back
            out = out + fore
        return out


def roll_forward(model: nn.Module, window: Tensor, horizon: int) -> Tensor:
    """(B, lags) -> (B, horizon): the model's forecasts fed back into its input window until the horizon is covered
    (darts' predict(n) with output_chunk_length < n); one call when the model forecasts the whole horizon."""
    lags, chunks, done = window.shape[1], [], 0
    while done < horizon:
        step = model(window)
        chunks.append(step)
        done += step.shape[1]
        window = torch.cat([window[:, step.shape[1]:], step], 1)[:, -lags:]
    return torch.cat(chunks, 1)[:, :horizon]


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=1e-3)


class DystsForecastModule(L.LightningModule):
    """N-BEATS-lite (or the naive last-value forecaster) on univariate dysts windows; MSE loss in z-units,
    metrics `train/loss`, `val/smape`, `test/smape` (raw units, percent), `val/smape_naive`, `test/smape_naive`
    (the last-value forecast of the same windows), `test/nrmse` (RMSE over the train std) and `test/vpt` (valid
    prediction time in Lyapunov times: normalised error <= 0.4, see `common.forecast_metrics`; needs the
    datamodule's `lyapunov_per_step`)."""

    def __init__(
        self,
        lags: int = 30,
        horizon: int = 25,
        width: int = 128,
        num_layers: int = 3,
        num_blocks: int = 3,
        forecaster: str = "nbeats",
        output_chunk: int | None = None,
        standardize: bool = True,
        scored_steps: int | None = None,
        theta_dim: int | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if forecaster not in ("nbeats", "naive"):
            raise ValueError(f"forecaster must be 'nbeats' or 'naive', got {forecaster!r}")
        check_min("model", 1, lags=lags, horizon=horizon, width=width, num_layers=num_layers, num_blocks=num_blocks,
                  output_chunk=output_chunk, scored_steps=scored_steps, theta_dim=theta_dim)
        if scored_steps is not None and scored_steps > horizon:
            raise ValueError(f"model.scored_steps ({scored_steps}) must be <= horizon ({horizon})")
        if output_chunk is not None and output_chunk > horizon:
            raise ValueError(f"model.output_chunk ({output_chunk}) must be <= horizon ({horizon})")
        self.optimizer_factory = optimizer
        self.chunk = output_chunk or horizon
        self.model = self._network(lags)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.lyapunov_per_step: float | None = None
        self.vpt = nn.ModuleDict({s: ValidPredictionTime() for s in ("val", "test")})
        self.metrics = nn.ModuleDict({f"{s}_{m}": MeanMetric() for s in ("val", "test")
                                      for m in ("smape", "smape_naive", "mse")})
        self._sample: dict[str, Tensor] | None = None

    def _network(self, lags: int) -> NBeatsLite:
        h = self.hparams
        return NBeatsLite(lags, self.chunk, h.width, h.num_layers, h.num_blocks, h.theta_dim)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "setup"):
            dm.setup(stage)
            lags = getattr(dm, "lags", None)
            if lags is not None and int(lags) != self.hparams.lags:
                # the datamodule's input length wins (e.g. the system's official N-BEATS input_chunk_length from
                # data.hyperparameters): rebuild the untrained network for it before the optimiser or a checkpoint
                # sees it (the saved hyperparameters record the length used)
                self.hparams.lags = int(lags)
                self.model = self._network(self.hparams.lags)
            if getattr(dm, "mean", None) is not None:
                self.mean.fill_(float(dm.mean))
                self.std.fill_(float(dm.std))
            self.lyapunov_per_step = getattr(dm, "lyapunov_per_step", None)
            if stage == "fit" and self.hparams.forecaster == "nbeats":
                self._check_training_targets(getattr(dm, "train_set", None))

    def _check_training_targets(self, train_set) -> None:
        """The network learns the first `chunk` steps of each training window: windows with fewer targets were
        broadcast against its output by the MSE (a torch warning, a silently wrong loss)."""
        if train_set is None or not len(train_set):
            return
        steps = int(train_set[0][1].shape[-1])
        if steps < self.chunk:
            raise UserError(f"data: the training windows have {steps} target step(s), fewer than the network's output "
                            f"chunk of {self.chunk} (model.output_chunk; null: model.horizon): set model.output_chunk "
                            f"<= {steps}, or more targets per window (data.train_horizon=null: the horizon)")

    def _scale(self) -> tuple[Tensor | float, Tensor | float]:
        return (self.mean, self.std) if self.hparams.standardize else (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """(B, lags) raw values -> (B, horizon) raw forecast: one direct forecast, or (output_chunk < horizon) the
        network's `output_chunk` steps fed back into its input window until the horizon is covered (darts' predict
        with output_chunk_length < n, as the official benchmark's one-step models)."""
        horizon = self.hparams.horizon
        if self.hparams.forecaster == "naive":
            return x[:, -1:].expand(-1, horizon)
        mean, std = self._scale()
        return roll_forward(self.model, (x - mean) / std, horizon) * std + mean

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        mean, std = self._scale()
        z = (batch["x"] - mean) / std
        target = (batch["y"][:, :self.chunk] - mean) / std  # a one-step model learns the first step of each window
        loss = F.mse_loss(self.model(z), target)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(z), sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str, batch_idx: int) -> None:
        x, y = batch["x"], batch["y"]
        pred = self(x)
        if self.hparams.scored_steps is not None:  # official: the rolled forecast's last point is not scored
            pred, y = pred[:, :self.hparams.scored_steps], y[:, :self.hparams.scored_steps]
        naive = x[:, -1:].expand_as(y)
        n = len(x)
        for key, value in (("smape", smape(pred, y)), ("smape_naive", smape(naive, y)),
                           ("mse", ((pred - y) ** 2).mean(-1))):
            metric = self.metrics[f"{split}_{key}"]
            metric.update(value)
            if key != "mse":
                self.log(f"{split}/{key}", metric, on_step=False, on_epoch=True, batch_size=n,
                         prog_bar=split == "val" and key == "smape")
        if self.lyapunov_per_step is not None:
            self.vpt[split].update(pred, y, self.std, self.lyapunov_per_step)
            self.log(f"{split}/vpt", self.vpt[split], on_step=False, on_epoch=True, batch_size=n)
        if batch_idx == 0:
            self._sample = {"x": x[:1].detach().cpu(), "y": y[:1].detach().cpu(), "pred": pred[:1].detach().cpu()}

    def _log_nrmse(self, split: str) -> None:
        metric = self.metrics[f"{split}_mse"]
        if metric.update_count:
            self.log(f"{split}/nrmse", metric.compute().sqrt() / self.std, sync_dist=True)
            metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_nrmse("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_nrmse("test")

    def configure_optimizers(self) -> Any:
        return self.optimizer_factory(self.parameters())

    def figures(self) -> dict[str, Any]:
        """{"forecast": lookback, truth and forecast of the first held-out window of the forecast coordinate}."""
        if self._sample is None:
            return {}
        import matplotlib.pyplot as plt

        x, y, pred = self._sample["x"][0], self._sample["y"][0], self._sample["pred"][0]
        fig, ax = plt.subplots(figsize=(7, 2.5))
        t_in, t_out = torch.arange(-len(x), 0), torch.arange(0, len(y))
        ax.plot(t_in, x, color="0.5", lw=1, label="lookback")
        ax.plot(t_out, y, color="k", lw=1.2, label="truth")
        ax.plot(t_out, pred, color="C3", lw=1.2, label=self.hparams.forecaster)
        ax.set_xlabel("sample (0 = forecast start)")
        ax.legend(loc="upper left", fontsize=7, ncol=3)
        smape = float(200 * torch.mean(torch.abs(y - pred) / (torch.abs(y) + torch.abs(pred)).clamp_min(1e-12)))
        data = getattr(attached_datamodule(self), "hparams", {})
        system, coordinate = data.get("name") or data.get("system") or "", data.get("coordinate")
        ax.set_ylabel(f"{system} x_{coordinate} (raw units)".strip() if coordinate is not None else "value")
        ax.set_title(f"{system} {self.hparams.forecaster} forecast, first held-out window: sMAPE {smape:.1f}".strip(),
                     fontsize=8)
        fig.tight_layout()
        return {"forecast": fig}
