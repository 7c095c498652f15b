"""Monge-Ampere meshes on any triangle mesh (unstructured, with holes) by P1 finite elements: the classical mesher
for domains the cosine-series solver (`monge_ampere.CosineMongeAmpere`, unit square only) cannot handle, e.g. the
flow-past-a-cylinder meshes of UM2N and DMM.

The relaxation method of McRae, Cotter & Budd ("Optimal-transport-based mesh adaptivity on the plane and sphere
using finite elements", SIAM J. Sci. Comput. 40(2), 2018; the `relaxation` variant of the `movement` package's
Monge-Ampere mover, the package UM2N's training meshes come from): x(xi) = xi + grad phi(xi) with
    m(x) det(I + H(phi)) = theta,   theta = int m(x) det(I + H) dxi / |Omega|,   grad phi . n = 0 on the boundary,
solved by the pseudo-time iteration
    (grad phi^{n+1}, grad psi) = (grad phi^n, grad psi) + tau (m(x^n) det(I + H^n) - theta^n, psi)   for all P1 psi,
a Laplacian-preconditioned relaxation whose fixed point is the MA equation (the Neumann condition is the natural
one; theta makes the right-hand side compatible). Discretisation (the paper projects with consistent mass matrices
and keeps the full boundary term of the Hessian; measured here with P1 data, the full term lands 2-5 cells off the
exact mesh, consistent mass 0.4-0.8 cells off on Delaunay meshes), so:
- the Hessian is the lumped weak Hessian of `_hessian_operators`, whose boundary term keeps only the tangential
  derivative (grad phi . n = 0 there); its trace is then exactly the stiffness Laplacian the iteration inverts, so
  the linearised relaxation is stable for tau < 2. It is exact for quadratics on structured meshes, inconsistent by
  ~10 % (median) on Delaunay meshes;
- grad phi at the nodes (the mesh map) is the gradient of the least-squares quadratic over each node's patch
  (`_quadratic_patch_gradient`): averaging element gradients gave tangled triangles on Delaunay meshes;
- the stiffness matrix is factorised once; the right-hand side uses the lumped mass.
Measured against exact (separable-monitor) MA meshes: node RMSE 0.04-0.09 cells on structured, 0.14-0.16 on
Delaunay meshes of the unit square, no tangled triangles, ~175 iterations (tests/test_monge_ampere_fem.py).
The moved nodes x = xi + grad phi keep the boundary: nodes on a straight side keep their normal coordinate (they
slide along it), corners and the nodes named `fixed` do not move, nodes on a circle (a cylinder's rim) slide along
it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lit_models.common import mesh as M


@dataclass
class MongeAmpereResult:
    """The moved nodes, the iterations taken and the equidistribution residual max |m det(I + H) / theta - 1| over
    the nodes (`residual`) and its median (`median_residual`) at the last iterate."""

    pos: np.ndarray
    iterations: int
    residual: float
    median_residual: float
    converged: bool


class FEMMongeAmpere:
    """The relaxation of the module docstring on the triangle mesh (ref, tri). `slide_x` / `slide_y`: boolean node
    masks of nodes on a side x = const / y = const (they keep that coordinate; a node in both is a corner);
    `fixed`: nodes that do not move; `circle` = (mask, centre, radius): nodes that slide along that circle (a hole's
    rim). `tau` scales the pseudo-time step tau / max(m / mean m) (stable below ~2)."""

    def __init__(self, ref: np.ndarray, tri: np.ndarray, slide_x: np.ndarray | None = None,
                 slide_y: np.ndarray | None = None, fixed: np.ndarray | None = None,
                 circle: tuple[np.ndarray, tuple[float, float], float] | None = None, tau: float = 0.5,
                 max_iter: int = 3000, tol: float = 1e-3, step_tol: float = 1e-9) -> None:
        from scipy.sparse import diags
        from scipy.sparse.linalg import splu

        if not 0 < tau or max_iter < 1 or not tol > 0:
            raise ValueError(f"need tau > 0, max_iter >= 1, tol > 0, got {tau}, {max_iter}, {tol}")
        self.ref = np.asarray(ref, np.float64)
        self.tri = np.array(tri, np.int64, copy=True)
        areas = M.signed_areas(self.ref, self.tri)
        if np.any(np.abs(areas) <= 1e-14 * float(np.abs(areas).max())):
            raise ValueError("the reference mesh has degenerate (zero-area) triangles")
        self.tri[areas < 0] = self.tri[areas < 0][:, [0, 2, 1]]  # counter-clockwise: the boundary normals need it
        n = len(self.ref)
        none = np.zeros(n, bool)
        self.slide_x = none if slide_x is None else np.asarray(slide_x, bool)
        self.slide_y = none if slide_y is None else np.asarray(slide_y, bool)
        self.fixed = none if fixed is None else np.asarray(fixed, bool)
        self.circle = None
        if circle is not None:
            mask, centre, radius = circle
            self.circle = (np.asarray(mask, bool), np.asarray(centre, np.float64), float(radius))
        self.tau, self.max_iter, self.tol, self.step_tol = tau, max_iter, tol, step_tol
        stiffness, self.mass = M.p1_stiffness_lumped_mass(self.ref, self.tri)
        self._hessian_operators()
        self._patch_gradient = _quadratic_patch_gradient(self.ref, self.tri)
        # Neumann problem: phi is defined up to a constant; a mass shift of 1e-10 x the stiffness scale fixes it
        shift = 1e-10 * float(stiffness.diagonal().mean()) / float(self.mass.mean())
        self._solve = splu((stiffness + diags(shift * self.mass)).tocsc()).solve
        self.area = float(self.mass.sum())

    @classmethod
    def unit_square(cls, ref: np.ndarray, tri: np.ndarray, **kwargs) -> FEMMongeAmpere:
        """Nodes on x = 0, 1 slide in y, nodes on y = 0, 1 slide in x, corners are fixed."""
        b = M.boundary_masks(ref)
        return cls(ref, tri, slide_x=b["x_fixed"], slide_y=b["y_fixed"], **kwargs)

    def _hessian_operators(self) -> None:
        """Operators of the weak Hessian (McRae et al.'s mixed Hessian with its boundary term, lumped): for node k,
            H_ij(k) mass_k = -sum_T |T| d_i psi_k g_T,j + sum_{boundary edges e at k} |e| / 2 n_i t_j (t . g_T(e)),
        g_T the constant gradient of phi on T, n and t the edge's outward normal and tangent. The boundary term keeps
        only the tangential derivative: grad phi . n = 0 there (the MA boundary condition), and with it the trace of
        H is exactly the stiffness Laplacian -K phi / mass that the relaxation inverts."""
        from scipy.sparse import coo_matrix

        p = self.ref[self.tri]
        signed = M.signed_areas(self.ref, self.tri)
        e = np.stack([p[:, 2] - p[:, 1], p[:, 0] - p[:, 2], p[:, 1] - p[:, 0]], 1)  # edge opposite vertex k
        grad_psi = np.stack([-e[..., 1], e[..., 0]], -1) / (2 * signed[:, None, None])  # (T, 3, 2)
        n_tri, n = len(self.tri), len(self.ref)
        rows = np.repeat(np.arange(n_tri), 3)
        self._grad = [coo_matrix((grad_psi[:, :, d].ravel(), (rows, self.tri.ravel())), shape=(n_tri, n)).tocsr()
                      for d in range(2)]  # g_T,d = (G_d phi)_T
        area = np.abs(signed)
        node_of = self.tri.ravel()
        self._interior = [coo_matrix(((-area[:, None] * grad_psi[:, :, i]).ravel(), (node_of, rows)),
                                     shape=(n, n_tri)).tocsr() for i in range(2)]
        # boundary edges: directed edges (a -> b) of the counter-clockwise triangles that no other triangle shares
        self._edge_owner, directed = M.boundary_edges(self.tri)
        self._edge_a, self._edge_b = directed[:, 0], directed[:, 1]
        d = self.ref[self._edge_b] - self.ref[self._edge_a]
        length = np.linalg.norm(d, axis=1)
        self._edge_t = d / length[:, None]
        self._edge_n = np.stack([self._edge_t[:, 1], -self._edge_t[:, 0]], 1)  # outward: the interior is on the left
        self._edge_w = 0.5 * length

    def hessian(self, phi: np.ndarray) -> np.ndarray:
        """The weak Hessian (V, 2, 2) of the P1 field phi (see `_hessian_operators`), symmetrised."""
        g = np.stack([self._grad[j] @ phi for j in range(2)], 1)  # (T, 2)
        tangential = np.sum(self._edge_t * g[self._edge_owner], 1) * self._edge_w  # (E,)
        n = len(self.ref)
        h = np.empty((n, 2, 2))
        for i in range(2):
            for j in range(2):
                w = tangential * self._edge_n[:, i] * self._edge_t[:, j]
                boundary = np.bincount(self._edge_a, w, n) + np.bincount(self._edge_b, w, n)
                h[:, i, j] = (self._interior[i] @ g[:, j] + boundary) / self.mass
        off = 0.5 * (h[:, 0, 1] + h[:, 1, 0])
        h[:, 0, 1] = h[:, 1, 0] = off
        return h

    def moved(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x = xi + grad phi (the quadratic-patch gradient at the nodes) with the boundary constraints, and the weak
        Hessian (V, 2, 2)."""
        g = np.stack([self._patch_gradient[d] @ phi for d in range(2)], 1)
        hess = self.hessian(phi)
        g[self.slide_x, 0] = 0.0
        g[self.slide_y, 1] = 0.0
        g[self.fixed] = 0.0
        x = self.ref + g
        if self.circle is not None:  # nodes on a circle slide along it: radial projection of xi + grad phi
            mask, centre, radius = self.circle
            d = x[mask] - centre
            x[mask] = centre + radius * d / np.linalg.norm(d, axis=1, keepdims=True)
        return x, hess

    def solve(self, monitor: Callable[[np.ndarray], np.ndarray], phi0: np.ndarray | None = None
              ) -> tuple[MongeAmpereResult, np.ndarray]:
        """Relax from phi0 (default 0: the reference mesh) until max |m det / theta - 1| < tol, or the update's
        largest nodal change < step_tol, or max_iter. `monitor(points (P, 2)) -> (P,)` > 0 in physical space.
        Returns the result and the potential phi (to warm-start the next solve)."""
        phi = np.zeros(len(self.ref)) if phi0 is None else np.array(phi0, np.float64, copy=True)
        scale = float(np.sum(self.mass * monitor(self.ref))) / self.area  # mean monitor: theta of the identity map
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError("the monitor must be positive and finite")
        it, res, med, converged = 0, np.inf, np.inf, False
        for it in range(1, self.max_iter + 1):
            x, hess = self.moved(phi)
            det = (1 + hess[:, 0, 0]) * (1 + hess[:, 1, 1]) - hess[:, 0, 1] ** 2
            m = monitor(x) / scale
            md = m * det
            theta = float(np.sum(self.mass * md)) / self.area
            rel = md / theta - 1.0
            res, med = float(np.max(np.abs(rel))), float(np.median(np.abs(rel)))
            if res < self.tol:
                converged = True
                break
            step = self.tau / float(np.max(m))
            delta = self._solve(step * self.mass * (md - theta))
            phi += delta
            if float(np.max(np.abs(delta))) < self.step_tol:
                break
        x, _ = self.moved(phi)
        return MongeAmpereResult(x, it, res, med, converged), phi


def nodal_monitor(ref: np.ndarray, tri: np.ndarray, values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A monitor given by nodal values on the reference mesh, evaluated at moved points by P1 interpolation (points
    that leave the mesh, e.g. into a hole, take the nearest triangle's extrapolation, floored at the smallest value)."""
    values = np.asarray(values, np.float64)
    low = float(values.min())

    def m(points: np.ndarray) -> np.ndarray:
        return np.maximum(M.interpolate_p1(ref, tri, values, points), low)

    return m


def _quadratic_patch_gradient(pos: np.ndarray, tri: np.ndarray):
    """Nodal gradient operators (two V x V CSR matrices): the gradient at node k of the least-squares quadratic
    through the values on k's patch, its neighbours (its two-ring where it has fewer than 6, e.g. on the boundary):
    a second-order recovery on unstructured meshes, where averaging the element gradients is only first order."""
    from scipy.sparse import coo_matrix, csr_matrix

    n = len(pos)
    edges = M.mesh_edges(tri)
    adj = csr_matrix((np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
                     shape=(n, n))
    one_ring = adj.tolil()
    two_ring = ((adj + adj @ adj) > 0).tolil()
    rows, cols, vals = [[], []], [[], []], [[], []]
    for k in range(n):
        nb = np.array(one_ring.rows[k])
        if len(nb) < 6:  # too few for a quadratic (boundary nodes): the two-ring patch
            nb = np.array([j for j in two_ring.rows[k] if j != k])
        d = pos[nb] - pos[k]
        h = np.sqrt(np.mean(np.sum(d**2, 1)))
        d = d / h  # scaled for conditioning
        A = np.stack([d[:, 0], d[:, 1], d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], 1)
        P = np.linalg.pinv(A)[:2] / h  # (2, len(nb)): gradient = P @ (phi[nb] - phi[k])
        for c in range(2):
            rows[c] += [k] * (len(nb) + 1)
            cols[c] += [*nb.tolist(), k]
            vals[c] += [*P[c].tolist(), -float(P[c].sum())]
    return [coo_matrix((vals[c], (rows[c], cols[c])), shape=(n, n)).tocsr() for c in range(2)]
