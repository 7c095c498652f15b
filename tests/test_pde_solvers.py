"""ETDRK4 spectral solvers (datamodules.pde_solvers): exact linear decay, mean conservation, a KdV soliton, seeding."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules.pde_solvers import (
    etdrk4_coefficients,
    kdv_etdrk4,
    ks_etdrk4,
    random_ks_initial_condition,
)


def test_linear_ks_matches_exact_exponential_growth_and_decay():
    length, n, dt, steps = 22.0, 64, 0.25, 40
    x = np.arange(n) * length / n
    modes = [1, 3, 5]  # k^2 - k^4 > 0 for mode 1..3 (unstable band), < 0 beyond
    u0 = sum(np.cos(2 * np.pi * m * x / length + 0.3 * m) for m in modes)
    out = ks_etdrk4(u0, length, dt, steps, save_every=steps, nonlinear=False)
    t = dt * steps
    exact = sum(np.exp(((2 * np.pi * m / length) ** 2 - (2 * np.pi * m / length) ** 4) * t)
                * np.cos(2 * np.pi * m * x / length + 0.3 * m) for m in modes)
    assert out.shape == (1, n)
    np.testing.assert_allclose(out[0], exact, rtol=1e-10, atol=1e-10)


def test_contour_coefficients_match_closed_form_away_from_zero():
    lin = np.array([-3.0, -0.5, 0.7])
    h = 0.25
    _, _, q, f1, f2, f3 = etdrk4_coefficients(lin, h)
    z = h * lin
    np.testing.assert_allclose(q.real, h * (np.exp(z / 2) - 1) / z, rtol=1e-10)
    np.testing.assert_allclose(f1.real, h * (-4 - z + np.exp(z) * (4 - 3 * z + z ** 2)) / z ** 3, rtol=1e-8)
    np.testing.assert_allclose(f2.real, h * (2 + z + np.exp(z) * (-2 + z)) / z ** 3, rtol=1e-8)
    np.testing.assert_allclose(f3.real, h * (-4 - 3 * z - z ** 2 + np.exp(z) * (4 - z)) / z ** 3, rtol=1e-8)


def test_ks_conserves_the_mean_stays_bounded_and_is_chaotic():
    u0 = random_ks_initial_condition(8, 22.0, seed=0) + 0.1  # nonzero mean
    u = ks_etdrk4(u0, 22.0, 0.25, 1200, save_every=8)
    assert u.shape == (8, 150, 64) and np.isfinite(u).all()
    np.testing.assert_allclose(u.mean(-1), u0.mean(-1)[:, None] * np.ones((1, 150)), atol=1e-12)
    late = u[:, 50:] - u[:, 50:].mean(-1, keepdims=True)
    assert 0.5 < late.std() < 3.0  # on the attractor: O(1) fluctuations, no blow-up, no decay to zero
    # sensitive dependence: a 1e-6 perturbation grows by orders of magnitude over t = 300
    v = ks_etdrk4(u0[:1] + 1e-6 * np.sin(2 * np.pi * np.arange(64) / 64), 22.0, 0.25, 1200, save_every=1200)
    assert np.abs(v[0, -1] - u[0, -1]).max() > 1e-3


def test_ks_step_size_convergence_is_fourth_order_like():
    u0 = random_ks_initial_condition(1, 22.0, seed=3)
    ref = ks_etdrk4(u0, 22.0, 0.0125, 800, save_every=800)
    coarse = ks_etdrk4(u0, 22.0, 0.1, 100, save_every=100)
    fine = ks_etdrk4(u0, 22.0, 0.05, 200, save_every=200)
    e_coarse, e_fine = np.abs(coarse - ref).max(), np.abs(fine - ref).max()
    assert e_fine < 1e-4 and e_coarse / e_fine > 8.0


def test_kdv_soliton_travels_at_its_speed():
    length, n, c = 40.0, 128, 1.0
    x = np.arange(n) * length / n

    def soliton(t):
        return c / 2 / np.cosh(np.sqrt(c) / 2 * (x - c * t - 10.0)) ** 2

    u = kdv_etdrk4(soliton(0.0), length, 0.01, 500, save_every=250)
    assert u.shape == (2, n)
    np.testing.assert_allclose(u[-1], soliton(5.0), atol=1e-4)


def test_initial_conditions_are_seeded_smooth_and_zero_mean():
    a, b = random_ks_initial_condition(4, 22.0, seed=1), random_ks_initial_condition(4, 22.0, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, random_ks_initial_condition(4, 22.0, seed=2))
    assert a.shape == (4, 64)
    np.testing.assert_allclose(a.mean(-1), 0.0, atol=1e-12)
    spectrum = np.abs(np.fft.rfft(a, axis=-1))
    assert spectrum[:, 5:].max() < 1e-10 and spectrum[:, 1:5].max() > 0.1


def test_bad_save_every_is_rejected():
    with pytest.raises(ValueError):
        ks_etdrk4(np.zeros(16), 22.0, 0.25, 4, save_every=8)
