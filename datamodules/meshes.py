"""Mesh-movement data (cards `data_free_mesh_mover` and `um2n`): solution fields with steep fronts, their monitor
functions, and exact Monge-Ampere (MA) targets where they exist (separable monitors -> 1-D equidistribution).

``FrontFieldDataModule`` (DMM, data-free: the training data are solution fields only, never meshes)
  name="fronts" (offline default): u = tanh(k (n.x - c)) + 0.3 sin(2 pi y) on [0, 1]^2, k in {10, 20, 30}, c in
  [0.3, 0.7], n = (cos a, sin a): axis-aligned (a = 0) for a fraction `aligned_fraction` of the fields, otherwise
  a uniform in [0, 2 pi). Each field gives
    "u": (1, G, G) branch input on the G x G node grid (G = 48),
    "monitor": (R, R) the monitor m = 1 + |D u| / (monitor_scale * alpha), alpha = mean |D u| over the square, on the
      R x R node grid (R = 4 (G - 1) + 1, the paper's 4x sub-sampling), D u = grad u (`monitor_derivative="grad"`,
      the paper's code) or the derivative along the front normal (`"normal"`: |u_x| for axis-aligned fronts, the
      card's calibrated, separable monitor), from the exact gradient;
    "c": () the domain average of m (the MA constant);
    with `with_gradient` (needs monitor_derivative="grad") also "grad": (2, R, R) the gradient of u on the monitor
      grid and "monitor_norm": () monitor_scale * alpha, for the official pulled-back monitor
      m(J^T grad u(x(xi))) of the DMM loss (model.monitor_gradient="pulled_back").
  Test fields additionally carry "params" (k, c, angle, amp) and "aligned"; for axis-aligned fronts with a
  separable monitor ("normal") "target" (V, 2) is the exact MA mesh (1-D equidistribution) of the
  `eval_nodes` x `eval_nodes` mesh.
  name="burgers": the paper's 2-D Burgers file `burgers_192.npy` (official MM-PDE README, Google Drive, no stable
  URL or checksum): an array reshapable to (n_traj, T, 192, 192); trajectories [:80] train, the rest test; u is
  sub-sampled by 4 (192 -> 48) for the branch; the monitor uses forward differences on that 48 x 48 field (official
  dmm_utils, `burgers_monitor="branch"`) or periodic central differences on the full grid ("full").
  Pass `data_dir` containing the file (or `path`). No exact targets exist there ("target" absent).

``MeshGraphDataModule`` (UM2N: supervised by MA meshes, applied zero-shot)
  name="separable" (offline default): structured n x n unit-square triangulations, n in `train_sizes` (15, 20
  nodes per side), each with a random separable monitor m(x, y) = m1(x) m2(y), m_k(s) = 1 + A sum_j
  exp(-(s - c_j)^2 / (2 w_j^2)) (1-3 bumps, A in [2, 20], w in [0.02, 0.1], c in [0.1, 0.9]) and its exact MA
  mesh x = F1^{-1}(xi), y = F2^{-1}(eta). Graphs are torch_geometric `Data`:
    x (V, 4) [xi, eta, boundary mask, m / max m], pos (V, 2) reference nodes, edge_index (2, 2E) mesh edges both
    ways, face (3, T), y (V, 2) the target MA mesh, x_fixed / y_fixed (V,) which coordinate a boundary node keeps,
    kind (1,) 0 = separable bumps, 1 = front field, params (1, 4) (k, c, angle, amp) of a front field,
    n_side (1,) nodes per side.
  Test: `n_test_fronts` zero-shot front fields u = tanh(20 (x - c)) + 0.3 sin(2 pi y) with m = 1 + |u_x|/mean|u_x| on
  `test_size` (35) meshes, plus `n_test_bumps` held-out separable monitors on 20 x 20 meshes.
  `mesh="unstructured"` (training) / `test_mesh="unstructured"` (zero-shot tests) use Delaunay meshes of the square
  with the same boundary spacing (`M.unstructured_square_mesh`, Poisson-disc interior nodes, about n^2 nodes, one
  mesh per graph); the separable MA targets stay exact (node-wise maps) and n_side is then the boundary node count
  per side (nominal cell width 1 / (n_side - 1)).
  name="um2n_helmholtz": the paper's Firedrake/`movement` Helmholtz datasets (UM2N README, Google Drive, no checksum)
  read by `datamodules.um2n_helmholtz` (file format and key mapping there; the files are pickles: trusted files
  only). `data_dir` is one dataset folder (`z=<0,1>_ndist=None_max_dist=6_lc=0.05_n=300_aniso_full_meshtype_6`) or the
  folder holding the `dataset_dirs` (names relative to it); training graphs come from each dataset's `train_subdir`
  (train/), test graphs from its `test_subdir` (test/). Same graph layout as above with kind = 2 (target read from a
  file, params NaN, n_side = boundary nodes per side); n_train, train_sizes, mesh and the test_* keys are unused.
  name="helmholtz_offline": the same kind of data generated offline (`datamodules.helmholtz_offline`: the official
  random Helmholtz problems on Delaunay meshes with `train_sizes` nodes per side, P1 solution, the released sets'
  Hessian monitor, MA targets by the finite-element relaxation in place of `movement`; ~0.3 s a sample): n_train
  training graphs and n_train // 5 held-out test graphs (own seed stream; mesh and the test_* keys unused).
  `test_family="swirl"` replaces the test graphs (of any dataset) by the swirl snapshots below.

  test_family="swirl": the paper's swirl advection test (official `UM2N/generator/swirl_solver.py`,
  `script/build_swirl.py`, `script/make_dataset_swirl.sh`), offline: no DG solve; the solution at each snapshot time t
  in `swirl["times"]` is the exact one, u(x, t) = u0(X(0; x, t)) by RK4 characteristics (`M.swirl_solution`), and the
  monitor is the official one computed from it (`M.swirl_monitor`: max(5 ||H||^2/max, 10 |grad u|^2/max), screened-
  Poisson smoothing with K = n_monitor_smooth dx^2 / 4, m = 1 + smoothed), on `test_size` meshes (`test_mesh`). Graphs
  as above with kind = 3 (`KIND_SWIRL`), y NaN (no MA target exists offline: no node RMSE), params NaN and
  swirl (1, 7) = (t, x0, y0, r0, sigma, alpha, T) for the evaluation of the exact solution. The coupled DG solve
  (`lit_models.pde.um2n_coupled`, UM2N's `model.coupled_swirl`) builds the same graphs with the monitor of its
  numerical solution (`swirl_graph_on_mesh(..., u_nodes=...)`).

  test_family="cylinder": the paper's flow-past-a-cylinder test (official `test_flow_past_cylinder_final.py`), offline:
  no Navier-Stokes solve (no Firedrake); the exact potential flow past a rotating cylinder in a uniform stream
  (`datamodules.cylinder_flow.potential_flow`) at the times in `cylinder["times"]` (circulation
  Gamma(t) = 2 pi R U (a0 + a1 sin(2 pi t / period + psi))) on one mesh of the unit square with a circular hole
  (`datamodules.cylinder_flow.cylinder_mesh`, `test_size` nodes per side, Delaunay minus the hole), with the official
  monitor min(||grad u||_F^2, clip) of the exact velocity gradient (`cylinder_monitor_official`; feature = / max).
  Graphs as above with kind = 4 (`KIND_CYLINDER`), y NaN, rim (V,) the hole's rim nodes (boundary feature 1, fixed
  in both coordinates unless fix_rim is false) and cylinder (1, 7) = (t, U, theta, Gamma, x0, y0, R).
  `cylinder["field"] = "navier_stokes"`: instead, incompressible Navier-Stokes (Taylor-Hood P2-P1, Re 100,
  `datamodules.cylinder_ns`) solved on the test mesh itself, one developed-shedding trajectory (options
  `cylinder["ns"]`, cached on disk by `datamodules.cylinder_flow.cached_ns_dataset`), snapshots at `times` after the
  warm-up; the monitor is the official one from the P2 velocity gradient averaged to the vertices
  (`cylinder_ns.vertex_velocity_gradient`); Gamma is NaN and the graphs carry the solver's reference field
  ns_ref_pos (P, 2), ns_ref_tri (RT, 3), ns_ref_val (P, 2) (the P2 velocity as P1 on the midpoint-refined mesh, hole
  filled: `cylinder_ns.reference_mesh`) for the interpolation error.
"""
from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.resumable import CheckpointedShuffle, ResumableDataLoader, resumable_geometric_loader
from datamodules.samplers import EpochSampler, eval_sampler
from launch.errors import UserError, check_min, check_positive
from lit_models.common import mesh as M
from lit_models.common.checks import number_list, whole_list

