"""PIG data (paper card `pig`, arXiv 2412.05994): PDE reference solutions and uniform collocation sampling.

Offline problems (`name=`), no download. Coordinates are columns in the order of `PROBLEMS[name].coords`:

- `helmholtz2d` (official Helmholtz2d/ground_truth.py, data_generator.py), columns (x, y): Δu + λ u = q on
  [-1, 1]^2 with u = sin(a1 π y) sin(a2 π x) (a1 = 4, a2 = 1, λ = 1), so q = (λ - (a1 π)^2 - (a2 π)^2) u, and the
  Dirichlet data g = u on the boundary (zero for integer a1, a2). Other frequencies: override a1 / a2.
- `allen_cahn`, columns (t, x): u_t - 1e-4 u_xx + 5 u^3 - 5 u = 0, x in [-1, 1] periodic, t in [0, 1],
  u(0, x) = x^2 cos(π x). Reference: the ETDRK4 spectral solution shared with the causal PINN
  (`datamodules.pinn_data.allen_cahn_reference`, `ac_modes` Fourier modes, step `ac_dt`, `ac_snapshots` times);
  evaluation on every `eval_stride`-th snapshot and grid point. The official PIG repository has no Allen-Cahn code.
- `flow_mixing3d` (official Flow_Mixing3d/utils/data_generators.py + data_utils.py; facts only), columns (t, x, y):
  u_t + a u_x + b u_y = 0 on t in [0, 4], x, y in [-4, 4], with the rotating velocity field
  r = sqrt(x^2 + y^2), v_t = sech^2(r) tanh(r), ω = v_t / (v_max r), a = -ω y, b = ω x (v_max = 0.385), and the
  closed form u = -tanh(y/2 cos(ω t) - x/2 sin(ω t)). Initial points at t = 0, boundary points on the four sides
  x = ±4, y = ±4 (data = the closed form); evaluation on an `eval_grid`^3 linspace grid (official nc_test = 50).

Training batches are fresh uniform draws (the official Helmholtz code re-samples every iteration, the flow-mixing
code every 100 iterations: `resample_every`). Batches (DataLoader with batch_size=None):
  train, helmholtz2d: {"x": (B, 2) interior, "q": (B, 1) source, "x_boundary": (4 nb, 2), "g": (4 nb, 1)}
  train, allen_cahn: {"x": (B, 2) interior (t, x), "x_initial": (ni, 2) at t = 0, "u_initial": (ni, 1),
                      "x_left": (nb, 2) at x = -1, "x_right": (nb, 2) at x = +1 (same times)}
  train, flow_mixing3d: {"x": (B, 3), "a": (B, 1), "b": (B, 1), "x_initial": (ni, 3), "u_initial": (ni, 1),
                         "x_boundary": (4 nb, 3), "g": (4 nb, 1)}
  val/test: {"x": (P, d) grid points, "u": (P, 1) exact / reference, "shape": the grid shape (long tensor)}
    helmholtz2d: G x G (rows y, columns x); allen_cahn: T x X (rows t, columns x); flow_mixing3d: G x G x G (t, x, y).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor

from datamodules.collocation import FreshSampleLoaders


@dataclass(frozen=True)
class Problem:
    """A PIG benchmark: coordinate names and their box (the network maps it to [-1, 1]^d)."""

    coords: tuple[str, ...]
    domain: tuple[tuple[float, float], ...]

    @property
    def dim(self) -> int:
        return len(self.coords)


PROBLEMS = {
    "helmholtz2d": Problem(("x", "y"), ((-1.0, 1.0), (-1.0, 1.0))),
    "allen_cahn": Problem(("t", "x"), ((0.0, 1.0), (-1.0, 1.0))),
    "flow_mixing3d": Problem(("t", "x", "y"), ((0.0, 4.0), (-4.0, 4.0), (-4.0, 4.0))),
}

AC_DIFFUSION, AC_REACTION = 1e-4, 5.0  # u_t = d u_xx + r (u - u^3)
FLOW_MIXING_VMAX = 0.385               # official flow_mixing3d_pig.sh --vmax


# ------------------------------------------------------------------------------------------------ Helmholtz 2D


def helmholtz_exact(x: Tensor, a1: float = 4.0, a2: float = 1.0) -> Tensor:
    """u(x, y) = sin(a1 π y) sin(a2 π x); x: (..., 2) columns (x, y) -> (..., 1)."""
    return (torch.sin(a1 * math.pi * x[..., 1]) * torch.sin(a2 * math.pi * x[..., 0]))[..., None]


def helmholtz_source(x: Tensor, a1: float = 4.0, a2: float = 1.0, coefficient: float = 1.0) -> Tensor:
    """q = Δu + λ u = (λ - (a1 π)^2 - (a2 π)^2) u for the exact u."""
    return (coefficient - (a1 * math.pi) ** 2 - (a2 * math.pi) ** 2) * helmholtz_exact(x, a1, a2)


# ------------------------------------------------------------------------------------------------ Allen-Cahn


def allen_cahn_initial(x: Tensor) -> Tensor:
    """u(0, x) = x^2 cos(π x); x: (...,) -> (...,)."""
    return x**2 * torch.cos(math.pi * x)


@functools.lru_cache(maxsize=4)
def _allen_cahn_reference(n_modes: int, dt: float, n_snapshots: int) -> dict[str, np.ndarray]:
    from datamodules.pinn_data import allen_cahn_reference

    return allen_cahn_reference(n_modes, dt, 1.0, n_snapshots, diffusion=AC_DIFFUSION, reaction=AC_REACTION)


def allen_cahn_grid(n_modes: int = 512, dt: float = 1e-4, n_snapshots: int = 201,
                    stride: int = 1) -> dict[str, Tensor]:
    """The ETDRK4 reference (cached per process) on every `stride`-th time and grid point: {"t": (T,), "x": (X,),
    "u": (T, X)} in float64 (x in [-1, 1): the periodic grid without its right end)."""
    ref = _allen_cahn_reference(n_modes, dt, n_snapshots)
    return {k: torch.from_numpy(np.ascontiguousarray(v[::stride] if k != "u" else v[::stride, ::stride]))
            for k, v in ref.items()}


# ------------------------------------------------------------------------------------------------ flow mixing 3D


def flow_mixing_velocity(x: Tensor, y: Tensor, v_max: float = FLOW_MIXING_VMAX) -> tuple[Tensor, Tensor, Tensor]:
    """ω(r) = v_t / (v_max r) with v_t = sech^2(r) tanh(r), r = sqrt(x^2 + y^2), and the velocity a = -ω y, b = ω x.
    At r = 0 the limit tanh(r) / r -> 1 is used (the official formula divides by r)."""
    r = torch.sqrt(x * x + y * y)
    small = r < 1e-6
    r_safe = torch.where(small, torch.ones_like(r), r)
    tanh_over_r = torch.where(small, 1.0 - r * r / 3, torch.tanh(r_safe) / r_safe)
    omega = tanh_over_r / torch.cosh(r) ** 2 / v_max
    return omega, -omega * y, omega * x


def flow_mixing_exact(x: Tensor, v_max: float = FLOW_MIXING_VMAX) -> Tensor:
    """u(t, x, y) = -tanh(y/2 cos(ω t) - x/2 sin(ω t)); x: (..., 3) columns (t, x, y) -> (..., 1)."""
    t, xx, yy = x[..., 0], x[..., 1], x[..., 2]
    omega = flow_mixing_velocity(xx, yy, v_max)[0]
    return (-torch.tanh(yy / 2 * torch.cos(omega * t) - xx / 2 * torch.sin(omega * t)))[..., None]


# ------------------------------------------------------------------------------------------------ datamodule


class PigDataModule(FreshSampleLoaders, L.LightningDataModule):
    """Fresh uniform collocation / initial / boundary points; the exact (or reference) solution on a grid."""

    def __init__(self, name: str = "helmholtz2d", a1: float = 4.0, a2: float = 1.0, coefficient: float = 1.0,
                 n_collocation: int = 10000, n_boundary: int = 10000, n_initial: int | None = None,
                 eval_grid: int = 250, steps_per_epoch: int = 1000, resample_every: int = 1,
                 v_max: float = FLOW_MIXING_VMAX, ac_modes: int = 512, ac_dt: float = 1e-3, ac_snapshots: int = 201,
                 eval_stride: int = 1, seed: int = 0) -> None:
        super().__init__()
        if name not in PROBLEMS:
            raise ValueError(f"unknown PIG problem {name!r}; available: {', '.join(PROBLEMS)} (offline)")
        if n_collocation < 1 or n_boundary < 1 or eval_grid < 2 or steps_per_epoch < 1:
            raise ValueError("n_collocation, n_boundary, steps_per_epoch must be >= 1 and eval_grid >= 2; got "
                             f"{n_collocation}, {n_boundary}, {steps_per_epoch}, {eval_grid}")
        if (n_initial is not None and n_initial < 1) or resample_every < 1 or eval_stride < 1 or v_max <= 0:
            raise ValueError(f"need n_initial >= 1 (or null), resample_every >= 1, eval_stride >= 1, v_max > 0; got "
                             f"{n_initial}, {resample_every}, {eval_stride}, {v_max}")
        self.save_hyperparameters()
        self.name, self.problem = name, PROBLEMS[name]
        self.n_initial = n_initial if n_initial is not None else n_boundary
        self.generator = torch.Generator().manual_seed(seed)
        self._eval: dict[str, Tensor] | None = None
        self._cached: dict[str, Tensor] | None = None
        self._draws = 0

    # ---- closed forms
    def exact(self, x: Tensor) -> Tensor:
        if self.name == "helmholtz2d":
            return helmholtz_exact(x, self.hparams.a1, self.hparams.a2)
        if self.name == "flow_mixing3d":
            return flow_mixing_exact(x, self.hparams.v_max)
        raise ValueError("allen_cahn has no closed form; use eval_item() (the ETDRK4 reference)")

    def source(self, x: Tensor) -> Tensor:
        hp = self.hparams
        return helmholtz_source(x, hp.a1, hp.a2, hp.coefficient)

    def _uniform(self, n: int) -> Tensor:
        low = torch.tensor([lo for lo, _ in self.problem.domain])
        high = torch.tensor([hi for _, hi in self.problem.domain])
        return low + (high - low) * torch.rand(n, self.problem.dim, generator=self.generator)

    # ---- training batches
    def sample(self) -> dict[str, Tensor]:
        """A fresh batch (or the previous one when `resample_every` > 1 and it is not yet due)."""
        if self._cached is None or self._draws % self.hparams.resample_every == 0:
            self._cached = self._draw()
        self._draws += 1
        return self._cached

    def _draw(self) -> dict[str, Tensor]:
        hp, g = self.hparams, self.generator
        nb, ni = hp.n_boundary, self.n_initial
        x = self._uniform(hp.n_collocation)
        if self.name == "helmholtz2d":
            s = 2 * torch.rand(4, nb, generator=g) - 1
            one = torch.ones(nb)
            xb = torch.cat([torch.stack([s[0], one], 1), torch.stack([-one, s[1]], 1),     # north y = 1, west x = -1
                            torch.stack([s[2], -one], 1), torch.stack([one, s[3]], 1)])    # south y = -1, east x = 1
            return {"x": x, "q": self.source(x), "x_boundary": xb, "g": self.exact(xb)}
        if self.name == "allen_cahn":
            xi = torch.stack([torch.zeros(ni), 2 * torch.rand(ni, generator=g) - 1], 1)
            tb = torch.rand(nb, generator=g)
            one = torch.ones(nb)
            return {"x": x, "x_initial": xi, "u_initial": allen_cahn_initial(xi[:, 1:]),
                    "x_left": torch.stack([tb, -one], 1), "x_right": torch.stack([tb, one], 1)}
        # flow_mixing3d
        _, a, b = flow_mixing_velocity(x[:, 1], x[:, 2], hp.v_max)
        xi = self._uniform(ni)
        xi[:, 0] = 0.0
        side = self._uniform(4 * nb).reshape(4, nb, 3)
        side[0, :, 1], side[1, :, 1], side[2, :, 2], side[3, :, 2] = -4.0, 4.0, -4.0, 4.0  # x = -4, 4, y = -4, 4
        xb = side.reshape(4 * nb, 3)
        return {"x": x, "a": a[:, None], "b": b[:, None], "x_initial": xi, "u_initial": self.exact(xi),
                "x_boundary": xb, "g": self.exact(xb)}

    # ---- evaluation grid
    def eval_item(self) -> dict[str, Tensor]:
        if self._eval is None:
            hp = self.hparams
            if self.name == "helmholtz2d":
                t = torch.linspace(-1, 1, hp.eval_grid)
                xx, yy = torch.meshgrid(t, t, indexing="xy")  # rows: y, columns: x
                x = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
                self._eval = {"x": x, "u": self.exact(x), "shape": torch.tensor([hp.eval_grid, hp.eval_grid])}
            elif self.name == "allen_cahn":
                ref = allen_cahn_grid(hp.ac_modes, hp.ac_dt, hp.ac_snapshots, hp.eval_stride)
                tt, xx = torch.meshgrid(ref["t"], ref["x"], indexing="ij")  # rows: t, columns: x
                x = torch.stack([tt.reshape(-1), xx.reshape(-1)], 1).float()
                self._eval = {"x": x, "u": ref["u"].reshape(-1, 1).float(), "shape": torch.tensor(ref["u"].shape)}
            else:
                g = hp.eval_grid
                axes = [torch.linspace(lo, hi, g) for lo, hi in self.problem.domain]
                mesh = torch.meshgrid(*axes, indexing="ij")  # (t, x, y) as in the official test generator
                x = torch.stack([m.reshape(-1) for m in mesh], 1)
                self._eval = {"x": x, "u": self.exact(x), "shape": torch.tensor([g, g, g])}
        return self._eval
