"""MEDIDA with spectral-bias-reduced interpolants (Mojgani, Chattopadhyay, Hassanzadeh; JAMES 2024, arXiv 2309.13211).

Model Error Discovery with Interpretability and Data Assimilation:
1. analysis increments Δu = u_obs(t + Δt) - u_model(t + Δt), one short model step from the same state, divided by
   Δt, estimate the structural model error term (paper Eq. for Δq);
2. a library Θ(u) of candidate terms is built from the state; with sparse noisy sensors the state is first
   interpolated by a neural network u(x) and the derivatives come from autograd of that network;
3. sparse Bayesian regression (RVM; here scikit-learn's ARDRegression, fit_intercept=False, on standardised
   columns, coefficients mapped back) Δu/Δt ≈ Θ c returns the few relevant terms and their coefficients.

The interpolant is an MLP with tanh activations (official `mynet2Drff.py`), preceded by a Gaussian random Fourier
feature layer γ(s) = [cos(2π B s), sin(2π B s)], B ~ N(0, σ²) fixed (hidden/2 features), on coordinates s = x / L in
[0, 1). `rff=False` is the spectral-bias baseline: the same MLP on the raw coordinate. One network interpolates
all snapshots at once (one output per snapshot, fixed sensor positions). Derivatives are taken by nested
forward-mode autograd (torch.func.jacfwd) in float64 with autocast disabled; d/dx = (1/L) d/ds.
Periodic domain: a boundary strip of `cut` grid points on each side is dropped from the regression and metrics
(the official code cuts 20 points).
"""
from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

LIBRARY_TERMS = ("u", "u_x", "u_xx", "u_xxx", "u_xxxx", "u*u_x", "u^2", "u^3")


class RandomFourierFeatures(nn.Module):
    """γ(s) = [cos(2π B s), sin(2π B s)] with B (in_dim x num_features) ~ N(0, σ²), a fixed buffer."""

    def __init__(self, in_dim: int = 1, num_features: int = 64, sigma: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("B", sigma * torch.randn(in_dim, num_features, generator=g))

    @property
    def out_dim(self) -> int:
        return 2 * self.B.shape[1]

    def forward(self, s: Tensor) -> Tensor:
        proj = 2 * math.pi * s @ self.B.to(s.dtype)
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)


