"""Long-term statistics of generated trajectories (GTF paper, Hess et al. ICML 2023, arXiv 2306.04406, Sec. 4 and
App.; official code DurstewitzLab/GTF-shPLRNN `src/measures/stsp_measure.jl`, `pse.jl`):

- D_stsp, the attractor-geometry (state-space) divergence KL(p_true || p_gen) between the two trajectories'
  state-space occupations: a binned histogram (`n_bins` per dimension over the ground truth's min/max +- 0.1 std,
  Laplace smoothing 1e-5) for N < 6 dimensions, a Gaussian-mixture Monte-Carlo estimate for N >= 6.
- D_H, the power-spectrum distance: mean over dimensions of the Hellinger distance between Gaussian-smoothed
  (sigma = 20 frequency bins) normalised power spectra of the z-scored series.

The numpy functions compare one (ground truth, free run) pair of (T, N) arrays. The torchmetrics objects
`StateSpaceDivergence` and `PowerSpectrumDistance` average that value over the pairs they are updated with; their
states are (sum of the per-pair values, number of pairs) reduced with "sum", so under DDP, with every evaluation
segment on exactly one rank, they return the single-process mean. A pair whose value is NaN (a free run that left
the ground truth's range, or diverged) is counted in `nan_count` and makes the mean NaN (as a plain mean would):
a diverged model must not look good.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "PowerSpectrumDistance",
    "StateSpaceDivergence",
    "power_spectrum_distance",
    "state_space_divergence",
    "state_space_divergence_binned",
    "state_space_divergence_gmm",
]


# ------------------------------------------------------------------------------------------------ functions
def state_space_divergence_binned(x_true: np.ndarray, x_gen: np.ndarray, n_bins: int = 30,
                                  smoothing: float = 1e-5) -> float:
    """D_stsp = KL(p_true || p_gen) of state-space occupation histograms, `n_bins` per dimension over the ground
    truth's min/max +- 0.1 std, Laplace smoothing. Generated points outside the range are dropped; NaN when no
    generated point falls inside (card)."""
    x_true, x_gen = np.asarray(x_true, np.float64), np.asarray(x_gen, np.float64)
    std = x_true.std(0)
    lo, hi = x_true.min(0) - 0.1 * std, x_true.max(0) + 0.1 * std
    width = (hi - lo) / n_bins
    n_dims = x_true.shape[1]

    def flat_counts(x):
        x = x[np.all(np.isfinite(x), axis=1)]
        idx = np.floor((x - lo) / width).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < n_bins), axis=1)
        flat = np.ravel_multi_index(tuple(idx[inside].T), (n_bins,) * n_dims)
        return flat, int(inside.sum())

    t_flat, t_n = flat_counts(x_true)
    g_flat, g_n = flat_counts(x_gen)
    if g_n == 0:
        return float("nan")
    total_bins = float(n_bins) ** n_dims
    keys, inv = np.unique(np.concatenate([t_flat, g_flat]), return_inverse=True)
    ct = np.bincount(inv[: len(t_flat)], minlength=len(keys)).astype(np.float64)
    cg = np.bincount(inv[len(t_flat):], minlength=len(keys)).astype(np.float64)
    p = (ct + smoothing) / (t_n + smoothing * total_bins)
    q = (cg + smoothing) / (g_n + smoothing * total_bins)
    kl = float(np.sum(p * np.log(p / q)))
    # bins occupied by neither: p and q both equal their smoothing mass
    p0, q0 = smoothing / (t_n + smoothing * total_bins), smoothing / (g_n + smoothing * total_bins)
    kl += (total_bins - len(keys)) * p0 * math.log(p0 / q0)
    return kl


def state_space_divergence_gmm(x_true: np.ndarray, x_gen: np.ndarray, scaling: float = 1.0, max_points: int = 10000,
                               mc_samples: int = 1000, seed: int = 0) -> float:
    """D_stsp for N >= 6 (official `stsp_measure.jl`; Monte-Carlo KL of Hershey & Olsen 2007): p and q are Gaussian
    mixtures with one component of covariance `scaling` I (the official D_stsp_scaling is the variance sigma^2,
    default 1) on each of the first `max_points` true and generated states; KL(p || q) is the mean of log p - log q
    at `mc_samples` draws from p (a random true state plus N(0, sigma^2 I) noise, seeded here). Densities are taken in
    float32 as there, and draws where either underflows to 0 are dropped (the official `filter_outliers`); no draw
    left gives NaN."""
    n = min(len(x_true), max_points)
    x_true = np.asarray(x_true, np.float64)[:n]
    x_gen = np.asarray(x_gen, np.float64)[:n]
    if not np.all(np.isfinite(x_gen)):
        return float("nan")
    sigma = math.sqrt(scaling)
    rng = np.random.default_rng(seed)
    samples = x_true[rng.integers(0, n, mc_samples)] + sigma * rng.standard_normal((mc_samples, x_true.shape[1]))

    def likelihood(centres: np.ndarray) -> np.ndarray:
        sq = (samples**2).sum(1)[:, None] + (centres**2).sum(1)[None, :] - 2.0 * samples @ centres.T
        density = np.exp(-0.5 * np.maximum(sq, 0.0) / scaling).astype(np.float32) / np.float32(sigma) ** x_true.shape[1]
        return density.sum(1, dtype=np.float32) / len(centres)

    p, q = likelihood(x_true), likelihood(x_gen)
    keep = (p > 0) & (q > 0)
    if not keep.any():
        return float("nan")
    return float(np.mean(np.log(p[keep].astype(np.float64)) - np.log(q[keep].astype(np.float64))))


def state_space_divergence(x_true: np.ndarray, x_gen: np.ndarray, n_bins: int = 30) -> float:
    """D_stsp: the binned estimate for N < 6 dimensions, the Gaussian-mixture estimate for N >= 6 (paper)."""
    if np.asarray(x_true).shape[1] >= 6:
        return state_space_divergence_gmm(x_true, x_gen)
    return state_space_divergence_binned(x_true, x_gen, n_bins)


def power_spectrum_distance(x_true: np.ndarray, x_gen: np.ndarray, smoothing: float = 20.0) -> float:
    """D_H: mean over dimensions of the Hellinger distance between Gaussian-smoothed (sigma = `smoothing`
    frequency bins), normalised power spectra of the z-scored series. A dimension whose series is constant (a
    collapsed free run: no power spectrum to normalise) scores the maximal distance 1 (the official code gets NaN
    there and drops the run from its summary; 0 - a perfect score - would flatter a collapsed model)."""
    from scipy.ndimage import gaussian_filter1d

    x_true, x_gen = np.asarray(x_true, np.float64), np.asarray(x_gen, np.float64)
    if not np.all(np.isfinite(x_gen)):
        return float("nan")
    t = min(len(x_true), len(x_gen))
    dists = []
    for d in range(x_true.shape[1]):
        spectra = []
        for s in (x_true[:t, d], x_gen[:t, d]):
            if s.std() <= 1e-12 * (1.0 + np.abs(s).max()):
                break  # constant series: no spectrum
            s = (s - s.mean()) / (s.std() + 1e-12)
            ps = np.abs(np.fft.rfft(s)) ** 2
            ps = gaussian_filter1d(ps, smoothing)
            spectra.append(ps / ps.sum())
        if len(spectra) < 2:
            dists.append(1.0)
            continue
        bc = np.sum(np.sqrt(spectra[0] * spectra[1]))
        dists.append(math.sqrt(max(0.0, 1.0 - bc)))
    return float(np.mean(dists))


# ------------------------------------------------------------------------------------------------ torchmetrics
def _pairs(x_true: Tensor | np.ndarray, x_gen: Tensor | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(T, N) or (B, T, N) tensors/arrays -> a list of float64 numpy (T, N) pairs."""
    def arr(x):
        if isinstance(x, Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
        return np.asarray(x, np.float64)

    a, b = arr(x_true), arr(x_gen)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"expected (T, N) or (B, T, N) pairs with matching B and N, got {a.shape} and {b.shape}")
    return list(zip(a, b))


