"""2D incompressible Navier-Stokes in vorticity form on the periodic unit square (the FNO benchmark's setting,
Li et al. 2021, Sec. 5.3), vectorised over a batch of fields (numpy only):

    w_t + u . grad w = nu lap w + f,     u = (psi_y, -psi_x),   -lap psi = w,
    f(x, y) = 0.1 (sin(2 pi (x + y)) + cos(2 pi (x + y)))      (the benchmark's forcing).

Pseudo-spectral in space (2/3-rule dealiasing of the advection term), Crank-Nicolson for diffusion and Heun
(explicit trapezoid) for advection and forcing, as in the benchmark's generator. Initial vorticity: Gaussian random
field w0 ~ N(0, 7^{3/2} (-lap + 49 I)^{-2.5}) with zero mean.

    w0 = random_vorticity(8, n=32, seed=0)
    w = navier_stokes_2d(w0, visc=1e-3, dt=1e-3, n_steps=4000, save_every=250)   # (8, 16, 32, 32)
"""
from __future__ import annotations

import numpy as np

__all__ = ["fno_forcing", "navier_stokes_2d", "random_vorticity"]


def _wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(kx, ky) of the rfft2 layout on [0, 1)^2: kx along axis -2 (full), ky along axis -1 (half), times 2 pi."""
    kx = 2.0 * np.pi * np.fft.fftfreq(n, d=1.0 / n)[:, None]
    ky = 2.0 * np.pi * np.fft.rfftfreq(n, d=1.0 / n)[None, :]
    return np.broadcast_to(kx, (n, n // 2 + 1)), np.broadcast_to(ky, (n, n // 2 + 1))


def fno_forcing(n: int) -> np.ndarray:
    """f = 0.1 (sin(2 pi (x + y)) + cos(2 pi (x + y))) on the n x n grid x_i = i / n (axis -2 is x)."""
    x = np.arange(n) / n
    s = x[:, None] + x[None, :]
    return 0.1 * (np.sin(2 * np.pi * s) + np.cos(2 * np.pi * s))


def random_vorticity(batch: int, n: int = 64, seed: int = 0, alpha: float = 2.5, tau: float = 7.0) -> np.ndarray:
    """(batch, n, n) Gaussian random fields, the FNO benchmark's N(0, sigma^2 (-lap + tau^2 I)^{-alpha}) with
    sigma = tau^{(2 alpha - 2) / 2} (7^{3/2} for alpha = 2.5, tau = 7), scaled as its generator does; zero mean;
    deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    kx, ky = _wavenumbers(n)
    sigma = tau ** (0.5 * (2 * alpha - 2.0))
    sqrt_eig = n * n * sigma * ((kx ** 2 + ky ** 2) + tau ** 2) ** (-alpha / 2.0)  # 2 pi k already in kx, ky
    sqrt_eig[0, 0] = 0.0
    coeff = (rng.standard_normal((batch, n, n // 2 + 1)) + 1j * rng.standard_normal((batch, n, n // 2 + 1)))
    return np.fft.irfft2(np.sqrt(2.0) * sqrt_eig * coeff, s=(n, n))


def navier_stokes_2d(w0: np.ndarray, visc: float, dt: float, n_steps: int, save_every: int = 1,
                     forcing: np.ndarray | None | str = "fno") -> np.ndarray:
    """Integrate a batch of vorticity fields w0 (B, n, n); returns the saved frames (B, n_steps // save_every, n, n)
    at t = save_every * dt, 2 * save_every * dt, ... `forcing="fno"` is the benchmark's f, None means f = 0."""
    w0 = np.asarray(w0, dtype=np.float64)
    if w0.ndim != 3 or w0.shape[-1] != w0.shape[-2]:
        raise ValueError(f"navier_stokes_2d: w0 must be (batch, n, n), got {w0.shape}")
    if save_every < 1 or n_steps % save_every:
        raise ValueError(f"navier_stokes_2d: n_steps={n_steps} must be a multiple of save_every={save_every}")
    n = w0.shape[-1]
    kx, ky = _wavenumbers(n)
    lap = -(kx ** 2 + ky ** 2)
    inv_lap = np.where(lap == 0, 0.0, 1.0 / np.where(lap == 0, 1.0, lap))
    cutoff = (2.0 / 3.0) * np.pi * n  # 2/3 rule on |k| <= (2/3) k_max, k_max = pi n
    dealias = (np.abs(kx) <= cutoff) & (np.abs(ky) <= cutoff)
    if isinstance(forcing, str):
        if forcing != "fno":
            raise ValueError(f"navier_stokes_2d: unknown forcing '{forcing}'")
        forcing = fno_forcing(n)
    f_h = np.zeros((n, n // 2 + 1), complex) if forcing is None else np.fft.rfft2(forcing)

    def rhs(w_h: np.ndarray) -> np.ndarray:
        """-u . grad w + f in Fourier space (dealiased)."""
        psi_h = -inv_lap * w_h  # -lap psi = w
        u = np.fft.irfft2(1j * ky * psi_h, s=(n, n))     # psi_y
        v = np.fft.irfft2(-1j * kx * psi_h, s=(n, n))    # -psi_x
        w_x = np.fft.irfft2(1j * kx * w_h, s=(n, n))
        w_y = np.fft.irfft2(1j * ky * w_h, s=(n, n))
        return dealias * np.fft.rfft2(-(u * w_x + v * w_y)) + f_h

    w_h = np.fft.rfft2(w0)
    cn_plus, cn_minus = 1.0 + 0.5 * dt * visc * lap, 1.0 - 0.5 * dt * visc * lap
    frames = []
    for step in range(1, n_steps + 1):
        r0 = rhs(w_h)
        w_pred = (cn_plus * w_h + dt * r0) / cn_minus
        w_h = (cn_plus * w_h + 0.5 * dt * (r0 + rhs(w_pred))) / cn_minus
        if step % save_every == 0:
            frames.append(np.fft.irfft2(w_h, s=(n, n)))
    return np.stack(frames, axis=1)
