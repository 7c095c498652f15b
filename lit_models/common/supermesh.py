"""Exact, conservative L2 projection of a DG1 field between two triangle meshes of the same domain, by the supermesh
(the intersections of every source triangle with every target triangle it overlaps), as Firedrake's `project`
between non-matching 2-D meshes does (libsupermesh). UM2N's coupled swirl solve moves its solution between meshes
this way (`lit_models.pde.um2n_coupled`).

For a target triangle K and DG1 basis function phi_i^K,
    r_{K,i} = int_K u phi_i^K dx = sum_S int_{K cap S} u_S phi_i^K dx,
where u_S is the (linear) source field on the source triangle S. K cap S is convex (an intersection of two
triangles; Sutherland-Hodgman clipping of S by K's three edges, vectorised over all candidate pairs); the product
of two linear functions is quadratic, so the fan triangulation of each polygon with the three-edge-midpoint rule
integrates it exactly. `dg_advection.project` then applies the element inverse mass, u_new = M_K^{-1} r_K. Since
the constants lie in DG1, int u_new = int u to round-off wherever the meshes cover the same region (untangled
meshes of the same domain).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

MAX_VERTICES = 9  # a triangle clipped by three half-planes has at most 6 vertices; room to spare


def _cross(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(b - a) x (c - a) over the last axis (x, y): twice the signed area of the triangles (a, b, c)."""
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def _centroid_radius(pos: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (T, 2) and the radius (T,) of the centroid-centred circle holding the triangle."""
    p = pos[tri]
    c = p.mean(1)
    return c, np.linalg.norm(p - c[:, None], axis=-1).max(1)


def overlap_pairs(src_pos: np.ndarray, src_tri: np.ndarray, dst_pos: np.ndarray,
                  dst_tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source index, target index) of every pair of triangles whose bounding circles meet (a superset of the
    overlapping pairs; clipping discards the rest)."""
    cs, rs = _centroid_radius(src_pos, src_tri)
    ct, rt = _centroid_radius(dst_pos, dst_tri)
    near = cKDTree(cs).query_ball_point(ct, rt + rs.max())
    t_idx = np.repeat(np.arange(len(dst_tri)), [len(n) for n in near])
    s_idx = np.fromiter((i for n in near for i in n), np.int64, count=len(t_idx))
    keep = np.linalg.norm(cs[s_idx] - ct[t_idx], axis=1) <= rs[s_idx] + rt[t_idx] + 1e-12
    return s_idx[keep], t_idx[keep]


def clip_by_triangles(subject: np.ndarray, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sutherland-Hodgman: the intersections of triangles `subject` (N, 3, 2) with triangles `clip` (N, 3, 2), as
    polygons (N, MAX_VERTICES, 2) with vertex counts (N,) (count < 3: no overlap of positive area)."""
    n = len(subject)
    poly = np.zeros((n, MAX_VERTICES, 2))
    poly[:, :3] = subject
    count = np.full(n, 3)
    rows = np.arange(n)
    # orient each clip triangle counter-clockwise, so "inside" is the left of each directed edge
    ccw = _cross(clip[:, 0], clip[:, 1], clip[:, 2]) >= 0
    clip = np.where(ccw[:, None, None], clip, clip[:, ::-1])
    for e in range(3):
        p0, p1 = clip[:, e], clip[:, (e + 1) % 3]

        def side(q: np.ndarray, p0=p0, p1=p1) -> np.ndarray:  # > 0: left of the edge (inside)
            return _cross(p0, p1, q)

        out = np.zeros_like(poly)
        out_count = np.zeros(n, np.int64)
        for i in range(MAX_VERTICES):
            active = i < count
            if not active.any():
                break
            cur = poly[:, i]
            prev = poly[rows, (i - 1) % np.maximum(count, 1)]
            s_cur, s_prev = side(cur), side(prev)
            cur_in, prev_in = s_cur >= 0, s_prev >= 0
            cross = active & (cur_in != prev_in)
            if cross.any():
                t = s_prev[cross] / (s_prev[cross] - s_cur[cross])
                hit = prev[cross] + t[:, None] * (cur[cross] - prev[cross])
                r = rows[cross]
                out[r, out_count[r]] = hit
                out_count[r] += 1
            keep = active & cur_in
            r = rows[keep]
            out[r, out_count[r]] = cur[keep]
            out_count[r] += 1
        poly, count = out, out_count
    return poly, count


def _barycentric(tri_pts: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, M, 3) of points q (N, M, 2) in triangles tri_pts (N, 3, 2)."""
    a, b, c = tri_pts[:, None, 0], tri_pts[:, None, 1], tri_pts[:, None, 2]
    det = _cross(a, b, c)
    l1, l2 = _cross(a, q, c) / det, _cross(a, b, q) / det
    return np.stack([1 - l1 - l2, l1, l2], -1)


def supermesh_load(src_pos: np.ndarray, src_tri: np.ndarray, u: np.ndarray, dst_pos: np.ndarray,
                   dst_tri: np.ndarray) -> np.ndarray:
    """r (T_dst, 3): r_{K,i} = int_K u phi_i^K dx for the DG1 field u (T_src, 3) on (src_pos, src_tri) and the DG1
    basis on (dst_pos, dst_tri), exact (module docstring)."""
    src_pos, dst_pos = np.asarray(src_pos, np.float64), np.asarray(dst_pos, np.float64)
    s_idx, t_idx = overlap_pairs(src_pos, src_tri, dst_pos, dst_tri)
    src_pts, dst_pts = src_pos[src_tri[s_idx]], dst_pos[dst_tri[t_idx]]
    poly, count = clip_by_triangles(src_pts, dst_pts)
    r = np.zeros((len(dst_tri), 3))
    for j in range(1, MAX_VERTICES - 1):  # fan triangles (v0, v_j, v_{j+1}) of every polygon with > j + 1 vertices
        fan = count > j + 1
        if not fan.any():
            break
        v0, v1, v2 = poly[fan, 0], poly[fan, j], poly[fan, j + 1]
        area = 0.5 * np.abs(_cross(v0, v1, v2))
        mids = np.stack([(v0 + v1) / 2, (v1 + v2) / 2, (v2 + v0) / 2], 1)  # (F, 3, 2): exact for quadratics
        u_s = np.einsum("fmk,fk->fm", _barycentric(src_pts[fan], mids), u[s_idx[fan]])
        phi = _barycentric(dst_pts[fan], mids)  # (F, 3 points, 3 basis functions)
        np.add.at(r, t_idx[fan], (area / 3)[:, None] * np.einsum("fm,fmi->fi", u_s, phi))
    return r
