"""Collocation data and reference solutions for physics-informed networks (cards `causal_pinn`, `lagrangian_pinn`).

Reference solvers (numpy, float64):
- `etdrk4_semilinear(u0, lin, nonlinear, dt, n_steps, save_every)`: ETDRK4 (Cox & Matthews 2002) for
  u_t = L u + N(u) on a periodic grid with any nonlinearity N (given in Fourier space); coefficients by the
  Kassam-Trefethen contour average (`datamodules.pde_solvers.etdrk4_coefficients`).
- `allen_cahn_reference`: u_t = 1e-4 u_xx + 5 u - 5 u^3 on [-1, 1) periodic, u0 = x^2 cos(pi x)
  (the causal-PINN / original-PINN Allen-Cahn problem); linear part 1e-4 k^2 stiff diffusion + 5u, N = -5u^3.
- `ks_causal_reference`: u_t + 5 u u_x + 0.5 u_xx + 0.005 u_xxxx = 0 on [-1, 1) periodic (the causal-PINN KS form).
- `burgers_reference`: viscous Burgers v_t + v v_x = nu v_xx on [0, 2 pi) periodic, pseudo-spectral with the 2/3
  rule and ETDRK4; `galilean_shift` gives the solution for u0 = v0 + C as u(x, t) = C + v(x - C t, t) (exact
  Fourier phase shift, no interpolation error).
- `burgers_cole_hopf`: the exact Cole-Hopf solution for v0 = sin x (heat-kernel integral), used to test the solver.
- `oscillator_exact`, `convection_exact`: closed forms; `lorenz_reference`: Lorenz-63 from (1, 1, 1) by scipy.

Datamodules (batches are dicts, DataLoader(batch_size=None); each epoch has `steps_per_epoch` training batches):
- `CausalPINNDataModule(name=oscillator | lorenz | allen_cahn | ks | allen_cahn_mat | ks_mat | ks_chaotic_mat)`:
  training batches
  {"t": (n_t,) sorted slice times, "x": (n_x,) spatial points, "x_ic", "u_ic": the initial condition} (the network
  is evaluated on the n_t x n_x grid);
  `sampling=grid` keeps the same linspace grid every step (AC notebook, card oscillator check), `random` draws
  sorted uniform t and uniform x per step (KS script).
  val/test: {"t": (T,), "x": (X,), "u": (T, X) or (T, 1, 2) reference,
  "t_col", "x_col": the collocation grid}.
  The `*_mat` names read the paper's files (AC.mat from maziarraissi/PINNs, ks_simple.mat and ks_chaotic.mat from
  CausalPINNs) through `datamodules.download.fetch` (checksums not verified: trust on first use); a file that does not
  reach the requested horizon (time_windows x t_end) is a one-line error.
- `LagrangianPINNDataModule(name=convection | burgers)`: the full collocation grid (N x M, x in [0, 2 pi),
  t in [0, 1]) as {"x": (N*M,), "t": (N*M,)} every step; val/test: evaluation grid {"x", "t", "u"} with the
  reference (exact for convection(-diffusion), spectral + Galilean shift for Burgers with u0 = sin x + C).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.collocation import MadeItems, generated_train_loader, own_draw
from datamodules.pde_solvers import etdrk4
from launch.errors import UserError, check_choice, check_min, check_positive, one_line

# ------------------------------------------------------------------------------------------------ solvers


def etdrk4_semilinear(u0: np.ndarray, lin: np.ndarray, nonlinear: Callable[[np.ndarray], np.ndarray], dt: float,
                      n_steps: int, save_every: int = 1) -> np.ndarray:
    """u_t = L u + N(u), periodic, rfft coefficients. `lin`: (N//2+1,) symbol; `nonlinear(v_hat) -> N_hat`.
    Returns (n_steps // save_every + 1, N): the initial state followed by every `save_every`-th state."""
    u0 = np.asarray(u0, dtype=np.float64)
    if save_every < 1 or n_steps < save_every or n_steps % save_every:
        raise ValueError(f"need n_steps a positive multiple of save_every, got {n_steps}, {save_every}")
    return np.concatenate([u0[None], etdrk4(u0, lin, nonlinear, dt, n_steps, save_every)])


def solver_steps(t_end: float, dt: float, n_snapshots: int, name: str = "dt") -> tuple[int, int]:
    """(steps, save_every) of a fixed-step solve of [0, t_end] saved at `n_snapshots` evenly spaced times; a one-line
    ValueError unless dt splits t_end into a whole multiple of n_snapshots - 1 steps (`name`: the dt setting)."""
    steps = int(round(t_end / dt))
    if steps < 1 or abs(steps * dt - t_end) > 1e-9 * t_end or steps % (n_snapshots - 1):
        raise ValueError(f"{name}={dt:g} must split [0, {t_end:g}] into a whole multiple of {n_snapshots - 1} steps "
                         f"(the reference's {n_snapshots} snapshots), got {t_end / dt:g} steps")
    return steps, steps // (n_snapshots - 1)


def _k(n: int, length: float) -> np.ndarray:
    return 2.0 * np.pi / length * np.arange(n // 2 + 1)


def allen_cahn_reference(n: int = 512, dt: float = 1e-4, t_end: float = 1.0, n_snapshots: int = 201,
                         diffusion: float = 1e-4, reaction: float = 5.0,
                         u0: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Allen-Cahn u_t = d u_xx + r (u - u^3) on [-1, 1) periodic (d = 1e-4, r = 5), ETDRK4 with `n` modes.
    Returns {"x": (n,), "t": (n_snapshots,), "u": (n_snapshots, n)}."""
    x = -1.0 + 2.0 * np.arange(n) / n
    steps, every = solver_steps(t_end, dt, n_snapshots)
    k = _k(n, 2.0)
    lin = (reaction - diffusion * k ** 2).astype(np.complex128)

    def nonlinear(v: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(v, n=n)
        return -reaction * np.fft.rfft(u ** 3)

    init = x ** 2 * np.cos(np.pi * x) if u0 is None else u0(x)
    u = etdrk4_semilinear(init, lin, nonlinear, dt, steps, every)
    return {"x": x, "t": np.linspace(0.0, t_end, n_snapshots), "u": u}


def allen_cahn_energy(u: np.ndarray, length: float = 2.0, diffusion: float = 1e-4, reaction: float = 5.0) -> np.ndarray:
    """Lyapunov functional E[u] = ∫ d/2 u_x^2 + r/4 (u^2 - 1)^2 dx (non-increasing along Allen-Cahn solutions)."""
    n = u.shape[-1]
    ux = np.fft.irfft(1j * _k(n, length) * np.fft.rfft(u, axis=-1), n=n, axis=-1)
    return (diffusion / 2 * ux ** 2 + reaction / 4 * (u ** 2 - 1) ** 2).mean(-1) * length


def ks_causal_reference(n: int = 512, dt: float = 1e-4, t_end: float = 1.0, n_snapshots: int = 251,
                        u0: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """u_t + 5 u u_x + 0.5 u_xx + 0.005 u_xxxx = 0 on [-1, 1) periodic, ETDRK4. Default IC: cos(pi x)(1 + sin(pi x))
    (the card's fallback when the official ks_simple.mat is not used)."""
    x = -1.0 + 2.0 * np.arange(n) / n
    steps, every = solver_steps(t_end, dt, n_snapshots)
    k = _k(n, 2.0)
    k_odd = k.copy()
    k_odd[-1] = 0.0
    lin = (0.5 * k ** 2 - 0.005 * k ** 4).astype(np.complex128)
    dealias = np.arange(n // 2 + 1) < n / 3

    def nonlinear(v: np.ndarray) -> np.ndarray:  # -5 u u_x = -5/2 (u^2)_x
        u = np.fft.irfft(v * dealias, n=n)
        return -2.5j * k_odd * np.fft.rfft(u * u)

    init = np.cos(np.pi * x) * (1 + np.sin(np.pi * x)) if u0 is None else u0(x)
    u = etdrk4_semilinear(init, lin, nonlinear, dt, steps, every)
    return {"x": x, "t": np.linspace(0.0, t_end, n_snapshots), "u": u}


def burgers_reference(nu: float = 0.01, n: int = 512, dt: float = 1e-3, t_end: float = 1.0, n_snapshots: int = 101,
                      u0: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Viscous Burgers v_t + v v_x = nu v_xx on [0, 2 pi) periodic: pseudo-spectral, 2/3-rule dealiasing, ETDRK4.
    Default v0 = sin x. Returns {"x": (n,), "t": (n_snapshots,), "u": (n_snapshots, n)}."""
    x = 2.0 * np.pi * np.arange(n) / n
    steps, every = solver_steps(t_end, dt, n_snapshots)
    k = _k(n, 2.0 * np.pi)
    k_odd = k.copy()
    k_odd[-1] = 0.0
    dealias = np.arange(n // 2 + 1) < n / 3
    lin = (-nu * k ** 2).astype(np.complex128)

    def nonlinear(v: np.ndarray) -> np.ndarray:  # -v v_x = -1/2 (v^2)_x
        u = np.fft.irfft(v * dealias, n=n)
        return -0.5j * k_odd * np.fft.rfft(u * u) * dealias

    init = np.sin(x) if u0 is None else u0(x)
    u = etdrk4_semilinear(init, lin, nonlinear, dt, steps, every)
    return {"x": x, "t": np.linspace(0.0, t_end, n_snapshots), "u": u}


def galilean_shift(v: np.ndarray, t: np.ndarray, shift_speed: float, length: float = 2.0 * np.pi) -> np.ndarray:
    """u(x, t) = C + v(x - C t, t) on a periodic grid (rows of v are times t), by an exact Fourier phase shift."""
    n = v.shape[-1]
    k = _k(n, length)
    phase = np.exp(-1j * k[None, :] * shift_speed * np.asarray(t)[:, None])
    vh = np.fft.rfft(v, axis=-1) * phase  # (the Nyquist mode keeps its real part: negligible after dealiasing)
    return shift_speed + np.fft.irfft(vh, n=n, axis=-1)


def burgers_cole_hopf(x: np.ndarray, t: float, nu: float, n_quad: int = 20001, chunk: int = 64) -> np.ndarray:
    """Exact solution of v_t + v v_x = nu v_xx with v0 = sin x (Cole-Hopf): v = -2 nu phi_x / phi with
    phi = heat kernel * exp(cos x / (2 nu)), i.e.
        v(x, t) = int sin(x - s) w(s) ds / int w(s) ds,   log w(s) = cos(x - s) / (2 nu) - s^2 / (4 nu t),
    evaluated by the trapezoid rule on |s| <= 12 sqrt(nu t) + 2 pi with the weights normalised by their maximum
    (no overflow, no cancellation; the Bessel-series form loses all digits for small nu)."""
    x = np.asarray(x, dtype=np.float64)
    if t == 0:
        return np.sin(x)
    half = 12.0 * np.sqrt(nu * t) + 2.0 * np.pi
    s = np.linspace(-half, half, n_quad)
    out = np.empty_like(x)
    for start in range(0, x.size, chunk):
        xc = x.reshape(-1)[start:start + chunk, None]
        logw = np.cos(xc - s[None]) / (2.0 * nu) - s[None] ** 2 / (4.0 * nu * t)
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        out.reshape(-1)[start:start + chunk] = np.trapezoid(np.sin(xc - s[None]) * w, s, axis=1) / \
            np.trapezoid(w, s, axis=1)
    return out


def oscillator_exact(t: np.ndarray, omega: float = 2.0 * np.pi) -> np.ndarray:
    """x' = omega y, y' = -omega x, x(0) = 1, y(0) = 0: (T, 2) = (cos(omega t), -sin(omega t))."""
    return np.stack([np.cos(omega * t), -np.sin(omega * t)], -1)


LORENZ = {"sigma": 10.0, "rho": 28.0, "beta": 8.0 / 3.0, "x0": (1.0, 1.0, 1.0)}


LORENZ_SOLVERS = ("dop853", "odeint")


def lorenz_reference(t: np.ndarray, solver: str = "dop853") -> np.ndarray:
    """Lorenz-63 (sigma 10, rho 28, beta 8/3) from (1, 1, 1), as the causal-PINN Lorenz script: (T, 3) by scipy's
    DOP853 at rtol 1e-10 / atol 1e-12 (the card's offline default), or by `scipy.integrate.odeint` at its default
    tolerances (`solver="odeint"`: the script's own reference, the one the paper's errors are measured against). The
    chaotic trajectories of the two differ by 1e-3 at t = 13 and by 1 at t = 21."""
    from scipy.integrate import odeint, solve_ivp

    if solver not in LORENZ_SOLVERS:
        raise ValueError(f"unknown Lorenz reference solver {solver!r}; available: {', '.join(LORENZ_SOLVERS)}")
    s, r, b = LORENZ["sigma"], LORENZ["rho"], LORENZ["beta"]

    def rhs(_t, u):
        x, y, z = u
        return [s * (y - x), x * (r - z) - y, x * y - b * z]

    if solver == "odeint":
        return odeint(lambda u, tt: rhs(tt, u), LORENZ["x0"], t)
    sol = solve_ivp(rhs, (float(t[0]), float(t[-1])), LORENZ["x0"], t_eval=t, method="DOP853", rtol=1e-10,
                    atol=1e-12)
    return sol.y.T


def convection_exact(x: np.ndarray, t: np.ndarray, c: float, nu: float = 0.0) -> np.ndarray:
    """u_t + c u_x = nu u_xx, u0 = sin x: u = exp(-nu t) sin(x - c t) (broadcasting x and t)."""
    return np.exp(-nu * t) * np.sin(x - c * t)


# ------------------------------------------------------------------------------------------------ real files
PAPER_FILES = {
    # the original PINNs Allen-Cahn reference: keys tt (1, 201), x (512, 1), uu (512, 201); checksum not verified
    "allen_cahn_mat": ("https://github.com/maziarraissi/PINNs/raw/master/main/Data/AC.mat", None, "AC.mat"),
    # official CausalPINNs KS (regular): keys usol (nx, nt), t (1, nt), x (1, nx); checksum not verified
    "ks_mat": ("https://github.com/PredictiveIntelligenceLab/CausalPINNs/raw/main/data/ks_simple.mat", None,
               "ks_simple.mat"),
    # official CausalPINNs KS (chaotic, KS/chaotic_KS.py): same keys as ks_simple.mat (the script reads usol[:, k] as
    # the state at t[k], t[0] and x[0] as the grids); checksum not verified
    "ks_chaotic_mat": ("https://github.com/PredictiveIntelligenceLab/CausalPINNs/raw/main/data/ks_chaotic.mat", None,
                       "ks_chaotic.mat"),
}
# .mat keys (t, x, u) per file; u is stored (X, T)
MAT_KEYS = {
    "allen_cahn_mat": ("tt", "x", "uu"),
    "ks_mat": ("t", "x", "usol"),
    "ks_chaotic_mat": ("t", "x", "usol"),
}


def load_mat_reference(path: str | Path, name: str) -> dict[str, np.ndarray]:
    """{"x": (X,), "t": (T,), "u": (T, X)} from AC.mat (`tt`, `x`, `uu`), ks_simple.mat or ks_chaotic.mat (`t`, `x`,
    `usol`); the layouts are in MAT_KEYS. An unreadable or misshapen file, variables that are not real numbers
    (complex included), or NaN / infinite values, is a one-line DataFileError naming it."""
    from scipy.io import loadmat

    from datamodules.data_files import DataFileError, mat_read_errors, require_finite, require_real

    if name not in MAT_KEYS:
        raise ValueError(f"no .mat layout for {name!r}")
    keys = MAT_KEYS[name]
    try:
        d = loadmat(str(path))
    except NotImplementedError:
        raise DataFileError(f"{path} is a MATLAB v7.3 (HDF5) file; {name} reads the official MATLAB v5 .mat "
                            f"(keys {', '.join(keys)})") from None
    except mat_read_errors() as err:
        raise DataFileError(f"cannot read {path} as a MATLAB .mat file: {one_line(err, 160)}") from None
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataFileError(f"{path}: missing keys {missing} for {name} (has {sorted(k for k in d if k[0] != '_')})")
    for key in keys:
        require_real(path, key, np.asarray(d[key]))
    t, x, u = (np.asarray(d[k], dtype=np.float64) for k in keys)
    t, x = t.reshape(-1), x.reshape(-1)
    if t.size == 0 or x.size == 0 or u.shape != (x.size, t.size):
        raise DataFileError(f"{path}: {keys[2]} has shape {u.shape}, expected ({x.size}, {t.size}) with non-empty "
                            f"{keys[1]} and {keys[0]}")
    for key, arr in zip(keys, (t, x, u)):
        require_finite(path, key, arr)
    return {"x": x, "t": t, "u": u.T}


# ------------------------------------------------------------------------------------------------ datamodules
CAUSAL_DOMAINS = {  # (t_end, x_low, x_high); x range None for ODEs
    "oscillator": (2.0, None, None),
    "lorenz": (30.0, None, None),
    "allen_cahn": (1.0, -1.0, 1.0),
    "allen_cahn_mat": (1.0, -1.0, 1.0),
    "ks": (1.0, -1.0, 1.0),
    "ks_mat": (1.0, -1.0, 1.0),
    # chaotic KS (KS/chaotic_KS.py): collocation x uniform in [0, 2 pi]; horizon 1 = 10 windows of 25 snapshots at
    # dt = 1/250 (the file's time grid is not verified here: setup checks that the file reaches the horizon)
    "ks_chaotic_mat": (1.0, 0.0, 2.0 * math.pi),
}


def check_reference_grid(ref: dict[str, np.ndarray], name: str, path) -> None:
    """A paper file's grids fit the problem: t starts at 0 (the initial condition is the first snapshot) and
    increases, and x increases over the problem's domain (CAUSAL_DOMAINS; a periodic grid may stop one spacing
    short of its end). A file on another time origin or x range trained without a word otherwise."""
    t, x = ref["t"], ref["x"]
    if abs(float(t[0])) > 1e-9 or (t.size > 1 and not (np.diff(t) > 0).all()):
        raise UserError(f"data.name={name}: {path}'s t must start at 0 and increase (t[0] = {float(t[0]):g}): the "
                        "first snapshot is the initial condition")
    _, low, high = CAUSAL_DOMAINS[name]
    if low is None:
        return
    spacing = (high - low) / max(x.size - 1, 1)
    if (x.size > 1 and not (np.diff(x) > 0).all()) or float(x[0]) < low - 1e-6 or float(x[-1]) > high + 1e-6 \
            or float(x[0]) > low + 1.5 * spacing or float(x[-1]) < high - 1.5 * spacing:
        raise UserError(f"data.name={name}: {path}'s x runs from {float(x[0]):g} to {float(x[-1]):g}; the problem's "
                        f"domain is [{low:g}, {high:g}] (x increasing over it)")


def check_reference_horizon(t: np.ndarray, horizon: float, name: str) -> None:
    """A paper file must reach the horizon time_windows x t_end to within one snapshot spacing (the KS scripts score
    the first 10 x 25 snapshots only, so the file may end one spacing short)."""
    spacing = float(t[1] - t[0]) if t.size > 1 else 0.0
    if float(t[-1]) + spacing < horizon - 1e-9:
        raise UserError(f"data.name={name}: the file's t ends at {float(t[-1]):g}, short of time_windows x t_end = "
                        f"{horizon:g}; lower data.time_windows or data.t_end")


class CausalPINNDataModule(L.LightningDataModule):
    """Collocation slices for causal training (card `causal_pinn`) and the reference solution for evaluation.

    t_end: the training window [0, t_end] (collocation times, local to the window); time_windows: the number of
    windows a time-marching run trains one after the other (KS: 10 windows of 0.1); the reference is cut to
    [0, time_windows * t_end]. t_overshoot: collocation times reach t_end * (1 + t_overshoot) (the Lorenz script
    trains each window on [0, 1.1 t_end]). lorenz_solver: the Lorenz reference's integrator (`lorenz_reference`).
    """

    @property
    def same_batch_on_every_rank(self) -> bool:
        """The collocation grid (sampling=grid) is every step's batch, on every DDP rank."""
        return self.sampling == "grid"

    def __init__(self, name: str = "oscillator", n_t: int = 128, n_x: int = 1, sampling: str = "grid",
                 t_end: float | None = None, steps_per_epoch: int = 100, n_modes: int = 512, dt: float = 1e-4,
                 n_snapshots: int = 201, data_dir: str | None = None, seed: int = 0, time_windows: int = 1,
                 t_overshoot: float = 0.0, lorenz_solver: str = "dop853") -> None:
        super().__init__()
        if name not in CAUSAL_DOMAINS:
            raise ValueError(f"unknown causal-PINN dataset {name!r}; available: {', '.join(CAUSAL_DOMAINS)}")
        if sampling not in ("grid", "random"):
            raise ValueError(f"sampling must be 'grid' or 'random', got {sampling!r}")
        if n_t < 2 or n_x < 1:
            raise ValueError(f"need n_t >= 2 and n_x >= 1, got n_t={n_t}, n_x={n_x}")
        check_choice("data.lorenz_solver", "Lorenz reference solver", lorenz_solver, LORENZ_SOLVERS)
        if name in ("oscillator", "lorenz") and n_x != 1:
            raise ValueError(f"the {name} problem is an ODE: n_x must be 1")
        if not t_overshoot >= 0:  # NaN too (the slice times came out unsorted: a traceback at the first step)
            raise ValueError(f"data.t_overshoot must be >= 0, got {t_overshoot}")
        check_min("data", 1, steps_per_epoch=steps_per_epoch, n_modes=n_modes)
        check_min("data", 2, n_snapshots=n_snapshots)
        check_positive("data", t_end=t_end, dt=dt)
        if name in ("allen_cahn", "ks"):  # the ETDRK4 reference on [0, 1] (setup), saved at n_snapshots times
            solver_steps(1.0, dt, n_snapshots, "data.dt")
        self.save_hyperparameters()
        self.name, self.n_t, self.n_x, self.sampling, self.seed = name, n_t, n_x, sampling, seed
        default_end, self.x_low, self.x_high = CAUSAL_DOMAINS[name]
        self.t_end = float(t_end if t_end is not None else default_end)
        if time_windows < 1:
            raise ValueError(f"time_windows must be >= 1, got {time_windows}")
        self.time_windows = time_windows
        self.horizon = self.t_end * time_windows
        if name != "oscillator" and self.horizon > default_end + 1e-9:
            raise ValueError(f"time_windows x t_end = {self.horizon:g} exceeds the {name} reference horizon "
                             f"{default_end:g}")
        self.steps_per_epoch = steps_per_epoch
        self.reference: dict[str, np.ndarray] | None = None
        # sampling "random": fresh points every step (official DataGenerator: a new key per batch), from one seeded
        # generator that checkpoints save and restore (so a resumed run continues the same stream)
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + 1)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def setup(self, stage: str | None = None) -> None:
        if self.reference is not None:
            return
        hp = self.hparams
        if self.name == "oscillator":
            t = np.linspace(0.0, self.horizon, 201 * self.time_windows - self.time_windows + 1)
            ref = {"t": t, "x": np.zeros(1), "u": oscillator_exact(t)[:, None, :]}  # (T, 1, 2)
        elif self.name == "lorenz":
            t = np.linspace(0.0, self.horizon, int(round(self.horizon / 0.01)) + 1)  # the script's 0.01 grid
            ref = {"t": t, "x": np.zeros(1), "u": lorenz_reference(t, hp.lorenz_solver)[:, None, :]}  # (T, 1, 3)
        elif self.name in PAPER_FILES:
            from datamodules.download import fetch

            url, sha, fname = PAPER_FILES[self.name]
            if hp.data_dir and not (Path(hp.data_dir).expanduser() / fname).is_file():
                raise UserError(f"data: {fname} is not in data.data_dir={hp.data_dir} (put it there, or leave "
                                f"data.data_dir unset to download it from {url})")
            path = Path(hp.data_dir).expanduser() / fname if hp.data_dir else fetch(url, sha256=sha)
            ref = load_mat_reference(path, self.name)
            check_reference_grid(ref, self.name, path)
            check_reference_horizon(ref["t"], self.horizon, self.name)
        elif self.name == "allen_cahn":
            ref = allen_cahn_reference(hp.n_modes, hp.dt, 1.0, hp.n_snapshots)
        else:
            ref = ks_causal_reference(hp.n_modes, hp.dt, 1.0, hp.n_snapshots)
        keep = ref["t"] <= self.horizon + 1e-9
        self.reference = {"t": ref["t"][keep], "x": ref["x"], "u": ref["u"][keep]}

    @property
    def initial_condition(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, u0) of the reference (the IC loss points)."""
        self.setup()
        return self.reference["x"], self.reference["u"][0]

    def _train_batch(self, i: int) -> dict[str, torch.Tensor]:
        t_max = self.t_end * (1.0 + self.hparams.t_overshoot)
        if self.sampling == "grid":
            t = torch.linspace(0.0, t_max, self.n_t)
            x = torch.zeros(1) if self.x_low is None else torch.linspace(self.x_low, self.x_high, self.n_x)
        else:  # fresh points every step, every epoch (each DDP rank its own: collocation.own_draw)
            def draw() -> tuple[torch.Tensor, torch.Tensor]:
                g = self.generator
                t = torch.sort(torch.rand(self.n_t, generator=g) * t_max).values  # sorted before weighting
                x = torch.zeros(1) if self.x_low is None else \
                    self.x_low + (self.x_high - self.x_low) * torch.rand(self.n_x, generator=g)
                return t, x

            t, x = own_draw(self, draw)
        return {"t": t, "x": x, **self._ic}

    @property
    def _ic(self) -> dict[str, torch.Tensor]:
        x0, u0 = self.initial_condition
        return {"x_ic": torch.tensor(x0, dtype=torch.float32), "u_ic": torch.tensor(u0, dtype=torch.float32)}

    def _eval_item(self) -> dict[str, torch.Tensor]:
        r = self.reference
        t_col = torch.linspace(0.0, self.t_end, self.n_t, dtype=torch.float64)
        x_col = torch.zeros(1, dtype=torch.float64) if self.x_low is None else \
            torch.linspace(self.x_low, self.x_high, self.n_x, dtype=torch.float64)
        return {"t": torch.tensor(r["t"]), "x": torch.tensor(r["x"]), "u": torch.tensor(r["u"]),
                "t_col": t_col, "x_col": x_col}

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return generated_train_loader(MadeItems(self._train_batch, self.steps_per_epoch), self)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(MadeItems(lambda i: self._eval_item(), 1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


BURGERS_SNAPSHOTS = 101  # solver snapshots of the Burgers reference (interpolated in time to the evaluation grid)


class LagrangianPINNDataModule(L.LightningDataModule):
    """Full-grid collocation on [0, 2 pi) x [0, t_end] (card `lagrangian_pinn`) and the Eulerian reference.

    name=convection: u_t + c u_x = nu u_xx, u0 = sin x, exact reference exp(-nu t) sin(x - c t).
    name=burgers: u_t + u u_x = nu u_xx, u0 = sin x + shift (moving shock), reference C + v(x - C t, t) with v the
    512-mode spectral solution for v0 = sin x, saved at 101 times and linear in time between them (in v's frame).
    """

    same_batch_on_every_rank = True  # one fixed grid is every step's batch, on every DDP rank

    def __init__(self, name: str = "convection", c: float = 30.0, nu: float = 0.0, shift: float = 0.0,
                 n_x: int = 256, n_t: int = 100, t_end: float = 1.0, eval_n_x: int = 256, eval_n_t: int = 100,
                 steps_per_epoch: int = 100, solver_modes: int = 512, solver_dt: float = 1e-3) -> None:
        super().__init__()
        if name not in ("convection", "burgers"):
            raise ValueError(f"unknown Lagrangian-PINN dataset {name!r}; available: convection, burgers")
        if not nu >= 0:  # NaN too (the reference solver's SVD failed: a traceback)
            raise ValueError(f"data.nu (viscosity) must be >= 0, got {nu}")
        if name == "burgers" and nu <= 0:
            raise ValueError("the Burgers reference solver needs nu > 0")
        check_min("data", 2, n_x=n_x, n_t=n_t, eval_n_x=eval_n_x, eval_n_t=eval_n_t)
        if eval_n_x < 5:  # the spectral error (lagrangian_pinn) drops 2 points at each x-end
            raise ValueError(f"eval_n_x must be >= 5, got {eval_n_x}")
        check_min("data", 1, steps_per_epoch=steps_per_epoch, solver_modes=solver_modes)
        check_positive("data", t_end=t_end, solver_dt=solver_dt)
        if name == "burgers":
            solver_steps(t_end, solver_dt, BURGERS_SNAPSHOTS, "data.solver_dt")
        self.save_hyperparameters()
        self.name, self.c, self.nu, self.shift, self.t_end = name, c, nu, shift, t_end
        self.steps_per_epoch = steps_per_epoch
        self.length = 2.0 * math.pi
        self.reference: dict[str, np.ndarray] | None = None

    def _grid(self, n_x: int, n_t: int) -> tuple[np.ndarray, np.ndarray]:
        x = self.length * np.arange(n_x) / n_x
        t = np.linspace(0.0, self.t_end, n_t)
        return x, t

    def setup(self, stage: str | None = None) -> None:
        if self.reference is not None:
            return
        hp = self.hparams
        x, t = self._grid(hp.eval_n_x, hp.eval_n_t)
        if self.name == "convection":
            u = convection_exact(x[None, :], t[:, None], self.c, self.nu)
        else:
            ref = burgers_reference(self.nu, hp.solver_modes, hp.solver_dt, self.t_end, BURGERS_SNAPSHOTS)
            # linear in time in the frame moving with the shift, where the shock stays put (interpolating after the
            # shift smeared it: 5.6e-2 error at shift 50, against 1.1e-5 now), then shifted at the evaluation times
            v = np.stack([np.interp(t, ref["t"], col) for col in ref["u"].T], -1)  # (T, solver_modes)
            vh = np.fft.rfft(galilean_shift(v, t, self.shift) - self.shift, axis=-1) / v.shape[-1]
            # spectral interpolation onto the evaluation grid x
            m = np.arange(vh.shape[-1])
            w = np.where((m == 0) | ((v.shape[-1] % 2 == 0) & (m == vh.shape[-1] - 1)), 1.0, 2.0)
            u = self.shift + np.real((vh * w) @ np.exp(1j * np.outer(m, x)))  # (T, X)
        self.reference = {"x": x, "t": t, "u": u}

    def u0(self, x: np.ndarray) -> np.ndarray:
        return np.sin(x) + (self.shift if self.name == "burgers" else 0.0)

    def _train_item(self) -> dict[str, torch.Tensor]:
        x, t = self._grid(self.hparams.n_x, self.hparams.n_t)
        X, T = np.meshgrid(x, t, indexing="ij")
        return {"x": torch.tensor(X.reshape(-1), dtype=torch.float32),
                "t": torch.tensor(T.reshape(-1), dtype=torch.float32)}

    def _eval_item(self) -> dict[str, torch.Tensor]:
        r = self.reference
        return {"x": torch.tensor(r["x"]), "t": torch.tensor(r["t"]), "u": torch.tensor(r["u"])}

    def train_dataloader(self) -> DataLoader:
        self.setup()
        item = self._train_item()
        return generated_train_loader(MadeItems(lambda i: item, self.steps_per_epoch), self)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(MadeItems(lambda i: self._eval_item(), 1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
