"""`mesh.locate` (brute-force point location of tangled meshes, in cache-sized chunks with preallocated buffers)
against the whole-chunk expressions it replaces (kept here): the same triangles and barycentric coordinates, bit for
bit, on tangled meshes with degenerate triangles and points outside the mesh."""
from __future__ import annotations

import numpy as np
import pytest

from lit_models.common import mesh as M


def _locate_reference(pos, tri, points, chunk=2048):
    p0, p1, p2 = pos[tri[:, 0]], pos[tri[:, 1]], pos[tri[:, 2]]
    det = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    det = np.where(np.abs(det) < 1e-300, 1e-300, det)
    tids, bary = np.empty(len(points), np.int64), np.empty((len(points), 3))
    for s in range(0, len(points), chunk):
        q = points[s:s + chunk]
        dx, dy = q[:, None, 0] - p0[None, :, 0], q[:, None, 1] - p0[None, :, 1]
        l1 = (dx * (p2[:, 1] - p0[:, 1]) - dy * (p2[:, 0] - p0[:, 0])) / det
        l2 = (dy * (p1[:, 0] - p0[:, 0]) - dx * (p1[:, 1] - p0[:, 1])) / det
        l0 = 1.0 - l1 - l2
        score = np.minimum(np.minimum(l0, l1), l2)
        t = np.argmax(score, axis=1)
        r = np.arange(len(q))
        tids[s:s + chunk] = t
        bary[s:s + chunk] = np.stack([l0[r, t], l1[r, t], l2[r, t]], 1)
    return tids, bary


@pytest.mark.parametrize("n,noise", [(35, 0.03), (12, 0.1), (6, 0.0)])
@pytest.mark.parametrize("chunk", [128, 7])
def test_locate_is_bit_for_bit(n, noise, chunk):
    rng = np.random.default_rng(n)
    pos, tri = M.unit_square_mesh(n)
    moved = pos + noise * rng.standard_normal(pos.shape)
    moved[::5] = moved[2]  # degenerate triangles
    pts = np.concatenate([M.random_points(700, 1), rng.uniform(-0.3, 1.3, (200, 2)), pos[:30]])
    new, old = M.locate(moved, tri, pts, chunk), _locate_reference(moved, tri, pts)
    np.testing.assert_array_equal(new[0], old[0])
    np.testing.assert_array_equal(new[1], old[1])
    empty = M.locate(moved, tri, pts[:0])
    assert empty[0].shape == (0,) and empty[1].shape == (0, 3)
