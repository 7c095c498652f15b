"""UM2N's swirl test as a coupled PDE solve (paper Sec. 4 "PDE error reduction"; official
`UM2N/generator/swirl_solver.py`, `SwirlSolver.solve_problem` / `eval_problem`, `script/evaluate_swirl.py`).

u_t + c . grad u = 0 on the unit square with the reversing swirl velocity (`mesh.swirl_velocity`, a = +1 before
T/2, -1 after, so u(T) = u0) and the ring u0, solved by DG1 upwind + SSPRK3 (`common.dg_advection`, dt = 1e-3,
velocity frozen at each step's start time, inflow value 0) on a mesh moved by a mover and, in the same call, on the
fixed uniform mesh. Each move step (every `move_every` steps; official: every step), as the official code:
  1. the previous moved-mesh solution is projected onto the uniform mesh and advanced one step there;
  2. the official Hessian/gradient monitor of that solution (nodal values by `dg_advection.to_p1`, derivatives by
     lumped L2 recovery, `mesh.swirl_monitor_from_field`) gives a swirl graph on the uniform mesh
     (`datamodules.meshes.swirl_graph_on_mesh`, the layout UM2N's swirl test graphs have);
  3. the mover maps the graph to new node positions (the mesh is moved from the uniform mesh every time);
  4. the previous moved-mesh solution is L2-projected onto the new mesh (`dg_advection.project`: exact and
     conservative through the supermesh, as Firedrake's cross-mesh projection; skipped when the nodes did not move;
     the graph's float32 positions returned unchanged count as the uniform mesh, so the identity mover reproduces
     the uniform solve bit for bit) and advanced one step there.
The uniform-mesh solve advances its own solution (its per-step projection onto the same mesh is the identity).

Reference: the exact solution by characteristics, u(X(t; y), t) = u0(y) (`mesh.swirl_trace`, RK4), better than the
official reference (the same DG solve on a fine mesh, whose own error enters the official numbers). Errors are the L2
norms of u_h - u over the square, measured by a transported quadrature: the cell centres y of an n_ref x n_ref grid
(weights 1 / n_ref^2) are carried by the flow to X(t; y), where the exact value is u0(y); the swirl is divergence-
free, so the weights stay exact (the map preserves area). Both meshes are scored on the same points. Error
reduction = (e_uniform - e_moved) / e_uniform, for the errors at the final time and for their means over the
recorded times (the official summary, `write_sumo`: sums over the saved snapshots, every 5th step). Differences
from the official procedure: the official error is that of the solution's continuous P1 projection against the
fine-mesh solve (here: the DG1 solution itself against the exact solution); the official mover result is scored
only where it is untangled (here: every recorded time; the inverted count is reported beside it).
"""
from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from launch.errors import UserError, check_min, check_positive, merge_options
from lit_models.common import dg_advection as D
from lit_models.common import mesh as M

# official values: dt = 1e-3 (SwirlSolver), horizon T (= swirl["T"] = 1), moved every step; record_every 5 (the
# official save_interval); 35 nodes per side (official lc = 0.028, about 36 per side; the swirl test graphs' size)
# ma_baseline: also run the solve with Monge-Ampere meshes (`common.monge_ampere`, structured meshes only), the
# official `error_reduction_MA`
COUPLED_DEFAULTS = {"n_side": 35, "dt": 1.0e-3, "t_end": None, "move_every": 1, "record_every": 5,
                    "mesh": "structured", "mesh_seed": 0, "n_ref": 300, "swirl": None, "ma_baseline": False}


