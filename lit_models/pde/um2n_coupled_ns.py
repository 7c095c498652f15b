"""UM2N's flow-past-a-cylinder test as a coupled run (paper Sec. 4; official `test_flow_past_cylinder_final.py`):
Navier-Stokes solved while a mover moves the mesh, scored by drag, lift and Strouhal number against a finer mesh.

Problem: `datamodules.cylinder_ns` (Taylor-Hood P2-P1, IMEX BDF2, unit-square channel, Re 100, fixed cylinder) on
UM2N's cylinder test mesh (`datamodules.meshes.cylinder_graph`'s holed mesh; the solver's mesh is the test mesh
itself, the cylinder its rim polygon). Start: the developed-shedding state the Navier-Stokes test snapshots start
from (the warm-up of `cylinder_ns.make_ns_dataset` for the same mesh seed and options, then `settle`: snapshot time 0
of `experiment=um2n/cylinder_ns`), cached on disk. From it two runs of `t_end` time units with the same steps:
- fixed: the test mesh throughout;
- moved: before steps 0, move_every, 2 move_every, ... the current solution (on the current mesh) is interpolated
  to the original mesh's P2 DOFs (official: projected), its velocity gradient averaged to the vertices gives the
  official monitor min(||grad u||_F^2, 1e3) / max and a graph laid out exactly like the cylinder_ns test graphs
  (`cylinder_graph(..., grad=...)`: original positions, rim nodes fixed, side nodes sliding), and
  `mover(graph)` gives new vertex positions (always from the original mesh, as the official code). The side nodes
  are put back on their sides and the rim nodes at their places, then `ns_forces.remesh` interpolates both BDF2
  levels and the pressure onto the moved mesh and rebuilds the operators (official: projection of u, p). A move that
  inverts or degenerates a triangle is not applied: its inverted triangles are counted and the previous mesh is
  kept until the next move. With `project` (default) the interpolated velocities are L2-projected onto the new
  mesh's discretely divergence-free fields (`remesh(project=True)`): without it the first step after a move shows a
  large force spike (the pressure removes the interpolated field's divergence); with it a smaller one remains (the
  transfer error enters the BDF2 time derivative; on the default mesh max |Delta C_D| per step 0.026 against 0.0016
  on the fixed mesh), hence the spectral C_L amplitude. The graph's float32 positions returned unchanged count as
  the original mesh (the identity mover reproduces the fixed run bit for bit).
- reference: the same physics on the test mesh refined `ref_refine` times uniformly (new rim vertices on the
  circle), time step `ref_dt`, its own warm-up by the same procedure, `t_end` time units; cached on disk (.npz keyed
  by all parameters).
Forces every step: `ns_forces.rim_forces` (the volume / reaction form) and `force_coefficients` (C_D, C_L). Per run:
mean C_D and the C_L amplitude (of its Fourier component at the shedding frequency) over the last whole number of
shedding periods, Strouhal number
St = f D / U with f the C_L spectrum's peak (`cylinder_ns.shedding_frequency`). Relative errors of fixed and moved
against the reference; error reduction (e_fixed - e_moved) / e_fixed per quantity and for the sum of the three.

Differences from the official test: the official one runs 8 time units from rest on the Turek channel (P2-P1
IPCS, dt 1e-3), moves the mesh after every step and saves C_D, C_L (a line integral) every 10 steps, with no
reference and no fixed-mesh run in the same script; here the unit-square channel, a developed start, a move every
`move_every` steps and interpolation instead of L2 projection between meshes.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from launch.errors import UserError, check_min, check_positive, merge_options, one_line
from lit_models.common import mesh as M

# t_end 2.0: ~3.2 shedding periods (St ~0.32, period ~0.62); move_every 10 (official: every step; ~1.25 s a move on
# the 1,225-node mesh on one CPU thread, 0.67 s of it UM2N's forward pass); reference: once refined (4,732 vertices),
# dt 1e-3 (the refined mesh's stable step, `cylinder_ns`). Measured: configs/experiment/um2n/cylinder_coupled.yaml
COUPLED_CYLINDER_DEFAULTS = {"n_side": 35, "mesh_seed": None, "t_end": 2.0, "move_every": 10, "ref_refine": 1,
                             "ref_dt": 1.0e-3, "project": True, "cylinder": None,
                             "cache": None}
QUANTITIES = ("cd_mean", "cl_amp", "st")


def coupled_cylinder_config(given: dict | None) -> dict:
    """COUPLED_CYLINDER_DEFAULTS updated by `given` (a dict or OmegaConf mapping), validated (one-line UserErrors
    naming the key `model.coupled_cylinder.<key>`); "cylinder" completed by `meshes.cylinder_config` with field
    navier_stokes (the coupled run is a Navier-Stokes run whatever the test snapshots' field)."""
    prefix = "model.coupled_cylinder"
    cfg = merge_options(prefix, given, COUPLED_CYLINDER_DEFAULTS)
    if not isinstance(cfg["project"], bool):
        raise UserError(f"{prefix}.project must be true or false, got {cfg['project']!r}")
    for key in ("n_side", "move_every", "ref_refine") + (("mesh_seed",) if cfg["mesh_seed"] is not None else ()):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int | np.integer):
            raise UserError(f"{prefix}.{key} must be an integer, got {cfg[key]!r}")
    check_min(prefix, 5, n_side=cfg["n_side"])
    check_min(prefix, 1, move_every=cfg["move_every"])
    check_min(prefix, 0, mesh_seed=cfg["mesh_seed"], ref_refine=cfg["ref_refine"])
    if cfg["ref_refine"] > 2:
        raise UserError(f"{prefix}.ref_refine must be 0, 1 or 2, got {cfg['ref_refine']}")
    try:
        t_end, ref_dt = float(cfg["t_end"]), float(cfg["ref_dt"])
    except (TypeError, ValueError):
        raise UserError(f"{prefix}: t_end and ref_dt must be numbers, got {cfg['t_end']!r}, "
                        f"{cfg['ref_dt']!r}") from None
    check_positive(prefix, t_end=t_end, ref_dt=ref_dt)
    cyl = cfg["cylinder"]
    if cyl is not None and not isinstance(cyl, dict):
        raise UserError(f"{prefix}.cylinder must be null or a mapping of cylinder options, got {cyl!r}")
    from datamodules.meshes import cylinder_config

    try:
        cyl = cylinder_config({**(cyl or {}), "field": "navier_stokes"}, cfg["n_side"])
    except ValueError as err:
        raise UserError(f"{prefix}.cylinder: {one_line(err)}") from None
    o = cyl["ns"]
    if o["omega0_max"] != 0.0 or o["omega1_max"] != 0.0:
        raise UserError(f"{prefix}.cylinder.ns: the coupled run needs a fixed cylinder (omega0_max = omega1_max = 0)")
    if not o["refine"] == 0:
        raise UserError(f"{prefix}.cylinder.ns.refine must be 0 (the solver's mesh is the moved test mesh)")
    for name, dt in (("cylinder.ns.dt", o["dt"]), ("ref_dt", ref_dt)):
        if t_end < dt:
            raise UserError(f"{prefix}.t_end ({t_end}) must be >= {name} ({dt})")
        for span in (o["warmup"], o["settle"]):
            if span > 0 and abs(round(span / dt) * dt - span) > 1e-6 * max(span, 1.0):
                raise UserError(f"{prefix}.{name} ({dt}) must divide the warm-up {o['warmup']} and settle "
                                f"{o['settle']} time units")
    return cfg | {"t_end": t_end, "ref_dt": ref_dt, "cylinder": cyl}


