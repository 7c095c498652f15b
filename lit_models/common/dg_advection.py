"""Discontinuous P1 (DG1) upwind advection on triangle meshes, vectorised numpy (UM2N's swirl test, the official
`UM2N/generator/swirl_solver.py` solve without Firedrake).

A DG1 field is an array (T, 3): its values at the three vertices of each triangle (nodal Lagrange basis, so the
field is linear in each triangle and may jump across edges). Meshes are (pos (V, 2), tri (T, 3)) with
counter-clockwise triangles; a moved mesh keeps the connectivity, so the facet topology (`Facets`) is built once.

- `DG1Advection`: the semi-discrete form of u_t + div(c u) = 0 (for divergence-free c, as the swirl, the same as
  the official advective form u_t + c . grad u = 0),
      (u_t, phi)_K = (u, c . grad phi)_K - <phi, c.n u_upwind>_dK \\ dOmega - <phi, (c.n)+ u + (c.n)- u_in>_dOmega,
  with the element mass matrix inverted per element (block diagonal), volume integrals by a 7-point degree-5 rule,
  edge integrals by 3-point Gauss, the velocity evaluated exactly at the quadrature points (the official code
  interpolates it into P1 first); `step` is one SSPRK3 step with the velocity frozen at the step's start time (as
  the official `solve_u(t)`).
- `interpolate`, `evaluate` (the field at arbitrary points), `project` (the exact L2 projection onto another mesh
  through the supermesh of the two, `common.supermesh`: conservative, as Firedrake's cross-mesh projection),
  `l2_error` against a
  callable by (sub-divided) quadrature, `total_mass`, `to_p1` (vertex values by area-weighted averaging, the lumped
  L2 projection onto continuous P1).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from lit_models.common import mesh as M

LOCAL_EDGES = np.array([[0, 1], [1, 2], [2, 0]])  # local edge k joins local vertices k and k + 1


@lru_cache(maxsize=8)
def triangle_rule(refine: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(barycentric points (Q, 3), weights (Q,) summing to 1) of the 7-point degree-5 rule (Radon / Dunavant),
    applied on each of the refine^2 sub-triangles of the uniform refinement when refine > 1 (composite rule, for
    integrands that are not resolved by the mesh)."""
    r15 = np.sqrt(15.0)
    a1, b1, a2, b2 = (9 - 2 * r15) / 21, (6 + r15) / 21, (9 + 2 * r15) / 21, (6 - r15) / 21
    w1, w2 = (155 + r15) / 1200, (155 - r15) / 1200
    pts = np.array([[1 / 3, 1 / 3, 1 / 3], [a1, b1, b1], [b1, a1, b1], [b1, b1, a1], [a2, b2, b2], [b2, a2, b2],
                    [b2, b2, a2]])
    w = np.array([0.225, w1, w1, w1, w2, w2, w2])
    if refine == 1:
        return pts, w
    subs = []  # sub-triangles as barycentric vertex triples, in lattice units (i, j) of lambda_1, lambda_2
    for i in range(refine):
        for j in range(refine - i):
            subs.append([(i, j), (i + 1, j), (i, j + 1)])
            if i + j < refine - 1:
                subs.append([(i + 1, j), (i + 1, j + 1), (i, j + 1)])
    out = []
    for sub in subs:
        verts = np.array([[1 - (i + j) / refine, i / refine, j / refine] for i, j in sub])  # (3, 3)
        out.append(pts @ verts)
    return np.concatenate(out), np.tile(w, len(subs)) / len(subs)


EDGE_S = np.array([0.5 - np.sqrt(15.0) / 10, 0.5, 0.5 + np.sqrt(15.0) / 10])  # 3-point Gauss on [0, 1]
EDGE_W = np.array([5.0, 8.0, 5.0]) / 18.0


