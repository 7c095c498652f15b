"""Forecast metrics shared by the dynamics papers, as torchmetrics objects (sums and counts reduced across DDP ranks).

- `ValidPredictionTime`: a valid prediction time (no card defines one; it is reported, not asserted): per forecast,
  the first lead step h at which the normalised error sqrt(mean_d ((yhat_hd - y_hd) / sigma_d)^2) exceeds `threshold`
  (the whole horizon when it never does), times the lead time of one step in Lyapunov times (lambda_max * dt). The
  error is normalised per dimension by the training series' std, as in Vlachas et al. (2020); the default threshold
  0.4 is Pathak et al.'s (PRL 2018), whose error is normalised by the RMS norm of the state instead; works that follow
  Vlachas et al. often use 0.5 (`threshold`). Forecasts are (B, H) (univariate) or (B, H, D).
- `smape`: 200 / H * sum_h |y_h - yhat_h| / (|y_h| + |yhat_h|) per forecast (percent, as in the dysts benchmark).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def smape(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Per forecast (last axis = horizon): 200/H * sum_h |y - yhat| / (|y| + |yhat|)."""
    return 200.0 * ((pred - target).abs() / (pred.abs() + target.abs()).clamp_min(eps)).mean(-1)


def valid_steps(pred: Tensor, target: Tensor, scale: Tensor | float, threshold: float = 0.4) -> Tensor:
    """Per forecast: the number of leading steps whose normalised error stays <= threshold."""
    if pred.shape != target.shape:
        raise ValueError(f"valid_steps: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() == 2:
        pred, target = pred[..., None], target[..., None]
    err = (((pred - target) / torch.as_tensor(scale, dtype=pred.dtype, device=pred.device)) ** 2).mean(-1).sqrt()
    exceeded = err > threshold  # (B, H)
    horizon = err.shape[1]
    first = torch.where(exceeded.any(1), exceeded.float().argmax(1), torch.full_like(exceeded[:, 0], horizon,
                                                                                     dtype=torch.long))
    return first.to(torch.float64)


class ValidPredictionTime(Metric):
    """Mean valid prediction time in Lyapunov times: valid steps x `lyapunov_per_step` (= lambda_max * dt)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, scale: Tensor | float, lyapunov_per_step: float) -> None:
        steps = valid_steps(pred.detach().double(), target.detach().double(), scale, self.threshold)
        self.total += steps.sum() * float(lyapunov_per_step)
        self.count += steps.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()
