"""Flow around a cylinder on a triangular mesh for the data-free mesh mover's cylinder case (card
`data_free_mesh_mover`; official Peiyannn/MM-PDE `mesh/dmm.py --experiment cy`, `mesh/dmm_utils.py`).

File format (official `data/cylinder_rot_tri`, Google Drive link of the MM-PDE README, no stable URL or checksum):
one tensor saved with `torch.save`, shape (trajectories, time, nodes, 5), columns x, y and three fields. dmm.py
takes trajectories [:80] for training and [80:] for testing, drops the first 10 time steps, scales x, y by 2 (to the
unit square) and moves the mesh for the field in column 2; the node positions of the first frame are the mesh (the
same nodes in every frame; mmpde.py: 30 kept steps, 2,521 nodes). The file holds no connectivity: the triangles
here are the Delaunay triangulation of the nodes without the triangles that fill the hole (circumradius above
`hole_radius_factor` x the local node spacing, `delaunay_without_hole`). The official evaluation
(dmm_utils.evaluate_tri) keeps the full Delaunay triangulation, hole included; here the hole's triangles are
dropped so that the inverted / interpolation metrics see only fluid cells.

name="potential" (offline default, no download, no solver): the exact potential flow past a rotating cylinder in
a uniform stream, evaluated on a triangular mesh of the unit square with a circular hole, written in the file's
format (x, y in [0, 0.5] before the official x2 scaling; fields u, v, p). Per trajectory: speed U, inflow angle
theta, rotation (circulation) Gamma(t) = 2 pi R U (a0 + a1 sin(omega t + psi)); complex velocity
    u - i v = U (e^{-i theta} - e^{i theta} R^2 / zeta^2) - i Gamma / (2 pi zeta),  zeta = z - z0,
pressure p = (U^2 - |V|^2) / 2 (Bernoulli, rho = 1, quasi-steady: the flow at each time is the steady flow of that
instant's circulation; the unsteady term is not included). Exact: divergence- and curl-free, no penetration on the
cylinder, circulation Gamma around it (tests). The mesh: square boundary nodes, `n_ring` nodes on the circle and
interior nodes by farthest-point sampling of a fine candidate set (exactly `n_nodes` nodes), Delaunay minus the hole
(the same pipeline as the file).

name="navier_stokes" (offline, solver-made, no download): incompressible Navier-Stokes past a rotating cylinder on the
same mesh (`datamodules.cylinder_ns`: Taylor-Hood P2-P1, IMEX BDF2, Re 100 by default, per-trajectory rotation
omega(t), developed vortex shedding), in the same file format. No exact field: "flow" is NaN and the interpolation
reference is the P2 solution as a P1 field on the midpoint-refined mesh with the hole filled (items "ref_pos",
"ref_tri", "ref_val"). The data are generated once and cached (.npz, written to a temporary name and renamed) under
`data_dir` (default the download cache's `cylinder_ns/`), keyed by every generator parameter.

Monitor (official sample_train_data_tri / evaluate_tri): u at the nodes is extended to the whole square (hole
included) by the official softmax-kernel interpolant u(x) = sum_j w_j u_j, w = softmax(-sqrt(V) |x - x_j|); its exact
gradient on an n x n uniform grid (n = int(sqrt(V)), `monitor_res`) gives m = 1 + |grad u| / (monitor_scale alpha),
alpha the domain average of |grad u|, c the domain average of m. Difference: averages by the trapezoid rule (as the
Burgers / fronts data of `datamodules.meshes`; the official sum / (n - 1)^2 is ~4% larger at n = 50).

Items: "u" (V, 3) = [u, x, y] at the nodes (the GNN branch input; the kNN graph is built from x, y), "monitor"
(R, R) ([j, i] = (y_j, x_i)), "c" (), "tri" (T, 3) fluid triangles, "flow" (7,) = (U, theta, Gamma, x0, y0, R) of
the exact flow in unit-square coordinates (NaN for file data: no exact field, no interpolation-error metric) and the
moved field's index among (u, v, p), for "navier_stokes" "ref_pos" (P, 2), "ref_tri" (RT, 3), "ref_val" (P,) the
solver's reference field, "rim_pos" / "rim_normal" (N, 2) the hole's rim nodes and their normals (for the
optional, non-official hole loss `model.w_hole`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from scipy.spatial import Delaunay, cKDTree
from torch.utils.data import DataLoader, Dataset

from datamodules.meshes import epoch_loader
from datamodules.resumable import CheckpointedShuffle
from datamodules.samplers import eval_sampler
from launch.errors import UserError
from lit_models.common import mesh as M

__all__ = ["CylinderFlowDataModule", "potential_flow", "potential_velocity_gradient", "cylinder_mesh", "make_potential_dataset",
           "load_cylinder_rot_tri", "delaunay_without_hole", "hole_boundary_edges", "rim_normals", "kernel_interpolant",
           "cylinder_monitor", "cached_ns_dataset", "FLOW_COLUMNS"]

FLOW_COLUMNS = ("x", "y", "u", "v", "p")
OFFICIAL_N_TRAIN = 80      # dmm.py: trajectories [:80] train, [80:] test
OFFICIAL_DROP = 10         # dmm.py: time steps [10:]
OFFICIAL_SCALE = 2.0       # dmm.py: x, y * 2 -> unit square


# ============================================================================================ exact flow + mesh
def _zeta(p: np.ndarray, flow) -> tuple[float, float, float, np.ndarray]:
    """(U, theta, Gamma, zeta = z - z0) of the potential flow at points p (..., 2); zeta kept off 0."""
    U, th, gam, x0, y0, _ = (float(f) for f in flow)
    zeta = (p[..., 0] - x0) + 1j * (p[..., 1] - y0)
    return U, th, gam, np.where(np.abs(zeta) < 1e-12, 1e-12, zeta)


def potential_flow(p: np.ndarray, flow) -> np.ndarray:
    """(u, v, p) (..., 3) of the potential flow past a rotating cylinder at points p (..., 2) (unit-square
    coordinates); flow = (U, theta, Gamma, x0, y0, R)."""
    U, th, gam, zeta = _zeta(p, flow)
    R = float(flow[5])
    w = U * (np.exp(-1j * th) - np.exp(1j * th) * R**2 / zeta**2) - 1j * gam / (2 * np.pi * zeta)  # u - i v
    u, v = w.real, -w.imag
    return np.stack([u, v, 0.5 * (U**2 - (u**2 + v**2))], -1)


def potential_velocity_gradient(p: np.ndarray, flow) -> np.ndarray:
    """Exact velocity gradient (..., 2, 2) [[u_x, u_y], [v_x, v_y]] of `potential_flow`: with w = u - i v analytic,
    w' = 2 U e^{i theta} R^2 / zeta^3 + i Gamma / (2 pi zeta^2), u_x = -v_y = Re w', u_y = v_x = -Im w'."""
    U, th, gam, zeta = _zeta(p, flow)
    R = float(flow[5])
    dw = 2 * U * np.exp(1j * th) * R**2 / zeta**3 + 1j * gam / (2 * np.pi * zeta**2)
    a, b = dw.real, -dw.imag
    return np.stack([np.stack([a, b], -1), np.stack([b, -a], -1)], -2)


