"""PIG: Physics-Informed Gaussians as Adaptive Parametric Mesh Representations (Kang, Oh, Hong, Park;
arXiv 2412.05994; official code NamGyuKang/Physics-Informed-Gaussians, Helmholtz2d/network.py).

A PINN whose input coordinates first pass through a learnable Gaussian feature embedding (paper Eq. 3-4):

    FE(x)_c = Σ_{i=1..N} w_{c,i} exp(-½ Σ_d ((x_d - μ_{c,i,d}) / σ_{c,i,d})²),   c = 1..k,
    u(x)    = MLP(FE(x)),   MLP = Linear(k, 16) -> tanh -> Linear(16, 1)  (num_layers = 2, hidden_dim = 16).

Each of the k channels has its OWN N Gaussians (μ, σ shaped (k, N, d)), diagonal covariance, scalar weight.
Initialisation as in the official code: μ ~ U(-1, 1), σ = σ0, w ~ N(0, 0.01²). μ, σ and w are trained by the PDE
loss (the "adaptive mesh"); `freeze_gaussians=true` keeps μ, σ fixed (a fixed grid of Gaussians, a baseline).

Helmholtz loss (official pig.py): mean(u_b - g)² + f_scale · mean(Δu + λu - q)², f_scale = 1e-4.

Derivatives: `laplacian="autograd"` is the official second-order autograd (u_xx and u_yy separately);
`laplacian="analytic"` computes the same Laplacian in one forward pass (closed-form first and second derivatives of
each Gaussian, then propagated through the tanh MLP as (value, ∂_d, ∂²_d) per coordinate), followed by one backward
for the parameters: identical up to float rounding (tests compare both) and ~2x cheaper on a CPU. Both run in
float32 with autocast off. Deviation, documented: the official σ is a raw parameter that may cross zero; here the
Gaussian uses |σ| clamped at `min_sigma` (the same Gaussian for either sign; the clamp only avoids a division by 0).

Baseline `model="mlp"`: the MLP-PINN (tanh, `mlp_width` x `mlp_depth` hidden layers) with the same loss.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lit_models.common.pde import RelativeL2, no_autocast

MODELS = ("pig", "mlp")
LAPLACIANS = ("autograd", "analytic")


class GaussianFeatures(nn.Module):
    """FE(x)_c = Σ_i w_{c,i} exp(-½ Σ_d ((x_d - μ_{c,i,d}) / σ_{c,i,d})²) with per-channel Gaussian sets."""

    def __init__(self, in_dim: int = 2, channels: int = 4, num_gaussians: int = 800, sigma_init: float = 0.1,
                 min_sigma: float = 1e-3) -> None:
        super().__init__()
        self.min_sigma = min_sigma
        self.mu = nn.Parameter(torch.empty(channels, num_gaussians, in_dim).uniform_(-1.0, 1.0))
        self.sigma = nn.Parameter(torch.full((channels, num_gaussians, in_dim), float(sigma_init)))
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (channels, num_gaussians)))

    def inverse_sigma(self) -> Tensor:
        return 1.0 / self.sigma.abs().clamp_min(self.min_sigma)

    def forward(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, k)."""
        z = (x[None, :, None, :] - self.mu[:, None]) * self.inverse_sigma()[:, None]  # (k, B, N, d)
        g = torch.exp(-0.5 * (z * z).sum(-1)) * self.weight[:, None]                   # (k, B, N)
        return g.sum(-1).t()

    def with_derivatives(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """FE (B, k), ∂FE/∂x_d (B, k, d), ∂²FE/∂x_d² (B, k, d), in closed form, one coordinate at a time.
        ∂_d G = -G z_d / σ_d and ∂²_d G = G (z_d² - 1) / σ_d² for G = w exp(-½ |z|²), z_d = (x_d - μ_d) / σ_d."""
        inv = self.inverse_sigma()                                                      # (k, N, d)
        zs = [(x[None, :, None, d] - self.mu[:, None, :, d]) * inv[:, None, :, d] for d in range(x.shape[1])]
        sq = zs[0] * zs[0]
        for z in zs[1:]:
            sq = sq + z * z
        wg = torch.exp(-0.5 * sq) * self.weight[:, None]                                # (k, B, N)
        first, second = [], []
        for d, z in enumerate(zs):
            s = inv[:, None, :, d]
            wgz = wg * z * s
            first.append(-wgz.sum(-1))
            second.append((wgz * z * s - wg * s * s).sum(-1))
        return wg.sum(-1).t(), torch.stack(first, -1).transpose(0, 1), torch.stack(second, -1).transpose(0, 1)


def tanh_mlp(in_dim: int, hidden: int, n_hidden: int, out_dim: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(n_hidden):
        layers += [nn.Linear(in_dim, hidden), nn.Tanh()]
        in_dim = hidden
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def propagate_second_order(net: nn.Sequential, h: Tensor, dh: Tensor, d2h: Tensor) -> tuple[Tensor, Tensor]:
    """Push (value (B, m), ∂_d (B, m, D), ∂²_d (B, m, D)) through Linear/Tanh layers; returns (u, Σ_d ∂²_d u)."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            h = layer(h)
            dh = torch.einsum("om,bmd->bod", layer.weight, dh)
            d2h = torch.einsum("om,bmd->bod", layer.weight, d2h)
        elif isinstance(layer, nn.Tanh):
            t = torch.tanh(h)
            s = 1 - t * t  # tanh'
            d2h = s[..., None] * d2h - 2 * (t * s)[..., None] * dh * dh
            dh = s[..., None] * dh
            h = t
        else:
            raise TypeError(f"analytic Laplacian supports Linear and Tanh layers only, got {type(layer).__name__}")
    return h, d2h.sum(-1)


class PIGNet(nn.Module):
    """u(x) = MLP(FE(x)): Gaussian features (k channels) -> Linear(k, hidden) -> tanh -> ... -> Linear(., 1)."""

    def __init__(self, in_dim: int = 2, channels: int = 4, num_gaussians: int = 800, sigma_init: float = 0.1,
                 hidden_dim: int = 16, num_layers: int = 2, min_sigma: float = 1e-3) -> None:
        super().__init__()
        self.features = GaussianFeatures(in_dim, channels, num_gaussians, sigma_init, min_sigma)
        self.mlp = tanh_mlp(channels, hidden_dim, max(num_layers - 1, 0))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.features(x))

    def with_laplacian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, df, d2f = self.features.with_derivatives(x)
        return propagate_second_order(self.mlp, f, df, d2f)


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=0.01)
DEFAULT_SCHEDULER = functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.9995)


class PIGModule(L.LightningModule):
    """Physics-informed training of a PIG (or of the MLP-PINN baseline) on Helmholtz (paper Sec. 4, Helmholtz 2D).

    Metrics: `train/loss`, `train/boundary_loss`, `train/residual_loss`; `val/rel_l2`, `test/rel_l2` on the data
    module's grid; `test/mean_sigma` (PIG only). LR schedule stepped every iteration (ExponentialLR γ = 0.9995).
    """

    def __init__(self, model: str = "pig", in_dim: int = 2, channels: int = 4, num_gaussians: int = 800,
                 sigma_init: float = 0.1, hidden_dim: int = 16, num_layers: int = 2, min_sigma: float = 1e-3,
                 freeze_gaussians: bool = False, mlp_width: int = 64, mlp_depth: int = 3,
                 coefficient: float = 1.0, f_scale: float = 1e-4, boundary_weight: float = 1.0,
                 laplacian: str = "autograd", chunk_size: int | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER,
                 scheduler: Callable[..., Any] | None = DEFAULT_SCHEDULER) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        if laplacian not in LAPLACIANS:
            raise ValueError(f"unknown laplacian {laplacian!r}; choose from {', '.join(LAPLACIANS)}")
        if channels < 1 or num_gaussians < 1 or sigma_init <= 0 or num_layers < 1:
            raise ValueError(f"need channels, num_gaussians, num_layers >= 1 and sigma_init > 0; got {channels}, "
                             f"{num_gaussians}, {num_layers}, {sigma_init}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or null, got {chunk_size}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        if model == "pig":
            self.net: nn.Module = PIGNet(in_dim, channels, num_gaussians, sigma_init, hidden_dim, num_layers,
                                         min_sigma)
            if freeze_gaussians:
                self.net.features.mu.requires_grad_(False)
                self.net.features.sigma.requires_grad_(False)
        else:
            self.net = tanh_mlp(in_dim, mlp_width, mlp_depth)
        self.val_rel_l2, self.test_rel_l2 = RelativeL2(), RelativeL2()
        self._last: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        chunk = self.hparams.chunk_size
        if chunk is None or x.shape[0] <= chunk:
            return self.net(x)
        return torch.cat([self.net(c) for c in x.split(chunk)])

    def value_and_laplacian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, 1) and Δu (B, 1) = Σ_d ∂²u/∂x_d², each second derivative taken separately."""
        chunk = self.hparams.chunk_size
        if chunk is not None and x.shape[0] > chunk:
            parts = [self.value_and_laplacian_(c) for c in x.split(chunk)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self.value_and_laplacian_(x)

    def value_and_laplacian_(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.hparams.model == "pig" and self.hparams.laplacian == "analytic":
            return self.net.with_laplacian(x)
        x = x.detach().requires_grad_(True)
        u = self.net(x)
        (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        lap = 0
        for d in range(x.shape[1]):
            (d2,) = torch.autograd.grad(du[:, d].sum(), x, create_graph=True)
            lap = lap + d2[:, d : d + 1]
        return u, lap

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        hp = self.hparams
        with no_autocast(self.device.type):
            x, q = batch["x"].float(), batch["q"].float()
            u, lap = self.value_and_laplacian(x)
            residual = lap + hp.coefficient * u - q
            boundary = self(batch["x_boundary"].float()) - batch["g"].float()
            loss_b, loss_r = torch.mean(boundary**2), torch.mean(residual**2)
            loss = hp.boundary_weight * loss_b + hp.f_scale * loss_r
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        self.log("train/boundary_loss", loss_b, on_step=True, on_epoch=False, batch_size=1)
        self.log("train/residual_loss", loss_r, on_step=True, on_epoch=False, batch_size=1)
        return loss

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Tensor], metric: RelativeL2, split: str) -> None:
        with no_autocast(self.device.type):  # chunks: the (k, B, N, d) tensor of a 250^2 grid would be GBs
            pred = torch.cat([self.net(c) for c in batch["x"].float().split(self.hparams.chunk_size or 4096)])
        metric.update(pred.reshape(1, -1), batch["u"].float().reshape(1, -1))
        self.log(f"{split}/rel_l2", metric, on_step=False, on_epoch=True, batch_size=1, prog_bar=True)
        if self.hparams.model == "pig":
            self.log(f"{split}/mean_sigma", self.net.features.sigma.abs().mean(), on_step=False, on_epoch=True,
                     batch_size=1, sync_dist=True)
        self._last = {"x": batch["x"].cpu(), "pred": pred.cpu(), "exact": batch["u"].cpu()}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, self.val_rel_l2, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, self.test_rel_l2, "test")

    def configure_optimizers(self):
        opt = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    def figures(self) -> dict[str, Any]:
        """{"field": exact | prediction | |error| side by side, "gaussians": PIG Gaussian centres (and 1-σ
        ellipses of the largest-weight ones) per channel over the exact field}."""
        if self._last is None:
            return {}
        import matplotlib.pyplot as plt
        from matplotlib.patches import Ellipse

        x, pred, exact = self._last["x"], self._last["pred"][:, 0], self._last["exact"][:, 0]
        m = int(round(math.sqrt(x.shape[0])))
        imgs = [t.reshape(m, m).numpy() for t in (exact, pred, (pred - exact).abs())]
        name = "PIG" if self.hparams.model == "pig" else "MLP-PINN"
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, img, title in zip(axes, imgs, ("exact", name, "|error|")):
            im = ax.imshow(img, origin="lower", extent=(-1, 1, -1, 1), cmap="RdBu_r" if title != "|error|" else "magma")
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        figs = {"field": fig}
        if self.hparams.model == "pig":
            feats = self.net.features
            mu = feats.mu.detach().cpu().numpy()
            sig = feats.sigma.detach().abs().cpu().numpy()
            w = feats.weight.detach().abs().cpu().numpy()
            k = mu.shape[0]
            fig2, axes2 = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False)
            for c, ax in enumerate(axes2[0]):
                ax.imshow(imgs[0], origin="lower", extent=(-1, 1, -1, 1), cmap="RdBu_r", alpha=0.35)
                size = 4 + 40 * w[c] / max(float(w[c].max()), 1e-12)
                ax.scatter(mu[c, :, 0], mu[c, :, 1], s=size, c="k", alpha=0.6, lw=0)
                for i in w[c].argsort()[::-1][:20].tolist():
                    ax.add_patch(Ellipse((float(mu[c, i, 0]), float(mu[c, i, 1])), 2 * float(sig[c, i, 0]),
                                         2 * float(sig[c, i, 1]), fill=False, ec="C3", lw=0.7))
                ax.set_xlim(-1.1, 1.1)
                ax.set_ylim(-1.1, 1.1)
                ax.set_title(f"channel {c}: Gaussian centres", fontsize=9)
            fig2.tight_layout()
            figs["gaussians"] = fig2
        return figs
