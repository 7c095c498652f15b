"""PIG step cost vs the MLP-PINN step (card `pig`), as ratios measured in the same process.

One training step = fresh Helmholtz collocation batch -> u and Δu -> loss (boundary + f_scale x residual) -> backward
-> Adam step, through `PIGModule.training_step`'s math (value_and_laplacian, the same loss) without a Trainer.
Cases: PIG with the official second-order autograd Laplacian, PIG with the closed-form Laplacian
(`laplacian=analytic`, same values), and the MLP-PINN 2-64-64-64-1 with autograd. 1 torch thread; median of the
timed steps after warm-up. Rows: seconds per step, and `ratio` = MLP-PINN step / this step (< 1: slower than the
MLP-PINN). `quick`: N = 64 Gaussians, 256 points, a few steps (a smoke test).
"""
from __future__ import annotations

import statistics
import time

SUMMARY = ("How to read: `ours` is seconds per training step of the PIG variant, `baseline` the MLP-PINN step "
           "(2-64-64-64-1 tanh, autograd Laplacian) on the same batch size in the same process, `ratio` = "
           "baseline / ours (> 1: the PIG step is cheaper). 1 torch thread, median over timed steps; wall-clock "
           "numbers depend on machine load, compare ratios. The analytic row computes the same Laplacian as the "
           "autograd row (tests/papers/test_pig.py checks equality).")


def _time_steps(module, dm, warmup: int, steps: int) -> float:
    import torch

    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for i in range(warmup + steps):
        batch = dm.sample()
        t0 = time.perf_counter()
        u, lap = module.value_and_laplacian(batch["x"])
        res = lap + module.hparams.coefficient * u - batch["q"]
        loss = torch.mean((module(batch["x_boundary"]) - batch["g"]) ** 2) + module.hparams.f_scale * torch.mean(res**2)
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
    dm = PigDataModule(n_collocation=batch, n_boundary=100)
    mlp = PIGModule(model="mlp")
    base = _time_steps(mlp, dm, warmup, steps)
    rows = []
    for lap in ("autograd", "analytic"):
        pig = PIGModule(model="pig", num_gaussians=n_gauss, laplacian=lap)
        t = _time_steps(pig, dm, warmup, steps)
        rows.append({"case": f"pig_{lap}", "what": f"s/step, PIG k=4 N={n_gauss} ({lap} Laplacian) vs MLP-PINN",
                     "ours": t, "baseline": base, "ratio": base / t, "unit": "s",
                     "note": f"{batch} collocation + 400 boundary points, 1 thread, median of {steps} steps"})
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