__all__ = ["FrontFieldDataModule", "MeshGraphDataModule", "front_fields", "separable_graph", "front_graph",
           "swirl_graph", "swirl_graph_on_mesh", "square_mesh", "load_burgers_192", "KIND_SWIRL", "SWIRL_DEFAULTS",
           "TEST_FAMILIES", "cylinder_graph", "cylinder_config", "KIND_CYLINDER", "CYLINDER_DEFAULTS",
           "CYLINDER_FIELDS", "CYLINDER_NS_DEFAULTS", "cylinder_ns_snapshot"]


# ================================================================================================ DMM: fields
def _grid(n: int) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n)
    X, Y = np.meshgrid(s, s)  # [j, i]: row = y
    return np.stack([X, Y], -1)


def _monitor_and_norm(g: np.ndarray, derivative: str, angle: float, scale: float) -> tuple[np.ndarray, float]:
    """m = 1 + |D u| / (scale alpha) and its normaliser scale alpha, alpha the domain mean of |D u|."""
    if derivative == "grad":
        d = np.linalg.norm(g, axis=-1)
    else:  # derivative along the front normal
        d = np.abs(np.cos(angle) * g[..., 0] + np.sin(angle) * g[..., 1])
    norm = scale * max(_trapz2(d), 1e-12)
    return 1.0 + d / norm, norm


def _with_gradient(out: dict[str, np.ndarray], grads: list[np.ndarray], norms: list[float]) -> dict[str, np.ndarray]:
    """Adds "grad" (n, 2, R, R) float32 and "monitor_norm" (n,) (the pulled-back monitor's inputs)."""
    out["grad"] = np.stack([np.moveaxis(g, -1, 0) for g in grads]).astype(np.float32)
    out["monitor_norm"] = np.asarray(norms)
    return out


def _trapz2(f: np.ndarray) -> float:
    """Domain average (integral over the unit square) of node values on a uniform R x R grid (trapezoid rule). The
    official dmm_utils takes sum / (R - 1)^2 over all R^2 nodes for alpha and c, ~4.3 % larger at R = 48."""
    w = np.ones(f.shape[-1])
    w[0] = w[-1] = 0.5
    w /= w.sum()
    return float(np.einsum("...ij,i,j->...", f, w, w))


def front_fields(n: int, grid: int, monitor_res: int, seed: int, ks=(10, 20, 30), c_range=(0.3, 0.7),
                 aligned_fraction: float = 0.5, amp: float = 0.3, monitor_scale: float = 1.0,
                 monitor_derivative: str = "normal", force_aligned_k: float | None = None,
                 with_gradient: bool = False) -> dict[str, np.ndarray]:
    """`n` random front fields: u (n, G, G), monitor (n, R, R), c (n,), params (n, 4) = (k, c, angle, amp),
    aligned (n,) bool (+ grad, monitor_norm with `with_gradient`). `force_aligned_k` makes every field axis-aligned
    with that k (held-out evaluation fronts)."""
    rng = np.random.default_rng(seed)
    if force_aligned_k is not None:
        k = np.full(n, float(force_aligned_k))
        aligned = np.ones(n, bool)
    else:
        k = rng.choice(np.asarray(ks, float), size=n)
        aligned = rng.random(n) < aligned_fraction
    c = rng.uniform(*c_range, size=n)
    angle = np.where(aligned, 0.0, rng.uniform(0, 2 * np.pi, size=n))
    pg, pm = _grid(grid), _grid(monitor_res)
    u = np.stack([M.front_field(pg, k[i], c[i], angle[i], amp) for i in range(n)])
    grads, mons, norms = [], [], []
    for i in range(n):  # one gradient field at a time: they are kept only `with_gradient`
        g = M.front_gradient(pm, k[i], c[i], angle[i], amp)
        m, norm = _monitor_and_norm(g, monitor_derivative, angle[i], monitor_scale)
        mons.append(m)
        norms.append(norm)
        if with_gradient:
            grads.append(g)
    mon = np.stack(mons)
    cm = np.array([_trapz2(m) for m in mon])
    params = np.stack([k, c, angle, np.full(n, amp)], 1)
    out = {"u": u, "monitor": mon, "c": cm, "params": params, "aligned": aligned}
    return _with_gradient(out, grads, norms) if with_gradient else out


def exact_front_mesh(pos: np.ndarray, monitor_row: np.ndarray) -> np.ndarray:
    """Exact MA mesh of an x-only monitor given by its values along x on a uniform grid (1-D equidistribution)."""
    s = np.linspace(0.0, 1.0, len(monitor_row))
    fine = np.linspace(0.0, 1.0, 4001)
    return M.equidistributed_mesh(pos, np.interp(fine, s, monitor_row))


