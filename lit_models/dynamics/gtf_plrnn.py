"""Generalized Teacher Forcing for Learning Chaotic Dynamics (Hess, Monfared, Brenner, Durstewitz; ICML 2023,
arXiv 2306.04406). Official code: DurstewitzLab/GTF-shPLRNN (Julia/Flux).

- shallow PLRNN (shPLRNN): z_t = A z_{t-1} + W1 phi(W2 z_{t-1} + h2) + h1, A diagonal (M), W1 (M x L), W2 (L x M),
  phi = ReLU; clipped variant (default): W1 [phi(W2 z + h2) - phi(W2 z)], bounded orbits when |A| < 1.
  Jacobian J = diag(A) + W1 diag(1[W2 z + h2 > 0] - 1[W2 z > 0]) W2 (clipped) or W1 diag(1[W2 z + h2 > 0]) W2.
- Identity observation model: x_t = z_t[:N]; data-inferred states zhat_t = [x_t, 0...] (M >= N, partial forcing
  of the first N units; the unobserved initial state is learned when M > N).
- GTF: z~_t = (1 - alpha) F(z~_{t-1}) + alpha zhat_t; the loss is the MSE between the *unforced* prediction
  F(z~_{t-1})[:N] and x_t (t = 1..T-1). Gradients flow through z~ (not detached): the backward pass sees
  prod (1 - alpha) J_t.
- alpha* = max(0, 1 - 1/G), G = max over sequences of the geometric mean of ||J_t||_2 along the sequence
  ("product upper bound"), computed without gradients on the data-inferred states of the batch. Adaptive GTF
  (aGTF, official `train_!`): alpha_0 = 1; every `alpha_update_every` batches alpha <- alpha* if alpha* > alpha,
  else gamma alpha + (1 - gamma) alpha* (gamma = `alpha_decay`).
- Evaluation by free-running from the first point of a held-out segment: D_stsp (binned KL, 30 bins/dim, Laplace
  smoothing 1e-5, range = ground truth min/max +- 0.1 std; Gaussian-mixture version for N >= 6) and D_H (mean
  Hellinger distance of Gaussian-smoothed (sigma = 20) normalised power spectra).
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

# D_stsp / D_H live in lit_models/common/dynamics_metrics.py (shared, with DDP-correct torchmetrics versions);
# re-exported here for existing imports
from lit_models.common.dynamics_metrics import (  # noqa: F401
    power_spectrum_distance,
    state_space_divergence,
    state_space_divergence_binned,
    state_space_divergence_gmm,
)

# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------


def _uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
    r = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-r, r)


class ShallowPLRNN(nn.Module):
    """shPLRNN latent model F(z); `clipped=True` is the paper's default (clipped shPLRNN)."""

    def __init__(self, latent_dim: int, hidden_dim: int, clipped: bool = True) -> None:
        super().__init__()
        self.latent_dim, self.hidden_dim, self.clipped = int(latent_dim), int(hidden_dim), bool(clipped)
        m, l = self.latent_dim, self.hidden_dim
        # initialize_A_W_h (official code): A = diag of a normalised positive-definite matrix, h1 = 0;
        # initialize_Ws: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in the last dimension
        r = torch.randn(m, m)
        k = r.T @ r / m + torch.eye(m)
        self.A = nn.Parameter(torch.diagonal(k) / torch.linalg.eigvalsh(k).max())
        self.W1 = nn.Parameter(_uniform((m, l), l))
        self.W2 = nn.Parameter(_uniform((l, m), m))
        self.h1 = nn.Parameter(torch.zeros(m))
        # official code: h2 = uniform_init((L,)) for the clipped model, zeros for the plain shPLRNN
        self.h2 = nn.Parameter(_uniform((l,), l) if self.clipped else torch.zeros(l))

    def forward(self, z: Tensor) -> Tensor:
        """One step F(z) for z (..., M)."""
        pre = z @ self.W2.T
        phi = torch.relu(pre + self.h2)
        if self.clipped:
            phi = phi - torch.relu(pre)
        return self.A * z + phi @ self.W1.T + self.h1

    def jacobian(self, z: Tensor) -> Tensor:
        """J(z) = dF/dz for z (..., M) -> (..., M, M)."""
        pre = z @ self.W2.T
        d = (pre + self.h2 > 0).to(z.dtype)
        if self.clipped:
            d = d - (pre > 0).to(z.dtype)
        return torch.diag_embed(self.A.expand_as(z)) + (self.W1 * d.unsqueeze(-2)) @ self.W2

    @torch.no_grad()
    def generate(self, z0: Tensor, steps: int) -> Tensor:
        """Free run: (B, M) -> (B, steps, M) with z_0 = z0 as the first state."""
        out = [z0]
        z = z0
        for _ in range(steps - 1):
            z = self(z)
            out.append(z)
        return torch.stack(out, dim=1)


