"""MEDIDA data (paper card `medida`, fast offline default): Kuramoto-Sivashinsky truth vs an imperfect model.

Truth:  u_t = -u u_x - u_xx - u_xxxx on [0, L) periodic (L = 22, N = 128), ETDRK4 with h = 0.05
(Cox & Matthews 2002; phi-function coefficients by the contour-integral average of Kassam & Trefethen 2005).
Model:  u_t = -u u_x - model_uxx u_xx - u_xxxx with model_uxx = 0.8, so the structural model error is -0.2 u_xx.

After a spin-up, `n_snapshots` states u(t_j) are kept `snapshot_every` time units apart. For each one, truth and
model take one step Δt = h from the *same* state; the analysis increment divided by Δt,
    Δu_j / Δt = (u_truth(t_j + Δt) - u_model(t_j + Δt)) / Δt ≈ -0.2 u_xx(t_j),
is the regression target. Observations: a fixed random subset of `sensor_ratio` of the grid points (the same
sensors for every snapshot) with Gaussian noise of `noise` x std(u). The interpolant is fitted on the sensors and
the library of candidate terms is built from its derivatives on the full grid.

Batches (DataLoader with batch_size=None, no batch dimension):
  train: {"x": (n_sensors, 1) coordinates scaled to [0, 1), "u": (n_sensors, S) noisy observations}
  val/test: {"x": (N, 1) grid in [0, 1), "u": (N, S) true states, "derivs": (5, N, S) exact spectral
             u, u_x, u_xx, u_xxx, u_xxxx, "increment": (N, S) Δu/Δt}

The paper's own setting (card "Offline default (full pipeline)") is `MedidaQGDataModule` below: two-layer QG truth
(datamodules.quasi_geostrophic) vs the same solver with a model error (cases 2-4), sensors at both times.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.collocation import generated_train_loader
from launch.errors import check_min, check_positive


# --------------------------------------------------------------------------------------------- KS solver (ETDRK4)
def ks_wavenumbers(n: int, length: float) -> np.ndarray:
    """Real-FFT wavenumbers 2πk/L, k = 0..n/2."""
    return 2.0 * np.pi * np.fft.rfftfreq(n, d=1.0 / n) / length


class KSETDRK4:
    """Vectorised ETDRK4 stepper for u_t = -u u_x - c2 u_xx - c4 u_xxxx (rows of a (B, N) array are independent).

    Linear part in Fourier space: Lk = c2 k^2 - c4 k^4; nonlinear part N(u) = -1/2 (u^2)_x = -i k/2 FFT(u^2),
    with the 2/3 rule on the product. `nonlinear=False` drops N (the linear equation, solved exactly).
    """

    def __init__(self, n: int = 128, length: float = 22.0, h: float = 0.05, c2: float = 1.0, c4: float = 1.0,
                 nonlinear: bool = True, contour_points: int = 32) -> None:
        self.n, self.length, self.h, self.nonlinear = n, length, h, nonlinear
        k = ks_wavenumbers(n, length)
        self.k = k
        lin = c2 * k**2 - c4 * k**4
        self.E, self.E2 = np.exp(h * lin), np.exp(h * lin / 2)
        r = np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
        LR = h * lin[:, None] + r[None, :]
        self.Q = h * np.real(np.mean((np.exp(LR / 2) - 1) / LR, axis=1))
        self.f1 = h * np.real(np.mean((-4 - LR + np.exp(LR) * (4 - 3 * LR + LR**2)) / LR**3, axis=1))
        self.f2 = h * np.real(np.mean((2 + LR + np.exp(LR) * (-2 + LR)) / LR**3, axis=1))
        self.f3 = h * np.real(np.mean((-4 - 3 * LR - LR**2 + np.exp(LR) * (4 - LR)) / LR**3, axis=1))
        self.g = -0.5j * k
        self.dealias = np.abs(np.fft.rfftfreq(n, d=1.0 / n)) < n / 3

    def _N(self, v: np.ndarray) -> np.ndarray:
        if not self.nonlinear:
            return np.zeros_like(v)
        u = np.fft.irfft(v * self.dealias, n=self.n, axis=-1)
        return self.g * np.fft.rfft(u * u, axis=-1)

    def step_hat(self, v: np.ndarray) -> np.ndarray:
        Nv = self._N(v)
        a = self.E2 * v + self.Q * Nv
        Na = self._N(a)
        b = self.E2 * v + self.Q * Na
        Nb = self._N(b)
        c = self.E2 * a + self.Q * (2 * Nb - Nv)
        Nc = self._N(c)
        return self.E * v + Nv * self.f1 + 2 * (Na + Nb) * self.f2 + Nc * self.f3

    def step(self, u: np.ndarray, steps: int = 1) -> np.ndarray:
        v = np.fft.rfft(u, axis=-1)
        for _ in range(steps):
            v = self.step_hat(v)
        return np.fft.irfft(v, n=self.n, axis=-1)


def spectral_derivatives(u: np.ndarray, length: float, orders: int = 4) -> np.ndarray:
    """(orders + 1, *u.shape): u and its exact spectral x-derivatives up to `orders` (last axis periodic)."""
    n = u.shape[-1]
    ik = 1j * ks_wavenumbers(n, length)
    v = np.fft.rfft(u, axis=-1)
    out = [u]
    for p in range(1, orders + 1):
        vp = v * ik**p
        if n % 2 == 0 and p % 2 == 1:
            vp[..., -1] = 0.0  # odd derivatives of the Nyquist mode
        out.append(np.fft.irfft(vp, n=n, axis=-1))
    return np.stack(out)


def generate_ks(n: int = 128, length: float = 22.0, h: float = 0.05, model_uxx: float = 0.8, n_snapshots: int = 20,
                spinup: float = 200.0, snapshot_every: float = 2.5, seed: int = 0) -> dict[str, np.ndarray]:
    """Truth snapshots (S, N), their one-step increments divided by Δt = h, and the grid."""
    rng = np.random.default_rng(seed)
    x = length * np.arange(n) / n
    u0 = 0.1 * rng.standard_normal(n)
    u0 = np.fft.irfft(np.fft.rfft(u0) * (np.arange(n // 2 + 1) < 8), n=n)  # smooth random initial state
    truth = KSETDRK4(n, length, h, c2=1.0)
    model = KSETDRK4(n, length, h, c2=model_uxx)
    u = truth.step(u0[None], int(round(spinup / h)))
    every = int(round(snapshot_every / h))
    snaps = []
    for _ in range(n_snapshots):
        snaps.append(u[0])
        u = truth.step(u, every)
    snaps = np.stack(snaps)
    u_next = truth.step(snaps)
    increment = (u_next - model.step(snaps)) / h
    return {"x": x, "u": snaps, "u_next": u_next, "increment": increment}


# ------------------------------------------------------------------------------------------------- datamodule
class _Repeat(Dataset):
    def __init__(self, item: dict[str, torch.Tensor], length: int) -> None:
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.item


class _WholeDatasetLoaders:
    """Every batch is the whole (small) dataset: `steps_per_epoch` repeats of `_train_item()` for training, one
    `_eval_item()` for validation and test (shared by the KS and QG datamodules)."""

    same_batch_on_every_rank = True  # the whole dataset is every step's batch, on every DDP rank

    def train_dataloader(self) -> DataLoader:
        return generated_train_loader(_Repeat(self._train_item(), self.steps_per_epoch), self)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Repeat(self._eval_item(), 1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Repeat(self._eval_item(), 1), batch_size=None)


class MedidaDataModule(_WholeDatasetLoaders, L.LightningDataModule):
    """Sparse noisy sensors of KS snapshots at t and t + h (train) and the full-grid truth, derivatives, exact
    increments (val/test); `model_solver` is the imperfect model (-model_uxx u_xx) that the analysis increments
    step."""

    library_terms = ("u", "u_x", "u_xx", "u_xxx", "u_xxxx", "u*u_x", "u^2", "u^3")

    def __init__(self, name: str = "ks", n: int = 128, length: float = 22.0, h: float = 0.05, model_uxx: float = 0.8,
                 n_snapshots: int = 20, spinup: float = 200.0, snapshot_every: float = 2.5,
                 sensor_ratio: float = 0.25, noise: float = 0.001, steps_per_epoch: int = 100, seed: int = 0) -> None:
        super().__init__()
        if name != "ks":
            raise ValueError(f"unknown MEDIDA dataset {name!r}; available: 'ks' (offline Kuramoto-Sivashinsky)")
        if not 0 < sensor_ratio <= 1:
            raise ValueError(f"sensor_ratio must lie in (0, 1], got {sensor_ratio}")
        check_min("data", 1, n=n, n_snapshots=n_snapshots, steps_per_epoch=steps_per_epoch)
        check_min("data", 0, spinup=spinup, noise=noise)
        check_positive("data", length=length, h=h, snapshot_every=snapshot_every)
        self.save_hyperparameters()
        self.name, self.n, self.length, self.h = name, n, length, h
        self.n_snapshots, self.sensor_ratio, self.noise = n_snapshots, sensor_ratio, noise
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        # the missing term: truth has -1 u_xx, the model -model_uxx u_xx
        self.true_coefficients = np.array([0.0, 0.0, -(1.0 - model_uxx), 0.0, 0.0, 0.0, 0.0, 0.0])
        self.data: dict[str, np.ndarray] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        hp = self.hparams
        d = generate_ks(hp.n, hp.length, hp.h, hp.model_uxx, hp.n_snapshots, hp.spinup, hp.snapshot_every, hp.seed)
        rng = np.random.default_rng(hp.seed + 1)
        n_sensors = max(1, int(round(self.sensor_ratio * self.n)))
        sensors = np.sort(rng.choice(self.n, size=n_sensors, replace=False))
        obs = d["u"][:, sensors] + self.noise * d["u"].std() * rng.standard_normal((self.n_snapshots, n_sensors))
        obs_next = d["u_next"][:, sensors] + self.noise * d["u"].std() * rng.standard_normal(obs.shape)
        d["sensors"], d["obs"], d["obs_next"] = sensors, obs, obs_next
        d["derivs"] = spectral_derivatives(d["u"], self.length)
        self.data = d
        self.model_solver = KSETDRK4(hp.n, hp.length, hp.h, c2=hp.model_uxx)

    @property
    def x_unit(self) -> np.ndarray:
        return np.arange(self.n) / self.n

    def _train_item(self) -> dict[str, torch.Tensor]:
        d = self.data
        return {"x": torch.tensor(self.x_unit[d["sensors"]], dtype=torch.float32)[:, None],
                "u": torch.tensor(d["obs"].T, dtype=torch.float32),
                "u_next": torch.tensor(d["obs_next"].T, dtype=torch.float32)}

    def _eval_item(self) -> dict[str, torch.Tensor]:
        d = self.data
        return {"x": torch.tensor(self.x_unit, dtype=torch.float64)[:, None],
                "u": torch.tensor(d["u"].T, dtype=torch.float64),
                "derivs": torch.tensor(d["derivs"].transpose(0, 2, 1), dtype=torch.float64),
                "increment": torch.tensor(d["increment"].T, dtype=torch.float64)}


# ===================================================================================== two-layer QG (paper setting)
# Model-error cases of the official code (the "model" is the same solver with changed rates). QGlib.case_select:
# 1 perfect model, 2 bottom friction tau_f + 0.3, 3 interface relaxation tau_d + 0.1, 4 both (its header maps the
# paper's cases 1 / 2 to 3A / 4A). QGlib_v2.case_select (the 1000 series; its cases 1-4 are commented out there):
# 1001 tau_d + 0.1, 1002 tau_d + 0.1 and tau_f + 0.3, 1003 no relaxation (tau_d = 0), 1004 the nonlinear error c_me_jac
# = 0.5 (half the advection), 1005 tau_d + 0.1, tau_f + 0.3 and no advection (c_me_jac = 0), 1006 tau_f + 0.3,
# 1007 no friction (tau_f = 0). Each: (tau_f, tau_d, Jacobian coefficient) as functions of the truth's values and the
# two error sizes. (1008 / 1009 change the relaxation of psi_R alone / beta in a way the v2 setup does not apply
# consistently: not offered.)
_KEEP = None
QG_CASES = {
    1: (_KEEP, _KEEP, _KEEP), 2: ("+f", _KEEP, _KEEP), 3: (_KEEP, "+d", _KEEP), 4: ("+f", "+d", _KEEP),
    1001: (_KEEP, "+d", _KEEP), 1002: ("+f", "+d", _KEEP), 1003: (_KEEP, 0.0, _KEEP), 1004: (_KEEP, _KEEP, 0.5),
    1005: ("+f", "+d", 0.0), 1006: ("+f", _KEEP, _KEEP), 1007: (0.0, _KEEP, _KEEP),
}

QG_LIBRARY_TERMS = ("lap psi1", "lap psi2", "(d_x+d_y) psi1", "(d_x+d_y) psi2", "psi1", "psi2", "psi_R",
                    "J(psi1, q1-beta y)", "J(psi2, q2-beta y)", "y")


def qg_model_params(truth, case: int = 2, tau_f_error: float = 0.3, tau_d_error: float = 0.1):
    """QGParams of the imperfect model of `case` (QG_CASES) built from the truth's parameters."""
    if case not in QG_CASES:
        raise ValueError(f"unknown QG model-error case {case!r}; available: {sorted(QG_CASES)} "
                         "(1 perfect, 2 tau_f error, 3 tau_d error, 4 both; 1001-1007: QGlib_v2, 1004 nonlinear)")
    f_spec, d_spec, jac = QG_CASES[case]

    def value(spec, current, error):
        return current if spec is _KEEP else current + error if spec in ("+f", "+d") else float(spec)

    return truth.with_(tau_f=value(f_spec, truth.tau_f, tau_f_error), tau_d=value(d_spec, truth.tau_d, tau_d_error),
                       jacobian_coefficient=value(jac, truth.jacobian_coefficient, 0.0))