class _PairMean(Metric):
    """Mean of a per-pair value; states (sum, count, nan_count) reduced with "sum" (DDP-correct)."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("nan_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _value(self, x_true: np.ndarray, x_gen: np.ndarray) -> float:
        raise NotImplementedError

    def update(self, x_true: Tensor | np.ndarray, x_gen: Tensor | np.ndarray) -> None:
        """x_true, x_gen: (T, N) or (B, T, N) ground truth and generated trajectories (one pair per row)."""
        for a, b in _pairs(x_true, x_gen):
            v = self._value(a, b)
            if math.isnan(v):
                self.nan_count += 1
            else:
                self.total += v
            self.count += 1

    def compute(self) -> Tensor:
        if self.count == 0 or self.nan_count > 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.count


class StateSpaceDivergence(_PairMean):
    """D_stsp (attractor geometry), averaged over (ground truth, free run) pairs; binned with `n_bins` per dimension
    for N < 6, Gaussian mixture for N >= 6 (GTF paper)."""

    def __init__(self, n_bins: int = 30, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)

    def _value(self, x_true: np.ndarray, x_gen: np.ndarray) -> float:
        return state_space_divergence(x_true, x_gen, self.n_bins)


class PowerSpectrumDistance(_PairMean):
    """D_H (Hellinger distance of smoothed power spectra, mean over dimensions), averaged over pairs (GTF paper)."""

    def __init__(self, smoothing: float = 20.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not float(smoothing) > 0:
            raise ValueError(f"smoothing must be > 0, got {smoothing}")
        self.smoothing = float(smoothing)

    def _value(self, x_true: np.ndarray, x_gen: np.ndarray) -> float:
        return power_spectrum_distance(x_true, x_gen, self.smoothing)


class SymbolicAccuracy(Metric):
    """Fraction of symbolic predictions judged correct (PROSE, Sun et al. 2023, Sec. 4: the share of decoded
    expressions that are valid, or whose skeleton is exact; also per-token accuracy under teacher forcing). `update`
    takes one boolean per prediction; the states (hits, total) are sums, so the value under DDP equals the value over
    all predictions in one process."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        """correct: booleans (any shape), one per prediction (or per token)."""
        correct = torch.as_tensor(correct, device=self.hits.device).reshape(-1).bool()
        self.hits += int(correct.sum())
        self.total += correct.numel()

    def compute(self) -> Tensor:
        if self.total == 0:
            return torch.tensor(float("nan"), device=self.hits.device)
        return self.hits.double() / self.total
