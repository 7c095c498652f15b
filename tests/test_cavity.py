"""The steady lid-driven cavity reference solver (datamodules/cavity.py, used by the PIG `lid_driven_cavity`
problem): Ghia, Ghia & Shin (1982) Re = 100 centrelines, grid convergence, Stokes symmetry, the discrete equations and
the pressure."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules.cavity import GHIA_RE100_U, GHIA_RE100_V, cavity_reference, ghia_centrelines, solve_cavity


def test_re100_matches_ghia_centrelines():
    """Max |deviation| from Ghia et al.'s Table I (u on x = 0.5) and Table II (v on y = 0.5), Re = 100. Measured:
    65 x 65 u 0.0027 / v 0.0059; 129 x 129 u 0.0042 / v 0.0084. The 129 grid is not closer to Ghia: its extrema move
    towards the accurate spectral values (u_min -0.2140, v_min -0.2538; Ghia's coarser multigrid gives -0.2109,
    -0.2453), i.e. the remaining gap is mostly Ghia's own error. Threshold 0.01 (the brief's bound: 0.02)."""
    for n in (65, 129):
        ref = solve_cavity(n, 100.0) if n == 65 else cavity_reference(129, 100.0)
        u, v = ghia_centrelines(ref)
        du, dv = np.abs(u - GHIA_RE100_U), np.abs(v - GHIA_RE100_V)
        assert du.max() < 0.01 and dv.max() < 0.01, (n, du.max(), dv.max())
        assert u.min() < -0.205 and v.min() < -0.24 and v.max() > 0.17  # the extrema are there, not smeared


def test_grid_convergence_of_the_primary_vortex():
    """ψ_min (primary vortex strength) converges to the accurate Re = 100 value -0.10353 (Ghia: -0.10342)."""
    psi = {n: (solve_cavity(n, 100.0)["psi"].min() if n != 129 else cavity_reference(129, 100.0)["psi"].min())
           for n in (33, 65, 129)}
    e = {n: abs(p + 0.10353) for n, p in psi.items()}
    assert e[129] < e[65] < e[33] and e[129] < 5e-4, psi
    ref = cavity_reference(129, 100.0)
    j, i = np.unravel_index(ref["psi"].argmin(), ref["psi"].shape)
    assert abs(ref["x"][i] - 0.617) < 0.02 and abs(ref["y"][j] - 0.734) < 0.02  # Ghia: (0.6172, 0.7344)


def test_boundary_values_and_discrete_equations():
    ref = solve_cavity(33, 100.0)
    u, v, psi, w = ref["u"], ref["v"], ref["psi"], ref["omega"]
    n, h = 33, 1 / 32
    assert np.all(u[-1] == 1.0) and np.all(v[-1] == 0) and np.all(u[0] == 0)  # the lid includes its corners
    assert np.all(u[:-1, 0] == 0) and np.all(u[:-1, -1] == 0) and np.all(v[:, [0, -1]] == 0) and np.all(v[0] == 0)
    assert np.all(psi[[0, -1]] == 0) and np.all(psi[:, [0, -1]] == 0)
    # Δψ = -ω and u ω_x + v ω_y = Δω / Re at the interior nodes (central differences), to Newton's tolerance
    lap = lambda a: (a[2:, 1:-1] + a[:-2, 1:-1] + a[1:-1, 2:] + a[1:-1, :-2] - 4 * a[1:-1, 1:-1]) / h**2  # noqa: E731
    assert np.abs(lap(psi) + w[1:-1, 1:-1]).max() < 1e-8 * np.abs(w).max()
    wx = (w[1:-1, 2:] - w[1:-1, :-2]) / (2 * h)
    wy = (w[2:, 1:-1] - w[:-2, 1:-1]) / (2 * h)
    transport = u[1:-1, 1:-1] * wx + v[1:-1, 1:-1] * wy - lap(w) / 100.0
    assert np.abs(transport).max() < 1e-8 * np.abs(lap(w) / 100).max()
    # the velocity is discretely divergence-free away from the walls (central differences of ψ commute)
    div = (u[2:-2, 3:-1] - u[2:-2, 1:-3] + v[3:-1, 2:-2] - v[1:-3, 2:-2]) / (2 * h)
    assert np.abs(div).max() < 1e-9
    assert n == u.shape[0]


def test_stokes_flow_is_mirror_symmetric_and_inertia_breaks_it():
    stokes, re100 = solve_cavity(33, 0.0), solve_cavity(33, 100.0)
    np.testing.assert_allclose(stokes["u"], stokes["u"][:, ::-1], atol=1e-12)
    np.testing.assert_allclose(stokes["v"], -stokes["v"][:, ::-1], atol=1e-12)
    assert np.abs(re100["u"] - re100["u"][:, ::-1]).max() > 0.05


def test_pressure_balances_the_momentum_equations():
    """∇p = -(u·∇)u + Δu / Re (central differences) on the interior nodes away from the singular lid corners: the
    least-squares pressure leaves a small residual; p has mean zero and is low in the primary vortex's centre."""
    ref = solve_cavity(65, 100.0, pressure=True)
    u, v, p = ref["u"], ref["v"], ref["p"]
    h = 1 / 64
    c = lambda a, ax: (np.roll(a, -1, ax) - np.roll(a, 1, ax)) / (2 * h)  # noqa: E731 (ax 1: x, ax 0: y)
    def lap(a):
        return (np.roll(a, -1, 0) + np.roll(a, 1, 0) + np.roll(a, -1, 1) + np.roll(a, 1, 1) - 4 * a) / h**2

    fx = -(u * c(u, 1) + v * c(u, 0)) + lap(u) / 100
    fy = -(u * c(v, 1) + v * c(v, 0)) + lap(v) / 100
    sl = (slice(4, -8), slice(4, -4))  # the interior without the lid corners' neighbourhood
    rx, ry = c(p, 1)[sl] - fx[sl], c(p, 0)[sl] - fy[sl]
    scale = np.sqrt(np.mean(fx[sl] ** 2 + fy[sl] ** 2))
    assert np.sqrt(np.mean(rx**2 + ry**2)) < 0.05 * scale
    assert abs(p.mean()) < 1e-10
    j, i = np.unravel_index(ref["psi"].argmin(), ref["psi"].shape)
    assert p[j, i] < np.median(p)


@pytest.mark.parametrize("kwargs", [{"n": 4}, {"reynolds": -1.0}, {"lid": 0.0}])
def test_bad_inputs_raise(kwargs):
    with pytest.raises(ValueError, match="cavity solver"):
        solve_cavity(**kwargs)
