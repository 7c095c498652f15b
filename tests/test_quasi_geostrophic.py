"""The two-layer QG channel model of the MEDIDA paper (datamodules.quasi_geostrophic) against exact solutions and
invariants."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules.quasi_geostrophic import QGParams, TwoLayerQG

FREE = dict(tau_d=0.0, tau_f=0.0, nu=0.0, sponge=False, u_jet=0.0)


def test_pv_inversion_round_trip():
    model = TwoLayerQG(QGParams(nx=32, ny=64))
    rng = np.random.default_rng(0)
    psi = rng.standard_normal((2, 64, 32))
    psi -= psi.mean(axis=(1, 2), keepdims=True)
    back = model.to_grid(model.psi_from_pv(model.pv_from_psi(model.to_spectral(psi))))
    np.testing.assert_allclose(back, psi, atol=1e-10)


def test_jacobian_matches_the_analytic_product():
    model = TwoLayerQG(QGParams(nx=32, ny=64))
    a, b = 2 * np.pi * 3 / model.p.lx, 2 * np.pi * 2 / model.p.ly
    X, Y = np.meshgrid(model.x, model.y)
    psi, q = np.sin(a * X), np.sin(b * Y)
    jac = model.to_grid(model.jacobian(model.to_spectral(psi), model.to_spectral(q)))
    np.testing.assert_allclose(jac, a * np.cos(a * X) * b * np.cos(b * Y), atol=1e-10)


def test_dealiased_product_is_the_plain_zero_padded_transform_bit_for_bit():
    """The solver's 3/2-rule product skips the meridional FFTs of the all-zero padding columns (inverse) and of the
    discarded columns (forward): the same numbers as np.fft.irfft2 / rfft2 on the full zero-padded arrays, to the
    last bit (so the chaotic truth trajectory, and the cached paper-grid truth, are unchanged)."""
    model = TwoLayerQG(QGParams(nx=32, ny=64))
    rng = np.random.default_rng(3)
    a_hat, b_hat = (model.to_spectral(rng.standard_normal((2, 64, 32))) for _ in range(2))
    ny, nx, my, mx, half = 64, 32, 96, 48, 32

    def pad(f):
        out = np.zeros(f.shape[:-2] + (my, mx // 2 + 1), complex)
        out[..., :half, : nx // 2 + 1] = f[..., :half, :]
        out[..., my - half:, : nx // 2 + 1] = f[..., half:, :]
        return out

    prod = np.fft.rfft2(np.fft.irfft2(pad(a_hat), s=(my, mx)) * np.fft.irfft2(pad(b_hat), s=(my, mx))) * (9.0 / 4.0)
    want = np.concatenate([prod[..., :half, : nx // 2 + 1], prod[..., my - half:, : nx // 2 + 1]], axis=-2)
    np.testing.assert_array_equal(model._product(a_hat, b_hat), want)
    dx, dy = 1j * model.kx, 1j * model.ky
    np.testing.assert_array_equal(model.jacobian(a_hat, b_hat),
                                  model._product(dx * a_hat, dy * b_hat) - model._product(dy * a_hat, dx * b_hat))


def test_barotropic_rossby_wave_travels_west_at_beta_over_k2():
    """A single barotropic mode psi = eps cos(k x) has J(psi, lap psi) = 0; beta makes it a Rossby wave
    psi = eps cos(k (x + beta / k^2 t))."""
    p = QGParams(nx=32, ny=32, **FREE)
    model = TwoLayerQG(p)
    k = 2 * np.pi * 2 / p.lx
    X, _ = np.meshgrid(model.x, model.y)
    psi0 = 1e-3 * np.cos(k * X)
    steps = 400
    out, _ = model.run(model.state_from_psi(np.stack([psi0, psi0])), steps, save_every=steps)
    t = steps * p.dt
    exact = 1e-3 * np.cos(k * (X + p.beta / k ** 2 * t))
    np.testing.assert_allclose(out[-1, 0], exact, atol=2e-5)  # 2 % of the amplitude (leapfrog + Robert filter)
    np.testing.assert_allclose(out[-1, 1], out[-1, 0], atol=1e-12)  # stays barotropic


def test_robert_asselin_filter_starts_at_the_third_step():
    """Official QGfun: forward step at i = 0, leapfrog from i = 1, the filter q_now += g (q_prev - 2 q_now + q_next)
    only when i > 1: after two steps the filtered and the unfiltered (g = 0) solvers agree exactly, after three they
    differ, and the third step's filter is the formula applied to the unfiltered states."""
    rng = np.random.default_rng(2)
    psi0 = 0.1 * rng.standard_normal((2, 64, 32))
    runs = {g: TwoLayerQG(QGParams(nx=32, ny=64, robert=g)) for g in (0.04, 0.0)}
    states = {g: m.state_from_psi(psi0) for g, m in runs.items()}
    for _ in range(2):
        states = {g: runs[g].step(s) for g, s in states.items()}
    np.testing.assert_array_equal(states[0.04].q_now, states[0.0].q_now)
    np.testing.assert_array_equal(states[0.04].q_prev, states[0.0].q_prev)
    before = states[0.0]
    after = {g: runs[g].step(s) for g, s in states.items()}
    assert np.abs(after[0.04].q_prev - after[0.0].q_prev).max() > 0
    filtered = before.q_now + 0.04 * (before.q_prev - 2 * before.q_now + after[0.0].q_now)
    np.testing.assert_allclose(after[0.04].q_prev, filtered, rtol=0, atol=1e-12)


def test_unforced_inviscid_flow_conserves_energy():
    p = QGParams(nx=32, ny=64, **FREE)
    model = TwoLayerQG(p)
    rng = np.random.default_rng(1)
    k = np.sqrt(model.kx ** 2 + model.ky ** 2)
    psi_hat = (rng.standard_normal((2,) + k.shape) + 1j * rng.standard_normal((2,) + k.shape)) * np.exp(-k ** 2)
    psi0 = 0.5 * model.to_grid(psi_hat) / np.abs(model.to_grid(psi_hat)).max()
    e0 = model.energy(psi0)
    out, _ = model.run(model.state_from_psi(psi0), 400, save_every=100)
    energies = np.array([model.energy(f) for f in out])
    assert np.all(np.abs(energies / e0 - 1) < 5e-3), energies / e0
    assert np.abs(out[-1] - psi0).max() > 0.05  # it did evolve


@pytest.mark.slow
def test_paper_configuration_spins_up_a_bounded_eastward_jet():
    """Paper grid and parameters (96 x 192, dt 0.025) for 2,000 steps from the official random start: finite,
    bounded, and the upper-layer zonal-mean flow is eastward in the channel centre (the relaxation jet)."""
    model = TwoLayerQG(QGParams())
    out, _ = model.run(model.initial_state(seed=0), 2000, save_every=500)
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 1e3
    psi1 = out[-1, 0]
    u1 = -np.gradient(psi1.mean(axis=1), model.y)  # u = -psi_y
    centre = np.abs(model.y) < model.p.sigma
    assert u1[centre].mean() > 0.1