def quadrature_points(pos: np.ndarray, tri: np.ndarray, refine: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (T, Q, 2), weights (T, Q) including |area|, barycentric basis values (Q, 3)) of `triangle_rule`."""
    bary, w = triangle_rule(refine)
    pts = np.einsum("qk,tkd->tqd", bary, pos[tri])
    return pts, np.abs(M.signed_areas(pos, tri))[:, None] * w[None], bary


def apply_inverse_mass(r: np.ndarray, area: np.ndarray) -> np.ndarray:
    """M_K^{-1} r per element: M_K = |K| / 12 (I + ones), so M_K^{-1} = 3 / |K| (4 I - ones)."""
    return (3.0 / area)[:, None] * (4.0 * r - r.sum(1, keepdims=True))


class Facets:
    """Facet topology of a conforming triangle mesh (fixed under mesh movement): interior facets as (element,
    local edge) of their two sides, boundary facets as (element, local edge)."""

    def __init__(self, tri: np.ndarray) -> None:
        self.tri = np.asarray(tri, np.int64)
        n = len(self.tri)
        key = np.sort(self.tri[:, LOCAL_EDGES].reshape(-1, 2), axis=1)
        _, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        if cnt.max() > 2:
            raise ValueError("non-manifold mesh: an edge is shared by more than two triangles")
        order = np.argsort(inv, kind="stable")
        start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        plus, minus = order[start[cnt == 2]], order[start[cnt == 2] + 1]
        bnd = order[start[cnt == 1]]
        self.plus_elem, self.plus_edge = plus // 3, plus % 3
        self.minus_elem, self.minus_edge = minus // 3, minus % 3
        self.bnd_elem, self.bnd_edge = bnd // 3, bnd % 3
        self.n_elements = n


def _edge_geometry(pos: np.ndarray, tri: np.ndarray, elem: np.ndarray, edge: np.ndarray):
    """Quadrature points (F, G, 2) and the length-weighted outward normal (F, 2) of the edges (elem, local edge)
    (edge from local vertex k to k + 1; outward for a counter-clockwise triangle)."""
    a = pos[tri[elem, LOCAL_EDGES[edge, 0]]]
    b = pos[tri[elem, LOCAL_EDGES[edge, 1]]]
    pts = a[:, None] * (1 - EDGE_S)[None, :, None] + b[:, None] * EDGE_S[None, :, None]
    d = b - a
    return pts, np.stack([d[:, 1], -d[:, 0]], 1)


class DG1Advection:
    """DG1 upwind discretisation of u_t + div(c u) = 0 on one mesh (see the module docstring) and its SSPRK3 step;
    `velocity(points (..., 2), t) -> (..., 2)`, `u_in` the inflow value where c.n < 0."""

    def __init__(self, pos: np.ndarray, tri: np.ndarray, velocity: Callable[[np.ndarray, float], np.ndarray],
                 facets: Facets | None = None, u_in: float = 0.0) -> None:
        self.pos, self.tri = np.asarray(pos, np.float64), np.asarray(tri, np.int64)
        self.facets = facets if facets is not None else Facets(self.tri)
        self.velocity, self.u_in = velocity, float(u_in)
        signed = M.signed_areas(self.pos, self.tri)
        self.area = np.abs(signed)
        p = self.pos[self.tri]
        e = np.stack([p[:, 2] - p[:, 1], p[:, 0] - p[:, 2], p[:, 1] - p[:, 0]], 1)  # edge opposite vertex k
        self.grad_phi = np.stack([-e[..., 1], e[..., 0]], -1) / (2 * signed[:, None, None])  # (T, 3, 2)
        self.qpts, self.qw, self.basis = quadrature_points(self.pos, self.tri)
        f = self.facets
        self.int_pts, self.int_n = _edge_geometry(self.pos, self.tri, f.plus_elem, f.plus_edge)
        self.bnd_pts, self.bnd_n = _edge_geometry(self.pos, self.tri, f.bnd_elem, f.bnd_edge)
        T = len(self.tri)
        # dof ids (element * 3 + local vertex) of each edge's start / end vertex, per side; the minus side runs the
        # shared edge backwards (its start vertex is the plus side's end vertex)
        self._p_a, self._p_b = (3 * f.plus_elem + LOCAL_EDGES[f.plus_edge, k] for k in (0, 1))
        self._m_a, self._m_b = (3 * f.minus_elem + LOCAL_EDGES[f.minus_edge, k] for k in (0, 1))
        self._b_a, self._b_b = (3 * f.bnd_elem + LOCAL_EDGES[f.bnd_edge, k] for k in (0, 1))
        self._n_dofs = 3 * T

    def velocities(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """c at the volume and edge quadrature points at time t: (T, Q, 2), c.n |e| interior (Fi, G), boundary (Fb, G)."""
        cq = self.velocity(self.qpts, t)
        cn_int = np.einsum("fgd,fd->fg", self.velocity(self.int_pts, t), self.int_n)
        cn_bnd = np.einsum("fgd,fd->fg", self.velocity(self.bnd_pts, t), self.bnd_n)
        return cq, cn_int, cn_bnd

    def rhs(self, u: np.ndarray, vel: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """du/dt (T, 3) for the DG1 field u (T, 3) and the velocities of `velocities(t)`."""
        cq, cn_int, cn_bnd = vel
        flat = u.ravel()
        s, w = EDGE_S[None], EDGE_W[None]
        cu = np.einsum("tq,tqd->td", self.qw * (u @ self.basis.T), cq)  # int_K u c
        r = np.einsum("tkd,td->tk", self.grad_phi, cu).ravel()
        up = flat[self._p_a][:, None] * (1 - s) + flat[self._p_b][:, None] * s
        um = flat[self._m_b][:, None] * (1 - s) + flat[self._m_a][:, None] * s
        flux = w * cn_int * np.where(cn_int > 0, up, um)  # upwind c.n u, n from plus to minus
        fa, fb = np.sum(flux * (1 - s), 1), np.sum(flux * s, 1)
        ub = flat[self._b_a][:, None] * (1 - s) + flat[self._b_b][:, None] * s
        bflux = w * (np.maximum(cn_bnd, 0.0) * ub + np.minimum(cn_bnd, 0.0) * self.u_in)
        ba, bb = np.sum(bflux * (1 - s), 1), np.sum(bflux * s, 1)
        idx = np.concatenate([self._p_a, self._p_b, self._m_b, self._m_a, self._b_a, self._b_b])
        val = np.concatenate([-fa, -fb, fa, fb, -ba, -bb])
        r = r + np.bincount(idx, weights=val, minlength=self._n_dofs)
        return apply_inverse_mass(r.reshape(-1, 3), self.area)

    def step(self, u: np.ndarray, t: float, dt: float) -> np.ndarray:
        """One SSPRK3 (Shu-Osher) step from t to t + dt, velocity frozen at t."""
        vel = self.velocities(t)
        u1 = u + dt * self.rhs(u, vel)
        u2 = 0.75 * u + 0.25 * (u1 + dt * self.rhs(u1, vel))
        return u / 3.0 + (2.0 / 3.0) * (u2 + dt * self.rhs(u2, vel))

    def max_dt(self, t: float, cfl: float = 0.3) -> float:
        """A stable step estimate cfl * min inradius / max |c| (DG1 + SSPRK3 is stable up to about 1/3)."""
        speed = float(np.linalg.norm(self.velocity(self.qpts, t), axis=-1).max())
        inradius = 2 * self.area / np.sum(np.linalg.norm(self.pos[self.tri] - self.pos[np.roll(self.tri, 1, 1)],
                                                         axis=-1), 1)
        return cfl * float(inradius.min()) / max(speed, 1e-300)


def interpolate(pos: np.ndarray, tri: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The DG1 interpolant (T, 3) of f: f at each triangle's vertices (the official `Function.interpolate`)."""
    return np.asarray(f(np.asarray(pos, np.float64)), np.float64)[tri]


