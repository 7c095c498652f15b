"""Cost of PINN residual evaluation: nested reverse-mode autograd on the batch vs torch.func (vmap of jacfwd).

The residuals are those of the causal-PINN module (`lit_models.pde.causal_pinn`): Allen-Cahn
u_t - 1e-4 u_xx + 5u^3 - 5u (2nd order) and KS u_t + 5uu_x + 0.5u_xx + 0.005u_xxxx (4th order), for the paper's
network (modified MLP, Fourier features M = 5, float32, autocast off) on N collocation points.

Ways, timed on the same network, points and thread count (1 thread):
- `autograd` (baseline, what the module trains with): `lit_models.common.pde.partial`, i.e. one
  torch.autograd.grad(..., create_graph=True) call per derivative order on the whole batch (summed outputs);
- `torch.func`: a scalar function u(t, x) differentiated with nested `jacfwd` (forward mode, the analogue of the
  paper's JAX Taylor-mode `jet`; lower derivatives come out of the same pass as `aux`) and `vmap` over the points;
- `loop` (quick reference, small N only): a Python loop over points with per-point autograd calls,
  extrapolated to N.
Each is timed for the residual alone ("residual") and for residual + backward of mean(r^2) to the parameters
("train step"). Rows say `ratio = baseline seconds / torch.func seconds` (> 1: torch.func faster) and the largest
absolute differences of the residuals and of the parameter gradients (they must agree to float32 round-off).
Autograd and torch.func take turns (`benchmarks.timing.interleaved_step_times`: one warm-up call each, then
`repeats` rounds of one call of each, the order alternated): `ours` / `baseline` are the median seconds per call,
`ratio` the median of the per-round ratios (so a change of machine speed during the measurement hits both alike).
`--device cuda` times the same on a GPU (synchronised before each clock read), with the peak GPU memory of one call
of each (`ours_peak_gpu_mib` / `baseline_peak_gpu_mib`).
"""
from __future__ import annotations

import time

import torch

SUMMARY = ("PINN residual cost: seconds per call of the nested-autograd residual (baseline, the module's way) vs "
           "torch.func vmap(jacfwd) (ours), ratio = autograd / torch.func (> 1: torch.func faster; the two take turns, "
           "median of the per-round ratios), and max |diff| of "
           "residuals and parameter gradients between the two (agreement check). 1 torch thread; wall times on a "
           "shared machine are inflated, compare ratios only.")


def _network(seed: int = 0, width: int = 256, depth: int = 3):
    from lit_models.pde.causal_pinn import CausalPINN

    torch.manual_seed(seed)
    return CausalPINN("modified_mlp", width=width, depth=depth, fourier_modes=5, length=2.0)


def _residual(problem: str, u, u_t, u_x, u_xx, u_xxxx):
    if problem == "allen_cahn":
        return u_t - 1e-4 * u_xx + 5 * u ** 3 - 5 * u
    return u_t + 5 * u * u_x + 0.5 * u_xx + 0.005 * u_xxxx


def residual_autograd(model, problem: str, t, x):
    """Nested reverse-mode on the batch (lit_models.common.pde.partial)."""
    from lit_models.common.pde import no_autocast, partial

    tx = torch.stack([t, x], -1).requires_grad_(True)
    with no_autocast(t.device.type):
        u = model(tx[:, 0], tx[:, 1])[:, 0]
        u_t, u_x = partial(u, tx, 0), partial(u, tx, 1)
        u_xx = partial(u_x, tx, 1)
        u_xxxx = partial(u_xx, tx, 1, 1) if problem == "ks" else None
        return _residual(problem, u, u_t, u_x, u_xx, u_xxxx)


def residual_func(model, problem: str, t, x):
    """torch.func: nested jacfwd of a scalar u(t, x), vmapped over the points. Each level returns the lower
    derivatives as `aux` of the same forward-mode pass (u, u_x, ..., d^n u/dx^n in one evaluation, like a jet)."""
    from torch.func import functional_call, jacfwd, vmap

    from lit_models.common.pde import no_autocast

    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    order = 4 if problem == "ks" else 2

    def point(ti, xi):
        def u(tt, xx):
            return functional_call(model, params, (tt.reshape(1), xx.reshape(1)))[0, 0]

        def raise_order(f):  # f: x -> (u, ..., d^k u); returns x -> (u, ..., d^(k+1) u)
            def inner(xx):
                vals = f(xx)
                return vals[-1], vals
            def g(xx):
                d, vals = jacfwd(inner, has_aux=True)(xx)
                return (*vals, d)
            return g

        fx = lambda xx: (u(ti, xx),)  # noqa: E731
        for _ in range(order):
            fx = raise_order(fx)
        ds = fx(xi)
        u_t = jacfwd(u, argnums=0)(ti, xi)
        return _residual(problem, ds[0], u_t, ds[1], ds[2], ds[4] if order == 4 else None)

    with no_autocast(t.device.type):
        return vmap(point)(t, x)


