"""Training throughput of generalized teacher forcing (GTF) vs plain BPTT for the clipped shPLRNN (GTF paper,
arXiv 2306.04406), as ratios in the same run, on the same batches (same sequence length and batch size).

One training iteration = `lit_models.dynamics.gtf_plrnn.gtf_loss` over a batch (B, T, N), backward, optimiser step
(RAdam, as defaults.json), exactly what `GTFPLRNNModule.training_step` computes:
- `bptt`: alpha = 0 (free-running BPTT through the whole sequence);
- `gtf`: constant alpha (0.3, the ECG script's value): the forcing z~ = (1 - alpha) F(z~) + alpha zhat each step;
- `agtf`: adaptive GTF (the Lorenz-63 defaults): additionally, every 5 iterations, alpha* from the product upper
  bound (spectral norms of the per-step Jacobians along the batch, no gradients) and the annealing update.

Settings: `lorenz63` = M = N = 3, L = 50, T = 200, B = 16 (defaults.json); `ecg` = M = N = 5, L = 250, T = 200,
B = 16 (paper_experiments/ECG, identity observation model). Data: a Lorenz-63 trajectory from
`DystsDataModule` (z-scored; for `ecg` a 5-d delay embedding of its x coordinate, as the ECG's 5-d PECUZAL
embedding), random subsequences drawn once, then cycled. 1 torch thread, float32, all in this process: the three
variants take turns (benchmarks/timing.py: 10 rounds of 15 iterations each, the order alternated), since their
speeds differ by a few percent, less than the machine's drift between runs one after the other. `ratio` is the
median over rounds of the per-round ratio (`ratio_method`), with its quartiles; `ours` / `baseline` are steps/s at
each variant's median per-round step time. `--device cuda`: models and batches on the GPU, synchronised before each
clock read (the step's gradient-norm record also waits for the GPU, as it does in training), plus the peak GPU memory
of one iteration of each variant (`benchmarks.timing.cuda_peak_mib`).

Besides the per-iteration cost, GTF's point is that its gradients stay bounded where BPTT's explode: the median
gradient norm per variant is in each row's note (one step's cost is nearly the same; what differs is what a step is
worth). `--quick`: tiny sizes, a few iterations; numbers mean nothing.
"""
from __future__ import annotations

import functools
import math
import os
import statistics

SUMMARY = (
    "How to read: `ours` = GTF (constant alpha) or aGTF (adaptive alpha, alpha* every 5 iterations), `baseline` = "
    "plain BPTT (alpha = 0) on the same batches, the same clipped shPLRNN and optimiser (RAdam), 1 torch thread; "
    "`ratio` = ours / baseline in steps/s (> 1: GTF trains faster per iteration), the median of the per-round "
    "ratios of the interleaved rounds. The forcing itself is a convex "
    "mix per step, so GTF and BPTT should cost about the same per iteration; aGTF adds the Jacobian spectral norms "
    "every 5 iterations. The note gives the median gradient norm of each (GTF's bounded gradients are the point of "
    "the method). Wall-clock numbers depend on machine load (1-min load average in the note); compare ratios. "
    "--quick rows are a smoke test on tiny sizes; their ratios mean nothing."
)

SETTINGS = {  # name -> (latent M = N, hidden L, sequence length T, batch B)
    "lorenz63": {"latent_dim": 3, "hidden_dim": 50, "seq_len": 200, "batch": 16},
    "ecg": {"latent_dim": 5, "hidden_dim": 250, "seq_len": 200, "batch": 16},
}
QUICK_SETTINGS = {
    "lorenz63": {"latent_dim": 3, "hidden_dim": 8, "seq_len": 20, "batch": 4},
    "ecg": {"latent_dim": 5, "hidden_dim": 8, "seq_len": 20, "batch": 4},
}
VARIANTS = {"bptt": ("constant", 0.0), "gtf": ("constant", 0.3), "agtf": ("adaptive", 1.0)}
STEPS = {True: (1, 2, 2), False: (10, 10, 15)}  # (warm-up, rounds, iterations per round) per variant
ALPHA_UPDATE_EVERY, ALPHA_DECAY = 5, 0.999


@functools.lru_cache(maxsize=4)
def _series(setting: str, quick: bool):
    """(T_total, N) float32 tensor: z-scored Lorenz-63 (N = 3) or a 5-d delay embedding of its x (N = 5)."""
    import numpy as np
    import torch

    from datamodules.dynamics import DystsDataModule

    n_points = 800 if quick else 6000
    dm = DystsDataModule(name="Lorenz", n_points=n_points, train_points=n_points - 200, noise=0.0,
                         pts_per_period=150, seq_len=10, batch_size=2, steps_per_epoch=1)
    dm.setup("fit")
    x = dm.train_segments[0]
    if setting == "ecg":
        lag, dims = 10, SETTINGS["ecg"]["latent_dim"]
        xs = x[:, 0].numpy()
        t = len(xs) - lag * (dims - 1)
        emb = np.stack([xs[i * lag: i * lag + t] for i in range(dims)], axis=1)
        x = torch.as_tensor(emb, dtype=torch.float32)
    return x