def load_burgers_192(path: str | Path) -> np.ndarray:
    """The MM-PDE Burgers file: (n_traj, T, 192, 192) float (any array reshapable to (-1, T, 192, 192))."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: download burgers_192.npy from the Google Drive link in the "
                        "Peiyannn/MM-PDE README (mesh/data/) and pass data.data_dir")
    from datamodules.data_files import load_npy, require_finite

    a = load_npy(path)  # a one-line error for what is not a real numeric .npy array (archives, strings, complex)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[-2:] != (192, 192):
        raise UserError(f"{path}: expected an array (n_traj, T, 192, 192), got shape {a.shape}")
    a = np.asarray(a, np.float32)
    require_finite(path, "the Burgers array", a)
    return a


def burgers_fields(u192: np.ndarray, sub: int, monitor_scale: float, monitor_derivative: str,
                   monitor_grid: str = "branch", with_gradient: bool = False) -> dict[str, np.ndarray]:
    """Branch inputs (sub-sampled) and monitors of Burgers frames. `monitor_grid="branch"` (official dmm_utils
    `sample_train_data`): forward differences (the last row / column repeated) on the sub-sampled n x n field read as
    nodes on linspace(0, 1, n), spacing 1 / (n - 1); "full": periodic central differences on the full grid (its
    closing node appended: an (N + 1) node grid over [0, 1]), a sharper monitor."""
    if monitor_derivative != "grad":
        raise ValueError("Burgers fields have no front normal: use monitor_derivative='grad'")
    if monitor_grid not in ("branch", "full"):
        raise ValueError(f"monitor_grid must be 'branch' (official) or 'full', got {monitor_grid!r}")
    u = u192.reshape(-1, u192.shape[-2], u192.shape[-1])
    ub = u[:, ::sub, ::sub].astype(np.float64)  # only the "full" monitor needs the full grid in float64
    if monitor_grid == "branch":
        n = ub.shape[-1]

        def forward(a: np.ndarray, axis: int) -> np.ndarray:
            d = np.diff(a, axis=axis)
            return np.concatenate([d, np.take(d, [-1], axis=axis)], axis) * (n - 1)

        g = np.stack([forward(ub, -1), forward(ub, -2)], -1)
    else:
        u = u.astype(np.float64)
        h = 1.0 / u.shape[-1]
        gx = (np.roll(u, -1, -1) - np.roll(u, 1, -1)) / (2 * h)
        gy = (np.roll(u, -1, -2) - np.roll(u, 1, -2)) / (2 * h)
        g = np.stack([gx, gy], -1)
        g = np.concatenate([g, g[:, :1]], 1)
        g = np.concatenate([g, g[:, :, :1]], 2)
    mons, norms = zip(*[_monitor_and_norm(gi, "grad", 0.0, monitor_scale) for gi in g])
    mon = np.stack(mons)
    out = {"u": ub, "monitor": mon, "c": np.array([_trapz2(m) for m in mon]),
           "params": np.full((len(u), 4), np.nan), "aligned": np.zeros(len(u), bool)}
    return _with_gradient(out, list(g), list(norms)) if with_gradient else out


def epoch_loader(dataset, batch_size: int, datamodule: CheckpointedShuffle, seed: int, steps_per_epoch: int | None,
                 passes_per_epoch: float) -> DataLoader:
    """Training batches of a DMM field set: `steps_per_epoch` batches drawn with replacement per epoch, or (None)
    `passes_per_epoch` passes over the set: 1 = one shuffled pass, otherwise the official dmm_utils.train_MA_res
    count int(train_sample_grid N / (120 x 160)) Adam steps per epoch = train_sample_grid / 120 passes over the N
    fields at 160 fields per batch."""
    g = datamodule.shuffle_generator(seed)  # checkpointed: a resumed run draws the uninterrupted run's batches
    steps = steps_per_epoch
    if steps is None:
        if passes_per_epoch == 1.0:
            return ResumableDataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, drop_last=True,
                                       datamodule=datamodule)
        steps = max(1, int(passes_per_epoch * len(dataset) / batch_size))
    sampler = EpochSampler(len(dataset), batch_size * steps, replacement=True, generator=g)  # its length under DDP too
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, datamodule=datamodule)


class _Fields(Dataset):
    def __init__(self, d: dict[str, np.ndarray], targets: np.ndarray | None = None) -> None:
        self.d, self.targets = d, targets

    def __len__(self) -> int:
        return len(self.d["u"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d = self.d
        item = {"u": torch.tensor(d["u"][i], dtype=torch.float32)[None],
                "monitor": torch.tensor(d["monitor"][i], dtype=torch.float32),
                "c": torch.tensor(d["c"][i], dtype=torch.float32),
                "params": torch.tensor(d["params"][i], dtype=torch.float64),
                "aligned": torch.tensor(bool(d["aligned"][i])),
                "index": torch.tensor(i)}  # seeds the field's evaluation points (DataFreeMeshMoverModule)
        if "grad" in d:
            item["grad"] = torch.tensor(d["grad"][i])
            item["monitor_norm"] = torch.tensor(d["monitor_norm"][i], dtype=torch.float32)
        if self.targets is not None:
            item["target"] = torch.tensor(self.targets[i], dtype=torch.float64)
        return item


class FrontFieldDataModule(CheckpointedShuffle, L.LightningDataModule):
    """Solution fields and monitors for the data-free mesh mover (see the module docstring)."""

    def __init__(self, name: str = "fronts", n_train: int = 400, n_test: int = 16, n_test_aligned: int = 8,
                 grid: int = 48, monitor_res: int | None = None, ks: tuple = (10, 20, 30),
                 c_range: tuple = (0.3, 0.7), aligned_fraction: float = 0.5, amp: float = 0.3,
                 monitor_scale: float = 0.01, monitor_derivative: str = "grad", test_k: float = 20.0,
                 eval_nodes: int = 20, batch_size: int = 8, steps_per_epoch: int | None = 50,
                 passes_per_epoch: float = 1.0, data_dir: str | None = None,
                 path: str | None = None, sub: int = 4, n_burgers_train: int = 80, seed: int = 0,
                 burgers_monitor: str = "branch", with_gradient: bool = False) -> None:
        super().__init__()
        if with_gradient and monitor_derivative != "grad":
            raise UserError("data.with_gradient (the pulled-back monitor's gradient) needs monitor_derivative=grad")
        if name not in ("fronts", "burgers"):
            raise ValueError(f"unknown mesh-mover dataset {name!r}; available: 'fronts' (offline), 'burgers'")
        if name == "burgers" and monitor_derivative != "grad":
            raise UserError(f"data.name=burgers needs data.monitor_derivative=grad (Burgers fields have no front "
                            f"normal), got {monitor_derivative!r}")
        if monitor_derivative not in ("grad", "normal"):
            raise ValueError(f"monitor_derivative must be 'grad' or 'normal', got {monitor_derivative!r}")
        if not monitor_scale > 0:  # NaN too (a traceback from the point sampler)
            raise ValueError(f"monitor_scale must be > 0, got {monitor_scale}")
        if grid < 8 or eval_nodes < 2 or batch_size < 1:
            raise ValueError("grid must be >= 8, eval_nodes >= 2, batch_size >= 1")
        if burgers_monitor not in ("branch", "full"):
            raise ValueError(f"burgers_monitor must be 'branch' (official) or 'full', got {burgers_monitor!r}")
        if steps_per_epoch is None and passes_per_epoch is None:
            raise ValueError("set data.steps_per_epoch or data.passes_per_epoch (both are null)")
        if passes_per_epoch is not None and not passes_per_epoch > 0:
            raise ValueError(f"passes_per_epoch must be > 0, got {passes_per_epoch}")
        check_min("data", 1, n_train=n_train, n_test=n_test, n_test_aligned=n_test_aligned,
                  steps_per_epoch=steps_per_epoch, sub=sub, n_burgers_train=n_burgers_train)
        check_min("data", 2, monitor_res=monitor_res)  # null: 4 (grid - 1) + 1 (0 was read as null)
        check_positive("data", test_k=test_k)  # the held-out fronts' steepness; 0: no front (a flat field)
        check_min("data", 0, aligned_fraction=aligned_fraction)
        number_list("data.ks", ks, low=0)  # the training fronts' steepness, as test_k
        if len(number_list("data.c_range", c_range)) != 2 or c_range[0] > c_range[1]:
            raise UserError(f"data.c_range is the [low, high] range of the fronts' positions, got {c_range!r}")
        if not aligned_fraction <= 1:
            raise UserError(f"data.aligned_fraction is the share of axis-aligned training fronts: it must lie in "
                            f"[0, 1], got {aligned_fraction!r}")
        self.save_hyperparameters()
        self.name, self.batch_size, self.steps_per_epoch, self.seed = name, batch_size, steps_per_epoch, seed
        self.monitor_res = monitor_res or 4 * (grid - 1) + 1
        self.train_set: _Fields | None = None
        self.test_set: _Fields | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if self.name == "burgers":
            src = Path(hp.path) if hp.path else Path(hp.data_dir or ".") / "burgers_192.npy"
            a = load_burgers_192(src)
            if len(a) <= hp.n_burgers_train:
                raise UserError(f"{src}: {len(a)} trajectories cannot be split at data.n_burgers_train="
                                f"{hp.n_burgers_train}: the test split needs at least one")
            args = (hp.sub, hp.monitor_scale, hp.monitor_derivative, hp.burgers_monitor, hp.with_gradient)
            tr, te = burgers_fields(a[:hp.n_burgers_train], *args), burgers_fields(a[hp.n_burgers_train:], *args)
            self.train_set, self.test_set = _Fields(tr), _Fields(te)
            return
        kw = dict(grid=hp.grid, monitor_res=self.monitor_res, ks=tuple(hp.ks), c_range=tuple(hp.c_range),
                  aligned_fraction=hp.aligned_fraction, amp=hp.amp, monitor_scale=hp.monitor_scale,
                  monitor_derivative=hp.monitor_derivative, with_gradient=hp.with_gradient)
        self.train_set = _Fields(front_fields(hp.n_train, seed=self.seed, **kw))
        te = front_fields(hp.n_test, seed=self.seed + 1000, **kw)
        al = front_fields(hp.n_test_aligned, seed=self.seed + 2000, force_aligned_k=hp.test_k, **kw)
        test = {k: np.concatenate([al[k], te[k]]) for k in te}
        pos, _ = M.unit_square_mesh(hp.eval_nodes)
        targets = np.full((len(test["u"]), len(pos), 2), np.nan)
        if hp.monitor_derivative == "normal":  # separable monitor for aligned fronts: exact MA mesh
            for i in np.flatnonzero(test["aligned"]):
                targets[i] = exact_front_mesh(pos, test["monitor"][i][0])
        self.test_set = _Fields(test, targets)

    def train_dataloader(self) -> DataLoader:
        return epoch_loader(self.train_set, self.batch_size, self, self.seed, self.steps_per_epoch,
                            self.hparams.passes_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=len(self.test_set), sampler=eval_sampler(self.test_set))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# ============================================================================================== UM2N: graphs
MESH_KINDS = ("structured", "unstructured")


def _random_bumps(rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    nb = int(rng.integers(1, 4))
    return float(rng.uniform(2, 20)), rng.uniform(0.1, 0.9, nb), rng.uniform(0.02, 0.1, nb)


def square_mesh(n_side: int, mesh: str = "structured", mesh_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The unit-square triangulation UM2N moves: `unit_square_mesh(n_side)` or, for mesh="unstructured", the
    Delaunay mesh with the same boundary spacing (`unstructured_square_mesh(n_side, mesh_seed)`)."""
    if mesh == "structured":
        return M.unit_square_mesh(n_side)
    if mesh == "unstructured":
        return M.unstructured_square_mesh(n_side, mesh_seed)
    raise ValueError(f"unknown mesh {mesh!r}; available: {', '.join(MESH_KINDS)}")