def qg_true_coefficients(truth, model) -> np.ndarray:
    """(2 layers, 10 terms): the exact model error (truth minus model tendency) in the library QG_LIBRARY_TERMS.

    From the solver's equations: d q2/dt contains -tau_f lap psi2, so truth - model = (tau_f^m - tau_f^r) lap psi2
    (case 2: +0.3 lap psi2 in layer 2); d q1/dt contains +tau_d (psi1 - psi2 - psi_R) and d q2/dt the opposite,
    so truth - model = (tau_d^r - tau_d^m) (psi1 - psi2 - psi_R) in layer 1 and minus that in layer 2; both layers
    advect with -c J(psi_k, q_k - beta y) (no topography here), so truth - model = (c^m - c^r) J(psi_k, q_k - beta y)
    in layer k (case 1004: -0.5 J in each layer)."""
    c = np.zeros((2, len(QG_LIBRARY_TERMS)))
    dj = model.jacobian_coefficient - truth.jacobian_coefficient
    c[0, QG_LIBRARY_TERMS.index("J(psi1, q1-beta y)")] = dj
    c[1, QG_LIBRARY_TERMS.index("J(psi2, q2-beta y)")] = dj
    c[1, 1] = model.tau_f - truth.tau_f
    dd = truth.tau_d - model.tau_d
    for layer, sign in ((0, 1.0), (1, -1.0)):
        c[layer, 4] += sign * dd
        c[layer, 5] -= sign * dd
        c[layer, 6] -= sign * dd
    return c


