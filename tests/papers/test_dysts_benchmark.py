"""Paper `dysts_benchmark` (Gilpin, NeurIPS 2021 D&B, arXiv 2110.05266): chaos as a forecasting benchmark.

Card checks: 1 timescale alignment (periodogram peak of Rossler x within 5 % of pts_per_period), 2 the learned
forecaster (N-BEATS-lite) reaches sMAPE <= 0.6 x naive on Rossler and Chua, 3 determinism. The many-systems finding
(error grows with the largest Lyapunov exponent) is `benchmarks/dysts_runner.py`; its quick mode is checked here.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from datamodules.dysts_windows import DystsWindowsDataModule, load_series, sliding_windows
from launch.check import run_claim
from lit_models.dynamics.card_probes import peak_period_samples
from lit_models.dynamics.dysts_benchmark import NBeatsLite, smape
from tests.papers.contract import fast_run


def _rossler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dysts.flows import Rossler
    return Rossler()


def test_fast_contract():
    run = fast_run("dysts_benchmark")
    run.assert_contract()
    for key in ("train/loss", "test/smape", "test/smape_naive", "test/nrmse", "test/vpt"):
        assert key in run.metrics, sorted(run.metrics)
    assert 0.0 <= run.metrics["test/vpt"] <= 25 * 0.151 * 5.9086 / 50 + 1e-6  # at most the horizon, in Lyapunov times
    assert run.model(torch.randn(4, 30, dtype=run.model.dtype)).shape == (4, 25)
    figs = run.model.figures()
    assert set(figs) == {"forecast"}
    assert figs["forecast"].axes[0].get_ylabel() == "Rossler x_0 (raw units)"  # the forecast coordinate
    import matplotlib.pyplot as plt

    plt.close(figs["forecast"])


def test_data_windows_split_without_leak():
    dm = DystsWindowsDataModule(name="Rossler")
    dm.setup()
    assert len(dm.test_set) == (1000 - 55) // 20 + 1 and len(dm.train_set) == 2000 - 55 + 1
    x, y = dm.test_set[0]
    np.testing.assert_allclose(x.numpy(), dm.series[2000:2030], rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), dm.series[2030:2055], rtol=1e-6)
    last_train_y = dm.train_set[len(dm.train_set) - 1][1]
    np.testing.assert_allclose(last_train_y[-1].item(), dm.series[1999], rtol=1e-6)  # train ends before test


def test_offline_default_keeps_whole_batches():
    """The offline default trains on whole batches (1946 windows at batch 64: 30 steps an epoch), as its beats_naive
    claim was measured; the paper-scale dysts_data keeps the short last batch (tests/test_dysts_real_data.py)."""
    dm = DystsWindowsDataModule(name="Rossler")
    assert dm.hparams.drop_last is True and len(dm.train_dataloader()) == 1946 // 64


def test_map_is_refused_before_integration(tmp_path):
    """data.name=Henon (a dysts map) was integrated, then failed with an AttributeError traceback ('dysts.flows' has
    no attribute 'Henon'); now a one-line error when the datamodule is built, exit 2."""
    from launch.errors import UserError
    from tests.conftest import zoo_in_process

    with pytest.raises(UserError, match="'Henon' is a dysts map, not a dysts flow"):
        DystsWindowsDataModule(name="Henon")
    with pytest.raises(UserError, match="unknown dysts system 'Rosler'"):
        DystsWindowsDataModule(name="Rosler")
    code, out, err = zoo_in_process("train", "experiment=dysts_benchmark", "data.name=Henon", "logger=none",
                                    "progress_bar=false", f"runs_root={tmp_path / 'runs'}", "trainer.max_steps=1")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "not a dysts flow" in lines[0], (out, err)


def test_smape_definition_and_naive_forecaster():
    y = torch.tensor([[1.0, 2.0, -1.0, 4.0]])
    pred = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    expected = 200 / 4 * (0 + 1 / 3 + 2 / 2 + 4 / 4)
    assert smape(pred, y).item() == pytest.approx(expected)
    from lit_models.dynamics.dysts_benchmark import DystsForecastModule

    naive = DystsForecastModule(forecaster="naive")
    x = torch.randn(3, 30)
    torch.testing.assert_close(naive(x), x[:, -1:].expand(3, 25))
    assert NBeatsLite()(x).shape == (3, 25)


@pytest.mark.parametrize("pts_per_period", [30, 50, 80])
def test_timescale_alignment_rossler(pts_per_period):
    """Card check 1: Rossler x, n=3000: periodogram peak within 5 % of pts_per_period (card: 29.7 / 49.2 / 78.9)."""
    x = load_series("Rossler", 3000, pts_per_period)
    assert abs(peak_period_samples(x) - pts_per_period) <= 0.05 * pts_per_period


def test_timescale_check_catches_unresampled_time():
    """Without resampling the spacing is the tiny stored dt: the peak is nowhere near pts_per_period."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = _rossler().make_trajectory(3000, resample=False, method="RK45", rtol=1e-9, atol=1e-9)[:, 0]
    assert abs(peak_period_samples(x) - 50) > 0.05 * 50


