"""Reader for the UM2N Helmholtz training sets (card `um2n`; official code mesh-adaptation/UM2N).

The released datasets (Google Drive folder linked from the UM2N README, no checksum published) are written by the
official `MeshProcessor.save_taining_data` (`UM2N/processor/processor.py`) and read by its `MeshDataset`
(`UM2N/loader/dataset.py`). Layout, per `script/build_helmholtz_square.py`:

    <root>/helmholtz/z=<0,1>_ndist=None_max_dist=6_lc=0.05_n=300_aniso_full_meshtype_6/
        data/   all samples          data_0000.npy ... data_0299.npy
        train/  the first 75 %       (copies of data/)
        test/   the next 15 %
        val/    the last 10 %

(the released config `MRT_largeset_small_scale_type_6_coord_area_only.yaml` trains on the `train/` folders of the
lc = 0.05 and lc = 0.055 sets and evaluates on their `test/` folders). Each `data_<i>.npy` is a 0-d object array
holding one pickled dict (`np.load(path, allow_pickle=True).item()`). The keys read here (V nodes, T triangles,
E undirected edges):

    coord          (V, 2) float   node positions of the original (reference) mesh, the network's input mesh
    y              (V, 2) float   node positions of the Monge-Ampere (MA) mesh moved by `movement` (the target),
                                  same node numbering as `coord`
    face_idxs      (T, 3) int     triangles (Firedrake `cell_node_list`; also stored as `cell_node_list`);
                                  orientation is not guaranteed counter-clockwise
    edge_index_bi  (2, 2E) int    mesh edges in both directions (`edge_index` (2, E) holds each edge once)
    monitor_val    (V, 1) float   monitor m = 1 + 5 ||H(u_h)||^2 / max ||H(u_h)||^2 (Hessian of the Helmholtz solution)
    bd_mask        (V, 1) int     1 on boundary nodes (Firedrake's "on_boundary" facets)
    bd_left_mask, bd_right_mask, bd_down_mask, bd_up_mask
                   (V, 1) int     1 where x == 0, x == 1, y == 0, y == 1 (unit square)

Other keys (ignored here): `x` (V, 2 + F) = coord followed by node features (u, grad u, Hessian, Jacobian, phi,
grad phi, f, monitor, ...), `pos` (= coord), `u`, `hessian_norm`, `conv_*` (20 x 20 resampled fields), `phi`,
`grad_phi`, `jacobian`, `jacobian_det`, the Gaussian source parameters (`σ_x`, `σ_y`, `μ_x`, `μ_y`, `z`, `w`,
`n_dist`, `use_iso`), `poly_mesh`, `duration`, `scale`.

Each sample becomes the torch_geometric `Data` layout of `datamodules.meshes` (the offline UM2N graphs):
    x (V, 4) [xi, eta, bd_mask, m / max m], pos (V, 2) = coord, edge_index (2, 2E) = edge_index_bi,
    face (3, T) = face_idxs re-oriented counter-clockwise on the reference mesh, y (V, 2) = y,
    x_fixed = left | right mask, y_fixed = down | up mask (the coordinate a boundary node keeps),
    kind (1,) = 2 (`KIND_FILE`: a target read from a file, no analytic field; the UM2N module evaluates it like the
    separable meshes: inversions, boundary, node RMSE), params (1, 4) NaN (no front-field parameters),
    n_side (1,) = boundary nodes per side (mean of the four sides, rounded), so the nominal cell width
    1 / (n_side - 1) matches lc (about 21 for lc = 0.05).

SECURITY: `np.load(..., allow_pickle=True)` runs the pickle inside the file, i.e. arbitrary code: load only files
from a source you trust (the authors' Google Drive folder or your own generation runs).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from datamodules.data_files import require_finite
from launch.errors import UserError
from lit_models.common import mesh as M

__all__ = ["KIND_FILE", "REQUIRED_KEYS", "sample_files", "read_sample", "sample_to_graph", "load_graphs"]

KIND_FILE = 2
SIDE_KEYS = ("bd_left_mask", "bd_right_mask", "bd_down_mask", "bd_up_mask")
REQUIRED_KEYS = ("coord", "y", "face_idxs", "edge_index_bi", "monitor_val", "bd_mask", *SIDE_KEYS)
_NAME = re.compile(r"data_(\d+)\.npy")


def sample_files(directory: str | Path) -> list[Path]:
    """The `data_<i>.npy` files of `directory`, sorted by the integer i (other names are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"UM2N Helmholtz data: directory {directory} not found (expected data_<i>.npy files there)")
    files = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_file()]
    if not files:
        raise UserError(f"UM2N Helmholtz data: no data_<i>.npy files in {directory}")
    return [p for _, p in sorted(files)]