def qg_forecast(solver, psi: np.ndarray) -> np.ndarray:
    """One model step (the solver's first step: forward Euler with implicit hyperviscosity) from each state.
    psi: (..., 2, ny, nx) stream functions -> the same shape at t + dt (official: QGloop from the analysis, ts=1)."""
    psi = np.asarray(psi, dtype=np.float64)
    flat = psi.reshape((-1,) + psi.shape[-3:])
    out = np.stack([solver.to_grid(solver.psi_from_pv(solver.step(solver.state_from_psi(p)).q_now)) for p in flat])
    return out.reshape(psi.shape)


def qg_pv(solver, psi: np.ndarray) -> np.ndarray:
    """PV anomaly q_k - beta y (- topography) on the grid, (..., 2, ny, nx)."""
    psi_hat = np.moveaxis(solver.to_spectral(np.asarray(psi, np.float64)), -3, 0)  # layer axis first
    return np.moveaxis(solver.to_grid(solver.pv_from_psi(psi_hat)), 0, -3)


def qg_increments(model_solver, psi_t: np.ndarray, psi_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Analysis increments per unit time (card Method step 1; official `dq = (q_r - q_m) / tot_time`):
    dq/dt = (q(psi_next) - q(model one step from psi_t)) / dt, with psi_t the analysis (or truth) at t and psi_next
    the analysis (or truth) at t + dt. Returns (dq/dt, the model forecast psi), both (..., 2, ny, nx)."""
    forecast = qg_forecast(model_solver, psi_t)
    dq = (qg_pv(model_solver, psi_next) - qg_pv(model_solver, forecast)) / model_solver.p.dt
    return dq, forecast


def generate_qg(nx: int = 96, ny: int = 192, lx: float = 46.0, ly: float = 68.0, dt: float = 0.025,
                spinup: int = 10000, n_snapshots: int = 1, snapshot_every: int = 40, seed: int = 0) -> dict:
    """Truth (case-1 physics, paper parameters): spin-up from the official random start, then `n_snapshots` states
    `snapshot_every` steps apart (first at step `spinup`), and one truth step (forward Euler, as the official restart
    from a saved state) from each. Returns {"psi": (S, 2, ny, nx) at t, "psi_next": (S, 2, ny, nx) at t + dt}."""
    from datamodules.quasi_geostrophic import QGParams, TwoLayerQG

    solver = TwoLayerQG(QGParams(nx=nx, ny=ny, lx=lx, ly=ly, dt=dt))
    state = solver.initial_state(seed=seed)
    snaps = []
    for j in range(n_snapshots):
        steps = spinup if j == 0 else snapshot_every
        if steps:
            _, state = solver.run(state, steps, save_every=steps)
        snaps.append(solver.to_grid(solver.psi_from_pv(state.q_now)))
    psi = np.stack(snaps)
    return {"psi": psi, "psi_next": qg_forecast(solver, psi)}


def qg_cache_dir(cache_dir=None):
    """`cache_dir` if given, else the download cache's `medida_qg/` folder ($PAPERZOO_DATA or ~/.cache/paperzoo)."""
    from pathlib import Path

    if cache_dir:
        return Path(cache_dir).expanduser()
    from datamodules.download import cache_dir as root

    return root() / "medida_qg"


def cached_qg(cache_dir=None, **kwargs) -> dict:
    """generate_qg through an .npz cache keyed by all arguments (`download.cached_npz`: written to a temporary name,
    then renamed; an unreadable file is regenerated)."""
    from datamodules.download import cached_npz

    key = {**kwargs, "v": 2}  # v2: Robert-Asselin filter from the third step
    return cached_npz(qg_cache_dir(cache_dir), f"qg_{kwargs.get('nx')}x{kwargs.get('ny')}", key,
                      lambda: generate_qg(**kwargs))


class MedidaQGDataModule(_WholeDatasetLoaders, L.LightningDataModule):
    """MEDIDA's QG setting (card "Offline default (full pipeline)"; official main_QGdry_interp2_newcases.py).

    Truth: the two-layer QG solver (datamodules.quasi_geostrophic, case-1 physics) spun up for `spinup` steps,
    `n_snapshots` states `snapshot_every` steps apart, and one truth step from each (t + dt). Model: the same
    solver with the error of `case` (2: tau_f + tau_f_error, 3: tau_d + tau_d_error, 4: both, 1: none; QGlib_v2's
    1001-1007, e.g. 1004: the nonlinear error, half the advection; see QG_CASES).
    Observations of psi1, psi2 at both times: a fixed random `sensor_ratio` of the grid points (the same sensors
    for every field, as `init_net.py`), plus Gaussian noise of `noise` x std(psi_k) of that field
    (ModelErrorQGarg.py: SENSOR_RATIO 0.25, NOISE_MAG 0.001). Truth states are cached under `cache_dir`
    (default: the download cache's `medida_qg/`).

    Coordinates for the interpolant: x, y each mapped to [-pi, pi) (official init_net.py).
    Batches (batch_size=None):
      train: {"xy": (P, 2) sensor coordinates, "obs": (2 S, P, 2) observed (psi1, psi2), field k = 2 s + time}
      val/test: {"xy": (ny nx, 2) grid coordinates, "psi": (S, 2 times, 2 layers, ny, nx) truth,
                 "obs_grid": (S, 2, 2, ny, nx) the observations on the full grid (only when sensor_ratio == 1)}
    Attributes after setup: `truth_solver`, `model_solver`, `true_coefficients` (2, 10), data["increment"]
    (S, 2, ny, nx): the exact increments dq/dt from the truth states.
    """

    library_terms = QG_LIBRARY_TERMS

    def __init__(self, nx: int = 96, ny: int = 192, lx: float = 46.0, ly: float = 68.0, dt: float = 0.025,
                 spinup: int = 10000, n_snapshots: int = 1, snapshot_every: int = 40, case: int = 2,
                 tau_f_error: float = 0.3, tau_d_error: float = 0.1, sensor_ratio: float = 0.25,
                 noise: float = 0.001, steps_per_epoch: int = 1000, seed: int = 0,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        if case not in QG_CASES:
            raise ValueError(f"unknown QG model-error case {case!r}; available: {sorted(QG_CASES)}")
        if not 0 < sensor_ratio <= 1:
            raise ValueError(f"sensor_ratio must lie in (0, 1], got {sensor_ratio}")
        if nx % 2 or ny % 2 or nx < 4 or ny < 4:
            raise ValueError(f"QG grid sizes must be even and >= 4, got {nx} x {ny}")
        if n_snapshots < 1 or spinup < 0 or snapshot_every < 1:
            raise ValueError("need n_snapshots >= 1, spinup >= 0 and snapshot_every >= 1")
        self.save_hyperparameters()
        from datamodules.quasi_geostrophic import QGParams, TwoLayerQG

        truth = QGParams(nx=nx, ny=ny, lx=lx, ly=ly, dt=dt)
        model = qg_model_params(truth, case, tau_f_error, tau_d_error)
        self.truth_solver, self.model_solver = TwoLayerQG(truth), TwoLayerQG(model)
        self.true_coefficients = qg_true_coefficients(truth, model)
        self.sensor_ratio, self.noise, self.steps_per_epoch = sensor_ratio, noise, steps_per_epoch
        self.data: dict[str, np.ndarray] | None = None

    @property
    def n_snapshots(self) -> int:
        return self.hparams.n_snapshots

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        hp = self.hparams
        d = cached_qg(hp.cache_dir, nx=hp.nx, ny=hp.ny, lx=hp.lx, ly=hp.ly, dt=hp.dt, spinup=hp.spinup,
                      n_snapshots=hp.n_snapshots, snapshot_every=hp.snapshot_every, seed=hp.seed)
        fields = np.stack([d["psi"], d["psi_next"]], axis=1)  # (S, 2 times, 2 layers, ny, nx)
        rng = np.random.default_rng(hp.seed + 1)
        n_points = hp.nx * hp.ny
        n_sensors = n_points if self.sensor_ratio == 1 else max(1, int(self.sensor_ratio * n_points))
        sensors = np.sort(rng.choice(n_points, size=n_sensors, replace=False))
        std = fields.std(axis=(-2, -1), keepdims=True)
        noisy = fields + self.noise * std * rng.standard_normal(fields.shape) if self.noise else fields.copy()
        d["fields"], d["sensors"] = fields, sensors
        d["obs"] = noisy.reshape(fields.shape[:3] + (n_points,))[..., sensors]  # (S, 2, 2, P)
        if n_sensors == n_points:
            d["obs_grid"] = noisy
        d["increment"], _ = qg_increments(self.model_solver, d["psi"], d["psi_next"])
        self.data = d

    def grid_coordinates(self) -> np.ndarray:
        """(ny nx, 2): (x, y) of every grid point (row-major over (y, x)) mapped to [-pi, pi)."""
        hp = self.hparams
        xs = np.linspace(-np.pi, np.pi, hp.nx, endpoint=False)
        ys = np.linspace(-np.pi, np.pi, hp.ny, endpoint=False)
        X, Y = np.meshgrid(xs, ys)
        return np.stack([X.reshape(-1), Y.reshape(-1)], axis=1)

    def _train_item(self) -> dict[str, torch.Tensor]:
        d = self.data
        obs = d["obs"].reshape((-1,) + d["obs"].shape[2:])  # (2 S, 2 layers, P)
        return {"xy": torch.tensor(self.grid_coordinates()[d["sensors"]], dtype=torch.float32),
                "obs": torch.tensor(obs.transpose(0, 2, 1), dtype=torch.float32)}

    def _eval_item(self) -> dict[str, torch.Tensor]:
        d = self.data
        item = {"xy": torch.tensor(self.grid_coordinates(), dtype=torch.float64),
                "psi": torch.tensor(d["fields"], dtype=torch.float64)}
        if "obs_grid" in d:
            item["obs_grid"] = torch.tensor(d["obs_grid"], dtype=torch.float64)
        return item

