"""Training throughput and memory of our iTransformer vs a same-size temporal-token Transformer, and vs the official
implementation's speed anchor (issue 3), as ratios in the same run.

Cases (full mode: on the CPU each in a fresh subprocess, `python -m benchmarks.itransformer_speed --case NAME`,
printing one JSON line, so that a case's peak RSS (`ru_maxrss`) is its own; on CUDA all cases but the `step_*` ones
(which exist for their peak RSS) in one subprocess; 2 torch threads, as the anchor's 2-core machine,
or `PAPERZOO_BENCH_THREADS`, e.g. 1 on a machine shared with other jobs):

1. `pair_tmp_h{96,336}`: THE iTransformer vs temporal-token Transformer comparison: bare training steps (forward,
   MSE, backward, Adam) on fixed random batches of the ETTh1 shape: batch 32, 7 variates, lookback 96; horizon 96
   with d_model = d_ff = 256, horizon 336 with d_model = d_ff = 512; 2 layers, 8 heads, dropout 0.1 (the official
   ETTh1 script). `itr` = `lit_models.dynamics.itransformer.ITransformer` (7 variate tokens), `tmp` =
   `lit_models.dynamics.temporal_transformer.TemporalTransformer` (96 time tokens, the same encoder layers,
   widths and instance normalisation). No timestamp covariates in this pair (pure model comparison). The two take
   turns in one process, the same data and threads (benchmarks/timing.py: untimed warm-up, then 12 rounds of 5 steps
   of each, the order alternated); the ratio is the median of the per-round speed ratios (timed one after the other
   a drift of the machine would scale the ratio, however far from 1 it is).
   `step_{itr,tmp}_h{96,336}` (CPU only): the same steps of one model in a fresh process of its own, for its peak
   RSS; the step times they print are unpaired and give no speed ratio (the `pair_tmp` row does).
2. `pair_ref_h{96,336}`: the same bare steps with the 4 timeF covariate tokens of the official ETTh1 run, for
   ours (`itm`: Adam `fused`, as configs/model/itransformer.yaml) and `ref` = benchmarks/itransformer_reference.py,
   the official implementation's operation sequence rewritten (Conv1d FFN, einsum attention, for-loop Adam): the
   same-machine, same-run stand-in for the quoted anchor, which was measured on another machine. Their speeds are
   within ~20 % of each other, so the two take turns in one process (benchmarks/timing.py: 12 rounds of 5 steps
   each, the order alternated) and the ratio is taken round by round: timed in two fresh processes one after the
   other, the same pair gave ratios from 0.84 to 1.17 on this 2-core machine.
3. `fit_itr_h{96,336}`: the anchor's setting end to end: `zoo train experiment=itransformer/etth1` (horizon 336:
   `data.pred_len=336 model.d_model=512 model.d_ff=512`) through `launch.train.run` on a generated CSV with ETTh1's
   exact shape (17,420 hourly rows, the 7 ETTh1 column names; 4 timeF covariate tokens as the official run),
   a fixed number of train steps timed with a callback after warm-up (data loading, Lightning loop and optimiser
   included, validation excluded), extrapolated to the 264 steps of an ETTh1 epoch.

Anchor (issue 3, quoted, not re-run): the official thuml/iTransformer on a 2-core CPU machine with the ETTh1
settings: ~24 steps/s (39 ms/step), ~11 s/epoch, peak memory 0.86 GiB; ~10 steps/s at horizon 336 (d_model 512).

Memory: on CPU the peak RSS of the case's process (tracemalloc does not see torch's allocator, so it cannot measure
tensors); the increase over the RSS right after imports is also given. On a GPU (`--device cuda`, added
automatically in full mode when CUDA is available) `*_peak_gpu_mib` of one training step of each model of a pair
(benchmarks.timing.cuda_peak_mib: `torch.cuda.max_memory_allocated` above what was allocated before the step, so
parameters, batches and Adam state are not counted), as docs/checks.md defines it. The anchor rows get no ratio on
CUDA: the anchor is a CPU figure.

`--quick` (the smoke test): tiny sizes, a few steps, all cases in this process; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timing import check_device, cuda_peak_mib, device_sync, paired_fields

MARK = "@@ITRANSFORMER_BENCH@@ "
ROOT = Path(__file__).resolve().parents[1]
GIB_MIB = 1024.0

# official thuml/iTransformer, ETTh1 settings, 2-core CPU machine (issue 3; quoted, not measured here)
ANCHOR = {
    96: {"steps_per_s": 24.0, "ms_per_step": 39.0, "epoch_s": 11.0, "peak_mib": 0.86 * GIB_MIB},
    336: {"steps_per_s": 10.0},
}
ETTH1_ROWS = 17420
ETTH1_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
ETTH1_STEPS_PER_EPOCH = (8640 - 96 - 96 + 1) // 32  # train windows // batch (drop_last): 264

SIZES = {  # horizon -> model sizes (official ETTh1 script)
    96: {"d_model": 256, "d_ff": 256},
    336: {"d_model": 512, "d_ff": 512},
}
# torch threads: 2 as the anchor's 2-core machine; PAPERZOO_BENCH_THREADS overrides it (on an oversubscribed
# machine 2 OpenMP threads wait on each other at every parallel region: steps slow down 10-100x, use 1 there)
FULL = {"batch": 32, "variates": 7, "seq_len": 96, "n_heads": 8, "e_layers": 2, "warmup": 3, "timed": 20,
        "fit_warmup": 5, "fit_timed": 40, "pair_rounds": 12, "pair_block": 5,
        "threads": int(os.environ.get("PAPERZOO_BENCH_THREADS", "2"))}
QUICK = {"batch": 4, "variates": 3, "seq_len": 16, "n_heads": 2, "e_layers": 1, "warmup": 1, "timed": 2,
         "fit_warmup": 1, "fit_timed": 2, "pair_rounds": 8, "pair_block": 1, "threads": 1, "d_model": 16, "d_ff": 16}

# pair_<baseline>_h*: (ours, baseline) taking turns in one process. tmp: the model comparison (no timestamp tokens);
# ref: ours with the 4 timeF tokens (`itm`) vs the official-structure reference
PAIRS = {"tmp": ("itr", "tmp"), "ref": ("itm", "ref")}

CASES = ("pair_tmp_h96", "step_itr_h96", "step_tmp_h96", "pair_ref_h96", "fit_itr_h96",
         "pair_tmp_h336", "step_itr_h336", "pair_ref_h336", "fit_itr_h336", "step_tmp_h336")


def cases_for(device: str) -> tuple[str, ...]:
    """The cases run on `device`: the `step_*` cases exist for their process's peak RSS, so on CUDA (peak GPU memory
    from the pairs) they are left out."""
    return CASES if device == "cpu" else tuple(c for c in CASES if not c.startswith("step_"))

SUMMARY = (
    "How to read: `ratio` = ours / baseline for the unit of the row; `better_if` says which side of 1 is good "
    "(steps/s: > 1; ms/step, s/epoch and memory: < 1). Model rows compare our iTransformer (variate tokens) with a "
    "temporal-token Transformer of the same width/depth on the same ETTh1-shaped batches (bare training steps; "
    "torch threads in the note: 2 by default, PAPERZOO_BENCH_THREADS overrides); their steps/s row is paired: the "
    "two take turns in one process and `ratio` is the median of the per-round ratios (`ratio_q1`-`ratio_q3` its "
    "quartiles). Anchor rows compare the full `zoo train experiment=itransformer/etth1` loop on an ETTh1-shaped CSV "
    "with the official implementation's figures on a 2-core CPU machine (quoted, not re-run; no ratio on CUDA). "
    "Peak memory on the CPU is the case process's peak RSS (fresh process per case; imports of torch + lightning are "
    "part of it, see `note`); on CUDA the peak GPU memory of one step above what was allocated before it. "
    "Wall-clock numbers depend on machine load (the 1-min load average is in each note): on a shared machine "
    "compare ratios, not absolute values. --quick rows are a smoke test on tiny sizes; their ratios mean nothing."
)


# ------------------------------------------------------------------------------------------------ helpers
def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _params(cfg: dict, horizon: int) -> dict:
    sizes = {k: cfg[k] for k in ("d_model", "d_ff")} if "d_model" in cfg else SIZES[horizon]
    pred_len = horizon if "d_model" not in cfg else max(2, horizon // 24)  # quick: tiny horizon
    return {"seq_len": cfg["seq_len"], "pred_len": pred_len, "n_heads": cfg["n_heads"],
            "e_layers": cfg["e_layers"], "dropout": 0.1, **sizes}


def _parse(case: str) -> tuple[str, str, int]:
    kind, model, horizon = case.split("_")
    return kind, model, int(horizon[1:])


def write_etth1_like(path: Path, rows: int = ETTH1_ROWS, seed: int = 0) -> None:
    """A CSV with ETTh1's exact shape and column names (hourly dates from 2016-07-01), smooth random values."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    values = (np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6.3, len(ETTH1_COLUMNS)))
              + 0.1 * np.cumsum(rng.standard_normal((rows, len(ETTH1_COLUMNS))), axis=0) / math.sqrt(rows))
    df = pd.DataFrame(values.astype(np.float32), columns=ETTH1_COLUMNS)
    df.insert(0, "date", pd.date_range("2016-07-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, float_format="%.6g")


# ------------------------------------------------------------------------------------------------ cases
def _training_step(model_name: str, horizon: int, quick: bool, device: str = "cpu"):
    """(step(i), info) for bare training steps of one model on fixed random ETTh1-shaped batches (the same batches
    for every model); info: sizes, parameter and token counts."""
    import torch
    import torch.nn.functional as F

    from lit_models.dynamics.itransformer import ITransformer
    from lit_models.dynamics.temporal_transformer import TemporalTransformer

    from benchmarks.itransformer_reference import ReferenceITransformer

    cfg = QUICK if quick else FULL
    torch.manual_seed(0)
    p = _params(cfg, horizon)
    if model_name in ("itr", "itm"):
        model = ITransformer(**p)
    elif model_name == "ref":
        model = ReferenceITransformer(**p)
    else:
        model = TemporalTransformer(cfg["variates"], **p)
    model = model.to(device).train()
    # ours (and the temporal baseline of the model pair): Adam as configs/model/itransformer.yaml (fused);
    # the official-structure reference: torch.optim.Adam(lr) as the official code (for-loop update on CPU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=None if model_name == "ref" else True)
    n_batches = 4
    marks = model_name in ("itm", "ref")  # with the 4 timeF covariate tokens of the official ETTh1 run
    gen = torch.Generator().manual_seed(1)  # the same batches for every model
    xs = torch.randn(n_batches, cfg["batch"], p["seq_len"], cfg["variates"], generator=gen).to(device)
    ys = torch.randn(n_batches, cfg["batch"], p["pred_len"], cfg["variates"], generator=gen).to(device)
    ms = torch.randn(n_batches, cfg["batch"], p["seq_len"], 4, generator=gen).to(device) if marks else None

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        out = model(xs[i % n_batches], ms[i % n_batches]) if marks else model(xs[i % n_batches])
        loss = F.mse_loss(out, ys[i % n_batches])
        loss.backward()
        opt.step()

    info = {"model": model_name, "horizon": p["pred_len"], "device": device,
            "params": sum(q.numel() for q in model.parameters()),
            "tokens": p["seq_len"] if model_name == "tmp" else cfg["variates"] + (4 if marks else 0),
            "d_model": p["d_model"], "batch": cfg["batch"], "variates": cfg["variates"]}
    return step, info


def case_step(model_name: str, horizon: int, quick: bool, device: str = "cpu") -> dict:
    """Bare training steps of one model on fixed random ETTh1-shaped batches (its own process: peak RSS)."""
    import torch

    cfg = QUICK if quick else FULL
    if device == "cuda":  # the cases share one process on the GPU: free an earlier case's tensors
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    step, info = _training_step(model_name, horizon, quick, device)
    rss_before = _maxrss_mib()
    sync = device_sync(device)
    for i in range(cfg["warmup"]):
        step(i)
    sync()
    times = []
    cpu0, t_start = _cpu_s(), time.perf_counter()
    for i in range(cfg["timed"]):
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    times.sort()
    median = times[len(times) // 2]
    out = {**info, "step_s": median, "mean_step_s": wall / len(times), "best_step_s": times[0],
           "timed_steps": len(times), "cores_used": (_cpu_s() - cpu0) / wall, "rss_before_mib": rss_before}
    if device == "cuda":  # one more step: its peak above the parameters, batches and Adam state (docs/checks.md)
        out["peak_gpu_mib"] = cuda_peak_mib(lambda: step(cfg["warmup"] + cfg["timed"]), device)
    return out


def case_pair(horizon: int, quick: bool, device: str = "cpu", baseline: str = "ref") -> dict:
    """Ours and `baseline` taking turns in one process (benchmarks/timing.py: untimed warm-up, then rounds of a block
    of steps of each, the order alternated), the same data shape and threads; the speed ratio is the median of the
    per-round ratios, so a drift of the machine during the run scales both sides of a round alike. `baseline`: `tmp`
    (the temporal-token Transformer, vs our `itr`) or `ref` (the official-structure reference, vs our `itm`, with
    timestamp tokens). On CUDA also the peak GPU memory of one step of each (cuda_peak_mib)."""
    from benchmarks.timing import interleaved_step_times, paired_speed_ratio

    cfg = QUICK if quick else FULL
    ours_name = PAIRS[baseline][0]
    ours, info = _training_step(ours_name, horizon, quick, device)
    base, base_info = _training_step(baseline, horizon, quick, device)
    cpu0, t_start = _cpu_s(), time.perf_counter()
    times = interleaved_step_times({ours_name: ours, baseline: base}, rounds=cfg["pair_rounds"],
                                   block=cfg["pair_block"], warmup=cfg["warmup"], sync=device_sync(device))
    wall = time.perf_counter() - t_start
    summary = paired_speed_ratio(times[ours_name], times[baseline])
    out = {**info, **summary, "baseline": baseline, "step_s": summary["ours_step_s"],
           "baseline_params": base_info["params"], "baseline_tokens": base_info["tokens"],
           "pair_block": cfg["pair_block"], "pair_warmup": cfg["warmup"],
           "cores_used": (_cpu_s() - cpu0) / wall if wall > 0 else float("nan")}
    if device == "cuda":
        out["ours_peak_gpu_mib"] = cuda_peak_mib(lambda: ours(0), device)
        out["baseline_peak_gpu_mib"] = cuda_peak_mib(lambda: base(0), device)
    return out


def _recorder():
    import lightning as L

    class StepRecorder(L.Callback):
        """Wall-clock and CPU time at the end of every train batch."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())
            self.cpu.append(_cpu_s())

    return StepRecorder()


def case_fit(horizon: int, quick: bool, data_dir: str, device: str = "cpu") -> dict:
    """`experiment=itransformer/etth1` through launch.train.run on an ETTh1-shaped CSV: timed train steps."""
    import warnings

    from launch.config import compose
    from launch.train import run as train_run

    warnings.filterwarnings("ignore")
    cfg_ = QUICK if quick else FULL
    warmup, timed = cfg_["fit_warmup"], cfg_["fit_timed"]
    steps = warmup + timed
    overrides = ["experiment=itransformer/etth1", "logger=none", "progress_bar=false", "stage=fit",
                 f"threads={cfg_['threads']}", f"data.data_dir={data_dir}", "trainer.max_epochs=1",
                 f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=0", "early_stopping=null",
                 "checkpoint.monitor=null", "checkpoint.test_on=final", f"data.pred_len={horizon}"]
    if quick:
        overrides += [f"model.d_model={QUICK['d_model']}", f"model.d_ff={QUICK['d_ff']}", "model.n_heads=2",
                      "model.e_layers=1", f"data.batch_size={QUICK['batch']}"]
    else:
        overrides += [f"model.d_model={SIZES[horizon]['d_model']}", f"model.d_ff={SIZES[horizon]['d_ff']}"]
    if device == "cuda":
        overrides += ["trainer=gpu"]
    cfg = compose(overrides)
    recorder = _recorder()
    t0 = time.perf_counter()
    train_run(cfg, make_run_dir=False, extra_callbacks=[recorder])
    wall = time.perf_counter() - t0
    ends, cpu = recorder.ends, recorder.cpu
    if len(ends) < steps:
        raise RuntimeError(f"only {len(ends)} of {steps} train steps ran")
    span = ends[steps - 1] - ends[warmup - 1]
    step_s = span / timed
    window = max(1, min(10, timed // 3))
    best_window = min((ends[j + window] - ends[j]) / window for j in range(warmup - 1, steps - window))
    return {"model": "itr", "horizon": horizon, "device": device, "step_s": step_s, "timed_steps": timed,
            "warmup_steps": warmup, "epoch_s": step_s * ETTH1_STEPS_PER_EPOCH, "best_window_step_s": best_window,
            "window_steps": window, "cores_used": (cpu[steps - 1] - cpu[warmup - 1]) / span, "wall_s": wall,
            "d_model": int(cfg.model.d_model), "batch": int(cfg.data.batch_size), "time_features": True}


def run_case(name: str, quick: bool, data_dir: str, device: str = "cpu") -> dict:
    import torch

    cfg = QUICK if quick else FULL
    torch.set_num_threads(cfg["threads"])
    kind, model, horizon = _parse(name)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    if kind == "step":
        res = case_step(model, horizon, quick, device)
    elif kind == "pair":
        res = case_pair(horizon, quick, device, baseline=model)
    else:
        res = case_fit(horizon, quick, data_dir, device)
    res.update(case=name if device == "cpu" else f"{name}_cuda", threads=cfg["threads"], load1=load,
               case_s=time.perf_counter() - t0, peak_rss_mib=_maxrss_mib())
    return res


# ------------------------------------------------------------------------------------------------ processes
def worker(cases: list[str], quick: bool, data_dir: str, device: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import lightning  # noqa: F401  (imports first: the baseline RSS includes them)
    import torch  # noqa: F401

    import launch.train  # noqa: F401
    import lit_models.dynamics.itransformer  # noqa: F401

    base = _maxrss_mib()
    for name in cases:
        try:
            res = run_case(name, quick, data_dir, device)
            res["rss_after_imports_mib"] = base
        except Exception as err:  # noqa: BLE001 - one failing case (e.g. out of GPU memory) must not lose the others
            label = name if device == "cpu" else f"{name}_cuda"
            res = {"case": label, "error": f"{type(err).__name__}: {err}"[:400]}
        print(MARK + json.dumps(res, default=float), flush=True)


def _spawn(cases: list[str], data_dir: Path, device: str = "cpu", timeout: float = 900) -> list[dict]:
    """Run `cases` in one fresh process; one result per case (an `error` row for each case that printed none)."""
    threads = FULL["threads"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "benchmarks.itransformer_speed", "--case", ",".join(cases), "--data-dir",
           str(data_dir), "--device", device]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        stderr, code = f"timed out after {timeout:.0f} s", -1
    results = [json.loads(line[len(MARK):]) for line in stdout.splitlines() if line.startswith(MARK)]
    done = {r["case"] for r in results}
    tail = " | ".join((stderr or "").strip().splitlines()[-3:])
    for case in cases:
        label = case if device == "cpu" else f"{case}_cuda"
        if label not in done:
            results.append({"case": label, "error": f"exit {code}: {tail[-400:]}"})
    return results


def run(quick: bool, device: str | None = None) -> list[dict]:
    """Run every case and return the table rows (full: one fresh subprocess per case on the CPU and, when CUDA is
    available, one subprocess for all cases on the GPU; `device` ("cpu" or "cuda", `zoo bench itransformer --device
    cuda`) runs that one only; quick: in this process, on the CPU or on the device asked for)."""
    devices = [check_device(device)] if device is not None else None
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="itransformer_bench_") as tmp:
        data_dir = Path(tmp) / "etth1"
        write_etth1_like(data_dir / "ETTh1.csv")
        if quick:
            dev = devices[0] if devices else "cpu"
            for case in cases_for(dev):
                try:
                    res = run_case(case, True, str(data_dir), dev)
                    res["rss_after_imports_mib"] = float("nan")
                except Exception as err:  # noqa: BLE001 - a failing case becomes a FAILED row
                    res = {"case": case, "error": f"{type(err).__name__}: {err}"[:400]}
                results[res["case"]] = res
        else:
            if devices is None:
                import torch

                devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
            for dev in devices:
                # CPU: a fresh process per case (its peak RSS is the case's own); CUDA: one process for all cases
                # (peak GPU memory of one step, cuda_peak_mib; one CUDA start-up instead of six)
                for cases in ([[c] for c in CASES] if dev == "cpu" else [list(cases_for(dev))]):
                    for res in _spawn(cases, data_dir, dev):
                        results[res["case"]] = res
    return build_rows(results, quick)


# ------------------------------------------------------------------------------------------------ rows
def _row(case: str, what: str, ours, baseline, unit: str, better_if: str, note: str = "", *,
         comparable: bool = True, **extra) -> dict:
    """A table row; `ratio` = ours / baseline, except for a paired row (`ratio_median` given: the two took turns in
    one process), whose ratio is the median of the per-round ratios (benchmarks.timing.RATIO_METHOD), and a row whose
    two sides are not comparable (`comparable=False`, e.g. a GPU time vs a quoted CPU figure): no ratio."""
    ratio = None
    if ours is not None and baseline is not None and baseline > 0 and math.isfinite(ours):
        ratio = float(ours) / float(baseline)
    if extra.get("ratio_median") is not None:
        ratio = float(extra["ratio_median"])
    if not comparable:
        ratio = None
    row = {"case": case, "what": what, "ours": None if ours is None else float(ours),
           "baseline": None if baseline is None else float(baseline), "ratio": ratio, "unit": unit,
           "better_if": better_if}
    row.update(extra)
    row["note"] = note
    return row


def _load(res: dict) -> str:
    """Machine load and CPU time per step (wall x cores used): on a shared machine the CPU time is the steadier
    number (the wall time also counts the time other processes held the cores)."""
    cores = res.get("cores_used", float("nan"))
    return (f"load {res.get('load1', float('nan')):.1f}, {cores:.2f} cores used, CPU time "
            f"{1e3 * cores * res.get('step_s', float('nan')):.0f} ms/step")


def _pair_note(pair: dict) -> str:
    return (f"the two take turns in one process ({pair['rounds']} rounds of {pair['pair_block']} steps of each after "
            f"{pair['pair_warmup']} untimed warm-up steps, order alternated): per-round speed ratio median "
            f"{pair['ratio_median']:.3f}, quartiles {pair['ratio_q1']:.3f}-{pair['ratio_q3']:.3f}")


def _model_rows(h: int, suffix: str, results: dict[str, dict], quick: bool, tag: str) -> list[dict]:
    """iTransformer vs the temporal-token Transformer at horizon `h`: the paired speed row (pair_tmp, THE ratio),
    the memory row (CPU: peak RSS of the fresh-process step cases; CUDA: peak GPU memory of one step, from the pair)."""
    rows: list[dict] = []
    case = f"model_h{h}{suffix}"
    pair = results.get(f"pair_tmp_h{h}{suffix}", {})
    lookback = (QUICK if quick else FULL)["seq_len"]
    speed_what = "train steps/s, iTransformer vs temporal-token Transformer (paired: interleaved in one process)"
    if "step_s" in pair:
        shape = (f"batch {pair['batch']}, {pair['variates']} variates, L={lookback}, S={pair['horizon']}, "
                 f"d_model={pair['d_model']}, {pair['device']}, {pair.get('threads', '?')} threads{tag}")
        rows.append(_row(case, speed_what, 1 / pair["step_s"], 1 / pair["baseline_step_s"], "steps/s", "ratio > 1",
                         f"{shape}; bare steps (fwd+MSE+bwd+Adam) on the same batches; {_pair_note(pair)}; median "
                         f"{1e3 * pair['step_s']:.1f} vs {1e3 * pair['baseline_step_s']:.1f} ms/step; tokens "
                         f"{pair['tokens']} vs {pair['baseline_tokens']}; params {pair['params']} vs "
                         f"{pair['baseline_params']}; load {pair.get('load1', float('nan')):.1f}, "
                         f"{pair.get('cores_used', float('nan')):.2f} cores used",
                         **paired_fields(pair)))
        if suffix and pair.get("ours_peak_gpu_mib") is not None:
            rows.append(_row(case, "peak GPU memory of one train step above what was allocated before it, "
                             "iTransformer vs temporal", pair["ours_peak_gpu_mib"], pair["baseline_peak_gpu_mib"],
                             "MiB", "ratio < 1", "benchmarks.timing.cuda_peak_mib: torch.cuda.max_memory_allocated "
                             "above the memory allocated before the step (parameters, batches and Adam state not "
                             "counted)", ours_peak_gpu_mib=pair["ours_peak_gpu_mib"],
                             baseline_peak_gpu_mib=pair["baseline_peak_gpu_mib"]))
    itr, tmp = results.get(f"step_itr_h{h}{suffix}", {}), results.get(f"step_tmp_h{h}{suffix}", {})
    if "step_s" in itr and "step_s" in tmp and not suffix:
        inc_i = max(itr["peak_rss_mib"] - itr["rss_after_imports_mib"], 1e-3) \
            if math.isfinite(itr.get("rss_after_imports_mib", float("nan"))) else itr["peak_rss_mib"]
        inc_t = max(tmp["peak_rss_mib"] - tmp["rss_after_imports_mib"], 1e-3) \
            if math.isfinite(tmp.get("rss_after_imports_mib", float("nan"))) else tmp["peak_rss_mib"]
        # the step times of these cases ran in two processes one after the other: a drift of the machine between
        # them scales their ratio, so they are given for information only, not as a ratio
        rows.append(_row(case, "peak RSS increase over imports, iTransformer vs temporal", inc_i, inc_t,
                         "MiB", "ratio < 1", f"peak RSS {itr['peak_rss_mib']:.0f} vs {tmp['peak_rss_mib']:.0f} "
                         f"MiB (fresh process per case)" + (" (quick: one shared process)" if quick else "")
                         + f"; unpaired step times of these processes, {1e3 * itr['step_s']:.1f} vs "
                         f"{1e3 * tmp['step_s']:.1f} ms/step, are no speed comparison: see the paired row "
                         f"'{speed_what}' of {case}",
                         unpaired_ours_step_s=itr["step_s"], unpaired_baseline_step_s=tmp["step_s"]))
    elif suffix and "step_s" in itr and "peak_gpu_mib" in itr and "step_s" in tmp and "peak_gpu_mib" in tmp:
        # only when the step cases were asked for on CUDA by name (`--case`); run() leaves them out there
        rows.append(_row(case, "peak GPU memory of one train step above what was allocated before it, iTransformer "
                         "vs temporal (separate cases)", itr["peak_gpu_mib"], tmp["peak_gpu_mib"], "MiB", "ratio < 1",
                         "benchmarks.timing.cuda_peak_mib", ours_peak_gpu_mib=itr["peak_gpu_mib"],
                         baseline_peak_gpu_mib=tmp["peak_gpu_mib"]))
    return rows


def build_rows(results: dict[str, dict], quick: bool) -> list[dict]:
    rows: list[dict] = []
    for res in results.values():
        if "error" in res:
            rows.append({"case": res["case"], "what": "FAILED", "ours": None, "baseline": None, "ratio": None,
                         "unit": "", "better_if": "", "error": res["error"], "note": res["error"]})
    tag = " (quick: tiny sizes)" if quick else ""
    for suffix in ("", "_cuda"):
        for h in (96, 336):
            rows += _model_rows(h, suffix, results, quick, tag)
        for h in (96, 336):
            fit = results.get(f"fit_itr_h{h}{suffix}", {})
            if "step_s" not in fit:
                continue
            case = f"anchor_h{h}{suffix}"
            anchor = ANCHOR[h]
            # the anchor is the official code on a 2-core CPU: a GPU time is not comparable with it (no ratio)
            on_cpu = fit.get("device", "cpu") == "cpu" and not suffix
            no_ratio = "" if on_cpu else "no ratio: a GPU time vs the anchor's CPU figure; "
            note = (f"{no_ratio}zoo train experiment=itransformer/etth1 (S={fit['horizon']}, d_model={fit['d_model']}, "
                    f"batch {fit['batch']}, 4 timeF tokens) on an ETTh1-shaped CSV, {fit['timed_steps']} steps timed "
                    f"after {fit['warmup_steps']}, {fit['device']}, {fit['threads']} threads; fastest "
                    f"{fit['window_steps']}-step window {1e3 * fit['best_window_step_s']:.1f} ms/step; {_load(fit)}; "
                    f"anchor: official code, 2-core CPU (quoted){tag}")
            rows.append(_row(case, "train steps/s, ours vs official (anchor)", 1 / fit["step_s"],
                             anchor["steps_per_s"], "steps/s", "ratio > 1", note, comparable=on_cpu))
            if "ms_per_step" in anchor:
                rows.append(_row(case, "ms per train step, ours vs official (anchor)", 1e3 * fit["step_s"],
                                 anchor["ms_per_step"], "ms", "ratio < 1", no_ratio.rstrip("; "), comparable=on_cpu))
                rows.append(_row(case, "s per ETTh1 epoch (264 steps, extrapolated), ours vs official (anchor)",
                                 fit["epoch_s"], anchor["epoch_s"], "s", "ratio < 1",
                                 f"{no_ratio}validation excluded", comparable=on_cpu))
                if on_cpu:
                    rows.append(_row(case, "peak memory, ours (process peak RSS) vs official (anchor)",
                                     fit["peak_rss_mib"], anchor["peak_mib"], "MiB", "ratio < 1",
                                     f"includes importing torch + lightning "
                                     f"({fit.get('rss_after_imports_mib', float('nan')):.0f} MiB after imports)"
                                     + (" (quick: shared process)" if quick else "")))
        for h in (96, 336):
            pair = results.get(f"pair_ref_h{h}{suffix}", {})
            if "step_s" not in pair:
                continue
            case = f"official_structure_h{h}{suffix}"
            rows.append(_row(case, "train steps/s, ours vs official-structure reference (bare steps, same process)",
                             1 / pair["step_s"], 1 / pair["baseline_step_s"], "steps/s", "ratio > 1",
                             f"both with the 4 timeF tokens ({pair['tokens']} tokens), S={pair['horizon']}, d_model="
                             f"{pair['d_model']}; reference = benchmarks/itransformer_reference.py (the official op "
                             f"sequence: Conv1d FFN, einsum attention, for-loop Adam), params {pair['params']} vs "
                             f"{pair['baseline_params']}; {_pair_note(pair)}; "
                             f"load {pair.get('load1', float('nan')):.1f}{tag}",
                             **paired_fields(pair)))
            fit = results.get(f"fit_itr_h{h}{suffix}", {})
            if "step_s" in fit:
                rows.append(_row(case, "train steps/s, our full `zoo train` loop vs the reference's bare step",
                                 1 / fit["step_s"], 1 / pair["baseline_step_s"], "steps/s", "ratio > 1",
                                 "ours includes data loading and the Lightning loop, the reference does not: the "
                                 "same-machine stand-in for the quoted anchor (separate processes, so less exact than "
                                 "the paired row above)" + tag))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.itransformer_speed")
    parser.add_argument("--case", required=True, help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    opts = parser.parse_args(argv)
    cases = opts.case.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    worker(cases, opts.quick, opts.data_dir, opts.device)


if __name__ == "__main__":
    main()
