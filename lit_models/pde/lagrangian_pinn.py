"""Lagrangian PINNs: a causality-conforming solution to failure modes of physics-informed neural networks
(Mojgani, Balajewicz, Hassanzadeh; arXiv 2205.02902, CMAME 404 (2023) 115810). Official code: rmojgani/LPINNs.

PDE class (paper Sec. 2): u_t + a(u) u_x = nu u_xx on [0, 2 pi) periodic, a = c (convection(-diffusion)) or
a = u (viscous Burgers). Lagrangian form (Sec. 3, Eq. for the characteristics): along dx/dt = a,
du/dt = nu u_xx. Each material point is labelled by its initial position x0; two branches evaluated at (x0, t):
    x_L(x0, t): position of the point,   u_L(x0, t): its state,
with residuals R_x = d x_L/dt - a (c, or u_L for Burgers), R_u = d u_L/dt - nu u_xx and ICs x_L(x0, 0) = x0,
u_L(x0, 0) = u0(x0). The Eulerian PINN baseline has R = u_t + a(u) u_x - nu u_xx.

Implementation choices (stated, as the card asks):
- Periodicity: every network takes (cos x, sin x, t) ("POLAR" nets of the official code).
- Two separate branch networks N_u (depth_u hidden layers) and N_x (depth_x) - the paper text's parallel branches;
  the official code instead shares the first layers and the output layer between them, and its u-branch applies
  its second hidden layer again for the deeper ones (DEEPu 5: three distinct hidden matrices).
- x_L = x0 + L * N_x (soft IC) or x0 + L * t * N_x (hard IC): the output is scaled by the period L so that x_L can
  reach x0 + c t; x_L is wrapped modulo L only for evaluation (never in the loss).
- u_xx for the Lagrangian state (`diffusion_derivative`): "label", the official code's d2u_L/dx0^2 (mynet_POLAR.py
  `lib`: both derivatives in the label input), exact for convection, where dx_L/dx0 = 1 along the exact
  characteristics; "chain", the derivative in the Eulerian x through the learned map, u_x = (du_L/dx0) / (dx_L/dx0)
  and u_xx = d(u_x)/dx0 / (dx_L/dx0) (exact also for Burgers, but dx_L/dx0 is a free network output during training:
  it changes sign at the default initialisation in 6 of 10 seeds, and ||R_u|| is then 1e7-1e10; not the paper's).
- Loss (official code): g_rx ||R_x||_2 + g_ru ||R_u||_2 + g_ic (||x_L(.,0) - x0||_2 + ||u_L(.,0) - u0||_2), plain
  2-norms over the full collocation grid (`loss_norm="l2"`); `loss_norm="mse"` uses mean squares (card check).
  `hard_ic=True`: u = u0(x) + t N (both models), x_L = x0 + L t N_x, no IC terms. The Eulerian PINN uses
  g_ru ||R||_2 + g_ic ||u(.,0) - u0||_2.
- Optimiser (README args): Adam(amsgrad) lr 0.01, then `lbfgs_steps` (100) steps of torch.optim.LBFGS(lr=0.01,
  library defaults otherwise: max_iter 20, history 100, no line search) as the official `optimize_LBFGS`; the L-BFGS
  steps are the last `lbfgs_steps` of trainer.max_steps (`lit_models.common.lbfgs.LBFGSPhase`).
Derivatives are taken with autocast off (`no_autocast`) in the parameters' dtype.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from launch.errors import check_min
from lit_models.common.lbfgs import LBFGSPhase
from lit_models.common.pde import check_problem_matches_data, grad, no_autocast, relative_l2
from lit_models.common.plotting import reference_colours
from lit_models.common.steps import EvaluateOnValAndTest

TWO_PI = 2 * math.pi


class PolarMLP(nn.Module):
    """N(cos x, sin x, t): `depth` tanh hidden layers of `width`, one linear output (exactly 2 pi-periodic in x)."""

    def __init__(self, width: int = 50, depth: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = 3
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.Tanh()]
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.stack([torch.cos(x), torch.sin(x), t], -1))[..., 0]


class LagrangianPINN(nn.Module):
    """(u_L, x_L)(x0, t) from two branches (Sec. 3): u_L = [u0(x0) + t] N_u, x_L = x0 + L [t] N_x."""

    def __init__(self, width: int = 50, depth_u: int = 5, depth_x: int = 2, hard_ic: bool = False,
                 u0: Callable[[Tensor], Tensor] | None = None, length: float = TWO_PI) -> None:
        super().__init__()
        self.u_branch, self.x_branch = PolarMLP(width, depth_u), PolarMLP(width, depth_x)
        self.hard_ic, self.u0, self.length = hard_ic, u0 or torch.sin, length

    def forward(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        nu, nx = self.u_branch(x0, t), self.x_branch(x0, t)
        if self.hard_ic:
            return self.u0(x0) + t * nu, x0 + self.length * t * nx
        return nu, x0 + self.length * nx


class EulerianPINN(nn.Module):
    """u(x, t) = [u0(x) + t] N(cos x, sin x, t): the standard PINN on the fixed grid (baseline)."""

    def __init__(self, width: int = 50, depth: int = 5, hard_ic: bool = False,
                 u0: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.net = PolarMLP(width, depth)
        self.hard_ic, self.u0 = hard_ic, u0 or torch.sin

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        n = self.net(x, t)
        return self.u0(x) + t * n if self.hard_ic else n


def lagrangian_residuals(model: LagrangianPINN, x0: Tensor, t: Tensor, problem: str, c: float,
                         nu: float, diffusion_derivative: str = "label") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(R_x, R_u, u_L, x_L) at the labels (x0, t) (1-D tensors of the same length); u_xx of R_u in the label x0
    ("label", official) or in the Eulerian x through the learned map ("chain"; module docstring)."""
    x0 = x0.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    with no_autocast(x0.device.type):
        u, xl = model(x0, t)
        u_t, x_t = grad(u, t), grad(xl, t)
        a = c if problem == "convection" else u
        r_x = x_t - a
        if nu > 0 and diffusion_derivative == "chain":
            x_x0 = grad(xl, x0)
            u_x = grad(u, x0) / x_x0
            r_u = u_t - nu * grad(u_x, x0) / x_x0
        elif nu > 0:
            r_u = u_t - nu * grad(grad(u, x0), x0)
        else:
            r_u = u_t
    return r_x, r_u, u, xl


