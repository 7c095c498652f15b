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


@pytest.mark.parametrize("structured", [True, False])
def test_boundary_edges_walk_the_square_counter_clockwise_from_their_owners(structured):
    """Each boundary edge once, on a side of the square, with its owner triangle and the owner's direction (outward
    normal on the right of a -> b); the sides' lengths add up to the perimeter."""
    pos, tri = M.unit_square_mesh(6) if structured else M.unstructured_square_mesh(9, seed=2)
    owner, ab = M.boundary_edges(tri)
    bm = M.boundary_masks(pos)
    assert len(ab) == bm["any"].sum() and np.all(bm["any"][ab])
    assert np.all([set(e) <= set(tri[t]) for t, e in zip(owner, ab)])
    d = pos[ab[:, 1]] - pos[ab[:, 0]]
    assert np.linalg.norm(d, axis=1).sum() == pytest.approx(4.0)
    outward = np.stack([d[:, 1], -d[:, 0]], 1)
    mid = 0.5 * (pos[ab[:, 0]] + pos[ab[:, 1]])
    assert np.all(np.sum(outward * (mid - 0.5), 1) > 0)
    assert len(M.boundary_edges(tri[:1])[1]) == 3  # a lone triangle is all boundary


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


# ------------------------------------------------------------------------------------ unstructured triangulation
@pytest.mark.parametrize("n,seed", [(3, 0), (6, 1), (20, 2)])
def test_unstructured_mesh_is_valid_and_covers_the_square(n, seed):
    """Counter-clockwise Delaunay triangles (no inverted or flat element), every node used, areas summing to 1; the
    4 (n - 1) boundary nodes (h = 1 / (n - 1) apart) are exactly the nodes `boundary_masks` flags, the boundary
    edges of the triangulation (edges of one triangle) lie on the square's edges and add up to its perimeter; about
    n^2 nodes, interior nodes at least 0.8 h from every other node (Poisson disc)."""
    pos, tri = M.unstructured_square_mesh(n, seed)
    a = M.signed_areas(pos, tri)
    assert M.count_inverted(pos, tri) == 0 and a.min() > 1e-3 / n**2
    assert np.sum(a) == pytest.approx(1.0, abs=1e-12)
    assert np.array_equal(np.unique(tri), np.arange(len(pos)))
    bm = M.boundary_masks(pos)
    n_bd = 4 * (n - 1)
    assert bm["any"].sum() == n_bd and bm["any"][:n_bd].all() and bm["corner"].sum() == 4
    e = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), 1)
    edges, count = np.unique(e, axis=0, return_counts=True)
    assert set(count) <= {1, 2}
    outer = edges[count == 1]
    assert bm["any"][outer].all()
    assert np.all((bm["x0"][outer].all(1)) | bm["x1"][outer].all(1) | bm["y0"][outer].all(1) | bm["y1"][outer].all(1))
    assert np.linalg.norm(pos[outer[:, 0]] - pos[outer[:, 1]], axis=1).sum() == pytest.approx(4.0)
    assert len(M.mesh_edges(tri)) == len(edges)
    assert 0.85 * n**2 <= len(pos) <= 1.1 * n**2
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(len(pos))
    assert d[n_bd:].min() >= 0.8 * M.cell_size(n) - 1e-12


def test_unstructured_mesh_is_deterministic_by_seed_and_delaunay():
    """Same seed, same mesh; another seed, other interior nodes. Delaunay: no node strictly inside a triangle's
    circumcircle, and the smallest angle stays above 20 degrees (measured worst 25.1 over 30 seeds at n = 20, 26.8
    over 100 seeds at n = 6; Poisson-disc nodes with Delaunay connectivity)."""
    pos, tri = M.unstructured_square_mesh(12, 7)
    pos2, tri2 = M.unstructured_square_mesh(12, 7)
    assert np.array_equal(pos, pos2) and np.array_equal(tri, tri2)
    other, _ = M.unstructured_square_mesh(12, 8)
    assert other.shape != pos.shape or not np.allclose(other, pos)
    p = pos[tri]
    a, b, c = p[:, 0], p[:, 1], p[:, 2]
    d = 2 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1]) + c[:, 0] * (a[:, 1] - b[:, 1]))
    sa, sb, sc = (np.sum(q**2, 1) for q in (a, b, c))
    centre = np.stack([sa * (b[:, 1] - c[:, 1]) + sb * (c[:, 1] - a[:, 1]) + sc * (a[:, 1] - b[:, 1]),
                       sa * (c[:, 0] - b[:, 0]) + sb * (a[:, 0] - c[:, 0]) + sc * (b[:, 0] - a[:, 0])], 1) / d[:, None]
    radius = np.linalg.norm(a - centre, axis=1)
    dist = np.linalg.norm(pos[None] - centre[:, None], axis=-1)
    assert np.all(dist >= radius[:, None] * (1 - 1e-9))
    for n in (6, 20):
        for seed in range(5):
            q, t = M.unstructured_square_mesh(n, seed)
            assert M.triangle_angles(q, t).min() > 20.0
    np.testing.assert_allclose(M.triangle_angles(*M.unit_square_mesh(3)).min(), 45.0)
    with pytest.raises(ValueError, match=">= 3 nodes"):
        M.unstructured_square_mesh(2)


def test_exact_ma_map_of_an_unstructured_mesh():
    """The separable MA map is node-wise, so it applies to unstructured meshes unchanged: the moved 35-node-per-side
    Delaunay mesh has no inverted element, keeps its boundary, and reaches the structured mesh's interpolation gain
    (measured ratio 0.30-0.33 over seeds / front positions vs 0.31 structured)."""
    pos, tri = M.unstructured_square_mesh(35, 0)
    m1 = M.front_monitor_1d(20, 0.4)
    moved = M.equidistributed_mesh(pos, m1)
    assert M.count_inverted(moved, tri) == 0 and M.boundary_violation(moved, pos) == 0.0
    pts = M.random_points(20000, 0)
    f = lambda p: M.front_field(p, 20, 0.4)  # noqa: E731
    ratio = M.interpolation_error(moved, tri, f, pts) / M.interpolation_error(pos, tri, f, pts)
    assert ratio == pytest.approx(0.31, abs=0.04)
