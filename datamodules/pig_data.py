"""PIG data (paper card `pig`, arXiv 2412.05994): closed-form PDE solutions and uniform collocation sampling.

Offline problems (`name=`), no download:

- `helmholtz2d` (official Helmholtz2d/ground_truth.py, data_generator.py): Δu + λ u = q on [-1, 1]^2 with
  u = sin(a1 π y) sin(a2 π x) (a1 = 4, a2 = 1, λ = 1), so q = (λ - (a1 π)^2 - (a2 π)^2) u, and the Dirichlet
  data g = u on the boundary (zero for integer a1, a2). Coordinates are stored as columns (x, y).
  Other frequencies: override a1 / a2.

Every training batch is a fresh draw (the official code re-samples every iteration when `--random-f` is set):
n_collocation interior points uniform in the square and n_boundary points on each of the four edges.

Batches (DataLoader with batch_size=None):
  train: {"x": (B, 2) interior points, "q": (B, 1) source, "x_boundary": (4 nb, 2), "g": (4 nb, 1) boundary data}
  val/test: {"x": (G^2, 2) uniform grid (linspace(-1, 1, G) in each coordinate), "u": (G^2, 1) exact solution}
"""
from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor
from datamodules.collocation import FreshSampleLoaders

PROBLEMS = ("helmholtz2d",)


def helmholtz_exact(x: Tensor, a1: float = 4.0, a2: float = 1.0) -> Tensor:
    """u(x, y) = sin(a1 π y) sin(a2 π x); x: (..., 2) columns (x, y) -> (..., 1)."""
    return (torch.sin(a1 * math.pi * x[..., 1]) * torch.sin(a2 * math.pi * x[..., 0]))[..., None]


def helmholtz_source(x: Tensor, a1: float = 4.0, a2: float = 1.0, coefficient: float = 1.0) -> Tensor:
    """q = Δu + λ u = (λ - (a1 π)^2 - (a2 π)^2) u for the exact u."""
    return (coefficient - (a1 * math.pi) ** 2 - (a2 * math.pi) ** 2) * helmholtz_exact(x, a1, a2)


class PigDataModule(FreshSampleLoaders, L.LightningDataModule):
    """Fresh uniform collocation + boundary points each step; the exact solution on a grid for evaluation."""

    def __init__(self, name: str = "helmholtz2d", a1: float = 4.0, a2: float = 1.0, coefficient: float = 1.0,
                 n_collocation: int = 10000, n_boundary: int = 10000, eval_grid: int = 250,
                 steps_per_epoch: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if name not in PROBLEMS:
            raise ValueError(f"unknown PIG problem {name!r}; available: {', '.join(PROBLEMS)} (offline, closed form)")
        if n_collocation < 1 or n_boundary < 1 or eval_grid < 2 or steps_per_epoch < 1:
            raise ValueError("n_collocation, n_boundary, steps_per_epoch must be >= 1 and eval_grid >= 2; got "
                             f"{n_collocation}, {n_boundary}, {steps_per_epoch}, {eval_grid}")
        self.save_hyperparameters()
        self.name = name
        self.generator = torch.Generator().manual_seed(seed)
        self._eval: dict[str, Tensor] | None = None

    def exact(self, x: Tensor) -> Tensor:
        return helmholtz_exact(x, self.hparams.a1, self.hparams.a2)

    def source(self, x: Tensor) -> Tensor:
        hp = self.hparams
        return helmholtz_source(x, hp.a1, hp.a2, hp.coefficient)

    def sample(self) -> dict[str, Tensor]:
        hp, g = self.hparams, self.generator
        x = 2 * torch.rand(hp.n_collocation, 2, generator=g) - 1
        s = 2 * torch.rand(4, hp.n_boundary, generator=g) - 1
        one = torch.ones(hp.n_boundary)
        xb = torch.cat([torch.stack([s[0], one], 1), torch.stack([-one, s[1]], 1),     # north y = 1, west x = -1
                        torch.stack([s[2], -one], 1), torch.stack([one, s[3]], 1)])    # south y = -1, east x = 1
        return {"x": x, "q": self.source(x), "x_boundary": xb, "g": self.exact(xb)}

    def eval_item(self) -> dict[str, Tensor]:
        if self._eval is None:
            t = torch.linspace(-1, 1, self.hparams.eval_grid)
            xx, yy = torch.meshgrid(t, t, indexing="xy")  # rows: y, columns: x
            x = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
            self._eval = {"x": x, "u": self.exact(x)}
        return self._eval