def coupled_config(given: dict | None) -> dict:
    """COUPLED_DEFAULTS updated by `given` (a dict or OmegaConf mapping), validated: one-line UserErrors naming the
    key (`model.coupled_swirl.<key>`)."""
    prefix = "model.coupled_swirl"
    cfg = merge_options(prefix, given, COUPLED_DEFAULTS)
    check_min(prefix, 3, n_side=cfg["n_side"])
    check_min(prefix, 1, move_every=cfg["move_every"], record_every=cfg["record_every"], n_ref=cfg["n_ref"])
    check_positive(prefix, dt=cfg["dt"], t_end=cfg["t_end"])
    if cfg["mesh"] not in ("structured", "unstructured"):
        raise UserError(f"{prefix}.mesh must be structured or unstructured, got {cfg['mesh']!r}")
    if not isinstance(cfg["ma_baseline"], bool):
        raise UserError(f"{prefix}.ma_baseline must be true or false, got {cfg['ma_baseline']!r}")
    if cfg["ma_baseline"] and cfg["mesh"] != "structured":
        raise UserError(f"{prefix}.ma_baseline needs mesh=structured (the Monge-Ampere solver moves the grid)")
    from datamodules.meshes import swirl_config

    try:
        swirl = swirl_config(cfg["swirl"])
    except ValueError as err:
        raise UserError(f"{prefix}.swirl: {err}") from None
    t_end = swirl["T"] if cfg["t_end"] is None else float(cfg["t_end"])
    if float(cfg["dt"]) > t_end:
        raise UserError(f"{prefix}.dt ({cfg['dt']}) must be <= the horizon t_end ({t_end})")
    return cfg | {"swirl": swirl, "t_end": t_end, "dt": float(cfg["dt"])}


@dataclass
class CoupledSwirlResult:
    """Per recorded time: errors on the uniform and moved meshes; per move: inverted triangles; final fields."""

    times: np.ndarray
    error_uniform: np.ndarray
    error_moved: np.ndarray
    move_times: np.ndarray
    inverted: np.ndarray
    tri: np.ndarray
    pos_uniform: np.ndarray
    pos_moved: np.ndarray
    u_uniform: np.ndarray
    u_moved: np.ndarray
    final_quadrature_error: tuple[float, float]  # (uniform, moved) at t_end, mesh quadrature vs the exact solution
    n_steps: int
    wall_seconds: float
    mover_seconds: float
    extra: dict = field(default_factory=dict)  # cfl_uniform, cfl_moved_max (dt max|c| / min inradius);
    # mass_change_uniform / _moved (relative change of int u dx); ma: the Monge-Ampere-mesh result (ma_baseline);
    # ma_residual (on that result)

    @property
    def reduction(self) -> float:
        """(mean e_uniform - mean e_moved) / mean e_uniform over the recorded times (official summary)."""
        return float((self.error_uniform.mean() - self.error_moved.mean()) / self.error_uniform.mean())

    @property
    def final_reduction(self) -> float:
        return float((self.error_uniform[-1] - self.error_moved[-1]) / self.error_uniform[-1])

    def metrics(self, prefix: str = "swirl_pde_") -> dict[str, float]:
        ma = self.extra.get("ma")  # the same solve on Monge-Ampere meshes (ma_baseline)
        ma_metrics = {} if ma is None else {
            f"{prefix}error_ma": float(ma.error_moved.mean()),
            f"{prefix}error_reduction_ma": ma.reduction,
            f"{prefix}error_ma_final": float(ma.error_moved[-1]),
            f"{prefix}error_reduction_ma_final": ma.final_reduction,
            "swirl_coupled_inverted_ma": float(ma.inverted.sum()),
            "swirl_coupled_ma_residual": float(ma.extra["ma_residual"])}
        return ma_metrics | {f"{prefix}error_uniform": float(self.error_uniform.mean()),
                f"{prefix}error_moved": float(self.error_moved.mean()),
                f"{prefix}error_reduction": self.reduction,
                f"{prefix}error_uniform_final": float(self.error_uniform[-1]),
                f"{prefix}error_moved_final": float(self.error_moved[-1]),
                f"{prefix}error_reduction_final": self.final_reduction,
                "swirl_coupled_inverted": float(self.inverted.sum()),
                "swirl_coupled_tangled_meshes": float(np.sum(self.inverted > 0)),
                "swirl_coupled_seconds_per_step": self.wall_seconds / max(self.n_steps, 1),
                "swirl_coupled_mass_change_uniform": float(self.extra.get("mass_change_uniform", np.nan)),
                "swirl_coupled_mass_change_moved": float(self.extra.get("mass_change_moved", np.nan)),
                "swirl_coupled_cfl_uniform": float(self.extra.get("cfl_uniform", np.nan)),
                "swirl_coupled_cfl_moved_max": float(self.extra.get("cfl_moved_max", np.nan))}


def swirl_velocity_field(alpha: float, T: float) -> Callable[[np.ndarray, float], np.ndarray]:
    """c(p, t): the swirl with a = +1 for t < T/2 and -1 after (the official `get_c`, t the step's start time)."""
    half = 0.5 * T

    def velocity(p: np.ndarray, t: float) -> np.ndarray:
        return M.swirl_velocity(p, 1.0 if t < half - 1e-12 else -1.0, alpha)

    return velocity