class Interpolant(nn.Module):
    """s (P x 1) in [0, 1) -> u (P x n_outputs): [RFF] -> `depth` x (Linear(width) + tanh) -> Linear(n_outputs)."""

    def __init__(self, n_outputs: int = 1, width: int = 1000, depth: int = 4, rff: bool = True, sigma: float = 10.0,
                 num_features: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.rff = RandomFourierFeatures(1, num_features or width // 2, sigma, seed) if rff else None
        in_dim = self.rff.out_dim if rff else 1
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(in_dim, width), nn.Tanh()]
            in_dim = width
        layers.append(nn.Linear(in_dim, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, s: Tensor) -> Tensor:
        return self.net(self.rff(s) if self.rff is not None else s)


def interpolant_derivatives(model: nn.Module, s: Tensor, length: float, orders: int = 4,
                            scale: float = 1.0) -> Tensor:
    """(orders + 1, P, n_outputs): u and d^p u / dx^p by nested forward-mode autograd in float64, autocast off."""
    from torch.func import jacfwd, vmap

    m = copy.deepcopy(model).double().eval()
    s = s.detach().double().reshape(-1)

    def f(si: Tensor) -> Tensor:  # scalar s -> (n_outputs,)
        return m(si.reshape(1, 1)).reshape(-1)

    fns = [f]
    for _ in range(orders):
        fns.append(jacfwd(fns[-1]))
    with torch.autocast(device_type=s.device.type, enabled=False), torch.no_grad():
        out = [vmap(g)(s) * scale / length**p for p, g in enumerate(fns)]
    return torch.stack(out)


def build_library(derivs: Tensor | np.ndarray) -> np.ndarray:
    """Θ from (5, ...) = (u, u_x, u_xx, u_xxx, u_xxxx): columns [u, u_x, u_xx, u_xxx, u_xxxx, u u_x, u², u³]."""
    d = np.asarray(derivs.detach().cpu() if isinstance(derivs, Tensor) else derivs, dtype=np.float64)
    u, ux = d[0], d[1]
    cols = [u, ux, d[2], d[3], d[4], u * ux, u**2, u**3]
    return np.stack([c.reshape(-1) for c in cols], axis=1)


def discover(library: np.ndarray, target: np.ndarray, **ard_kwargs: Any) -> np.ndarray:
    """Sparse Bayesian regression target ≈ library @ c: ARDRegression(fit_intercept=False) on library columns
    divided by their std (the target keeps its units); coefficients mapped back to the original units."""
    from sklearn.linear_model import ARDRegression

    target = np.asarray(target, dtype=np.float64).reshape(-1)
    col_std = library.std(axis=0)
    col_std[col_std == 0] = 1.0
    ard = ARDRegression(fit_intercept=False, **ard_kwargs)
    ard.fit(library / col_std, target)
    return ard.coef_ / col_std


def coefficient_error(coef: np.ndarray, true: np.ndarray) -> float:
    """||c - c_true||_2 / ||c_true||_2 over all library terms (wrong or extra terms count)."""
    return float(np.linalg.norm(coef - true) / np.linalg.norm(true))


def relative_l2(pred: Tensor, true: Tensor) -> float:
    return float(torch.linalg.vector_norm(pred - true) / torch.linalg.vector_norm(true))


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=0.01, amsgrad=True)  # ModelErrorQGarg.py


class MedidaModule(L.LightningModule):
    """Trains the interpolant on the sensors (MSE on observations scaled by their std); at validation / test
    builds the library from the interpolant's autograd derivatives on the grid (boundary strip cut) and runs the
    ARD/RVM discovery on the increments / Δt.

    Metrics (val/ and test/): `uxxxx_rel_l2` (relative L2 of u_xxxx vs the exact spectral one), `u_rel_l2`,
    `coef_error` (relative L2 error of the discovered coefficient vector vs the true -0.2 u_xx),
    `c_uxx`, `n_wrong_terms` (terms other than u_xx with |c| > `select_tol`).
    """

    def __init__(self, n_outputs: int = 1, length: float = 22.0, width: int = 1000, depth: int = 4, rff: bool = True,
                 sigma: float = 10.0, num_features: int | None = None, rff_seed: int = 0, cut: int = 10,
                 select_tol: float = 0.01, true_coefficients: list[float] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.interpolant = Interpolant(n_outputs, width, depth, rff, sigma, num_features, rff_seed)
        self.true_coefficients = np.asarray(true_coefficients if true_coefficients is not None
                                            else [0, 0, -0.2, 0, 0, 0, 0, 0], dtype=np.float64)
        self.register_buffer("u_scale", torch.ones(()))
        self._last: dict[str, Any] | None = None

    def forward(self, s: Tensor) -> Tensor:
        return self.interpolant(s) * self.u_scale

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and getattr(dm, "data", None) is not None:
            self.u_scale.fill_(float(np.std(dm.data["obs"])))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        pred = self.interpolant(batch["x"].float())
        loss = torch.mean((pred.float() - batch["u"].float() / self.u_scale) ** 2)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=1, sync_dist=True)
        return loss

    def derivatives(self, s: Tensor) -> Tensor:
        return interpolant_derivatives(self.interpolant, s, self.hparams.length, 4, float(self.u_scale))

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        cut = self.hparams.cut
        keep = slice(cut, batch["x"].shape[0] - cut if cut else None)
        d = self.derivatives(batch["x"][keep])  # (5, P, S)
        true = batch["derivs"][:, keep].to(d)
        coef = discover(build_library(d), batch["increment"][keep].cpu().numpy())
        wrong = np.abs(np.delete(coef, 2)) > self.hparams.select_tol
        metrics = {"uxxxx_rel_l2": relative_l2(d[4], true[4]), "u_rel_l2": relative_l2(d[0], true[0]),
                   "coef_error": coefficient_error(coef, self.true_coefficients),
                   "c_uxx": float(coef[2]), "n_wrong_terms": float(wrong.sum())}
        for k, v in metrics.items():
            self.log(f"{split}/{k}", v, on_step=False, on_epoch=True, batch_size=1, sync_dist=True,
                     prog_bar=k == "uxxxx_rel_l2")
        self._last = {"x": batch["x"][keep, 0].cpu().numpy() * self.hparams.length, "pred": d[:, :, 0].cpu().numpy(),
                      "true": true[:, :, 0].cpu().numpy(), "coef": coef}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def figures(self) -> dict[str, Any]:
        """{"derivatives": interpolant vs exact u, u_xx, u_xxxx (first snapshot), "coefficients": discovered vs true}."""
        if self._last is None:
            return {}
        import matplotlib.pyplot as plt

        x, pred, true, coef = self._last["x"], self._last["pred"], self._last["true"], self._last["coef"]
        fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
        for ax, p, name in zip(axes, (0, 2, 4), ("u", "u_xx", "u_xxxx")):
            ax.plot(x, true[p], "k", lw=1.2, label="exact")
            ax.plot(x, pred[p], "C3--", lw=1.2, label="RFF-MLP" if self.hparams.rff else "MLP")
            ax.set_ylabel(name)
        axes[0].legend(fontsize=7)
        axes[-1].set_xlabel("x")
        fig.tight_layout()
        fig2, ax = plt.subplots(figsize=(7, 3))
        idx = np.arange(len(LIBRARY_TERMS))
        ax.bar(idx - 0.2, self.true_coefficients, 0.4, color="k", label="true")
        ax.bar(idx + 0.2, coef, 0.4, color="C3", label="discovered")
        ax.set_xticks(idx, LIBRARY_TERMS)
        ax.set_ylabel("coefficient")
        ax.legend(fontsize=7)
        fig2.tight_layout()
        return {"derivatives": fig, "coefficients": fig2}
