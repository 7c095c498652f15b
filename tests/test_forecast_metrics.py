"""Forecast metrics (lit_models.common.forecast_metrics): valid prediction time and sMAPE on hand-computed cases."""
from __future__ import annotations

import pytest
import torch

from lit_models.common.forecast_metrics import ValidPredictionTime, smape, valid_steps


def test_valid_steps_counts_leading_steps_under_the_threshold():
    target = torch.zeros(3, 5)
    pred = torch.tensor([[0.1, 0.2, 0.5, 0.1, 0.1],    # exceeds 0.4 at step 2 -> 2 valid steps
                         [0.0, 0.0, 0.0, 0.0, 0.0],    # never -> whole horizon
                         [0.9, 0.0, 0.0, 0.0, 0.0]])   # at once -> 0
    assert valid_steps(pred, target, 1.0).tolist() == [2, 5, 0]
    # the error is normalised by the scale: sigma = 2 halves it
    assert valid_steps(pred, target, 2.0).tolist() == [5, 5, 0]
    assert valid_steps(pred, target, 2.5).tolist() == [5, 5, 5]


def test_multivariate_error_is_the_rms_over_variates():
    target = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[0.3, 0.3], [0.5, 0.3], [0.6, 0.0]]])  # rms 0.3, 0.412, 0.424
    assert valid_steps(pred, target, torch.tensor([1.0, 1.0])).tolist() == [1]


def test_metric_is_in_lyapunov_times_and_accumulates():
    metric = ValidPredictionTime()
    metric.update(torch.zeros(2, 4), torch.zeros(2, 4), 1.0, lyapunov_per_step=0.5)  # 4 steps each -> 2.0
    metric.update(torch.ones(1, 4), torch.zeros(1, 4), 1.0, lyapunov_per_step=0.5)   # 0 steps
    assert float(metric.compute()) == pytest.approx(4.0 / 3.0)


def test_smape_bounds_and_value():
    y = torch.tensor([[1.0, 2.0]])
    assert float(smape(y, y)) == 0.0
    assert float(smape(-y, y)) == pytest.approx(200.0)
    assert float(smape(torch.tensor([[2.0, 2.0]]), y)) == pytest.approx(100.0 * (1 / 3))
