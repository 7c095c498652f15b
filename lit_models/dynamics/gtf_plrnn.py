"""Generalized Teacher Forcing for Learning Chaotic Dynamics (Hess, Monfared, Brenner, Durstewitz; ICML 2023,
arXiv 2306.04406). Official code: DurstewitzLab/GTF-shPLRNN (Julia/Flux).

- shallow PLRNN (shPLRNN): z_t = A z_{t-1} + W1 phi(W2 z_{t-1} + h2) + h1, A diagonal (M), W1 (M x L), W2 (L x M),
  phi = ReLU; clipped variant (default): W1 [phi(W2 z + h2) - phi(W2 z)], bounded orbits when |A| < 1.
  Jacobian J = diag(A) + W1 diag(1[W2 z + h2 > 0] - 1[W2 z > 0]) W2 (clipped) or W1 diag(1[W2 z + h2 > 0]) W2.
- Identity observation model: x_t = z_t[:N]; data-inferred states zhat_t = [x_t, 0...] (M >= N, partial forcing
  of the first N units; the unobserved initial state is learned when M > N).
- Affine observation model (official `Affine`, `observation_model: affine`): x_t = B z_t + b, B (N x M) initialised
  kaiming-normal N(0, 2/M), b = 0 (trained only with `obs_bias`; the official runs use none). Data-inferred states
  zhat_t = pinv(B) (x_t - b) (Moore-Penrose inverse, no ridge term), computed without gradients for the forcing
  signals of all M units (official `partial_forcing = false`) and with gradients for the initial state z~_0; the
  loss is the MSE in observation space, ||B F(z~_{t-1}) + b - x_t||^2. `obs_model_regularization` (official
  `regularize(::Affine)`) adds lambda_o (1 - s_max(B) / (s_min(B) + 1e-8))^2, pulling cond(B) towards 1 so that B
  stays invertible; `lat_model_regularization` (official `regularize(::AbstractShallowPLRNN)`) adds
  lambda_l (||1 - A||^2 + ||W1||^2 + ||W2||^2 + ||h1||^2 + ||h2||^2).
- GTF: z~_t = (1 - alpha) F(z~_{t-1}) + alpha zhat_t; the loss is the MSE between the *unforced* prediction
  F(z~_{t-1})[:N] and x_t (t = 1..T-1). Gradients flow through z~ (not detached): the backward pass sees
  prod (1 - alpha) J_t. `gtf_loss` computes these exact gradients with a hand-written backward pass (`_GTFUnroll`;
  `gtf_loss_reference` is the same loss through autograd), ~4-5x faster on a CPU at Lorenz sizes (M 3, L 50),
  ~1.2x at L 250-512 (ECG, EEG), where the matmuls dominate.
- alpha* = max(0, 1 - 1/G), G = max over sequences of the geometric mean of ||J_t||_2 along the sequence
  ("product upper bound"), computed without gradients on the data-inferred states of the batch; the other official
  estimators (alpha_estimation.jl, `alpha_estimator`): arithmetic_mean ||mean_t J_t||_2, jacobian_upper_bound
  max|A| + ||W1||_2 ||W2||_2, batch_maximum max ||J_t||_2 over the batch, explog_approx ||exp(mean_t log J_t)||_2.
  Adaptive GTF (aGTF, official `train_!`): alpha_0 = 1; every `alpha_update_every` batches alpha <- alpha* if
  alpha* > alpha, else gamma alpha + (1 - gamma) alpha* (gamma = `alpha_decay`, in [0, 1]).
- Optimiser (official `initialize_optimizer`): RAdam, lr decayed exponentially once per epoch from `lr` to `end_lr`
  over the training run (defaults.json: 1e-3 -> 1e-6).
- Evaluation by free-running from the first point of a held-out segment: D_stsp (binned KL, 30 bins/dim, Laplace
  smoothing 1e-5, range = ground truth min/max +- 0.1 std; Gaussian-mixture version for N >= 6) and D_H (mean
  Hellinger distance of Gaussian-smoothed (sigma = 20) normalised power spectra).
  Official protocol (`evaluate_run`, src/evaluation.jl), an option here (`eval_transient_fraction`, official 0.25):
  for a test file of T points, free-run T + floor(0.25 T) steps from its first point, drop the first floor(0.25 T)
  generated states as transients and compare the remaining T with the whole test file. `pe_n` (official PE_n = 20,
  src/measures/prediction_error.jl): n-step prediction error, the MSE between the n-step free runs started from
  every test point x_1..x_{T-n} and x_{1+n}..x_T (logged as <stage>/pe when > 0).
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

# D_stsp / D_H live in lit_models/common/dynamics_metrics.py (shared, with DDP-correct torchmetrics versions);
# re-exported here for existing imports
from launch.errors import UserError, check_min, check_positive
from lit_models.common.dynamics_metrics import (  # noqa: F401
    PowerSpectrumDistance,
    StateSpaceDivergence,
    power_spectrum_distance,
    state_space_divergence,
    state_space_divergence_binned,
    state_space_divergence_gmm,
)
from lit_models.common.plotting import logged_metric, view_limits
from lit_models.common.steps import EvaluateOnValAndTest

log = logging.getLogger(__name__)

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

    def stacked_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """(W2s^T, h2s, W1s^T) with F(z) = A z + W1s relu(W2s z + h2s) + h1: for the clipped model
        W2s = [W2; W2], h2s = [h2; 0], W1s = [W1, -W1], so that W1s relu(.) = W1 [relu(W2 z + h2) - relu(W2 z)]
        exactly (the same function and gradients in fewer, fused operations per step)."""
        if not self.clipped:
            return self.W2.T, self.h2, self.W1.T
        w2 = torch.cat([self.W2, self.W2], dim=0)
        h2 = torch.cat([self.h2, torch.zeros_like(self.h2)])
        w1 = torch.cat([self.W1, -self.W1], dim=1)
        return w2.T, h2, w1.T

    def step(self, z: Tensor, weights: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """F(z) for z (B, M) with `stacked_weights()` computed once per sequence."""
        w2t, h2, w1t = weights
        return torch.addmm(torch.addcmul(self.h1, self.A, z), torch.relu(torch.addmm(h2, z, w2t)), w1t)

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
        weights = self.stacked_weights()
        for _ in range(steps - 1):
            z = self.step(z, weights)
            out.append(z)
        return torch.stack(out, dim=1)


class AffineObservation(nn.Module):
    """Affine observation model x_t = B z_t + b (official `Affine`, Sec. 3 / Appendix), B (N x M) drawn
    kaiming-normal (std sqrt(2 / M), Flux.kaiming_normal(N, M)), b = 0, trained only when `use_bias` (the official
    `initialize_observation_model` uses none). Inversion (official `apply_inverse`): zhat = pinv(B) (x - b)."""

    def __init__(self, obs_dim: int, latent_dim: int, use_bias: bool = False) -> None:
        super().__init__()
        self.obs_dim, self.latent_dim, self.use_bias = int(obs_dim), int(latent_dim), bool(use_bias)
        self.B = nn.Parameter(torch.randn(self.obs_dim, self.latent_dim) * math.sqrt(2.0 / self.latent_dim))
        if self.use_bias:
            self.b = nn.Parameter(torch.zeros(self.obs_dim))
        else:
            self.register_buffer("b", torch.zeros(self.obs_dim))

    def forward(self, z: Tensor) -> Tensor:
        """x = B z + b for z (..., M) -> (..., N)."""
        return z @ self.B.T + self.b

    def inverse(self, x: Tensor) -> Tensor:
        """zhat = pinv(B) (x - b) for x (..., N) -> (..., M) (least squares / minimum norm; differentiable in B)."""
        return (x - self.b) @ torch.linalg.pinv(self.B).T

    def regularize(self, lam: float, eps: float = 1e-8) -> Tensor:
        """Official `regularize(O::Affine, lambda)`: lambda (1 - s_max / (s_min + eps))^2, cond(B) -> 1."""
        sv = torch.linalg.svdvals(self.B)
        return lam * (1.0 - sv[0] / (sv[-1] + eps)) ** 2


def regularize_latent(model: ShallowPLRNN, lam: float) -> Tensor:
    """Official `regularize(m::AbstractShallowPLRNN, lambda)` (L2): lambda (||1 - A||^2 + ||W1||^2 + ||W2||^2 +
    ||h1||^2 + ||h2||^2) (the external-input matrix C of the official model does not exist here)."""
    return lam * ((1.0 - model.A).pow(2).sum() + model.W1.pow(2).sum() + model.W2.pow(2).sum()
                  + model.h1.pow(2).sum() + model.h2.pow(2).sum())


def _initial_state(model: ShallowPLRNN, x: Tensor, z0_rest: Tensor | None) -> Tensor:
    b, _, n = x.shape
    m = model.latent_dim
    if m == n:
        return x[:, 0]
    rest = z0_rest if z0_rest is not None else x.new_zeros(m - n)
    return torch.cat([x[:, 0], rest.to(x.dtype).expand(b, m - n)], dim=-1)


class _GTFUnroll(torch.autograd.Function):
    """The GTF loss of `gtf_loss_reference` with a hand-written backward pass (exact BPTT through the forced
    states, the same gradients): the forward unroll runs without building an autograd graph and the backward
    recursion dL/dz~_{t-1} = diag(A) g_t + W1s^T (1[pre_t > 0] * (W1s^T g_t)) ... with
    g_t = e_t + c * dL/dz~_t, c = (1 - alpha) on the forced units (1 on the free ones), needs 5 small
    operations per step; the parameter gradients are summed over all steps at once.
    Identity observation model (`B is None`): the forcing signals are x (first N units), e_t = pred_t[:N] - x_t.
    Affine: the forcing signals `zhat` (B, T, M) are constants (all M units forced), the error is taken in
    observation space, B pred_t + b - x_t, and e_t = B^T (...) (with dL/dB, dL/db summed over all steps)."""

    @staticmethod
    def forward(ctx, x, z0, A, h1, w2t, h2s, w1t, alpha: float, zhat=None, B=None, b=None):  # noqa: N803
        # per step the same operations on the same operands as `gtf_loss_reference`'s unroll (bit-identical results:
        # the chaotic training depends on every rounding); only the per-step overhead is cut: the forcing signals are
        # unbound once (views with the strides of f[:, t]), relu runs in place on the fresh addmm result
        n, m = x.shape[-1], z0.shape[-1]
        f = x if zhat is None else zhat               # forcing signals (first d units)
        d = f.shape[-1]
        addmm, addcmul, relu_, lerp = torch.addmm, torch.addcmul, torch.relu_, torch.lerp
        forcing = f.unbind(1)[1:] if alpha > 0 else ()
        z, zs, phis, preds = z0, [], [], []
        for t in range(x.shape[1] - 1):
            zs.append(z)
            phi = relu_(addmm(h2s, z, w2t))
            pred = addmm(addcmul(h1, A, z), phi, w1t)
            phis.append(phi)
            preds.append(pred)
            if alpha > 0:
                if m > d:
                    z = torch.cat([lerp(pred[:, :d], forcing[t], alpha), pred[:, d:]], dim=-1)
                else:
                    z = lerp(pred, forcing[t], alpha)
            else:
                z = pred
        if B is None:
            err = torch.stack(preds, dim=1)[..., :n] - x[:, 1:]
            ctx.save_for_backward(torch.stack(zs, dim=1), torch.stack(phis, dim=1), err, A, w2t, w1t)
        else:
            pz = torch.stack(preds, dim=1)
            err = torch.matmul(pz, B.T) + (b - x[:, 1:])
            ctx.save_for_backward(torch.stack(zs, dim=1), torch.stack(phis, dim=1), err, A, w2t, w1t, pz, B)
        ctx.alpha = float(alpha)
        ctx.forced = d
        return err.pow(2).mean()

    @staticmethod
    def backward(ctx, grad_out):
        affine = len(ctx.saved_tensors) > 6
        zin, phi, err, A, w2t, w1t = ctx.saved_tensors[:6]
        b, steps, n = err.shape
        m = zin.shape[-1]
        e = err * (2.0 * grad_out / err.numel())
        grad_b_obs = grad_B = None
        if affine:
            pz, B = ctx.saved_tensors[6:]
            e_obs = e.reshape(-1, n)
            grad_B = e_obs.T @ pz.reshape(-1, m)
            grad_b_obs = e_obs.sum(0)
            e = torch.matmul(e, B)                       # dL/dpred in latent space
        elif m > n:
            e = torch.cat([e, e.new_zeros(b, steps, m - n)], dim=-1)
        c = torch.ones(m, dtype=e.dtype, device=e.device)
        c[: ctx.forced] = 1.0 - ctx.alpha
        mask = (phi > 0).to(e.dtype)
        w1 = w1t.T
        w2 = w2t.T
        # views of e[:, k] and mask[:, k] made once; mm is what `@` runs for 2-d operands, the mask product runs in
        # place on the fresh mm result: the same operations on the same operands as before (bit-identical)
        errs, masks = e.unbind(1), mask.unbind(1)
        addcmul, mm = torch.addcmul, torch.mm
        gz = torch.zeros_like(errs[0])
        gps, ghs = [], []
        for k in range(steps - 1, -1, -1):
            gp = addcmul(errs[k], c, gz)                 # dL/dF(z~_k)
            gh = mm(gp, w1).mul_(masks[k])               # dL/dpre_k (hidden layer, stacked)
            gz = addcmul(mm(gh, w2), A, gp)              # dL/dz~_k
            gps.append(gp)
            ghs.append(gh)
        gps.reverse()
        ghs.reverse()
        gp = torch.stack(gps, dim=1).reshape(-1, m)
        gh = torch.stack(ghs, dim=1).reshape(-1, gh.shape[-1])
        z_flat = zin.reshape(-1, m)
        grad_a = (gp * z_flat).sum(0)
        grad_h1 = gp.sum(0)
        grad_w2t = z_flat.T @ gh
        grad_h2s = gh.sum(0)
        grad_w1t = phi.reshape(-1, phi.shape[-1]).T @ gp
        return None, gz, grad_a, grad_h1, grad_w2t, grad_h2s, grad_w1t, None, None, grad_B, grad_b_obs


def gtf_loss(model: ShallowPLRNN, x: Tensor, alpha: float, z0_rest: Tensor | None = None,
             obs: AffineObservation | None = None) -> Tensor:
    """GTF loss for observations x (B, T, N) with the identity observation model (first N latents; `obs=None`)
    or the affine one (`obs`).

    Identity: z~_0 = zhat_0; for t = 1..T-1: zpred = F(z~_{t-1}); loss += ||zpred[:N] - x_t||^2;
    z~_t = (1 - alpha) zpred + alpha zhat_t on the first N units (the others run free). Mean over B, T-1, N.
    Affine (official `GTFRecur` + `loss`): zhat_t = pinv(B) (x_t - b) as constant forcing signals of all M units,
    z~_0 = pinv(B) (x_0 - b) (differentiable in B, b), loss = mean ||B zpred + b - x_t||^2 over B, T-1, N.
    The same function and gradients as `gtf_loss_reference`, with a hand-written BPTT (`_GTFUnroll`, ~4x
    faster on a CPU at small L).
    """
    w2t, h2s, w1t = model.stacked_weights()
    if obs is None:
        z0 = _initial_state(model, x, z0_rest)
        return _GTFUnroll.apply(x.detach(), z0, model.A, model.h1, w2t, h2s, w1t, float(alpha), None, None, None)
    x = x.detach()
    zhat = obs.inverse(x)                                  # (B, T, M); one pinv per batch
    return _GTFUnroll.apply(x, zhat[:, 0], model.A, model.h1, w2t, h2s, w1t, float(alpha), zhat.detach(),
                            obs.B, obs.b)


def gtf_loss_reference(model: ShallowPLRNN, x: Tensor, alpha: float, z0_rest: Tensor | None = None,
                       obs: AffineObservation | None = None) -> Tensor:
    """`gtf_loss` through autograd (reference for the hand-written backward pass)."""
    n, m = x.shape[-1], model.latent_dim
    if obs is None:
        z = _initial_state(model, x, z0_rest)
        forcing, d = x, n
    else:
        zhat = obs.inverse(x)
        z, forcing, d = zhat[:, 0], zhat.detach(), m     # forcing signals: constants (official: outside gradient)
    weights = model.stacked_weights()
    preds = []
    for t in range(1, x.shape[1]):
        pred = model.step(z, weights)         # unforced prediction F(z~_{t-1})
        preds.append(pred)                    # the loss uses it BEFORE forcing (Pitfalls)
        if alpha > 0:
            forced = torch.lerp(pred[:, :d] if m > d else pred, forcing[:, t], alpha)  # (1 - alpha) F + alpha zhat
            z = torch.cat([forced, pred[:, d:]], dim=-1) if m > d else forced
        else:
            z = pred
    if obs is None:
        return (torch.stack(preds, dim=1)[..., :n] - x[:, 1:]).pow(2).mean()
    return (obs(torch.stack(preds, dim=1)) - x[:, 1:]).pow(2).mean()


@torch.no_grad()
def product_upper_bound(model: ShallowPLRNN, states: Tensor) -> float:
    """G = max over sequences of the geometric mean of ||J_t||_2 along the states (B, T, M) (or (T, M))."""
    if states.dim() == 2:
        states = states.unsqueeze(0)
    norms = torch.linalg.matrix_norm(model.jacobian(states), ord=2)  # (B, T)
    return float(torch.exp(torch.log(norms.clamp_min(1e-30)).mean(dim=1)).max())


@torch.no_grad()
def arithmetic_mean_norm(model: ShallowPLRNN, states: Tensor) -> float:
    """G = max over sequences of ||mean_t J_t||_2, the spectral norm of the mean Jacobian along the states (B, T, M)
    (official alpha_estimation.jl `compute_alpha_arithmetic_mean`, the EEG aGTF run of Table 1)."""
    if states.dim() == 2:
        states = states.unsqueeze(0)
    return float(torch.linalg.matrix_norm(model.jacobian(states).mean(dim=1), ord=2).max())


@torch.no_grad()
def jacobian_upper_bound(model: ShallowPLRNN, states: Tensor | None = None) -> float:
    """G = max_i |A_i| + ||W1||_2 ||W2||_2, a bound on ||J(z)||_2 from the parameters alone (the states are not used;
    official `norm_upper_bound` of shallow_plrnn.jl, used by `compute_alpha_jacobian_upper_bound`)."""
    w = torch.linalg.matrix_norm(model.W1, ord=2) * torch.linalg.matrix_norm(model.W2, ord=2)
    return float(model.A.abs().max() + w)


@torch.no_grad()
def batch_maximum(model: ShallowPLRNN, states: Tensor) -> float:
    """G = the largest ||J(z)||_2 over all states (B, T, M) of the batch (official `compute_alpha_batch_maximum`)."""
    return float(torch.linalg.matrix_norm(model.jacobian(states), ord=2).max())


EXPLOG_FLOORS = (1e-300, 1e-150)  # explog_approx: moduli a zero eigenvalue is taken as (log 0 = -inf)


@torch.no_grad()
def explog_approx(model: ShallowPLRNN, states: Tensor) -> float:
    """G = max over sequences of ||exp(mean_t log J_t)||_2 (official `compute_alpha_explog_approx`:
    opnorm(geomean(Js)), StatsBase's geomean(a) = exp(mean(log, a)) on matrices, i.e. the principal matrix logarithm
    and the matrix exponential). The logarithm is taken through the eigendecomposition, log J = V diag(log lambda) V^-1
    (complex where J has negative eigenvalues, as Julia's), batched; it assumes diagonalisable Jacobians (a defective
    J_t makes the estimate inaccurate).

    A singular J_t (e.g. every ReLU of a unit off) has no logarithm (log 0 = -inf made the estimate NaN, and the
    norm's SVD raised). Its zero eigenvalues are taken as a tiny modulus, at two floors (`EXPLOG_FLOORS`): where the
    singular J_t share their null directions the geometric mean has a limit (~0 along them) and both floors give it;
    where they do not, the value grows without bound as the floor shrinks, and the estimate is infinite (aGTF then
    keeps alpha, with a warning)."""
    if states.dim() == 2:
        states = states.unsqueeze(0)
    lam, vec = torch.linalg.eig(model.jacobian(states).double())
    inv_vec = torch.linalg.inv(vec)

    def norm_with_floor(floor: float) -> float:
        floored = torch.where(lam.abs() < floor, torch.full_like(lam, floor), lam)
        logs = vec @ torch.diag_embed(torch.log(floored)) @ inv_vec     # (B, T, M, M), complex
        return float(torch.linalg.matrix_norm(torch.linalg.matrix_exp(logs.mean(dim=1)), ord=2).max())

    low, high = EXPLOG_FLOORS
    estimate = norm_with_floor(low)
    if bool((lam.abs() < high).any()) and not math.isclose(estimate, norm_with_floor(high), rel_tol=1e-6,
                                                           abs_tol=1e-12):
        return math.inf  # no limit: the estimate depends on the floor
    return estimate


# the official alpha_estimation.jl methods (its "constant" is alpha_method=constant here)
ALPHA_ESTIMATORS = {"product_upper_bound": product_upper_bound, "arithmetic_mean": arithmetic_mean_norm,
                    "jacobian_upper_bound": jacobian_upper_bound, "batch_maximum": batch_maximum,
                    "explog_approx": explog_approx}


def alpha_star(norm_estimate: float) -> float:
    """alpha* = max(0, 1 - 1/G). A NaN estimate (explog_approx on a singular Jacobian) is an error: read as 0 it would
    silently turn teacher forcing off."""
    if math.isnan(norm_estimate):
        raise ValueError("alpha*: the norm estimate G is NaN (explog_approx on a singular Jacobian?)")
    return max(0.0, 1.0 - 1.0 / norm_estimate) if norm_estimate > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# LightningModule
# ------------------------------------------------------------------------------------------------


DEFAULT_OPTIMIZER = functools.partial(torch.optim.RAdam, lr=1e-3)  # RAdam 1e-3 (defaults.json)


class GTFPLRNNModule(EvaluateOnValAndTest, L.LightningModule):
    """clipped shPLRNN trained with (adaptive) generalized teacher forcing; free-running D_stsp / D_H.

    end_lr: the official schedule (`initialize_optimizer`: ExpDecay): the lr is multiplied by
    gamma = (end_lr / lr)^(1 / E) after every epoch (E = the number of training epochs), so it reaches end_lr at the
    end of training; null keeps the lr constant.
    alpha_method: "adaptive" (aGTF: start at `alpha`; every `alpha_update_every` batches alpha <- alpha* when
    alpha* > alpha, else alpha_decay * alpha + (1 - alpha_decay) * alpha*) or "constant" (alpha fixed; 0 = BPTT,
    1 = one-step teacher forcing).
    observation_model: "identity" (x = z[:N], partial forcing of the first N latents; M >= N) or "affine"
    (official `Affine`: x = B z + b, forcing signals pinv(B) (x - b) on all M latents; any M, N). For M > N the
    identity model follows the card (partial forcing, a learned constant initial state of the unobserved latents);
    the official default (`partial_forcing: false`) forces all M latents, the unobserved ones toward 0, and starts
    them from a learned linear map of x_1. Every shipped config has M = N or the affine model.
    obs_bias: train b of the affine model (official: false, b = 0).
    obs_model_regularization / lat_model_regularization: the official loss terms `regularize(O)` (affine:
    condition number of B) and `regularize(model)` (L2 of 1 - A, W1, W2, h1, h2), added with these weights
    (defaults.json: 0).
    eval_transient_fraction: f; validation / test free-run T + floor(f T) steps from the segment's first point
    and drop the first floor(f T) states before D_stsp / D_H (official `evaluate_run`: f = 0.25; 0: the free run
    of T steps compared as is, the official in-training monitor).
    pe_n: n > 0 also logs <stage>/pe, the official n-step prediction error PE_n (official evaluation: n = 20); it
    must be below every validation / test segment's length (checked in setup).
    alpha_estimator: G of alpha* = 1 - 1/G, one of `ALPHA_ESTIMATORS` (the official alpha_estimation.jl methods).
    Model selection: validation runs on the test segment when the data have no validation split (dysts with
    val_points = 0, the trajectory files), so setup refuses a val/ metric as checkpoint.monitor or early-stopping
    monitor there (the official code selects nothing: `evaluate_run` tests the latest checkpoint after training).
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
        end_lr: float | None = None,          # official lr schedule: exponential decay start_lr -> end_lr
        observation_model: str = "identity",  # identity | affine (official `observation_model`)
        obs_bias: bool = False,               # affine: trainable b (official initialize_observation_model: false)
        obs_model_regularization: float = 0.0,  # lambda_o (defaults.json 0; ECG script 1e-7)
        lat_model_regularization: float = 0.0,  # lambda_l (defaults.json 0)
        eval_transient_fraction: float = 0.0,   # official evaluate_run: 0.25 (free run 1.25 T, drop 0.25 T)
        pe_n: int = 0,                          # official PE_n: 20 (n-step prediction error); 0: not computed
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        if alpha_method not in ("adaptive", "constant"):
            raise ValueError(f"alpha_method must be 'adaptive' or 'constant', got {alpha_method!r}")
        if alpha_estimator not in ALPHA_ESTIMATORS:
            raise ValueError(f"alpha_estimator {alpha_estimator!r} is not implemented ({', '.join(ALPHA_ESTIMATORS)})")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= alpha_decay <= 1.0:  # aGTF's gamma alpha + (1 - gamma) alpha* stays in [0, 1] only then
            raise ValueError(f"alpha_decay must be in [0, 1] (official gtf_alpha_decay 0.999), got {alpha_decay}")
        if end_lr is not None and not end_lr > 0:
            raise ValueError(f"end_lr must be > 0 (or null: constant lr), got {end_lr}")
        start_lr = optimizer.keywords.get("lr") if isinstance(optimizer, functools.partial) else None
        if end_lr is not None and isinstance(start_lr, (int, float)) and not start_lr > 0:  # 0: a ZeroDivisionError
            raise UserError(f"model.end_lr decays the lr geometrically from model.optimizer.lr: that needs "
                            f"model.optimizer.lr > 0, got {start_lr}")
        if observation_model not in ("identity", "affine"):
            raise ValueError(f"observation_model must be 'identity' or 'affine', got {observation_model!r}")
        check_min("model", 0, obs_model_regularization=obs_model_regularization,
                  lat_model_regularization=lat_model_regularization)
        if obs_model_regularization > 0 and observation_model != "affine":
            raise ValueError("obs_model_regularization is the affine model's condition-number term: needs "
                             "observation_model=affine")
        if obs_bias and observation_model != "affine":
            raise ValueError("obs_bias needs observation_model=affine")
        if not (math.isfinite(eval_transient_fraction) and eval_transient_fraction >= 0):
            raise ValueError(f"eval_transient_fraction must be a finite number >= 0 (official 0.25), got "
                             f"{eval_transient_fraction}")
        if int(pe_n) != pe_n or pe_n < 0:
            raise ValueError(f"pe_n must be an integer >= 0 (official PE_n = 20; 0: off), got {pe_n}")
        check_min("model", 1, latent_dim=latent_dim, hidden_dim=hidden_dim, obs_dim=obs_dim,
                  alpha_update_every=alpha_update_every, d_stsp_bins=d_stsp_bins)
        check_positive("model", pse_smoothing=pse_smoothing)
        self.model = ShallowPLRNN(latent_dim, hidden_dim, clipped)
        self.z0_rest: nn.Parameter | None = None
        self.obs: AffineObservation | None = None
        if obs_dim is not None:
            self._build_obs(int(obs_dim))
        self.register_buffer("alpha_current", torch.tensor(float(alpha), dtype=torch.float64))
        self._last_eval: tuple[np.ndarray, np.ndarray] | None = None
        self._last_stage = "test"
        self._alpha_logged = False  # train/alpha logged in the current epoch (training_step)
        # D_stsp and D_H of (ground truth, free run) pairs: torchmetrics states reduced across DDP ranks
        self.eval_metrics = nn.ModuleDict({f"{stage}_{name}": metric for stage in ("val", "test") for name, metric in
                                           (("d_stsp", StateSpaceDivergence(d_stsp_bins)),
                                            ("d_h", PowerSpectrumDistance(pse_smoothing)))})

    def _build_obs(self, n: int) -> None:
        if self.hparams.get("observation_model", "identity") == "affine":
            self.hparams["obs_dim"] = n
            if self.obs is None:
                self.obs = AffineObservation(n, self.hparams.latent_dim, self.hparams.obs_bias)
            return
        if n > self.hparams.latent_dim:
            raise UserError(f"model.latent_dim={self.hparams.latent_dim} is below the data's {n} dimensions: the identity "
                            f"observation model reads the first {n} latent states (set model.latent_dim >= {n}, or "
                            "model.observation_model=affine)")
        self.hparams["obs_dim"] = n
        if n < self.hparams.latent_dim and self.z0_rest is None:
            self.z0_rest = nn.Parameter(torch.zeros(self.hparams.latent_dim - n))

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        if self.hparams.obs_dim is None or not hasattr(dm, "test_segments"):
            dm.setup(stage)  # loads once (the trainer has set it up already)
        if self.hparams.obs_dim is None:
            self._build_obs(int(dm.dim))
        self._check_evaluation_data(dm, stage)

    def _check_evaluation_data(self, dm: Any, stage: str) -> None:
        """One-line errors before training for what would otherwise fail or mislead later: a `pe_n` that the
        validation / test segments are too short for (a traceback at the first evaluation), and a val/ metric
        monitored for checkpoint selection or early stopping while validation runs on the test segment (dysts with
        val_points=0, the trajectory files): the model would be selected on test data."""
        val, test = list(getattr(dm, "val_segments", None) or []), list(getattr(dm, "test_segments", None) or [])
        pe_n = int(self.hparams.get("pe_n", 0))
        shortest = min((int(s.shape[0]) for s in val + test), default=None)
        if pe_n > 0 and shortest is not None and pe_n >= shortest:
            raise UserError(f"model.pe_n={pe_n} needs validation / test segments of more than {pe_n} points, the "
                            f"shortest has {shortest} (lower model.pe_n)")
        monitored = sorted({cb.monitor for cb in getattr(self.trainer, "callbacks", None) or []
                            if isinstance(getattr(cb, "monitor", None), str) and cb.monitor.startswith("val/")})
        if stage != "fit" or not monitored or not val:
            return
        if len(val) == len(test) and all(v.shape == t.shape and torch.equal(v, t) for v, t in zip(val, test)):
            fix = ("set data.val_points > 0 for a separate validation segment" if "val_points" in
                   getattr(dm, "hparams", {}) else "these data have no validation split")
            raise UserError(f"{', '.join(monitored)} is monitored (checkpoint.monitor / early_stopping), but the "
                            f"validation data are the test segment: the model would be selected on test data ({fix})")

    @property
    def alpha(self) -> float:
        return float(self.alpha_current)

    def latent_states(self, x: Tensor) -> Tensor:
        """Data-inferred states zhat (B, T, M): observations, then the learned/zero unobserved part (identity),
        or pinv(B) (x - b) (affine)."""
        if self.obs is not None:
            with torch.no_grad():
                return self.obs.inverse(x)
        b, t, n = x.shape
        if self.hparams.latent_dim == n:
            return x
        rest = self.z0_rest.detach() if self.z0_rest is not None else x.new_zeros(self.hparams.latent_dim - n)
        return torch.cat([x, rest.to(x.dtype).expand(b, t, -1)], dim=-1)

    def _update_alpha(self, x: Tensor) -> bool:
        """aGTF's update of alpha every `alpha_update_every` batches; whether it ran (alpha changes nowhere else)."""
        h = self.hparams
        if h.alpha_method != "adaptive" or (self.global_step + 1) % h.alpha_update_every != 0:
            return False
        with torch.autocast(device_type=x.device.type, enabled=False):
            states = self.latent_states(x.to(self.model.A.dtype))[:, 1:]
            estimate = ALPHA_ESTIMATORS[h.alpha_estimator](self.model, states)  # a max over the sequences
        if self._trainer is not None and self.trainer.world_size > 1:  # over every rank's sequences (DDP audit: rank
            estimate = float(self.trainer.strategy.reduce(  # 0's half of the batch decided alone)
                torch.tensor(estimate, dtype=torch.float64, device=x.device), reduce_op="max"))
        if not math.isfinite(estimate):  # e.g. explog_approx on a defective Jacobian (alpha_star refuses NaN)
            log.warning("aGTF: the %s estimate is not finite at step %d; alpha stays %.4g", h.alpha_estimator,
                        self.global_step, self.alpha)
            return False
        star = alpha_star(estimate)
        gamma, alpha = float(h.alpha_decay), self.alpha
        self.alpha_current.fill_(star if star > alpha else gamma * alpha + (1.0 - gamma) * star)
        self.log("train/alpha_star", star, on_step=True, on_epoch=False)
        return True

    def on_train_epoch_start(self) -> None:
        self._alpha_logged = False

    def training_step(self, batch: Tensor, batch_idx: int = 0) -> Tensor:
        x = batch["x"] if isinstance(batch, dict) else batch
        alpha_changed = self._update_alpha(x)
        # chaotic recurrence: never under autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = self.model.A.dtype
            loss = gtf_loss(self.model, x.to(dtype), self.alpha, self.z0_rest, self.obs)
            reg = self.regularization_loss()
        if reg is not None:  # official regularization_loss; train/loss is the sum (official "sum L")
            self.log("train/loss_tf", loss, on_step=True, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
            self.log("train/loss_reg", reg, on_step=True, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
            loss = loss + reg
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0],
                 sync_dist=True)
        # alpha (and alpha* above) come from the estimate reduced over the ranks: the same on every rank, no sync.
        # Logged when it changes and at the first step of each epoch: Lightning keeps an on_step value for the
        # loggers and callback_metrics until the epoch ends, so every logging step still records the current alpha,
        # and the ~0.5 ms of a self.log call (a few % of a Lorenz-size step on a CPU) is not spent on every step
        if alpha_changed or not self._alpha_logged:
            self.log("train/alpha", self.alpha, on_step=True, on_epoch=False, batch_size=x.shape[0])
            self._alpha_logged = True
        return loss

    def regularization_loss(self) -> Tensor | None:
        """Official `regularization_loss`: lat_model_regularization * regularize(model) +
        obs_model_regularization * regularize(O) (affine: condition number of B); None when both are 0."""
        h = self.hparams
        lam_l, lam_o = float(h.get("lat_model_regularization", 0.0)), float(h.get("obs_model_regularization", 0.0))
        terms = []
        if lam_l > 0:
            terms.append(regularize_latent(self.model, lam_l))
        if lam_o > 0 and self.obs is not None:
            terms.append(self.obs.regularize(lam_o))
        return sum(terms) if terms else None

    def _init_states(self, x: Tensor) -> Tensor:
        """Initial latent states for free runs from the observations x (..., N) -> (..., M) (official
        `init_state`: affine: pinv(B) (x - b); identity: [x, learned unobserved part])."""
        x = x.to(self.model.A.dtype)
        if self.obs is not None:
            return self.obs.inverse(x)
        z = self.latent_states(x.unsqueeze(0) if x.dim() == 2 else x)
        z = z[0] if x.dim() == 2 else z
        if self.z0_rest is not None:
            n = x.shape[-1]
            z = torch.cat([z[..., :n], self.z0_rest.expand(*z.shape[:-1], -1)], dim=-1)
        return z

    def _observe(self, z: Tensor, n: int) -> Tensor:
        return self.obs(z) if self.obs is not None else z[..., :n]

    @torch.no_grad()
    def free_run(self, x: Tensor, steps: int | None = None) -> Tensor:
        """Free run from the first observation of x (1, T, N) for `steps` (default T) steps -> (steps, N)
        (official `generate`: z_1 = init_state(x_1), the first row is z_1 observed; affine: z_1 = pinv(B) (x_1 - b),
        observations B z_t + b)."""
        steps = x.shape[1] if steps is None else int(steps)
        with torch.autocast(device_type=x.device.type, enabled=False):
            z0 = self._init_states(x[:, 0])
            z = self.model.generate(z0, steps)
            return self._observe(z[0], x.shape[-1])

    @torch.no_grad()
    def prediction_error(self, x: Tensor, n: int) -> float:
        """Official PE_n (src/measures/prediction_error.jl): the n-step free runs from every point x_1..x_{T-n}
        of x (1, T, N) (batched), MSE against x_{1+n}..x_T."""
        xs = x[0].to(self.model.A.dtype)
        if n >= xs.shape[0]:
            raise ValueError(f"pe_n = {n} needs a segment of more than {n} points, got {xs.shape[0]}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self._init_states(xs[: xs.shape[0] - n])
            weights = self.model.stacked_weights()
            for _ in range(n):
                z = self.model.step(z, weights)
            return float((self._observe(z, xs.shape[-1]) - xs[n:]).pow(2).mean())

    def _evaluate(self, batch: Any, stage: str) -> None:
        x = batch["x"] if isinstance(batch, dict) else batch
        t = x.shape[1]
        drop = int(math.floor(float(self.hparams.get("eval_transient_fraction", 0.0)) * t))
        # official evaluate_run: free run T + floor(0.25 T) steps, drop floor(0.25 T), compare with all T points
        gen = self.free_run(x, t + drop)[drop:].cpu().numpy()
        truth = x[0].detach().cpu().double().numpy()
        self._last_eval = (truth, gen)
        self._last_stage = stage
        for name in ("d_stsp", "d_h"):
            metric = self.eval_metrics[f"{stage}_{name}"]
            metric.update(truth, gen)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=1)
        pe_n = int(self.hparams.get("pe_n", 0))
        if pe_n > 0:
            self.log(f"{stage}/pe", self.prediction_error(x, pe_n), on_epoch=True, batch_size=1, sync_dist=True)

    def figures(self) -> dict[str, Any]:
        """{"attractor": ground truth (top row) next to the free run (bottom row; the last evaluation's), projected on
        pairs of dimensions, each projection on the same axes limits in both rows (drawn over the truth, a free run on
        the attractor hid it: figures audit, stop 42); the title names the split, the logged D_stsp and D_H, and how
        many non-finite free-run points were left out}."""
        if self._last_eval is None:
            return {}
        import matplotlib.pyplot as plt

        truth, gen = self._last_eval
        n = truth.shape[1]
        pairs = [(0, 1), (0, 2), (1, 2)] if n >= 3 else [(0, min(1, n - 1))]
        fig, axes = plt.subplots(2, len(pairs), figsize=(4 * len(pairs), 8), squeeze=False)
        g = gen[np.all(np.isfinite(gen), axis=1)]
        lo, hi = view_limits(g, truth.min(0), truth.max(0))  # the truth and the free run's finite points
        for col, (i, j) in enumerate(pairs):
            for row, (series, colour, name) in enumerate(((truth, "0.3", "ground truth"), (g, "C3", "free run"))):
                ax = axes[row][col]
                ax.plot(series[:, i], series[:, j], lw=0.8, color=colour)
                ax.set_xlim(lo[i], hi[i])
                ax.set_ylim(lo[j], hi[j])
                ax.set_title(name, fontsize=9)
                ax.set_xlabel(f"x{i + 1}")
                ax.set_ylabel(f"x{j + 1}")
        stage = self._last_stage
        logged = {name: logged_metric(self, f"{stage}/{key}") for key, name in (("d_stsp", "D_stsp"), ("d_h", "D_H"))}
        title = f"shPLRNN free run vs ground truth, {stage} ({len(truth)} steps)" + "".join(
            f", {name} = {value:.3g}" for name, value in logged.items() if value is not None)
        if len(g) < len(gen):
            title += f"\n{len(gen) - len(g)} of {len(gen)} free-run points non-finite (not drawn)"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return {"attractor": fig}

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.parameters())
        if self.hparams.end_lr is None:
            return opt
        total = float(self.trainer.estimated_stepping_batches)
        per_epoch = float(self.trainer.num_training_batches)
        if not (math.isfinite(total) and math.isfinite(per_epoch) and per_epoch > 0):
            raise ValueError("end_lr needs a finite number of training steps (trainer.max_epochs or max_steps)")
        per_epoch = int(per_epoch)
        epochs = max(1, math.ceil(total / per_epoch))
        start = opt.param_groups[0]["lr"]
        gamma = (float(self.hparams.end_lr) / start) ** (1.0 / epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: gamma ** (step // per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