def _variant(setting: str, variant: str, quick: bool, seed: int = 0, device: str = "cpu"):
    """(step(i), state) for one variant: a fresh model and optimiser on the setting's fixed batches."""
    import torch

    from lit_models.dynamics.gtf_plrnn import ShallowPLRNN, alpha_star, gtf_loss, product_upper_bound

    cfg = (QUICK_SETTINGS if quick else SETTINGS)[setting]
    method, alpha0 = VARIANTS[variant]
    torch.manual_seed(seed)
    series = _series(setting, quick)
    model = ShallowPLRNN(cfg["latent_dim"], cfg["hidden_dim"], clipped=True).to(device)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    n_batches = 8
    starts = torch.randint(0, series.shape[0] - cfg["seq_len"], (n_batches, cfg["batch"]), generator=gen)
    batches = [torch.stack([series[s: s + cfg["seq_len"]] for s in row.tolist()]).to(device) for row in starts]
    state = {"alpha": alpha0, "grad_norms": [], "obs_dim": series.shape[1], **cfg}

    def step(i: int) -> None:
        x = batches[i % n_batches]
        if method == "adaptive" and (i + 1) % ALPHA_UPDATE_EVERY == 0:  # as GTFPLRNNModule._update_alpha
            star = alpha_star(product_upper_bound(model, x[:, 1:]))
            alpha = state["alpha"]
            state["alpha"] = star if star > alpha else ALPHA_DECAY * alpha + (1 - ALPHA_DECAY) * star
        opt.zero_grad(set_to_none=True)
        loss = gtf_loss(model, x, state["alpha"])
        loss.backward()
        state["grad_norms"].append(float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in model.parameters()))))
        opt.step()

    return step, state


def measure(setting: str, quick: bool, seed: int = 0, device: str = "cpu") -> dict[str, dict]:
    """All variants of one setting, taking turns in this process (benchmarks/timing.py): per variant the median
    seconds per iteration, its per-round times, the median gradient norm and the final alpha (and on CUDA the peak
    GPU memory of one more iteration)."""
    from benchmarks.timing import cuda_peak_mib, device_sync, interleaved_step_times

    warmup, rounds, block = STEPS[quick]
    built = {variant: _variant(setting, variant, quick, seed, device) for variant in VARIANTS}
    times = interleaved_step_times({v: step for v, (step, _) in built.items()}, rounds=rounds, block=block,
                                   warmup=warmup, sync=device_sync(device))
    peaks = {v: cuda_peak_mib(lambda step=step: step(warmup + rounds * block), device) for v, (step, _) in
             built.items()} if device == "cuda" else {}
    out = {}
    for variant, (_, state) in built.items():
        finite = [g for g in state["grad_norms"] if math.isfinite(g)]
        out[variant] = {"setting": setting, "variant": variant, "step_s": statistics.median(times[variant]),
                        "round_step_s": times[variant], "timed_steps": rounds * block,
                        "median_grad_norm": statistics.median(finite) if finite else float("nan"),
                        "alpha_final": state["alpha"], "peak_gpu_mib": peaks.get(variant),
                        **{k: v for k, v in state.items() if k not in ("grad_norms", "alpha")}}
    return out


def run(quick: bool, device: str = "cpu") -> list[dict]:
    import torch

    from benchmarks.timing import check_device, paired_fields, paired_speed_ratio

    device = check_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict] = []
    try:
        for setting in SETTINGS:
            load = os.getloadavg()[0]
            try:
                res = measure(setting, quick, device=device)
            except Exception as err:  # noqa: BLE001 - a failing setting becomes a FAILED row
                rows.append({"case": f"{setting}", "what": "FAILED", "ours": None, "baseline": None,
                             "ratio": None, "unit": "", "error": f"{type(err).__name__}: {err}"[:400], "note": ""})
                continue
            base = res.get("bptt")
            if base is None:
                continue
            cfg = base
            shape = (f"clipped shPLRNN M={cfg['latent_dim']} L={cfg['hidden_dim']}, T={cfg['seq_len']}, "
                     f"B={cfg['batch']}, RAdam, 1 thread, {device}, load {load:.1f}"
                     + (" (quick: tiny sizes)" if quick else ""))
            for variant in ("gtf", "agtf"):
                ours = res.get(variant)
                if ours is None:
                    continue
                label = "GTF (alpha = 0.3)" if variant == "gtf" else "aGTF (adaptive alpha, every 5 iterations)"
                paired = paired_speed_ratio(ours["round_step_s"], base["round_step_s"])
                rows.append({
                    "case": f"{setting}_{variant}", "what": f"train iterations/s, {label} vs BPTT",
                    "ours": 1.0 / ours["step_s"], "baseline": 1.0 / base["step_s"],
                    "ratio": paired["ratio_median"], "unit": "steps/s", **paired_fields(paired), "device": device,
                    **({"ours_peak_gpu_mib": ours["peak_gpu_mib"], "baseline_peak_gpu_mib": base["peak_gpu_mib"]}
                       if device == "cuda" else {}),
                    "note": (f"{shape}; {paired['rounds']} rounds of {STEPS[quick][2]} iterations per variant, "
                             f"taking turns: {1e3 * ours['step_s']:.2f} vs {1e3 * base['step_s']:.2f} ms (median "
                             f"per round), per-round ratio median {paired['ratio_median']:.3f}, quartiles "
                             f"{paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f}; median grad norm "
                             f"{ours['median_grad_norm']:.3g} vs "
                             f"BPTT {base['median_grad_norm']:.3g}; final alpha {ours['alpha_final']:.3f}"),
                    "grad_norm_ours": ours["median_grad_norm"], "grad_norm_bptt": base["median_grad_norm"],
                })
    finally:
        torch.set_num_threads(threads)
    return rows
