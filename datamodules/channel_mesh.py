"""The DFG 2D flow-around-a-cylinder benchmark (Schaefer & Turek 1996, "Benchmark computations of laminar flow
around a cylinder"): geometry, a graded triangle mesh of the channel with the hole, and the solver set-up.

Geometry: channel [0, 2.2] x [0, 0.41], cylinder centre (0.2, 0.2), radius 0.05 (D = 0.1), nu = 1e-3, density 1,
parabolic inflow u = 4 U_m y (0.41 - y) / 0.41^2 (mean speed U = 2/3 U_m), no-slip walls and cylinder, do-nothing
outflow at x = 2.2. Case 2D-1: U_m = 0.3 (U = 0.2, Re = U D / nu = 20), steady; case 2D-2: U_m = 1.5 (U = 1,
Re = 100), periodic vortex shedding. Reference values `DFG_2D1` (Nabh / John's high-accuracy values quoted by the
FEATFLOW benchmark pages) and the ranges of the 1996 paper for 2D-2 (`DFG_2D2`).

Mesh (`channel_mesh`): points from a size function h(x) = min(h_far, h_rim + grading * (|x - c| - R)) with
h_rim = 2 pi R / n_rim: n_rim points on the circle (angles 2 pi k / n_rim, so (0.15, 0.2) and (0.25, 0.2), the
Delta p points, are vertices), rings of radius r_{k+1} = r_k + h(r_k) until the spacing reaches h_far, points
marched along the four sides with the local spacing, and a triangular lattice of spacing h_far filling the rest
(lattice points closer than 0.7 h_far to a ring or side point are dropped); scipy Delaunay, minus the triangles
inside the circle. `refine` uniform refinements project the new rim vertices onto the circle
(`cylinder_ns.cylinder_solver_mesh`). Default mesh: 887 vertices, 1,612 triangles, smallest angle 30 degrees.

Measured (forces `ns_forces.rim_forces`): 2D-1 see tests/test_ns_forces.py (C_D -0.35%, Delta p -0.15% on the
default mesh in ~1 s; -0.04% / -0.06% on 5,894 vertices). 2D-2 (steady Newton start, a rotation pulse over the first
0.25 time units, IMEX BDF2; maxima over the last 3 of 6-10 time units, shedding saturated by t ~ 5; St = f D / U
from the C_L signal):
| mesh                      | vertices | dt      | max C_D | max C_L | St     | step   |
| default                   |     887  | 5e-4    | 3.166   | 0.863   | 0.2855 |  8 ms  |
| h_far 0.02                |   2,803  | 5e-4    | 3.208   | 0.916   | 0.3014 | 34 ms  |
| n_rim 48, h_far 0.02      |   2,926  | 3e-4    | 3.209   | 0.946   | 0.3007 | 37 ms  |
| n_rim 64, h_far 0.015     |   5,091  | 2.5e-4  | 3.218   | 0.976   | 0.3018 | 37 ms  |
(reference: max C_D 3.2262-3.24, max C_L 0.986-1.01, St 0.295-0.305.) The explicit convection limits the step to
dt U_max / h_rim ~ 0.1 (dt 1e-3 diverges on the default mesh at Re 100; dt 0.01 is stable at Re 20).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import Delaunay, cKDTree

from datamodules.cylinder_ns import CylinderNS, cylinder_solver_mesh
from datamodules.ns_forces import force_coefficients, point_values, rim_forces

__all__ = [
    "DFG_2D1",
    "DFG_2D2",
    "DFG_BOX",
    "DFG_CENTRE",
    "DFG_NU",
    "DFG_RADIUS",
    "channel_mesh",
    "channel_points",
    "dfg_problem",
    "dfg_values",
]

DFG_BOX = (0.0, 2.2, 0.0, 0.41)
DFG_CENTRE = (0.2, 0.2)
DFG_RADIUS = 0.05
DFG_NU = 1e-3
DFG_2D1 = {"U": 0.2, "Re": 20.0, "cd": 5.57953523384, "cl": 0.010618948146, "dp": 0.11752016697}
DFG_2D2 = {"U": 1.0, "Re": 100.0, "cd_max": (3.22, 3.24), "cl_max": (0.99, 1.01), "st": (0.295, 0.305)}


def _march(a: np.ndarray, b: np.ndarray, size) -> np.ndarray:
    """Points from a to b (both included) on the segment with spacing ~ size(point), rescaled to end at b."""
    L = float(np.linalg.norm(b - a))
    s = [0.0]
    while s[-1] < L:
        s.append(s[-1] + float(size((a + (b - a) * s[-1] / L)[None])[0]))
    n = max(1, len(s) - 1 if s[-1] - L < 0.5 * (s[-1] - s[-2]) else len(s) - 2)
    t = np.asarray(s[:n + 1]) / s[n]
    return a + (b - a) * t[:, None]


def channel_points(n_rim: int = 32, h_far: float = 0.04, grading: float = 0.25, box=DFG_BOX, centre=DFG_CENTRE,
                   radius: float = DFG_RADIUS) -> np.ndarray:
    """Graded points (P, 2) of the rectangle box = (x0, x1, y0, y1) outside the circle (see the module docstring)."""
    x0, x1, y0, y1 = box
    c = np.asarray(centre, float)
    h_rim = 2 * math.pi * radius / n_rim

    def size(p: np.ndarray) -> np.ndarray:
        return np.minimum(h_far, h_rim + grading * np.maximum(np.linalg.norm(p - c, axis=1) - radius, 0.0))

    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
    sides = np.concatenate([_march(corners[k], corners[(k + 1) % 4], size)[:-1] for k in range(4)])
    ang = 2 * np.pi * np.arange(n_rim) / n_rim
    pts = [c + radius * np.stack([np.cos(ang), np.sin(ang)], 1)]
    r, k = radius, 0
    while True:
        h = float(size((c + [r, 0.0])[None])[0])
        if h >= h_far:
            break
        r, k = r + h, k + 1
        n = max(n_rim, round(2 * np.pi * r / h))
        a = 2 * np.pi * (np.arange(n) + 0.5 * (k % 2)) / n
        ring = c + r * np.stack([np.cos(a), np.sin(a)], 1)
        gap = np.minimum.reduce([ring[:, 0] - x0, x1 - ring[:, 0], ring[:, 1] - y0, y1 - ring[:, 1]])
        pts.append(ring[gap > 0.5 * size(ring)])
    fixed = np.concatenate(pts + [sides])
    ny = max(1, round((y1 - y0) / (h_far * math.sqrt(3) / 2)))
    ys = y0 + (y1 - y0) * np.arange(1, ny) / ny
    xs = np.arange(x0, x1 + h_far, h_far)
    lat = np.concatenate([np.stack([xs + 0.5 * h_far * (j % 2), np.full_like(xs, y)], 1) for j, y in enumerate(ys)])
    lat = lat[(lat[:, 0] > x0 + 0.5 * h_far) & (lat[:, 0] < x1 - 0.5 * h_far)]
    lat = lat[np.linalg.norm(lat - c, axis=1) > r + 0.5 * h_far]
    lat = lat[cKDTree(fixed).query(lat)[0] > 0.7 * h_far]
    return np.concatenate([fixed, lat])


def channel_mesh(n_rim: int = 32, h_far: float = 0.04, grading: float = 0.25, refine: int = 0, box=DFG_BOX,
                 centre=DFG_CENTRE, radius: float = DFG_RADIUS):
    """scikit-fem MeshTri of the channel with the hole: Delaunay of `channel_points` minus the triangles whose
    centroid is inside the circle, counter-clockwise, `refine` times refined (new rim vertices on the circle)."""
    pos = channel_points(n_rim, h_far, grading, box, centre, radius)
    tri = Delaunay(pos).simplices.astype(np.int64)
    cen = pos[tri].mean(1)
    tri = tri[np.linalg.norm(cen - np.asarray(centre), axis=1) > radius]
    p0, p1, p2 = pos[tri[:, 0]], pos[tri[:, 1]], pos[tri[:, 2]]
    area2 = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    tri = tri[np.abs(area2) > 1e-14 * h_far ** 2]
    flip = area2[np.abs(area2) > 1e-14 * h_far ** 2] < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return cylinder_solver_mesh(pos, tri, centre, radius, refine)


def dfg_problem(case: str = "2D-1", mesh=None, dt: float = 0.005, **mesh_kw) -> CylinderNS:
    """The DFG case "2D-1" (Re 20) or "2D-2" (Re 100) as a `CylinderNS` on `mesh` (default `channel_mesh(**mesh_kw)`)."""
    ref = {"2D-1": DFG_2D1, "2D-2": DFG_2D2}[case]
    mesh = channel_mesh(**mesh_kw) if mesh is None else mesh
    return CylinderNS(mesh, Re=ref["Re"], U=ref["U"], dt=dt, centre=DFG_CENTRE, radius=DFG_RADIUS, box=DFG_BOX)


def dfg_values(ns: CylinderNS, s, prev=None) -> dict[str, np.ndarray]:
    """The benchmark's quantities of a state s (B trajectories): C_D, C_L (`ns_forces.rim_forces`; prev the state
    the step to s started from, None for a steady state) and Delta p = p(0.15, 0.2) - p(0.25, 0.2), each (B,)."""
    cd, cl = force_coefficients(ns, rim_forces(ns, s, prev))
    p = point_values(ns.ops.pb, s.p, [[0.15, 0.2], [0.25, 0.2]])
    return {"cd": cd, "cl": cl, "dp": p[0] - p[1]}