# ============================================================================================== solver helpers
def _state_arrays(s) -> dict[str, np.ndarray]:
    return {"u": s.u, "v": s.v, "p": s.p, "u_old": s.u_old, "v_old": s.v_old, "conv_u": s.conv_old[0],
            "conv_v": s.conv_old[1]}


def _state_from(z) -> object:
    from datamodules.cylinder_ns import _State

    return _State(*(np.array(z[k]) for k in ("u", "v", "p", "u_old", "v_old")),
                  (np.array(z["conv_u"]), np.array(z["conv_v"])))


def _cached(cache: str | Path | None, kind: str, key: dict, make: Callable[[], dict[str, np.ndarray]]
            ) -> dict[str, np.ndarray]:
    """The start states / reference arrays through `download.cached_npz` (default folder: the download cache's
    cylinder_ns/)."""
    from datamodules.download import cache_dir, cached_npz

    folder = cache_dir() / "cylinder_ns" if cache is None else cache
    return cached_npz(folder, f"coupled_{kind}", {**key, "kind": kind, "v": 1}, make)


def developed_state(ns, o: dict, seed: int):
    """The state the Navier-Stokes test snapshots start from (snapshot time 0 of `cylinder_ns.make_ns_dataset` with
    one trajectory, options o, mesh seed `seed`, a fixed cylinder): the warm-up with the same phase draw
    (`cylinder_ns.trajectory_draws`), then `settle` time units."""
    from datamodules.cylinder_ns import _steps, _warmup_states, trajectory_draws

    _, warmup_seeds = trajectory_draws(seed, 1, float(o["omega0_max"]), float(o["omega1_max"]))
    s = _warmup_states(ns, float(o["warmup"]), float(o["phase_window"]), warmup_seeds)
    zero = np.zeros(1)
    for _ in range(_steps(float(o["settle"]), ns.dt) if o["settle"] > 0 else 0):
        s = ns.step(s, zero)
    return s


