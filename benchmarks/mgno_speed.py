"""MgNO vs an FNO-style baseline of (about) equal parameter count on the offline Darcy data: time per training step
and test relative L2 error, as ratios measured in the same run (`zoo bench mgno`).

Both models train with the same loop (Adam + OneCycle, max lr 2e-3, div_factor 2, final_div_factor 100, relative-L2
loss, batch 8, 1 torch thread) on the same data (the `mgno` experiment's 32 x 32 offline Darcy set; `--full`: the
card's 64 x 64 reference scale). The baseline is a plain FNO-2d written here (Li et al. 2021: lifting 1x1 -> 4
Fourier layers GELU(K v + W v), K truncated to `modes` x `modes` corner modes -> projection MLP), its width chosen so
that its parameter count is the closest to MgNO's. `--quick`: a few steps only (timings valid, errors not converged).
The two train side by side in one process on the same batches: step i of MgNO, then step i of the FNO, untimed for
the first `steps - timed` steps; the last `timed` steps are timed in rounds (`benchmarks.timing.interleaved_step_times`:
a block of steps of each, the order alternated), so a change of machine speed hits both alike. `time_ratio` is the
median of the per-round ratios, `step_ms` each model's median per-round step time.
`--device cuda`: both on the GPU, synchronised before each clock read; `peak_gpu_mib` the peak GPU memory of one
step on top of the model, optimiser state and batch (`benchmarks.timing.cuda_peak_mib`).
"""
from __future__ import annotations

import argparse
import json

import torch
from torch import nn

SUMMARY = ("mgno_speed: `step_ms` is the median wall time of one training step (forward + backward + Adam) with 1 "
           "torch thread; `test_rel_l2` after the same number of steps. Ratios are FNO / MgNO, so > 1 means MgNO is faster "
           "(time_ratio) or more accurate (error_ratio). The two models take turns (interleaved rounds); time_ratio is "
           "the median of the per-round ratios (quartiles in ratio_q1 / ratio_q3). On a shared CPU the absolute times "
           "are inflated; the ratio is what to read.")


