"""INSR data (paper card `insr`, arXiv 2210.00124): initial conditions, exact references and collocation samples.

No dataset: the network is re-optimised every time step on fresh uniform random samples of the spatial domain.
Offline problems (`name=`):

- `advection1d`: u_t + a u_x = 0 on [-L/2, L/2] (L = 4), Dirichlet 0, Gaussian pulse
  u(x, 0) = exp(-(x - mu)^2 / (2 sigma^2)), mu = -1.5, sigma = 0.1 (official `advection/examples.py` example1);
  exact u(x, t) = u(x - a t, 0) (the pulse stays far from the walls for t <= 12).
- `taylor_green`: 2D inviscid fluid on [-1, 1]^2 (length = 2) with walls, official `fluid/examples.py`:
  X = pi (x + 1), Y = pi (y + 1), u = (sin X cos Y, -cos X sin Y) / pi; a steady solution of the Euler equations
  (nu = 0), so the reference at every time is the initial field and any drift is error.

Grid baseline (context, card): `semi_lagrangian_advection_1d`, linear-interpolation semi-Lagrangian steps on N
cells, numpy.

Batches (DataLoader with batch_size=None):
  train: {"x": (S, dim) uniform samples (fresh every iteration), "x_boundary": (Sb, dim) boundary samples,
          "normal_axis": (Sb,) for 2D: which velocity component is normal to the wall at each boundary sample,
          "u0": (S, out_dim) the initial condition at x (used only while fitting the initial condition)}
  val/test: {"x": (G, dim) evaluation grid, "u": (n_steps + 1, G, out_dim) exact field at t_n = n dt}
"""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch import Tensor
from datamodules.collocation import FreshSampleLoaders
from launch.errors import check_min, check_positive

PROBLEMS = ("advection1d", "taylor_green")


def gaussian_pulse(x: Tensor | np.ndarray, t: float = 0.0, velocity: float = 0.25, centre: float = -1.5,
                   width: float = 0.1):
    """Exact 1D advection of the Gaussian pulse: exp(-(x - centre - a t)^2 / (2 width^2))."""
    lib = torch if isinstance(x, Tensor) else np
    return lib.exp(-((x - centre - velocity * t) ** 2) / (2 * width**2))


def taylor_green_velocity(xy: Tensor) -> Tensor:
    """(..., 2) -> (..., 2): the official rescaled Taylor-Green vortex on [-1, 1]^2 (zero normal velocity on walls)."""
    X, Y = math.pi * (xy[..., 0] + 1), math.pi * (xy[..., 1] + 1)
    return torch.stack([torch.sin(X) * torch.cos(Y), -torch.cos(X) * torch.sin(Y)], dim=-1) / math.pi


def semi_lagrangian_advection_1d(n_cells: int, velocity: float = 0.25, dt: float = 0.05, n_steps: int = 10,
                                 length: float = 4.0, centre: float = -1.5,
                                 width: float = 0.1) -> tuple[np.ndarray, ...]:
    """Grid baseline: n_cells cell centres on [-L/2, L/2], u^{n+1}(x_i) = interp(u^n, x_i - a dt), zero outside.
    Returns (x, u_numeric, u_exact) at t = n_steps dt."""
    h = length / n_cells
    x = -length / 2 + h * (np.arange(n_cells) + 0.5)
    u = gaussian_pulse(x, 0.0, velocity, centre, width)
    for _ in range(n_steps):
        u = np.interp(x - velocity * dt, x, u, left=0.0, right=0.0)
    return x, u, gaussian_pulse(x, n_steps * dt, velocity, centre, width)