def residual_loop(model, problem: str, t, x):
    """A Python loop over the points, nested autograd per point (the naive way)."""
    return torch.cat([residual_autograd(model, problem, t[i:i + 1], x[i:i + 1]) for i in range(t.numel())])


def _time(fn, repeats: int, sync=lambda: None) -> float:
    """Best of `repeats` calls after a warm-up: only for the per-point loop reference (one call, extrapolated)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()  # a GPU runs its kernels asynchronously
        best = min(best, time.perf_counter() - start)
    return best


def _grads(model, r):
    return torch.autograd.grad(torch.mean(r ** 2), list(model.parameters()))


def compare(problem: str, n: int, repeats: int = 3, loop_points: int = 0, seed: int = 0,
            width: int = 256, device: str = "cpu") -> list[dict]:
    from benchmarks.timing import (cuda_peak_mib, device_sync, interleaved_step_times, paired_fields,
                                   paired_speed_ratio)

    sync = device_sync(device)
    model = _network(seed, width).to(device)
    g = torch.Generator().manual_seed(seed)
    t, x = torch.rand(n, generator=g).to(device), (-1 + 2 * torch.rand(n, generator=g)).to(device)
    r_a, r_f = residual_autograd(model, problem, t, x), residual_func(model, problem, t, x)
    g_a, g_f = _grads(model, r_a), _grads(model, r_f)
    scale = float(r_a.detach().abs().max())
    r_diff = float((r_a - r_f).detach().abs().max())
    g_diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(g_a, g_f))
    rows = []
    for what, with_backward in (("residual", False), ("train step (residual + backward)", True)):
        def run(fn):
            def call():
                r = fn(model, problem, t, x)
                if with_backward:
                    _grads(model, r)
            return call

        calls = {"autograd": run(residual_autograd), "func": run(residual_func)}
        times = interleaved_step_times({k: (lambda _, call=call: call()) for k, call in calls.items()},
                                       rounds=repeats, block=1, warmup=1, sync=sync)
        paired = paired_speed_ratio(times["func"], times["autograd"])
        ours = paired["ours_step_s"]
        peaks = ({"ours_peak_gpu_mib": cuda_peak_mib(calls["func"], device),
                  "baseline_peak_gpu_mib": cuda_peak_mib(calls["autograd"], device)} if device == "cuda" else {})
        rows.append({"case": f"{problem}_n{n}", "what": what, "ours": ours, "baseline": paired["baseline_step_s"],
                     "ratio": paired["ratio_median"], "unit": "s", "device": device, **paired_fields(paired),
                     **peaks, "note": "ours = torch.func vmap(jacfwd); baseline = nested autograd on the batch; "
                     f"{paired['rounds']} interleaved rounds, per-round ratio quartiles "
                     f"{paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f}"})
        if loop_points:
            # not interleaved: one call of the per-point loop on a few points, extrapolated to N, against `ours`
            # above; a rough reference (orders of magnitude slower), not a paired measurement
            tl, xl = t[:loop_points], x[:loop_points]

            def loop_call():
                r = residual_loop(model, problem, tl, xl)
                if with_backward:
                    _grads(model, r)
            loop_s = _time(loop_call, 1, sync) * n / loop_points
            rows.append({"case": f"{problem}_n{n}", "what": f"{what}, per-point Python loop (extrapolated from "
                         f"{loop_points} points)", "ours": ours, "baseline": loop_s, "ratio": loop_s / ours,
                         "unit": "s", "note": "baseline = loop over points with autograd per point"})
    rows.append({"case": f"{problem}_n{n}", "what": "agreement: max |r_autograd - r_func| / max |r|",
                 "ours": r_diff / max(scale, 1e-30), "baseline": None, "ratio": None, "unit": "max rel diff",
                 "note": f"max |r| = {scale:.3g}"})
    rows.append({"case": f"{problem}_n{n}", "what": "agreement: max relative diff of parameter gradients",
                 "ours": g_diff, "baseline": None, "ratio": None, "unit": "max rel diff", "note": "per tensor, / max"})
    return rows


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    from benchmarks.timing import check_device

    device = check_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if quick:
            plan = [("allen_cahn", 256, 2, 16), ("ks", 128, 2, 8)]
        else:
            # interleaved rounds per case: >= 5, so that one disturbed round moves the median little (with 2 the
            # "median" was the mean of two values)
            plan = [("allen_cahn", 2048, 8, 32), ("allen_cahn", 8192, 5, 0), ("ks", 1024, 5, 16)]
        rows = []
        for problem, n, repeats, loop_points in plan:
            rows += compare(problem, n, repeats, loop_points, device=device)
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # python -m benchmarks.pinn_residuals [--full]
    import sys

    for row in run(quick="--full" not in sys.argv):
        print(row)
