"""Two-layer quasi-geostrophic (QG) channel model of the MEDIDA QG paper (Mojgani et al., JAMES 2024, Sec. 2.3 and
its Table of parameters), numpy only.

Potential vorticity of the upper (1) and lower (2) layer, with deformation radius 1 and topography R in layer 2:

    q1 = lap psi1 - (psi1 - psi2) + beta y,        q2 = lap psi2 + (psi1 - psi2) + beta y + R

    d q1/dt = -J(psi1, q1 - beta y) - beta d_x psi1 + tau_d (psi1 - psi2 - psi_R) - S(y) (q1 - <q1>_x) - nu D8 q1
    d q2/dt = -J(psi2, q2 - beta y) - beta d_x psi2 - tau_d (psi1 - psi2 - psi_R) - S(y) (q2 - <q2>_x)
              - tau_f lap psi2 - nu D8 q2

J(a, b) = a_x b_y - a_y b_x; psi_R is the equilibrium interface, the meridional integral of the jet
u_eq(y) = U (sech^2(y / sigma) - sech^2(y_b / sigma)) (y_b: distance to the channel wall); the sponge
S(y) = U sech^2(y_b / sigma) damps eddies near the walls; D8 = k_x^8 + k_y^8 (hyperviscosity, implicit).
Doubly periodic pseudo-spectral grid (N x N2 points on Lx x Ly), Orszag 3/2-rule de-aliasing of the Jacobians,
leapfrog in time (a forward step first) with a Robert-Asselin filter of coefficient g (from the third step on).

Paper values (defaults of `QGParams`): N = 96, N2 = 192, Lx = 46, Ly = 68, beta = 0.196, sigma = 3.5, U = 1,
tau_d = 0.01, tau_f = 0.07, nu = 1e-6, dt = 0.025, g = 0.04; spin-up 10,000 steps, then a snapshot every 40 steps
(1 time unit). The "model" of the MEDIDA experiments is the same solver with tau_f raised by 0.3.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["QGParams", "QGState", "TwoLayerQG"]


@dataclass(frozen=True)
class QGParams:
    nx: int = 96
    ny: int = 192
    lx: float = 46.0
    ly: float = 68.0
    beta: float = 0.196
    sigma: float = 3.5      # jet width
    u_jet: float = 1.0      # jet speed U
    tau_d: float = 0.01     # interface relaxation rate
    tau_f: float = 0.07     # bottom friction rate (layer 2)
    nu: float = 1e-6        # hyperviscosity on k_x^8 + k_y^8
    dt: float = 0.025
    robert: float = 0.04    # leapfrog (Robert-Asselin) filter coefficient g
    jacobian_coefficient: float = 1.0  # c_me_jac of the official QGlib_v2: the advection is -c J(psi, q)
    sponge: bool = True
    dealias: bool = True

    def with_(self, **changes) -> "QGParams":
        return replace(self, **changes)


@dataclass
class QGState:
    """Spectral PV anomalies (q - beta y - layer-2 topography) of both layers at the previous and current step."""

    q_prev: np.ndarray   # (2, ny, nx // 2 + 1) complex
    q_now: np.ndarray
    step: int = 0


class TwoLayerQG:
    """The solver: `psi = model.run(state, n_steps, save_every)` returns stream functions (T, 2, ny, nx)."""

    def __init__(self, params: QGParams = QGParams(), topography: np.ndarray | None = None) -> None:
        p = self.p = params
        if p.nx % 2 or p.ny % 2:
            raise ValueError(f"QG grid sizes must be even, got {p.nx} x {p.ny}")
        self.x = np.linspace(-p.lx / 2, p.lx / 2, p.nx, endpoint=False)
        self.y = np.linspace(-p.ly / 2, p.ly / 2, p.ny, endpoint=False)
        self.kx = 2 * np.pi * np.fft.rfftfreq(p.nx, p.lx / p.nx)[None, :]
        self.ky = 2 * np.pi * np.fft.fftfreq(p.ny, p.ly / p.ny)[:, None]
        self.lap = -(self.kx ** 2 + self.ky ** 2)
        self.hyper = self.kx ** 8 + self.ky ** 8
        dy = self.y[1] - self.y[0]
        i = np.arange(p.ny)
        y_centre = (i - p.ny / 2) * dy
        y_wall = np.minimum(i, p.ny - i - 1) * dy
        self.sponge = p.u_jet / np.cosh(y_wall / p.sigma) ** 2 if p.sponge else np.zeros(p.ny)
        u_eq = p.u_jet * (1 / np.cosh(y_centre / p.sigma) ** 2 - 1 / np.cosh(y_wall / p.sigma) ** 2)
        ky1 = self.ky[:, 0]
        psi_r_hat = np.zeros(p.ny, complex)
        nonzero = ky1 != 0
        psi_r_hat[nonzero] = -np.fft.fft(u_eq)[nonzero] / (1j * ky1[nonzero])  # u = -psi_y
        self.psi_r = np.real(np.fft.ifft(psi_r_hat))[:, None]
        self.u_eq = u_eq
        self.topography = np.zeros((p.ny, p.nx)) if topography is None else np.array(topography, float)
        self.topography.setflags(write=False)  # its spectrum is computed once below
        # constant arrays of the time step, computed once (each is the array the per-step expression built, so the
        # stepping is bit-for-bit what it was when they were recomputed every step)
        self._ikx, self._iky = 1j * self.kx, 1j * self.ky
        self._topo_hat = self.to_spectral(self.topography)
        self._beta_ikx = p.beta * 1j * self.kx
        self._friction = p.tau_f * self.lap
        self._bt_den = np.where(self.lap == 0, 1.0, self.lap)
        self._bc_den = self.lap - 2.0
        self._implicit = {1: 1.0 + p.dt * p.nu * self.hyper, 2: 1.0 + 2 * p.dt * p.nu * self.hyper}
        self._beta_y = self.p.beta * self.y[None, :, None]

    # ------------------------------------------------------------------------- spectral helpers
    def to_spectral(self, f: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(f, axes=(-2, -1))

    def to_grid(self, f_hat: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(f_hat, s=(self.p.ny, self.p.nx), axes=(-2, -1))

    def pv_from_psi(self, psi_hat: np.ndarray) -> np.ndarray:
        """PV anomaly (without beta y and topography) from the stream functions, spectral (2, ny, nx/2+1)."""
        shear = psi_hat[0] - psi_hat[1]
        return np.stack([self.lap * psi_hat[0] - shear, self.lap * psi_hat[1] + shear])

    def psi_from_pv(self, q_hat: np.ndarray) -> np.ndarray:
        """Invert the PV anomaly: barotropic (q1 + q2) / 2 = lap psi_bt, baroclinic (q1 - q2) / 2 = (lap - 2) psi_bc."""
        psi_bt = 0.5 * (q_hat[0] + q_hat[1]) / self._bt_den
        psi_bt[..., 0, 0] = 0.0  # the mean (lap = 0) of the barotropic stream function
        psi_bc = 0.5 * (q_hat[0] - q_hat[1]) / self._bc_den
        return np.stack([psi_bt + psi_bc, psi_bt - psi_bc])

    def _padded_grids(self, f_hat: np.ndarray) -> np.ndarray:
        """Grid values on the 3/2-rule grid (3 ny / 2 x 3 nx / 2) of the spectral fields f_hat (..., ny, nx/2+1):
        np.fft.irfft2 of the zero-padded coefficients, with the meridional (complex) transforms done only on the
        nx/2+1 columns that are not padding (an inverse transform of zeros is zeros: the same numbers, fewer FFTs)."""
        ny, nx = self.p.ny, self.p.nx
        my, mx, half = 3 * ny // 2, 3 * nx // 2, ny // 2
        cols = np.zeros(f_hat.shape[:-2] + (my, nx // 2 + 1), complex)
        cols[..., :half, :] = f_hat[..., :half, :]
        cols[..., my - half:, :] = f_hat[..., half:, :]
        out = np.zeros(f_hat.shape[:-2] + (my, mx // 2 + 1), complex)
        out[..., : nx // 2 + 1] = np.fft.ifft(cols, axis=-2)
        return np.fft.irfft(out, n=mx, axis=-1)

    def _truncated_spectrum(self, grid: np.ndarray) -> np.ndarray:
        """The retained (ny, nx/2+1) coefficients of np.fft.rfft2 of a 3/2-rule grid, times 9/4 (the padding's
        normalisation); the meridional transforms only on the nx/2+1 retained columns."""
        ny, nx = self.p.ny, self.p.nx
        my, half = 3 * ny // 2, ny // 2
        cols = np.fft.fft(np.fft.rfft(grid, axis=-1)[..., : nx // 2 + 1], axis=-2) * (9.0 / 4.0)
        out = np.empty(grid.shape[:-2] + (ny, nx // 2 + 1), complex)
        out[..., :half, :] = cols[..., :half, :]
        out[..., half:, :] = cols[..., my - half:, :]
        return out

    def _product(self, a_hat: np.ndarray, b_hat: np.ndarray) -> np.ndarray:
        """Spectral coefficients of the grid product a * b, 3/2-rule de-aliased (zero-padded) when enabled."""
        if not self.p.dealias:
            return self.to_spectral(self.to_grid(a_hat) * self.to_grid(b_hat))
        return self._truncated_spectrum(self._padded_grids(a_hat) * self._padded_grids(b_hat))

    def jacobian(self, psi_hat: np.ndarray, q_hat: np.ndarray) -> np.ndarray:
        """J(psi, q) = psi_x q_y - psi_y q_x, spectral (the two products transformed separately, then subtracted).
        One field per FFT call: batching the four derivative fields into one call measured slower (2-3x, larger
        work arrays) at the paper grid."""
        dx, dy = self._ikx, self._iky
        return self._product(dx * psi_hat, dy * q_hat) - self._product(dy * psi_hat, dx * q_hat)

    # ------------------------------------------------------------------------- dynamics
    def tendency(self, q_hat: np.ndarray) -> np.ndarray:
        """Right-hand side without the (implicit) hyperviscosity."""
        p = self.p
        psi_hat = self.psi_from_pv(q_hat)
        advected = np.stack([q_hat[0], q_hat[1] + self._topo_hat])
        rhs = -p.jacobian_coefficient * self.jacobian(psi_hat, advected) - self._beta_ikx * psi_hat
        if p.sponge:
            psi, q = self.to_grid(np.stack([psi_hat, q_hat]))
        else:
            psi = self.to_grid(psi_hat)
        relax = p.tau_d * (psi[0] - psi[1] - self.psi_r)
        forcing = np.stack([relax, -relax])
        if p.sponge:
            q += self._beta_y
            q[1] += self.topography
            forcing -= self.sponge[None, :, None] * (q - q.mean(axis=-1, keepdims=True))
        rhs += self.to_spectral(forcing)
        rhs[1] -= self._friction * psi_hat[1]
        return rhs

    def initial_state(self, seed: int = 0, amplitude: float = 1.0) -> QGState:
        """Random stream-function coefficients uniform in [0, amplitude) (the official initialisation), seeded."""
        rng = np.random.default_rng(seed)
        shape = (2, self.p.ny, self.p.nx // 2 + 1)
        psi_hat = amplitude * rng.random(shape).astype(complex)
        psi_hat = self.to_spectral(self.to_grid(psi_hat))  # project onto real fields
        q = self.pv_from_psi(psi_hat)
        return QGState(q.copy(), q.copy(), 0)

    def state_from_psi(self, psi: np.ndarray) -> QGState:
        q = self.pv_from_psi(self.to_spectral(np.asarray(psi, float)))
        return QGState(q.copy(), q.copy(), 0)

    def step(self, state: QGState) -> QGState:
        """One leapfrog step of the PV anomaly q - beta y, with the nabla^8 hyperviscosity implicit. The official
        QGlib_v2 applies that damping to the full PV (beta y added back, stepped, subtracted again), so the Fourier
        sawtooth of the non-periodic beta y ramp is damped every step too; not copied: it changes the wall rows only
        (interior with 20 rows cut: 6e-5 after 400 steps at the paper grid) and is the same for truth and model, so
        it cancels in the increments MEDIDA regresses on."""
        p = self.p
        rhs = self.tendency(state.q_now)
        if state.step == 0:  # forward Euler start
            q_next = (state.q_now + p.dt * rhs) / self._implicit[1]
            return QGState(state.q_now, q_next, 1)
        rhs *= 2 * p.dt
        rhs += state.q_prev
        q_next = rhs
        q_next /= self._implicit[2]
        q_now = state.q_now
        if state.step > 1:  # Robert-Asselin filter from the third step on (official QGfun: `if i > 1`)
            update = state.q_prev - 2 * state.q_now
            update += q_next
            update *= p.robert
            q_now = q_now + update
        return QGState(q_now, q_next, state.step + 1)

    def run(self, state: QGState, n_steps: int, save_every: int = 1) -> tuple[np.ndarray, QGState]:
        """Advance n_steps; return (stream functions (n_steps // save_every, 2, ny, nx), final state)."""
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        frames = []
        for k in range(1, n_steps + 1):
            state = self.step(state)
            if not np.all(np.isfinite(state.q_now[:, :2, :2])):
                raise FloatingPointError(f"QG solver blew up at step {state.step}")
            if k % save_every == 0:
                frames.append(self.to_grid(self.psi_from_pv(state.q_now)))
        out = np.stack(frames) if frames else np.zeros((0, 2, self.p.ny, self.p.nx))
        return out, state

    def energy(self, psi: np.ndarray) -> float:
        """Kinetic + available potential energy, mean over the domain: 1/2 <|grad psi1|^2 + |grad psi2|^2 +
        (psi1 - psi2)^2> (conserved by the unforced, inviscid, sponge-free dynamics)."""
        psi_hat = self.to_spectral(psi)
        grad2 = sum(self.to_grid(d * psi_hat) ** 2 for d in (1j * self.kx, 1j * self.ky))
        return float(0.5 * (grad2.sum(axis=0) + (psi[0] - psi[1]) ** 2).mean())
