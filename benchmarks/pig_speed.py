"""PIG step cost vs the MLP-PINN step (card `pig`), as ratios measured in the same process.

One training step = fresh collocation batch -> u and its input derivatives -> loss -> backward -> Adam step, through
`PIGModule.losses` (the training step's loss) without a Trainer. Problems: Helmholtz 2D (Laplacian: second
derivatives) and flow mixing 3D (first derivatives in t, x, y; 100 initial points). Cases: PIG with the official
autograd derivatives, PIG with the closed-form derivatives (`laplacian=analytic`, same values), and the MLP-PINN
(3 hidden layers of 64, tanh) with autograd on the same problem. 1 torch thread. The three take turns in one
process (`benchmarks.timing.interleaved_step_times`: after each one's warm-up, rounds of `block` steps of each, the
order alternated), on the same pre-drawn batches (drawing is not timed). Rows: median seconds per step of each, and
`ratio` = the median over rounds of MLP-PINN step / this step in the same round (< 1: slower than the MLP-PINN).
`--device cuda`: models and batches on the GPU, synchronised before each clock read, plus the peak GPU memory of one
step of each (`benchmarks.timing.cuda_peak_mib`). `quick`: N = 64 Gaussians, 256 points, a few steps (a smoke test).
"""
from __future__ import annotations

from benchmarks.timing import (check_device, cuda_peak_mib, device_sync, interleaved_step_times, paired_fields,
                               paired_speed_ratio)

SUMMARY = ("How to read: `ours` is seconds per training step of the PIG variant, `baseline` the MLP-PINN step "
           "(3 x 64 tanh, autograd derivatives) on the same problem and batch size in the same process, `ratio` = "
           "baseline / ours (> 1: the PIG step is cheaper). Rows pig_* are Helmholtz 2D (Laplacian), "
           "pig_flow_mixing3d_* flow mixing 3D (first derivatives). 1 torch thread; the variants take turns "
           "(interleaved rounds), `ratio` is the median of the per-round ratios; "
           "wall-clock numbers depend on machine load, compare ratios. The analytic rows compute the same derivatives "
           "as the autograd rows (tests/papers/test_pig.py checks equality).")


def _step(module, batches: list):
    """step(i): one training step of `module` on batches[i] (the training step's loss, backward, Adam step)."""
    import torch

    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)

    def step(i: int) -> None:
        loss = module.losses(batches[i % len(batches)])["loss"]  # residual + boundary [+ initial] terms
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def run(quick: bool, device: str = "cpu") -> list[dict]:
    import torch

    from datamodules.pig_data import PigDataModule
    from lit_models.pde.pig import PIGModule

    device = check_device(device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # (Gaussians, collocation points, warm-up steps, rounds, steps per variant per round)
    n_gauss, batch, warmup, rounds, block = (64, 256, 1, 3, 1) if quick else (100, 1000, 3, 10, 2)
    rows = []
    for problem, label in (("helmholtz2d", "Laplacian"), ("flow_mixing3d", "first derivatives")):
        dm = PigDataModule(name=problem, n_collocation=batch, n_boundary=100, n_initial=100)
        # the same fresh batches for every variant, drawn before the clock starts
        batches = [{k: v.to(device) for k, v in dm.sample().items()} for _ in range(warmup + rounds * block)]
        models = {"mlp": PIGModule(model="mlp", problem=problem).to(device)}
        for lap in ("autograd", "analytic"):
            models[lap] = PIGModule(model="pig", problem=problem, num_gaussians=n_gauss, laplacian=lap).to(device)
        steps = {name: _step(module, batches) for name, module in models.items()}
        times = interleaved_step_times(steps, rounds=rounds, block=block, warmup=warmup, sync=device_sync(device))
        peaks = {name: cuda_peak_mib(lambda step=step: step(0), device) for name, step in steps.items()} \
            if device == "cuda" else {}
        n_extra = "400 boundary" if problem == "helmholtz2d" else "100 initial + 400 boundary"
        for lap in ("autograd", "analytic"):
            paired = paired_speed_ratio(times[lap], times["mlp"])
            case = f"pig_{lap}" if problem == "helmholtz2d" else f"pig_{problem}_{lap}"
            rows.append({"case": case, "what": f"s/step, PIG k=4 N={n_gauss} ({lap} {label}, {problem}) vs MLP-PINN",
                         "ours": paired["ours_step_s"], "baseline": paired["baseline_step_s"],
                         "ratio": paired["ratio_median"], "unit": "s", **paired_fields(paired), "device": device,
                         **({"ours_peak_gpu_mib": peaks[lap], "baseline_peak_gpu_mib": peaks["mlp"]}
                            if device == "cuda" else {}),
                         "note": f"{batch} collocation + {n_extra} points, 1 thread, {rounds} interleaved rounds of "
                                 f"{block} steps per variant after {warmup} warm-up; per-round ratio quartiles "
                                 f"{paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f}"})
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
