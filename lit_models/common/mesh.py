"""Shared mesh pieces of the mesh-movement papers (`data_free_mesh_mover`, `um2n`).

- `unit_square_mesh(n)`: the structured triangulation of [0, 1]^2 with n x n nodes (2 (n-1)^2 counter-clockwise
  triangles, each cell split along its SW-NE diagonal), its mesh edges and a boundary description.
- `unstructured_square_mesh(n, seed)`: an unstructured Delaunay triangulation of [0, 1]^2 with the same boundary
  spacing (Poisson-disc interior nodes), counter-clockwise, deterministic by seed; `triangle_angles` for its quality.
- `signed_areas(pos, tri)` (numpy or torch) and `count_inverted`: element orientation / tangling check.
- `interpolation_error(pos, tri, f, points)`: RMS error of the piecewise-linear interpolant of f (nodal values on the
  mesh `pos`) against f at query points (point location by barycentric coordinates, exact for any valid mesh).
- `equidistribute_1d(m, xi)`: 1-D equidistribution x = F^{-1}(xi), F(s) = int_0^s m / int_0^1 m (trapezoid on a fine
  grid + linear inversion). For a separable monitor m(x, y) = m1(x) m2(y) the Monge-Ampere (optimal-transport) mesh
  map is (F1^{-1}(xi), F2^{-1}(eta)) exactly; `equidistributed_mesh` applies it to a mesh.
- Monitor functions: the front field u = tanh(k(n.x - c)) + a sin(2 pi y) with its exact gradient,
  `gradient_monitor` m = 1 + |g| / (scale * mean|g|) (the DMM monitor with scale = 0.01 in the paper's code) and
  `bump_monitor_1d` m(s) = 1 + A sum_j exp(-(s - c_j)^2 / (2 w_j^2)) (the UM2N offline separable family).
- `ma_relaxation_mesh`: a finite-difference parabolic Monge-Ampere relaxation on the uniform grid (the classical
  solver a learned mover replaces; used by the speed benchmark for non-separable monitors).
- Swirl advection (UM2N's zero-shot test case): the official swirl velocity (reversing at T/2), the ring initial
  condition, the exact solution by RK4 characteristics (`swirl_trace`, `swirl_solution`) and the official
  Hessian/gradient monitor with its screened-Poisson smoothing (`swirl_monitor_from_derivatives`, P1 assembly in
  `p1_stiffness_lumped_mass`, `screened_poisson_smooth`), from the exact solution (`swirl_monitor`) or from the
  nodal values of a numerical one (`swirl_monitor_from_field`, derivatives by `recover_gradient`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


# ------------------------------------------------------------------------------------------------ triangulations
def unit_square_mesh(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pos (V, 2), tri (T, 3)) of the structured triangulation with `n_nodes` nodes per side (the cards' "20x20
    mesh" = 20 x 20 nodes, 19 x 19 cells, cell width h = 1 / (n_nodes - 1)); node id = j * n_nodes + i for
    x = i h, y = j h. Triangles are counter-clockwise (positive signed area)."""
    if n_nodes < 2:
        raise ValueError(f"a mesh needs >= 2 nodes per side, got {n_nodes}")
    n = n_nodes - 1
    s = np.linspace(0.0, 1.0, n + 1)
    xx, yy = np.meshgrid(s, s)  # row j = y index
    pos = np.stack([xx.ravel(), yy.ravel()], axis=1)
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    a = (j * (n + 1) + i).ravel()
    b, c, d = a + 1, a + n + 2, a + n + 1  # SE, NE, NW corners of the cell whose SW corner is a
    tri = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return pos, tri.astype(np.int64)


def square_boundary_nodes(n_nodes: int) -> np.ndarray:
    """The 4 (n_nodes - 1) boundary nodes of the unit square, spacing 1 / (n_nodes - 1) on every edge, listed
    counter-clockwise from the corner (0, 0); coordinates on an edge are exactly 0 or 1 (what `boundary_masks`
    tests)."""
    s = np.linspace(0.0, 1.0, n_nodes)[:-1]
    zero, one = np.zeros_like(s), np.ones_like(s)
    return np.concatenate([np.stack([s, zero], 1), np.stack([one, s], 1), np.stack([1 - s, one], 1),
                           np.stack([zero, 1 - s], 1)])