def _record_steps(n_steps: int, record_every: int) -> list[int]:
    """The steps i after which the errors are recorded: the first, every `record_every`-th, the last."""
    return [i for i in range(n_steps) if i == 0 or (i + 1) % record_every == 0 or i == n_steps - 1]


def _quadrature_start(n_ref: int) -> np.ndarray:
    """The transported quadrature's points at t = 0: the cell centres of an n_ref x n_ref grid."""
    s = (np.arange(n_ref) + 0.5) / n_ref
    return np.stack(np.meshgrid(s, s), -1).reshape(-1, 2)


def _traced_points(y: np.ndarray, steps: list[int], dt: float, alpha: float, T: float):
    """(t, X(t; y)) after each recorded step: the quadrature points carried by the flow, step to step."""
    x, t_x = y.copy(), 0.0
    for i in steps:
        t_new = (i + 1) * dt
        x = M.swirl_trace(x, t_x, t_new, alpha, T)
        t_x = t_new
        yield t_new, x


@dataclass
class _UniformSolve:
    """The fixed-mesh half of a coupled swirl solve, which no mover changes: the errors at the recorded times, the
    final field and its quadrature error, the mass; `points` the traced quadrature points of each recorded time
    (None where they would take more than _KEEP_POINTS_BYTES: the solve then traces them again)."""

    times: list[float]
    error: list[float]
    points: list[np.ndarray] | None
    u: np.ndarray
    quad_error: float
    mass0: float
    mass_change: float
    seconds: float  # the fixed-mesh solve's own time: counted in every solve that shares it (`wall_seconds`)


_KEEP_POINTS_BYTES = 256 << 20


@functools.lru_cache(maxsize=1)
def _uniform_solve(n_side: int, dt: float, n_steps: int, record_every: int, mesh: str, mesh_seed: int, n_ref: int,
                   centre: tuple[float, float], radius: float, sigma: float, alpha: float, T: float
                   ) -> _UniformSolve:
    """The fixed-mesh solve of `coupled_swirl` (the same steps as there), kept for the next solve of the same setting:
    a moved solve and the fixed-mesh (or Monge-Ampere) baseline share it; the characteristic trace of the quadrature
    points is the costly part of either. The arrays it returns are read-only."""
    from datamodules.meshes import square_mesh

    start = time.perf_counter()
    ring = {"centre": centre, "radius": radius, "sigma": sigma}
    pos0, tri = square_mesh(n_side, mesh, mesh_seed)
    uniform = D.DG1Advection(pos0, tri, swirl_velocity_field(alpha, T), D.Facets(tri))

    def u0(p: np.ndarray) -> np.ndarray:
        return M.swirl_initial(p, **ring)

    u = D.interpolate(pos0, tri, u0)  # the official initial condition: interpolation into DG1
    mass0 = D.total_mass(pos0, tri, u)
    y = _quadrature_start(n_ref)
    exact_y = u0(y)
    steps = _record_steps(n_steps, record_every)
    keep = len(steps) * y.nbytes <= _KEEP_POINTS_BYTES
    trace = _traced_points(y, steps, dt, alpha, T)
    times, error, points = [], [], []
    recorded = set(steps)
    for i in range(n_steps):
        u = uniform.step(u, i * dt, dt)
        if i in recorded:
            t_new, x = next(trace)
            times.append(t_new)
            error.append(float(np.sqrt(np.mean((D.evaluate(pos0, tri, u, x) - exact_y) ** 2))))
            if keep:
                x.flags.writeable = False
                points.append(x)
    t_fin = n_steps * dt

    def exact_final(p: np.ndarray) -> np.ndarray:
        if abs(t_fin - T) < 1e-9:  # the swirl has reversed: u(T) = u0 exactly
            return u0(p)
        return M.swirl_solution(p, t_fin, alpha=alpha, T=T, **ring)

    u.flags.writeable = False
    return _UniformSolve(times, error, points if keep else None, u, D.l2_error(pos0, tri, u, exact_final), mass0,
                         (D.total_mass(pos0, tri, u) - mass0) / abs(mass0), time.perf_counter() - start)


