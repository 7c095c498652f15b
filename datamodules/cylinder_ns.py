"""Incompressible Navier-Stokes flow past a (rotating) cylinder: a solver-made offline stand-in for the DMM cylinder
data (official `cylinder_rot_tri` of Peiyannn/MM-PDE, not downloadable here; see `datamodules.cylinder_flow`).

Equations (unit-square coordinates, density 1): u_t + (u . grad) u - nu lap u + grad p = f (f = 0 here; the
tests use f for manufactured solutions), div u = 0 on the unit square minus the disc |x - x0| < R (default
x0 = (0.3, 0.5), R = 0.1, the geometry of `cylinder_flow.cylinder_mesh`).
Boundary conditions: inflow at x = 0 with the parabolic profile u = 6 U y (1 - y), v = 0 (mean speed U); no-slip
walls y = 0 and y = 1; do-nothing outflow nu du/dn - p n = 0 at x = 1; on the cylinder's rim the velocity of a rigid
rotation with angular speed omega(t), u = omega(t) (-(y - y0), x - x0). Reynolds number Re = U D / nu, D = 2R
(default 100). The unit of time is the one of the unit square (a flow-through time is 1 / U).

Discretisation: Taylor-Hood P2-P1 on a triangular mesh (scikit-fem): the DMM mesh (nodes of `cylinder_mesh`,
triangles of `delaunay_without_hole`), optionally `refine` times uniformly refined with the new rim nodes moved onto
the circle. The P2 velocity's vertex values and the P1 pressure are the solution at the mesh vertices, so the DMM
nodes (all of them vertices) get the solver's own nodal values. The rim is the mesh's polygon: the cylinder is the
inscribed polygon of the DMM mesh's ring nodes (40-gon by default). Time stepping IMEX BDF2 (SBDF2): BDF2 for the
time derivative, implicit viscous term and pressure, convection extrapolated explicitly as 2 N(u^n) - N(u^{n-1}),
N(u) the Galerkin form of (u . grad) u; the first step is BDF1 with N(u^0). The system matrix is then constant: it
is assembled (mass, stiffness, divergence) and LU-factorised once, each step assembles only the convection load
vector (vectorised as sparse quadrature-point matrices) and back-substitutes, for all trajectories at once (one
right-hand side column per trajectory). Explicit convection limits the time step (CFL, set by the small cells at
the rim): on the default 600-node mesh (40 rim nodes) dt = 0.002 is stable for a fixed cylinder but not with rim
speeds omega R = U; dt = 0.00125 (default) was stable up to omega R = 2.5 U (3 time units from rest; the data use
at most 1.5 U). A step with 24 trajectories takes ~23 ms on one CPU thread (the LU solve ~2/3 of it).

Data (`make_ns_dataset`): per trajectory the rotation omega(t) = r(t) (omega0 + omega1 sin(2 pi f t + psi)) in
units of U / R (omega R / U is the rim speed over the mean inflow speed), omega0 ~ U[-a0, a0], omega1 ~ U[0, a1],
f ~ U[0.5, 1.5], psi ~ U[0, 2 pi], r a smooth ramp from 0 to 1 over `ramp` time units. All trajectories start from
one developed-shedding state of the fixed cylinder (a shared warm-up of `warmup` time units; symmetry is broken by a
short rotation pulse at its start), each at a different phase of the shedding cycle (states of the warm-up's last
`phase_window` time units), then run `settle` time units with their own rotation before `n_steps` snapshots every
`dt_snap`. Output as `cylinder_flow.make_potential_dataset`: float32 (n_traj, n_steps, nodes, 5) with columns x, y
(in [0, 0.5], the file's frame before the official x2), u, v, p, and flows (n_traj, n_steps, 6), NaN (no exact
field); plus a reference for interpolation errors: the P2 solution as a P1 field on the midpoint-refined mesh with
the hole filled by a fan from the centre (velocity there: the rigid rotation, exact continuation; pressure: the
rim mean), covering the whole unit square.

Measured (default mesh and step, Re 100, probe v(x0 + D, y0 + 0.1 D), `shedding_frequency`): after the warm-up's
rotation pulse the shedding amplitude saturates by t ~ 5-6 (peak-to-peak 1.22 U, the same to 0.3% over t = 6-16) at
St = f D / U = 0.325; on the once-refined mesh (refine=1, dt 0.001) St = 0.324 and the amplitude 1.54 U (the default
mesh damps the wake ~20% but gets the frequency). Without the pulse (omega = 0 throughout) the symmetric start stays
symmetric to rounding on a mirror-symmetric mesh (tests). Generating the default dataset (24 trajectories x 16
frames) takes ~40 s on one shared CPU thread.

Other geometries and uses: `CylinderNS(box=(x0, x1, y0, y1))` runs the same problem in any rectangle (inflow at
x0, walls y0, y1, outflow x1; the default is the unit square above), e.g. the DFG benchmark channel of
`datamodules.channel_mesh`; drag and lift, a steady Newton solver and stepping on a mesh that moves between steps
are in `datamodules.ns_forces`. The LU factors are computed when first needed.

Assumed (not known from the official data): the geometry (the file holds only node positions; centre and radius as
`cylinder_flow`), the inflow profile, Re, the outflow condition and the rotation law; the official time step between
frames is unknown too. The pressure is the kinematic pressure (density 1); the do-nothing outflow fixes its level.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from lit_models.common import mesh as M

__all__ = [
    "NS_DEFAULTS",
    "UNIT_BOX",
    "CylinderNS",
    "IMEXStepper",
    "TaylorHood",
    "check_ns_params",
    "cylinder_boundary",
    "cylinder_solver_mesh",
    "inflow_profile",
    "make_ns_dataset",
    "reference_mesh",
    "rotation_velocity",
    "shedding_frequency",
    "vertex_velocity_gradient",
]


# =================================================================================================== operators
class TaylorHood:
    """P2-P1 operators on a scikit-fem MeshTri: mass M and stiffness K of one velocity component (P2), divergence
    blocks Bx, By ([q, i] = int q d(phi_i)/dx, q P1, phi P2), and sparse quadrature-point matrices (values Q and
    gradients Qx, Qy of the P2 basis at every quadrature point, weights w) for the convection load vector."""

    def __init__(self, mesh, intorder: int = 5) -> None:
        from skfem import Basis, BilinearForm, ElementTriP1, ElementTriP2, asm
        from skfem.helpers import dot, grad

        self.mesh = mesh
        self.ub = Basis(mesh, ElementTriP2(), intorder=intorder)
        self.pb = Basis(mesh, ElementTriP1(), intorder=intorder)
        self.N, self.Np = self.ub.N, self.pb.N
        self.M = asm(BilinearForm(lambda u, v, w: u * v), self.ub).tocsr()
        self.K = asm(BilinearForm(lambda u, v, w: dot(grad(u), grad(v))), self.ub).tocsr()
        self.Bx = asm(BilinearForm(lambda u, q, w: u.grad[0] * q), self.ub, self.pb).tocsr()
        self.By = asm(BilinearForm(lambda u, q, w: u.grad[1] * q), self.ub, self.pb).tocsr()
        ne, nq = self.ub.nelems, self.ub.dx.shape[1]
        rows = np.arange(ne * nq).reshape(ne, nq)

        def quad_matrix(vals) -> sp.csr_matrix:
            r = np.concatenate([rows.ravel()] * self.ub.Nbfun)
            c = np.concatenate([np.repeat(self.ub.element_dofs[i], nq) for i in range(self.ub.Nbfun)])
            return sp.csr_matrix((np.concatenate([v.ravel() for v in vals]), (r, c)), shape=(ne * nq, self.N))

        phis = [self.ub.basis[i][0] for i in range(self.ub.Nbfun)]
        self.Q = quad_matrix([np.asarray(p) for p in phis])  # DiscreteField: an ndarray of the values
        self.Qx = quad_matrix([p.grad[0] for p in phis])
        self.Qy = quad_matrix([p.grad[1] for p in phis])
        self.w = self.ub.dx.ravel()
        self.xq = np.stack([self.ub.mapping.F(self.ub.X)[k].ravel() for k in range(2)], -1)  # quadrature points
        self.QtW = (self.Q.T @ sp.diags(self.w)).tocsr()
        self.QQ = sp.vstack([self.Q, self.Qx, self.Qy]).tocsr()

    @property
    def dof_xy(self) -> np.ndarray:
        """(N, 2) positions of the P2 DOFs (vertices first, then edge midpoints)."""
        return self.ub.doflocs.T

    def convection(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Load vectors (N, B) of the Galerkin convection int ((u . grad) u) . phi for P2 coefficients (N, B)."""
        B = u.shape[1]
        n = self.Q.shape[0]
        vals = self.QQ @ np.concatenate([u, v], 1)                      # (3 n, 2 B): values, d/dx, d/dy
        uq, vq = vals[:n, :B], vals[:n, B:]
        adv = uq[:, None] * vals[n:2 * n].reshape(n, 2, B) + vq[:, None] * vals[2 * n:].reshape(n, 2, B)
        out = self.QtW @ adv.reshape(n, 2 * B)
        return out[:, :B], out[:, B:]

    def load(self, f: np.ndarray) -> np.ndarray:
        """Load vector (N, ...) of values f (n_quadrature_points, ...) at `xq`."""
        return self.QtW @ f

    def divergence(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The discrete divergence Bx u + By v (Np, ...): zero for a solution (weakly divergence-free)."""
        return self.Bx @ u + self.By @ v


# ====================================================================================================== stepper
@dataclass
class _State:
    u: np.ndarray        # (N, B) current velocity components
    v: np.ndarray
    p: np.ndarray        # (Np, B)
    u_old: np.ndarray    # the previous step's (for BDF2)
    v_old: np.ndarray
    conv_old: tuple[np.ndarray, np.ndarray] | None   # N(u^{n-1}) (None before the first step)


class IMEXStepper:
    """SBDF2 time stepping of the Taylor-Hood system for B right-hand sides at once (see the module docstring).

    dirichlet: P2 DOF indices (both velocity components prescribed there); pin_pressure: the P1 DOF whose pressure is
    prescribed (for a domain without an outflow, where p is defined up to a constant), or None. The BDF1 (first step)
    and BDF2 matrices are factorised once each, when first needed (a run continued from a state with history, e.g.
    after a mesh move, never factorises the BDF1 one)."""

    def __init__(self, ops: TaylorHood, nu: float, dt: float, dirichlet: np.ndarray,
                 pin_pressure: int | None = None) -> None:
        if nu <= 0 or dt <= 0:
            raise ValueError(f"need nu > 0 and dt > 0, got nu={nu}, dt={dt}")
        self.ops, self.nu, self.dt = ops, nu, dt
        N, Np = ops.N, ops.Np
        self.dirichlet = np.unique(np.asarray(dirichlet, np.int64))
        fixed = [self.dirichlet, N + self.dirichlet]
        if pin_pressure is not None:
            fixed.append(np.array([2 * N + pin_pressure]))
        self.fixed = np.concatenate(fixed)
        self.free = np.setdiff1d(np.arange(2 * N + Np), self.fixed)
        self.pin = pin_pressure
        self._lu: dict = {}

    def _factorised(self, a: float):
        """(LU of the free block, free-fixed block) of the matrix with time-derivative coefficient a / dt (cached)."""
        if a not in self._lu:
            self._lu[a] = self._factorise(a)
        return self._lu[a]

    def _factorise(self, a: float):
        o = self.ops
        Z = sp.csr_matrix((o.N, o.N))
        Ab = a / self.dt * o.M + self.nu * o.K
        A = sp.bmat([[Ab, Z, -o.Bx.T], [Z, Ab, -o.By.T], [-o.Bx, -o.By, None]], format="csr")
        A_ff = A[self.free][:, self.free].tocsc()
        return _symmetric_lu(A_ff), A[self.free][:, self.fixed].tocsr()

    def initial(self, u0: np.ndarray, v0: np.ndarray) -> _State:
        """State from initial velocity coefficients (N, B) (pressure zero until the first step)."""
        return _State(u0.copy(), v0.copy(), np.zeros((self.ops.Np, u0.shape[1])), u0.copy(), v0.copy(), None)

    def step(self, s: _State, g_u: np.ndarray, g_v: np.ndarray, g_p: np.ndarray | None = None,
             f_u: np.ndarray | None = None, f_v: np.ndarray | None = None) -> _State:
        """One step: g_u, g_v (len(dirichlet), B) the new time's Dirichlet values, g_p (1, B) the pinned pressure,
        f_u, f_v (N, B) load vectors of the body force at the new time."""
        o, dt = self.ops, self.dt
        conv = o.convection(s.u, s.v)
        if s.conv_old is None:  # BDF1 with N(u^0)
            lu, A_fd = self._factorised(1.0)
            ru, rv = o.M @ s.u / dt - conv[0], o.M @ s.v / dt - conv[1]
        else:  # BDF2: (3 u^{n+1} - 4 u^n + u^{n-1}) / (2 dt), convection 2 N(u^n) - N(u^{n-1})
            lu, A_fd = self._factorised(1.5)
            ru = o.M @ (2.0 * s.u - 0.5 * s.u_old) / dt - (2.0 * conv[0] - s.conv_old[0])
            rv = o.M @ (2.0 * s.v - 0.5 * s.v_old) / dt - (2.0 * conv[1] - s.conv_old[1])
        if f_u is not None:
            ru, rv = ru + f_u, rv + f_v
        B = s.u.shape[1]
        rhs = np.concatenate([ru, rv, np.zeros((o.Np, B))])
        g = [g_u, g_v] + ([g_p] if self.pin is not None else [])
        x_fixed = np.concatenate(g)
        x = np.empty_like(rhs)
        x[self.fixed] = x_fixed
        x[self.free] = lu.solve(rhs[self.free] - A_fd @ x_fixed)
        N = o.N
        return _State(x[:N], x[N:2 * N], x[2 * N:], s.u, s.v, conv)


def _symmetric_lu(A: sp.csc_matrix):
    """LU of a symmetric saddle-point matrix: symmetric mode with the minimum-degree ordering of A + A^T and
    diagonal pivots (half the fill of the default column ordering here: the solves dominate a step), checked on a
    random right-hand side; the default partial-pivoting LU when that check fails."""
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    try:
        lu = splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        x = lu.solve(b)
        if np.all(np.isfinite(x)) and np.linalg.norm(A @ x - b) <= 1e-8 * np.linalg.norm(b):
            return lu
    except RuntimeError:  # a zero pivot
        pass
    return splu(A)


# ================================================================================================ cylinder case
def cylinder_solver_mesh(pos: np.ndarray, tri: np.ndarray, centre=(0.3, 0.5), radius: float = 0.1,
                         refine: int = 0):
    """scikit-fem MeshTri of the DMM mesh (nodes `pos`, fluid triangles `tri`), refined `refine` times with the new
    rim vertices projected onto the circle. The first len(pos) vertices are `pos` (uniform refinement appends)."""
    from skfem import MeshTri

    mesh = MeshTri(np.ascontiguousarray(pos.T, dtype=np.float64), np.ascontiguousarray(tri.T, dtype=np.int64))
    c = np.asarray(centre, float)
    for _ in range(refine):
        n_old = mesh.p.shape[1]
        mesh = mesh.refined()
        p = mesh.p.copy()
        bnd = mesh.boundary_nodes()
        new = bnd[bnd >= n_old]
        d = np.linalg.norm(p[:, new].T - c, axis=1)
        on_rim = new[d < radius * 1.01]
        p[:, on_rim] = (c + radius * (p[:, on_rim].T - c) / np.linalg.norm(p[:, on_rim].T - c, axis=1)[:, None]).T
        mesh = MeshTri(p, mesh.t)
    return mesh


UNIT_BOX = (0.0, 1.0, 0.0, 1.0)


def cylinder_boundary(mesh, tol: float = 1e-9, box=UNIT_BOX) -> dict[str, np.ndarray]:
    """Boundary facets by part of the rectangle box = (x0, x1, y0, y1) (default the unit square) with a hole:
    "inflow" (x = x0), "walls" (y = y0, y1), "outflow" (x = x1), "rim" (the rest)."""
    f = mesh.boundary_facets()
    mid = mesh.p[:, mesh.facets[:, f]].mean(1)
    x, y = mid
    x0, x1, y0, y1 = (float(b) for b in box)
    inflow = np.abs(x - x0) < tol
    walls = (np.abs(y - y0) < tol) | (np.abs(y - y1) < tol)
    outflow = np.abs(x - x1) < tol
    return {"inflow": f[inflow], "walls": f[walls], "outflow": f[outflow], "rim": f[~(inflow | walls | outflow)]}


def inflow_profile(y: np.ndarray, U: float, y0: float = 0.0, height: float = 1.0) -> np.ndarray:
    """Parabolic inflow u(y) = 6 U s (H - s) / H^2, s = y - y0, on a channel of height H (default the unit height:
    6 U y (1 - y)): mean U, peak 1.5 U, zero at the walls. (DFG: U = 2/3 U_m gives 4 U_m y (H - y) / H^2.)"""
    s = y - y0
    return 6.0 * U * s * (height - s) / (height * height)


def rotation_velocity(xy: np.ndarray, omega: np.ndarray, centre) -> tuple[np.ndarray, np.ndarray]:
    """Rigid rotation (u, v) (..., B) at points xy (P, 2) for angular speeds omega (B,): omega (-(y - y0), x - x0)."""
    dx, dy = xy[:, 0] - centre[0], xy[:, 1] - centre[1]
    om = np.asarray(omega, float)
    return -dy[:, None] * om[None], dx[:, None] * om[None]


class CylinderNS:
    """The cylinder problem on a Taylor-Hood mesh: Dirichlet DOFs (inflow, walls, rim), the nodal field at the mesh
    vertices, the initial state and steps driven by per-trajectory angular speeds. box = (x0, x1, y0, y1): the
    rectangle (default the unit square; the DFG channel is (0, 2.2, 0, 0.41), `channel_mesh.dfg_problem`), inflow at
    x0 with mean speed U over its height, walls y0, y1, outflow x1."""

    def __init__(self, mesh, Re: float = 100.0, U: float = 1.0, dt: float = 0.00125, centre=(0.3, 0.5),
                 radius: float = 0.1, box=UNIT_BOX) -> None:
        if Re <= 0 or U <= 0:
            raise ValueError(f"need Re > 0 and U > 0, got Re={Re}, U={U}")
        self.ops = TaylorHood(mesh)
        self.U, self.centre, self.radius, self.Re = U, tuple(centre), radius, Re
        self.box = tuple(float(b) for b in box)
        self.nu = U * 2 * radius / Re
        parts = cylinder_boundary(mesh, box=self.box)
        ub = self.ops.ub
        self.dofs = {k: np.unique(ub.get_dofs(facets=v).all()) for k, v in parts.items()}
        # the corners (0, 0), (0, 1) are inflow and wall DOFs at once: both prescribe 0 there
        self.rim = self.dofs["rim"]
        self.dirichlet = np.unique(np.concatenate([self.dofs["inflow"], self.dofs["walls"], self.rim]))
        self.stepper = IMEXStepper(self.ops, self.nu, dt, self.dirichlet)
        self.dt = dt
        xy = self.ops.dof_xy[self.dirichlet]
        base = np.where(np.isin(self.dirichlet, self.dofs["inflow"]) & ~np.isin(self.dirichlet, self.dofs["walls"]),
                        inflow_profile(xy[:, 1], U, self.box[2], self.box[3] - self.box[2]), 0.0)
        self._g_base = base
        self._rim_mask = np.isin(self.dirichlet, self.rim)
        self._rim_xy = xy[self._rim_mask]

    @functools.cached_property
    def p1_to_p2(self) -> sp.csr_matrix:
        """(N, Np) P1 pressure -> values at the P2 DOFs (`_vertex_average`), for the reference field."""
        return _vertex_average(self.ops)

    def boundary_values(self, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dirichlet values (n_dirichlet, B) of u and v for angular speeds omega (B,)."""
        B = len(omega)
        gu = np.repeat(self._g_base[:, None], B, 1)
        gv = np.zeros_like(gu)
        ru, rv = rotation_velocity(self._rim_xy, omega, self.centre)
        gu[self._rim_mask], gv[self._rim_mask] = ru, rv
        return gu, gv

    def initial(self, B: int) -> _State:
        """Fluid at rest (impulsive start: the boundary values switch on at the first step)."""
        z = np.zeros((self.ops.N, B))
        return self.stepper.initial(z, z)

    def step(self, s: _State, omega: np.ndarray) -> _State:
        gu, gv = self.boundary_values(np.asarray(omega, float))
        return self.stepper.step(s, gu, gv)

    def nodal(self, s: _State, n_vertices: int) -> np.ndarray:
        """(B, n_vertices, 3) u, v, p at the first n_vertices mesh vertices (P2 vertex DOFs = vertex indices)."""
        return np.stack([s.u[:n_vertices].T, s.v[:n_vertices].T, s.p[:n_vertices].T], -1)


def shedding_frequency(signal: np.ndarray, dt: float) -> float:
    """Dominant frequency of a sampled signal (mean removed): the periodogram's peak, refined by a parabola."""
    x = np.asarray(signal, float) - np.mean(signal)
    n = len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(n), 8 * n)) ** 2
    k = int(np.argmax(spec[1:])) + 1
    if 0 < k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1:k + 2] + 1e-300)
        k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return float(k / (8 * n * dt))