class SpectralConv2d(nn.Module):
    """FNO Fourier layer: keep the lowest `modes` x `modes` (both signs of the first axis) Fourier coefficients and
    multiply them by learned complex weights."""

    def __init__(self, cin: int, cout: int, modes: int) -> None:
        super().__init__()
        scale = 1.0 / (cin * cout)
        self.modes = modes
        self.w1 = nn.Parameter(scale * torch.randn(cin, cout, modes, modes, dtype=torch.cfloat))
        self.w2 = nn.Parameter(scale * torch.randn(cin, cout, modes, modes, dtype=torch.cfloat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        m = self.modes
        xf = torch.fft.rfft2(x.float())
        out = torch.zeros(b, self.w1.shape[1], h, w // 2 + 1, dtype=torch.cfloat, device=x.device)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", xf[:, :, :m, :m], self.w1)
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", xf[:, :, -m:, :m], self.w2)
        return torch.fft.irfft2(out, s=(h, w))


class FNO2d(nn.Module):
    """Lifting (input + grid coordinates) -> `layers` x GELU(SpectralConv + 1x1) -> projection MLP (width 128)."""

    def __init__(self, modes: int = 8, width: int = 32, layers: int = 4) -> None:
        super().__init__()
        self.lift = nn.Conv2d(3, width, 1)
        self.spectral = nn.ModuleList([SpectralConv2d(width, width, modes) for _ in range(layers)])
        self.local = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(layers)])
        self.proj = nn.Sequential(nn.Conv2d(width, 128, 1), nn.GELU(), nn.Conv2d(128, 1, 1))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        gy, gx = torch.meshgrid(torch.linspace(0, 1, h, device=x.device), torch.linspace(0, 1, w, device=x.device),
                                indexing="ij")
        v = self.lift(torch.cat([x, gx.expand(b, 1, h, w), gy.expand(b, 1, h, w)], 1))
        for i, (k, lin) in enumerate(zip(self.spectral, self.local)):
            v = k(v) + lin(v)
            if i < len(self.spectral) - 1:
                v = self.act(v)
        return self.proj(v)


def n_params(model: nn.Module) -> int:
    """Real parameter count (a complex weight counts twice)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())


def matched_fno(target: int, modes: int) -> FNO2d:
    best = min(range(4, 129), key=lambda w: abs(n_params(FNO2d(modes, w)) - target))
    return FNO2d(modes, best)


def _batch_stream(dm, device: str):
    """The training batches (x, y) on `device`, epoch after epoch."""
    while True:
        for batch in dm.train_dataloader():
            yield batch["x"].to(device), batch["y"].to(device)


def _train_side_by_side(models: dict[str, nn.Module], dm, steps: int, timed: int, block: int,
                        device: str = "cpu") -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """Train every model for `steps` steps on the same batches, taking turns; the last `timed` steps timed in
    interleaved rounds of `block` steps. Returns each model's seconds per step per round and its peak GPU memory of
    one step (None on the CPU)."""
    from benchmarks.timing import cuda_peak_mib, device_sync, interleaved_step_times
    from lit_models.common.pde import relative_l2

    def trainer(model: nn.Module):
        model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 2), div_factor=2.0,
                                                    final_div_factor=100.0)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = relative_l2(model(x), y).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

        return step

    train = {name: trainer(model) for name, model in models.items()}
    stream = _batch_stream(dm, device)
    peaks: dict[str, float | None] = dict.fromkeys(train)
    for i in range(steps - timed):  # untimed: each batch to every model in turn
        x, y = next(stream)
        for name, step in train.items():
            if i == steps - timed - 1:  # the last untimed step: its peak GPU memory (None on the CPU)
                peaks[name] = cuda_peak_mib(lambda step=step: step(x, y), device)
            else:
                step(x, y)
    batches = [next(stream) for _ in range(timed)]  # fetched before the clock starts
    times = interleaved_step_times({name: (lambda i, step=step: step(*batches[i])) for name, step in train.items()},
                                   rounds=timed // block, block=block, warmup=0, sync=device_sync(device))
    return times, peaks


def _evaluate(model: nn.Module, dm, device: str) -> float:
    from lit_models.common.pde import relative_l2

    model.eval()
    with torch.no_grad():
        errs = [relative_l2(model(b["x"].to(device)), b["y"].to(device)).cpu() for b in dm.test_dataloader()]
    return float(torch.cat(errs).mean())


def run(quick: bool = True, device: str = "cpu") -> list[dict]:
    from benchmarks.timing import check_device, paired_fields, paired_speed_ratio
    from datamodules.darcy import DarcyDataModule
    from lit_models.pde.mgno import MgNO

    device = check_device(device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if quick:
        res, levels, c_u, steps, timed, block, n_train = 32, ["10"] * 4, 12, 12, 8, 1, 200
    else:
        res, levels, c_u, steps, timed, block, n_train = 64, ["10"] * 5, 16, 700, 100, 4, 1000
    dm = DarcyDataModule(resolution=res, n_train=n_train, n_test=100, batch_size=8, eval_batch_size=50)
    dm.setup()
    mg = MgNO(1, 1, num_layer=3, num_channel_u=c_u, levels=levels, resolution=res)
    fno = matched_fno(n_params(mg), modes=min(12, res // 4))
    models = {"mgno": mg, "fno": fno}
    torch.manual_seed(0)
    times, peaks = _train_side_by_side(models, dm, steps, timed, block, device)
    paired = paired_speed_ratio(times["mgno"], times["fno"])  # per round: fno seconds / mgno seconds
    rows = []
    errors = {}
    for name, model in models.items():
        errors[name] = _evaluate(model, dm, device)
        rows.append({"model": name, "grid": res, "params": n_params(model), "steps": steps,
                     "step_ms": 1e3 * (paired["ours_step_s"] if name == "mgno" else paired["baseline_step_s"]),
                     "test_rel_l2": errors[name], "device": device,
                     **({"peak_gpu_mib": peaks[name]} if peaks.get(name) is not None else {})})
    rows.append({"model": "fno / mgno", "grid": res, "params": n_params(fno) / n_params(mg), "steps": steps,
                 "time_ratio": paired["ratio_median"], "error_ratio": errors["fno"] / errors["mgno"],
                 **paired_fields(paired), "timed_steps": timed, "block": block})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=not args.full), indent=1))
