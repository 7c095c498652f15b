"""Monge-Ampere (optimal-transport) meshes of the unit square for a monitor given on the structured grid: the
reference mesher the learned movers replace (UM2N's `error_reduction_MA` baseline; official code: the `movement`
package's `MongeAmpereMover`, a Firedrake relaxation solver, not installable here).

The mesh map is the gradient of a convex potential, x(xi) = grad phi(xi), with (Budd, Huang & Russell; UM2N Eq. 2)
    m(x(xi)) det(grad x(xi)) = theta,   theta = int m dx / |Omega|,
so every cell gets the same share of int m. Here phi is a truncated cosine series,
    phi(xi) = |xi|^2 / 2 + sum_{0 <= k, l <= K, (k, l) != (0, 0)} c_kl cos(k pi xi_1) cos(l pi xi_2),
whose gradient's normal component vanishes on every side of the square: boundary nodes slide along their side and
corners stay fixed, for any coefficients. The coefficients minimise the mean squared equidistribution residual
(m(x) det(grad x) / theta - 1)^2 on a tensor grid of collocation points (L-BFGS, float64; the series is separable, so
the map and its Jacobian on a tensor grid are small matrix products), warm-started from the previous solve when
used for a sequence of monitors. The monitor is evaluated at x by bilinear interpolation of its grid values.
This replaces the finite-difference relaxation `mesh.ma_relaxation_mesh`, which does not converge on the swirl
monitors in a usable time (24 s per mesh, stop 17).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class CosineMongeAmpere:
    """MA mesh of the structured n x n unit-square mesh (`mesh.unit_square_mesh` order) for monitor values at its
    nodes, by the cosine-series potential of the module docstring (`modes` = K, `collocation` points per side)."""

    def __init__(self, modes: int = 24, collocation: int = 96, max_iter: int = 400, tol: float = 1e-10,
                 warm_start: bool = True) -> None:
        if modes < 1 or collocation < 2 or max_iter < 1:
            raise ValueError(f"need modes >= 1, collocation >= 2, max_iter >= 1, got {modes}, {collocation}, "
                             f"{max_iter}")
        self.K, self.n_col, self.max_iter, self.tol, self.warm_start = modes, collocation, max_iter, tol, warm_start
        self.coef: np.ndarray | None = None  # the last solve's coefficients (numpy: no inference-mode tensors)
        self.last_residual = float("nan")  # median |m det / theta - 1| at the collocation points of the last solve
        self._col_s = (np.arange(collocation) + 0.5) / collocation  # collocation coordinates per side

    def _basis(self, s: torch.Tensor) -> dict[str, torch.Tensor]:
        """1-D factors at the coordinates s: cos(k pi s), -k pi sin(k pi s), -(k pi)^2 cos(k pi s), (K + 1, len(s))."""
        kpi = torch.arange(self.K + 1, dtype=torch.float64)[:, None] * torch.pi
        c, sn = torch.cos(kpi * s[None]), torch.sin(kpi * s[None])
        return {"c": c, "d": -kpi * sn, "dd": -(kpi**2) * c, "s": s}

    def _map(self, coef: torch.Tensor, bx: dict, by: dict) -> tuple[torch.Tensor, ...]:
        """x, y and the Jacobian entries on the tensor grid (bx points) x (by points): arrays [i (x), j (y)]."""
        x = bx["s"][:, None] + bx["d"].T @ coef @ by["c"]
        y = by["s"][None, :] + bx["c"].T @ coef @ by["d"]
        jxx = 1 + bx["dd"].T @ coef @ by["c"]
        jyy = 1 + bx["c"].T @ coef @ by["dd"]
        jxy = bx["d"].T @ coef @ by["d"]
        return x, y, jxx, jyy, jxy

    @staticmethod
    def _sample(grid: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bilinear interpolation of grid values [j (y), i (x)] on the unit square at (x, y)."""
        pts = torch.stack([x, y], -1).clamp(0.0, 1.0) * 2 - 1  # grid_sample: (-1, -1) = first column / row
        return F.grid_sample(grid[None, None], pts[None], mode="bilinear", align_corners=True)[0, 0]

    def solve(self, monitor_nodes: np.ndarray, n_side: int) -> np.ndarray:
        """Node positions (n_side^2, 2) of the MA mesh for monitor values (n_side^2,) at the nodes of
        `mesh.unit_square_mesh(n_side)` (node id = j n_side + i). Works inside Lightning's test loop too (grad
        mode is switched back on for the fit)."""
        with torch.inference_mode(False), torch.enable_grad():
            return self._solve(monitor_nodes, n_side)

    def _solve(self, monitor_nodes: np.ndarray, n_side: int) -> np.ndarray:
        m = torch.tensor(np.asarray(monitor_nodes, np.float64).reshape(n_side, n_side))
        if not torch.all(torch.isfinite(m)) or float(m.min()) <= 0:
            raise ValueError("the monitor must be finite and positive")
        w = torch.ones(n_side, dtype=torch.float64)
        w[0] = w[-1] = 0.5
        theta = (w[:, None] * w[None, :] * m).sum() / (n_side - 1) ** 2  # trapezoid = mean of the bilinear field
        k2 = torch.arange(self.K + 1, dtype=torch.float64) ** 2
        mask = 1.0 / (torch.pi**2 * (k2[:, None] + k2[None, :]))  # diagonal preconditioner: unknowns scaled so
        mask[0, 0] = 0.0  # that each mode's Jacobian entries are O(1); the constant mode does not move anything
        start = (torch.tensor(self.coef) / mask.clamp_min(1e-300) if (self.warm_start and self.coef is not None)
                 else torch.zeros(self.K + 1, self.K + 1, dtype=torch.float64))
        coef = start.clone().requires_grad_(True)
        b = self._basis(torch.tensor(self._col_s, dtype=torch.float64))  # built here: grad mode is on
        opt = torch.optim.LBFGS([coef], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
                                tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

        def residual(phys: torch.Tensor) -> torch.Tensor:
            x, y, jxx, jyy, jxy = self._map(phys, b, b)
            return self._sample(m, x.T, y.T) * (jxx * jyy - jxy**2).T / theta - 1.0

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = residual(coef * mask).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        coef = (coef * mask).detach()
        self.coef = coef.numpy().copy()
        with torch.no_grad():
            self.last_residual = float(residual(coef).abs().median())
            s = torch.linspace(0, 1, n_side, dtype=torch.float64)
            bn = self._basis(s)
            x, y, *_ = self._map(coef, bn, bn)
        return torch.stack([x.T.reshape(-1), y.T.reshape(-1)], 1).clamp(0.0, 1.0).numpy()

    def __call__(self, graph) -> np.ndarray:
        """A UM2N-layout graph (`datamodules.meshes._graph`: x[:, 3] the monitor / max, `n_side`) -> node positions;
        the equation is invariant to the monitor's scale."""
        n_side = int(graph.n_side.reshape(-1)[0])
        pos = graph.pos.double().cpu().numpy()
        ref = np.stack(np.meshgrid(np.linspace(0, 1, n_side), np.linspace(0, 1, n_side)), -1).reshape(-1, 2)
        if pos.shape != ref.shape or np.abs(pos - ref).max() > 1e-6:
            raise ValueError("CosineMongeAmpere moves the structured unit-square mesh only (mesh='structured')")
        return self.solve(graph.x[:, 3].double().cpu().numpy(), n_side)
