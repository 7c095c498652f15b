"""MEDIDA data (paper card `medida`, fast offline default): Kuramoto-Sivashinsky truth vs an imperfect model.

Truth:  u_t = -u u_x - u_xx - u_xxxx on [0, L) periodic (L = 22, N = 128), ETDRK4 with h = 0.05
(Cox & Matthews 2002; phi-function coefficients by the contour-integral average of Kassam & Trefethen 2005).
Model:  u_t = -u u_x - model_uxx u_xx - u_xxxx with model_uxx = 0.8, so the structural model error is -0.2 u_xx.

After a spin-up, `n_snapshots` states u(t_j) are kept `snapshot_every` time units apart. For each one, truth and
model take one step Δt = h from the *same* state; the analysis increment divided by Δt,
    Δu_j / Δt = (u_truth(t_j + Δt) - u_model(t_j + Δt)) / Δt ≈ -0.2 u_xx(t_j),
is the regression target. Observations: a fixed random subset of `sensor_ratio` of the grid points (the same
sensors for every snapshot) with Gaussian noise of `noise` x std(u). The interpolant is fitted on the sensors and
the library of candidate terms is built from its derivatives on the full grid.

Batches (DataLoader with batch_size=None, no batch dimension):
  train: {"x": (n_sensors, 1) coordinates scaled to [0, 1), "u": (n_sensors, S) noisy observations}
  val/test: {"x": (N, 1) grid in [0, 1), "u": (N, S) true states, "derivs": (5, N, S) exact spectral
             u, u_x, u_xx, u_xxx, u_xxxx, "increment": (N, S) Δu/Δt}
"""
from __future__ import annotations

import numpy as np
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


# --------------------------------------------------------------------------------------------- KS solver (ETDRK4)
def ks_wavenumbers(n: int, length: float) -> np.ndarray:
    """Real-FFT wavenumbers 2πk/L, k = 0..n/2."""
    return 2.0 * np.pi * np.fft.rfftfreq(n, d=1.0 / n) / length


class KSETDRK4:
    """Vectorised ETDRK4 stepper for u_t = -u u_x - c2 u_xx - c4 u_xxxx (rows of a (B, N) array are independent).

    Linear part in Fourier space: Lk = c2 k^2 - c4 k^4; nonlinear part N(u) = -1/2 (u^2)_x = -i k/2 FFT(u^2),
    with the 2/3 rule on the product. `nonlinear=False` drops N (the linear equation, solved exactly).
    """

    def __init__(self, n: int = 128, length: float = 22.0, h: float = 0.05, c2: float = 1.0, c4: float = 1.0,
                 nonlinear: bool = True, contour_points: int = 32) -> None:
        self.n, self.length, self.h, self.nonlinear = n, length, h, nonlinear
        k = ks_wavenumbers(n, length)
        self.k = k
        lin = c2 * k**2 - c4 * k**4
        self.E, self.E2 = np.exp(h * lin), np.exp(h * lin / 2)
        r = np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
        LR = h * lin[:, None] + r[None, :]
        self.Q = h * np.real(np.mean((np.exp(LR / 2) - 1) / LR, axis=1))
        self.f1 = h * np.real(np.mean((-4 - LR + np.exp(LR) * (4 - 3 * LR + LR**2)) / LR**3, axis=1))
        self.f2 = h * np.real(np.mean((2 + LR + np.exp(LR) * (-2 + LR)) / LR**3, axis=1))
        self.f3 = h * np.real(np.mean((-4 - 3 * LR - LR**2 + np.exp(LR) * (4 - LR)) / LR**3, axis=1))
        self.g = -0.5j * k
        self.dealias = np.abs(np.fft.rfftfreq(n, d=1.0 / n)) < n / 3

    def _N(self, v: np.ndarray) -> np.ndarray:
        if not self.nonlinear:
            return np.zeros_like(v)
        u = np.fft.irfft(v * self.dealias, n=self.n, axis=-1)
        return self.g * np.fft.rfft(u * u, axis=-1)

    def step_hat(self, v: np.ndarray) -> np.ndarray:
        Nv = self._N(v)
        a = self.E2 * v + self.Q * Nv
        Na = self._N(a)
        b = self.E2 * v + self.Q * Na
        Nb = self._N(b)
        c = self.E2 * a + self.Q * (2 * Nb - Nv)
        Nc = self._N(c)
        return self.E * v + Nv * self.f1 + 2 * (Na + Nb) * self.f2 + Nc * self.f3

    def step(self, u: np.ndarray, steps: int = 1) -> np.ndarray:
        v = np.fft.rfft(u, axis=-1)
        for _ in range(steps):
            v = self.step_hat(v)
        return np.fft.irfft(v, n=self.n, axis=-1)