def gtf_loss(model: ShallowPLRNN, x: Tensor, alpha: float, z0_rest: Tensor | None = None) -> Tensor:
    """GTF loss for observations x (B, T, N) with the identity observation model (first N latents).

    z~_0 = zhat_0; for t = 1..T-1: zpred = F(z~_{t-1}); loss += ||zpred[:N] - x_t||^2;
    z~_t = (1 - alpha) zpred + alpha zhat_t on the first N units (the others run free). Mean over B, T-1, N.
    """
    b, t_len, n = x.shape
    m = model.latent_dim
    z = x[:, 0]
    if m > n:
        rest = z0_rest if z0_rest is not None else x.new_zeros(m - n)
        z = torch.cat([z, rest.to(x.dtype).expand(b, m - n)], dim=-1)
    sq = x.new_zeros(())
    for t in range(1, t_len):
        pred = model(z)                       # unforced prediction F(z~_{t-1})
        sq = sq + (pred[:, :n] - x[:, t]).pow(2).sum()   # loss BEFORE forcing (Pitfalls)
        if alpha > 0:
            forced = (1.0 - alpha) * pred[:, :n] + alpha * x[:, t]
            z = torch.cat([forced, pred[:, n:]], dim=-1) if m > n else forced
        else:
            z = pred
    return sq / (b * (t_len - 1) * n)


@torch.no_grad()
def product_upper_bound(model: ShallowPLRNN, states: Tensor) -> float:
    """G = max over sequences of the geometric mean of ||J_t||_2 along the states (B, T, M) (or (T, M))."""
    if states.dim() == 2:
        states = states.unsqueeze(0)
    norms = torch.linalg.matrix_norm(model.jacobian(states), ord=2)  # (B, T)
    return float(torch.exp(torch.log(norms.clamp_min(1e-30)).mean(dim=1)).max())


def alpha_star(norm_estimate: float) -> float:
    """alpha* = max(0, 1 - 1/G)."""
    return max(0.0, 1.0 - 1.0 / norm_estimate) if norm_estimate > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# LightningModule
# ------------------------------------------------------------------------------------------------


DEFAULT_OPTIMIZER = functools.partial(torch.optim.RAdam, lr=1e-3)  # RAdam 1e-3 (defaults.json)