def _run_fixed(ns, s, n_steps: int) -> tuple[np.ndarray, float]:
    """(C (n_steps, 2): C_D, C_L after each step, seconds) on the solver's own mesh."""
    from datamodules.ns_forces import force_coefficients, rim_forces

    zero = np.zeros(s.u.shape[1])
    C = np.empty((n_steps, 2))
    tic = time.perf_counter()
    for k in range(n_steps):
        s_new = ns.step(s, zero)
        C[k] = force_coefficients(ns, rim_forces(ns, s_new, s))[:, 0]
        s = s_new
    return C, time.perf_counter() - tic


# ================================================================================================== statistics
def force_statistics(C: np.ndarray, dt: float, D: float, U: float) -> dict[str, float]:
    """cd_mean (mean C_D) and cl_amp (the amplitude of C_L's Fourier component at the shedding frequency f: 2 |mean
    of (C_L - mean) exp(-2 pi i f t)|, half the peak-to-peak for a sinusoid; insensitive to the short force spikes
    that follow each mesh move) over the last whole number of C_L periods (the whole record when it holds less than
    one), st = f D / U with f the C_L spectrum's peak (`cylinder_ns.shedding_frequency`)."""
    from datamodules.cylinder_ns import shedding_frequency

    cd, cl = C[:, 0], C[:, 1]
    if not np.all(np.isfinite(C)) or len(C) < 4:
        return {"cd_mean": math.nan, "cl_amp": math.nan, "st": math.nan}
    f = shedding_frequency(cl, dt)
    n_per = math.floor(len(C) * dt * f)
    n = len(C) if n_per < 1 else min(len(C), max(2, round(n_per / f / dt)))
    w = cl[-n:] - cl[-n:].mean()
    amp = 2.0 * abs(np.mean(w * np.exp(-2j * np.pi * f * dt * np.arange(n))))
    return {"cd_mean": float(cd[-n:].mean()), "cl_amp": float(amp), "st": float(f * D / U)}


def _rel(a: float, ref: float) -> float:
    return abs(a - ref) / abs(ref) if ref != 0 else math.nan