def test_determinism():
    """Card check 3: two fresh Rossler instances return identical arrays (card: max diff 0.0); windows and short
    training are deterministic too."""
    kw = dict(pts_per_period=50, method="RK45", rtol=1e-9, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = _rossler().make_trajectory(600, **kw), _rossler().make_trajectory(600, **kw)
    assert np.abs(a - b).max() == 0.0
    first, second = fast_run("dysts_benchmark", "seed=3"), fast_run("dysts_benchmark", "seed=3")
    assert first.coverage.losses == second.coverage.losses
    assert first.metrics["test/smape"] == second.metrics["test/smape"]


def test_ridge_reference_matches_card():
    """The runner's ridge AR(30) reproduces the card's reference (Rossler 50 vs naive 135, Chua 29 vs 58).

    Measured with scipy 1.17.1, numpy 2.4.6, dysts 0.96: Rossler ridge 50.96, naive 134.65 on every machine so far
    (within 0.3 % of the card: a 10 % / 5 % band). Chua is chaotic over the 3,000 points, so its test third depends on
    the CPU's floating-point path: ridge / naive 28.80 / 57.85 on the machines of the earlier measurements, 30.65 /
    50.88 on a 2-core AMD EPYC (2026-12-07). For Chua the test keeps what holds on both: ridge within 10 % of the
    card's 29 and at most 0.7 x naive (0.50 / 0.60 measured); a broken window or sMAPE would miss Rossler's bands."""
    from benchmarks.dysts_runner import _ridge_ar, _smape

    def smapes(name: str) -> tuple[float, float]:
        series = load_series(name, 3000, 50)
        xte, yte = sliding_windows(series[2000:], 30, 25, 20)
        return _smape(_ridge_ar(series[:2000], xte), yte), _smape(np.repeat(xte[:, -1:], 25, 1), yte)

    ridge, naive = smapes("Rossler")
    assert ridge == pytest.approx(50, rel=0.1) and naive == pytest.approx(135, rel=0.05)
    ridge, naive = smapes("Chua")
    assert ridge == pytest.approx(29, rel=0.1) and ridge <= 0.7 * naive


@pytest.mark.slow
def test_claim_beats_naive_and_fails_with_baseline():
    """Card check 2 (600 Adam steps, batch 64, 1 thread): N-BEATS-lite test sMAPE <= 0.6 x naive on Rossler and Chua.
    Measured: Rossler 5.41 vs naive 134.65 (threshold 80.8), Chua 7.50 vs naive 57.85 (threshold 34.7); 500 steps:
    5.48 / 6.93, 1500 steps: 6.62 / 8.27; card's ridge AR(30) reference 50 / 29 (runner: 51.0 / 28.8). Swapping
    N-BEATS for the naive last value must fail (naive <= 0.6 x naive is false)."""
    torch.set_num_threads(1)
    result = run_claim("dysts_benchmark", "beats_naive")
    assert result.passed, result.report()
    swapped = run_claim("dysts_benchmark", "beats_naive", swap_baseline=True)
    assert not swapped.passed, swapped.report()


def test_benchmark_runner_quick(tmp_path):
    from benchmarks import dysts_runner

    rows = dysts_runner.run(quick=True, out_dir=tmp_path)
    per_system = [r for r in rows if not r["system"].startswith("spearman")]
    assert {r["forecaster"] for r in per_system} == {"naive", "ridge_ar30", "nbeats_lite"}
    assert {r["system"] for r in per_system} == set(dysts_runner.QUICK_SYSTEMS)
    for r in per_system:
        assert math.isfinite(r["smape"]) and r["max_lyapunov"] > 0
    summary = {r["forecaster"]: r for r in rows if r["system"].startswith("spearman")}
    assert set(summary) == {"naive", "ridge_ar30", "nbeats_lite"}
    assert -1.0 <= summary["naive"]["rho_smape_lyapunov"] <= 1.0
    assert summary["nbeats_lite"]["smape"] < summary["naive"]["smape"]
    assert (tmp_path / "dysts_runner_quick.csv").exists() and (tmp_path / "dysts_runner_quick.md").exists()
    assert isinstance(dysts_runner.SUMMARY, str) and dysts_runner.SUMMARY