def coupled_swirl(mover: Callable, n_side: int = 35, dt: float = 1e-3, t_end: float | None = None,
                  move_every: int = 1, record_every: int = 5, mesh: str = "structured", mesh_seed: int = 0,
                  n_ref: int = 300, swirl: dict | None = None, ma_baseline: bool = False) -> CoupledSwirlResult:
    """The coupled swirl solve (module docstring) with `mover(graph) -> (V, 2)` new node positions (numpy or torch)
    on `datamodules.meshes.square_mesh(n_side, mesh, mesh_seed)`, steps of `dt` up to `t_end` (default: the swirl
    period T), errors recorded after the first step, every `record_every` steps and at the end. With `ma_baseline`
    the same solve with `monge_ampere.CosineMongeAmpere` as the mover goes to `extra["ma"]` (official
    `error_reduction_MA`; its median equidistribution residual, mean over the moves, to `extra["ma_residual"]`).
    The fixed-mesh solve (`_uniform_solve`) does not depend on the mover: it is run once per setting and shared
    (the same numbers as solving it beside the moved one)."""
    from datamodules.meshes import square_mesh, swirl_config, swirl_graph_on_mesh

    sw = swirl_config(swirl)
    t_end = sw["T"] if t_end is None else float(t_end)
    ring = {"centre": sw["centre"], "radius": sw["radius"], "sigma": sw["sigma"]}
    graph_kw = {k: sw[k] for k in ("centre", "radius", "sigma", "alpha", "T", "n_monitor_smooth", "grad_weight",
                                   "hessian_weight")}
    pos0, tri = square_mesh(n_side, mesh, mesh_seed)
    facets = D.Facets(tri)
    velocity = swirl_velocity_field(sw["alpha"], sw["T"])
    uniform = D.DG1Advection(pos0, tri, velocity, facets)
    n_steps = max(1, round(t_end / dt))
    ref = _uniform_solve(n_side, dt, n_steps, record_every, mesh, mesh_seed, n_ref, sw["centre"], sw["radius"],
                         sw["sigma"], sw["alpha"], sw["T"])
    start = time.perf_counter()  # wall_seconds: this solve + the fixed-mesh one's own time, shared or not

    def u0(p: np.ndarray) -> np.ndarray:
        return M.swirl_initial(p, **ring)

    u_mov = D.interpolate(pos0, tri, u0)  # the official initial condition: interpolation into DG1
    pos_mov, moved = pos0.copy(), uniform
    y = _quadrature_start(n_ref)
    exact_y = u0(y)
    steps = _record_steps(n_steps, record_every)
    trace = _traced_points(y, steps, dt, sw["alpha"], sw["T"]) if ref.points is None else None
    recorded = {i: k for k, i in enumerate(steps)}
    e_mov, move_times, inverted = [], [], []
    mover_seconds = 0.0
    extra = {"cfl_uniform": dt / uniform.max_dt(0.0, 1.0), "cfl_moved_max": dt / uniform.max_dt(0.0, 1.0)}
    label = "coupled swirl (Monge-Ampere)" if getattr(mover, "is_ma", False) else "coupled swirl"
    for i in tqdm(range(n_steps), desc=label, leave=False, mininterval=2.0, disable=n_steps < 100):
        t = i * dt
        if i % move_every == 0:
            u_mon = uniform.step(D.project(pos_mov, tri, u_mov, pos0) if moved is not uniform else u_mov, t, dt)
            graph = swirl_graph_on_mesh(n_side, pos0, tri, t + dt, D.to_p1(pos0, tri, u_mon), **graph_kw)
            tic = time.perf_counter()
            new = mover(graph)
            mover_seconds += time.perf_counter() - tic
            new = np.asarray(new.detach().double().cpu().numpy() if hasattr(new, "detach") else new, np.float64)
            if np.array_equal(new.astype(np.float32), pos0.astype(np.float32)):
                new = pos0  # the graph's own (float32) positions returned: the identity
            inverted.append(M.count_inverted(new, tri))
            move_times.append(t)
            if not np.array_equal(new, pos_mov):
                u_mov = D.project(pos_mov, tri, u_mov, new)
                pos_mov = new
                moved = uniform if np.array_equal(new, pos0) else D.DG1Advection(new, tri, velocity, facets)
                extra["cfl_moved_max"] = max(extra["cfl_moved_max"], dt / moved.max_dt(t, 1.0))
        u_mov = moved.step(u_mov, t, dt)
        if i in recorded:
            x = ref.points[recorded[i]] if trace is None else next(trace)[1]
            e_mov.append(float(np.sqrt(np.mean((D.evaluate(pos_mov, tri, u_mov, x) - exact_y) ** 2))))
    wall = time.perf_counter() - start + ref.seconds
    u_uni = np.array(ref.u)
    t_fin = n_steps * dt
    bound = 2.0 * float(np.abs(u0(pos0)).max())  # a stable DG1 upwind solve overshoots u0 by far less than 2x
    for name, u, cfl in (("moved", u_mov, extra["cfl_moved_max"]), ("uniform", u_uni, extra["cfl_uniform"])):
        if not np.all(np.isfinite(u)) or np.abs(u).max() > bound:
            warnings.warn(f"coupled swirl: the {name}-mesh solve blew up (CFL number dt max|c| / min inradius "
                          f"{cfl:.2f}): reduce model.coupled_swirl.dt", stacklevel=2)

    def exact_final(p: np.ndarray) -> np.ndarray:
        if abs(t_fin - sw["T"]) < 1e-9:  # the swirl has reversed: u(T) = u0 exactly
            return u0(p)
        return M.swirl_solution(p, t_fin, alpha=sw["alpha"], T=sw["T"], **ring)

    quad = (ref.quad_error, D.l2_error(pos_mov, tri, u_mov, exact_final))
    # relative change of int u dx over the run: the swirl has no normal velocity on the boundary and the projections
    # between meshes are conservative, so both stay at round-off level while the moved meshes are untangled
    extra["mass_change_uniform"] = ref.mass_change
    extra["mass_change_moved"] = (D.total_mass(pos_mov, tri, u_mov) - ref.mass0) / abs(ref.mass0)
    times, e_uni = ref.times, ref.error
    if ma_baseline:
        from lit_models.common.monge_ampere import CosineMongeAmpere

        ma_mover, residuals = CosineMongeAmpere(), []

        def ma_move(graph) -> np.ndarray:
            new = ma_mover(graph)
            residuals.append(ma_mover.last_residual)
            return new

        ma_move.is_ma = True  # progress-bar label

        extra["ma"] = coupled_swirl(ma_move, n_side, dt, t_end, move_every, record_every, mesh, mesh_seed, n_ref,
                                  swirl)
        extra["ma"].extra["ma_residual"] = float(np.mean(residuals))
    return CoupledSwirlResult(np.array(times), np.array(e_uni), np.array(e_mov), np.array(move_times),
                              np.array(inverted, np.int64), tri, pos0, pos_mov, u_uni, u_mov, quad, n_steps, wall,
                              mover_seconds, extra)


