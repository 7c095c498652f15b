"""Offline stand-in for UM2N's Helmholtz training sets (card `um2n`, Data: "random Helmholtz problems, solved with
Firedrake; target meshes from the `movement` package's MA solver"), generated here without Firedrake:

- problem (official `RandSourceGenerator` + `RandHelmholtzEqGenerator`, anisotropic "aniso_full" sets): u_exact =
  sum_i z_i exp(-((x - mu_x,i)^2 / sigma_x,i^2 + (y - mu_y,i)^2 / sigma_y,i^2)) with n_dist ~ U{1..max_dist}
  Gaussians, mu ~ U(0.2, 0.8)^2, sigma ~ max(N(1/4, 1/6), 1/8) per axis, z ~ U(0, 1); -Delta u + u = f with
  f = -Delta u_exact + u_exact, Dirichlet u = u_exact on the boundary, P1 elements (scikit-fem);
- mesh: a Delaunay triangulation of the unit square (`mesh.unstructured_square_mesh`, n_side nodes per side: 21 for
  the official lc = 0.05, 19 for 0.055);
- monitor (as stored in the released files, `datamodules.um2n_helmholtz`): m = 1 + 5 ||H(u_h)||_F^2 /
  max ||H(u_h)||_F^2, H the Hessian of the P1 solution by repeated lumped L2 recovery (`mesh.recovered_derivatives`);
- target: the Monge-Ampere mesh of that monitor (given at the nodes, interpolated at moved points) by the
  finite-element relaxation `lit_models.common.monge_ampere_fem.FEMMongeAmpere` in place of `movement`'s solver.
Graphs are laid out as the released sets' (`um2n_helmholtz.KIND_FILE`: evaluated by node RMSE to the target).
`helmholtz_graphs` caches the generated meshes (~0.3 s each) in the download cache's `helmholtz_offline/` folder
($PAPERZOO_DATA or ~/.cache/paperzoo), keyed by count, sizes and seed: a later run with the same data starts at once.
"""
from __future__ import annotations

import numpy as np

from lit_models.common import mesh as M

# official RandSourceGenerator defaults, max_dist of the released sets' folder names (max_dist=6)
SOURCE_DEFAULTS = {"max_dist": 6, "c_min": 0.2, "c_max": 0.8, "z_min": 0.0, "z_max": 1.0, "sigma_mean": 0.25,
                   "sigma_std": 1.0 / 6.0, "sigma_eps": 0.125}


def random_sources(rng: np.random.Generator, max_dist: int = SOURCE_DEFAULTS["max_dist"]) -> np.ndarray:
    """(n, 5) rows (z, mu_x, mu_y, sigma_x, sigma_y) of 1..max_dist anisotropic Gaussians (official distribution)."""
    d = SOURCE_DEFAULTS
    n = int(rng.integers(1, max_dist + 1))
    mu = rng.uniform(d["c_min"], d["c_max"], (n, 2))
    sigma = np.maximum(rng.normal(d["sigma_mean"], d["sigma_std"], (n, 2)), d["sigma_eps"])
    z = rng.uniform(d["z_min"], d["z_max"], n)
    return np.column_stack([z, mu, sigma])