# =================================================================================================== reference
def reference_mesh(ns: CylinderNS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A P1 mesh carrying the P2 solution over the whole unit square: the points (P2 DOF positions + the cylinder's
    centre, last), triangles (midpoint refinement of every fluid triangle + a fan from the centre over the hole's
    refined rim edges), and the DOF index of each point but the centre (N,)."""
    mesh, ops = ns.ops.mesh, ns.ops
    fine = mesh.refined()
    tree = cKDTree(ops.dof_xy)
    d, idx = tree.query(fine.p.T)
    if d.max() > 1e-10:
        raise RuntimeError("midpoint refinement does not match the P2 DOFs")
    tri = idx[fine.t.T]
    f = fine.boundary_facets()
    mid = fine.p[:, fine.facets[:, f]].mean(1).T
    rim = f[np.linalg.norm(mid - np.asarray(ns.centre), axis=1) < ns.radius * 1.01]
    edges = idx[fine.facets[:, rim].T]
    c = len(ops.dof_xy)
    fan = np.concatenate([np.full((len(edges), 1), c), edges], 1)
    pts = np.concatenate([ops.dof_xy, np.asarray(ns.centre, float)[None]])
    tri = np.concatenate([tri, fan])
    flip = M.signed_areas(pts, tri) < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return pts, tri, np.arange(c)


def _reference_values(s: _State, ns: CylinderNS) -> np.ndarray:
    """(B, N + 1, 3) u, v, p at the reference points (P2 DOFs, then the centre: rotation velocity 0, rim-mean p);
    the P1 pressure at an edge midpoint is the mean of its two vertex values."""
    p2 = ns.p1_to_p2 @ s.p
    centre_p = p2[ns.rim].mean(0)
    vals = np.stack([s.u, s.v, p2], -1)                                    # (N, B, 3)
    centre = np.stack([np.zeros_like(centre_p), np.zeros_like(centre_p), centre_p], -1)[None]
    return np.concatenate([vals, centre]).transpose(1, 0, 2)


def vertex_velocity_gradient(mesh, u: np.ndarray, v: np.ndarray, dof_xy: np.ndarray | None = None) -> np.ndarray:
    """Velocity gradient [[u_x, u_y], [v_x, v_y]] of P2 coefficients u, v ((N,) or (N, B), the DOF order of a
    Taylor-Hood `TaylorHood(mesh).ub`) at the mesh vertices: (nv, 2, 2) or (B, nv, 2, 2).

    UM2N's cylinder monitor (official `test_flow_past_cylinder_final.py`) takes ||grad u||_F of the P2 velocity after
    putting grad u into a P1 (vertex) tensor space; grad u of a P2 field is linear on each triangle and discontinuous
    across edges, so here each triangle's gradient is evaluated at its three vertices and the values are averaged
    (unweighted mean over the triangles sharing a vertex). Assumed to stand for the official projection (Firedrake's
    may weight the cells differently); exact wherever the velocity is quadratic (continuous linear gradient), e.g.
    Poiseuille flow (tests). dof_xy (N, 2): the DOF positions the coefficients belong to (e.g. `reference_mesh`'s
    points without the centre), checked against this mesh's P2 DOFs (ValueError when they differ)."""
    from skfem import Basis, ElementTriP2

    corners = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])      # the reference triangle's vertices t[0], t[1], t[2]
    basis = Basis(mesh, ElementTriP2(), quadrature=(corners, np.full(3, 1.0 / 6.0)))
    if dof_xy is not None and (len(dof_xy) != basis.N or not np.allclose(dof_xy, basis.doflocs.T, atol=1e-9)):
        raise ValueError("vertex_velocity_gradient: the coefficients' DOF positions are not this mesh's P2 DOFs")
    single = np.ndim(u) == 1
    uv = np.stack([np.asarray(u, float).reshape(basis.N, -1), np.asarray(v, float).reshape(basis.N, -1)])  # (2, N, B)
    dphi = np.stack([basis.basis[i][0].grad for i in range(basis.Nbfun)])  # (nbfun, 2 (d/dx, d/dy), nelems, 3)
    coef = uv[:, basis.element_dofs]                                       # (2 (u, v), nbfun, nelems, B)
    g = np.einsum("cieb,ikeq->beqck", coef, dphi)                          # (B, nelems, 3, 2 (u, v), 2 (x, y))
    nv = mesh.p.shape[1]
    corner_vertex = mesh.t.T.ravel()                                       # vertex of (element, corner)
    count = np.bincount(corner_vertex, minlength=nv).astype(float)
    B = g.shape[0]
    out = np.zeros((B, nv, 4))
    np.add.at(out, (slice(None), corner_vertex), g.reshape(B, -1, 4))
    out = (out / np.maximum(count, 1.0)[None, :, None]).reshape(B, nv, 2, 2)
    return out[0] if single else out


