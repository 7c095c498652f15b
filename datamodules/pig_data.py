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
- `klein_gordon3d` (official Klein_Gordon3d/utils/data_utils.py + data_generators.py; facts only), columns (t, x, y):
  u_tt - u_xx - u_yy + u^2 = f on t in [0, 10], x, y in [-1, 1], manufactured solution
  u = (x + y) cos(k t) + x y sin(k t) (k = `kg_k` = 2), so f = u^2 - k^2 u. Initial points at t = 0 and boundary
  points on x = ±1, y = ±1 carry the closed form; evaluation on an `eval_grid`^3 linspace grid (official nc_test = 50).
- `nonlinear_diffusion3d` (official Nonlinear_Diffusion3d/utils/data_generators.py, diffusion3d.py; equation name
  `diffusion3d`), columns (t, x, y): u_t = α (u_x^2 + u u_xx + u_y^2 + u u_yy) = (α/2) Δ(u^2), α = 0.05, on
  t in [0, 1], x, y in [-1, 1], u = 0 on x = ±1, y = ±1, u(0) = 0.25 exp(-((x-0.3)^2 + (y-0.2)^2) / 0.1)
  + 0.4 exp(-15 ((x+0.5)^2 + (y+0.1)^2)) + 0.3 exp(-20 (x^2 + (y+0.5)^2)). No closed form: the official evaluation
  loads SPINN's data/diffusion3d/heat_gaussian_{t:.2f}.npy (101 snapshots t = 0, 0.01, .., 1, each 101 x 101 on
  linspace(-1, 1), indexing ij; the solver behind them is not stated). Here the reference comes from our own
  finite-difference solver (`nonlinear_diffusion_reference`: second-order central differences of (α/2) Δ(u^2) on a
  grid `nd_refine` times finer, classical RK4 in time), sampled on the same 101^3 (t, x, y) grid; `eval_stride` thins
  it. `nd_reference_dir` instead loads the official .npy files from a local folder (same format).
- `lid_driven_cavity`, columns (x, y): steady incompressible Navier-Stokes on [0, 1]^2 at Re = `reynolds` (100), lid
  y = 1 moving at (`lid_velocity`, 0) = (1, 0), no-slip elsewhere (assumed: the standard PINN benchmark; the official
  PIG repository has no cavity code or data). Reference: our streamfunction-vorticity Newton solver
  (`datamodules.cavity.cavity_reference`, `cavity_grid`^2 nodes, cached per process; Ghia et al. 1982 centrelines
  within 0.009), evaluated on every `eval_stride`-th node.

Training batches are fresh uniform draws (the official Helmholtz code re-samples every iteration, the flow-mixing
code every 100 iterations: `resample_every`). Batches (DataLoader with batch_size=None):
  train, helmholtz2d: {"x": (B, 2) interior, "q": (B, 1) source, "x_boundary": (4 nb, 2), "g": (4 nb, 1)}
  train, allen_cahn: {"x": (B, 2) interior (t, x), "x_initial": (ni, 2) at t = 0, "u_initial": (ni, 1),
                      "x_left": (nb, 2) at x = -1, "x_right": (nb, 2) at x = +1 (same times)}
  train, flow_mixing3d: {"x": (B, 3), "a": (B, 1), "b": (B, 1), "x_initial": (ni, 3), "u_initial": (ni, 1),
                         "x_boundary": (4 nb, 3), "g": (4 nb, 1)}
  train, klein_gordon3d: as flow_mixing3d with "f": (B, 1) (the source) in place of "a", "b"
  train, nonlinear_diffusion3d: as flow_mixing3d without "a", "b" ("g" = 0)
  train, lid_driven_cavity: {"x": (B, 2), "x_boundary": (4 nb, 2) on the lid y = 1, west, south, east walls,
                             "g": (4 nb, 2) the wall velocity (u, v)}
  val/test: {"x": (P, d) grid points, "u": (P, 1) exact / reference, "shape": the grid shape (long tensor)}
    lid_driven_cavity: "u" is (P, 2) = the velocity (u, v), plus "p": (P, 1) (mean-zero pressure, plotted only);
    helmholtz2d: G x G (rows y, columns x); allen_cahn: T x X (rows t, columns x); the 3-D problems: (t, x, y) grids.
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
from datamodules.context import sampling_context
from launch.errors import UserError, check_min, check_positive


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
    "klein_gordon3d": Problem(("t", "x", "y"), ((0.0, 10.0), (-1.0, 1.0), (-1.0, 1.0))),
    "nonlinear_diffusion3d": Problem(("t", "x", "y"), ((0.0, 1.0), (-1.0, 1.0), (-1.0, 1.0))),
    "lid_driven_cavity": Problem(("x", "y"), ((0.0, 1.0), (0.0, 1.0))),
}

