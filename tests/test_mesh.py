"""Shared mesh pieces (`lit_models.common.mesh`) of the mesh-movement papers: triangulation, orientation and
inversion checks, exact piecewise-linear interpolation, 1-D equidistribution, the card calibration numbers and the
finite-difference Monge-Ampere relaxation against the exact separable MA mesh."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_models.common import mesh as M


@pytest.mark.parametrize("n", [2, 5, 20])
def test_unit_square_mesh_is_valid_and_covers_the_square(n):
    pos, tri = M.unit_square_mesh(n)
    assert pos.shape == (n * n, 2) and tri.shape == (2 * (n - 1) ** 2, 3)
    a = M.signed_areas(pos, tri)
    assert np.all(a > 0) and M.count_inverted(pos, tri) == 0
    assert np.sum(a) == pytest.approx(1.0)
    e = M.mesh_edges(tri)
    assert len(e) == 2 * n * (n - 1) + (n - 1) ** 2  # horizontal + vertical + diagonal edges
    bm = M.boundary_masks(pos)
    assert bm["any"].sum() == 4 * (n - 1) and bm["corner"].sum() == 4
    assert M.cell_size(n) == pytest.approx(1 / (n - 1))


def test_signed_areas_numpy_and_torch_agree_and_detect_inversion():
    pos, tri = M.unit_square_mesh(4)
    a = M.signed_areas(torch.tensor(pos), tri).numpy()
    np.testing.assert_allclose(a, M.signed_areas(pos, tri))
    bad = pos.copy()
    bad[5] = [0.9, 0.9]  # an interior node pushed past its neighbours folds elements
    assert M.count_inverted(bad, tri) > 0
    with pytest.raises(ValueError):
        M.unit_square_mesh(1)


def test_linear_fields_are_interpolated_exactly_on_any_valid_mesh():
    pos, tri = M.unit_square_mesh(9)
    moved = M.equidistributed_mesh(pos, M.front_monitor_1d(20, 0.4),
                                   lambda s: M.bump_monitor_1d(s, 5.0, [0.3], [0.05]))
    assert M.count_inverted(moved, tri) == 0
    pts = M.random_points(3000, 1)
    f = lambda p: 0.3 + 2.0 * p[..., 0] - 1.5 * p[..., 1]  # noqa: E731
    assert M.interpolation_error(pos, tri, f, pts) < 1e-12
    assert M.interpolation_error(moved, tri, f, pts) < 1e-12
    # a quadratic is not interpolated exactly, and the brute-force locator agrees with matplotlib's
    g = lambda p: p[..., 0] ** 2 + p[..., 0] * p[..., 1]  # noqa: E731
    assert M.interpolation_error(pos, tri, g, pts) > 1e-4
    t, b = M.locate(moved, tri, pts[:50])
    np.testing.assert_allclose(np.sum(g(moved)[tri[t]] * b, 1), M.interpolate_p1(moved, tri, g(moved), pts[:50]),
                               atol=1e-12)


def test_equidistribution_is_exact():
    """Each cell of the 1-D equidistributed grid carries the same monitor mass, and a constant monitor is the
    identity."""
    m = lambda s: M.bump_monitor_1d(s, 12.0, [0.3, 0.7], [0.03, 0.08])  # noqa: E731
    xi = np.linspace(0, 1, 41)
    x = M.equidistribute_1d(m, xi)
    assert x[0] == 0.0 and x[-1] == pytest.approx(1.0) and np.all(np.diff(x) > 0)
    fine = np.linspace(0, 1, 200001)
    cum = np.concatenate([[0], np.cumsum(0.5 * (m(fine)[1:] + m(fine)[:-1]) * np.diff(fine))])
    mass = np.diff(np.interp(x, fine, cum))
    assert np.max(np.abs(mass / mass.mean() - 1)) < 2e-3
    np.testing.assert_allclose(M.equidistribute_1d(lambda s: np.full_like(s, 3.0), xi), xi, atol=1e-12)
    with pytest.raises(ValueError):
        M.equidistribute_1d(lambda s: s - 0.5, xi)


def test_card_calibration_interpolation_error():
    """Card numbers: u = tanh(20(x - 0.4)) + 0.3 sin(2 pi y), m = 1 + |u_x|/mean|u_x|, 20,000 random points:
    20 x 20 nodes 0.0209 uniform vs 0.0070 MA (ratio 0.33); 35 x 35: 0.0072 vs 0.0023 (0.31)."""
    pts = M.random_points(20000, 0)
    f = lambda p: M.front_field(p, 20, 0.4)  # noqa: E731
    m1 = M.front_monitor_1d(20, 0.4)
    for n, uni, ma in ((20, 0.0209, 0.0070), (35, 0.0072, 0.0023)):
        pos, tri = M.unit_square_mesh(n)
        moved = M.equidistributed_mesh(pos, m1)
        e0, e1 = M.interpolation_error(pos, tri, f, pts), M.interpolation_error(moved, tri, f, pts)
        assert e0 == pytest.approx(uni, abs=5e-4) and e1 == pytest.approx(ma, abs=3e-4)
        assert M.count_inverted(moved, tri) == 0 and M.boundary_violation(moved, pos) == 0.0


def test_gradient_of_the_front_field_is_exact():
    p = torch.rand(50, 2, dtype=torch.float64, requires_grad=True)
    u = M.front_field(p, 20.0, 0.45, angle=0.7)
    (g,) = torch.autograd.grad(u.sum(), p)
    torch.testing.assert_close(g, M.front_gradient(p.detach(), 20.0, 0.45, angle=0.7))


def test_fd_monge_ampere_relaxation_matches_the_exact_separable_mesh():
    """The finite-difference MA relaxation (the solve a learned mover replaces) reaches the exact 1-D
    equidistribution mesh of a separable monitor to well under a cell (measured 0.06 cells at 20 x 20)."""
    n = 20
    pos, tri = M.unit_square_mesh(n)
    m1 = M.front_monitor_1d(20, 0.4)
    x, steps = M.ma_relaxation_mesh(lambda p: m1(p[:, 0]), n, steps=1500)
    exact = M.equidistributed_mesh(pos, m1)
    rmse = np.sqrt(np.mean(np.sum((x - exact) ** 2, 1))) / M.cell_size(n)
    assert rmse < 0.15 and M.count_inverted(x, tri) == 0, (rmse, steps)