def spectral_derivatives(u: np.ndarray, length: float, orders: int = 4) -> np.ndarray:
    """(orders + 1, *u.shape): u and its exact spectral x-derivatives up to `orders` (last axis periodic)."""
    n = u.shape[-1]
    ik = 1j * ks_wavenumbers(n, length)
    v = np.fft.rfft(u, axis=-1)
    out = [u]
    for p in range(1, orders + 1):
        vp = v * ik**p
        if n % 2 == 0 and p % 2 == 1:
            vp[..., -1] = 0.0  # odd derivatives of the Nyquist mode
        out.append(np.fft.irfft(vp, n=n, axis=-1))
    return np.stack(out)


def generate_ks(n: int = 128, length: float = 22.0, h: float = 0.05, model_uxx: float = 0.8, n_snapshots: int = 20,
                spinup: float = 200.0, snapshot_every: float = 2.5, seed: int = 0) -> dict[str, np.ndarray]:
    """Truth snapshots (S, N), their one-step increments divided by Δt = h, and the grid."""
    rng = np.random.default_rng(seed)
    x = length * np.arange(n) / n
    u0 = 0.1 * rng.standard_normal(n)
    u0 = np.fft.irfft(np.fft.rfft(u0) * (np.arange(n // 2 + 1) < 8), n=n)  # smooth random initial state
    truth = KSETDRK4(n, length, h, c2=1.0)
    model = KSETDRK4(n, length, h, c2=model_uxx)
    u = truth.step(u0[None], int(round(spinup / h)))
    every = int(round(snapshot_every / h))
    snaps = []
    for _ in range(n_snapshots):
        snaps.append(u[0])
        u = truth.step(u, every)
    snaps = np.stack(snaps)
    increment = (truth.step(snaps) - model.step(snaps)) / h
    return {"x": x, "u": snaps, "increment": increment}


# ------------------------------------------------------------------------------------------------- datamodule
class _Repeat(Dataset):
    def __init__(self, item: dict[str, torch.Tensor], length: int) -> None:
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.item


class MedidaDataModule(L.LightningDataModule):
    """Sparse noisy sensors of KS snapshots (train) and the full-grid truth, derivatives, increments (val/test)."""

    library_terms = ("u", "u_x", "u_xx", "u_xxx", "u_xxxx", "u*u_x", "u^2", "u^3")

    def __init__(self, name: str = "ks", n: int = 128, length: float = 22.0, h: float = 0.05, model_uxx: float = 0.8,
                 n_snapshots: int = 20, spinup: float = 200.0, snapshot_every: float = 2.5,
                 sensor_ratio: float = 0.25, noise: float = 0.001, steps_per_epoch: int = 100, seed: int = 0) -> None:
        super().__init__()
        if name != "ks":
            raise ValueError(f"unknown MEDIDA dataset {name!r}; available: 'ks' (offline Kuramoto-Sivashinsky)")
        if not 0 < sensor_ratio <= 1:
            raise ValueError(f"sensor_ratio must lie in (0, 1], got {sensor_ratio}")
        self.save_hyperparameters()
        self.name, self.n, self.length, self.h = name, n, length, h
        self.n_snapshots, self.sensor_ratio, self.noise = n_snapshots, sensor_ratio, noise
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        # the missing term: truth has -1 u_xx, the model -model_uxx u_xx
        self.true_coefficients = np.array([0.0, 0.0, -(1.0 - model_uxx), 0.0, 0.0, 0.0, 0.0, 0.0])
        self.data: dict[str, np.ndarray] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        hp = self.hparams
        d = generate_ks(hp.n, hp.length, hp.h, hp.model_uxx, hp.n_snapshots, hp.spinup, hp.snapshot_every, hp.seed)
        rng = np.random.default_rng(hp.seed + 1)
        n_sensors = max(1, int(round(self.sensor_ratio * self.n)))
        sensors = np.sort(rng.choice(self.n, size=n_sensors, replace=False))
        obs = d["u"][:, sensors] + self.noise * d["u"].std() * rng.standard_normal((self.n_snapshots, n_sensors))
        d["sensors"], d["obs"] = sensors, obs
        d["derivs"] = spectral_derivatives(d["u"], self.length)
        self.data = d

    @property
    def x_unit(self) -> np.ndarray:
        return np.arange(self.n) / self.n

    def _train_item(self) -> dict[str, torch.Tensor]:
        d = self.data
        return {"x": torch.tensor(self.x_unit[d["sensors"]], dtype=torch.float32)[:, None],
                "u": torch.tensor(d["obs"].T, dtype=torch.float32)}

    def _eval_item(self) -> dict[str, torch.Tensor]:
        d = self.data
        return {"x": torch.tensor(self.x_unit, dtype=torch.float64)[:, None],
                "u": torch.tensor(d["u"].T, dtype=torch.float64),
                "derivs": torch.tensor(d["derivs"].transpose(0, 2, 1), dtype=torch.float64),
                "increment": torch.tensor(d["increment"].T, dtype=torch.float64)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Repeat(self._train_item(), self.steps_per_epoch), batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Repeat(self._eval_item(), 1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Repeat(self._eval_item(), 1), batch_size=None)