def eulerian_residual(model: EulerianPINN, x: Tensor, t: Tensor, problem: str, c: float, nu: float) -> Tensor:
    """R = u_t + a(u) u_x - nu u_xx at (x, t)."""
    x = x.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    with no_autocast(x.device.type):
        u = model(x, t)
        u_t, u_x = grad(u, t), grad(u, x)
        a = c if problem == "convection" else u
        r = u_t + a * u_x
        if nu > 0:
            r = r - nu * grad(u_x, x)
    return r


def periodic_interp(x_query: np.ndarray, x_points: np.ndarray, values: np.ndarray, length: float) -> np.ndarray:
    """Linear interpolation of scattered periodic samples (x_points wrapped into [0, L), any order) at x_query."""
    return np.interp(x_query, np.mod(x_points, length), values, period=length)


def exact_characteristics(x0: np.ndarray, t: np.ndarray, x: np.ndarray, u: np.ndarray, length: float = TWO_PI,
                          substeps: int = 4) -> np.ndarray:
    """Characteristics of dx/dt = u(x, t) from x0 (K,) at the times t (T,), unwrapped (T, K): RK4 with `substeps`
    steps per interval of t, u (T, X) on the periodic grid x linear in time between its rows and in x."""
    def velocity(i: int, w: float, p: np.ndarray) -> np.ndarray:
        return np.interp(p, x, (1 - w) * u[i] + w * u[i + 1], period=length)

    out = [np.asarray(x0, np.float64)]
    for i in range(len(t) - 1):
        p, h = out[-1], (t[i + 1] - t[i]) / substeps
        for j in range(substeps):
            w0, w1 = j / substeps, (j + 1) / substeps
            k1 = velocity(i, w0, p)
            k2 = velocity(i, (w0 + w1) / 2, p + h / 2 * k1)
            k3 = velocity(i, (w0 + w1) / 2, p + h / 2 * k2)
            p = p + h / 6 * (k1 + 2 * k2 + 2 * k3 + velocity(i, w1, p + h * k3))
        out.append(p)
    return np.stack(out)


