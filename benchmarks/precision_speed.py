"""Mixed precision through the real trainer: median training-step time of a few papers at `trainer.precision`
bf16-mixed (and 16-mixed on CUDA) against 32-true in the same run, each through `launch.train.run` with the
trainer built from the experiment's config (Lightning's precision plugin, not a hand-written autocast).

Full mode on a CUDA GPU runs paper-like sizes (iTransformer in the paper's Traffic setting, 862 variate tokens,
MgNO on a 128 x 128 grid with 32 channels, LightGCN on MovieLens-100K at batch 2048); quick mode runs the CPU-scale
configs for a few steps (a smoke test of the path; CPU bf16 timings say little). Full mode on the CPU times the
CPU-scale configs for the full step count (the paper-like sizes are for a GPU: hours on two cores). The ratio is
step_s(precision) / step_s(32-true): below 1, the precision is faster than float32. On CUDA also "32-true+tf32":
float32 weights and activations with TF32 matmuls (`matmul_precision=high`).
"""
from __future__ import annotations

import statistics
import time

SUMMARY = ("step_ratio = median training-step time at that precision / at 32-true in the same run, through the "
           "trainer's precision plugin (< 1: faster than float32)")

# experiment overrides per case: full (CUDA, paper-like sizes) and quick (CPU smoke test)
CASES = {
    "itransformer": {
        # the paper's Traffic setting (862 variates, 4 layers, D = d_ff = 512, batch 16) on Lorenz-96 data
        "full": ["data.name=lorenz96", "data.offline={num_variates:862,length:2000}", "model.d_model=512",
                 "model.n_heads=8", "model.d_ff=512", "model.e_layers=4", "data.batch_size=16"],
        "quick": ["model.d_model=32", "model.d_ff=32", "data.batch_size=8"],
    },
    "mgno": {
        "full": ["data.resolution=128", "data.n_train=256", "data.batch_size=16", "model.num_channel_u=32",
                 "model.levels=[10,10,10,10,10]"],
        "quick": ["data.resolution=16", "data.n_train=16", "data.batch_size=4"],
    },
    "lightgcn": {
        "full": ["data.batch_size=2048"],  # the paper's batch on MovieLens-100K
        "quick": ["data=synthetic_graph", "data.batch_size=256"],
    },
}
COMMON = ["logger=none", "progress_bar=false", "trainer.enable_model_summary=false", "trainer.limit_val_batches=0",
          "trainer.num_sanity_val_steps=0", "stage=fit", "threads=null"]


def _timer_callback(device: str):
    """A Lightning callback recording each training batch's wall time (synchronising the GPU at both ends)."""
    import lightning as L

    from benchmarks.timing import device_sync

    sync = device_sync(device)

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sync()
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync()
            self.times.append(time.perf_counter() - self._t0)

    return StepTimer()


def case(experiment: str, precision: str, *, quick: bool, device: str) -> dict:
    """Train `steps` steps of one experiment at one precision; the median step time after the warm-up steps."""
    from launch import config as zconfig
    from launch import train

    steps, warmup = (4, 1) if quick else (60, 10)
    trainer_precision, _, matmul = precision.partition("+")  # "32-true+tf32": TF32 matmuls (matmul_precision=high)
    sizes = "full" if device == "cuda" and not quick else "quick"  # paper-like sizes only on a GPU
    overrides = [f"experiment={experiment}", *COMMON, *CASES[experiment][sizes],
                 f"trainer.precision={trainer_precision}", f"matmul_precision={'high' if matmul else 'highest'}",
                 f"trainer.max_steps={steps}", f"trainer.limit_train_batches={steps}", "trainer.max_epochs=1000",
                 *(["trainer=gpu"] if device == "cuda" else [])]
    timer = _timer_callback(device)
    train.run(zconfig.compose(overrides), make_run_dir=False, extra_callbacks=[timer])
    timed = timer.times[warmup:]
    return {"step_s": statistics.median(timed), "timed_steps": len(timed), "sizes": sizes}


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    # Not interleaved: each precision is a whole `launch.train.run` (the precision plugin is fixed when the Trainer is
    # built), so the precisions of a case run one after the other, and a change of machine speed between two runs
    # biases their ratio (the README says so of its numbers). Taking turns would mean several short Trainer runs per
    # precision in A B B A order, each with its own start-up; not done.
    import torch

    from benchmarks.timing import check_device

    device = check_device(device or ("cuda" if torch.cuda.is_available() and not quick else "cpu"))
    precisions = ["32-true", "bf16-mixed"] + (["32-true+tf32", "16-mixed"] if device == "cuda" else [])
    rows = []
    for experiment in CASES:
        base = None
        for precision in precisions:
            res = case(experiment, precision, quick=quick, device=device)
            base = base or res["step_s"]
            rows.append({"case": experiment, "device": device, "precision": precision, **res,
                         "step_ratio": res["step_s"] / base})
    return rows