AC_DIFFUSION, AC_REACTION = 1e-4, 5.0  # u_t = d u_xx + r (u - u^3)
FLOW_MIXING_VMAX = 0.385               # official flow_mixing3d_pig.sh --vmax
KLEIN_GORDON_K = 2.0                   # official klein_gordon3d_pig.sh --k (temporal frequency)
ND_ALPHA = 0.05                        # official diffusion3d.py residual_loss(alpha=0.05)
CAVITY_RE = 100.0                      # lid-driven cavity Reynolds number (assumed: the standard PINN benchmark)


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


# ------------------------------------------------------------------------------------------------ Klein-Gordon 3D


def klein_gordon_exact(x: Tensor, k: float = KLEIN_GORDON_K) -> Tensor:
    """u(t, x, y) = (x + y) cos(k t) + x y sin(k t); x: (..., 3) columns (t, x, y) -> (..., 1)."""
    t, xx, yy = x[..., 0], x[..., 1], x[..., 2]
    return ((xx + yy) * torch.cos(k * t) + xx * yy * torch.sin(k * t))[..., None]


def klein_gordon_source(x: Tensor, k: float = KLEIN_GORDON_K) -> Tensor:
    """f = u_tt - u_xx - u_yy + u^2 = u^2 - k^2 u for the exact u (u is linear in x and in y)."""
    u = klein_gordon_exact(x, k)
    return u * u - k * k * u


# ----------------------------------------------------------------------------------------- nonlinear diffusion 3D


def nonlinear_diffusion_initial(x: Tensor | np.ndarray, y: Tensor | np.ndarray):
    """u(0, x, y): three Gaussian bumps (official Nonlinear_Diffusion3d data generator); torch or numpy inputs."""
    exp = torch.exp if isinstance(x, Tensor) else np.exp
    return (0.25 * exp(-((x - 0.3) ** 2 + (y - 0.2) ** 2) / 0.1)
            + 0.4 * exp(-((x + 0.5) ** 2 + (y + 0.1) ** 2) * 15)
            + 0.3 * exp(-(x**2 + (y + 0.5) ** 2) * 20))


def _porous_rhs(u: np.ndarray, h: float, alpha: float) -> np.ndarray:
    """(α/2) Δ(u^2) by second-order central differences at interior nodes; 0 on the (Dirichlet) boundary."""
    w = u * u
    out = np.zeros_like(u)
    lap = w[2:, 1:-1] + w[:-2, 1:-1] + w[1:-1, 2:] + w[1:-1, :-2] - 4 * w[1:-1, 1:-1]
    out[1:-1, 1:-1] = lap * (alpha / (2 * h * h))
    return out


