"""Vectorised, seeded spectral solvers for 1D periodic semilinear PDEs u_t = L u + N(u) (numpy only).

ETDRK4 (Cox & Matthews 2002) with the contour-integral evaluation of its coefficients (Kassam & Trefethen 2005,
"Fourth-order time-stepping for stiff PDEs"): the linear part is integrated exactly in Fourier space, the
nonlinear part with a fourth-order exponential Runge-Kutta scheme. All trajectories of a batch advance together.

- Kuramoto-Sivashinsky  u_t = -u u_x - u_xx - u_xxxx        (L(k) = k^2 - k^4, N = -1/2 (u^2)_x)
- Korteweg-de Vries     u_t = -6 u u_x - u_xxx              (L(k) = i k^3,     N = -3 (u^2)_x)

Both conserve the spatial mean exactly (the k = 0 mode has L = 0 and N = 0).

    u0 = random_ks_initial_condition(256, L=22.0, seed=0)           # (256, 64)
    u = ks_etdrk4(u0, L=22.0, dt=0.25, n_steps=1600, save_every=8)  # (256, 200, 64): t = 2, 4, ..., 400
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["etdrk4", "etdrk4_coefficients", "etdrk4_step", "kdv_etdrk4", "ks_etdrk4", "random_ks_initial_condition"]


def etdrk4_coefficients(lin: np.ndarray, dt: float, n_contour: int = 32) -> tuple[np.ndarray, ...]:
    """(E, E2, Q, f1, f2, f3) for the linear symbol `lin` (complex array over wavenumbers) and step dt.

    phi-functions by the mean over `n_contour` points on a unit circle around each h*L (Kassam-Trefethen),
    which avoids the cancellation of the closed forms near h*L = 0. A full circle, so complex symbols work.
    """
    lin = np.asarray(lin, dtype=np.complex128)
    hl = dt * lin
    roots = np.exp(2j * np.pi * (np.arange(1, n_contour + 1) - 0.5) / n_contour)
    lr = hl[..., None] + roots
    e_lr = np.exp(lr)
    q = dt * np.mean((np.exp(lr / 2) - 1.0) / lr, axis=-1)
    f1 = dt * np.mean((-4.0 - lr + e_lr * (4.0 - 3.0 * lr + lr ** 2)) / lr ** 3, axis=-1)
    f2 = dt * np.mean((2.0 + lr + e_lr * (-2.0 + lr)) / lr ** 3, axis=-1)
    f3 = dt * np.mean((-4.0 - 3.0 * lr - lr ** 2 + e_lr * (4.0 - lr)) / lr ** 3, axis=-1)
    if np.isrealobj(lin) or np.all(np.imag(lin) == 0):
        q, f1, f2, f3 = (np.real(c).astype(np.complex128) for c in (q, f1, f2, f3))
    return np.exp(hl), np.exp(hl / 2), q, f1, f2, f3


def etdrk4_step(vh: np.ndarray, nonlinear: Callable[[np.ndarray], np.ndarray],
                coefficients: tuple[np.ndarray, ...]) -> np.ndarray:
    """One ETDRK4 step (Cox-Matthews, Kassam-Trefethen) of the spectral state vh; `nonlinear` maps spectral states
    to the spectral nonlinear term, `coefficients` = `etdrk4_coefficients(lin, dt)`."""
    e, e2, q, f1, f2, f3 = coefficients
    nv = nonlinear(vh)
    a = e2 * vh + q * nv
    na = nonlinear(a)
    b = e2 * vh + q * na
    nb = nonlinear(b)
    c = e2 * a + q * (2.0 * nb - nv)
    nc = nonlinear(c)
    return e * vh + nv * f1 + 2.0 * (na + nb) * f2 + nc * f3


def etdrk4(u0: np.ndarray, lin: np.ndarray, nonlin_factor: np.ndarray | Callable[[np.ndarray], np.ndarray] | None,
           dt: float, n_steps: int, save_every: int = 1) -> np.ndarray:
    """Integrate u_t = L u + nonlin_factor * FFT(u^2) on a periodic grid (rfft coefficients).

    u0: (N,) or (B, N) real. lin, nonlin_factor: (N // 2 + 1,) complex symbols (nonlin_factor None: linear only).
    nonlin_factor may instead be a function v_hat -> N_hat (rfft coefficients along the last axis) for any other
    nonlinearity (e.g. Allen-Cahn's 5 u - 5 u^3).
    Returns the states after save_every, 2 * save_every, ..., n_steps steps: (T, N) or (B, T, N), T =
    n_steps // save_every (the initial state is not included).
    """
    u0 = np.asarray(u0, dtype=np.float64)
    squeeze = u0.ndim == 1
    u = u0[None] if squeeze else u0
    n = u.shape[-1]
    if save_every < 1 or n_steps < save_every:
        raise ValueError(f"need 1 <= save_every <= n_steps, got save_every={save_every}, n_steps={n_steps}")
    coefficients = etdrk4_coefficients(lin, dt)
    v = np.fft.rfft(u, axis=-1)

    def nonlinear(vh: np.ndarray) -> np.ndarray:
        if callable(nonlin_factor):
            return nonlin_factor(vh)
        if nonlin_factor is None:
            return np.zeros_like(vh)
        phys = np.fft.irfft(vh, n=n, axis=-1)
        return nonlin_factor * np.fft.rfft(phys * phys, axis=-1)

    out = np.empty((u.shape[0], n_steps // save_every, n), dtype=np.float64)
    for step in range(1, n_steps + 1):
        v = etdrk4_step(v, nonlinear, coefficients)
        if step % save_every == 0 and step // save_every <= out.shape[1]:
            out[:, step // save_every - 1] = np.fft.irfft(v, n=n, axis=-1)
    return out[0] if squeeze else out


def _wavenumbers(n: int, length: float) -> tuple[np.ndarray, np.ndarray]:
    """(k, k_odd): rfft wavenumbers 2 pi m / L, and the same with the Nyquist mode zeroed for odd derivatives."""
    k = 2.0 * np.pi / length * np.arange(n // 2 + 1)
    k_odd = k.copy()
    if n % 2 == 0:
        k_odd[-1] = 0.0
    return k, k_odd


def ks_etdrk4(u0: np.ndarray, L: float, dt: float, n_steps: int, save_every: int = 1,
              nonlinear: bool = True) -> np.ndarray:
    """Kuramoto-Sivashinsky u_t = -u u_x - u_xx - u_xxxx on [0, L) periodic; see `etdrk4` for shapes.
    `nonlinear=False` integrates only the linear part (each mode scales by exp((k^2 - k^4) t))."""
    n = np.shape(u0)[-1]
    k, k_odd = _wavenumbers(n, L)
    lin = (k ** 2 - k ** 4).astype(np.complex128)
    factor = -0.5j * k_odd if nonlinear else None
    return etdrk4(u0, lin, factor, dt, n_steps, save_every)


def kdv_etdrk4(u0: np.ndarray, L: float, dt: float, n_steps: int, save_every: int = 1) -> np.ndarray:
    """Korteweg-de Vries u_t + 6 u u_x + u_xxx = 0 on [0, L) periodic; see `etdrk4` for shapes.
    Soliton: u = c/2 sech^2(sqrt(c)/2 (x - c t - x0))."""
    n = np.shape(u0)[-1]
    _, k_odd = _wavenumbers(n, L)
    lin = 1j * k_odd ** 3  # -(ik)^3
    return etdrk4(u0, lin, -3.0j * k_odd, dt, n_steps, save_every)


def random_ks_initial_condition(n: int, L: float, seed: int, N: int = 64, n_modes: int = 4,
                                amplitude: float = 0.5) -> np.ndarray:
    """(n, N) smooth random fields: amplitude * sum_{m=1..n_modes} (a_m cos + b_m sin)(2 pi m x / L) with
    a_m, b_m ~ U(-1, 1) from numpy.random.default_rng(seed); zero mean."""
    rng = np.random.default_rng(seed)
    x = np.arange(N) * L / N
    m = np.arange(1, n_modes + 1)
    phase = 2.0 * np.pi * m[:, None] * x[None, :] / L  # (modes, N)
    a = rng.uniform(-1.0, 1.0, size=(n, n_modes))
    b = rng.uniform(-1.0, 1.0, size=(n, n_modes))
    return amplitude * (a @ np.cos(phase) + b @ np.sin(phase))