def exact_solution(p: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u_exact and its Laplacian at points p (..., 2)."""
    u = np.zeros(p.shape[:-1])
    lap = np.zeros(p.shape[:-1])
    for z, mx, my, sx, sy in sources:
        dx, dy = p[..., 0] - mx, p[..., 1] - my
        g = z * np.exp(-(dx**2 / sx**2 + dy**2 / sy**2))
        u += g
        lap += g * ((4 * dx**2 / sx**4 - 2 / sx**2) + (4 * dy**2 / sy**4 - 2 / sy**2))
    return u, lap


def solve_helmholtz(pos: np.ndarray, tri: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Nodal P1 solution of (grad u, grad v) + (u, v) = (f, v), u = u_exact on the boundary (f integrated by
    scikit-fem's quadrature from the exact formula)."""
    from skfem import Basis, BilinearForm, ElementTriP1, LinearForm, MeshTri, condense, solve
    from skfem.helpers import dot, grad

    mesh = MeshTri(np.ascontiguousarray(pos.T), np.ascontiguousarray(tri.T))
    basis = Basis(mesh, ElementTriP1())

    @BilinearForm
    def helmholtz(u, v, _):
        return dot(grad(u), grad(v)) + u * v

    @LinearForm
    def source(v, w):
        p = np.stack([w.x[0], w.x[1]], -1)
        u, lap = exact_solution(p, sources)
        return (u - lap) * v

    A, b = helmholtz.assemble(basis), source.assemble(basis)
    boundary = mesh.boundary_nodes()
    u = np.zeros(len(pos))
    u[boundary] = exact_solution(pos[boundary], sources)[0]
    return solve(*condense(A, b, x=u, D=boundary))


def hessian_monitor(pos: np.ndarray, tri: np.ndarray, u: np.ndarray) -> np.ndarray:
    """m = 1 + 5 ||H||_F^2 / max ||H||_F^2 with H recovered from the P1 field u (gradient of the gradient)."""
    _, h2 = M.recovered_derivatives(pos, tri, u)
    return 1.0 + 5.0 * h2 / max(float(h2.max()), 1e-300)


def helmholtz_sample(n_side: int, rng: np.random.Generator, mesh_seed: int) -> dict[str, np.ndarray]:
    """One sample: mesh (pos, tri), sources, P1 solution u, monitor m and the MA target mesh `target`, plus the
    FEM solve's `ma_residual` (max |m det / theta - 1|) and whether it converged."""
    from lit_models.common.monge_ampere_fem import FEMMongeAmpere, nodal_monitor

    pos, tri = M.unstructured_square_mesh(n_side, seed=mesh_seed)
    sources = random_sources(rng)
    u = solve_helmholtz(pos, tri, sources)
    m = hessian_monitor(pos, tri, u)
    solver = FEMMongeAmpere.unit_square(pos, tri)
    result, _ = solver.solve(nodal_monitor(pos, solver.tri, m))
    return {"pos": pos, "tri": tri, "sources": sources, "u": u, "monitor": m, "target": result.pos,
            "ma_residual": result.residual, "converged": result.converged}


_GRAPH_KEYS = ("pos", "tri", "monitor", "target")  # what a graph is built from (and what the cache keeps)


def _as_graph(n_side: int, sample: dict[str, np.ndarray]):
    from datamodules.meshes import _graph
    from datamodules.um2n_helmholtz import KIND_FILE

    return _graph(n_side, sample["pos"], sample["tri"], sample["monitor"], sample["target"], KIND_FILE, [np.nan] * 4)


def helmholtz_graph(n_side: int, rng: np.random.Generator, mesh_seed: int):
    """The sample as a UM2N graph (`datamodules.meshes._graph` layout, kind KIND_FILE)."""
    return _as_graph(n_side, helmholtz_sample(n_side, rng, mesh_seed))


def helmholtz_graphs(n: int, sizes: list[int], seed: int, folder=None) -> list:
    """`n` graphs (`sizes` cycled) drawn from `np.random.default_rng(seed)`, each as `helmholtz_graph`; the meshes,
    monitors and targets go through an .npz cache (`download.cached_npz`; `folder` None: the download cache's
    `helmholtz_offline/`). The key's version `v` changes whenever the generated data would."""
    from datamodules.download import cache_dir, cached_npz

    sizes = [int(k) for k in sizes]

    def make() -> dict[str, np.ndarray]:
        rng, out = np.random.default_rng(seed), {}
        for i in range(n):
            sample = helmholtz_sample(sizes[i % len(sizes)], rng, int(rng.integers(2**31)))
            out.update({f"{k}_{i}": sample[k] for k in _GRAPH_KEYS})
        return out

    key = {"n": int(n), "sizes": sizes, "seed": int(seed), "v": 1}
    z = cached_npz(cache_dir() / "helmholtz_offline" if folder is None else folder, "helmholtz", key, make)
    return [_as_graph(sizes[i % len(sizes)], {k: z[f"{k}_{i}"] for k in _GRAPH_KEYS}) for i in range(n)]