class InsrDataModule(FreshSampleLoaders, L.LightningDataModule):
    """Collocation samples for INSR time stepping plus the exact field at every step time for evaluation."""

    def __init__(self, name: str = "advection1d", n_samples: int = 5000, boundary_fraction: float = 0.01,
                 min_boundary: int = 10, length: float = 4.0, velocity: float = 0.25, centre: float = -1.5,
                 width: float = 0.1, dt: float = 0.05, n_steps: int = 240, eval_points: int = 2001,
                 steps_per_epoch: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if name not in PROBLEMS:
            raise ValueError(f"unknown INSR problem {name!r}; available: {', '.join(PROBLEMS)} (offline)")
        if n_samples < 1 or steps_per_epoch < 1:
            raise ValueError(f"n_samples and steps_per_epoch must be >= 1, got {n_samples}, {steps_per_epoch}")
        if dt <= 0 or n_steps < 0:
            raise ValueError(f"need dt > 0 and n_steps >= 0, got dt={dt}, n_steps={n_steps}")
        if name == "taylor_green" and length != 2.0:
            raise ValueError(f"taylor_green lives on [-1, 1]^2: set length=2.0 (got {length})")
        if not 0 <= boundary_fraction <= 1:
            raise ValueError(f"boundary_fraction must lie in [0, 1], got {boundary_fraction}")
        check_min("data", 1, eval_points=eval_points)
        check_min("data", 0, min_boundary=min_boundary)  # 0: boundary_fraction alone sets the boundary samples
        if max(int(n_samples * boundary_fraction), min_boundary) < 1:
            raise ValueError(f"no boundary samples: n_samples x boundary_fraction = {n_samples * boundary_fraction:g} "
                             f"and min_boundary = {min_boundary}; raise either (the boundary loss needs >= 1)")
        check_positive("data", length=length, width=width)
        self.save_hyperparameters()
        self.name, self.n_samples, self.dt, self.n_steps = name, n_samples, dt, n_steps
        self.dim = 1 if name == "advection1d" else 2
        self.out_dim = 1 if name == "advection1d" else 2
        self.generator = torch.Generator().manual_seed(seed)
        self._eval: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------------------------------ problem
    @property
    def domain(self) -> tuple[float, float]:
        return -self.hparams.length / 2, self.hparams.length / 2

    def initial_condition(self, x: Tensor) -> Tensor:
        if self.name == "advection1d":
            hp = self.hparams
            return gaussian_pulse(x, 0.0, hp.velocity, hp.centre, hp.width)
        return taylor_green_velocity(x)

    def exact(self, x: Tensor, t: float) -> Tensor:
        if self.name == "advection1d":
            hp = self.hparams
            return gaussian_pulse(x, t, hp.velocity, hp.centre, hp.width)
        return taylor_green_velocity(x)  # steady Euler solution

    def sample(self) -> dict[str, Tensor]:
        """Fresh uniform samples (S, dim), boundary samples, and u0 at the samples."""
        low, high = self.domain
        g = self.generator
        x = low + (high - low) * torch.rand(self.n_samples, self.dim, generator=g)
        nb = max(int(self.n_samples * self.hparams.boundary_fraction), self.hparams.min_boundary)
        if self.dim == 1:  # the official sample_boundary: the two end points, nb samples in all
            xb = torch.where(torch.rand(nb, 1, generator=g) < 0.5, low, high)
            axis = torch.zeros(nb, dtype=torch.long)
        else:  # nb on the walls x = +-1 (normal: u) and nb on y = +-1 (normal: v)
            s = low + (high - low) * torch.rand(2 * nb, generator=g)
            side = torch.where(torch.rand(2 * nb, generator=g) < 0.5, low, high)
            xb = torch.cat([torch.stack([side[:nb], s[:nb]], 1), torch.stack([s[nb:], side[nb:]], 1)])
            axis = torch.cat([torch.zeros(nb, dtype=torch.long), torch.ones(nb, dtype=torch.long)])
        u0 = self.initial_condition(x).reshape(self.n_samples, self.out_dim)
        return {"x": x, "x_boundary": xb, "normal_axis": axis, "u0": u0}

    def eval_item(self) -> dict[str, Tensor]:
        if self._eval is None:
            low, high = self.domain
            n = self.hparams.eval_points
            if self.dim == 1:
                x = torch.linspace(low, high, n)[:, None]
            else:
                m = max(int(round(math.sqrt(n))), 2)
                g = torch.linspace(low, high, m)
                x = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
            u = torch.stack([self.exact(x, k * self.dt).reshape(x.shape[0], self.out_dim)
                             for k in range(self.n_steps + 1)])
            self._eval = {"x": x, "u": u}
        return self._eval
