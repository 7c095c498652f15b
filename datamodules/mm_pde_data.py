"""2-D Burgers trajectories for MM-PDE ("Better Neural PDE Solvers Through Data-Free Mesh Movers", ICLR 2024,
official code Peiyannn/MM-PDE): the neural solver learns u(t) -> u(t + dt) on a 48 x 48 grid.

- `burgers2d`: scalar viscous Burgers u_t + 1/2 d_x(u^2) + 1/2 d_y(u^2) = nu (u_xx + u_yy) on the periodic square
  [0, L)^2, pseudo-spectral (rfft2) with the 2/3-rule dealiasing and ETDRK4 (the viscous term exactly, the
  contour-integral coefficients and step of `datamodules.pde_solvers`); a whole batch advances together.
  A y-independent u0 reduces it to the 1-D `datamodules.pinn_data.burgers_reference` (tested).
- `random_smooth_field`: smooth random periodic initial conditions (a few low Fourier modes, unit max amplitude).
- `MMPDEDataModule(name=burgers_offline)` (default, no network): `n_train + n_test` trajectories solved on a
  `solve_grid`^2 grid and sub-sampled to `grid`^2 (as the official code sub-samples 192 -> 48), `n_frames` frames on
  t in [0, t_end]. `name=burgers`: the paper's `burgers_192.npy` (`datamodules.meshes.load_burgers_192`), sub-sampled
  by `sub` in space (mmpde.py: u[:, :, ::4, ::4]), the first `n_burgers_train` trajectories for training (mmpde.py:
  80), the rest for testing. Arrays are stored (n, T, G, G) with [..., j, i] = (y_j, x_i), the layout of the DMM.

Training batches are whole trajectories (B, T, G, G): the module draws the start frame and the unrolling depth
itself (train_helper_2d.training_loop_branch draws them per batch). One epoch is `passes_per_epoch` shuffled passes
over the training trajectories, each cut into batches with a short last one (official: t_res = 31 passes of a
shuffled DataLoader per epoch, mmpde.train: 31 x ceil(80 / 6) = 434 steps; `datamodules.samplers.PassBatchSampler`).
Validation and test batches
are whole held-out trajectories.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from datamodules.pde_solvers import etdrk4_coefficients, etdrk4_step
from datamodules.resumable import ResumableDataLoader
from datamodules.samplers import PassBatchSampler, eval_sampler
from launch.errors import UserError, check_min

__all__ = ["MMPDEDataModule", "burgers2d", "burgers2d_energy", "random_smooth_field"]


def _wavenumbers_2d(n: int, length: float) -> tuple[np.ndarray, np.ndarray]:
    """(ky, kx) for rfft2 of an (n, n) array [y, x]: ky (n, 1), kx (1, n // 2 + 1); Nyquist modes zeroed (odd
    derivatives of a real field)."""
    k = 2.0 * np.pi / length * np.fft.fftfreq(n, 1.0 / n)
    k[n // 2] = 0.0
    kx = 2.0 * np.pi / length * np.arange(n // 2 + 1)
    kx[-1] = 0.0 if n % 2 == 0 else kx[-1]
    return k[:, None], kx[None, :]


def burgers2d(u0: np.ndarray, nu: float, dt: float, n_steps: int, save_every: int = 1,
              length: float = 1.0) -> np.ndarray:
    """Integrate u_t + 1/2 (u^2)_x + 1/2 (u^2)_y = nu Lap(u), periodic on [0, length)^2.

    u0: (n, n) or (B, n, n) real, [..., y, x]. Returns (B, T + 1, n, n) (or (T + 1, n, n)): the initial state and
    the states after save_every, 2 save_every, ..., n_steps steps (T = n_steps // save_every)."""
    u0 = np.asarray(u0, dtype=np.float64)
    squeeze = u0.ndim == 2
    u = u0[None] if squeeze else u0
    n = u.shape[-1]
    if u.shape[-2] != n:
        raise ValueError(f"burgers2d needs square grids, got {u.shape[-2:]}")
    if save_every < 1 or n_steps < save_every:
        raise ValueError(f"need 1 <= save_every <= n_steps, got save_every={save_every}, n_steps={n_steps}")
    ky, kx = _wavenumbers_2d(n, length)
    kfull = 2.0 * np.pi / length * np.fft.fftfreq(n, 1.0 / n)
    lap = -(kfull[:, None] ** 2 + (2.0 * np.pi / length * np.arange(n // 2 + 1))[None, :] ** 2)
    lin = nu * lap
    coefficients = etdrk4_coefficients(lin, dt)
    iy = np.abs(np.fft.fftfreq(n, 1.0 / n))[:, None]
    ix = np.arange(n // 2 + 1)[None, :]
    dealias = (iy < n / 3) & (ix < n / 3)
    div = -0.5j * (kx + ky) * dealias  # -1/2 (d_x + d_y) of the transform of u^2, dealiased

    def nonlinear(vh: np.ndarray) -> np.ndarray:
        w = np.fft.irfft2(vh * dealias, s=(n, n))
        return div * np.fft.rfft2(w * w)

    vh = np.fft.rfft2(u)
    out = [u.copy()]
    for step in range(1, n_steps + 1):
        vh = etdrk4_step(vh, nonlinear, coefficients)
        if step % save_every == 0:
            out.append(np.fft.irfft2(vh, s=(n, n)))
    res = np.stack(out, 1)
    return res[0] if squeeze else res


def burgers2d_energy(u: np.ndarray) -> np.ndarray:
    """Mean of u^2 / 2 over the last two axes (the advection term conserves it; viscosity only dissipates it)."""
    return 0.5 * np.mean(np.asarray(u) ** 2, axis=(-2, -1))


def random_smooth_field(n_fields: int, n: int, seed: int, n_modes: int = 3, amplitude: float = 1.0) -> np.ndarray:
    """(n_fields, n, n) periodic fields: random Fourier coefficients on |k_x|, |k_y| <= n_modes with a 1 / (1 + |k|^2)
    spectrum, zero mean, scaled to max |u| = amplitude. Deterministic by seed."""
    rng = np.random.default_rng(seed)
    s = np.arange(n) / n
    X, Y = np.meshgrid(s, s, indexing="xy")
    ks = [(a, b) for a in range(-n_modes, n_modes + 1) for b in range(-n_modes, n_modes + 1) if (a, b) != (0, 0)]
    out = np.zeros((n_fields, n, n))
    for a, b in ks:
        amp = rng.normal(size=(n_fields, 1, 1)) / (1.0 + a * a + b * b)
        phase = rng.uniform(0, 2 * np.pi, size=(n_fields, 1, 1))
        out += amp * np.cos(2 * np.pi * (a * X + b * Y)[None] + phase)
    out -= out.mean(axis=(1, 2), keepdims=True)
    return amplitude * out / np.abs(out).max(axis=(1, 2), keepdims=True)


class _Trajectories(Dataset):
    def __init__(self, u: np.ndarray) -> None:
        self.u = u

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.u[i], dtype=np.float32))


class MMPDEDataModule(L.LightningDataModule):
    """Burgers trajectories for MM-PDE (see the module docstring)."""

    NAMES = ("burgers_offline", "burgers")

    def __init__(self, name: str = "burgers_offline", n_train: int = 32, n_test: int = 8, grid: int = 48,
                 solve_grid: int = 96, nu: float = 0.01, t_end: float = 1.0, n_frames: int = 31,
                 solver_dt: float = 1.0 / 300, n_modes: int = 3, amplitude: float = 1.0, batch_size: int = 6,
                 passes_per_epoch: int = 31, data_dir: str | None = None, path: str | None = None, sub: int = 4,
                 n_burgers_train: int = 80, seed: int = 0) -> None:
        super().__init__()
        if name not in self.NAMES:
            raise UserError(f"data.name: unknown MM-PDE dataset {name!r}; known: {', '.join(self.NAMES)}")
        check_min("data", 2, grid=grid, solve_grid=solve_grid)
        if name == "burgers_offline":
            if solve_grid % grid:
                raise UserError(f"data.solve_grid ({solve_grid}) must be a multiple of data.grid ({grid})")
            steps = round(t_end / solver_dt)
            if n_frames < 2 or steps % (n_frames - 1):
                raise UserError(f"data: t_end / solver_dt = {steps} steps must split into n_frames - 1 = "
                                f"{n_frames - 1} equal intervals")
        if batch_size < 1 or passes_per_epoch < 1 or sub < 1:
            raise UserError("data.batch_size, data.passes_per_epoch and data.sub must be >= 1")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.train_u: np.ndarray | None = None
        self.test_u: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------------ data
    def _offline(self) -> tuple[np.ndarray, np.ndarray]:
        hp = self.hparams
        n = hp.n_train + hp.n_test
        u0 = random_smooth_field(n, hp.solve_grid, hp.seed, hp.n_modes, hp.amplitude)
        steps = round(hp.t_end / hp.solver_dt)
        u = burgers2d(u0, hp.nu, hp.solver_dt, steps, steps // (hp.n_frames - 1))
        f = hp.solve_grid // hp.grid
        u = u[:, :, ::f, ::f].astype(np.float32)
        return u[:hp.n_train], u[hp.n_train:]

    def _paper_file(self) -> tuple[np.ndarray, np.ndarray]:
        from datamodules.meshes import load_burgers_192

        hp = self.hparams
        src = Path(hp.path) if hp.path else Path(hp.data_dir or ".") / "burgers_192.npy"
        a = load_burgers_192(src)  # a missing, unreadable or misshapen file is a one-line error
        if a.shape[1] < 3:
            raise UserError(f"{src}: needs >= 3 frames per trajectory, got shape {a.shape}")
        if not 1 <= hp.n_burgers_train < a.shape[0]:
            raise UserError(f"{src}: {a.shape[0]} trajectories cannot be split at n_burgers_train="
                            f"{hp.n_burgers_train}")
        u = np.ascontiguousarray(a[:, :, ::hp.sub, ::hp.sub], dtype=np.float32)  # finite: load_burgers_192 checked
        return u[:hp.n_burgers_train], u[hp.n_burgers_train:]

    def setup(self, stage: str | None = None) -> None:
        if self.train_u is not None:
            return
        train_u, test_u = self._offline() if self.hparams.name == "burgers_offline" else self._paper_file()
        if train_u.shape[-1] != self.hparams.grid:
            raise UserError(f"data.grid={self.hparams.grid} but the trajectories are {train_u.shape[-1]} x "
                            f"{train_u.shape[-1]} after sub-sampling (set data.grid to 192 / data.sub)")
        self.train_u, self.test_u = train_u, test_u

    @property
    def grid_size(self) -> int:
        self.setup()
        return int(self.train_u.shape[-1])

    def train_frames(self, max_frames: int, seed: int = 0) -> np.ndarray:
        """Up to `max_frames` training frames (N, G, G), drawn without replacement (to fit a mesh mover on)."""
        self.setup()
        frames = self.train_u.reshape(-1, *self.train_u.shape[-2:])
        idx = np.random.default_rng(seed).permutation(len(frames))[:max_frames]
        return frames[np.sort(idx)]

    # ------------------------------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        ds = _Trajectories(self.train_u)
        batches = PassBatchSampler(SequentialSampler(ds), self.batch_size, passes=self.hparams.passes_per_epoch,
                                   seed=self.hparams.seed, datamodule=self)
        return ResumableDataLoader(ds, batch_sampler=batches, datamodule=self)

    def val_dataloader(self) -> DataLoader:
        dataset = _Trajectories(self.test_u)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=eval_sampler(dataset))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