@functools.lru_cache(maxsize=4)
def nonlinear_diffusion_reference(n_grid: int = 101, n_snapshots: int = 101, alpha: float = ND_ALPHA,
                                  refine: int = 2, t_end: float = 1.0) -> dict[str, np.ndarray]:
    """Reference for u_t = (α/2) Δ(u^2) = α (|∇u|^2 + u Δu) on [-1, 1]^2, u = 0 on the boundary (the official
    nonlinear diffusion problem), cached per process. Method of lines on linspace(-1, 1, refine (n_grid - 1) + 1)^2
    (boundary nodes held at 0 from t = 0; the initial bumps are <= 0.01 there), classical RK4 with a step below the
    explicit stability limit (dt <= 0.17 h^2 / (α max u)), snapshots at linspace(0, t_end, n_snapshots) sampled on
    every `refine`-th node. Returns {"t": (T,), "x": (G,), "y": (G,), "u": (T, G, G)} in float64, u[i, j, l] at
    (t_i, x_j, y_l) (indexing ij, as the official .npy files)."""
    if n_grid < 3 or n_snapshots < 2 or refine < 1 or alpha <= 0:
        raise ValueError(f"need n_grid >= 3, n_snapshots >= 2, refine >= 1, alpha > 0; got {n_grid}, {n_snapshots}, "
                         f"{refine}, {alpha}")
    fine = np.linspace(-1.0, 1.0, refine * (n_grid - 1) + 1)
    h = fine[1] - fine[0]
    u = nonlinear_diffusion_initial(*np.meshgrid(fine, fine, indexing="ij"))
    u[0, :] = u[-1, :] = u[:, 0] = u[:, -1] = 0.0
    t_save = np.linspace(0.0, t_end, n_snapshots)
    dt_max = 0.17 * h * h / (alpha * float(u.max()))  # the maximum principle keeps max u from growing
    snaps = [u[::refine, ::refine].copy()]
    for dt_snap in np.diff(t_save):
        n = max(int(math.ceil(dt_snap / dt_max)), 1)
        dt = dt_snap / n
        for _ in range(n):
            k1 = _porous_rhs(u, h, alpha)
            k2 = _porous_rhs(u + 0.5 * dt * k1, h, alpha)
            k3 = _porous_rhs(u + 0.5 * dt * k2, h, alpha)
            k4 = _porous_rhs(u + dt * k3, h, alpha)
            u = u + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        snaps.append(u[::refine, ::refine].copy())
    coords = fine[::refine]
    return {"t": t_save, "x": coords, "y": coords.copy(), "u": np.stack(snaps)}


