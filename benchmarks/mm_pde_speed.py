"""MM-PDE's cost against the fixed-mesh GNN it is compared with (data-free mesh mover paper, Sec. 3.2), in one run.

MM-PDE adds to the fixed-mesh message-passing solver a frozen DMM (x = xi + grad phi: a forward and one backward of
the potential network per frame), a second GNN on the moved nodes, the two learned kNN interpolations between the node
sets and the residual cut. This measures what that costs per step, as ratios against `model.mesh_mover=identity`
(the paper's fixed-mesh GNN, same sizes) built from the same config:
- `train_step`: one-step loss, backward and AdamW step on a batch of trajectories (the interpolation pre-training is
  skipped: the solver phase is the run's cost);
- `rollout_step`: one autoregressive solver step without gradients (inference).
Sizes: the CPU-scale experiment (`data_free_mesh_mover/mm_pde`) and, unless quick, the paper's
(`data_free_mesh_mover/mm_pde_burgers`: 48 x 48 nodes, hidden 128, 6 layers, 35 kNN edges, batch 6). Untrained
weights (the cost does not depend on training; the DMM is marked ready so no fit runs). Steps of both variants take
turns in one process (`benchmarks.timing.interleaved_step_times`), 1 torch thread; `ratio` is the median of the
per-round ratios (`ratio_method`). `--device cuda`: both modules and the batch on the GPU, synchronised before each
clock read, plus the peak GPU memory of one step of each (`mm_pde_peak_gpu_mib` / `fixed_mesh_peak_gpu_mib`).
"""
from __future__ import annotations

import warnings

import torch

from benchmarks.timing import (check_device, cuda_peak_mib, device_sync, interleaved_step_times, paired_fields,
                               paired_speed_ratio)

SUMMARY = ("`ratio` = fixed-mesh GNN seconds / MM-PDE seconds per step (< 1: MM-PDE costs more; 0.5 = twice the "
           "cost), median over interleaved rounds with quartiles; untrained weights, 1 thread of a shared CPU.")

EXPERIMENTS = {"cpu": "data_free_mesh_mover/mm_pde", "paper": "data_free_mesh_mover/mm_pde_burgers"}


def _module(experiment: str, mover: str):
    """The MMPDEModule as `zoo train experiment=... model.mesh_mover=<mover>` builds it, ready to step."""
    from hydra.utils import instantiate

    from launch.config import compose

    cfg = compose([f"experiment={experiment}", f"model.mesh_mover={mover}"])
    module = instantiate(cfg.model, _convert_="partial")
    module.mover_ready.fill_(True)  # untrained DMM weights: the cost is the same
    module.hparams.itp_pretrain_steps = 0
    return module, int(cfg.data.batch_size), int(cfg.model.grid)


def _steps(module, batch: torch.Tensor):
    opt = module.optimizer_factory(module.parameters())
    T = batch.shape[1]

    def train(_: int) -> None:
        loss = module.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def rollout(_: int) -> None:
        with torch.no_grad():
            module.step(batch[:, :1], torch.ones(batch.shape[0], dtype=torch.long, device=batch.device), T)

    return train, rollout


def run(quick: bool = True, device: str = "cpu") -> list[dict]:
    device = check_device(device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = ("cpu",) if quick else ("cpu", "paper")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        for size in sizes:
            # the paper's sizes take tens of seconds per CPU training step: blocks of one step there, but still 5
            # rounds (with fewer, one disturbed round moves the median of the per-round ratios by much of its error)
            rounds, block = (2, 1) if quick else {"cpu": (6, 2), "paper": (5, 1)}[size]
            ours, batch_size, grid = _module(EXPERIMENTS[size], "dmm")
            base, _, _ = _module(EXPERIMENTS[size], "identity")
            ours, base = ours.to(device), base.to(device)
            batch = torch.randn(batch_size, 4, grid, grid).to(device)
            (ours_train, ours_roll), (base_train, base_roll) = _steps(ours, batch), _steps(base, batch)
            for case, a, b in (("train_step", ours_train, base_train), ("rollout_step", ours_roll, base_roll)):
                times = interleaved_step_times({"mm_pde": a, "fixed_mesh": b}, rounds=rounds, block=block,
                                               warmup=1, sync=device_sync(device))
                stats = paired_speed_ratio(times["mm_pde"], times["fixed_mesh"])
                peaks = {"mm_pde_peak_gpu_mib": cuda_peak_mib(lambda: a(0), device),
                         "fixed_mesh_peak_gpu_mib": cuda_peak_mib(lambda: b(0), device)} if device == "cuda" else {}
                rows.append({"size": size, "experiment": EXPERIMENTS[size], "case": case, "nodes": grid * grid,
                             "batch": batch_size, "mm_pde_s": stats["ours_step_s"],
                             "fixed_mesh_s": stats["baseline_step_s"], "ratio": stats["ratio_median"],
                             "ratio_q1": stats["ratio_q1"], "ratio_q3": stats["ratio_q3"], **paired_fields(stats),
                             "device": device, **peaks})
    return rows


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=1))
