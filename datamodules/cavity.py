"""Steady 2-D lid-driven cavity: a reference solver (our own code) for the PIG `lid_driven_cavity` problem.

Problem: steady incompressible Navier-Stokes on [0, 1]^2,
    u u_x + v u_y + p_x - (1/Re) Δu = 0,   u v_x + v v_y + p_y - (1/Re) Δv = 0,   u_x + v_y = 0,
with the lid y = 1 moving at (u, v) = (U, 0) and no-slip (0, 0) on the other three walls.

Method: streamfunction-vorticity (u = ψ_y, v = -ψ_x, ω = v_x - u_y = -Δψ) on a uniform (n x n) node grid,
second-order central differences for Δψ = -ω and for the steady vorticity transport u ω_x + v ω_y = (1/Re) Δω,
ψ = 0 on the walls and Thom's wall vorticity (ω_wall = -2 ψ_adjacent / h² on the fixed walls, - 2 U / h more on the
lid). The nonlinear system in (ψ, ω) at the interior nodes is solved by Newton's method with an exact sparse Jacobian
(scipy.sparse.linalg.spsolve), starting from the Stokes solution (Re = 0, one linear solve) and continuing in Re when
Newton needs it; deterministic. Velocities from ψ by central differences in the interior, the wall values on the
walls (the lid's two corners get u = U: the lid includes its end points).

Pressure: from the momentum equations, p_x = f_x, p_y = f_y with f = -(u·∇)u + (1/Re)Δu on the interior nodes, solved
in the least-squares sense with central-difference gradients (mean zero). The lid corners are singular (p -> ±∞), so
p is approximate there; PIG's metric compares velocities only (p is plotted, not scored).

`cavity_reference` caches per process (a 129 x 129 solve takes ~1-2 s).
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

# Ghia, Ghia & Shin (1982), J. Comput. Phys. 48, 387-411, Re = 100 (their 129 x 129 grid; positions k / 128):
# Table I, u along the vertical centreline x = 0.5; Table II, v along the horizontal centreline y = 0.5.
GHIA_RE100_Y_K = (128, 125, 124, 123, 122, 109, 94, 79, 64, 58, 36, 22, 13, 9, 8, 7, 0)
GHIA_RE100_U = (1.0, 0.84123, 0.78871, 0.73722, 0.68717, 0.23151, 0.00332, -0.13641, -0.20581, -0.21090, -0.15662,
                -0.10150, -0.06434, -0.04775, -0.04192, -0.03717, 0.0)
GHIA_RE100_X_K = (128, 124, 123, 122, 121, 116, 110, 103, 64, 30, 29, 20, 12, 10, 9, 8, 0)
GHIA_RE100_V = (0.0, -0.05906, -0.07391, -0.08864, -0.10313, -0.16914, -0.22445, -0.24533, 0.05454, 0.17527, 0.17507,
                0.16077, 0.12317, 0.10890, 0.10091, 0.09233, 0.0)


def _d1(n: int, h: float) -> sp.csr_matrix:
    """1-D central first difference on n nodes (rows 0 and n-1 are unused: zero)."""
    main = np.zeros(n)
    up = np.full(n - 1, 1 / (2 * h))
    lo = np.full(n - 1, -1 / (2 * h))
    up[0] = 0.0
    lo[-1] = 0.0
    return sp.diags([lo, main, up], [-1, 0, 1], format="csr")


def _d2(n: int, h: float) -> sp.csr_matrix:
    """1-D central second difference on n nodes (rows 0 and n-1 zero)."""
    main = np.full(n, -2 / h**2)
    off = np.full(n - 1, 1 / h**2)
    main[[0, -1]] = 0.0
    up, lo = off.copy(), off.copy()
    up[0] = 0.0
    lo[-1] = 0.0
    return sp.diags([lo, main, up], [-1, 0, 1], format="csr")


class _Operators:
    """Full-grid sparse operators on arrays shaped (n, n) = [j (y), i (x)], flattened row-major (index j n + i)."""

    def __init__(self, n: int) -> None:
        self.n, self.h = n, 1.0 / (n - 1)
        eye = sp.identity(n, format="csr")
        self.dx = sp.kron(eye, _d1(n, self.h), format="csr")
        self.dy = sp.kron(_d1(n, self.h), eye, format="csr")
        self.lap = (sp.kron(eye, _d2(n, self.h)) + sp.kron(_d2(n, self.h), eye)).tocsr()
        jj, ii = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        interior = ((jj > 0) & (jj < n - 1) & (ii > 0) & (ii < n - 1)).reshape(-1)
        self.interior = np.flatnonzero(interior)
        m = self.interior.size
        # P: interior unknowns -> full grid (zeros on the walls); R = P^T restricts to the interior rows
        self.P = sp.csr_matrix((np.ones(m), (self.interior, np.arange(m))), shape=(n * n, m))
        self.R = self.P.T.tocsr()
        # Thom's wall vorticity, linear in the interior ψ: ω_wall = -2 ψ_adjacent / h² (+ lid term, in `lid`)
        rows, cols = [], []
        full_to_int = -np.ones(n * n, dtype=int)
        full_to_int[self.interior] = np.arange(m)
        for k in range(1, n - 1):  # wall nodes without the corners (corner ω is never used by the 5-point stencils)
            for wall, adj in (((0, k), (1, k)), ((n - 1, k), (n - 2, k)), ((k, 0), (k, 1)), ((k, n - 1), (k, n - 2))):
                rows.append(wall[0] * n + wall[1])
                cols.append(full_to_int[adj[0] * n + adj[1]])
        self.B = sp.csr_matrix((np.full(len(rows), -2 / self.h**2), (rows, cols)), shape=(n * n, m))
        self.lid_rows = np.array([(n - 1) * n + k for k in range(1, n - 1)])


def _residual_and_jacobian(ops: _Operators, z: np.ndarray, re: float, lid: float, jac: bool = True):
    m = ops.interior.size
    psi_i, w_i = z[:m], z[m:]
    psi = ops.P @ psi_i
    w = ops.P @ w_i + ops.B @ psi_i
    w[ops.lid_rows] -= 2 * lid / ops.h
    r1 = ops.R @ (ops.lap @ psi) + w_i
    psi_y, psi_x = ops.dy @ psi, ops.dx @ psi  # u = ψ_y, v = -ψ_x
    w_x, w_y = ops.dx @ w, ops.dy @ w
    nu = 1.0 / re if re > 0 else 0.0
    conv = psi_y * w_x - psi_x * w_y if re > 0 else np.zeros_like(w)
    r2 = ops.R @ (conv - nu * ops.lap @ w) if re > 0 else ops.R @ (-ops.lap @ w)
    r = np.concatenate([r1, r2])
    if not jac:
        return r, None
    if re > 0:
        transport = sp.diags(psi_y) @ ops.dx - sp.diags(psi_x) @ ops.dy - nu * ops.lap
        d_psi = sp.diags(w_x) @ ops.dy - sp.diags(w_y) @ ops.dx
    else:  # Stokes: Δω = 0
        transport = -ops.lap
        d_psi = sp.csr_matrix((ops.n**2, ops.n**2))
    j11 = ops.R @ ops.lap @ ops.P
    j12 = sp.identity(m, format="csr")
    j21 = ops.R @ (d_psi @ ops.P + transport @ ops.B)
    j22 = ops.R @ transport @ ops.P
    return r, sp.bmat([[j11, j12], [j21, j22]], format="csc")


def _newton(ops: _Operators, z: np.ndarray, re: float, lid: float, tol: float, max_iter: int):
    """Newton until the step is below tol relative to |z|_inf; (z, converged)."""
    for _ in range(max_iter):
        r, jm = _residual_and_jacobian(ops, z, re, lid)
        step = spla.spsolve(jm, r)
        if not np.all(np.isfinite(step)):
            return z, False
        z = z - step
        if np.abs(step).max() <= tol * max(np.abs(z).max(), 1e-30):
            return z, True
    return z, False


def _velocities(ops: _Operators, psi_i: np.ndarray, lid: float) -> tuple[np.ndarray, np.ndarray]:
    n = ops.n
    psi = ops.P @ psi_i
    u = (ops.dy @ psi).reshape(n, n)
    v = (-(ops.dx @ psi)).reshape(n, n)
    u[0], v[0], u[:, 0], v[:, 0], u[:, -1], v[:, -1] = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    u[-1], v[-1] = lid, 0.0
    return u, v


def _pressure(ops: _Operators, u: np.ndarray, v: np.ndarray, re: float) -> np.ndarray:
    """Least-squares p with ∇p = -(u·∇)u + (1/Re) Δu on the interior nodes (central differences), mean zero."""
    uf, vf = u.reshape(-1), v.reshape(-1)
    fx = -(uf * (ops.dx @ uf) + vf * (ops.dy @ uf)) + (ops.lap @ uf) / re
    fy = -(uf * (ops.dx @ vf) + vf * (ops.dy @ vf)) + (ops.lap @ vf) / re
    # the central-difference gradient on the interior rows leaves the constant, a checkerboard and the four corner
    # nodes free: a tiny Tikhonov term on the Laplacian (smoothness) and on p itself selects one solution; the
    # normal equations stay sparse (solved directly)
    n2 = ops.n**2
    a = sp.vstack([ops.R @ ops.dx, ops.R @ ops.dy, 1e-3 * ops.h**2 * (ops.R @ ops.lap),
                   1e-6 * sp.identity(n2, format="csr")]).tocsr()
    b = np.concatenate([ops.R @ fx, ops.R @ fy, np.zeros(a.shape[0] - 2 * ops.interior.size)])
    p = spla.spsolve((a.T @ a).tocsc(), a.T @ b).reshape(ops.n, ops.n)
    for j, i, dj, di in ((0, 0, 1, 1), (0, -1, 1, -1), (-1, 0, -1, 1), (-1, -1, -1, -1)):  # corners: wall neighbours
        p[j, i] = 0.5 * (p[j + dj, i] + p[j, i + di])
    return p - p.mean()


def solve_cavity(n: int = 129, reynolds: float = 100.0, lid: float = 1.0, tol: float = 1e-10, max_iter: int = 30,
                 pressure: bool = False) -> dict[str, np.ndarray]:
    """Steady lid-driven cavity on linspace(0, 1, n)^2. Returns {"x": (n,), "y": (n,), "u", "v", "psi", "omega"
    (+ "p" if `pressure`): (n, n) arrays indexed [j, i] = (y_j, x_i)} in float64, "newton_iterations"."""
    if n < 5 or reynolds < 0 or not np.isfinite(reynolds) or lid == 0:
        raise ValueError(f"cavity solver: need n >= 5, Re >= 0 and a moving lid; got n = {n}, Re = {reynolds}, "
                         f"lid = {lid}")
    ops = _Operators(n)
    m = ops.interior.size
    z, _ = _newton(ops, np.zeros(2 * m), 0.0, lid, tol, 2)  # Stokes (linear: one step)
    iters = 0
    if reynolds > 0:
        targets, done = [float(reynolds)], 0.0
        while targets:
            z_try, ok = _newton(ops, z, targets[-1], lid, tol, max_iter)
            iters += 1
            if ok:
                z, done = z_try, targets.pop()
            else:  # continuation in Re: halve the step
                if len(targets) > 12:
                    raise RuntimeError(f"cavity solver: Newton did not converge at Re = {reynolds} (n = {n})")
                targets.append(0.5 * (done + targets[-1]))
    psi_i, w_i = z[:m], z[m:]
    u, v = _velocities(ops, psi_i, lid)
    omega = ops.P @ w_i + ops.B @ psi_i
    omega[ops.lid_rows] -= 2 * lid / ops.h
    x = np.linspace(0.0, 1.0, n)
    out = {"x": x, "y": x.copy(), "u": u, "v": v, "psi": (ops.P @ psi_i).reshape(n, n),
           "omega": omega.reshape(n, n), "newton_iterations": np.array(iters)}
    if pressure:
        out["p"] = _pressure(ops, u, v, reynolds if reynolds > 0 else 1.0)
    return out


@functools.lru_cache(maxsize=4)
def cavity_reference(n: int = 129, reynolds: float = 100.0, lid: float = 1.0) -> dict[str, np.ndarray]:
    """`solve_cavity` with the pressure, cached per process (do not modify the returned arrays)."""
    return solve_cavity(n, reynolds, lid, pressure=True)


def ghia_centrelines(ref: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(u at Ghia's y on x = 0.5, v at Ghia's x on y = 0.5), linearly interpolated on the solver's grid."""
    n = ref["x"].size
    if n % 2 == 0:
        raise ValueError("ghia_centrelines needs an odd n (a node on each centreline)")
    c = n // 2
    y_g = np.array(GHIA_RE100_Y_K) / 128
    x_g = np.array(GHIA_RE100_X_K) / 128
    return np.interp(y_g, ref["y"], ref["u"][:, c]), np.interp(x_g, ref["x"], ref["v"][c, :])