def poisson_disc_interior(radius: float, fixed: np.ndarray, rng: np.random.Generator, tries: int = 30) -> np.ndarray:
    """Interior points of the open unit square at mutual distance >= `radius` and >= `radius` from the `fixed`
    points (Bridson's dart throwing from an active list: `tries` candidates in the annulus [r, 2r] around a random
    active point, the first far enough from every point is kept, a point without one retires). A background grid of
    cell r / sqrt(2) holds at most one point; candidates (<= 2r from the active point) are checked at once against
    the points of the 11 x 11 cells around it (>= 5 cells = 3.5r > 3r each way). Deterministic given `rng`."""
    cell = radius / np.sqrt(2.0)
    n = int(np.ceil(1.0 / cell))
    grid = -np.ones((n + 10, n + 10), np.int64)  # padded by 5 cells: windows never leave the array
    pts = np.empty((len(fixed) + 4 * n * n, 2))

    def add(p: np.ndarray, k: int) -> None:
        pts[k] = p
        grid[min(int(p[0] / cell), n - 1) + 5, min(int(p[1] / cell), n - 1) + 5] = k

    for k, p in enumerate(fixed):
        add(np.asarray(p, np.float64), k)  # fixed points at spacing >= r / sqrt(2) never share a cell
    count = len(fixed)
    active = list(range(count))
    while active:
        a = active.pop(int(rng.integers(len(active))))
        rho = radius * np.sqrt(rng.uniform(1.0, 4.0, tries))
        phi = rng.uniform(0.0, 2 * np.pi, tries)
        cand = pts[a] + np.stack([rho * np.cos(phi), rho * np.sin(phi)], 1)
        i, j = min(int(pts[a, 0] / cell), n - 1) + 5, min(int(pts[a, 1] / cell), n - 1) + 5
        near = grid[i - 5:i + 6, j - 5:j + 6]
        near = pts[near[near >= 0]]
        ok = np.all((cand > 0.0) & (cand < 1.0), 1)
        ok &= np.all(np.sum((cand[:, None] - near[None]) ** 2, -1) >= radius**2, 1)
        if ok.any():
            add(cand[np.argmax(ok)], count)
            active += [a, count]
            count += 1
    return pts[len(fixed):count].copy()


