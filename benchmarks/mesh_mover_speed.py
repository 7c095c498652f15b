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
A last row (CPU only): UM2N training steps with its CPU GATv2 path vs torch_geometric's GATv2Conv (`torch_geometric_
gatv2_train_step`; the same layer to float rounding, first losses compared). All on 1 torch thread, float32 networks. Per mesh size every solve and every network takes turns in one process
(`benchmarks.timing.interleaved_call_times`: one warm-up call of each, then `repeats` rounds of one call of each, the
order alternated), so a change of machine speed during the measurement hits all of them alike; `ours_s` /
`baseline_s` are median seconds per call and `ratio` the median over rounds of baseline / ours in the same round.
`--device cuda`: the two networks' forwards on the GPU (synchronised before each clock read; `ours_peak_gpu_mib` the
peak GPU memory of one forward); the classical solves are CPU code (numpy / scipy) and stay on the CPU, so the ratio
is then a GPU network against a CPU solve.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.timing import (check_device, cuda_peak_mib, device_sync, interleaved_call_times, paired_fields,
                               paired_speed_ratio)

from lit_models.common import mesh as M
from lit_models.common.monge_ampere import CosineMongeAmpere
from lit_models.common.monge_ampere_fem import FEMMongeAmpere

SUMMARY = ("`ratio` = baseline seconds / ours seconds (> 1: the learned mover is faster than that solve); "
           "`baseline_steps` / `baseline_converged`: the steps the solve took and whether it met its tolerance (ma_fd "
           "stopped by its step cap is not yet the MA mesh), `baseline_rmse_cells` its node RMSE to the exact mesh; "
           "baseline `ma_fd` is the finite-difference MA relaxation, `ma_cosine` the cosine-series MA solve, "
           "`ma_fem` the finite-element MA relaxation, "
           "`equidistribution_1d` the exact separable solve; the solves and the networks take turns (interleaved "
           "rounds), `ratio` is the median of the per-round ratios; timings on 1 thread of a shared CPU (inflated "
           "when other jobs run).")


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


def run(quick: bool = True, device: str = "cpu") -> list[dict]:
    """The rows below, with 1 torch thread and 1 BLAS / OpenMP thread for numpy and scipy too (the cosine-series and
    FEM Monge-Ampere solves run numpy / scipy code, which would otherwise use every core while the networks use one)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _run(quick, device)


def _run(quick: bool, device: str) -> list[dict]:
    device = check_device(device)
    torch.set_num_threads(1)
    from datamodules.meshes import front_fields, front_graph

    sizes = (20,) if quick else (20, 35)
    repeats = 2 if quick else 5  # rounds: one timed call of every solve and network each
    rows = []
    modules = {(name, paper): _module(name, paper).to(device)  # built once
               for name in EXPERIMENTS for paper in (False, True)}
    sync = device_sync(device)
    for n in sizes:
        pos, tri = M.unit_square_mesh(n)
        m1 = M.front_monitor_1d(20, 0.4)
        steps = 300 if quick else 2000
        monitor_nodes = m1(pos[:, 0])
        calls = {  # the classical solves (CPU) and the learned movers' forwards, each call's last result kept
            "ma_fd": lambda: M.ma_relaxation_mesh(lambda p: m1(p[:, 0]), n, steps=steps),
            "equidistribution_1d": lambda: M.equidistributed_mesh(pos, m1),
            "ma_cosine": lambda: CosineMongeAmpere(warm_start=False).solve(monitor_nodes, n),
            "ma_fem": lambda: FEMMongeAmpere.unit_square(pos, tri).solve(lambda p: m1(p[:, 0])),
        }
        d = front_fields(1, 48, 189, seed=0, monitor_scale=1.0, monitor_derivative="normal", force_aligned_k=20)
        u = torch.tensor(d["u"], dtype=torch.float32)[:, None].to(device)
        xi = torch.tensor(pos, dtype=torch.float32)[None].to(device)
        graph = front_graph(n, 20.0, 0.4).to(device)

        def forward(name: str, mod):
            if name == "dmm":  # x = xi + grad phi: a forward and a backward of the potential network
                return lambda: mod(u, xi)
            def um2n():
                with torch.no_grad():
                    return mod(graph)
            return um2n

        ours = {(name, paper): f"{name}_{'paper' if paper else 'cpu'}" for name, paper in modules}
        calls.update({ours[key]: forward(key[0], mod) for key, mod in modules.items()})
        times, last = interleaved_call_times(calls, rounds=repeats, warmup=1, sync=sync)
        (fd_nodes, fd_steps), exact, cos_nodes, (fem, _) = (last["ma_fd"], last["equidistribution_1d"],
                                                             last["ma_cosine"], last["ma_fem"])
        # what each solve delivers at its stopping point (a solve stopped by its step cap is not the MA mesh): the
        # steps or iterations it took, whether it met its own tolerance, its node RMSE to the exact mesh in cells
        solved = {"ma_fd": (fd_steps, fd_steps < steps, fd_nodes), "ma_cosine": (None, None, cos_nodes),
                  "ma_fem": (fem.iterations, fem.converged, fem.pos), "equidistribution_1d": (None, True, exact)}
        for (name, paper), mod in modules.items():
            key = ours[name, paper]
            peak = cuda_peak_mib(calls[key], device) if device == "cuda" else None
            for base in ("ma_fd", "ma_cosine", "ma_fem", "equidistribution_1d"):
                paired = paired_speed_ratio(times[key], times[base])
                taken, converged, nodes = solved[base]
                rows.append({"mover": name, "size": "paper" if paper else "cpu",
                             "experiment": EXPERIMENTS[name][int(paper)], "n_nodes": n * n,
                             "baseline": base, "ours_s": paired["ours_step_s"], "baseline_s": paired["baseline_step_s"],
                             "ratio": paired["ratio_median"],
                             "fd_steps_cap": steps if base == "ma_fd" else None,
                             "baseline_steps": taken, "baseline_converged": converged,
                             "baseline_rmse_cells": _rmse_cells(nodes, exact, n), **paired_fields(paired),
                             "device": device, **({"ours_peak_gpu_mib": peak} if peak is not None else {})})
    if device == "cpu":
        rows.append(_um2n_gat_step_row(quick))
    return rows


def _um2n_gat_step_row(quick: bool) -> dict:
    """UM2N training steps (forward, loss, backward, Adam) of the CPU-scale experiment on a batch of its training
    graphs: the deformer's GATv2 by `lit_models.pde.um2n.gatv2_attention` (ours, the CPU path) vs torch_geometric's
    GATv2Conv (`forward_pyg`, the baseline), interleaved in one process, two modules built alike (same seed)."""
    from torch_geometric.data import Batch

    from benchmarks.timing import interleaved_step_times
    from datamodules.meshes import separable_graph

    batch = Batch.from_data_list([separable_graph(n, np.random.default_rng(n)) for n in (15, 20, 25)])
    steps, losses = {}, {}
    for side in ("ours", "pyg"):
        torch.manual_seed(0)
        module = _module("um2n", False).train()
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        if side == "pyg":
            module.net.deformer.forward = lambda *a, d=module.net.deformer: d.forward_pyg(*a[:6])

        def step(i: int, module=module, opt=opt, side=side) -> None:
            opt.zero_grad(set_to_none=True)
            coord, area = module.loss(batch, module(batch))
            loss = coord + area
            loss.backward()
            opt.step()
            losses.setdefault(side, float(loss.detach()))

        steps[side] = step
    rounds, block = (2, 1) if quick else (5, 3)
    times = interleaved_step_times(steps, rounds=rounds, block=block, warmup=1)
    paired = paired_speed_ratio(times["ours"], times["pyg"])
    return {"mover": "um2n", "size": "cpu", "experiment": EXPERIMENTS["um2n"][0], "n_nodes": int(batch.num_nodes),
            "baseline": "torch_geometric_gatv2_train_step", "ours_s": paired["ours_step_s"],
            "baseline_s": paired["baseline_step_s"], "ratio": paired["ratio_median"],
            "first_loss_rel_diff": abs(losses["ours"] - losses["pyg"]) / abs(losses["pyg"]),
            **paired_fields(paired), "device": "cpu"}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=1))
