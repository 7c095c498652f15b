"""lit_models/common/dynamics_metrics.py: D_stsp / D_H as functions and as DDP-correct torchmetrics objects."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_models.common.dynamics_metrics import (
    PowerSpectrumDistance,
    StateSpaceDivergence,
    power_spectrum_distance,
    state_space_divergence,
    state_space_divergence_gmm,
)


def _lorenz_like(t: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.arange(t)[:, None] * 0.02
    return np.sin(s * np.array([1.0, 1.7, 2.3]) + rng.uniform(0, 6, 3)) + 0.05 * rng.standard_normal((t, 3))


def test_gtf_module_uses_the_shared_functions():
    import lit_models.dynamics.gtf_plrnn as gtf

    assert gtf.state_space_divergence is state_space_divergence
    assert gtf.power_spectrum_distance is power_spectrum_distance


@pytest.mark.parametrize("metric_cls,fn", [(StateSpaceDivergence, state_space_divergence),
                                           (PowerSpectrumDistance, power_spectrum_distance)])
def test_metric_is_the_mean_over_pairs_and_merges_like_ddp(metric_cls, fn):
    pairs = [(_lorenz_like(seed=k), _lorenz_like(seed=k + 10)) for k in range(4)]
    values = [fn(a, b) for a, b in pairs]
    single = metric_cls()
    for a, b in pairs:
        single.update(torch.from_numpy(a), torch.from_numpy(b))
    assert float(single.compute()) == pytest.approx(np.mean(values), rel=1e-12)
    # two "ranks", each with half the pairs (one as a batched (B, T, N) update): merged states give the same mean
    rank0, rank1 = metric_cls(), metric_cls()
    rank0.update(np.stack([pairs[0][0], pairs[1][0]]), np.stack([pairs[0][1], pairs[1][1]]))
    for a, b in pairs[2:]:
        rank1.update(a, b)
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(np.mean(values), rel=1e-12)
    for state in ("total", "count", "nan_count"):
        assert rank1._reductions[state] is not None  # every state is reduced across processes (sum)


def test_metric_nan_for_a_diverged_free_run_and_bad_shapes():
    x = _lorenz_like()
    m = StateSpaceDivergence()
    m.update(x, x)
    assert float(m.compute()) == pytest.approx(0.0, abs=1e-9)
    m.update(x, x + 100.0)  # nothing inside the truth's range: NaN, counted, and the mean is NaN
    assert int(m.nan_count) == 1 and math.isnan(float(m.compute()))
    assert math.isnan(float(PowerSpectrumDistance().compute()))  # no pairs
    with pytest.raises(ValueError):
        StateSpaceDivergence().update(np.zeros((10, 3)), np.zeros((10, 2)))
    with pytest.raises(ValueError):
        StateSpaceDivergence(n_bins=0)


def test_power_spectrum_distance_of_a_collapsed_free_run_is_maximal():
    """A free run stuck at a fixed point has no power spectrum: D_H = 1 (maximal), never 0 (a perfect score)."""
    x = _lorenz_like()
    collapsed = np.tile(np.array([[0.3, -1.2, 5.0]]), (len(x), 1))
    assert power_spectrum_distance(x, collapsed) == 1.0
    partly = collapsed.copy()
    partly[:, 0] = x[:, 0]  # one live dimension (distance ~0) and two flat ones (1 each)
    assert power_spectrum_distance(x, partly) == pytest.approx(2.0 / 3.0, abs=1e-6)
    assert power_spectrum_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_gmm_state_space_divergence_is_the_official_monte_carlo_kl():
    """N >= 6 (official stsp_measure.jl): one Gaussian (variance D_stsp_scaling = 1) per state, KL by Monte Carlo at
    draws from the true mixture. Two point clouds at distance 1 are N(a, I) vs N(b, I): KL = |a - b|^2 / 2 = 0.5
    exactly (MC std 1/sqrt(20,000) = 0.007 here); identical trajectories give 0; a generated cloud so far away that
    every q underflows in float32 leaves no draw (NaN, as the official filter_outliers leaves an empty mean)."""
    a, b = np.zeros((4000, 6)), np.zeros((4000, 6))
    b[:, 0] = 1.0
    assert state_space_divergence_gmm(a, b, mc_samples=20000) == pytest.approx(0.5, abs=0.03)
    assert state_space_divergence_gmm(a, b, scaling=4.0, mc_samples=20000) == pytest.approx(0.125, abs=0.01)
    x = np.random.default_rng(1).standard_normal((3000, 8)).cumsum(0) / 50
    assert state_space_divergence_gmm(x, x) == 0.0
    assert state_space_divergence(x, x + 0.5) == state_space_divergence_gmm(x, x + 0.5) > 0.3  # N >= 6 -> GMM
    far = b.copy()
    far[:, 0] = 30.0
    assert math.isnan(state_space_divergence_gmm(a, far))
    assert math.isnan(state_space_divergence_gmm(x, np.full_like(x, np.nan)))