def locate(pos: np.ndarray, tri: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(triangle (P,), barycentric coordinates (P, 3)) of each point: matplotlib's TriFinder on a valid mesh, the
    brute-force `mesh.locate` for tangled meshes and points it misses (outside by round-off)."""
    import matplotlib.tri as mtri

    pos = np.asarray(pos, np.float64)
    tids = np.full(len(points), -1, np.int64)
    if M.count_inverted(pos, tri) == 0:
        try:
            tids = np.asarray(mtri.Triangulation(pos[:, 0], pos[:, 1], tri).get_trifinder()(points[:, 0],
                                                                                            points[:, 1]), np.int64)
        except (ValueError, RuntimeError):  # matplotlib rejects some degenerate triangulations
            pass
    bary = np.empty((len(points), 3))
    ok = tids >= 0
    if ok.any():
        p = pos[tri[tids[ok]]]
        d = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
        dx, dy = points[ok, 0] - p[:, 0, 0], points[ok, 1] - p[:, 0, 1]
        l1 = (dx * (p[:, 2, 1] - p[:, 0, 1]) - dy * (p[:, 2, 0] - p[:, 0, 0])) / d
        l2 = (dy * (p[:, 1, 0] - p[:, 0, 0]) - dx * (p[:, 1, 1] - p[:, 0, 1])) / d
        bary[ok] = np.stack([1 - l1 - l2, l1, l2], 1)
    if (~ok).any():
        tids[~ok], bary[~ok] = M.locate(pos, tri, points[~ok])
    return tids, bary


def evaluate(pos: np.ndarray, tri: np.ndarray, u: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The DG1 field u (T, 3) at `points` (P, 2) (on an edge: the value from whichever side holds the point)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    tids, bary = locate(pos, tri, points)
    return np.sum(u[tids] * bary, 1)


def project(src_pos: np.ndarray, src_tri: np.ndarray, u: np.ndarray, dst_pos: np.ndarray,
            dst_tri: np.ndarray | None = None) -> np.ndarray:
    """L2 projection of the DG1 field u on (src_pos, src_tri) onto DG1 on (dst_pos, dst_tri) (default: the same
    connectivity, e.g. a moved mesh): exact and conservative, by the supermesh of the two meshes
    (`common.supermesh`, as Firedrake's cross-mesh `project`); the same mesh gives u back."""
    from lit_models.common.supermesh import supermesh_load

    dst_tri = src_tri if dst_tri is None else dst_tri
    if dst_tri is src_tri and np.array_equal(src_pos, dst_pos):
        return np.array(u, np.float64, copy=True)
    area = np.abs(M.signed_areas(np.asarray(dst_pos, np.float64), dst_tri))
    return apply_inverse_mass(supermesh_load(src_pos, src_tri, u, dst_pos, dst_tri), area)


def l2_error(pos: np.ndarray, tri: np.ndarray, u: np.ndarray, exact: Callable[[np.ndarray], np.ndarray],
             refine: int = 2) -> float:
    """||u - exact||_L2 over the mesh by the composite degree-5 rule on refine^2 sub-triangles per triangle."""
    pts, w, basis = quadrature_points(pos, tri, refine)
    err = u @ basis.T - np.asarray(exact(pts.reshape(-1, 2)), np.float64).reshape(pts.shape[:2])
    return float(np.sqrt(np.sum(w * err**2)))


def total_mass(pos: np.ndarray, tri: np.ndarray, u: np.ndarray) -> float:
    """int u dx = sum_K |K| mean(u at the vertices of K) (exact for DG1)."""
    return float(np.sum(np.abs(M.signed_areas(pos, tri)) * u.mean(1)))


def to_p1(pos: np.ndarray, tri: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Vertex values (V,) of the DG1 field: the area-weighted average of the values of the triangles around each
    vertex (the lumped-mass L2 projection onto continuous P1)."""
    area = np.repeat(np.abs(M.signed_areas(pos, tri)), 3)
    num = np.bincount(tri.ravel(), weights=area * u.ravel(), minlength=len(pos))
    return num / np.bincount(tri.ravel(), weights=area, minlength=len(pos))