@dataclass
class CoupledCylinderResult:
    """C_D, C_L per step of the fixed, moved and reference runs, per move the inverted triangles (0 for an applied
    move), the final moved mesh, timings."""

    times: np.ndarray            # (n,) after each step (fixed / moved runs)
    coef_fixed: np.ndarray       # (n, 2) C_D, C_L
    coef_moved: np.ndarray       # (n, 2); NaN after a blow-up
    ref_times: np.ndarray        # (n_ref,)
    coef_ref: np.ndarray         # (n_ref, 2)
    move_times: np.ndarray       # (n_moves,)
    inverted: np.ndarray         # (n_moves,) inverted triangles of each rejected move (0: applied)
    rejected: np.ndarray         # (n_moves,) bool: the move was not applied
    tri: np.ndarray
    pos_fixed: np.ndarray
    pos_moved: np.ndarray        # the mesh at the end of the moved run
    dt: float
    ref_dt: float
    diameter: float
    U: float
    seconds_fixed: float
    seconds_moved: float
    seconds_mover: float
    seconds_ref: float | None    # None when the reference came from the cache
    extra: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.times)

    def statistics(self) -> dict[str, dict[str, float]]:
        return {name: force_statistics(C, dt, self.diameter, self.U) for name, C, dt in
                (("fixed", self.coef_fixed, self.dt), ("moved", self.coef_moved, self.dt),
                 ("ref", self.coef_ref, self.ref_dt))}

    def errors(self) -> dict[str, dict[str, float]]:
        """Relative errors of the fixed and moved runs' cd_mean, cl_amp, st against the reference's."""
        st = self.statistics()
        return {run: {q: _rel(st[run][q], st["ref"][q]) for q in QUANTITIES} for run in ("fixed", "moved")}

    @property
    def reduction(self) -> float:
        """(sum e_fixed - sum e_moved) / sum e_fixed over the three relative errors."""
        e = self.errors()
        fixed, moved = sum(e["fixed"].values()), sum(e["moved"].values())
        return float((fixed - moved) / fixed) if fixed > 0 else math.nan

    def metrics(self, prefix: str = "cylinder_coupled_") -> dict[str, float]:
        st, e = self.statistics(), self.errors()
        out = {}
        for q in QUANTITIES:
            for run in ("fixed", "moved", "ref"):
                out[f"{prefix}{q}_{run}"] = st[run][q]
            for run in ("fixed", "moved"):
                out[f"{prefix}{q}_error_{run}"] = e[run][q]
            out[f"{prefix}{q}_reduction"] = ((e["fixed"][q] - e["moved"][q]) / e["fixed"][q]
                                             if e["fixed"][q] > 0 else math.nan)
        out |= {f"{prefix}error_fixed": sum(e["fixed"].values()), f"{prefix}error_moved": sum(e["moved"].values()),
                f"{prefix}error_reduction": self.reduction,
                f"{prefix}inverted": float(self.inverted.sum()),
                f"{prefix}rejected_moves": float(self.rejected.sum()),
                f"{prefix}moves": float(len(self.move_times)),
                f"{prefix}diverged": float(not np.all(np.isfinite(self.coef_moved))),
                f"{prefix}seconds_per_step_fixed": self.seconds_fixed / max(self.n_steps, 1),
                f"{prefix}seconds_per_step_moved": self.seconds_moved / max(self.n_steps, 1)}
        if self.seconds_ref is not None:
            out[f"{prefix}seconds_per_step_ref"] = self.seconds_ref / max(len(self.ref_times), 1)
        return out


# ===================================================================================================== the run
def _to_numpy(new) -> np.ndarray:
    return np.asarray(new.detach().double().cpu().numpy() if hasattr(new, "detach") else new, np.float64)