def read_sample(path: str | Path) -> dict:
    """The pickled dict of one sample file (TRUSTED files only: unpickling runs code)."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's data problem
        raise UserError(f"{path}: not a readable .npy file ({type(err).__name__}: {_first_line(err)})") from None
    item = arr.item() if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == () else None
    if not isinstance(item, dict):
        what = f"array {arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise UserError(f"{path}: expected a pickled dict (0-d object array), got {what}")
    return item


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else ""


def _array(path: Path, d: dict, key: str, *, integer: bool = False) -> np.ndarray:
    value = d.get(key)
    if value is None and key == "face_idxs":  # the same array, stored under its Firedrake name too
        value = d.get("cell_node_list")
    if value is None:
        raise UserError(f"{path}: missing key {key!r} (keys present: {', '.join(sorted(map(str, d)))[:200]})")
    try:
        a = np.asarray(value)
    except Exception:  # noqa: BLE001
        raise UserError(f"{path}: key {key!r} is not an array") from None
    if integer and not np.issubdtype(a.dtype, np.integer):
        raise UserError(f"{path}: key {key!r} must hold integers, got dtype {a.dtype}")
    if not integer and (np.iscomplexobj(a) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool)):
        raise UserError(f"{path}: key {key!r} must be real numbers, got dtype {a.dtype}")  # complex: a float cast
        # would drop the imaginary part with only a warning
    return a


def _shape_error(path: Path, key: str, want: str, a: np.ndarray) -> UserError:
    return UserError(f"{path}: key {key!r} has shape {a.shape}, expected {want}")


def _node_column(path: Path, d: dict, key: str, n: int) -> np.ndarray:
    """A per-node scalar stored as (V, 1) (official) or (V,)."""
    a = _array(path, d, key)
    if a.shape not in ((n, 1), (n,)):
        raise _shape_error(path, key, f"({n}, 1) or ({n},)", a)
    return a.reshape(n)


def _mask(path: Path, d: dict, key: str, n: int) -> np.ndarray:
    a = _node_column(path, d, key, n)
    if not np.all((a == 0) | (a == 1)):
        raise UserError(f"{path}: key {key!r} must be a 0/1 mask")
    return a.astype(bool)


def sample_to_graph(d: dict, path: str | Path = "<sample>"):
    """Validate one sample dict (official key names) and convert it to the UM2N graph layout (module docstring)."""
    from torch_geometric.data import Data

    path = Path(path)
    coord = _array(path, d, "coord").astype(np.float64)
    if coord.ndim != 2 or coord.shape[1] != 2 or coord.shape[0] < 3:
        raise _shape_error(path, "coord", "(V, 2) with V >= 3", coord)
    n = coord.shape[0]
    target = _array(path, d, "y").astype(np.float64)
    if target.shape != (n, 2):
        raise _shape_error(path, "y", f"({n}, 2) like coord", target)
    tri = _array(path, d, "face_idxs", integer=True).astype(np.int64)
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.shape[0] < 1:
        raise _shape_error(path, "face_idxs", "(T, 3)", tri)
    edges = _array(path, d, "edge_index_bi", integer=True).astype(np.int64)
    if edges.ndim != 2 or edges.shape[0] != 2 or edges.shape[1] < 1:
        raise _shape_error(path, "edge_index_bi", "(2, 2E)", edges)
    for key, idx in (("face_idxs", tri), ("edge_index_bi", edges)):
        if idx.min() < 0 or idx.max() >= n:
            raise UserError(f"{path}: key {key!r} has node indices outside [0, {n})")
    monitor = _node_column(path, d, "monitor_val", n).astype(np.float64)
    for key, a in (("coord", coord), ("y", target), ("monitor_val", monitor)):
        require_finite(path, f"key {key!r}", a)
    if monitor.max() <= 0:
        raise UserError(f"{path}: key 'monitor_val' must have a positive maximum (monitor m >= 1 in the paper)")
    bd = _mask(path, d, "bd_mask", n)
    left, right, down, up = (_mask(path, d, k, n) for k in SIDE_KEYS)
    x_fixed, y_fixed = left | right, down | up
    if np.any(bd & ~(x_fixed | y_fixed)):
        raise UserError(f"{path}: {int(np.sum(bd & ~(x_fixed | y_fixed)))} boundary nodes (bd_mask) lie on no side of "
                        "the unit square (bd_left/right/down/up_mask): only unit-square meshes are supported")
    area = M.signed_areas(coord, tri)
    if np.any(area == 0):
        raise UserError(f"{path}: {int(np.sum(area == 0))} degenerate (zero-area) triangles in face_idxs on coord")
    tri = np.where((area < 0)[:, None], tri[:, [0, 2, 1]], tri)  # counter-clockwise on the reference mesh
    n_side = int(round(np.mean([m.sum() for m in (left, right, down, up)])))
    if n_side < 2:
        raise UserError(f"{path}: fewer than 2 nodes per side of the square in the boundary masks")
    feat = np.concatenate([coord, bd[:, None].astype(float), (monitor / monitor.max())[:, None]], 1)
    return Data(x=torch.tensor(feat, dtype=torch.float32), pos=torch.tensor(coord, dtype=torch.float32),
                edge_index=torch.tensor(edges, dtype=torch.long), face=torch.tensor(tri.T.copy(), dtype=torch.long),
                y=torch.tensor(target, dtype=torch.float32), x_fixed=torch.tensor(x_fixed),
                y_fixed=torch.tensor(y_fixed), kind=torch.tensor([KIND_FILE]),
                params=torch.full((1, 4), float("nan"), dtype=torch.float64), n_side=torch.tensor([n_side]))


def load_graphs(directory: str | Path) -> list:
    """All samples of one directory (e.g. `<dataset>/train`) as UM2N graphs, in file-index order. A corrupt file, a
    missing key or a wrong shape is a one-line UserError naming the file. TRUSTED files only (pickles run code)."""
    return [sample_to_graph(read_sample(p), p) for p in sample_files(directory)]
