"""Mesh-mover inference cost against the Monge-Ampere (MA) solve it replaces, measured in the same run.

For an n x n-node unit-square mesh (n = 20, 35; quick: 20) and the card's front monitor
m = 1 + |u_x| / mean|u_x| of u = tanh(20 (x - 0.4)) + 0.3 sin(2 pi y):
- baselines: `ma_fd` the finite-difference parabolic MA relaxation (`lit_models.common.mesh.ma_relaxation_mesh`,
  to its stopping tolerance or step cap; the classical solve for a general monitor), `ma_cosine` the cosine-series
  optimal-transport solve (`lit_models.common.monge_ampere.CosineMongeAmpere`, default 24 modes, cold start: the
  MA reference mesher of the coupled UM2N runs), `ma_fem` the finite-element MA relaxation of McRae et al.
  (`lit_models.common.monge_ampere_fem.FEMMongeAmpere`, set-up and factorisation included, to max |m det / theta -
  1| < 1e-3: the kind of solve UM2N's training meshes come from, and the one that works on any triangle mesh) and
  `equidistribution_1d` (the exact 1-D equidistribution, only possible for a separable monitor);
- ours: one forward of the data-free mesh mover (x = xi + grad phi at the mesh nodes: a forward and one backward
  of the potential network) and of UM2N (transformer + recurrent GAT deformer), untrained weights (cost does not
  depend on training), in the CPU-scale experiment sizes (`experiment=data_free_mesh_mover`, `experiment=um2n`)
  and at the paper's sizes (`data_free_mesh_mover/burgers`, `um2n/helmholtz`), each built from its config.
All on 1 torch thread, float32 networks, median of `repeats` timed calls after one warm-up.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from lit_models.common import mesh as M
from lit_models.common.monge_ampere import CosineMongeAmpere
from lit_models.common.monge_ampere_fem import FEMMongeAmpere

SUMMARY = ("`ratio` = baseline seconds / ours seconds (> 1: the learned mover is faster than that solve); "
           "`baseline_steps` / `baseline_converged`: the steps the solve took and whether it met its tolerance (ma_fd "
           "stopped by its step cap is not yet the MA mesh), `baseline_rmse_cells` its node RMSE to the exact mesh; "
           "baseline `ma_fd` is the finite-difference MA relaxation, `ma_cosine` the cosine-series MA solve, "
           "`ma_fem` the finite-element MA relaxation, "
           "`equidistribution_1d` the exact separable solve; timings on 1 thread of a shared CPU (inflated when "
           "other jobs run).")


def _timed(fn, repeats: int):
    """(median seconds of `repeats` calls after one warm-up, the last call's result)."""
    out = fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out


def _time(fn, repeats: int) -> float:
    return _timed(fn, repeats)[0]


def _rmse_cells(nodes: np.ndarray, exact: np.ndarray, n: int) -> float:
    """Node RMSE of a mesh to the exact MA mesh, in cell widths 1 / (n - 1)."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(nodes) - exact) ** 2, axis=1))) * (n - 1))


# the networks timed: the CPU-scale experiment and the paper-scale variant of each paper, built from their configs
# (so that the benchmark follows any change of a model's constructor or sizes)
EXPERIMENTS = {"dmm": ("data_free_mesh_mover", "data_free_mesh_mover/burgers"), "um2n": ("um2n", "um2n/helmholtz")}


def _module(name: str, paper: bool):
    """The `name` mover's LightningModule as `zoo train experiment=...` instantiates it (eval mode)."""
    from hydra.utils import instantiate

    from launch.config import compose

    cfg = compose([f"experiment={EXPERIMENTS[name][int(paper)]}"])
    return instantiate(cfg.model, _convert_="partial").eval()


def run(quick: bool = True) -> list[dict]:
    torch.set_num_threads(1)
    from datamodules.meshes import front_fields, front_graph

    sizes = (20,) if quick else (20, 35)
    repeats = 2 if quick else 5
    rows = []
    modules = {(name, paper): _module(name, paper) for name in EXPERIMENTS for paper in (False, True)}  # built once
    for n in sizes:
        pos, tri = M.unit_square_mesh(n)
        m1 = M.front_monitor_1d(20, 0.4)
        steps = 300 if quick else 2000
        t_fd, (fd_nodes, fd_steps) = _timed(lambda: M.ma_relaxation_mesh(lambda p: m1(p[:, 0]), n, steps=steps),
                                            1 if quick else 2)
        t_1d, exact = _timed(lambda: M.equidistributed_mesh(pos, m1), repeats)
        monitor_nodes = m1(pos[:, 0])
        t_cos, cos_nodes = _timed(lambda: CosineMongeAmpere(warm_start=False).solve(monitor_nodes, n), repeats)
        t_fem, (fem, _) = _timed(lambda: FEMMongeAmpere.unit_square(pos, tri).solve(lambda p: m1(p[:, 0])), repeats)
        # what each solve delivers at its stopping point (a solve stopped by its step cap is not the MA mesh): the
        # steps or iterations it took, whether it met its own tolerance, its node RMSE to the exact mesh in cells
        solved = {"ma_fd": (fd_steps, fd_steps < steps, fd_nodes), "ma_cosine": (None, None, cos_nodes),
                  "ma_fem": (fem.iterations, fem.converged, fem.pos), "equidistribution_1d": (None, True, exact)}
        d = front_fields(1, 48, 189, seed=0, monitor_scale=1.0, monitor_derivative="normal", force_aligned_k=20)
        u = torch.tensor(d["u"], dtype=torch.float32)[:, None]
        xi = torch.tensor(pos, dtype=torch.float32)[None]
        graph = front_graph(n, 20.0, 0.4)
        for name, call in (
            ("dmm", lambda mod: mod(u, xi)),
            ("um2n", lambda mod: mod(graph)),
        ):
            for paper in (False, True):
                mod = modules[name, paper]
                with torch.no_grad() if name == "um2n" else torch.enable_grad():
                    t_ours = _time(lambda: call(mod), repeats)
                for base, t_base in (("ma_fd", t_fd), ("ma_cosine", t_cos), ("ma_fem", t_fem),
                                     ("equidistribution_1d", t_1d)):
                    taken, converged, nodes = solved[base]
                    rows.append({"mover": name, "size": "paper" if paper else "cpu",
                                 "experiment": EXPERIMENTS[name][int(paper)], "n_nodes": n * n,
                                 "baseline": base, "ours_s": t_ours, "baseline_s": t_base,
                                 "ratio": t_base / max(t_ours, 1e-12),
                                 "fd_steps_cap": steps if base == "ma_fd" else None,
                                 "baseline_steps": taken, "baseline_converged": converged,
                                 "baseline_rmse_cells": _rmse_cells(nodes, exact, n)})
    return rows


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=1))