def _vertex_average(ops: TaylorHood) -> sp.csr_matrix:
    """(N, Np): P2 vertex DOFs take the vertex value, edge-midpoint DOFs the mean of the edge's two vertices."""
    mesh = ops.mesh
    nv, ne = mesh.p.shape[1], mesh.facets.shape[1]
    facet_dofs = ops.ub.facet_dofs[0]
    rows = np.concatenate([np.arange(nv), np.repeat(facet_dofs, 2)])
    cols = np.concatenate([np.arange(nv), mesh.facets.T.ravel()])
    vals = np.concatenate([np.ones(nv), np.full(2 * ne, 0.5)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(ops.N, nv))


# ===================================================================================================== dataset
NS_DEFAULTS = {"Re": 100.0, "U": 1.0, "dt": 0.00125, "dt_snap": 0.05, "warmup": 6.0, "settle": 0.5,
               "phase_window": 1.0, "ramp": 0.5, "omega0_max": 1.0, "omega1_max": 0.5, "refine": 0}


def check_ns_params(**kw) -> dict:
    """The solver options (`NS_DEFAULTS` updated by kw); ValueError (one line) for an unknown or bad option."""
    unknown = sorted(set(kw) - set(NS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown Navier-Stokes option(s) {unknown}; available: {sorted(NS_DEFAULTS)}")
    o = {**NS_DEFAULTS, **kw}
    for k in ("Re", "U", "dt", "dt_snap", "warmup", "phase_window"):
        if not float(o[k]) > 0:
            raise ValueError(f"Navier-Stokes option {k} must be > 0, got {o[k]}")
    for k in ("settle", "ramp", "omega0_max", "omega1_max"):
        if not float(o[k]) >= 0:
            raise ValueError(f"Navier-Stokes option {k} must be >= 0, got {o[k]}")
    if int(o["refine"]) != o["refine"] or not 0 <= o["refine"] <= 2:
        raise ValueError(f"Navier-Stokes option refine must be 0, 1 or 2, got {o['refine']}")
    for k in ("dt_snap", "warmup") + (("settle",) if o["settle"] > 0 else ()):
        _steps(float(o[k]), float(o["dt"]))
    return {k: (int(v) if k == "refine" else float(v)) for k, v in o.items()}


def make_ns_dataset(n_traj: int, n_steps: int, n_nodes: int = 600, n_ring: int = 40, centre=(0.3, 0.5),
                    radius: float = 0.1, seed: int = 0, with_reference: bool = True, **options) -> tuple:
    """(data (n_traj, n_steps, n_nodes, 5) float32 tensor, flows (n_traj, n_steps, 6) NaN, reference) in the
    `cylinder_flow.make_potential_dataset` layout; reference = (points (P, 2), triangles, values (n_traj, n_steps,
    P, 3) float32) or None. options: `NS_DEFAULTS` (omega0_max, omega1_max: the rotation amplitudes a0, a1 in units
    of U / R; the time options in unit-square time units)."""
    import torch

    from datamodules.cylinder_flow import OFFICIAL_SCALE, cylinder_mesh

    o = check_ns_params(**options)
    Re, U, dt, dt_snap, warmup, settle = (float(o[k]) for k in ("Re", "U", "dt", "dt_snap", "warmup", "settle"))
    phase_window, ramp, omega0_max, omega1_max = (float(o[k]) for k in ("phase_window", "ramp", "omega0_max",
                                                                        "omega1_max"))
    refine = int(o["refine"])
    pos, tri = cylinder_mesh(n_nodes, n_ring, centre, radius, seed=seed)
    ns = CylinderNS(cylinder_solver_mesh(pos, tri, centre, radius, refine), Re, U, dt, centre, radius)
    om_unit = U / radius
    params, warmup_seeds = trajectory_draws(seed, n_traj, omega0_max, omega1_max)
    starts = _warmup_states(ns, warmup, phase_window, warmup_seeds)
    snap_every = _steps(dt_snap, dt)
    n_settle = _steps(settle, dt) if settle > 0 else 0
    s = starts
    data = np.empty((n_traj, n_steps, n_nodes, 5), np.float32)
    data[..., :2] = pos / OFFICIAL_SCALE
    ref = None
    if with_reference:
        ref_pts, ref_tri, _ = reference_mesh(ns)
        ref = (ref_pts, ref_tri, np.empty((n_traj, n_steps, len(ref_pts), 3), np.float32))
    total = n_settle + (n_steps - 1) * snap_every
    k_snap = 0
    for k in range(total + 1):
        if k >= n_settle and (k - n_settle) % snap_every == 0:
            data[:, k_snap, :, 2:] = ns.nodal(s, n_nodes)
            if ref is not None:
                ref[2][:, k_snap] = _reference_values(s, ns)
            k_snap += 1
        if k == total:
            break
        t = (k + 1) * dt
        r = _ramp(t, ramp)
        omega = om_unit * r * (params[:, 0] + params[:, 1] * np.sin(2 * np.pi * params[:, 2] * t + params[:, 3]))
        s = ns.step(s, omega)
    if not np.all(np.isfinite(data)):
        raise FloatingPointError(f"Navier-Stokes run diverged (Re={Re}, dt={dt}): reduce dt")
    return torch.from_numpy(data), np.full((n_traj, n_steps, 6), np.nan), ref


def trajectory_draws(seed: int, n_traj: int, omega0_max: float, omega1_max: float) -> tuple[np.ndarray, np.ndarray]:
    """The random draws of `make_ns_dataset`'s trajectories (generator seeded with seed + 1): rotation parameters
    (n_traj, 4) = (a0, a1, frequency, phase) of omega(t) = (U / R) (a0 + a1 sin(2 pi f t + phase)), then the seeds
    (n_traj,) of the warm-up phases. One place, so a run that restarts from a dataset's state draws the same."""
    rng = np.random.default_rng(seed + 1)
    params = np.stack([rng.uniform(-omega0_max, omega0_max, n_traj), rng.uniform(0, omega1_max, n_traj),
                       rng.uniform(0.5, 1.5, n_traj), rng.uniform(0, 2 * np.pi, n_traj)], 1)
    return params, rng.integers(0, 1 << 30, n_traj)


def _steps(T: float, dt: float) -> int:
    n = round(T / dt)
    if n < 1 or abs(n * dt - T) > 1e-6 * max(T, 1.0):
        raise ValueError(f"time {T} is not a whole number of steps dt={dt}")
    return n


def _ramp(t: float, T: float) -> float:
    """Smooth 0 -> 1 over [0, T] (C1: (1 - cos(pi t / T)) / 2)."""
    if T <= 0 or t >= T:
        return 1.0
    return 0.5 * (1.0 - math.cos(math.pi * t / T))


def _warmup_states(ns: CylinderNS, warmup: float, window: float, picks: np.ndarray) -> _State:
    """One fixed-cylinder run of `warmup` time units from rest (a rotation pulse omega = U / R sin(pi t / 0.5) over
    the first 0.5 time units breaks the symmetry); the state of trajectory b is the one at step picks[b] mod n_window
    of the last `window` time units (phases of the shedding cycle)."""
    n_warm = _steps(warmup, ns.dt)
    n_win = max(1, min(n_warm, round(window / ns.dt)))
    slot = np.asarray(picks) % n_win
    B = len(slot)
    s = ns.initial(1)
    out = ns.initial(B)
    fields = ("u", "v", "p", "u_old", "v_old")
    conv = [np.zeros((ns.ops.N, B)), np.zeros((ns.ops.N, B))]
    for k in range(n_warm):
        t = (k + 1) * ns.dt
        om = ns.U / ns.radius * math.sin(math.pi * t / 0.5) if t < 0.5 else 0.0
        s = ns.step(s, np.array([om]))
        j = k - (n_warm - n_win)
        if j >= 0 and np.any(slot == j):
            sel = slot == j
            for name in fields:
                getattr(out, name)[:, sel] = getattr(s, name)
            for c in range(2):
                conv[c][:, sel] = s.conv_old[c]
    out.conv_old = (conv[0], conv[1])
    return out