class GTFPLRNNModule(L.LightningModule):
    """clipped shPLRNN trained with (adaptive) generalized teacher forcing; free-running D_stsp / D_H.

    alpha_method: "adaptive" (aGTF: start at `alpha`; every `alpha_update_every` batches alpha <- alpha* when
    alpha* > alpha, else alpha_decay * alpha + (1 - alpha_decay) * alpha*) or "constant" (alpha fixed; 0 = BPTT,
    1 = one-step teacher forcing).
    """

    def __init__(
        self,
        latent_dim: int = 3,                  # M (= N, identity observation model)
        hidden_dim: int = 50,                 # L
        clipped: bool = True,
        obs_dim: int | None = None,           # N; null: the datamodule's dimension
        alpha: float = 1.0,                   # alpha_0 (aGTF) or the constant alpha
        alpha_method: str = "adaptive",
        alpha_estimator: str = "product_upper_bound",
        alpha_update_every: int = 5,
        alpha_decay: float = 0.999,
        d_stsp_bins: int = 30,
        pse_smoothing: float = 20.0,
        optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        if alpha_method not in ("adaptive", "constant"):
            raise ValueError(f"alpha_method must be 'adaptive' or 'constant', got {alpha_method!r}")
        if alpha_estimator != "product_upper_bound":
            raise ValueError(f"alpha_estimator {alpha_estimator!r} is not implemented (product_upper_bound)")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.model = ShallowPLRNN(latent_dim, hidden_dim, clipped)
        self.z0_rest: nn.Parameter | None = None
        if obs_dim is not None:
            self._build_obs(int(obs_dim))
        self.register_buffer("alpha_current", torch.tensor(float(alpha), dtype=torch.float64))
        self._last_eval: tuple[np.ndarray, np.ndarray] | None = None

    def _build_obs(self, n: int) -> None:
        if n > self.hparams.latent_dim:
            raise ValueError(f"identity observation model needs latent_dim >= obs_dim, got {self.hparams.latent_dim} < {n}")
        self.hparams["obs_dim"] = n
        if n < self.hparams.latent_dim and self.z0_rest is None:
            self.z0_rest = nn.Parameter(torch.zeros(self.hparams.latent_dim - n))

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and self.hparams.obs_dim is None:
            dm.setup(stage)
            self._build_obs(int(dm.dim))

    @property
    def alpha(self) -> float:
        return float(self.alpha_current)

    def latent_states(self, x: Tensor) -> Tensor:
        """Data-inferred states zhat (B, T, M): observations, then the learned/zero unobserved part."""
        b, t, n = x.shape
        if self.hparams.latent_dim == n:
            return x
        rest = self.z0_rest.detach() if self.z0_rest is not None else x.new_zeros(self.hparams.latent_dim - n)
        return torch.cat([x, rest.to(x.dtype).expand(b, t, -1)], dim=-1)

    def _update_alpha(self, x: Tensor) -> None:
        h = self.hparams
        if h.alpha_method != "adaptive" or (self.global_step + 1) % h.alpha_update_every != 0:
            return
        with torch.autocast(device_type=x.device.type, enabled=False):
            states = self.latent_states(x.to(self.model.A.dtype))[:, 1:]
            star = alpha_star(product_upper_bound(self.model, states))
        gamma, alpha = float(h.alpha_decay), self.alpha
        self.alpha_current.fill_(star if star > alpha else gamma * alpha + (1.0 - gamma) * star)
        self.log("train/alpha_star", star, on_step=True, on_epoch=False)

    def training_step(self, batch: Tensor, batch_idx: int = 0) -> Tensor:
        x = batch["x"] if isinstance(batch, dict) else batch
        self._update_alpha(x)
        # chaotic recurrence: never under autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = self.model.A.dtype
            loss = gtf_loss(self.model, x.to(dtype), self.alpha, self.z0_rest)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0],
                 sync_dist=True)
        self.log("train/alpha", self.alpha, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    @torch.no_grad()
    def free_run(self, x: Tensor) -> Tensor:
        """Free run from the first observation of x (1, T, N) for T steps -> (T, N)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            z0 = self.latent_states(x[:, :1].to(self.model.A.dtype))[:, 0]
            if self.z0_rest is not None:
                z0 = torch.cat([z0[:, : x.shape[-1]], self.z0_rest.expand(z0.shape[0], -1)], dim=-1)
            z = self.model.generate(z0, x.shape[1])
        return z[0, :, : x.shape[-1]]

    def _evaluate(self, batch: Any, stage: str) -> None:
        x = batch["x"] if isinstance(batch, dict) else batch
        gen = self.free_run(x).cpu().numpy()
        truth = x[0].detach().cpu().double().numpy()
        d_stsp = state_space_divergence(truth, gen, self.hparams.d_stsp_bins)
        d_h = power_spectrum_distance(truth, gen, self.hparams.pse_smoothing)
        self._last_eval = (truth, gen)
        self.log(f"{stage}/d_stsp", d_stsp, on_epoch=True, batch_size=1, sync_dist=True)
        self.log(f"{stage}/d_h", d_h, on_epoch=True, batch_size=1, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    def figures(self) -> dict[str, Any]:
        if self._last_eval is None:
            return {}
        import matplotlib.pyplot as plt

        truth, gen = self._last_eval
        n = truth.shape[1]
        pairs = [(0, 1), (0, 2), (1, 2)] if n >= 3 else [(0, min(1, n - 1))]
        fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 4), squeeze=False)
        g = gen[np.all(np.isfinite(gen), axis=1)]
        for ax, (i, j) in zip(axes[0], pairs):
            ax.plot(truth[:, i], truth[:, j], lw=0.3, color="0.5", label="ground truth")
            ax.plot(g[:, i], g[:, j], lw=0.3, color="C3", label="free run")
            ax.set_xlabel(f"x{i + 1}")
            ax.set_ylabel(f"x{j + 1}")
        axes[0][0].legend(loc="upper right", fontsize=8)
        fig.suptitle(f"shPLRNN free run vs ground truth ({len(truth)} steps)")
        fig.tight_layout()
        return {"attractor": fig}

    def configure_optimizers(self) -> Any:
        return self.optimizer_factory(self.parameters())