def coupled_cylinder(mover: Callable, n_side: int = 35, mesh_seed: int | None = None, t_end: float = 2.0,
                     move_every: int = 10, ref_refine: int = 1, ref_dt: float = 1e-3, project: bool = True,
                     cylinder: dict | None = None, cache: str | Path | None = None) -> CoupledCylinderResult:
    """The coupled cylinder run (module docstring) with `mover(graph) -> (V, 2)` new node positions (numpy or torch)
    on the cylinder test mesh (`n_side` nodes per side, `mesh_seed`: None = 0; `cylinder`: the data.cylinder
    options, field navier_stokes), `t_end` time units of steps ns.dt, the mesh moved every `move_every` steps; the
    reference refined `ref_refine` times with steps `ref_dt`. cache: folder of the start states and the reference
    (default: the download cache's cylinder_ns/)."""
    from datamodules.cylinder_ns import CylinderNS, cylinder_solver_mesh, vertex_velocity_gradient
    from datamodules.meshes import _holed_mesh, cylinder_graph
    from datamodules.ns_forces import (
        boundary_vertex_parts,
        force_coefficients,
        interpolation_matrix,
        remesh,
        rim_forces,
    )

    cfg = coupled_cylinder_config({"n_side": n_side, "mesh_seed": mesh_seed, "t_end": t_end, "move_every": move_every,
                                   "ref_refine": ref_refine, "ref_dt": ref_dt, "project": project,
                                   "cylinder": cylinder})
    cyl, o = cfg["cylinder"], cfg["cylinder"]["ns"]
    seed = 0 if mesh_seed is None else int(mesh_seed)
    n_nodes = cyl["n_nodes"] if cyl["n_nodes"] is not None else n_side * n_side
    centre, radius = cyl["centre"], cyl["radius"]
    pos0, tri = (np.array(a) for a in _holed_mesh(n_nodes, cyl["n_ring"], centre, radius, n_side, seed))
    Re, U, dt = o["Re"], o["U"], o["dt"]
    mesh_key = {"n_nodes": n_nodes, "n_ring": cyl["n_ring"], "centre": list(centre), "radius": radius,
                "n_side": n_side, "seed": seed, "ns": {k: o[k] for k in sorted(o)}}

    def solver(refine: int, step: float) -> CylinderNS:
        return CylinderNS(cylinder_solver_mesh(pos0, tri, centre, radius, refine), Re, U, step, centre, radius)

    ns0 = solver(0, dt)
    start = _cached(cache, "start", mesh_key, lambda: _state_arrays(developed_state(ns0, o, seed)))
    s0 = _state_from(start)
    n_steps = max(1, round(cfg["t_end"] / dt))

    # ---- reference (finer mesh, own warm-up), cached
    n_ref = max(1, round(cfg["t_end"] / ref_dt))
    ref_key = mesh_key | {"refine": ref_refine, "ref_dt": ref_dt, "n_ref": n_ref}
    timing = {}

    def make_ref() -> dict[str, np.ndarray]:
        ns_r = solver(ref_refine, ref_dt)
        s_r = developed_state(ns_r, o | {"dt": ref_dt}, seed)
        C, sec = _run_fixed(ns_r, s_r, n_ref)
        timing["ref"] = sec
        return {"coef": C, "n_vertices": np.array(ns_r.ops.mesh.p.shape[1])}

    ref = _cached(cache, "ref", ref_key, make_ref)

    # ---- fixed mesh
    coef_fixed, sec_fixed = _run_fixed(ns0, s0, n_steps)

    # ---- moved mesh
    parts = boundary_vertex_parts(ns0)
    x0, x1, y0, y1 = ns0.box
    orig_xy = ns0.ops.dof_xy
    mesh0 = ns0.ops.mesh
    ns, s = ns0, s0
    cur = pos0
    zero = np.zeros(1)
    coef_moved = np.full((n_steps, 2), np.nan)
    move_times, inverted, rejected = [], [], []
    sec_mover = 0.0
    tic = time.perf_counter()
    for k in range(n_steps):
        if k % move_every == 0:
            if ns is ns0:
                u, v = s.u, s.v
            else:  # official: the solution projected back onto the original mesh for the monitor
                I = interpolation_matrix(ns.ops.ub, orig_xy)
                u, v = I @ s.u, I @ s.v
            grad = vertex_velocity_gradient(mesh0, u[:, 0], v[:, 0])[:n_nodes]
            graph = cylinder_graph(n_side, k * dt, seed, grad=grad, **cyl)
            t0 = time.perf_counter()
            new = _to_numpy(mover(graph))
            sec_mover += time.perf_counter() - t0
            if np.array_equal(new.astype(np.float32), pos0.astype(np.float32)):
                new = pos0  # the graph's own (float32) positions returned: the original mesh
            else:
                new = new.copy()
                new[parts["x0"][:n_nodes], 0], new[parts["x1"][:n_nodes], 0] = x0, x1
                new[parts["y0"][:n_nodes], 1], new[parts["y1"][:n_nodes], 1] = y0, y1
                new[parts["rim"][:n_nodes]] = pos0[parts["rim"][:n_nodes]]
            move_times.append(k * dt)
            bad = M.count_inverted(new, tri) if np.all(np.isfinite(new)) else len(tri)
            if bad == 0 and not np.array_equal(new, cur):
                try:
                    ns, s = (ns0, _remesh_to_original(ns, s, ns0, project)) if new is pos0 else \
                        remesh(ns, s, new, project=project)
                    cur = new
                except ValueError:  # degenerate within remesh's tolerance
                    bad = max(bad, 1)
            inverted.append(bad)
            rejected.append(bad > 0)
        s_new = ns.step(s, zero)
        coef_moved[k] = force_coefficients(ns, rim_forces(ns, s_new, s))[:, 0]
        s = s_new
        if not np.all(np.isfinite(coef_moved[k])):
            coef_moved[k:] = np.nan
            break
    sec_moved = time.perf_counter() - tic
    return CoupledCylinderResult(
        times=(np.arange(n_steps) + 1) * dt, coef_fixed=coef_fixed, coef_moved=coef_moved,
        ref_times=(np.arange(len(ref["coef"])) + 1) * ref_dt, coef_ref=ref["coef"],
        move_times=np.array(move_times), inverted=np.array(inverted, np.int64), rejected=np.array(rejected, bool),
        tri=tri, pos_fixed=pos0, pos_moved=cur, dt=dt, ref_dt=ref_dt, diameter=2 * radius, U=U,
        seconds_fixed=sec_fixed, seconds_moved=sec_moved, seconds_mover=sec_mover, seconds_ref=timing.get("ref"),
        extra={"ref_vertices": int(ref["n_vertices"]), "vertices": int(mesh0.p.shape[1])})