def _graph(n_side: int, pos: np.ndarray, tri: np.ndarray, monitor_nodes: np.ndarray, target: np.ndarray, kind: int,
           params) -> "object":
    from torch_geometric.data import Data

    bm = M.boundary_masks(pos)
    e = M.mesh_edges(tri)
    edge_index = np.concatenate([e, e[:, ::-1]]).T
    feat = np.concatenate([pos, bm["any"][:, None].astype(float), (monitor_nodes / monitor_nodes.max())[:, None]], 1)
    return Data(x=torch.tensor(feat, dtype=torch.float32), pos=torch.tensor(pos, dtype=torch.float32),
                edge_index=torch.tensor(edge_index.copy(), dtype=torch.long),
                face=torch.tensor(tri.T.copy(), dtype=torch.long), y=torch.tensor(target, dtype=torch.float32),
                x_fixed=torch.tensor(bm["x_fixed"]), y_fixed=torch.tensor(bm["y_fixed"]),
                kind=torch.tensor([kind]), params=torch.tensor(np.asarray(params, float)[None], dtype=torch.float64),
                n_side=torch.tensor([n_side]))


def separable_graph(n_side: int, rng: np.random.Generator, mesh: str = "structured", mesh_seed: int = 0):
    """A mesh with a random separable bump monitor and its exact MA target (node-wise 1-D equidistribution, exact on
    any mesh of the square, structured or not)."""
    a1, c1, w1 = _random_bumps(rng)
    a2, c2, w2 = _random_bumps(rng)
    m1 = functools.partial(M.bump_monitor_1d, amplitude=a1, centres=c1, widths=w1)
    m2 = functools.partial(M.bump_monitor_1d, amplitude=a2, centres=c2, widths=w2)
    pos, tri = square_mesh(n_side, mesh, mesh_seed)
    target = M.equidistributed_mesh(pos, m1, m2)
    return _graph(n_side, pos, tri, m1(pos[:, 0]) * m2(pos[:, 1]), target, 0, [np.nan] * 4)


def front_graph(n_side: int, k: float, c: float, amp: float = 0.3, mesh: str = "structured", mesh_seed: int = 0):
    """A mesh for u = tanh(k (x - c)) + amp sin(2 pi y) with m = 1 + |u_x| / mean|u_x| and its exact MA target."""
    m1 = M.front_monitor_1d(k, c)
    pos, tri = square_mesh(n_side, mesh, mesh_seed)
    return _graph(n_side, pos, tri, m1(pos[:, 0]), M.equidistributed_mesh(pos, m1), 1, [k, c, 0.0, amp])


KIND_SWIRL = M.KIND_SWIRL
TEST_FAMILIES = ("default", "swirl", "cylinder")
# official values: velocity scale alpha 1.5, ring radius 0.2, sigma 0.05 / 3, T = 1 (reversal at T/2), centre (0.3, 0.3)
# (make_dataset_swirl.sh; build_swirl.py defaults to (0.5, 0.5), the solver class to (0.25, 0.25)), monitor weights
# 10 (gradient) / 5 (Hessian), n_monitor_smooth 10 (the dataset script sweeps 10-40). `times`: the snapshots tested
# (the official data save every 5th of 1000 steps of dt = 1e-3: 201 snapshots; u(., t) = u(., T - t) here).
SWIRL_DEFAULTS = {"times": (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0), "centre": (0.3, 0.3), "radius": 0.2,
                  "sigma": 0.05 / 3, "alpha": 1.5, "T": 1.0, "n_monitor_smooth": 10.0, "grad_weight": 10.0,
                  "hessian_weight": 5.0}