def _pooled_rel_l2(pred: np.ndarray, target: np.ndarray) -> float:
    """||pred - target|| / ||target|| over every point at once (`relative_l2` of the flattened arrays)."""
    return float(relative_l2(torch.from_numpy(np.ascontiguousarray(pred, np.float64)).reshape(-1),
                             torch.from_numpy(np.ascontiguousarray(target, np.float64)).reshape(-1))[0])


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=0.01, amsgrad=True)


class LagrangianPINNModule(EvaluateOnValAndTest, LBFGSPhase, L.LightningModule):
    """LPINN (method="lpinn") or the Eulerian PINN baseline (method="pinn") for convection(-diffusion) / Burgers.

    Batches (datamodules.pinn_data.LagrangianPINNDataModule): train {"x": labels / points, "t"} (full grid);
    val/test {"x": (X,), "t": (T,), "u": (T, X) reference}. Metrics:
    - `rel_l2`: the card's metric. LPINN on convection(-diffusion): ||u_L - u*(x_L, t)|| / ||u*(x_L, t)|| with u* the
      exact solution at the predicted positions; otherwise the interpolated grid error below.
    - `rel_l2_grid`: the prediction on the Eulerian (T, X) grid (LPINN: (x_L mod L, u_L) linearly interpolated per
      time) vs the reference; normalised by ||u - shift|| (the Burgers IC sin x + C).
    - `rel_l2_spectral`: the official LPINN.py's error table: the matrix 2-norm (largest singular value) of the grid
      error with 2 points cut at each x-end, over that of (u - shift) on the same points.
    - `char_error` (LPINN, convection): max |x_L - x0 - c t|.
    """

    def __init__(self, method: str = "lpinn", problem: str = "convection", c: float = 30.0, nu: float = 0.01,
                 shift: float = 0.0, width: int = 50, depth_u: int = 5, depth_x: int = 2, hard_ic: bool = False,
                 loss_norm: str = "l2", g_rx: float = 10.0, g_ru: float = 1.0, g_ic: float = 1000.0,
                 lbfgs_steps: int = 0, lbfgs_lr: float = 0.01, diffusion_derivative: str = "label",
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER) -> None:
        super().__init__()
        if method not in ("lpinn", "pinn"):
            raise ValueError(f"method must be 'lpinn' or 'pinn', got {method!r}")
        if problem not in ("convection", "burgers"):
            raise ValueError(f"problem must be 'convection' or 'burgers', got {problem!r}")
        if loss_norm not in ("l2", "mse"):
            raise ValueError(f"loss_norm must be 'l2' (paper) or 'mse', got {loss_norm!r}")
        if not nu >= 0:  # NaN too
            raise ValueError(f"nu must be >= 0, got {nu}")
        if diffusion_derivative not in ("label", "chain"):
            raise ValueError(f"diffusion_derivative must be 'label' (official) or 'chain', "
                             f"got {diffusion_derivative!r}")
        if lbfgs_steps < 0 or not lbfgs_lr > 0:  # NaN too
            raise ValueError(f"need lbfgs_steps >= 0 and lbfgs_lr > 0, got {lbfgs_steps}, {lbfgs_lr}")
        check_min("model", 1, width=width)
        check_min("model", 0, depth_u=depth_u, depth_x=depth_x, g_rx=g_rx, g_ru=g_ru, g_ic=g_ic)  # depth 0: linear
        self.save_hyperparameters(ignore=["optimizer"])
        self.lbfgs_steps, self.lbfgs_options = lbfgs_steps, {"lr": lbfgs_lr}
        self.optimizer_factory = optimizer
        self.method, self.problem, self.c, self.nu = method, problem, float(c), float(nu)
        self.shift = float(shift) if problem == "burgers" else 0.0
        u0 = self.u0
        if method == "lpinn":
            self.model = LagrangianPINN(width, depth_u, depth_x, hard_ic, u0)
        else:
            self.model = EulerianPINN(width, depth_u, hard_ic, u0)
        self._last: dict[str, Any] | None = None

    def u0(self, x: Tensor) -> Tensor:
        return torch.sin(x) + self.shift

    def forward(self, x: Tensor, t: Tensor):
        return self.model(x, t)

    def _norm(self, r: Tensor) -> Tensor:
        return torch.linalg.vector_norm(r) if self.hparams.loss_norm == "l2" else torch.mean(r ** 2)

    def loss_terms(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        hp = self.hparams
        dtype = next(self.model.parameters()).dtype
        x, t = x.to(dtype), t.to(dtype)
        terms: dict[str, Tensor] = {}
        if self.method == "lpinn":
            r_x, r_u, _, _ = lagrangian_residuals(self.model, x, t, self.problem, self.c, self.nu,
                                                  hp.diffusion_derivative)
            terms["res_x"] = hp.g_rx * self._norm(r_x)
            terms["res_u"] = hp.g_ru * self._norm(r_u)
        else:
            terms["res_u"] = hp.g_ru * self._norm(eulerian_residual(self.model, x, t, self.problem, self.c, self.nu))
        if not hp.hard_ic:
            x0 = x[t == 0]
            if x0.numel() == 0:
                raise ValueError("the collocation batch has no t = 0 points for the soft initial condition")
            with no_autocast(x.device.type):
                t0 = torch.zeros_like(x0)
                if self.method == "lpinn":
                    u, xl = self.model(x0, t0)
                    terms["ic"] = hp.g_ic * (self._norm(xl - x0) + self._norm(u - self.u0(x0)))
                else:
                    terms["ic"] = hp.g_ic * self._norm(self.model(x0, t0) - self.u0(x0))
        return terms

    def setup(self, stage: str | None = None) -> None:
        check_problem_matches_data(self, self.problem)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        terms = self.loss_terms(batch["x"], batch["t"])
        loss = sum(terms.values())
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=1, sync_dist=True)
        for k, v in terms.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=False, batch_size=1, sync_dist=True)
        return loss

    @torch.no_grad()
    def predict(self, x: Tensor, t: Tensor) -> dict[str, np.ndarray]:
        """On the (T, X) grid of labels / points: {"u": Eulerian prediction (T, X), and for LPINN "u_L", "x_L"}."""
        dtype = next(self.model.parameters()).dtype
        tg, xg = torch.meshgrid(t.to(dtype), x.to(dtype), indexing="ij")
        with no_autocast(x.device.type):
            out = self.model(xg.reshape(-1), tg.reshape(-1))
        xs = x.double().cpu().numpy()
        if self.method == "pinn":
            return {"u": out.reshape(tg.shape).double().cpu().numpy()}
        u_l = out[0].reshape(tg.shape).double().cpu().numpy()
        x_l = out[1].reshape(tg.shape).double().cpu().numpy()
        u = np.stack([periodic_interp(xs, x_l[i], u_l[i], TWO_PI) for i in range(u_l.shape[0])])
        return {"u": u, "u_L": u_l, "x_L": x_l}

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        x, t = batch["x"], batch["t"]
        ref = batch["u"].double().cpu().numpy()
        p = self.predict(x, t)
        # the shared relative L2, pooled over the whole (T, X) grid (flattened: one sample), as the paper reports it;
        # subtracting the shift from both sides normalises by ||u - shift|| without changing the numerator
        grid_err = _pooled_rel_l2(p["u"] - self.shift, ref - self.shift)
        cut = 2  # LPINN.py: du = u_vals[cut:-cut, :] - u_interpolated[cut:-cut, :]; norm(du, 2) / norm(u - C, 2)
        err, truth = (p["u"] - ref)[:, cut:-cut], (ref - self.shift)[:, cut:-cut]
        metrics = {"rel_l2_grid": grid_err,
                   "rel_l2_spectral": float(np.linalg.norm(err, 2) / np.linalg.norm(truth, 2))}
        if self.method == "lpinn" and self.problem == "convection":
            tt = t.double().cpu().numpy()[:, None]
            true = np.exp(-self.nu * tt) * np.sin(p["x_L"] - self.c * tt)
            metrics["rel_l2"] = _pooled_rel_l2(p["u_L"], true)
            metrics["char_error"] = float(np.abs(p["x_L"] - x.double().cpu().numpy()[None] - self.c * tt).max())
        else:
            metrics["rel_l2"] = grid_err
        for k, v in metrics.items():
            self.log(f"{split}/{k}", v, on_step=False, on_epoch=True, batch_size=1, sync_dist=True,
                     prog_bar=k == "rel_l2")
        self._last = {"x": x.cpu().numpy(), "t": t.cpu().numpy(), "ref": ref, "split": split,
                      "rel_l2": metrics["rel_l2"], **p}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.lbfgs_or(self.optimizer_factory(self.parameters()))

    def figures(self) -> dict[str, Any]:
        """{"field": prediction vs reference vs error on the Eulerian grid; LPINN also "characteristics":
        x_L(x0, t) against the exact characteristics from the same x0 (dx/dt = c, or dx/dt = u of the reference
        for Burgers, `exact_characteristics`)}; titled with the split and the relative L2 error."""
        if self._last is None:
            return {}
        import matplotlib.pyplot as plt

        d = self._last
        x, t = d["x"], d["t"]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
        ext = (x[0], x[-1], t[0], t[-1])
        name = "LPINN" if self.method == "lpinn" else "PINN"
        for ax, field, title in zip(axes, (d["u"], d["ref"], np.abs(d["u"] - d["ref"])),
                                    (f"{name} prediction", "reference", "|error|")):
            im = ax.imshow(field, aspect="auto", origin="lower", extent=ext,
                           **({"cmap": "viridis"} if title == "|error|"
                              else {"cmap": "RdBu_r", **reference_colours(d["ref"])}))
            fig.colorbar(im, ax=ax)
            ax.set_title(title)
            ax.set_xlabel("x")
        axes[0].set_ylabel("t")
        metric = f"{d['split']} set: {name}, {self.problem}, rel L2 {d['rel_l2']:.3g}"
        fig.suptitle(metric, fontsize=10)
        fig.tight_layout()
        figs = {"field": fig}
        if self.method == "lpinn":
            fig2, ax = plt.subplots(figsize=(6, 4))
            stride = max(1, len(x) // 16)
            x0 = x[::stride]
            if self.problem == "convection":
                exact = x0[None] + self.c * t[:, None]
            else:
                exact = exact_characteristics(x0, t, x, d["ref"])
            for j in range(len(x0)):
                # the learned lines above the exact ones: where they agree the exact ones covered them entirely
                ax.plot(exact[:, j], t, color="0.35", ls=(0, (4, 3)), lw=1.6, alpha=0.6, zorder=2, gid="exact",
                        label="exact" if j == 0 else None)
                ax.plot(d["x_L"][:, j * stride], t, "C3", lw=0.9, zorder=3, gid="learned",
                        label="learned x_L" if j == 0 else None)
            ax.set_xlabel("x_L(x0, t)")
            ax.set_ylabel("t")
            ax.set_title(f"characteristics from {len(x0)} x0; {metric}", fontsize=9)
            ax.legend(fontsize=7)
            fig2.tight_layout()
            figs["characteristics"] = fig2
        return figs
