"""PIG: Physics-Informed Gaussians as Adaptive Parametric Mesh Representations (Kang, Oh, Hong, Park;
arXiv 2412.05994; official code NamGyuKang/Physics-Informed-Gaussians, Helmholtz2d/network.py,
Flow_Mixing3d/networks/physics_informed_neural_networks.py, Klein_Gordon3d/klein_gordon3d.py,
Nonlinear_Diffusion3d/diffusion3d.py).

A PINN whose input coordinates first pass through a learnable Gaussian feature embedding (paper Eq. 3-4):

    FE(x)_c = Σ_{i=1..N} w_{c,i} exp(-½ Σ_d ((x_d - μ_{c,i,d}) / σ_{c,i,d})²),   c = 1..k,
    u(x)    = MLP(FE(x)),   MLP = Linear(k, 16) -> tanh -> Linear(16, 1)  (num_layers = 2, hidden_dim = 16).

Each of the k channels has its OWN N Gaussians (μ, σ shaped (k, N, d)), diagonal covariance, scalar weight.
Initialisation as in the official code (`gaussian_init="random"`, the default): μ ~ U(-1, 1), σ = σ0,
w ~ N(0, 0.01²). μ, σ and w are trained by the PDE loss (the "adaptive mesh"); `freeze_gaussians=true` keeps μ, σ
fixed (at their random initial positions: frozen random Gaussians, an ablation).
`gaussian_init="grid"` puts each channel's N = n^d means on the regular grid linspace(-1, 1, n)^d with σ = the grid
spacing 2 / (n - 1) on every axis (σ0 unused); with `freeze_gaussians=true` this is the fixed-grid (PIXEL-type) baseline
of the paper's comparison (Sec. 4): fixed positions and widths on a grid, trainable per-node features w and MLP.
The Gaussians live in [-1, 1]^d: the problem's box (`datamodules.pig_data.PROBLEMS`) is mapped affinely onto it
before the embedding (the official flow-mixing code maps its box onto [0, grid_range]^3 = [0, 2]^3 with
μ ~ U(0, 2): the same thing shifted); for Helmholtz ([-1, 1]^2) the map is the identity and is skipped.

Problems (`problem=`, the data module's `name`) and losses (residual weight `f_scale`, initial-condition weight
`initial_weight`, boundary weight `boundary_weight`; `null` = the per-problem default in `LOSS_DEFAULTS`):
- helmholtz2d (official pig.py): mean(u_b - g)² + f_scale · mean(Δu + λu - q)², f_scale = 1e-4.
- allen_cahn, inputs (t, x): residual u_t - 1e-4 u_xx + 5u³ - 5u; loss f_scale · mean(r²) + initial_weight ·
  mean(u(0, x) - x² cos πx)² + boundary_weight · [mean(u(t, -1) - u(t, 1))² + mean(u_x(t, -1) - u_x(t, 1))²]
  (soft periodic conditions on u and u_x). The official repository has no Allen-Cahn code: the weights
  (f_scale = 1, initial_weight = 100, boundary_weight = 1) are not verified.
- flow_mixing3d, inputs (t, x, y) (official flow_mixing3d.py, PINN branch): residual u_t + a u_x + b u_y with the
  rotating field (a, b) from the batch; loss 10 · mean(r²) + mean(u(0) - u0)² + mean(u_b - g)².
- klein_gordon3d, inputs (t, x, y) (official klein_gordon3d.py, PINN branch): residual u_tt - u_xx - u_yy + u² - f
  with the manufactured source f from the batch; loss mean(r²) + mean(u(0) - u0)² + mean(u_b - g)² (weights 1, 1, 1).
- nonlinear_diffusion3d, inputs (t, x, y) (official diffusion3d.py, PINN branch): residual
  u_t - α (u_x² + u u_xx + u_y² + u u_yy), α = `nonlinear_diffusivity` = 0.05; loss mean(r²) + mean(u(0) - u0)²
  + mean(u_b²) (weights 1, 1, 1; zero Dirichlet data).
- lid_driven_cavity, inputs (x, y) in [0, 1]^2, outputs (u, v, p) (one PIG, MLP k-16-3; `OUT_DIMS`): steady
  incompressible Navier-Stokes, residuals u u_x + v u_y + p_x - Δu/Re, u v_x + v v_y + p_y - Δv/Re, u_x + v_y
  (Re = `reynolds` = 100); loss f_scale · Σ_eq mean(r_eq²) + boundary_weight · Σ_{u,v} mean((u, v)_wall - g)² with
  the lid y = 1 at (1, 0) and no-slip walls (weights 1, 1). The paper shows the cavity (project page) but the official
  repository has no cavity code: Re, lid profile, weights and sizes are assumptions (configs/experiment/pig/
  lid_driven_cavity.yaml). Metric: pooled relative L2 of (u, v) against our solver (datamodules/cavity.py); p is not
  scored (fixed only up to a constant).
The official 3-D code maps its box onto [0, grid_range]^3 with μ ~ U(0, grid_range) and σ0 in those units: Klein-Gordon
grid_range = 2 (σ0 = 0.5 here unchanged), nonlinear diffusion grid_range = 1 (its σ0 = 0.1 is 0.2 in the [-1, 1]^3
units used here; its t in [0, 1] enters unscaled).

Derivatives: `laplacian="autograd"` uses autograd (first derivatives of every input, second derivatives only of
the coordinates the residual needs, each taken separately: u_xx + u_yy, never a Hessian trace);
`laplacian="analytic"` computes the same derivatives in one forward pass (closed-form first and second derivatives
of each Gaussian, then propagated through the tanh MLP as (value, ∂_d, ∂²_d) per coordinate), followed by one
backward for the parameters: identical up to float rounding (tests compare both and finite differences) and ~2x
cheaper on a CPU. Both run with autocast off in the weights' dtype (float32, or float64 under
trainer.precision=64-true). Deviation, documented: the official σ is a raw parameter that may cross zero; here the
Gaussian uses |σ| clamped at `min_sigma` (the same Gaussian for either sign; the clamp only avoids a division by 0).
The official flow-mixing MLP uses Glorot-normal weights; here PyTorch's default Linear init is used for every problem
(as in the official PyTorch Helmholtz code).

Baselines: `model="mlp"`, the MLP-PINN (tanh, `mlp_width` x `mlp_depth` hidden layers) with the same loss;
`gaussian_init="grid"` + `freeze_gaussians=true`, fixed-grid Gaussian features (PIXEL-type) with the same MLP and loss.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from datamodules.pig_data import AC_DIFFUSION, AC_REACTION, CAVITY_RE, ND_ALPHA, PROBLEMS
from launch.errors import UserError, check_min, check_positive
from lit_models.common.checks import check_scheduler
from lit_models.common.pde import RelativeL2, check_problem_matches_data, no_autocast
from lit_models.common.plotting import reference_colours
from lit_models.common.steps import attached_datamodule

MODELS = ("pig", "mlp")
LAPLACIANS = ("autograd", "analytic")
SECOND_DERIVATIVES = {"helmholtz2d": (0, 1), "allen_cahn": (1,), "flow_mixing3d": (),  # columns needing ∂²
                      "klein_gordon3d": (0, 1, 2), "nonlinear_diffusion3d": (1, 2), "lid_driven_cavity": (0, 1)}
OUT_DIMS = {"lid_driven_cavity": 3}  # network outputs per problem (default 1): the cavity predicts (u, v, p)
SECOND_OUTPUTS = {"lid_driven_cavity": (0, 1)}  # outputs whose ∂² the residual needs (u, v; not p)
LOSS_DEFAULTS = {  # (f_scale, initial_weight, boundary_weight)
    "helmholtz2d": (1e-4, 0.0, 1.0),      # official helmholtz2d_pig.sh
    "allen_cahn": (1.0, 100.0, 1.0),      # not verified (no official PIG Allen-Cahn code)
    "flow_mixing3d": (10.0, 1.0, 1.0),    # official flow_mixing3d.py: 10 * residual + initial + boundary
    "klein_gordon3d": (1.0, 1.0, 1.0),    # official klein_gordon3d.py: residual + initial + boundary
    "nonlinear_diffusion3d": (1.0, 1.0, 1.0),  # official diffusion3d.py: residual + initial + boundary
    "lid_driven_cavity": (1.0, 0.0, 1.0),      # assumed (no official PIG cavity code): residuals + walls, weights 1
}
# figure axes per problem: (horizontal coordinate, vertical coordinate) of the field image
PLOT_AXES = {"helmholtz2d": (0, 1), "allen_cahn": (1, 0), "flow_mixing3d": (1, 2), "klein_gordon3d": (1, 2),
             "nonlinear_diffusion3d": (1, 2), "lid_driven_cavity": (0, 1)}


GAUSSIAN_INITS = ("random", "grid")


def grid_side(num_gaussians: int, in_dim: int) -> int:
    """n with n^d = num_gaussians (the grid init needs a perfect d-th power, n >= 2); a ValueError otherwise."""
    n = round(num_gaussians ** (1.0 / in_dim))
    if n < 2 or n**in_dim != num_gaussians:
        lo = max(int(num_gaussians ** (1.0 / in_dim)), 2)
        raise ValueError(f"gaussian_init='grid' needs num_gaussians = n^{in_dim} with n >= 2 (a regular grid in "
                         f"{in_dim}-D), got {num_gaussians}; e.g. {lo**in_dim} or {(lo + 1)**in_dim}")
    return n


def grid_means_and_sigma(num_gaussians: int, in_dim: int) -> tuple[Tensor, float]:
    """The fixed-grid placement: means (N, d) on linspace(-1, 1, n)^d (first coordinate slowest) and σ = the
    spacing 2 / (n - 1), so that neighbouring Gaussians overlap at one σ (a smooth, gap-free cover of the box)."""
    n = grid_side(num_gaussians, in_dim)
    axis = torch.linspace(-1.0, 1.0, n)
    means = torch.stack(torch.meshgrid(*[axis] * in_dim, indexing="ij"), -1).reshape(-1, in_dim)
    return means, 2.0 / (n - 1)


class GaussianFeatures(nn.Module):
    """FE(x)_c = Σ_i w_{c,i} exp(-½ Σ_d ((x_d - μ_{c,i,d}) / σ_{c,i,d})²) with per-channel Gaussian sets (Eq. 3).
    `init="random"`: μ ~ U(-1, 1), σ = sigma_init (official code); `init="grid"`: every channel's μ on the same
    regular grid over [-1, 1]^d, σ = the grid spacing (`grid_means_and_sigma`; sigma_init unused)."""

    def __init__(self, in_dim: int = 2, channels: int = 4, num_gaussians: int = 800, sigma_init: float = 0.1,
                 min_sigma: float = 1e-3, init: str = "random") -> None:
        super().__init__()
        if init not in GAUSSIAN_INITS:
            raise ValueError(f"unknown gaussian_init {init!r}; choose from {', '.join(GAUSSIAN_INITS)}")
        self.min_sigma = min_sigma
        shape = (channels, num_gaussians, in_dim)
        if init == "random":
            self.mu = nn.Parameter(torch.empty(shape).uniform_(-1.0, 1.0))
            self.sigma = nn.Parameter(torch.full(shape, float(sigma_init)))
        else:
            means, spacing = grid_means_and_sigma(num_gaussians, in_dim)
            self.mu = nn.Parameter(means.expand(shape).clone())
            self.sigma = nn.Parameter(torch.full(shape, spacing))
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (channels, num_gaussians)))

    def inverse_sigma(self) -> Tensor:
        return 1.0 / self.sigma.abs().clamp_min(self.min_sigma)

    def forward(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, k)."""
        z = (x[None, :, None, :] - self.mu[:, None]) * self.inverse_sigma()[:, None]  # (k, B, N, d)
        g = torch.exp(-0.5 * (z * z).sum(-1)) * self.weight[:, None]                   # (k, B, N)
        return g.sum(-1).t()

    def with_derivatives(self, x: Tensor, second: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """FE (B, k), ∂FE/∂x_d (B, k, d), ∂²FE/∂x_d² (B, k, d) (None if not `second`), in closed form, one
        coordinate at a time. ∂_d G = -G z_d / σ_d and ∂²_d G = G (z_d² - 1) / σ_d² for G = w exp(-½ |z|²),
        z_d = (x_d - μ_d) / σ_d."""
        inv = self.inverse_sigma()                                                      # (k, N, d)
        zs = [(x[None, :, None, d] - self.mu[:, None, :, d]) * inv[:, None, :, d] for d in range(x.shape[1])]
        sq = zs[0] * zs[0]
        for z in zs[1:]:
            sq = sq + z * z
        wg = torch.exp(-0.5 * sq) * self.weight[:, None]                                # (k, B, N)
        first, second_ = [], []
        for d, z in enumerate(zs):
            s = inv[:, None, :, d]
            wgz = wg * z * s
            first.append(-wgz.sum(-1))
            if second:
                second_.append((wgz * z * s - wg * s * s).sum(-1))
        d2 = torch.stack(second_, -1).transpose(0, 1) if second else None
        return wg.sum(-1).t(), torch.stack(first, -1).transpose(0, 1), d2


def tanh_mlp(in_dim: int, hidden: int, n_hidden: int, out_dim: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(n_hidden):
        layers += [nn.Linear(in_dim, hidden), nn.Tanh()]
        in_dim = hidden
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def propagate_derivatives(net: nn.Sequential, h: Tensor, dh: Tensor,
                          d2h: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Push (value (B, m), ∂_d (B, m, D), ∂²_d (B, m, D) or None) through Linear/Tanh layers (chain rule per
    coordinate: (tanh h)'' = tanh'(h) h'' - 2 tanh(h) tanh'(h) h'²); returns the same triple at the output."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            h = layer(h)
            dh_new = torch.einsum("om,bmd->bod", layer.weight, dh)
            if d2h is not None:
                d2h = torch.einsum("om,bmd->bod", layer.weight, d2h)
            dh = dh_new
        elif isinstance(layer, nn.Tanh):
            t = torch.tanh(h)
            s = 1 - t * t  # tanh'
            if d2h is not None:
                d2h = s[..., None] * d2h - 2 * (t * s)[..., None] * dh * dh
            dh = s[..., None] * dh
            h = t
        else:
            raise TypeError(f"analytic derivatives support Linear and Tanh layers only, got {type(layer).__name__}")
    return h, dh, d2h


def propagate_second_order(net: nn.Sequential, h: Tensor, dh: Tensor, d2h: Tensor) -> tuple[Tensor, Tensor]:
    """Push (value, ∂_d, ∂²_d) through Linear/Tanh layers; returns (u, Σ_d ∂²_d u)."""
    h, _, d2h = propagate_derivatives(net, h, dh, d2h)
    return h, d2h.sum(-1)


class PIGNet(nn.Module):
    """u(x) = MLP(FE(x)): Gaussian features (k channels) -> Linear(k, hidden) -> tanh -> ... -> Linear(., 1)."""

    def __init__(self, in_dim: int = 2, channels: int = 4, num_gaussians: int = 800, sigma_init: float = 0.1,
                 hidden_dim: int = 16, num_layers: int = 2, min_sigma: float = 1e-3,
                 gaussian_init: str = "random", out_dim: int = 1) -> None:
        super().__init__()
        self.features = GaussianFeatures(in_dim, channels, num_gaussians, sigma_init, min_sigma, gaussian_init)
        self.mlp = tanh_mlp(channels, hidden_dim, max(num_layers - 1, 0), out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.features(x))

    def with_derivatives(self, x: Tensor, second: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """u (B, 1), ∂_d u (B, d), ∂²_d u (B, d) (None if not `second`), closed form, one forward pass; with several
        outputs (out_dim = m > 1): u (B, m), ∂_d u (B, m, d), ∂²_d u (B, m, d)."""
        f, df, d2f = self.features.with_derivatives(x, second)
        u, du, d2u = propagate_derivatives(self.mlp, f, df, d2f)
        if u.shape[1] > 1:
            return u, du, d2u
        return u, du[:, 0], None if d2u is None else d2u[:, 0]

    def with_laplacian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, df, d2f = self.features.with_derivatives(x)
        return propagate_second_order(self.mlp, f, df, d2f)


def pde_residual(problem: str, u: Tensor, du: Tensor, d2u: Tensor | None, batch: dict[str, Tensor],
                 coefficient: float = 1.0, diffusion: float = AC_DIFFUSION, reaction: float = AC_REACTION,
                 nonlinear_diffusivity: float = ND_ALPHA, reynolds: float = CAVITY_RE) -> Tensor:
    """The PDE residual (B, 1) from u (B, 1), ∂_d u (B, d), ∂²_d u (B, d) (columns in the problem's coordinate order):
    helmholtz2d Δu + λu - q; allen_cahn u_t - d u_xx + r (u³ - u); flow_mixing3d u_t + a u_x + b u_y;
    klein_gordon3d u_tt - u_xx - u_yy + u² - f; nonlinear_diffusion3d u_t - α (u_x² + u u_xx + u_y² + u u_yy).
    lid_driven_cavity: outputs (u, v, p), u (B, 3), du (B, 3, 2), d2u (B, 3, 2) (columns x, y) -> (B, 3):
    [u u_x + v u_y + p_x - Δu / Re, u v_x + v v_y + p_y - Δv / Re, u_x + v_y]."""
    if problem == "lid_driven_cavity":
        vel_u, vel_v = u[:, :1], u[:, 1:2]
        lap = d2u[:, :2].sum(-1)                                              # (B, 2): Δu, Δv
        conv = vel_u * du[:, :2, 0] + vel_v * du[:, :2, 1]                   # (B, 2): (u·∇)u, (u·∇)v
        momentum = conv + du[:, 2, :] - lap / reynolds                       # + ∇p
        return torch.cat([momentum, du[:, 0, :1] + du[:, 1, 1:2]], 1)
    if problem == "helmholtz2d":
        return d2u.sum(-1, keepdim=True) + coefficient * u - batch["q"]
    if problem == "allen_cahn":
        return du[:, :1] - diffusion * d2u[:, 1:2] + reaction * (u**3 - u)
    if problem == "flow_mixing3d":
        return du[:, :1] + batch["a"] * du[:, 1:2] + batch["b"] * du[:, 2:3]
    if problem == "klein_gordon3d":
        return d2u[:, :1] - d2u[:, 1:2] - d2u[:, 2:3] + u**2 - batch["f"]
    if problem == "nonlinear_diffusion3d":
        ux, uy = du[:, 1:2], du[:, 2:3]
        return du[:, :1] - nonlinear_diffusivity * (ux * ux + u * d2u[:, 1:2] + uy * uy + u * d2u[:, 2:3])
    raise ValueError(f"unknown PIG problem {problem!r}")


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=0.01)
DEFAULT_SCHEDULER = functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.9995)


class PIGModule(L.LightningModule):
    """Physics-informed training of a PIG (or of the MLP-PINN baseline) on Helmholtz 2D, Allen-Cahn, flow mixing 3D,
    Klein-Gordon 3D, nonlinear diffusion 3D (paper Sec. 4) or the lid-driven cavity (u, v, p outputs).

    Metrics: `train/loss`, `train/boundary_loss`, `train/residual_loss` (+ `train/initial_loss` for the
    time-dependent problems); `val/rel_l2`, `test/rel_l2` on the data module's grid; `test/mean_sigma` (PIG only; in the
    [-1, 1]^d units the Gaussians live in).
    LR schedule stepped every iteration (ExponentialLR; Helmholtz γ = 0.9995).
    """

    def __init__(self, model: str = "pig", problem: str = "helmholtz2d", in_dim: int | None = None,
                 channels: int = 4, num_gaussians: int = 800,
                 sigma_init: float = 0.1, hidden_dim: int = 16, num_layers: int = 2, min_sigma: float = 1e-3,
                 freeze_gaussians: bool = False, gaussian_init: str = "random", mlp_width: int = 64,
                 mlp_depth: int = 3,
                 coefficient: float = 1.0, diffusion: float = AC_DIFFUSION, reaction: float = AC_REACTION,
                 nonlinear_diffusivity: float = ND_ALPHA, reynolds: float = CAVITY_RE, f_scale: float | None = None,
                 boundary_weight: float | None = None, initial_weight: float | None = None,
                 laplacian: str = "autograd", chunk_size: int | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER,
                 scheduler: Callable[..., Any] | None = DEFAULT_SCHEDULER) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        if problem not in PROBLEMS:
            raise ValueError(f"unknown PIG problem {problem!r}; choose from {', '.join(PROBLEMS)}")
        spec = PROBLEMS[problem]
        if in_dim is not None and in_dim != spec.dim:
            raise ValueError(f"in_dim = {in_dim} but problem {problem!r} has {spec.dim} inputs {spec.coords}")
        if gaussian_init not in GAUSSIAN_INITS:
            raise ValueError(f"unknown gaussian_init {gaussian_init!r}; choose from {', '.join(GAUSSIAN_INITS)}")
        if model == "pig" and gaussian_init == "grid":
            grid_side(num_gaussians, spec.dim)  # a clear error before building anything
        if laplacian not in LAPLACIANS:
            raise ValueError(f"unknown laplacian {laplacian!r}; choose from {', '.join(LAPLACIANS)}")
        if channels < 1 or num_gaussians < 1 or not sigma_init > 0 or num_layers < 1:
            raise ValueError(f"need channels, num_gaussians, num_layers >= 1 and sigma_init > 0; got {channels}, "
                             f"{num_gaussians}, {num_layers}, {sigma_init}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or null, got {chunk_size}")
        check_min("model", 1, hidden_dim=hidden_dim, mlp_width=mlp_width)
        check_min("model", 0, mlp_depth=mlp_depth)  # 0: a linear model
        check_positive("model", min_sigma=min_sigma)  # the clamp of |sigma| that keeps 1 / sigma finite
        if nonlinear_diffusivity <= 0:
            raise ValueError(f"nonlinear_diffusivity must be > 0, got {nonlinear_diffusivity}")
        if not reynolds > 0:
            raise ValueError(f"reynolds must be > 0, got {reynolds}")
        weights = [w if w is not None else d for w, d in
                   zip((f_scale, initial_weight, boundary_weight), LOSS_DEFAULTS[problem])]
        if any(w < 0 for w in weights):
            raise ValueError(f"loss weights must be >= 0, got f_scale, initial_weight, boundary_weight = {weights}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.f_scale, self.initial_weight, self.boundary_weight = weights
        check_scheduler(scheduler)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        in_dim, out_dim = spec.dim, OUT_DIMS.get(problem, 1)
        low = torch.tensor([lo for lo, _ in spec.domain])
        high = torch.tensor([hi for _, hi in spec.domain])
        # x -> (x - centre) * scale maps the box onto [-1, 1]^d (skipped when it is the identity)
        self.register_buffer("in_centre", (low + high) / 2, persistent=False)
        self.register_buffer("in_scale", 2.0 / (high - low), persistent=False)
        self.identity_map = bool(torch.all(low == -1) and torch.all(high == 1))
        if model == "pig":
            self.net: nn.Module = PIGNet(in_dim, channels, num_gaussians, sigma_init, hidden_dim, num_layers,
                                         min_sigma, gaussian_init, out_dim)
            if freeze_gaussians:
                self.net.features.mu.requires_grad_(False)
                self.net.features.sigma.requires_grad_(False)
        else:
            self.net = tanh_mlp(in_dim, mlp_width, mlp_depth, out_dim)
        self.val_rel_l2, self.test_rel_l2 = RelativeL2(), RelativeL2()
        self._last: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ evaluation of u and its derivatives
    @property
    def net_dtype(self) -> torch.dtype:
        """The dtype of the network's weights: float32, or float64 under trainer.precision=64-true."""
        return next(self.net.parameters()).dtype

    def normalise(self, x: Tensor) -> Tensor:
        return x if self.identity_map else (x - self.in_centre) * self.in_scale

    def _u(self, x: Tensor) -> Tensor:
        return self.net(self.normalise(x))

    def forward(self, x: Tensor) -> Tensor:
        chunk = self.hparams.chunk_size
        if chunk is None or x.shape[0] <= chunk:
            return self._u(x)
        return torch.cat([self._u(c) for c in x.split(chunk)])

    def derivatives(self, x: Tensor, second: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """u (B, 1), ∂u/∂x_d (B, d) and ∂²u/∂x_d² (B, d) in the problem's coordinates; `second` lists the columns
        whose second derivative is needed (default: those of the problem's residual; () for none: d2 is None).
        Autograd: other columns of d2 are 0; analytic: all columns are computed. Problems with m > 1 outputs (the
        cavity's (u, v, p)): u (B, m), du (B, m, d), d2 (B, m, d); autograd takes ∂² only of `SECOND_OUTPUTS` (the
        other outputs' d2 are 0), analytic of all. Autocast is off (mixed precision
        would corrupt the second derivatives of Eq. 4's Gaussians)."""
        second = SECOND_DERIVATIVES[self.hparams.problem] if second is None else tuple(second)
        chunk = self.hparams.chunk_size
        with no_autocast(x.device.type):
            if chunk is not None and x.shape[0] > chunk:
                parts = [self._derivatives(c, second) for c in x.split(chunk)]
                d2 = None if not second else torch.cat([p[2] for p in parts])
                return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), d2
            return self._derivatives(x, second)

    def _derivatives(self, x: Tensor, second: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.hparams.model == "pig" and self.hparams.laplacian == "analytic":
            u, du, d2 = self.net.with_derivatives(self.normalise(x), second=bool(second))
            if self.identity_map:
                return u, du, d2
            return u, du * self.in_scale, None if d2 is None else d2 * self.in_scale**2
        x = x.detach().requires_grad_(True)
        u = self._u(x)
        if u.shape[1] > 1:
            return self._autograd_multi(x, u, second)
        (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        if not second:
            return u, du, None
        cols = [torch.zeros_like(du[:, 0])] * x.shape[1]
        for d in second:
            (g,) = torch.autograd.grad(du[:, d].sum(), x, create_graph=True)
            cols[d] = g[:, d]
        return u, du, torch.stack(cols, 1)

    def _autograd_multi(self, x: Tensor, u: Tensor, second: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Autograd derivatives of every output: du (B, m, d); d2 (B, m, d) for `SECOND_OUTPUTS` x `second`."""
        du = torch.stack([torch.autograd.grad(u[:, o].sum(), x, create_graph=True)[0] for o in range(u.shape[1])], 1)
        if not second:
            return u, du, None
        zero = torch.zeros_like(du[:, 0, 0])
        outputs = SECOND_OUTPUTS.get(self.hparams.problem, tuple(range(u.shape[1])))
        rows = []
        for o in range(u.shape[1]):
            cols = [zero] * x.shape[1]
            if o in outputs:
                for d in second:
                    cols[d] = torch.autograd.grad(du[:, o, d].sum(), x, create_graph=True)[0][:, d]
            rows.append(torch.stack(cols, 1))
        return u, du, torch.stack(rows, 1)

    def value_and_laplacian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, 1) and Δu (B, 1) = Σ_d ∂²u/∂x_d², each second derivative taken separately."""
        u, _, d2 = self.derivatives(x, second=tuple(range(x.shape[1])))
        return u, d2.sum(-1, keepdim=True)

    # ------------------------------------------------------------------ training
    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """{"residual": mean r², "initial": initial-condition MSE, "boundary": boundary MSE, "loss": the weighted
        sum} for a training batch; autocast off, in the weights' dtype."""
        with no_autocast(self.device.type):
            return self._losses(batch)

    def _losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hp = self.hparams
        batch = {k: v.to(self.net_dtype) for k, v in batch.items()}
        u, du, d2 = self.derivatives(batch["x"])
        res = pde_residual(hp.problem, u, du, d2, batch, hp.coefficient, hp.diffusion, hp.reaction,
                           hp.nonlinear_diffusivity, hp.reynolds)
        out = {"residual": (res**2).mean(0).sum()}  # one equation: mean r²; several (cavity): Σ of their mean r²
        if hp.problem == "lid_driven_cavity":  # wall velocities (u, v): Σ over the two components of the MSE
            out["boundary"] = ((self(batch["x_boundary"])[:, :2] - batch["g"]) ** 2).mean(0).sum()
        elif hp.problem == "helmholtz2d":
            out["boundary"] = torch.mean((self(batch["x_boundary"]) - batch["g"]) ** 2)
        elif hp.problem == "allen_cahn":
            out["initial"] = torch.mean((self(batch["x_initial"]) - batch["u_initial"]) ** 2)
            ul, dul, _ = self.derivatives(batch["x_left"], second=())
            ur, dur, _ = self.derivatives(batch["x_right"], second=())
            out["boundary"] = torch.mean((ul - ur) ** 2) + torch.mean((dul[:, 1] - dur[:, 1]) ** 2)
        else:
            out["initial"] = torch.mean((self(batch["x_initial"]) - batch["u_initial"]) ** 2)
            out["boundary"] = torch.mean((self(batch["x_boundary"]) - batch["g"]) ** 2)
        loss = self.boundary_weight * out["boundary"] + self.f_scale * out["residual"]
        if "initial" in out:
            loss = loss + self.initial_weight * out["initial"]
        out["loss"] = loss
        return out

    def setup(self, stage: str | None = None) -> None:
        """The problem and its constants must be the data's: a residual with other constants than the reference's
        trains towards another solution and is scored against this one."""
        check_problem_matches_data(self, self.hparams.problem)
        hp, dm = self.hparams, attached_datamodule(self)
        if hp.problem == "allen_cahn" and (hp.diffusion, hp.reaction) != (AC_DIFFUSION, AC_REACTION):
            raise UserError(f"model.diffusion={hp.diffusion}, model.reaction={hp.reaction}: the Allen-Cahn "
                            f"reference (datamodules.pig_data) is solved with diffusion {AC_DIFFUSION} and reaction "
                            f"{AC_REACTION}")
        nd_alpha = getattr(getattr(dm, "hparams", None), "nd_alpha", None)
        if hp.problem == "nonlinear_diffusion3d" and nd_alpha is not None and hp.nonlinear_diffusivity != nd_alpha:
            raise UserError(f"model.nonlinear_diffusivity={hp.nonlinear_diffusivity} but data.nd_alpha={nd_alpha}: "
                            "the residual and the reference need the same alpha (the model config takes data.nd_alpha)")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        with no_autocast(self.device.type):
            out = self.losses(batch)
        self.log("train/loss", out["loss"], on_step=True, on_epoch=False, prog_bar=True, batch_size=1, sync_dist=True)
        for name in ("boundary", "residual", "initial"):
            if name in out:
                self.log(f"train/{name}_loss", out[name], on_step=True, on_epoch=False, batch_size=1, sync_dist=True)
        return out["loss"]

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Tensor], metric: RelativeL2, split: str) -> None:
        with no_autocast(self.device.type):  # chunks: the (k, B, N, d) tensor of a 250^2 grid would be GBs
            x = batch["x"].to(self.net_dtype)
            pred = torch.cat([self._u(c) for c in x.split(self.hparams.chunk_size or 4096)])
        n_ref = batch["u"].shape[1]  # the cavity scores the velocity (u, v) only, not p: one pooled relative L2
        metric.update(pred[:, :n_ref].reshape(1, -1), batch["u"].to(self.net_dtype).reshape(1, -1))
        self.log(f"{split}/rel_l2", metric, on_step=False, on_epoch=True, batch_size=1, prog_bar=True)
        if self.hparams.model == "pig":
            self.log(f"{split}/mean_sigma", self.net.features.sigma.abs().mean(), on_step=False, on_epoch=True,
                     batch_size=1, sync_dist=True)
        self._last = {"x": batch["x"].cpu(), "pred": pred.cpu(), "exact": batch["u"].cpu(), "split": split}
        for key in ("shape", "p"):
            if key in batch:
                self._last[key] = batch[key].cpu()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, self.val_rel_l2, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, self.test_rel_l2, "test")

    def configure_optimizers(self):
        opt = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    # ------------------------------------------------------------------ figures
    def _field_images(self) -> list:
        """(exact, prediction, |error|) as 2-D arrays with rows along the vertical plot axis: Helmholtz (y, x),
        Allen-Cahn (t, x), the 3-D (t, x, y) problems the last time slice (y, x)."""
        last, problem = self._last, self.hparams.problem
        if "shape" in last:
            shape = [int(s) for s in last["shape"]]
        else:
            m = int(round(last["x"].shape[0] ** (1 / PROBLEMS[problem].dim)))
            shape = [m] * PROBLEMS[problem].dim
        pred, exact = last["pred"][:, 0], last["exact"][:, 0]
        imgs = []
        for field in (exact, pred, (pred - exact).abs()):
            img = field.reshape(shape)
            if PROBLEMS[problem].dim == 3:
                img = img[-1].t()  # (x, y) at the final time -> rows y
            imgs.append(img.numpy())
        return imgs

    def _cavity_figure(self, extent: tuple[float, ...], name: str):
        """Lid-driven cavity: rows u, v, |u| (+ streamlines), p; columns reference | prediction | |error| (p: reference
        | prediction, both shifted to mean zero; p is not scored). Returns (figure, reference speed image)."""
        import matplotlib.pyplot as plt

        last = self._last
        ny, nx = (int(s) for s in last["shape"])
        pred, exact = last["pred"].double(), last["exact"].double()
        grid = lambda a: a.reshape(ny, nx).numpy()  # noqa: E731  rows y, columns x
        ref_u, ref_v, pu, pv = grid(exact[:, 0]), grid(exact[:, 1]), grid(pred[:, 0]), grid(pred[:, 1])
        ref_s, pred_s = (ref_u**2 + ref_v**2) ** 0.5, (pu**2 + pv**2) ** 0.5
        rows = [("u", ref_u, pu), ("v", ref_v, pv), ("|u|", ref_s, pred_s)]
        if "p" in last:
            rp, pp = grid(last["p"][:, 0].double()), grid(pred[:, 2])
            rows.append(("p - mean", rp - rp.mean(), pp - pp.mean()))
        xs, ys = torch.linspace(extent[0], extent[1], nx).numpy(), torch.linspace(extent[2], extent[3], ny).numpy()
        fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.4 * len(rows)), squeeze=False)
        for r, (label, ref, prd) in enumerate(rows):
            is_p = label.startswith("p")
            lo, hi = (float(min(ref.min(), prd.min())), float(max(ref.max(), prd.max()))) if not is_p else (
                float(ref.min()), float(ref.max()))
            for c, (img, title) in enumerate(((ref, "reference"), (prd, name), (abs(prd - ref), "|error|"))):
                ax = axes[r, c]
                err = c == 2
                kw = {} if err or is_p else {"vmin": lo, "vmax": hi}
                if is_p:  # robust colour range: the lid corners are singular for p
                    q = torch.quantile(torch.from_numpy(img).flatten(), torch.tensor([0.02, 0.98], dtype=torch.float64))
                    ref_q = torch.quantile(torch.from_numpy(ref).flatten(), q.new_tensor([0.02, 0.98]))
                    kw = ({"vmin": 0.0, "vmax": float(q[1])} if err
                          else {"vmin": float(ref_q[0]), "vmax": float(ref_q[1])})
                im = ax.imshow(img, origin="lower", extent=extent, aspect="equal",
                               cmap="magma" if err else "RdBu_r", **kw)
                if label == "|u|" and not err:
                    uu, vv = (ref_u, ref_v) if c == 0 else (pu, pv)
                    ax.streamplot(xs, ys, uu, vv, color="k", density=1.0, linewidth=0.5, arrowsize=0.5)
                    ax.set_xlim(extent[0], extent[1])
                    ax.set_ylim(extent[2], extent[3])
                ax.set_title(f"{label}: {title}" + (" (not scored)" if is_p and c == 1 else ""), fontsize=9)
                ax.set_xlabel("x")
                ax.set_ylabel("y")
                fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        return fig, ref_s

    def figures(self) -> dict[str, Any]:
        """{"field": exact | prediction | |error| side by side (3-D problems: at the final time), titled with the
        pooled rel. L2 of the evaluated grid, "gaussians": PIG Gaussian centres (dot size ~ |weight|; 1-σ ellipses of
        the 20 largest |weight|) per channel over the exact field, in the problem's coordinates, the domain outlined
        and the view widened to Gaussians outside it}."""
        if self._last is None:
            return {}
        import matplotlib.pyplot as plt
        from matplotlib.patches import Ellipse, Rectangle

        from lit_models.common.plotting import view_limits

        problem = self.hparams.problem
        spec = PROBLEMS[problem]
        h_ax, v_ax = PLOT_AXES[problem]
        extent = (*spec.domain[h_ax], *spec.domain[v_ax])
        name = "PIG" if self.hparams.model == "pig" else "MLP-PINN"
        if problem == "lid_driven_cavity":
            fig, background = self._cavity_figure(extent, name)
        else:
            imgs = self._field_images()
            background = imgs[0]
            suffix = f" (t = {spec.domain[0][1]:g})" if spec.dim == 3 else ""
            fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
            exact_title = "reference" if problem in ("allen_cahn", "nonlinear_diffusion3d") else "exact"
            for ax, img, title in zip(axes, imgs, (exact_title, name, "|error|")):
                im = ax.imshow(img, origin="lower", extent=extent, aspect="auto",
                               **({"cmap": "magma"} if title == "|error|"
                                  else {"cmap": "RdBu_r", **reference_colours(imgs[0])}))
                ax.set_title(title + suffix)
                ax.set_xlabel(spec.coords[h_ax])
                ax.set_ylabel(spec.coords[v_ax])
                fig.colorbar(im, ax=ax, shrink=0.8)
        exact = self._last["exact"].double()
        pred = self._last["pred"][:, : exact.shape[1]].double()
        rel = float((pred - exact).norm() / exact.norm().clamp_min(1e-12))
        fig.suptitle(f"{name}, {problem}: {self._last.get('split', 'test')} rel. L2 {rel:.3g}"
                     + (" (velocity u, v)" if problem == "lid_driven_cavity" else ""), fontsize=10)
        fig.tight_layout()
        figs = {"field": fig}
        if self.hparams.model == "pig":
            feats = self.net.features
            centre, scale = self.in_centre.cpu().numpy(), self.in_scale.cpu().numpy()
            mu = feats.mu.detach().cpu().numpy() / scale + centre     # back to the problem's coordinates
            sig = feats.sigma.detach().abs().cpu().numpy() / scale
            w = feats.weight.detach().abs().cpu().numpy()
            k = mu.shape[0]
            fig2, axes2 = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False)
            for c, ax in enumerate(axes2[0]):
                ax.imshow(background, origin="lower", extent=extent, aspect="auto", cmap="RdBu_r", alpha=0.35)
                ax.add_patch(Rectangle((extent[0], extent[2]), extent[1] - extent[0], extent[3] - extent[2],
                                       fill=False, ec="0.3", lw=0.8, ls="--", label="domain"))
                size = 4 + 40 * w[c] / max(float(w[c].max()), 1e-12)
                ax.scatter(mu[c, :, h_ax], mu[c, :, v_ax], s=size, c="k", alpha=0.6, lw=0,
                           label="centre (size ~ |weight|)")
                top = w[c].argsort()[::-1][:20].tolist()
                for j, i in enumerate(top):
                    ax.add_patch(Ellipse((float(mu[c, i, h_ax]), float(mu[c, i, v_ax])), 2 * float(sig[c, i, h_ax]),
                                         2 * float(sig[c, i, v_ax]), fill=False, ec="C3", lw=0.7,
                                         label=f"1σ, top {len(top)} |weight|" if j == 0 else None))
                # the view holds the domain and every centre (Gaussians that left the domain stay visible)
                lo, hi = view_limits(mu[c][:, [h_ax, v_ax]], (extent[0], extent[2]), (extent[1], extent[3]))
                ax.set_xlim(lo[0], hi[0])
                ax.set_ylim(lo[1], hi[1])
                ax.set_xlabel(spec.coords[h_ax])
                ax.set_ylabel(spec.coords[v_ax])
                ax.set_title(f"channel {c}: Gaussian centres", fontsize=9)
            axes2[0, -1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
            fig2.tight_layout()
            figs["gaussians"] = fig2
        return figs