def swirl_config(swirl: dict | None) -> dict:
    """SWIRL_DEFAULTS updated by `swirl` (validated: known keys, times in [0, T], positive scales)."""
    given = dict(swirl or {})
    unknown = sorted(set(given) - set(SWIRL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown swirl keys {unknown}; available: {', '.join(SWIRL_DEFAULTS)}")
    cfg = {**SWIRL_DEFAULTS, **given}
    scalars = ("radius", "sigma", "alpha", "T", "n_monitor_smooth", "grad_weight", "hessian_weight")
    try:
        cfg["times"] = tuple(float(t) for t in cfg["times"])
        cfg["centre"] = tuple(float(c) for c in cfg["centre"])
        for key in scalars:
            cfg[key] = float(cfg[key])
    except (TypeError, ValueError):
        raise ValueError(f"swirl times and centre take lists of numbers, {', '.join(scalars)} numbers; got "
                         f"{given}") from None
    if not np.isfinite([*cfg["times"], *cfg["centre"], *(cfg[key] for key in scalars)]).all():
        raise ValueError(f"swirl options must be finite numbers, got {given}")
    if not cfg["times"] or min(cfg["times"]) < 0 or max(cfg["times"]) > cfg["T"]:
        raise ValueError(f"swirl times must be a non-empty list in [0, T = {cfg['T']}], got {list(cfg['times'])}")
    if len(cfg["centre"]) != 2:
        raise ValueError(f"swirl centre must be (x0, y0), got {cfg['centre']}")
    if min(cfg["sigma"], cfg["T"], cfg["radius"]) <= 0 or min(cfg["n_monitor_smooth"], cfg["grad_weight"],
                                                               cfg["hessian_weight"]) < 0:
        raise ValueError("swirl sigma, T, radius must be > 0 and the monitor weights / smoothing >= 0")
    return cfg


def swirl_graph(n_side: int, t: float, mesh: str = "structured", mesh_seed: int = 0, **swirl):
    """A mesh with the official swirl monitor of the exact solution at time t (no MA target: y NaN)."""
    pos, tri = square_mesh(n_side, mesh, mesh_seed)
    return swirl_graph_on_mesh(n_side, pos, tri, t, None, **swirl)


def swirl_graph_on_mesh(n_side: int, pos: np.ndarray, tri: np.ndarray, t: float, u_nodes: np.ndarray | None = None,
                        **swirl):
    """The swirl graph of the mesh (pos, tri) at time t: the official monitor of the exact solution
    (`M.swirl_monitor`) or, given `u_nodes` (V,), of that numerical solution's nodal values
    (`M.swirl_monitor_from_field`: the coupled solve, `lit_models.pde.um2n_coupled`); same weights and smoothing."""
    c = swirl_config(swirl)
    weights = {"grad_weight": c["grad_weight"], "hessian_weight": c["hessian_weight"],
               "n_smooth": c["n_monitor_smooth"]}
    if u_nodes is None:
        m = M.swirl_monitor(pos, tri, t, centre=c["centre"], radius=c["radius"], sigma=c["sigma"], alpha=c["alpha"],
                            T=c["T"], **weights)
    else:
        m = M.swirl_monitor_from_field(pos, tri, np.asarray(u_nodes, np.float64), **weights)
    g = _graph(n_side, pos, tri, m, np.full(pos.shape, np.nan), KIND_SWIRL, [np.nan] * 4)
    g.swirl = torch.tensor([[t, *c["centre"], c["radius"], c["sigma"], c["alpha"], c["T"]]], dtype=torch.float64)
    return g


KIND_CYLINDER = M.KIND_CYLINDER
# Flow past a cylinder, offline. Official (mesh-adaptation/UM2N `test_flow_past_cylinder_final.py`, `_demo.py`): the
# Turek channel [0, 2.2] x [0, 0.41] with a cylinder of diameter 0.1 at (0.2, 0.2) (gmsh meshes cylinder_010/015.msh),
# Navier-Stokes (P2-P1 IPCS, nu = 1e-3, parabolic inflow, Re = 100, dt = 1e-3, 8,000 steps), the mesh moved by UM2N
# after every step from the monitor f = ||grad u||_F^2 (velocity gradient interpolated into P1 on the original mesh)
# clipped to [0, 1e3] and divided by its maximum (no "1 +"), boundary mask = every boundary node (cylinder included).
# Here: no NS solve (no Firedrake); the field is the exact potential flow past a rotating cylinder in a uniform stream
# (`datamodules.cylinder_flow.potential_flow`) on the unit square with a hole, at the times `times`:
# Gamma(t) = 2 pi R U (a0 + a1 sin(2 pi t / period + psi)) (|a1| + |a0| < 2: the stagnation points stay on the rim),
# and the official monitor computed from its exact velocity gradient at the nodes. Rim nodes are fixed (both
# coordinates; `fix_rim: false` lets them move, an ablation: the official code pins only nodes on x, y = 0, 1).
# field="navier_stokes": the paper's kind of flow instead (Taylor-Hood P2-P1 Navier-Stokes, `datamodules.cylinder_ns`;
# unit-square channel: parabolic inflow of mean speed U from the left, no-slip walls y = 0, 1, do-nothing outflow, Re
# = U 2R / nu = 100 by default), solved on the test mesh itself (the cylinder is its rim polygon), one trajectory,
# snapshots at `times` (time units after the warm-up and settling; multiples of ns["dt_snap"]); a0, a1, period and
# psi are potential-flow only, theta must be 0. `ns`: options of `cylinder_ns.make_ns_dataset` (NS_DEFAULTS) over
# CYLINDER_NS_DEFAULTS (their U is cylinder U: the inflow's mean speed).
CYLINDER_DEFAULTS = {"times": (0.0, 0.125, 0.25, 0.625, 0.75), "U": 1.0, "theta": 0.0, "a0": 0.0, "a1": 1.5,
                     "period": 1.0, "psi": 0.0, "centre": (0.3, 0.5), "radius": 0.1, "n_ring": 32, "n_nodes": None,
                     "clip": 1000.0, "fix_rim": True, "field": "potential", "ns": None}
CYLINDER_FIELDS = ("potential", "navier_stokes")
# UM2N's Navier-Stokes defaults over cylinder_ns.NS_DEFAULTS (Re 100, dt 0.00125, warm-up 6 from rest with a
# symmetry-breaking rotation pulse, settle 0.5): no rotation (the official test's cylinder is fixed; ns.omega0_max /
# omega1_max > 0 draw a rotation omega(t) = omega0 + omega1 sin(2 pi f t + psi), in U / R, for the trajectory), and
# snapshots every 0.025 (any time on a 0.025 grid: the default times of both fields and quarter shedding periods).
CYLINDER_NS_DEFAULTS = {"omega0_max": 0.0, "omega1_max": 0.0, "dt_snap": 0.025}


def cylinder_config(cylinder: dict | None, n_side: int | None = None) -> dict:
    """CYLINDER_DEFAULTS updated by `cylinder` (validated: known keys, a cylinder inside the square, positive
    scales; for field="navier_stokes" the solver options, completed in "ns", times on the snapshot grid, theta 0,
    and with `n_side` (nodes per side of the test mesh) a node count the solver's mesh shares)."""
    given = dict(cylinder or {})
    unknown = sorted(set(given) - set(CYLINDER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown cylinder keys {unknown}; available: {', '.join(CYLINDER_DEFAULTS)}")
    cfg = {**CYLINDER_DEFAULTS, **given}
    try:
        cfg["times"] = tuple(float(t) for t in cfg["times"])
        cfg["centre"] = tuple(float(c) for c in cfg["centre"])
        for key in ("U", "theta", "a0", "a1", "period", "psi", "radius", "clip"):
            cfg[key] = float(cfg[key])
        cfg["n_ring"] = int(cfg["n_ring"])
        cfg["n_nodes"] = None if cfg["n_nodes"] is None else int(cfg["n_nodes"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"cylinder: non-numeric value ({err})") from None
    if not isinstance(cfg["fix_rim"], bool):
        raise ValueError(f"cylinder fix_rim must be true or false, got {cfg['fix_rim']!r}")
    if not cfg["times"] or not all(np.isfinite(cfg["times"])):
        raise ValueError(f"cylinder times must be a non-empty list of finite times, got {list(cfg['times'])}")
    if len(cfg["centre"]) != 2:
        raise ValueError(f"cylinder centre must be (x0, y0), got {cfg['centre']}")
    (x0, y0), r = cfg["centre"], cfg["radius"]
    if not (r > 0 and min(x0, y0) - r > 0.05 and max(x0, y0) + r < 0.95):
        raise ValueError(f"the cylinder (centre {cfg['centre']}, radius {r}) must lie inside the unit square, at "
                         "least 0.05 from its sides, with radius > 0")
    if cfg["U"] <= 0 or cfg["period"] <= 0 or cfg["clip"] <= 0:
        raise ValueError("cylinder U, period and clip must be > 0")
    if cfg["n_ring"] < 8:
        raise ValueError(f"cylinder n_ring must be >= 8 rim nodes, got {cfg['n_ring']}")
    if cfg["field"] not in CYLINDER_FIELDS:
        raise ValueError(f"cylinder field must be one of {', '.join(CYLINDER_FIELDS)}, got {cfg['field']!r}")
    if cfg["ns"] is not None and not isinstance(cfg["ns"], dict):
        raise ValueError(f"cylinder ns must be a mapping of Navier-Stokes options, got {cfg['ns']!r}")
    ns = _cylinder_ns_options(cfg)  # validated for either field (a typo fails early)
    if cfg["field"] == "navier_stokes":
        cfg["ns"] = ns
        if cfg["theta"] != 0.0:
            raise ValueError(f"cylinder theta must be 0 for field navier_stokes (inflow from the left), got "
                             f"{cfg['theta']}")
        off = [t for t in cfg["times"] if t < 0 or abs(round(t / ns["dt_snap"]) * ns["dt_snap"] - t) > 1e-6 * max(1, t)]
        if off:
            raise ValueError(f"cylinder times must be >= 0 and multiples of ns.dt_snap = {ns['dt_snap']} for field "
                             f"navier_stokes, got {off}")
        if n_side is not None and cfg["n_nodes"] is not None and round(np.sqrt(cfg["n_nodes"])) != n_side:
            raise ValueError(f"cylinder n_nodes={cfg['n_nodes']} with field navier_stokes needs round(sqrt(n_nodes)) "
                             f"= test_size ({n_side}) nodes per side (the solver's mesh), or null")
    return cfg


def _cylinder_ns_options(cfg: dict) -> dict:
    """The complete Navier-Stokes options: CYLINDER_NS_DEFAULTS, cfg["ns"], U = cfg["U"] (checked by
    `cylinder_ns.check_ns_params`)."""
    from datamodules.cylinder_ns import check_ns_params

    given = dict(cfg["ns"] or {})
    if "U" in given and given["U"] != cfg["U"]:  # a completed config (cfg["ns"] after validation) holds U
        raise ValueError(f"cylinder ns: U={given['U']!r} differs from cylinder U={cfg['U']}: set the inflow's mean "
                         "speed with cylinder U")
    try:
        return check_ns_params(**{**CYLINDER_NS_DEFAULTS, **given, "U": cfg["U"]})
    except (TypeError, ValueError) as err:
        raise ValueError(f"cylinder ns: {' '.join(str(err).split())}") from None


def cylinder_flow_params(t: float, cfg: dict) -> tuple[float, ...]:
    """(U, theta, Gamma, x0, y0, R) of the potential flow at time t (`datamodules.cylinder_flow.potential_flow`)."""
    U, R = cfg["U"], cfg["radius"]
    gam = 2 * np.pi * R * U * (cfg["a0"] + cfg["a1"] * np.sin(2 * np.pi * t / cfg["period"] + cfg["psi"]))
    return (U, cfg["theta"], float(gam), *cfg["centre"], R)


def cylinder_monitor_official(p: np.ndarray, flow, clip: float = 1000.0) -> np.ndarray:
    """The official cylinder monitor at the nodes: min(||grad u||_F^2, clip) (>= 0) of the exact potential flow (the
    graph feature divides it by its maximum, as the official code does)."""
    from datamodules.cylinder_flow import potential_velocity_gradient

    g = potential_velocity_gradient(p, flow)
    return np.clip(np.sum(g**2, axis=(-2, -1)), 0.0, clip)


@functools.lru_cache(maxsize=8)
def _holed_mesh(n_nodes: int, n_ring: int, centre: tuple, radius: float, n_side: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`datamodules.cylinder_flow.cylinder_mesh` (read-only, cached: farthest-point sampling takes seconds at 1,225
    nodes and every time of a test set shares the mesh)."""
    from datamodules.cylinder_flow import cylinder_mesh

    pos, tri = cylinder_mesh(n_nodes, n_ring, centre, radius, n_side=n_side, seed=seed)
    pos.flags.writeable = tri.flags.writeable = False
    return pos, tri


@functools.lru_cache(maxsize=4)
def _ns_snapshots(n_nodes: int, n_ring: int, centre: tuple, radius: float, n_side: int, mesh_seed: int,
                  n_steps: int, options: tuple) -> dict[str, np.ndarray]:
    """The first n_steps snapshots of one Navier-Stokes trajectory on the test mesh (`cylinder_ns.make_ns_dataset`
    through the on-disk cache `cylinder_flow.cached_ns_dataset`, default folder the download cache's cylinder_ns/;
    in-process cache here): "grad" (n_steps, V, 2, 2) the vertex-averaged P2 velocity gradient at the test mesh's
    nodes, "ref_pos" (P, 2), "ref_tri" (RT, 3), "ref_vel" (n_steps, P, 2) the reference velocity (read-only)."""
    from datamodules.cylinder_flow import OFFICIAL_SCALE, cached_ns_dataset
    from datamodules.cylinder_ns import cylinder_solver_mesh, vertex_velocity_gradient

    o = dict(options)
    pos, tri = _holed_mesh(n_nodes, n_ring, centre, radius, n_side, mesh_seed)
    try:
        data, _, ref = cached_ns_dataset(None, n_traj=1, n_steps=n_steps, n_nodes=n_nodes, n_ring=n_ring,
                                         centre=[float(c) for c in centre], radius=float(radius), seed=mesh_seed, **o)
    except FloatingPointError as err:  # the explicit convection's step limit (e.g. a fast rotation)
        raise UserError(f"data.cylinder.ns: {err}") from None
    if not np.allclose(data[0, 0, :, :2].double().numpy() * OFFICIAL_SCALE, pos, atol=1e-6):
        raise ValueError("cylinder navier_stokes: the solver's mesh is not the test mesh")
    ref_pos, ref_tri, ref_val = ref
    n_dofs = len(ref_pos) - 1                                   # P2 DOFs, then the cylinder's centre
    mesh = cylinder_solver_mesh(pos, tri, centre, radius, int(o["refine"]))
    vel = np.asarray(ref_val[0, :, :, :2], np.float64)          # (n_steps, P, 2)
    grad = vertex_velocity_gradient(mesh, vel[:, :n_dofs, 0].T, vel[:, :n_dofs, 1].T, dof_xy=ref_pos[:n_dofs])
    out = {"grad": grad[:, :n_nodes], "ref_pos": np.asarray(ref_pos, np.float64),
           "ref_tri": np.asarray(ref_tri, np.int64), "ref_vel": vel}
    for a in out.values():
        a.flags.writeable = False
    return out


def cylinder_ns_snapshot(n_side: int, t: float, mesh_seed: int, cfg: dict) -> tuple[np.ndarray, ...]:
    """(grad (V, 2, 2) at the test mesh's nodes, ref_pos, ref_tri, ref_vel (P, 2)) of the Navier-Stokes snapshot at
    time t (after the warm-up and settling) for a validated navier_stokes config `cfg` (`cylinder_config`): one
    solve up to max(times, t) serves every time."""
    o = cfg["ns"]
    k = round(t / o["dt_snap"])
    if t < 0 or abs(k * o["dt_snap"] - t) > 1e-6 * max(1.0, t):
        raise ValueError(f"cylinder time {t} is not a multiple of ns.dt_snap = {o['dt_snap']}")
    n_steps = max(k, *(round(s / o["dt_snap"]) for s in cfg["times"])) + 1
    n_nodes = cfg["n_nodes"] if cfg["n_nodes"] is not None else n_side * n_side
    snap = _ns_snapshots(n_nodes, cfg["n_ring"], cfg["centre"], cfg["radius"], n_side, mesh_seed, n_steps,
                         tuple(sorted(o.items())))
    return snap["grad"][k], snap["ref_pos"], snap["ref_tri"], snap["ref_vel"][k]


def cylinder_graph(n_side: int, t: float, mesh_seed: int = 0, grad: np.ndarray | None = None, **cylinder):
    """A mesh of the unit square with a circular hole (`datamodules.cylinder_flow.cylinder_mesh`: n_side nodes per
    side, n_ring rim nodes, n_nodes in all, default n_side^2; Delaunay minus the hole) with the official monitor of
    the potential flow at time t. No MA target (y NaN). Rim nodes: boundary feature 1 (the official mask is every
    boundary node), fixed in both coordinates when fix_rim; `rim` (V,) marks them; `cylinder` (1, 7) =
    (t, U, theta, Gamma, x0, y0, R) for the exact field. field="navier_stokes": the official monitor
    min(||grad u||_F^2, clip) of the Navier-Stokes snapshot at time t (`cylinder_ns_snapshot`; grad u the P2 velocity
    gradient averaged to the vertices), Gamma NaN, and ns_ref_pos / ns_ref_tri / ns_ref_val the solver's reference
    velocity for the interpolation error. grad (V, 2, 2) (navier_stokes only): the velocity gradient at the nodes of
    a solution computed elsewhere (the coupled run, `lit_models.pde.um2n_coupled_ns`) instead of the snapshot's; the
    same monitor, no reference field attached."""
    from datamodules.cylinder_flow import hole_boundary_edges

    c = cylinder_config(cylinder, n_side)
    n_nodes = c["n_nodes"] if c["n_nodes"] is not None else n_side * n_side
    pos, tri = _holed_mesh(n_nodes, c["n_ring"], c["centre"], c["radius"], n_side, mesh_seed)
    ns = None
    if grad is not None and c["field"] != "navier_stokes":
        raise ValueError("cylinder_graph: grad is for field navier_stokes only")
    if c["field"] == "navier_stokes":
        ns = cylinder_ns_snapshot(n_side, t, mesh_seed, c) if grad is None else None
        vel_grad = ns[0] if grad is None else np.asarray(grad, np.float64)
        if vel_grad.shape != (len(pos), 2, 2):
            raise ValueError(f"cylinder_graph: grad must have shape ({len(pos)}, 2, 2), got {vel_grad.shape}")
        flow = (c["U"], c["theta"], np.nan, *c["centre"], c["radius"])
        monitor = np.clip(np.sum(vel_grad ** 2, axis=(-2, -1)), 0.0, c["clip"])  # official: min(||grad u||_F^2, clip)
    else:
        flow = cylinder_flow_params(t, c)
        monitor = cylinder_monitor_official(pos, flow, c["clip"])
    g = _graph(n_side, pos, tri, monitor, np.full(pos.shape, np.nan), KIND_CYLINDER, [np.nan] * 4)
    rim = np.zeros(len(pos), bool)
    rim[np.unique(hole_boundary_edges(pos, tri))] = True
    rim_t = torch.from_numpy(rim)
    g.x[rim_t, 2] = 1.0
    if c["fix_rim"]:
        g.x_fixed = g.x_fixed | rim_t
        g.y_fixed = g.y_fixed | rim_t
    g.rim = rim_t
    g.cylinder = torch.tensor([[t, *flow]], dtype=torch.float64)
    if ns is not None:
        g.ns_ref_pos = torch.tensor(ns[1], dtype=torch.float64)
        g.ns_ref_tri = torch.tensor(ns[2], dtype=torch.long)
        g.ns_ref_val = torch.tensor(ns[3], dtype=torch.float64)
    return g


class _List(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


@functools.lru_cache(maxsize=4)
def _separable_train_set(n_train: int, sizes: tuple[int, ...], mesh: str, seed: int) -> tuple:
    """The separable training graphs of one setting, drawn from `default_rng(seed)`: deterministic and never modified
    (the loaders collate copies), so datamodules of the same setting share them (a claim's baseline runs train on
    the same set, built once per process)."""
    rng = np.random.default_rng(seed)
    return tuple(separable_graph(sizes[i % len(sizes)], rng, *MeshGraphDataModule._mesh_draw(mesh, rng))
                 for i in range(n_train))


class MeshGraphDataModule(CheckpointedShuffle, L.LightningDataModule):
    """Meshes + monitors + exact MA targets as torch_geometric graphs (see the module docstring).

    mesh: the training meshes, "structured" (default) or "unstructured" (Delaunay, the paper trains on unstructured
    meshes); test_mesh: the test meshes (None = `mesh`), read when the test loader is built, so a trained model can be
    tested zero-shot on the other mesh kind (`eval: [data.test_mesh=unstructured]` in a claim). Test monitors are
    the same for both kinds; unstructured mesh seeds come from their own stream (seed + 3000).
    test_family: "default" (the dataset's own tests: fronts + held-out bumps, or the Helmholtz test split), "swirl"
    (the swirl snapshots, `swirl` overrides SWIRL_DEFAULTS; read when the test loader is built, like test_mesh) or
    "cylinder" (potential flow past a rotating cylinder, or Navier-Stokes with cylinder.field=navier_stokes, on a
    holed mesh, `cylinder` overrides CYLINDER_DEFAULTS;
    test_mesh does not apply: the holed meshes are always Delaunay)."""

    def __init__(self, name: str = "separable", n_train: int = 600, train_sizes: tuple = (15, 20),
                 test_size: int = 35, n_test_fronts: int = 4, test_k: float = 20.0, n_test_bumps: int = 4,
                 bump_test_size: int = 20, batch_size: int = 3, mesh: str = "structured",
                 test_mesh: str | None = None, data_dir: str | None = None, dataset_dirs: list | None = None,
                 train_subdir: str = "train", test_subdir: str = "test", test_family: str = "default",
                 swirl: dict | None = None, cylinder: dict | None = None, seed: int = 0) -> None:
        super().__init__()
        if name not in ("separable", "um2n_helmholtz", "helmholtz_offline"):
            raise ValueError(f"unknown UM2N dataset {name!r}; available: 'separable' (offline), 'um2n_helmholtz', "
                             "'helmholtz_offline'")
        whole_list("data.train_sizes", train_sizes, low=3)  # nodes per side of the training meshes
        check_min("data", 3, test_size=test_size)
        check_min("data", 1, n_train=n_train, batch_size=batch_size)
        check_min("data", 0, n_test_fronts=n_test_fronts, n_test_bumps=n_test_bumps)  # 0: no test graphs of that kind
        if name == "separable" and test_family == "default" and n_test_fronts + n_test_bumps == 0:
            raise UserError("data.n_test_fronts = data.n_test_bumps = 0 leaves no test meshes: the run would report "
                            "no test metrics")
        check_positive("data", test_k=test_k)  # the front test meshes' steepness; 0: NaN metrics
        check_min("data", 3, bump_test_size=bump_test_size)
        for key, kind in (("mesh", mesh), ("test_mesh", test_mesh)):
            if kind not in MESH_KINDS and not (key == "test_mesh" and kind is None):
                raise ValueError(f"{key} must be one of {', '.join(MESH_KINDS)}, got {kind!r}")
        if test_family not in TEST_FAMILIES:
            raise ValueError(f"test_family must be one of {', '.join(TEST_FAMILIES)}, got {test_family!r}")
        swirl = self._mapping("swirl", swirl, SWIRL_DEFAULTS)
        swirl_config(swirl)  # fail early on bad keys or values
        cylinder = self._mapping("cylinder", cylinder, CYLINDER_DEFAULTS)
        cylinder_config(cylinder, test_size)
        self.save_hyperparameters()
        self.hparams.swirl = swirl
        self.hparams.cylinder = cylinder
        self.batch_size, self.seed = batch_size, seed
        self.train_set: _List | None = None
        self._test_sets: dict = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if hp.name == "um2n_helmholtz":
            from datamodules.um2n_helmholtz import load_graphs

            roots = self._helmholtz_dirs()
            train = [g for r in roots for g in load_graphs(r / (hp.train_subdir or "."))]
            test = [g for r in roots for g in load_graphs(r / (hp.test_subdir or "."))]
            self.train_set, self._test_sets["file"] = _List(train), _List(test)
            return
        sizes = list(hp.train_sizes)
        if hp.name == "helmholtz_offline":  # Delaunay meshes, MA targets by the FEM solver (~0.3 s a sample; cached)
            from datamodules.helmholtz_offline import helmholtz_graphs

            self.train_set = _List(helmholtz_graphs(hp.n_train, sizes, self.seed))
            if hp.test_family == "default":  # held out as the released sets' test split (15 % beside 75 % for training)
                self._test_sets["file"] = _List(helmholtz_graphs(max(1, hp.n_train // 5), sizes, self.seed + 5000))
            return
        self.train_set = _List(list(_separable_train_set(hp.n_train, tuple(sizes), hp.mesh, self.seed)))

    def _helmholtz_dirs(self) -> list[Path]:
        hp = self.hparams
        if not hp.data_dir:
            raise UserError("data.name=um2n_helmholtz needs data.data_dir: the downloaded UM2N Helmholtz dataset folder "
                            "(Google Drive link in the mesh-adaptation/UM2N README; see configs/experiment/um2n/"
                            "helmholtz.yaml), or use data.name=separable (offline)")
        root = Path(hp.data_dir).expanduser()
        subs = [hp.dataset_dirs] if isinstance(hp.dataset_dirs, str) else list(hp.dataset_dirs or [])
        return [root / s for s in subs] if subs else [root]

    @staticmethod
    def _mesh_draw(mesh: str, rng: np.random.Generator) -> tuple[str, int]:
        """(mesh, mesh_seed); draws from `rng` only for unstructured meshes (structured data stay unchanged)."""
        return mesh, int(rng.integers(2**31)) if mesh == "unstructured" else 0

    @property
    def test_set(self) -> _List:
        """The zero-shot test graphs for the current `test_mesh` (built once per mesh kind)."""
        hp = self.hparams
        mesh = hp.test_mesh or hp.mesh
        if mesh not in MESH_KINDS:
            raise ValueError(f"test_mesh must be one of {', '.join(MESH_KINDS)}, got {mesh!r}")
        if hp.test_family == "swirl":
            return self._swirl_set(mesh)
        if hp.test_family == "cylinder":
            return self._cylinder_set()
        if hp.name in ("um2n_helmholtz", "helmholtz_offline"):  # the datasets' own test split (made in setup)
            if "file" not in self._test_sets:
                self.setup("test")
            return self._test_sets["file"]
        if mesh not in self._test_sets:
            trng, mrng = np.random.default_rng(self.seed + 1000), np.random.default_rng(self.seed + 3000)
            fronts = [front_graph(hp.test_size, hp.test_k, c, mesh=mesh, mesh_seed=self._mesh_draw(mesh, mrng)[1])
                      for c in trng.uniform(0.3, 0.7, hp.n_test_fronts)]
            bumps = [separable_graph(hp.bump_test_size, trng, *self._mesh_draw(mesh, mrng))
                     for _ in range(hp.n_test_bumps)]
            self._test_sets[mesh] = _List(fronts + bumps)
        return self._test_sets[mesh]

    def _swirl_set(self, mesh: str) -> _List:
        hp = self.hparams
        cfg = swirl_config(hp.swirl)
        key = ("swirl", mesh, hp.test_size, repr(sorted(cfg.items())))
        if key not in self._test_sets:
            seed = self._mesh_draw(mesh, np.random.default_rng(self.seed + 4000))[1]  # one mesh for all snapshots
            self._test_sets[key] = _List([swirl_graph(hp.test_size, t, mesh, seed, **cfg) for t in cfg["times"]])
        return self._test_sets[key]

    def cylinder_mesh_seed(self) -> int:
        """The seed of the cylinder test mesh (`cylinder_graph`'s mesh_seed; one mesh for all times)."""
        return int(np.random.default_rng(self.seed + 5000).integers(2**31))

    def _cylinder_set(self) -> _List:
        """The cylinder-flow test graphs: one holed mesh (`test_size` nodes per side), one graph per time."""
        hp = self.hparams
        cfg = cylinder_config(hp.cylinder)
        key = ("cylinder", hp.test_size, repr(sorted(cfg.items())))
        if key not in self._test_sets:
            seed = self.cylinder_mesh_seed()  # one mesh for all times
            self._test_sets[key] = _List([cylinder_graph(hp.test_size, t, seed, **cfg) for t in cfg["times"]])
        return self._test_sets[key]

    @staticmethod
    def _mapping(name: str, value, defaults: dict) -> dict | None:
        """A plain dict (or None) from a dict / OmegaConf mapping; ValueError for anything else."""
        if value is None or isinstance(value, dict):
            return value
        from omegaconf import DictConfig, OmegaConf

        if not isinstance(value, DictConfig):
            raise ValueError(f"{name} must be a mapping of {', '.join(defaults)}, got {value!r}")
        return OmegaConf.to_container(value, resolve=True)

    def train_dataloader(self):
        return resumable_geometric_loader(self.train_set, batch_size=self.batch_size, shuffle=True,
                                          generator=self.shuffle_generator(self.seed), datamodule=self)

    def val_dataloader(self):
        from torch_geometric.loader import DataLoader as GeoLoader

        return GeoLoader(self.test_set, batch_size=1, sampler=eval_sampler(self.test_set))

    def test_dataloader(self):
        return self.val_dataloader()