def unstructured_square_mesh(n_nodes: int, seed: int = 0, radius: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(pos (V, 2), tri (T, 3)) of an unstructured Delaunay triangulation of [0, 1]^2 (the paper trains on
    unstructured gmsh meshes, Sec. 4.1): `n_nodes` equally spaced nodes per edge (h = 1 / (n_nodes - 1), as
    `unit_square_mesh`), interior nodes by Poisson-disc sampling at distance radius * h (0.8 gives about n_nodes^2
    nodes, the structured mesh's count), `scipy.spatial.Delaunay`, triangles counter-clockwise. Boundary nodes come
    first (counter-clockwise from (0, 0)); `boundary_masks` and `mesh_edges` apply unchanged. Deterministic by
    `seed`."""
    from scipy.spatial import Delaunay

    if n_nodes < 3:
        raise ValueError(f"an unstructured mesh needs >= 3 nodes per side, got {n_nodes}")
    if not 0.0 < radius <= 1.0:  # boundary nodes, h apart, must themselves satisfy the Poisson-disc spacing
        raise ValueError(f"radius must be in (0, 1] cell widths (the boundary spacing), got {radius}")
    bd = square_boundary_nodes(n_nodes)
    pos = np.concatenate([bd, poisson_disc_interior(radius * cell_size(n_nodes), bd, np.random.default_rng(seed))])
    tri = Delaunay(pos).simplices.astype(np.int64)
    a = signed_areas(pos, tri)
    tri = tri[np.abs(a) > 1e-12 * cell_size(n_nodes) ** 2]  # qhull may add flat triangles on collinear edges
    flip = signed_areas(pos, tri) < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return pos, tri


def triangle_angles(pos: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Interior angles (T, 3) in degrees (mesh quality: Delaunay maximises the minimum angle)."""
    p = pos[tri]
    out = np.empty(tri.shape)
    for k in range(3):
        u, v = p[:, (k + 1) % 3] - p[:, k], p[:, (k + 2) % 3] - p[:, k]
        cos = np.sum(u * v, 1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
        out[:, k] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out


def mesh_edges(tri: np.ndarray) -> np.ndarray:
    """Undirected mesh edges (E, 2), each once, from the triangles."""
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def boundary_edges(tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The boundary edges of a conforming triangle mesh (those of one triangle only): their owner triangles (E,) and
    vertex pairs (E, 2) directed as in the owner (a -> b along its local edge; the outward normal of a
    counter-clockwise owner is on the right), ordered by the sorted vertex pair."""
    tri = np.asarray(tri)
    directed = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    owner = np.tile(np.arange(len(tri)), 3)
    _, first, counts = np.unique(np.sort(directed, 1), axis=0, return_index=True, return_counts=True)
    once = first[counts == 1]
    return owner[once], directed[once]


def boundary_masks(pos: np.ndarray, tol: float = 1e-12) -> dict[str, np.ndarray]:
    """Boolean node masks of the unit square's boundary: x0, x1 (x = 0, 1), y0, y1, any, corner."""
    x0, x1 = np.abs(pos[:, 0]) < tol, np.abs(pos[:, 0] - 1) < tol
    y0, y1 = np.abs(pos[:, 1]) < tol, np.abs(pos[:, 1] - 1) < tol
    onx, ony = x0 | x1, y0 | y1
    return {"x0": x0, "x1": x1, "y0": y0, "y1": y1, "x_fixed": onx, "y_fixed": ony, "any": onx | ony,
            "corner": onx & ony}


def cell_size(n_nodes: int) -> float:
    """Cell width 1 / (n_nodes - 1) of `unit_square_mesh(n_nodes)`."""
    return 1.0 / (n_nodes - 1)


# ------------------------------------------------------------------------------------------------- element checks
def signed_areas(pos, tri):
    """Signed triangle areas (T,) (numpy or torch, batched over leading dims of pos); > 0 for counter-clockwise."""
    p0, p1, p2 = pos[..., tri[:, 0], :], pos[..., tri[:, 1], :], pos[..., tri[:, 2], :]
    return 0.5 * ((p1[..., 0] - p0[..., 0]) * (p2[..., 1] - p0[..., 1])
                  - (p1[..., 1] - p0[..., 1]) * (p2[..., 0] - p0[..., 0]))


def count_inverted(pos, tri, tol: float = 0.0) -> int:
    """Number of tangled (inverted or degenerate) elements: signed area <= tol."""
    a = signed_areas(pos, tri)
    if isinstance(a, Tensor):
        return int((a <= tol).sum())
    return int(np.sum(a <= tol))


def boundary_violation(pos: np.ndarray, ref: np.ndarray) -> float:
    """Largest normal displacement of boundary nodes off their edge (0 for an admissible moved mesh)."""
    m = boundary_masks(ref)
    out = 0.0
    for key, col, val in (("x0", 0, 0.0), ("x1", 0, 1.0), ("y0", 1, 0.0), ("y1", 1, 1.0)):
        if m[key].any():
            out = max(out, float(np.abs(pos[m[key], col] - val).max()))
    return out


# ----------------------------------------------------------------------------------------- interpolation error
def locate(pos: np.ndarray, tri: np.ndarray, points: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Containing triangle (P,) and barycentric coordinates (P, 3) of each point (brute force, chunked). A point
    covered by no triangle (only possible on a tangled mesh) takes the triangle with the largest min-barycentric.
    Chunks of `chunk` points into preallocated (chunk, T) buffers: the working arrays stay in cache (the values are
    those of the whole-array expressions, operation for operation)."""
    p0, p1, p2 = pos[tri[:, 0]], pos[tri[:, 1]], pos[tri[:, 2]]
    det = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    det = np.where(np.abs(det) < 1e-300, 1e-300, det)
    e2y, e2x = p2[:, 1] - p0[:, 1], p2[:, 0] - p0[:, 0]
    e1x, e1y = p1[:, 0] - p0[:, 0], p1[:, 1] - p0[:, 1]
    n, chunk = len(points), max(1, int(chunk))
    tids, bary = np.empty(n, np.int64), np.empty((n, 3))
    dx, dy, l0, l1, l2, tmp = (np.empty((min(chunk, n), len(tri))) for _ in range(6))
    for s in range(0, n, chunk):
        q = points[s:s + chunk]
        m = len(q)
        DX, DY, L0, L1, L2, TMP = dx[:m], dy[:m], l0[:m], l1[:m], l2[:m], tmp[:m]
        np.subtract(q[:, None, 0], p0[None, :, 0], out=DX)
        np.subtract(q[:, None, 1], p0[None, :, 1], out=DY)
        np.multiply(DX, e2y, out=L1)  # l1 = (dx e2y - dy e2x) / det
        np.divide(np.subtract(L1, np.multiply(DY, e2x, out=TMP), out=L1), det, out=L1)
        np.multiply(DY, e1x, out=L2)  # l2 = (dy e1x - dx e1y) / det
        np.divide(np.subtract(L2, np.multiply(DX, e1y, out=TMP), out=L2), det, out=L2)
        np.subtract(np.subtract(1.0, L1, out=L0), L2, out=L0)  # l0 = 1 - l1 - l2
        t = np.argmax(np.minimum(np.minimum(L0, L1, out=TMP), L2, out=TMP), axis=1)
        r = np.arange(m)
        tids[s:s + m] = t
        bary[s:s + m] = np.stack([L0[r, t], L1[r, t], L2[r, t]], 1)
    return tids, bary


def interpolate_p1(pos: np.ndarray, tri: np.ndarray, values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolant of nodal `values` evaluated at `points` (matplotlib's trapezoid-map point
    location on a valid mesh; brute-force barycentric location on a tangled one or for points it misses)."""
    pos = np.asarray(pos, np.float64)
    values = np.asarray(values, np.float64)
    out = np.full(len(points), np.nan)
    if count_inverted(pos, tri) == 0:
        try:
            import matplotlib.tri as mtri

            tr = mtri.Triangulation(pos[:, 0], pos[:, 1], tri)
            out = np.ma.filled(mtri.LinearTriInterpolator(tr, values)(points[:, 0], points[:, 1]), np.nan)
        except (ValueError, RuntimeError):  # matplotlib rejects some degenerate triangulations
            out = np.full(len(points), np.nan)
    miss = ~np.isfinite(out)
    if miss.any():
        t, b = locate(pos, tri, points[miss])
        out[miss] = np.sum(values[tri[t]] * b, axis=1)
    return out


def interpolation_error(pos: np.ndarray, tri: np.ndarray, f: Callable[[np.ndarray], np.ndarray],
                        points: np.ndarray) -> float:
    """RMS over `points` of f - I_h f, I_h the P1 interpolant of f's nodal values on the mesh `pos`."""
    pos = np.asarray(pos, np.float64)
    err = f(points) - interpolate_p1(pos, tri, f(pos), points)
    return float(np.sqrt(np.mean(err**2)))


def random_points(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 2))


# ----------------------------------------------------------------------------------------------- equidistribution
def equidistribute_1d(m: Callable[[np.ndarray], np.ndarray] | np.ndarray, xi: np.ndarray,
                      n_fine: int = 4001) -> np.ndarray:
    """x = F^{-1}(xi) with F(s) = int_0^s m / int_0^1 m; m a callable on [0, 1] or its values on n_fine points."""
    s = np.linspace(0.0, 1.0, n_fine)
    mv = np.asarray(m(s) if callable(m) else m, np.float64)
    if mv.shape != s.shape:
        raise ValueError(f"monitor values must have shape ({n_fine},), got {mv.shape}")
    if np.any(mv <= 0):
        raise ValueError("monitor must be positive")
    F = np.concatenate([[0.0], np.cumsum(0.5 * (mv[1:] + mv[:-1]) * np.diff(s))])
    F /= F[-1]
    return np.interp(np.asarray(xi, np.float64), F, s)


def equidistributed_mesh(ref: np.ndarray, m1: Callable | np.ndarray | None,
                         m2: Callable | np.ndarray | None = None, n_fine: int = 4001) -> np.ndarray:
    """Exact MA mesh of a separable monitor m1(x) m2(y) (None = constant factor): node-wise 1-D equidistribution."""
    out = np.array(ref, np.float64, copy=True)
    if m1 is not None:
        out[:, 0] = equidistribute_1d(m1, ref[:, 0], n_fine)
    if m2 is not None:
        out[:, 1] = equidistribute_1d(m2, ref[:, 1], n_fine)
    return out


# ------------------------------------------------------------------------------------------------------ monitors
def front_field(p, k: float, c: float, angle: float = 0.0, amp: float = 0.3):
    """u = tanh(k (n.x - c)) + amp sin(2 pi y), n = (cos angle, sin angle); p (..., 2), numpy or torch."""
    lib = torch if isinstance(p, Tensor) else np
    s = np.cos(angle) * p[..., 0] + np.sin(angle) * p[..., 1] - c
    return lib.tanh(k * s) + amp * lib.sin(2 * np.pi * p[..., 1])


def front_gradient(p, k: float, c: float, angle: float = 0.0, amp: float = 0.3):
    """Exact gradient of `front_field` (..., 2)."""
    lib = torch if isinstance(p, Tensor) else np
    s = np.cos(angle) * p[..., 0] + np.sin(angle) * p[..., 1] - c
    g = k / lib.cosh(k * s) ** 2
    gx = np.cos(angle) * g
    gy = np.sin(angle) * g + amp * 2 * np.pi * lib.cos(2 * np.pi * p[..., 1])
    return lib.stack([gx, gy], -1)


def gradient_monitor(grad_norm: np.ndarray, scale: float = 1.0, mean: float | None = None) -> np.ndarray:
    """m = 1 + |g| / (scale * alpha), alpha = mean |g| over the domain (pass `mean` when |g| is not a uniform sample).
    scale = 0.01 is the DMM code's choice; the card's calibrated offline check uses scale = 1."""
    alpha = float(np.mean(grad_norm)) if mean is None else float(mean)
    return 1.0 + grad_norm / (scale * max(alpha, 1e-12))


def bump_monitor_1d(s: np.ndarray, amplitude: float, centres, widths) -> np.ndarray:
    """m(s) = 1 + A sum_j exp(-(s - c_j)^2 / (2 w_j^2)) (UM2N offline separable monitor family)."""
    s = np.asarray(s, np.float64)
    out = np.zeros_like(s)
    for c, w in zip(centres, widths):
        out += np.exp(-((s - c) ** 2) / (2 * w**2))
    return 1.0 + amplitude * out


def front_monitor_1d(k: float, c: float) -> Callable[[np.ndarray], np.ndarray]:
    """m(x) = 1 + |u_x| / mean|u_x| for u = tanh(k(x - c)) (+ any function of y): the card's calibrated monitor."""
    s = np.linspace(0.0, 1.0, 4001)
    ux = k / np.cosh(k * (s - c)) ** 2
    mean = float(np.trapezoid(ux, s)) if hasattr(np, "trapezoid") else float(np.trapz(ux, s))

    def m(x: np.ndarray) -> np.ndarray:
        return 1.0 + (k / np.cosh(k * (np.asarray(x) - c)) ** 2) / mean

    return m


# ------------------------------------------------------------------------------- classical MA solver (baseline)
def ma_relaxation_mesh(monitor: Callable[[np.ndarray], np.ndarray], n_nodes: int, steps: int = 2000,
                       cfl: float = 0.5, gamma: float = 0.1, tol: float = 1e-5) -> tuple[np.ndarray, int]:
    """Finite-difference parabolic Monge-Ampere relaxation (in the spirit of Budd & Williams 2006) on the uniform
    n_nodes x n_nodes grid: x = xi + grad phi, and
        (I - gamma Delta) phi_t = m(x) det(I + Hess phi) / c - 1,   c = mean of m over the unit square,
    with phi_n = 0 on the boundary (even reflection, so boundary nodes slide along their edge), central differences,
    explicit steps preconditioned by (I - gamma Delta)^{-1} through a type-I DCT, step dt = cfl gamma c / max m
    (the preconditioned linearisation has eigenvalues down to -(m/c)/gamma). The steady state is the MA
    equidistribution equation the learned movers approximate. Returns the moved nodes in `unit_square_mesh` order
    and the number of steps taken (stops when max |dt * update| < tol)."""
    from scipy.fft import dctn, idctn

    n = n_nodes - 1
    h = 1.0 / n
    s = np.linspace(0, 1, n + 1)
    X, Y = np.meshgrid(s, s)  # [j, i]
    xi = np.stack([X, Y], -1)
    k = np.arange(n + 1)
    lam = (2 * np.cos(np.pi * k / n) - 2) / h**2
    inv = 1.0 / (1.0 - gamma * (lam[:, None] + lam[None, :]))
    c = float(np.mean(monitor(np.random.default_rng(0).random((20000, 2)))))
    phi = np.zeros((n + 1, n + 1))
    dt = cfl * gamma * c / float(np.max(monitor(xi.reshape(-1, 2))))

    def moved(phi: np.ndarray):
        p = np.pad(phi, 1, mode="reflect")
        px = (p[1:-1, 2:] - p[1:-1, :-2]) / (2 * h)
        py = (p[2:, 1:-1] - p[:-2, 1:-1]) / (2 * h)
        return p, np.clip(xi + np.stack([px, py], -1), 0.0, 1.0)

    step = 0
    for step in range(1, steps + 1):
        p, x = moved(phi)
        pxx = (p[1:-1, 2:] - 2 * p[1:-1, 1:-1] + p[1:-1, :-2]) / h**2
        pyy = (p[2:, 1:-1] - 2 * p[1:-1, 1:-1] + p[:-2, 1:-1]) / h**2
        pxy = (p[2:, 2:] - p[2:, :-2] - p[:-2, 2:] + p[:-2, :-2]) / (4 * h * h)
        det = (1 + pxx) * (1 + pyy) - pxy**2
        r = monitor(x.reshape(-1, 2)).reshape(n + 1, n + 1) * det / c - 1.0
        upd = idctn(dctn(r, type=1) * inv, type=1)
        phi = phi + dt * upd
        if np.max(np.abs(dt * upd)) < tol:
            break
    return moved(phi)[1].reshape(-1, 2), step


# ------------------------------------------------------------------------------------- swirl advection (UM2N test)
# The UM2N swirl test case (official code mesh-adaptation/UM2N: `UM2N/generator/swirl_solver.py` get_c / get_u_0,
# `script/build_swirl.py`, `script/make_dataset_swirl.sh`): u_t + c . grad u = 0 on the unit square with
#   c(x, y, t) = a(t) alpha (sin^2(pi x) sin(2 pi y), -sin^2(pi y) sin(2 pi x)),  a = +1 for t < T/2, -1 after,
# (the swirl reverses at T/2, so u(., T) = u0) and the ring u0 = exp(-(|x - x0| - r0)^2 / (2 sigma^2)).
# The exact solution is u(x, t) = u0(X(0; x, t)), X the characteristic through (x, t), integrated here with RK4.
KIND_SWIRL = 3  # graph kind of swirl snapshots (datamodules.meshes builds them, lit_models.pde.um2n scores them)
KIND_CYLINDER = 4  # graph kind of the cylinder-flow test meshes (datamodules.meshes.cylinder_graph)


def swirl_velocity(p: np.ndarray, sign: float = 1.0, alpha: float = 1.5) -> np.ndarray:
    """The swirl field (..., 2) at points p (..., 2) with a(t) = `sign` (+1 before T/2, -1 after)."""
    sx, cx = np.sin(np.pi * p[..., 0]), np.cos(np.pi * p[..., 0])
    sy, cy = np.sin(np.pi * p[..., 1]), np.cos(np.pi * p[..., 1])
    k = sign * alpha
    return np.stack([k * sx * sx * (2 * sy * cy), -k * sy * sy * (2 * sx * cx)], -1)


def swirl_trace(p: np.ndarray, t_from: float, t_to: float, alpha: float = 1.5, T: float = 1.0,
                steps_per_unit: int = 500) -> np.ndarray:
    """Characteristic map: the position at time `t_to` of the particle at `p` (..., 2) at time `t_from` (forward or
    backward in time), classical RK4 with about `steps_per_unit` steps per unit time. The interval is split at the
    reversal time T/2, so each piece integrates an autonomous field (RK4 keeps its 4th order)."""
    x = np.array(p, np.float64, copy=True)
    half = 0.5 * T
    cuts = [t_from] + ([half] if min(t_from, t_to) < half < max(t_from, t_to) else []) + [t_to]
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b == a:
            continue
        sign = 1.0 if 0.5 * (a + b) < half else -1.0
        n = max(1, int(np.ceil(abs(b - a) * steps_per_unit)))
        h = (b - a) / n
        for _ in range(n):
            k1 = swirl_velocity(x, sign, alpha)
            k2 = swirl_velocity(x + 0.5 * h * k1, sign, alpha)
            k3 = swirl_velocity(x + 0.5 * h * k2, sign, alpha)
            k4 = swirl_velocity(x + h * k3, sign, alpha)
            x += (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def swirl_initial(p: np.ndarray, centre=(0.3, 0.3), radius: float = 0.2, sigma: float = 0.05 / 3) -> np.ndarray:
    """u0 = exp(-(|p - centre| - radius)^2 / (2 sigma^2)) (official `get_u_0`): a ring of width sigma."""
    r = np.hypot(p[..., 0] - centre[0], p[..., 1] - centre[1])
    return np.exp(-((r - radius) ** 2) / (2 * sigma**2))


def swirl_solution(p: np.ndarray, t: float, centre=(0.3, 0.3), radius: float = 0.2, sigma: float = 0.05 / 3,
                   alpha: float = 1.5, T: float = 1.0, steps_per_unit: int = 500) -> np.ndarray:
    """Exact swirl solution u(p, t) = u0(X(0; p, t)) by characteristics (RK4 backward in time)."""
    return swirl_initial(swirl_trace(p, t, 0.0, alpha, T, steps_per_unit), centre, radius, sigma)


def circumdiameters(pos: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """2 x circumradius (T,) of each triangle (Firedrake's CellSize, used by `mesh.cell_sizes`)."""
    p = pos[tri]
    a = np.linalg.norm(p[:, 1] - p[:, 2], axis=1)
    b = np.linalg.norm(p[:, 2] - p[:, 0], axis=1)
    c = np.linalg.norm(p[:, 0] - p[:, 1], axis=1)
    return a * b * c / (2.0 * np.abs(signed_areas(pos, tri)))


def p1_stiffness_lumped_mass(pos: np.ndarray, tri: np.ndarray):
    """P1 finite elements on a triangle mesh: the stiffness matrix (scipy CSR, V x V) and the lumped mass (V,)."""
    from scipy.sparse import coo_matrix

    p = pos[tri]
    area = np.abs(signed_areas(pos, tri))
    # gradients of the barycentric basis functions: grad l_k = rot90(edge opposite k) / (2 A)
    e = np.stack([p[:, 2] - p[:, 1], p[:, 0] - p[:, 2], p[:, 1] - p[:, 0]], 1)  # (T, 3, 2)
    s = np.sign(signed_areas(pos, tri))[:, None, None]
    g = s * np.stack([-e[..., 1], e[..., 0]], -1) / (2 * area[:, None, None])
    local = area[:, None, None] * np.einsum("tid,tjd->tij", g, g)
    rows, cols = np.repeat(tri, 3, axis=1), np.tile(tri, (1, 3))
    A = coo_matrix((local.ravel(), (rows.ravel(), cols.ravel())), shape=(len(pos), len(pos))).tocsr()
    mass = np.bincount(tri.ravel(), weights=np.repeat(area / 3.0, 3), minlength=len(pos))
    return A, mass


def screened_poisson_smooth(pos: np.ndarray, tri: np.ndarray, f: np.ndarray, k: float) -> np.ndarray:
    """s with (K grad s, grad v) + (s, v) = (f, v) for all P1 v vanishing on the boundary, s = f on the boundary (the
    official swirl monitor smoother, `SwirlSolver.monitor_function*`), with the lumped mass matrix: on meshes without
    obtuse angles (structured, Delaunay) the system is an M-matrix, so s >= 0 where f >= 0."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import spsolve

    A, mass = p1_stiffness_lumped_mass(pos, tri)
    Kmat = (k * A + diags(mass)).tocsr()
    bd = boundary_masks(pos)["any"]
    inner = ~bd
    rhs = mass * f - Kmat[:, bd] @ f[bd]
    out = np.array(f, np.float64, copy=True)
    out[inner] = spsolve(Kmat[inner][:, inner].tocsc(), rhs[inner])
    return out


def swirl_monitor(pos: np.ndarray, tri: np.ndarray, t: float, centre=(0.3, 0.3), radius: float = 0.2,
                  sigma: float = 0.05 / 3, alpha: float = 1.5, T: float = 1.0, grad_weight: float = 10.0,
                  hessian_weight: float = 5.0, n_smooth: float = 10.0, fd_step: float = 1e-4,
                  steps_per_unit: int = 500) -> np.ndarray:
    """The official swirl monitor (`swirl_monitor_from_derivatives`) of the exact solution at time t at the nodes
    `pos`; its derivatives are central differences of step `fd_step` (the official code recovers them from the DG
    solution by L2 projection: `swirl_monitor_from_field` does that for a numerical solution)."""
    kw = dict(centre=centre, radius=radius, sigma=sigma, alpha=alpha, T=T, steps_per_unit=steps_per_unit)
    h = fd_step
    offs = np.array([[0, 0], [h, 0], [-h, 0], [0, h], [0, -h], [h, h], [h, -h], [-h, h], [-h, -h]])
    u = swirl_solution(pos[None] + offs[:, None], t, **kw)  # (9, V)
    ux, uy = (u[1] - u[2]) / (2 * h), (u[3] - u[4]) / (2 * h)
    uxx, uyy = (u[1] - 2 * u[0] + u[2]) / h**2, (u[3] - 2 * u[0] + u[4]) / h**2
    uxy = (u[5] - u[6] - u[7] + u[8]) / (4 * h * h)
    return swirl_monitor_from_derivatives(pos, tri, ux**2 + uy**2, uxx**2 + 2 * uxy**2 + uyy**2, grad_weight,
                                          hessian_weight, n_smooth)


def swirl_monitor_from_derivatives(pos: np.ndarray, tri: np.ndarray, grad2: np.ndarray, hess2: np.ndarray,
                                   grad_weight: float = 10.0, hessian_weight: float = 5.0,
                                   n_smooth: float = 10.0) -> np.ndarray:
    """The official swirl monitor (`SwirlSolver.monitor_function_on_coarse_mesh`) from nodal |grad u|^2 and
    ||H(u)||_F^2:
        f = max(hessian_weight ||H||_F^2 / max ||H||_F^2, grad_weight |grad u|^2 / max |grad u|^2)
        m = 1 + s,  (K grad s, grad v) + (s, v) = (f, v), s = f on the boundary, K = n_smooth dx^2 / 4,
    dx the mean cell size (2 x circumradius)."""
    f = np.maximum(hessian_weight * hess2 / max(hess2.max(), 1e-300), grad_weight * grad2 / max(grad2.max(), 1e-300))
    dx = float(np.mean(circumdiameters(pos, tri)))
    s = screened_poisson_smooth(pos, tri, f, n_smooth * dx**2 / 4.0)
    return 1.0 + np.maximum(s, 0.0)


def recover_gradient(pos: np.ndarray, tri: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Nodal gradient (V, 2) of the P1 field with nodal values f: the area-weighted average of the (constant)
    element gradients around each node, i.e. the lumped-mass L2 projection of grad f_h onto continuous P1."""
    p = pos[tri]
    signed = signed_areas(pos, tri)
    e = np.stack([p[:, 2] - p[:, 1], p[:, 0] - p[:, 2], p[:, 1] - p[:, 0]], 1)  # edge opposite vertex k
    grad_l = np.stack([-e[..., 1], e[..., 0]], -1) / (2 * signed[:, None, None])
    g = np.einsum("tk,tkd->td", f[tri], grad_l)  # (T, 2)
    w = np.repeat(np.abs(signed), 3)
    den = np.bincount(tri.ravel(), weights=w, minlength=len(pos))
    return np.stack([np.bincount(tri.ravel(), weights=w * np.repeat(g[:, d], 3), minlength=len(pos)) / den
                     for d in range(2)], 1)


def swirl_monitor_from_field(pos: np.ndarray, tri: np.ndarray, u: np.ndarray, grad_weight: float = 10.0,
                             hessian_weight: float = 5.0, n_smooth: float = 10.0) -> np.ndarray:
    """The official swirl monitor (`swirl_monitor_from_derivatives`) of a numerical solution given by its nodal
    values u (V,) (e.g. `dg_advection.to_p1` of the DG solution): gradient and Hessian by repeated lumped L2
    recovery (`recover_gradient` of u, then of each gradient component; the official code recovers them by a mixed
    L2 projection), ||H||_F^2 = the sum of the four recovered entries squared (as the official code)."""
    g, hess2 = recovered_derivatives(pos, tri, u)
    return swirl_monitor_from_derivatives(pos, tri, np.sum(g**2, 1), hess2, grad_weight, hessian_weight, n_smooth)


def recovered_derivatives(pos: np.ndarray, tri: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodal gradient (V, 2) of the P1 field u by lumped L2 recovery (`recover_gradient`) and ||H||_F^2 (V,) of the
    Hessian recovered from it the same way (the sum of its four entries squared, as the official monitors)."""
    g = recover_gradient(pos, tri, u)
    hx, hy = recover_gradient(pos, tri, g[:, 0]), recover_gradient(pos, tri, g[:, 1])
    return g, np.sum(hx**2, 1) + np.sum(hy**2, 1)


def knn_index(src: Tensor, dst: Tensor, k: int, exclude_self: bool = False) -> Tensor:
    """(B, Pd, k) indices of the k nearest `src` points (B, Ps, 2) of every `dst` point (B, Pd, 2) (Euclidean, as
    sklearn NearestNeighbors / torch_cluster.knn_graph in the official code), in the inputs' floating dtype (float32
    for integer positions). exclude_self: src is dst, skip i. Shared by the DMM graph branch and MM-PDE."""
    dtype = torch.promote_types(src.dtype, dst.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float32
    d = torch.cdist(dst.to(dtype), src.to(dtype))
    if exclude_self:
        d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    return d.topk(k, dim=-1, largest=False).indices