def _remesh_to_original(ns, s, ns0, project: bool):
    """The state moved back onto the original mesh (the solver ns0 is reused: no reassembly)."""
    from datamodules.ns_forces import remesh

    _, s_new = remesh(ns, s, ns0.ops.mesh.p.T.copy(), project=project)
    return s_new


def coupled_cylinder_figures(res: CoupledCylinderResult) -> dict:
    """{"cylinder_coupled_forces": C_D and C_L over time for the fixed, moved and reference runs,
    "cylinder_coupled_mesh": the final moved mesh}."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(6.0, 5.0), sharex=True)
    st = res.statistics()
    for t, C, name, style in ((res.ref_times, res.coef_ref, "reference", "k-"), (res.times, res.coef_fixed, "fixed",
                              "C0-"), (res.times, res.coef_moved, "moved", "C1--")):
        for j, ax in enumerate(axes):
            key = "ref" if name == "reference" else name
            ax.plot(t, C[:, j], style, lw=1.0, label=f"{name} (St {st[key]['st']:.3f})")
    axes[0].set_ylabel("C_D")
    axes[1].set_ylabel("C_L")
    axes[1].set_xlabel("t (after the developed start)")
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"error reduction {res.reduction:.3f}, rejected moves {int(res.rejected.sum())}", fontsize=9)
    fig.tight_layout()
    fig2, ax = plt.subplots(figsize=(4.0, 4.0))
    ax.triplot(res.pos_moved[:, 0], res.pos_moved[:, 1], res.tri, color="k", lw=0.3)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"moved mesh at t = {res.times[-1]:.3f}", fontsize=9)
    fig2.tight_layout()
    return {"cylinder_coupled_forces": fig, "cylinder_coupled_mesh": fig2}
