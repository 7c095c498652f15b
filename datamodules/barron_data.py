"""Manufactured sparse-Fourier solutions on the torus (card `pde_barron`, designed there: the paper has no data).

Functions on T^d = [0, 2 pi)^d are kept exactly as finite Fourier sums u(x) = sum_k c_k e^{i k.x}: an integer
(K x d) frequency array and complex coefficients, both k and -k present with conjugate coefficients (u real).
A ±k pair is one neuron a cos(k.x + phi) of a 2-layer cosine network, so `width` = number of pairs.

Problem (Euler-Lagrange equation of E(u) = int 1/2 |grad u|^2 + 1/2 u^2 + gamma/4 u^4 - f u):
    -Delta u + u + gamma u^3 = f.
u* = sum_j a_j cos(k_j.x + phi_j): m frequencies with min(s, d) nonzero entries (random coordinates, values ±1 or ±2),
a_j ~ N(0, 1) rescaled so sum |a_j| = amplitude (0.5 keeps 3 gamma ||u*||_inf^2 < 1), phi_j ~ U[0, 2 pi);
f = u* - Delta u* + gamma u*^3, computed exactly in the sparse representation.

The DataModule serves the problems (for the PGD simulator) and, for the Deep Ritz network, Monte-Carlo batches
x ~ U[0, 2 pi)^d with f(x) (train) and test points with u*(x) of problem `ritz_problem`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.collocation import generated_train_loader, own_draw
from launch.errors import check_min, check_positive
from lit_models.common.checks import whole_list

_HASH_WEIGHTS: dict[tuple[int, int], np.ndarray] = {}


def _row_hash(a: np.ndarray, which: int = 0) -> np.ndarray:
    """Random linear 64-bit hash of integer rows (wrapping arithmetic): hash(a + b) = hash(a) + hash(b)."""
    d = a.shape[1]
    key = (d, which)
    if key not in _HASH_WEIGHTS:
        _HASH_WEIGHTS[key] = np.random.default_rng([12345, d, which]).integers(1, 2**62, size=d, dtype=np.int64) | 1
    with np.errstate(over="ignore"):
        return (a.astype(np.int64) * _HASH_WEIGHTS[key]).sum(1)


def unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique rows, inverse index) of an integer array, like np.unique(axis=0) but grouped by a random 64-bit
    linear hash of each row (fast for wide d); the grouping is verified row by row and falls back to
    np.unique(axis=0) on a hash collision, so the result is exact."""
    _, first, inv = np.unique(_row_hash(a), return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    uniq = a[first]
    if not np.array_equal(uniq[inv], a):  # a collision: exact fallback
        uniq, inv = np.unique(a, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
    return uniq, inv


@dataclass
class SparseFourier:
    """u(x) = sum_k c_k exp(i k.x) with integer frequencies `freqs` (K x d) and complex `coefs` (K,)."""

    freqs: np.ndarray
    coefs: np.ndarray

    @property
    def dim(self) -> int:
        return self.freqs.shape[1]

    @classmethod
    def zeros(cls, d: int) -> "SparseFourier":
        return cls(np.zeros((0, d), dtype=np.int16), np.zeros(0, dtype=np.complex128))

    @classmethod
    def from_cosines(cls, ks: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> "SparseFourier":
        """sum_j a_j cos(k_j.x + phi_j) = sum_j a_j/2 (e^{i phi_j} e^{i k_j.x} + e^{-i phi_j} e^{-i k_j.x})."""
        ks = np.asarray(ks, dtype=np.int16)
        c = 0.5 * np.asarray(amps) * np.exp(1j * np.asarray(phases))
        return cls(np.concatenate([ks, -ks]), np.concatenate([c, np.conj(c)])).merged()

    def merged(self) -> "SparseFourier":
        """Sum the coefficients of equal frequencies (rows grouped exactly; see `unique_rows`)."""
        if len(self.coefs) == 0:
            return self
        uniq, inv = unique_rows(self.freqs)
        n = len(uniq)
        c = np.bincount(inv, self.coefs.real, n) + 1j * np.bincount(inv, self.coefs.imag, n)
        return SparseFourier(uniq, c)

    def pair_ids(self) -> np.ndarray:
        """Index of the ±k pair of each row (k and -k share it; k = 0 is its own pair)."""
        f = self.freqs
        nz = f != 0
        first = np.where(nz.any(1), f[np.arange(len(f)), nz.argmax(1)], 0)
        canon = f * np.where(first < 0, -1, 1)[:, None]
        return unique_rows(canon)[1]

    def pruned(self, tau: float = 1e-6, max_pairs: int | None = None) -> "SparseFourier":
        """Drop ±k pairs whose largest |c| <= tau and keep at most `max_pairs` pairs (largest first); pairs are
        kept or dropped together so u stays real."""
        if len(self.coefs) == 0:
            return self
        ids = self.pair_ids()
        mag = np.zeros(ids.max() + 1)
        np.maximum.at(mag, ids, np.abs(self.coefs))
        keep_pair = mag > tau
        if max_pairs is not None and keep_pair.sum() > max_pairs:
            order = np.argsort(-mag, kind="stable")[:max_pairs]
            keep_pair = np.zeros_like(keep_pair)
            keep_pair[order] = True
        keep = keep_pair[ids]
        return SparseFourier(self.freqs[keep], self.coefs[keep])

    def __add__(self, other: "SparseFourier") -> "SparseFourier":
        return SparseFourier(np.concatenate([self.freqs, other.freqs]),
                             np.concatenate([self.coefs, other.coefs])).merged()

    def __neg__(self) -> "SparseFourier":
        return SparseFourier(self.freqs, -self.coefs)

    def __sub__(self, other: "SparseFourier") -> "SparseFourier":
        return self + (-other)

    def scale(self, s: float) -> "SparseFourier":
        return SparseFourier(self.freqs, s * self.coefs)

    def multiply(self, other: "SparseFourier", tau: float = 1e-6, max_pairs: int | None = None) -> "SparseFourier":
        """Exact product: all pairwise frequency sums with coefficient products, merged, then pruned.

        Equal sums k_i + q_j are grouped without forming the (K1 K2 x d) array: the row hash is linear, so
        hash(k_i + q_j) = hash(k_i) + hash(q_j); a second independent hash must agree within every group (else the
        explicit rows are grouped exactly with `unique_rows`)."""
        if len(self.coefs) == 0 or len(other.coefs) == 0:
            return SparseFourier.zeros(self.dim)
        c = (self.coefs[:, None] * other.coefs[None, :]).reshape(-1)
        with np.errstate(over="ignore"):
            h1 = (_row_hash(self.freqs, 0)[:, None] + _row_hash(other.freqs, 0)[None, :]).reshape(-1)
            h2 = (_row_hash(self.freqs, 1)[:, None] + _row_hash(other.freqs, 1)[None, :]).reshape(-1)
        _, first, inv = np.unique(h1, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if np.array_equal(h2[first][inv], h2):
            k2 = len(other.coefs)
            f = self.freqs[first // k2] + other.freqs[first % k2]
            n = len(first)
            coefs = np.bincount(inv, c.real, n) + 1j * np.bincount(inv, c.imag, n)
            return SparseFourier(f, coefs).pruned(tau, max_pairs)
        f = (self.freqs[:, None, :] + other.freqs[None, :, :]).reshape(-1, self.dim)  # pragma: no cover
        return SparseFourier(f, c).merged().pruned(tau, max_pairs)  # pragma: no cover

    def k2(self) -> np.ndarray:
        return (self.freqs.astype(np.float64) ** 2).sum(1)

    def fourier_multiplier(self, m: np.ndarray) -> "SparseFourier":
        return SparseFourier(self.freqs, self.coefs * m)

    def neg_laplacian(self) -> "SparseFourier":
        """-Delta: c_k -> |k|^2 c_k."""
        return self.fourier_multiplier(self.k2())

    def helmholtz(self) -> "SparseFourier":
        """(I - Delta): c_k -> (1 + |k|^2) c_k."""
        return self.fourier_multiplier(1.0 + self.k2())

    def helmholtz_inverse(self) -> "SparseFourier":
        """(I - Delta)^{-1}: c_k -> c_k / (1 + |k|^2) (the H^1 Riesz map, the PGD preconditioner)."""
        return self.fourier_multiplier(1.0 / (1.0 + self.k2()))

    @property
    def width(self) -> int:
        """Neurons of the equivalent 2-layer cosine network = distinct ±k pairs."""
        return 0 if len(self.coefs) == 0 else int(self.pair_ids().max() + 1)

    def barron_norm(self) -> float:
        """Spectral Barron norm sum_k (1 + |k|) |c_k| over the complex exponential basis (both ±k counted)."""
        return float(((1.0 + np.sqrt(self.k2())) * np.abs(self.coefs)).sum())

    def l2_sq(self) -> float:
        """||u||^2_{L2} / (2 pi)^d by Parseval."""
        return float((np.abs(self.coefs) ** 2).sum())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Point values at x (N x d)."""
        return np.real(np.exp(1j * (np.asarray(x) @ self.freqs.T.astype(np.float64))) @ self.coefs)


def relative_l2_error(u: SparseFourier, ref: SparseFourier) -> float:
    """||u - ref||_L2 / ||ref||_L2, exact by Parseval."""
    return float(np.sqrt((u - ref).l2_sq() / ref.l2_sq()))


@dataclass
class BarronProblem:
    """-Delta u + u + gamma u^3 = f on T^d with the exact solution u_star."""

    d: int
    seed: int
    gamma: float
    u_star: SparseFourier
    f: SparseFourier


def nonlinear_operator(u: SparseFourier, gamma: float, tau: float = 0.0, max_pairs: int | None = None
                       ) -> SparseFourier:
    """(I - Delta) u + gamma u^3, the products pruned at tau."""
    cube = u.multiply(u, tau, max_pairs).multiply(u, tau, max_pairs)
    return u.helmholtz() + cube.scale(gamma)


def manufactured_problem(d: int, seed: int, m: int = 4, s: int = 3, amplitude: float = 0.5, gamma: float = 1.0,
                         values: Sequence[int] = (1, 2)) -> BarronProblem:
    """u* with m frequencies of s nonzero entries each (±values), sum |a_j| = amplitude; f exact."""
    if s < 1 or m < 1:
        raise ValueError(f"m and s must be >= 1, got m={m}, s={s}")
    s = min(s, d)  # d = 2: both coordinates
    rng = np.random.default_rng([seed, d])
    ks = np.zeros((m, d), dtype=np.int16)
    for j in range(m):
        idx = rng.choice(d, size=s, replace=False)
        ks[j, idx] = rng.choice(np.asarray(values), size=s) * rng.choice([-1, 1], size=s)
    a = rng.standard_normal(m)
    a *= amplitude / np.abs(a).sum()
    phi = rng.uniform(0, 2 * np.pi, m)
    u_star = SparseFourier.from_cosines(ks, a, phi)
    f = nonlinear_operator(u_star, gamma)  # exact: no pruning
    return BarronProblem(d, seed, gamma, u_star, f)


class _Samples(Dataset):
    """`batches` Monte-Carlo batches of `n` uniform torus points: item i from `default_rng([seed, i])` (a fixed
    evaluation set), or, with `rng` given, the next draws of that generator (training: fresh points every step of
    every epoch)."""

    def __init__(self, problem: BarronProblem, n: int, batches: int, seed: int,
                 rng: np.random.Generator | None = None, datamodule: Any = None) -> None:
        self.problem, self.n, self.batches, self.seed, self.rng = problem, n, batches, seed, rng
        self.datamodule = datamodule  # under DDP each rank keeps its own of the shared generator's draws

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.rng is not None:
            x = own_draw(self.datamodule, lambda: self.rng.uniform(0, 2 * np.pi, (self.n, self.problem.d)))
        else:
            x = np.random.default_rng([self.seed, i]).uniform(0, 2 * np.pi, (self.n, self.problem.d))
        return {"x": torch.tensor(x, dtype=torch.float32),
                "f": torch.tensor(self.problem.f(x), dtype=torch.float32),
                "u": torch.tensor(self.problem.u_star(x), dtype=torch.float32)}


class BarronDataModule(L.LightningDataModule):
    """Manufactured problems for dims x seeds; Monte-Carlo torus samples of problem `ritz_problem` for Deep Ritz."""

    def __init__(self, name: str = "sparse_fourier", dims: Sequence[int] = (2, 16, 128), seeds: Sequence[int] = (0, 1),
                 m: int = 4, s: int | None = 3, amplitude: float = 0.5, gamma: float = 1.0,
                 ritz_problem: int = 0, batch_size: int = 1024, steps_per_epoch: int = 100, n_test: int = 4096,
                 seed: int = 0) -> None:
        super().__init__()
        if name != "sparse_fourier":
            raise ValueError(f"unknown pde_barron dataset {name!r}; available: 'sparse_fourier' (no real data exists)")
        dims, seeds = whole_list("data.dims", dims), whole_list("data.seeds", seeds, low=0)  # numpy seeds are >= 0
        if not 0 <= ritz_problem < len(dims) * len(seeds):
            raise ValueError(f"ritz_problem must index one of the {len(dims) * len(seeds)} problems")
        check_positive("data", amplitude=amplitude)  # NaN too (a NaN loss at the first step)
        check_min("data", 0, gamma=gamma)
        check_min("data", 1, m=m, s=s, batch_size=batch_size, steps_per_epoch=steps_per_epoch, n_test=n_test)
        self.save_hyperparameters()
        self.problems: list[BarronProblem] = []
        self.generator = np.random.default_rng([seed, 0x5A3])  # Deep Ritz training draws (saved in checkpoints)

    def state_dict(self) -> dict:
        return {"generator": self.generator.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.bit_generator.state = state["generator"]

    def setup(self, stage: str | None = None) -> None:
        if self.problems:
            return
        hp = self.hparams
        for d in hp.dims:
            s = hp.s if hp.s is not None else max(1, d // 4)  # full run: dense frequencies s = d / 4
            for sd in hp.seeds:
                self.problems.append(manufactured_problem(d, sd, hp.m, min(s, d), hp.amplitude, hp.gamma))

    @property
    def ritz(self) -> BarronProblem:
        return self.problems[self.hparams.ritz_problem]

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        samples = _Samples(self.ritz, hp.batch_size, hp.steps_per_epoch, hp.seed, self.generator, self)
        return generated_train_loader(samples, self)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Samples(self.ritz, self.hparams.n_test, 1, self.hparams.seed + 7919), batch_size=None)

    def test_dataloader(self) -> DataLoader:  # its own points, apart from validation's
        return DataLoader(_Samples(self.ritz, self.hparams.n_test, 1, self.hparams.seed + 104729), batch_size=None)