def coupled_figures(res: CoupledSwirlResult) -> dict:
    """{"swirl_pde_error": L2 error over time on both meshes, "swirl_pde_final": the final solutions (uniform |
    moved mesh, the moved mesh drawn over it)}."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    ax.plot(res.times, res.error_uniform, label="uniform mesh")
    ax.plot(res.times, res.error_moved, label=f"moved mesh (reduction {res.reduction:.3f})")
    if "ma" in res.extra:
        ma = res.extra["ma"]
        ax.plot(ma.times, ma.error_moved, ls="--", label=f"Monge-Ampere mesh (reduction {ma.reduction:.3f})")
    ax.set_xlabel("t")
    ax.set_ylabel("L2 error vs exact")
    ax.legend()
    fig.tight_layout()
    fig2, axes = plt.subplots(1, 2, figsize=(7.0, 3.4))
    for a, pos, u, name in ((axes[0], res.pos_uniform, res.u_uniform, "uniform"),
                            (axes[1], res.pos_moved, res.u_moved, "moved")):
        tri = res.tri
        a.tripcolor(pos[:, 0], pos[:, 1], tri, u.mean(1), cmap="viridis", vmin=0.0, vmax=1.0)
        if name == "moved":
            a.triplot(pos[:, 0], pos[:, 1], tri, color="w", lw=0.3)
        a.set_title(f"{name}: t = {res.times[-1]:.3f}")
        a.set_xticks([])
        a.set_yticks([])
        a.set_aspect("equal")
    fig2.tight_layout()
    return {"swirl_pde_error": fig, "swirl_pde_final": fig2}