def _square_boundary(n_side: int) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n_side)[:-1]
    return np.concatenate([np.stack([s, np.zeros_like(s)], 1), np.stack([np.ones_like(s), s], 1),
                           np.stack([1 - s, np.ones_like(s)], 1), np.stack([np.zeros_like(s), 1 - s], 1)])


def cylinder_mesh(n_nodes: int = 600, n_ring: int = 40, centre=(0.3, 0.5), radius: float = 0.1,
                  n_side: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (n_nodes, 2) in the unit square outside the circle and fluid triangles (T, 3) (counter-clockwise):
    boundary nodes (n_side per side; default ~sqrt(n_nodes)), n_ring nodes on the circle, the rest by farthest-point
    sampling of 40 x n_nodes uniform candidates in the fluid (exact node count); Delaunay minus the hole."""
    n_side = n_side or max(3, int(round(math.sqrt(n_nodes))))
    c = np.asarray(centre, float)
    ang = 2 * np.pi * np.arange(n_ring) / n_ring
    fixed = np.concatenate([_square_boundary(n_side), c + radius * np.stack([np.cos(ang), np.sin(ang)], 1)])
    n_free = n_nodes - len(fixed)
    if n_free < 1:
        raise ValueError(f"n_nodes={n_nodes} must exceed the {len(fixed)} boundary + ring nodes")
    rng = np.random.default_rng(seed)
    cand = rng.random((40 * n_nodes, 2))
    spacing = 1.0 / (n_side - 1)
    cand = cand[np.linalg.norm(cand - c, axis=1) > radius + 0.3 * spacing]
    cand = cand[(cand.min(1) > 0.3 * spacing) & (cand.max(1) < 1 - 0.3 * spacing)]
    d = cKDTree(fixed).query(cand)[0]
    chosen = np.empty(n_free, np.int64)
    for k in range(n_free):  # farthest-point sampling: a quasi-uniform interior
        i = int(np.argmax(d))
        chosen[k] = i
        d = np.minimum(d, np.linalg.norm(cand - cand[i], axis=1))
    pos = np.concatenate([fixed, cand[chosen]])
    return pos, delaunay_without_hole(pos)


def delaunay_without_hole(pos: np.ndarray, radius_factor: float = 1.5, k: int = 2) -> np.ndarray:
    """Delaunay triangles (T, 3), counter-clockwise, without those inside a hole: a triangle is dropped when its
    circumradius exceeds `radius_factor` x the largest k-th-nearest-neighbour distance of its three nodes (the mesh
    file has no connectivity; Delaunay fills the hole with triangles whose circumcircle is the hole's size, e.g. all
    triangles of nodes on a circle have the circle's radius, while a fluid cell's circumradius is ~ its node
    spacing). Measured on the offline meshes (120-1,200 nodes, 16-60 on the circle, 3 seeds each): the ratio is
    <= 1.14 for fluid triangles and >= 2.56 for hole triangles with k = 2 (k = 3: hole >= 1.31, too close); assumed
    to hold for the official mesh (not available here). Degenerate (zero-area) triangles are dropped too."""
    tri = Delaunay(pos).simplices.astype(np.int64)
    h = cKDTree(pos).query(pos, k=k + 1)[0][:, -1]
    p0, p1, p2 = pos[tri[:, 0]], pos[tri[:, 1]], pos[tri[:, 2]]
    a, b, c = (np.linalg.norm(p1 - p2, axis=1), np.linalg.norm(p2 - p0, axis=1), np.linalg.norm(p0 - p1, axis=1))
    area2 = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0])
    ok = np.abs(area2) > 1e-14
    circum = np.where(ok, a * b * c / (2 * np.abs(area2) + 1e-300), np.inf)  # R = abc / (4 area)
    keep = ok & (circum <= radius_factor * h[tri].max(1))
    tri, area2 = tri[keep], area2[keep]
    flip = area2 < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return tri


def hole_boundary_edges(pos: np.ndarray, tri: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Boundary edges (E, 2) of the triangulation that do not lie on the unit square's sides (the hole's rim)."""
    b = np.sort(M.boundary_edges(tri)[1], axis=1)
    p, q = pos[b[:, 0]], pos[b[:, 1]]
    on_side = np.zeros(len(b), bool)
    for col in (0, 1):
        for val in (0.0, 1.0):
            on_side |= (np.abs(p[:, col] - val) < tol) & (np.abs(q[:, col] - val) < tol)
    return b[~on_side]


def rim_normals(pos: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hole's rim nodes (N,) and their unit normals (N, 2) (perpendicular to the chord between the node's two rim
    neighbours; the sign is arbitrary)."""
    e = hole_boundary_edges(pos, tri)
    nodes = np.unique(e)
    nbrs: dict[int, list[int]] = {int(i): [] for i in nodes}
    for a, b in e:
        nbrs[int(a)].append(int(b))
        nbrs[int(b)].append(int(a))
    normals = np.zeros((len(nodes), 2))
    for k, i in enumerate(nodes):
        nb = nbrs[int(i)]
        t = pos[nb[-1]] - pos[nb[0]] if len(nb) >= 2 else pos[nb[0]] - pos[i]
        normals[k] = np.array([t[1], -t[0]]) / max(np.linalg.norm(t), 1e-300)
    return nodes, normals


def make_potential_dataset(n_traj: int, n_steps: int, n_nodes: int = 600, n_ring: int = 40, centre=(0.3, 0.5),
                           radius: float = 0.1, seed: int = 0, dt: float = 0.1) -> tuple[torch.Tensor, np.ndarray]:
    """The offline data in the official file format: a float32 tensor (n_traj, n_steps, n_nodes, 5) with columns
    x, y (in [0, 0.5]: the file's frame before the official x2), u, v, p; and the flow parameters (n_traj, n_steps, 6)
    in unit-square coordinates. Per trajectory U ~ U[0.5, 1.5], theta ~ U[-pi/6, pi/6], a0 ~ U[-1, 1], a1 ~ U[0, 0.5],
    omega ~ U[1, 3], psi ~ U[0, 2 pi]; Gamma(t) = 2 pi R U (a0 + a1 sin(omega t + psi))."""
    pos, _ = cylinder_mesh(n_nodes, n_ring, centre, radius, seed=seed)
    rng = np.random.default_rng(seed + 1)
    data = np.empty((n_traj, n_steps, n_nodes, 5), np.float32)
    flows = np.empty((n_traj, n_steps, 6))
    t = dt * np.arange(n_steps)
    for i in range(n_traj):
        U, th = rng.uniform(0.5, 1.5), rng.uniform(-np.pi / 6, np.pi / 6)
        a0, a1, om, ps = rng.uniform(-1, 1), rng.uniform(0, 0.5), rng.uniform(1, 3), rng.uniform(0, 2 * np.pi)
        for k in range(n_steps):
            gam = 2 * np.pi * radius * U * (a0 + a1 * np.sin(om * t[k] + ps))
            flows[i, k] = (U, th, gam, centre[0], centre[1], radius)
            data[i, k, :, :2] = pos / OFFICIAL_SCALE
            data[i, k, :, 2:] = potential_flow(pos, flows[i, k])
    return torch.from_numpy(data), flows


# =============================================================================================== file loader
def load_cylinder_rot_tri(path: str | Path) -> torch.Tensor:
    """The official `cylinder_rot_tri` tensor (trajectories, time, nodes, 5), float32; one-line UserError for a
    missing, unreadable or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: cylinder data not found (download cylinder_rot_tri from the Google Drive link of "
                        f"the Peiyannn/MM-PDE README, mesh/data/, and pass data.data_dir or data.path)")
    try:
        a = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if first.startswith("Weights only load failed"):  # torch's multi-paragraph hint: unpickling failed
            first = "not a plain tensor pickle"
        raise UserError(f"{path}: not a readable torch-saved tensor ({type(err).__name__}: {first[:120]})") from None
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        raise UserError(f"{path}: expected a tensor (trajectories, time, nodes, 5), got {type(a).__name__}")
    if a.ndim != 4 or a.shape[-1] != 5 or min(a.shape) < 1:
        raise UserError(f"{path}: expected a tensor (trajectories, time, nodes, 5) with columns x, y and 3 fields, "
                        f"got shape {tuple(a.shape)}")
    if not (a.is_floating_point()):
        raise UserError(f"{path}: expected a floating-point tensor, got dtype {a.dtype}")
    a = a.float()
    if not torch.isfinite(a).all():
        raise UserError(f"{path}: the tensor holds NaN or infinite values")
    if a.shape[2] < 4:
        raise UserError(f"{path}: need at least 4 mesh nodes, got {a.shape[2]}")
    return a


# ===================================================================================================== monitor
def kernel_interpolant(nodes: torch.Tensor, values: torch.Tensor, query: torch.Tensor,
                       scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official softmax-kernel interpolant (dmm_utils.interpolate_tri) of node values (B, V) at query points
    (Q, 2) and its exact gradient: u(x) = sum_j w_j u_j, w = softmax_j(-s |x - x_j|), s = sqrt(V);
    grad u = sum_j w_j (u_j - u(x)) g_j, g_j = -s (x - x_j) / |x - x_j|. Returns (B, Q), (B, Q, 2)."""
    s = float(scale if scale is not None else math.sqrt(nodes.shape[0]))
    diff = query[:, None, :] - nodes[None]                          # (Q, V, 2)
    dist = diff.norm(dim=-1)
    w = torch.softmax(-s * dist, dim=-1)                            # (Q, V)
    g = -s * diff / dist.clamp_min(1e-12)[..., None]                # (Q, V, 2)
    u = values @ w.T                                                # (B, Q)
    wg = w[..., None] * g                                           # (Q, V, 2)
    grad = torch.einsum("bv,qvk->bqk", values, wg) - u[..., None] * wg.sum(1)[None]
    return u, grad


def _trapz_mean(f: torch.Tensor) -> torch.Tensor:
    n = f.shape[-1]
    w = torch.ones(n, dtype=f.dtype)
    w[0] = w[-1] = 0.5
    w = w / w.sum()
    return torch.einsum("...ij,i,j->...", f, w, w)


def cylinder_monitor(nodes: np.ndarray, values: np.ndarray, res: int, monitor_scale: float, chunk: int = 256,
                     with_gradient: bool = False) -> tuple[np.ndarray, ...]:
    """Monitor (N, res, res) on the uniform res x res grid of the unit square ([j, i] = (y_j, x_i)) and c (N,) for
    node values (N, V): m = 1 + |grad u| / (monitor_scale alpha), alpha and c domain averages (trapezoid rule).
    with_gradient: also grad u (N, 2, res, res) on that grid (the official uni_ux_, uni_uy_: the exact gradient of the
    kernel interpolant) and the monitor's normaliser monitor_scale alpha (N,), the pulled-back monitor's inputs."""
    s = torch.linspace(0.0, 1.0, res, dtype=torch.float64)
    X, Y = torch.meshgrid(s, s, indexing="xy")
    q = torch.stack([X, Y], -1).reshape(-1, 2)
    nd = torch.as_tensor(nodes, dtype=torch.float64)
    vals = torch.as_tensor(values, dtype=torch.float64)
    grads = torch.empty(len(vals), res * res, 2, dtype=torch.float64)
    for a in range(0, len(q), chunk):  # chunks of query points bound the (Q, V, 2) kernel arrays
        grads[:, a:a + chunk] = kernel_interpolant(nd, vals, q[a:a + chunk])[1]
    d = grads.norm(dim=-1).float().double().reshape(-1, res, res)  # |grad u| rounded to float32 as stored before
    norm = monitor_scale * _trapz_mean(d).clamp_min(1e-12)
    m = 1.0 + d / norm[:, None, None]
    out = (m.float().numpy(), _trapz_mean(m).float().numpy())
    if with_gradient:
        grad = grads.reshape(-1, res, res, 2).permute(0, 3, 1, 2).float().contiguous()
        out += (grad.numpy(), norm.numpy())
    return out


# ========================================================================================= Navier-Stokes cache
def cached_ns_dataset(folder: str | Path | None, **params) -> tuple[torch.Tensor, np.ndarray, tuple | None]:
    """`cylinder_ns.make_ns_dataset(**params)` through an .npz cache in `folder` (default: the download cache's
    `cylinder_ns/`) keyed by all parameters (`download.cached_npz`)."""
    from datamodules.cylinder_ns import make_ns_dataset
    from datamodules.download import cache_dir, cached_npz

    key = {**params, "v": 1}

    def make() -> dict[str, np.ndarray]:
        data, _, ref = make_ns_dataset(**params)
        extra = {"ref_pos": ref[0], "ref_tri": ref[1], "ref_val": ref[2]} if ref is not None else {}
        return {"data": data.numpy(), "key": np.array(json.dumps(key, sort_keys=True, default=str)), **extra}

    z = cached_npz(cache_dir() / "cylinder_ns" if folder is None else folder, "cylinder_ns", key, make)
    data = torch.from_numpy(z["data"])
    ref = (z["ref_pos"], z["ref_tri"], z["ref_val"]) if "ref_val" in z else None
    return data, np.full(tuple(data.shape[:2]) + (6,), np.nan), ref  # no exact field: flows NaN


# ================================================================================================ datamodule
class _Frames(Dataset):
    def __init__(self, u: np.ndarray, pos: np.ndarray, monitor: np.ndarray, c: np.ndarray, tri: np.ndarray,
                 flows: np.ndarray, field: int, ref: tuple | None = None,
                 gradient: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.u, self.monitor, self.c, self.flows, self.field = u, monitor, c, flows, field
        self.gradient = gradient  # (grad u (N, 2, R, R), monitor_scale alpha (N,)) with data.with_gradient
        self.ref = None if ref is None else (torch.tensor(ref[0], dtype=torch.float32),
                                             torch.tensor(ref[1], dtype=torch.long), ref[2])
        self.pos = torch.tensor(pos, dtype=torch.float32)
        self.tri = torch.tensor(tri, dtype=torch.long)
        rim, normals = rim_normals(pos, tri)
        self.rim_pos = self.pos[torch.as_tensor(rim, dtype=torch.long)]
        self.rim_normal = torch.tensor(normals, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        u = torch.tensor(self.u[i], dtype=torch.float32)[:, None]
        item = {"u": torch.cat([u, self.pos], 1), "monitor": torch.tensor(self.monitor[i]),
                "c": torch.tensor(self.c[i]), "tri": self.tri, "rim_pos": self.rim_pos, "rim_normal": self.rim_normal,
                "flow": torch.tensor(np.append(self.flows[i], self.field - 2)),
                "index": torch.tensor(i)}  # seeds the frame's evaluation points (DataFreeMeshMoverModule)
        if self.ref is not None:
            item |= {"ref_pos": self.ref[0], "ref_tri": self.ref[1],
                     "ref_val": torch.tensor(self.ref[2][i], dtype=torch.float32)}
        if self.gradient is not None:
            item |= {"grad": torch.tensor(self.gradient[0][i]), "monitor_norm": torch.tensor(self.gradient[1][i])}
        return item


class CylinderFlowDataModule(CheckpointedShuffle, L.LightningDataModule):
    """Flow around a cylinder for the DMM's GNN branch (see the module docstring).

    name: "potential" (offline exact potential flow) | "navier_stokes" (offline, `datamodules.cylinder_ns`; cached
    under `data_dir`, default the download cache) | "cylinder_rot_tri" (the official file in `data_dir` or `path`).
    ns: options of the Navier-Stokes generator (`cylinder_ns.NS_DEFAULTS`: Re, U, dt, dt_snap, warmup, ...).
    n_nodes: the mesh's node count (the GNN branch's output MLP reads all nodes: official 2,521); the file
    must match it. field: the column moved for (official 2). n_train_traj: the train / test split of the
    trajectories (official 80); drop_first: leading time steps dropped (official 10). n_traj / n_steps / n_ring /
    centre / radius: the offline generator (unit-square coordinates). monitor_res: the monitor grid (null: int(sqrt(V)),
    official). batch_size / steps_per_epoch / passes_per_epoch: as `datamodules.meshes.FrontFieldDataModule`.
    n_test_frames: at most this many test frames (evenly spaced; null: all). with_gradient: items also carry "grad"
    (2, R, R), grad u of the kernel interpolant on the monitor grid, and "monitor_norm" (monitor_scale alpha), for the
    official pulled-back monitor (model.monitor_gradient=pulled_back)."""

    def __init__(self, name: str = "potential", n_nodes: int = 600, n_ring: int = 40, centre: tuple = (0.3, 0.5),
                 radius: float = 0.1, n_traj: int = 24, n_steps: int = 16, n_train_traj: int = 20,
                 drop_first: int = 10, field: int = 2, monitor_res: int | None = None, monitor_scale: float = 0.01,
                 hole_radius_factor: float = 1.5, batch_size: int = 8, steps_per_epoch: int | None = 50,
                 passes_per_epoch: float = 1.0, n_test_frames: int | None = 16, data_dir: str | None = None,
                 path: str | None = None, ns: dict | None = None, with_gradient: bool = False, seed: int = 0) -> None:
        super().__init__()
        if name not in ("potential", "navier_stokes", "cylinder_rot_tri"):
            raise UserError(f"data.name: unknown cylinder dataset {name!r}; available: potential (offline), "
                            "navier_stokes (offline), cylinder_rot_tri")
        if name == "navier_stokes":
            from datamodules.cylinder_ns import check_ns_params

            try:
                check_ns_params(**dict(ns or {}))
            except ValueError as err:
                raise UserError(f"data.ns: {err}") from None
        if field not in (2, 3, 4):
            raise UserError(f"data.field must be a field column 2, 3 or 4 (x, y are 0, 1), got {field}")
        if monitor_scale <= 0 or batch_size < 1 or passes_per_epoch <= 0 or drop_first < 0:
            raise UserError("data: need monitor_scale > 0, batch_size >= 1, passes_per_epoch > 0, drop_first >= 0")
        self.save_hyperparameters()
        self.batch_size, self.steps_per_epoch, self.seed = batch_size, steps_per_epoch, seed
        self.train_set: _Frames | None = None
        self.test_set: _Frames | None = None
        self.pos: np.ndarray | None = None
        self.tri: np.ndarray | None = None
        self._ref: tuple | None = None  # the Navier-Stokes interpolation reference (points, triangles, values)

    def _raw(self) -> tuple[torch.Tensor, np.ndarray]:
        hp = self.hparams
        self._ref = None
        if hp.name == "potential":
            return make_potential_dataset(hp.n_traj, hp.n_steps, hp.n_nodes, hp.n_ring, tuple(hp.centre), hp.radius,
                                          seed=self.seed)
        if hp.name == "navier_stokes":
            from datamodules.cylinder_ns import check_ns_params

            try:
                data, flows, self._ref = cached_ns_dataset(
                    hp.data_dir, n_traj=hp.n_traj, n_steps=hp.n_steps, n_nodes=hp.n_nodes, n_ring=hp.n_ring,
                    centre=[float(c) for c in hp.centre], radius=float(hp.radius), seed=self.seed,
                    **check_ns_params(**dict(hp.ns or {})))
            except FloatingPointError as err:
                raise UserError(f"data.ns: {err}") from None
            return data, flows
        src = Path(hp.path) if hp.path else Path(hp.data_dir or ".") / "cylinder_rot_tri"
        a = load_cylinder_rot_tri(src)
        if a.shape[2] != hp.n_nodes:
            raise UserError(f"{src}: {a.shape[2]} mesh nodes, but data.n_nodes={hp.n_nodes} (the GNN branch reads "
                            f"every node): set data.n_nodes={a.shape[2]}")
        return a, np.full(a.shape[:2] + (6,), np.nan)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        a, flows = self._raw()
        n_traj, n_t = a.shape[:2]
        if n_t <= hp.drop_first:
            raise UserError(f"cylinder data: {n_t} time steps, but drop_first={hp.drop_first} drops them all")
        if not 0 < hp.n_train_traj < n_traj:
            raise UserError(f"cylinder data: n_train_traj={hp.n_train_traj} must split the {n_traj} trajectories")
        pos = a[0, 0, :, :2].double().numpy() * OFFICIAL_SCALE
        self.pos, self.tri = pos, delaunay_without_hole(pos, hp.hole_radius_factor)
        res = hp.monitor_res or int(math.sqrt(pos.shape[0]))

        def frames(sl: slice, limit: int | None) -> _Frames:
            u = a[sl, hp.drop_first:, :, hp.field].reshape(-1, a.shape[2]).numpy()
            fl = flows[sl, hp.drop_first:].reshape(-1, 6)
            ref = None
            if self._ref is not None:
                rv = self._ref[2][sl, hp.drop_first:, :, hp.field - 2]
                ref = (self._ref[0], self._ref[1], rv.reshape(-1, rv.shape[-1]))
            if limit is not None and len(u) > limit:
                idx = np.linspace(0, len(u) - 1, limit).round().astype(int)
                u, fl = u[idx], fl[idx]
                ref = None if ref is None else (ref[0], ref[1], ref[2][idx])
            m, c, *gradient = cylinder_monitor(pos, u, res, hp.monitor_scale, with_gradient=hp.with_gradient)
            return _Frames(u, pos, m, c, self.tri, fl, hp.field, ref, tuple(gradient) or None)

        self.train_set = frames(slice(0, hp.n_train_traj), None)
        self.test_set = frames(slice(hp.n_train_traj, None), hp.n_test_frames)

    def train_dataloader(self) -> DataLoader:
        return epoch_loader(self.train_set, self.batch_size, self, self.seed, self.steps_per_epoch,
                            self.hparams.passes_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=len(self.test_set), sampler=eval_sampler(self.test_set))

    def test_dataloader(self) -> DataLoader:  # one batch: min det / max displacement metrics are not batch means
        return self.val_dataloader()
