"""Forces on the cylinder, a steady Newton solver and stepping on a mesh that moves between steps, for the
Taylor-Hood solver of `datamodules.cylinder_ns` (unit square or the DFG channel of `datamodules.channel_mesh`).

Force: F = int_rim (-p n + nu (grad u + grad u^T) n) ds, the force of the fluid on the body (density 1), n the unit
normal pointing out of the body into the fluid; C_D = 2 F_x / (U^2 D), C_L = 2 F_y / (U^2 D) with U the mean inflow
speed and D = 2 R. Two evaluations:
- `rim_forces` (volume / Babuska-Miller form, the default): F.e = -R(u, p; phi_e), R the residual of the discrete
  momentum equation (the solver's: time derivative, convection, nu grad u : grad phi - p div phi) tested with the P2
  field phi_e that is e at the rim DOFs and 0 at all others. For a solution of the discrete problem this is the
  reaction at the rim's Dirichlet rows, computed from the assembled matrices (no surface gradients); it converges at
  the rate of the energy norm squared. The solver's viscous form nu grad u : grad phi differs from the symmetric one
  by int nu (grad u^T) : grad phi, which vanishes for div u = 0 and rigid-body boundary values (up to the discrete
  divergence error); the DFG reference uses the same Laplacian form.
- `surface_forces`: the line integral on the rim facets with the P2 gradient and P1 pressure (checks the above;
  less accurate on coarse meshes).

`steady_solve`: Newton's method for the steady equations (Jacobian assembled from the quadrature-point matrices of
`TaylorHood`, LU per iteration), from the Stokes solution (the first iterate); the result is a stepper state (both
history levels the steady field) from which the IMEX stepping can continue.

Moving mesh (`remesh`, `run_moving`): between time steps the vertices move (same connectivity); the P2 velocity of
both BDF2 history levels and the P1 pressure are evaluated at the new mesh's DOF positions (the old FE fields at new
points; DOFs that did not move copy their values, so the identity move is exact), the convection history
N(u^{n-1}) is recomputed on the new mesh, the operators are reassembled and the LU refactorised, and the stepping
continues. Optionally (`project=True`) the interpolated velocities are L2-projected onto the discretely
divergence-free space of the new mesh (one extra LU per move). Without the projection, the interpolated history is
not weakly divergence-free on the new mesh, but every step's new velocity is (B u^{n+1} = 0 is a row of the system).

Measured (one shared CPU thread, tests/test_ns_forces.py for the accuracy): DFG 2D-1 on the 887-vertex channel mesh
C_D -0.35%, Delta p -0.15% off the reference (-0.04% / -0.06% on 5,894 vertices). Costs (unit square 600 vertices /
channel 887 / 1,529 / 3,100 vertices): step 1.5 / 2.8 / 5.8 / 20 ms for one trajectory, 20 / 32 / 87 / 234 ms for 24;
BDF2 LU 38 / 56 / 93 / 575 ms; `remesh` (interpolation + operator assembly; the LU follows at the next step)
59 / 55 / 124 / 232 ms, +25-380 ms with `project=True`; `rim_forces` 0.4-1.4 ms.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from datamodules.cylinder_ns import CylinderNS, _State, _symmetric_lu, cylinder_boundary

__all__ = [
    "boundary_vertex_parts",
    "force_coefficients",
    "interpolation_matrix",
    "point_values",
    "remesh",
    "rim_forces",
    "run_moving",
    "steady_solve",
    "surface_forces",
]


# ====================================================================================================== forces
def _momentum_residual(ns: CylinderNS, s: _State, prev: _State | None) -> tuple[np.ndarray, np.ndarray]:
    """Residual (N, B) of the two momentum equations at state s: steady (prev None: N(u) at s) or of the step
    prev -> s (BDF1 with N(u^0) for the first step, else BDF2 with 2 N(u^n) - N(u^{n-1}), as `IMEXStepper.step`)."""
    o, nu, dt = ns.ops, ns.nu, ns.dt
    if prev is None:
        cu, cv = o.convection(s.u, s.v)
        tu = tv = 0.0
    elif prev.conv_old is None:
        cu, cv = s.conv_old
        tu, tv = o.M @ (s.u - prev.u) / dt, o.M @ (s.v - prev.v) / dt
    else:
        cu, cv = 2.0 * s.conv_old[0] - prev.conv_old[0], 2.0 * s.conv_old[1] - prev.conv_old[1]
        tu = o.M @ (1.5 * s.u - 2.0 * prev.u + 0.5 * prev.u_old) / dt
        tv = o.M @ (1.5 * s.v - 2.0 * prev.v + 0.5 * prev.v_old) / dt
    ru = tu + cu + nu * (o.K @ s.u) - o.Bx.T @ s.p
    rv = tv + cv + nu * (o.K @ s.v) - o.By.T @ s.p
    return ru, rv


def rim_forces(ns: CylinderNS, s: _State, prev: _State | None = None) -> np.ndarray:
    """Force (2, B) of the fluid on the cylinder by the volume (Babuska-Miller) formula: minus the momentum residual
    summed over the rim DOFs. prev: the state the step to s started from (its time derivative and convection);
    None for a steady state (no time derivative, convection N(u) of s)."""
    ru, rv = _momentum_residual(ns, s, prev)
    return -np.stack([ru[ns.rim].sum(0), rv[ns.rim].sum(0)])


def surface_forces(ns: CylinderNS, s: _State, b: int = 0) -> np.ndarray:
    """Force (2,) of trajectory b by the line integral int_rim (-p n + nu (grad u + grad u^T) n) ds on the rim facets
    (n out of the body; skfem's facet normals point out of the fluid, hence the sign)."""
    from skfem import ElementTriP1, ElementTriP2, FacetBasis

    mesh = ns.ops.mesh
    facets = _rim_facets(ns)
    fb = FacetBasis(mesh, ElementTriP2(), facets=facets, intorder=6)
    fp = FacetBasis(mesh, ElementTriP1(), facets=facets, intorder=6)
    gu, gv = fb.interpolate(s.u[:, b]).grad, fb.interpolate(s.v[:, b]).grad
    p = np.asarray(fp.interpolate(s.p[:, b]))
    n = fb.normals                                                       # (2, nf, nq), out of the fluid
    G = np.stack([np.stack([gu[0], gu[1]]), np.stack([gv[0], gv[1]])])   # G[i, j] = d u_i / d x_j
    S = ns.nu * (G + G.transpose(1, 0, 2, 3))
    trac = -p[None] * n + np.einsum("ijfq,jfq->ifq", S, n)               # sigma n_fluid
    return -np.einsum("ifq,fq->i", trac, fb.dx)


def _rim_facets(ns: CylinderNS) -> np.ndarray:
    """The rim's boundary facets of the solver's mesh."""
    return cylinder_boundary(ns.ops.mesh, box=ns.box)["rim"]


def force_coefficients(ns: CylinderNS, F: np.ndarray) -> np.ndarray:
    """(C_D, C_L) = 2 F / (U^2 D) (density 1, U the mean inflow speed, D = 2 R), same shape as F."""
    return 2.0 * np.asarray(F) / (ns.U ** 2 * 2 * ns.radius)


def point_values(basis, coef: np.ndarray, pts) -> np.ndarray:
    """Values (P, ...) of the FE field with coefficients coef (N, ...) at points pts (P, 2) (robust cell search)."""
    return interpolation_matrix(basis, np.asarray(pts, float)) @ coef


# ================================================================================================= steady Newton
def _convection_jacobian(ns: CylinderNS, u: np.ndarray, v: np.ndarray, newton: bool = True) -> sp.csr_matrix:
    """(2N, 2N) Jacobian of the convection load vectors N(u) = int ((u . grad) u) . phi at the P2 field (u, v) (N,);
    newton=False: only the Oseen (Picard) part int ((u . grad) du) . phi."""
    o = ns.ops
    n = o.Q.shape[0]
    vals = o.QQ @ np.stack([u, v], 1)                                  # (3n, 2): values, d/dx, d/dy of u and v
    uq, vq = vals[:n, 0], vals[:n, 1]
    ux, vx, uy, vy = vals[n:2 * n, 0], vals[n:2 * n, 1], vals[2 * n:, 0], vals[2 * n:, 1]
    W = o.QtW

    def D(a):
        return sp.diags(a)

    C = W @ (D(uq) @ o.Qx + D(vq) @ o.Qy)
    if not newton:
        return sp.block_diag([C, C], format="csr")
    return sp.bmat([[C + W @ D(ux) @ o.Q, W @ D(uy) @ o.Q], [W @ D(vx) @ o.Q, C + W @ D(vy) @ o.Q]], format="csr")


def steady_solve(ns: CylinderNS, omega: float = 0.0, tol: float = 1e-10, maxit: int = 40,
                 picard_until: float = 1e-2) -> tuple[_State, dict]:
    """Steady Navier-Stokes solution (one trajectory, rim rotation omega) from the Stokes solution: Picard (Oseen)
    iterations while the residual is above picard_until (relative), then Newton's method (quadratic convergence;
    Newton from Stokes alone diverges at Re 100 on fine meshes); stops when the free rows' residual max-norm is below
    tol x that of the Stokes right-hand side. Returns (state, info: iterations, Picard iterations, residual history,
    seconds). At Re 100 the steady solution exists but is unstable (the start of a shedding run)."""
    t0 = time.perf_counter()
    o, st = ns.ops, ns.stepper
    N, Np = o.N, o.Np
    Z = sp.csr_matrix((N, N))
    A0 = sp.bmat([[ns.nu * o.K, Z, -o.Bx.T], [Z, ns.nu * o.K, -o.By.T], [-o.Bx, -o.By, None]], format="csr")
    gu, gv = ns.boundary_values(np.array([float(omega)]))
    x = np.zeros(2 * N + Np)
    x[st.fixed] = np.concatenate([gu[:, 0], gv[:, 0]] + ([np.zeros(1)] if st.pin is not None else []))
    free = st.free
    A0_ff = A0[free][:, free].tocsc()
    x[free] = splu(A0_ff).solve(-(A0[free][:, st.fixed] @ x[st.fixed]))   # Stokes
    scale = np.abs(A0[free][:, st.fixed] @ x[st.fixed]).max()
    hist, n_picard = [], 0
    for it in range(1, maxit + 1):
        u, v = x[:N], x[N:2 * N]
        cu, cv = o.convection(u[:, None], v[:, None])
        r = A0 @ x + np.concatenate([cu[:, 0], cv[:, 0], np.zeros(Np)])
        hist.append(float(np.abs(r[free]).max()) / scale)
        if hist[-1] < tol:
            break
        newton = hist[-1] < picard_until
        n_picard += not newton
        J = A0 + sp.block_diag([_convection_jacobian(ns, u, v, newton), sp.csr_matrix((Np, Np))], format="csr")
        x[free] -= splu(J[free][:, free].tocsc()).solve(r[free])
    else:
        raise RuntimeError(f"steady_solve: Newton did not converge in {maxit} iterations (residuals {hist[-3:]})")
    u, v, p = x[:N, None], x[N:2 * N, None], x[2 * N:, None]
    conv = o.convection(u, v)
    state = _State(u.copy(), v.copy(), p.copy(), u.copy(), v.copy(), conv)
    return state, {"iterations": it - 1, "picard": n_picard, "residuals": hist, "seconds": time.perf_counter() - t0}


# =================================================================================================== moving mesh
def interpolation_matrix(basis, x: np.ndarray, k: int = 12) -> sp.csr_matrix:
    """(P, N) matrix evaluating a field of `basis` (a skfem Basis on a MeshTri) at points x (P, 2): each point's cell
    is the one among the k cells with the nearest centroids where its smallest barycentric coordinate is largest
    (points on edges, vertices or within rounding outside the mesh are taken by a neighbouring cell; a point farther
    than 1e-8 outside every candidate is searched again among 8 k cells, then raises ValueError)."""
    mesh = basis.mesh
    p, t = mesh.p, mesh.t
    cells = _find_cells(p, t, x, k)
    pts = basis.mapping.invF(x.T[:, :, None], tind=cells)
    phis = np.array([basis.elem.gbasis(basis.mapping, pts, j, tind=cells)[0] for j in range(basis.Nbfun)])
    rows = np.tile(np.arange(len(x)), basis.Nbfun)
    cols = basis.element_dofs[:, cells].ravel()
    return sp.csr_matrix((phis.ravel(), (rows, cols)), shape=(len(x), basis.N))


def _find_cells(p: np.ndarray, t: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Cell index (P,) of each point (see `interpolation_matrix`)."""
    cen = p[:, t].mean(1).T
    k = min(k, t.shape[1])
    idx = cKDTree(cen).query(x, k)[1].reshape(len(x), k)
    a, b, c = (p[:, t[j]].T[idx] for j in range(3))                      # (P, k, 2)
    det = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
    dx, dy = x[:, None, 0] - a[..., 0], x[:, None, 1] - a[..., 1]
    l1 = (dx * (c[..., 1] - a[..., 1]) - dy * (c[..., 0] - a[..., 0])) / det
    l2 = ((b[..., 0] - a[..., 0]) * dy - (b[..., 1] - a[..., 1]) * dx) / det
    m = np.minimum(np.minimum(l1, l2), 1 - l1 - l2)
    best = m.argmax(1)
    bad = m[np.arange(len(x)), best] < -1e-8
    if np.any(bad):
        if k >= t.shape[1]:
            raise ValueError(f"interpolation_matrix: {int(bad.sum())} point(s) outside the mesh")
        out = idx[np.arange(len(x)), best]
        out[bad] = _find_cells(p, t, x[bad], 8 * k)
        return out
    return idx[np.arange(len(x)), best]


def boundary_vertex_parts(ns: CylinderNS) -> dict[str, np.ndarray]:
    """Boolean masks (nv,) of the mesh vertices on the box's sides x = x0, x = x1, y = y0, y = y1 ("x0", "x1", "y0",
    "y1"; a corner is on two) and on the rim ("rim")."""
    mesh = ns.ops.mesh
    x, y = mesh.p
    x0, x1, y0, y1 = ns.box
    tol = 1e-9
    rim = np.zeros(len(x), bool)
    rim[np.unique(mesh.facets[:, cylinder_boundary(mesh, box=ns.box)["rim"]])] = True
    return {"x0": np.abs(x - x0) < tol, "x1": np.abs(x - x1) < tol, "y0": np.abs(y - y0) < tol,
            "y1": np.abs(y - y1) < tol, "rim": rim}


def _snap(ns: CylinderNS, new: np.ndarray) -> np.ndarray:
    """New vertex positions (nv, 2) with the side vertices put back on their sides (they may slide along them) and
    the rim vertices (and corners) back at their old positions; ValueError when a triangle inverts or degenerates."""
    old = ns.ops.mesh.p.T
    new = np.array(new, float)
    parts = boundary_vertex_parts(ns)
    x0, x1, y0, y1 = ns.box
    new[parts["x0"], 0], new[parts["x1"], 0] = x0, x1
    new[parts["y0"], 1], new[parts["y1"], 1] = y0, y1
    new[parts["rim"]] = old[parts["rim"]]
    t = ns.ops.mesh.t.T

    def area2(q):
        a, b, c = q[t[:, 0]], q[t[:, 1]], q[t[:, 2]]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    a_old, a_new = area2(old), area2(new)
    if np.any(a_new * np.sign(a_old) <= 1e-12 * np.abs(a_old).max()):
        raise ValueError(f"remesh: {int(np.sum(a_new * np.sign(a_old) <= 0))} triangle(s) inverted by the move")
    return new


def remesh(ns: CylinderNS, s: _State, new_vertices: np.ndarray, project: bool = False) -> tuple[CylinderNS, _State]:
    """The solver and state on the moved mesh (vertices new_vertices (nv, 2), same triangles; see the module
    docstring): fields evaluated at the new DOF positions, operators and LU rebuilt, N(u^{n-1}) recomputed."""
    from skfem import MeshTri

    mesh = ns.ops.mesh
    new_vertices = _snap(ns, new_vertices)
    new_mesh = MeshTri(np.ascontiguousarray(new_vertices.T), mesh.t)
    new_ns = CylinderNS(new_mesh, ns.Re, ns.U, ns.dt, ns.centre, ns.radius, ns.box)
    old_xy, new_xy = ns.ops.dof_xy, new_ns.ops.dof_xy
    Iu = _copy_unmoved(interpolation_matrix(ns.ops.ub, new_xy), old_xy, new_xy)
    Ip = _copy_unmoved(interpolation_matrix(ns.ops.pb, new_ns.ops.pb.doflocs.T), ns.ops.pb.doflocs.T,
                       new_ns.ops.pb.doflocs.T)
    u, v, u_old, v_old = (Iu @ a for a in (s.u, s.v, s.u_old, s.v_old))
    if project:
        B = u.shape[1]
        pu, pv = _div_free_projection(new_ns, np.concatenate([u, u_old], 1), np.concatenate([v, v_old], 1))
        u, u_old, v, v_old = pu[:, :B], pu[:, B:], pv[:, :B], pv[:, B:]
    conv_old = None if s.conv_old is None else new_ns.ops.convection(u_old, v_old)
    return new_ns, _State(u, v, Ip @ s.p, u_old, v_old, conv_old)


def _copy_unmoved(I: sp.csr_matrix, old_xy: np.ndarray, new_xy: np.ndarray) -> sp.csr_matrix:
    """Interpolation matrix whose rows for DOFs that did not move (same index, same position) are identity rows."""
    same = np.all(old_xy == new_xy, axis=1) if len(old_xy) == len(new_xy) else np.zeros(len(new_xy), bool)
    keep = sp.diags((~same).astype(float)) @ I
    return (keep + sp.csr_matrix((np.ones(same.sum()), (np.flatnonzero(same), np.flatnonzero(same))),
                                 shape=I.shape)).tocsr()


def _div_free_projection(ns: CylinderNS, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2 projection of (u, v) (N, B) onto the weakly divergence-free P2 fields with the same Dirichlet values:
    M w - B^T q = M u, B w = 0 (one symmetric LU for all columns)."""
    o, st = ns.ops, ns.stepper
    N, Np = o.N, o.Np
    Z = sp.csr_matrix((N, N))
    A = sp.bmat([[o.M, Z, -o.Bx.T], [Z, o.M, -o.By.T], [-o.Bx, -o.By, None]], format="csr")
    d = st.dirichlet
    fixed = np.concatenate([d, N + d])                                  # the pressure multiplier is free (unique
    free = np.setdiff1d(np.arange(2 * N + Np), fixed)                   # up to a constant only without outflow)
    B = u.shape[1]
    x = np.concatenate([u, v, np.zeros((Np, B))])
    rhs = np.concatenate([o.M @ u, o.M @ v, np.zeros((Np, B))])
    if st.pin is not None:
        fixed, free = np.append(fixed, 2 * N + st.pin), np.setdiff1d(free, [2 * N + st.pin])
    x[free] = _symmetric_lu(A[free][:, free].tocsc()).solve(rhs[free] - A[free][:, fixed] @ x[fixed])
    return x[:N], x[N:2 * N]


def run_moving(ns: CylinderNS, mover, n_steps: int, move_every: int = 1, state: _State | None = None,
               omega=None, project: bool = False) -> dict:
    """IMEX stepping with the mesh moved every `move_every` steps (before steps move_every, 2 move_every, ...):
    new = mover(vertices (nv, 2), (ns, state)) gives the new vertex positions (side vertices may slide along their
    side; rim vertices and corners are kept; see `remesh`). state: the start (default fluid at rest, one
    trajectory); omega (B,): rim angular speeds (default 0). Returns dict: ns, state (the last), forces (n_steps, 2, B)
    (`rim_forces` of each step), coefficients (n_steps, 2, B), divergence (n_steps,) max |B u| after each step,
    seconds_step, seconds_remesh (totals), n_remesh."""
    s = ns.initial(1) if state is None else state
    omega = np.zeros(s.u.shape[1]) if omega is None else np.asarray(omega, float)
    F, C, div = [], [], []
    t_step = t_mesh = 0.0
    n_remesh = 0
    for k in range(n_steps):
        if k > 0 and k % move_every == 0:
            t0 = time.perf_counter()
            ns, s = remesh(ns, s, mover(ns.ops.mesh.p.T.copy(), (ns, s)), project=project)
            t_mesh += time.perf_counter() - t0
            n_remesh += 1
        t0 = time.perf_counter()
        s_new = ns.step(s, omega)
        t_step += time.perf_counter() - t0
        F.append(rim_forces(ns, s_new, s))
        C.append(force_coefficients(ns, F[-1]))
        div.append(float(np.abs(ns.ops.divergence(s_new.u, s_new.v)).max()))
        s = s_new
    return {"ns": ns, "state": s, "forces": np.array(F), "coefficients": np.array(C), "divergence": np.array(div),
            "seconds_step": t_step, "seconds_remesh": t_mesh, "n_remesh": n_remesh}
