"""PIG step cost vs the MLP-PINN step (card `pig`), as ratios measured in the same process.

One training step = fresh collocation batch -> u and its input derivatives -> loss -> backward -> Adam step, through
`PIGModule.losses` (the training step's loss) without a Trainer. Problems: Helmholtz 2D (Laplacian: second
derivatives) and flow mixing 3D (first derivatives in t, x, y; 100 initial points). Cases: PIG with the official
autograd derivatives, PIG with the closed-form derivatives (`laplacian=analytic`, same values), and the MLP-PINN
(3 hidden layers of 64, tanh) with autograd on the same problem. 1 torch thread; median of the
timed steps after warm-up. Rows: seconds per step, and `ratio` = MLP-PINN step / this step (< 1: slower than the
MLP-PINN). `quick`: N = 64 Gaussians, 256 points, a few steps (a smoke test).
"""
from __future__ import annotations

import statistics
import time

SUMMARY = ("How to read: `ours` is seconds per training step of the PIG variant, `baseline` the MLP-PINN step "
           "(3 x 64 tanh, autograd derivatives) on the same problem and batch size in the same process, `ratio` = "
           "baseline / ours (> 1: the PIG step is cheaper). Rows pig_* are Helmholtz 2D (Laplacian), "
           "pig_flow_mixing3d_* flow mixing 3D (first derivatives). 1 torch thread, median over timed steps; "
           "wall-clock numbers depend on machine load, compare ratios. The analytic rows compute the same derivatives "
           "as the autograd rows (tests/papers/test_pig.py checks equality).")


def _time_steps(module, dm, warmup: int, steps: int) -> float:
    import torch

    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for i in range(warmup + steps):
        batch = dm.sample()
        t0 = time.perf_counter()
        loss = module.losses(batch)["loss"]  # the training step's loss (residual + boundary [+ initial] terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool) -> list[dict]:
    import torch

    from datamodules.pig_data import PigDataModule
    from lit_models.pde.pig import PIGModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n_gauss, batch, warmup, steps = (64, 256, 1, 3) if quick else (100, 1000, 3, 20)
    rows = []
    for problem, label in (("helmholtz2d", "Laplacian"), ("flow_mixing3d", "first derivatives")):
        dm = PigDataModule(name=problem, n_collocation=batch, n_boundary=100, n_initial=100)
        mlp = PIGModule(model="mlp", problem=problem)
        base = _time_steps(mlp, dm, warmup, steps)
        n_extra = "400 boundary" if problem == "helmholtz2d" else "100 initial + 400 boundary"
        for lap in ("autograd", "analytic"):
            pig = PIGModule(model="pig", problem=problem, num_gaussians=n_gauss, laplacian=lap)
            t = _time_steps(pig, dm, warmup, steps)
            case = f"pig_{lap}" if problem == "helmholtz2d" else f"pig_{problem}_{lap}"
            rows.append({"case": case, "what": f"s/step, PIG k=4 N={n_gauss} ({lap} {label}, {problem}) vs MLP-PINN",
                         "ours": t, "baseline": base, "ratio": base / t, "unit": "s",
                         "note": f"{batch} collocation + {n_extra} points, 1 thread, median of {steps} steps"})
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