def load_nonlinear_diffusion_npy(directory: str, n_snapshots: int = 101,
                                  check_only: bool = False) -> dict[str, np.ndarray] | None:
    """The official reference files (SPINN data/diffusion3d, read by the official diffusion3d.py test generator):
    heat_gaussian_{t:.2f}.npy for t = 0, 0.01, .., 0.01 (n_snapshots - 1), each a square (G, G) array on
    linspace(-1, 1, G)^2 (indexing ij; official G = 101). Returns the same dict as the solver; `check_only`: only
    that every file is there (at setup, so a wrong folder is found before training, not at the first validation)."""
    import os

    snaps = []
    for i in range(n_snapshots):
        path = os.path.join(directory, f"heat_gaussian_{i * 0.01:.2f}.npy")
        if not os.path.isfile(path):
            raise UserError(f"nonlinear diffusion reference: missing {path} (expected {n_snapshots} files "
                            "heat_gaussian_0.00.npy .. heat_gaussian_1.00.npy)")
        if check_only:
            continue
        try:
            a = np.asarray(np.load(path), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - not a numpy array file
            raise UserError(f"nonlinear diffusion reference: cannot read {path} ({type(err).__name__})") from None
        if a.ndim != 2 or a.shape[0] != a.shape[1] or (snaps and a.shape != snaps[0].shape):
            raise UserError(f"nonlinear diffusion reference: {path} has shape {a.shape}; expected one square (G, G) "
                             "grid shared by every snapshot")
        snaps.append(a)
    if check_only:
        return None
    g = np.linspace(-1.0, 1.0, snaps[0].shape[0])
    return {"t": 0.01 * np.arange(n_snapshots), "x": g, "y": g.copy(), "u": np.stack(snaps)}


# ------------------------------------------------------------------------------------------------ datamodule


class PigDataModule(FreshSampleLoaders, L.LightningDataModule):
    """Fresh uniform collocation / initial / boundary points; the exact (or reference) solution on a grid."""

    def __init__(self, name: str = "helmholtz2d", a1: float = 4.0, a2: float = 1.0, coefficient: float = 1.0,
                 n_collocation: int = 10000, n_boundary: int = 10000, n_initial: int | None = None,
                 eval_grid: int = 250, steps_per_epoch: int = 1000, resample_every: int = 1,
                 v_max: float = FLOW_MIXING_VMAX, ac_modes: int = 512, ac_dt: float = 1e-3, ac_snapshots: int = 201,
                 eval_stride: int = 1, kg_k: float = KLEIN_GORDON_K, nd_alpha: float = ND_ALPHA,
                 nd_grid: int = 101, nd_snapshots: int = 101, nd_refine: int = 2, nd_reference_dir: str | None = None,
                 reynolds: float = CAVITY_RE, lid_velocity: float = 1.0, cavity_grid: int = 129,
                 seed: int = 0) -> None:
        super().__init__()
        if name not in PROBLEMS:
            raise ValueError(f"unknown PIG problem {name!r}; available: {', '.join(PROBLEMS)} (offline)")
        if n_collocation < 1 or n_boundary < 1 or eval_grid < 2 or steps_per_epoch < 1:
            raise ValueError("n_collocation, n_boundary, steps_per_epoch must be >= 1 and eval_grid >= 2; got "
                             f"{n_collocation}, {n_boundary}, {steps_per_epoch}, {eval_grid}")
        if (n_initial is not None and n_initial < 1) or resample_every < 1 or eval_stride < 1 or v_max <= 0:
            raise ValueError(f"need n_initial >= 1 (or null), resample_every >= 1, eval_stride >= 1, v_max > 0; got "
                             f"{n_initial}, {resample_every}, {eval_stride}, {v_max}")
        if nd_alpha <= 0 or nd_grid < 3 or nd_snapshots < 2 or nd_refine < 1:
            raise ValueError(f"need nd_alpha > 0, nd_grid >= 3, nd_snapshots >= 2, nd_refine >= 1; got {nd_alpha}, "
                             f"{nd_grid}, {nd_snapshots}, {nd_refine}")
        if not reynolds > 0 or lid_velocity == 0 or cavity_grid < 5 or cavity_grid % 2 == 0:
            raise ValueError(f"need reynolds > 0, lid_velocity != 0 and an odd cavity_grid >= 5; got {reynolds}, "
                             f"{lid_velocity}, {cavity_grid}")
        for key, a in (("a1", a1), ("a2", a2)) if name == "helmholtz2d" else ():
            if isinstance(a, bool) or not isinstance(a, (int, float)) or a == 0 or not math.isfinite(a):
                raise UserError(f"data.{key} must be a finite non-zero number (with 0 the exact solution sin(a1 pi x) "
                                f"sin(a2 pi y) is 0 and its relative error meaningless), got {a!r}")
        check_min("data", 1, ac_modes=ac_modes)
        check_min("data", 2, ac_snapshots=ac_snapshots)
        check_positive("data", ac_dt=ac_dt)
        self.save_hyperparameters()
        self.name, self.problem = name, PROBLEMS[name]
        self.n_initial = n_initial if n_initial is not None else n_boundary
        self.generator = torch.Generator().manual_seed(seed)
        self._eval: dict[str, Tensor] | None = None
        self._cached: list[dict[str, Tensor]] | None = None  # the batches of every rank, while they are reused
        self._draws = 0  # training steps so far (the resampling cycle)

    def state_dict(self) -> dict:
        # with resample_every > 1 a batch is reused: where the cycle stands is part of the stream
        return {**super().state_dict(), "draws": self._draws, "cached": self._cached}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._draws = int(state.get("draws", 0))
        cached = state.get("cached")
        self._cached = [cached] if isinstance(cached, dict) else cached  # a single batch: saved before 2026-12-06

    # ---- closed forms
    def exact(self, x: Tensor) -> Tensor:
        if self.name == "helmholtz2d":
            return helmholtz_exact(x, self.hparams.a1, self.hparams.a2)
        if self.name == "flow_mixing3d":
            return flow_mixing_exact(x, self.hparams.v_max)
        if self.name == "klein_gordon3d":
            return klein_gordon_exact(x, self.hparams.kg_k)
        raise ValueError(f"{self.name} has no closed form; use eval_item() (the numerical reference)")

    def source(self, x: Tensor) -> Tensor:
        hp = self.hparams
        return helmholtz_source(x, hp.a1, hp.a2, hp.coefficient)

    def _uniform(self, n: int) -> Tensor:
        low = torch.tensor([lo for lo, _ in self.problem.domain])
        high = torch.tensor([hi for _, hi in self.problem.domain])
        return low + (high - low) * torch.rand(n, self.problem.dim, generator=self.generator)

    # ---- training batches
    def sample(self) -> dict[str, Tensor]:
        """A fresh batch of training points."""
        return self._draw()

    def step_batch(self) -> dict[str, Tensor]:
        """This rank's batch of the next step: every `resample_every` steps each rank gets a fresh batch of its own
        (all ranks' draws come from the shared generator, as `collocation.own_draw`), reused in between. The cycle
        counts steps: counting draws made every DDP rank reuse rank 0's batch and halved the period (DDP audit)."""
        _, rank, world = sampling_context(self)
        if self._cached is None or len(self._cached) != world or self._draws % self.hparams.resample_every == 0:
            self._cached = [self._draw() for _ in range(world)]
        self._draws += 1
        return self._cached[rank]

    def _draw(self) -> dict[str, Tensor]:
        hp, g = self.hparams, self.generator
        nb, ni = hp.n_boundary, self.n_initial
        x = self._uniform(hp.n_collocation)
        if self.name == "lid_driven_cavity":
            s = torch.rand(4, nb, generator=g)
            one, zero = torch.ones(nb), torch.zeros(nb)
            xb = torch.cat([torch.stack([s[0], one], 1), torch.stack([zero, s[1]], 1),     # lid y = 1, west x = 0
                            torch.stack([s[2], zero], 1), torch.stack([one, s[3]], 1)])    # south y = 0, east x = 1
            gb = torch.zeros(4 * nb, 2)
            gb[:nb, 0] = hp.lid_velocity
            return {"x": x, "x_boundary": xb, "g": gb}
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
        xi, xb = self._initial_points(ni), self._side_points(nb)  # the 3-D (t, x, y) problems
        if self.name == "flow_mixing3d":
            _, a, b = flow_mixing_velocity(x[:, 1], x[:, 2], hp.v_max)
            return {"x": x, "a": a[:, None], "b": b[:, None], "x_initial": xi, "u_initial": self.exact(xi),
                    "x_boundary": xb, "g": self.exact(xb)}
        if self.name == "klein_gordon3d":
            return {"x": x, "f": klein_gordon_source(x, hp.kg_k), "x_initial": xi, "u_initial": self.exact(xi),
                    "x_boundary": xb, "g": self.exact(xb)}
        # nonlinear_diffusion3d: homogeneous Dirichlet data
        return {"x": x, "x_initial": xi, "u_initial": nonlinear_diffusion_initial(xi[:, 1:2], xi[:, 2:3]),
                "x_boundary": xb, "g": torch.zeros(xb.shape[0], 1)}

    def _initial_points(self, n: int) -> Tensor:
        """(n, 3) uniform points of the box with t = 0."""
        xi = self._uniform(n)
        xi[:, 0] = 0.0
        return xi

    def _side_points(self, n: int) -> Tensor:
        """(4 n, 3) uniform points on the four spatial sides, in the order x = lo, x = hi, y = lo, y = hi."""
        (_, _), (x_lo, x_hi), (y_lo, y_hi) = self.problem.domain
        side = self._uniform(4 * n).reshape(4, n, 3)
        side[0, :, 1], side[1, :, 1], side[2, :, 2], side[3, :, 2] = x_lo, x_hi, y_lo, y_hi
        return side.reshape(4 * n, 3)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.name == "nonlinear_diffusion3d" and hp.nd_reference_dir:
            load_nonlinear_diffusion_npy(hp.nd_reference_dir, hp.nd_snapshots, check_only=True)

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
            elif self.name == "nonlinear_diffusion3d":
                self._eval = self._diffusion_eval_item()
            elif self.name == "lid_driven_cavity":
                self._eval = self._cavity_eval_item()
            else:
                g = hp.eval_grid
                axes = [torch.linspace(lo, hi, g) for lo, hi in self.problem.domain]
                mesh = torch.meshgrid(*axes, indexing="ij")  # (t, x, y) as in the official test generator
                x = torch.stack([m.reshape(-1) for m in mesh], 1)
                self._eval = {"x": x, "u": self.exact(x), "shape": torch.tensor([g, g, g])}
        return self._eval

    def _cavity_eval_item(self) -> dict[str, Tensor]:
        """The cavity reference (`datamodules.cavity.cavity_reference`, cached per process) on every `eval_stride`-th
        node of its cavity_grid^2 grid: {"x": (P, 2), "u": (P, 2) velocity (u, v), "p": (P, 1) pressure (mean zero;
        plotted, not scored), "shape": (ny, nx)}, rows y, columns x."""
        from datamodules.cavity import cavity_reference

        hp = self.hparams
        ref = cavity_reference(int(hp.cavity_grid), float(hp.reynolds), float(hp.lid_velocity))
        k = hp.eval_stride
        xs, ys = (torch.from_numpy(np.ascontiguousarray(ref[c][::k])) for c in ("x", "y"))
        fields = {c: torch.from_numpy(np.ascontiguousarray(ref[c][::k, ::k])) for c in ("u", "v", "p")}
        xx, yy = torch.meshgrid(xs, ys, indexing="xy")  # rows: y, columns: x (as the reference arrays)
        x = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).float()
        vel = torch.stack([fields["u"].reshape(-1), fields["v"].reshape(-1)], 1).float()
        return {"x": x, "u": vel, "p": fields["p"].reshape(-1, 1).float(), "shape": torch.tensor(fields["u"].shape)}

    def _diffusion_eval_item(self) -> dict[str, Tensor]:
        """The nonlinear diffusion reference (our solver, or the official .npy files from `nd_reference_dir`) on its
        (t, x, y) grid, every `eval_stride`-th snapshot and node."""
        hp = self.hparams
        if hp.nd_reference_dir:
            ref = load_nonlinear_diffusion_npy(hp.nd_reference_dir, hp.nd_snapshots)
        else:
            ref = nonlinear_diffusion_reference(hp.nd_grid, hp.nd_snapshots, float(hp.nd_alpha), hp.nd_refine)
        k = hp.eval_stride
        t, xs, ys = (torch.from_numpy(np.ascontiguousarray(ref[c][::k])) for c in ("t", "x", "y"))
        u = torch.from_numpy(np.ascontiguousarray(ref["u"][::k, ::k, ::k]))
        mesh = torch.meshgrid(t, xs, ys, indexing="ij")
        x = torch.stack([m.reshape(-1) for m in mesh], 1).float()
        return {"x": x, "u": u.reshape(-1, 1).float(), "shape": torch.tensor(u.shape)}
