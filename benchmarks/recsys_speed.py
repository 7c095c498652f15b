"""Speed and memory of LightGCN / UltraGCN, as ratios against a baseline measured (or quoted) in the same run.

Cases (each in a fresh subprocess, `python -m benchmarks.recsys_speed --case NAME --quick|--full`, which prints
one JSON line, so that the peak RSS `ru_maxrss` of a case belongs to that case alone):

1. `ml100k_lightgcn`, `ml100k_ultragcn`: the paper-check setting (experiment configs `lightgcn` / `ultragcn` as
   composed, validation every epoch, 1 torch thread). Training time per epoch (validation excluded: from the
   start of the epoch to the end of its last batch) and validation Recall@20 per epoch, recorded by a callback.
   LightGCN trains its 30 epochs; UltraGCN trains until it reaches LightGCN's best Recall@20 or 60 epochs.
2. `prop_{ours,pyg}_{ml100k,gowalla}`: one forward + backward of K=3 LightGCN propagation from the same E0 on the
   same graph, ours (`LightGCN.propagate`, CSR A_hat, symmetric backward) vs torch-geometric
   (`torch_geometric.nn.models.LightGCN.get_embedding` on the edge_index, its default message passing,
   normalisation recomputed per call as in PyG); 1 thread. Outputs and E0 gradients are saved and compared.
3. `gowalla_{lightgcn,ultragcn}`: a generated graph with Gowalla's exact shape (29,858 users, 40,981 items,
   810,128 train + 217,242 test interactions, power-law user and item degrees), read through
   `InteractionDataModule(name="gowalla", data_dir=...)` and trained with the `*/gowalla` experiment configs
   through `launch.train.run`; 2 torch threads. A fixed number of steps is timed after warm-up and extrapolated
   to a full epoch; then one full validation (all test users, full ranking, train items masked) is timed through
   the module's real validation path. Baselines: the official implementations on a 2-core CPU machine
   (figures quoted in REFERENCE, not re-measured here).
4. Paired, in one process each (benchmarks/timing.py: after a warm-up of each, rounds of a block of each, the order
   alternated A B, B A, ...; ratio = median of the per-round ratios, with quartiles, `rounds`, `ratio_method`):
   `prop_paired_{ml100k,gowalla}`: ours vs torch-geometric's propagation as in 2, on the same graph, E0 and output
   gradient (outputs and gradients compared in the process); `step_paired_ml100k`: UltraGCN vs LightGCN training
   steps with the paper-check configs without a Trainer (the model's own batch sampling, training_step, backward,
   optimiser step), seconds per step x steps per epoch; `score_paired_ml100k`: UltraGCN training steps with its
   sampled scoring (`sampled_dot`: the positive, negatives and item-item neighbours in one sampled product) vs the
   same module scoring through autograd's dense matmul and gather (`_unfused_dot`, the path it keeps off the CPU;
   the code before the sampled product scored the positive elementwise and the neighbours by bmm, so this baseline is
   close to the old step, not the same; losses compared in the process). These are the ratios to quote: the per-case rows of 1 and 2
   ran in different processes, one after the other, and keep their peak-memory figures.

`device` (`zoo bench lightgcn --device cuda`; every case's argument list gets `--device`): the propagation cases on
the GPU, the trainings with `trainer=gpu`; synchronised before each clock read, and the paired rows add the peak GPU
memory of one call / step of each side (`benchmarks.timing.cuda_peak_mib`). The Gowalla rows then get no ratio (their
baselines are CPU figures). The CUDA path has not yet run on a GPU.

`--quick`: the same cases on small generated graphs with a few steps, grouped into 4 processes run two at a time
(process start-up, mostly importing lightning, dominates there; peak memory is then per group, not per case; the
paired cases share the groups of the propagation cases).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MARK = "@@RECSYS_BENCH@@ "
ROOT = Path(__file__).resolve().parents[1]
GIB = 1024.0

# Gowalla (NGCF/LightGCN split): the shape the generated graph copies exactly
GOWALLA_SHAPE = {"num_users": 29858, "num_items": 40981, "num_train": 810128, "num_test": 217242}
QUICK_SHAPE = {"num_users": 300, "num_items": 400, "num_train": 9000, "num_test": 2250}

# Official implementations on a 2-core CPU machine (quoted, not measured here): LightGCN = gusye1234/LightGCN-PyTorch,
# UltraGCN = xue-pai/UltraGCN, both with the Gowalla settings.
REFERENCE = {
    "lightgcn": {"epoch_s": 360.0, "eval_s": 162.0, "peak_mib": 14.0 * GIB},
    "ultragcn": {"epoch_s": 1200.0, "eval_s": None, "peak_mib": 11.7 * GIB},
}
TARGETS = {"epoch": 2.0, "eval": 10.0, "peak_mib": 3.0 * GIB}

ML100K_LIGHTGCN_EPOCHS = 30
ML100K_ULTRAGCN_MAX_EPOCHS = 60
GOWALLA_STEPS = {True: (1, 3), False: (3, 30)}  # (warm-up, timed) train steps
PROP_REPEATS = {  # (warm-up, timed) calls
    ("ml100k", True): (1, 3), ("ml100k", False): (3, 20),
    ("gowalla", True): (1, 3), ("gowalla", False): (1, 5),
}

PROP_DIM, PROP_LAYERS = 64, 3
PROP_PAIRED = {  # (warm-up calls, rounds, calls per implementation per round), both implementations in one process
    ("ml100k", True): (1, 3, 1), ("ml100k", False): (3, 10, 2),
    ("gowalla", True): (1, 3, 1), ("gowalla", False): (1, 5, 1),
}
STEP_PAIRED = {True: (1, 3, 2), False: (3, 10, 10)}  # (warm-up steps, rounds, steps per model per round)

CASES = (
    "ml100k_lightgcn", "ml100k_ultragcn",
    "prop_ours_ml100k", "prop_pyg_ml100k", "prop_ours_gowalla", "prop_pyg_gowalla",
    "gowalla_lightgcn", "gowalla_ultragcn",
    "prop_paired_ml100k", "prop_paired_gowalla", "step_paired_ml100k", "score_paired_ml100k",
)
QUICK_GROUPS = (
    ("ml100k_lightgcn", "ml100k_ultragcn"),
    ("gowalla_lightgcn", "gowalla_ultragcn"),
    ("prop_ours_ml100k", "prop_ours_gowalla", "step_paired_ml100k", "score_paired_ml100k"),
    ("prop_pyg_ml100k", "prop_pyg_gowalla", "prop_paired_ml100k", "prop_paired_gowalla"),
)
CASE_THREADS = {"gowalla_lightgcn": 2, "gowalla_ultragcn": 2}  # every other case: 1 torch thread

SUMMARY = (
    "How to read: `ours` and `baseline` are in `unit`; `ratio` is always oriented so that > 1 means ours is "
    "better (baseline/ours for seconds and memory, ours/baseline for Recall@20). ML-100K rows compare UltraGCN "
    "(ours) with LightGCN (baseline) trained in this run with the paper-check configs, 1 torch thread, training "
    "time only (validation excluded). Propagation rows compare our LightGCN.propagate (CSR A_hat, symmetric "
    "backward) with torch-geometric's LightGCN on the same edges, K=3 and E0, forward+backward per call, 1 thread; "
    "`max abs diff` rows say the two agree. Rows with `ratio_median` are paired: both sides in one process, "
    "interleaved rounds, `ratio` = the median of the per-round ratios (quote these; the other propagation and "
    "ML-100K s/epoch rows time the two sides in separate processes one after the other). Gowalla rows are on a generated graph with Gowalla's exact counts and "
    "power-law degrees, 2 torch threads; their baselines are the official implementations' figures on a 2-core "
    "machine (quoted, not re-run), epoch times are extrapolated from a fixed number of timed steps, and `target` "
    "/`met` say whether the goal (epoch >= 2x, full evaluation >= 10x, peak < 3 GiB) holds. Peak memory is the "
    "process's peak RSS (ru_maxrss) of a fresh process per case; `note` also gives the increase over the RSS "
    "right after imports (~1.2 GiB of it is importing torch + lightning). Wall-clock numbers depend on machine "
    "load (the 1-min load average at the start of each case is in its note); only compare ratios. --quick rows "
    "run on tiny graphs and several cases share a process: they are a smoke test, their ratios mean nothing."
)


# ------------------------------------------------------------------------------------------------ graph generation
def generate_powerlaw_interactions(
    num_users: int,
    num_items: int,
    num_train: int,
    num_test: int,
    *,
    user_alpha: float = 1.42,
    item_exponent: float = 0.6,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic bipartite graph with exactly these counts and power-law degrees (numpy only, seconds).

    User train degrees: min_degree + Pareto(user_alpha) tail (capped at 30x the mean and a quarter of the items),
    adjusted to sum to num_train. Items: Zipf-like popularity p(rank r) ~ r^-item_exponent over a random
    permutation of the ids; per-user duplicates are re-drawn; every item gets >= 1 train edge (so that the
    item count read back is exactly num_items). Test edges: ~num_test/num_train of each user's train degree,
    same popularity, disjoint from that user's train items. Returns (train_user, train_item, test_user, test_item).
    """
    rng = np.random.default_rng(seed)
    mean = num_train / num_users
    min_degree = int(max(1, min(8, mean // 3)))
    cap = int(max(min_degree + 1, min(num_items // 4, 30 * mean)))
    if num_train > num_users * cap or num_train < num_users * min_degree or num_items > num_train:
        raise ValueError("counts cannot be met with the degree bounds")
    tail = rng.pareto(user_alpha, num_users)
    degree = min_degree + np.floor(tail / tail.sum() * (num_train - min_degree * num_users)).astype(np.int64)
    degree = np.minimum(degree, cap)
    while (missing := num_train - int(degree.sum())) > 0:  # floor/cap left a residual: add it to random users
        free = np.flatnonzero(degree < cap)
        np.add.at(degree, rng.choice(free, size=min(missing, free.size), replace=False), 1)

    popularity = np.arange(1, num_items + 1, dtype=np.float64) ** -item_exponent
    popularity /= popularity.sum()
    item_of_rank = rng.permutation(num_items)

    def draw(n: int) -> np.ndarray:
        return item_of_rank[rng.choice(num_items, size=n, p=popularity)]

    def redraw_duplicates(user: np.ndarray, item: np.ndarray, forbidden: np.ndarray | None) -> np.ndarray:
        for _ in range(200):
            key = user * num_items + item
            order = np.argsort(key, kind="stable")
            dup = np.zeros(key.size, dtype=bool)
            dup[order[1:]] = key[order[1:]] == key[order[:-1]]
            if forbidden is not None:
                dup |= np.isin(key, forbidden)
            if not dup.any():
                return item
            item[dup] = draw(int(dup.sum())) if _ < 100 else rng.integers(0, num_items, int(dup.sum()))
        raise RuntimeError("could not draw distinct items per user")

    train_user = np.repeat(np.arange(num_users, dtype=np.int64), degree)
    train_item = redraw_duplicates(train_user, draw(num_train), None)
    # every item needs a train edge: move edges of items that have >= 2 (never their first) to the unseen items
    item_degree = np.bincount(train_item, minlength=num_items)
    unseen = np.flatnonzero(item_degree == 0)
    if unseen.size:
        _, first = np.unique(train_item, return_index=True)
        donors = np.setdiff1d(np.arange(num_train), first)
        moved = rng.choice(donors, size=unseen.size, replace=False)
        train_item[moved] = rng.permutation(unseen)  # an unseen item has no edge yet: no duplicate possible
    assert (np.bincount(train_item, minlength=num_items) > 0).all()

    test_degree = np.floor(degree * (num_test / num_train)).astype(np.int64)
    room = num_items - degree
    while (missing := num_test - int(test_degree.sum())) > 0:
        free = np.flatnonzero(test_degree < np.minimum(room, 2 * degree))
        np.add.at(test_degree, rng.choice(free, size=min(missing, free.size), replace=False), 1)
    test_user = np.repeat(np.arange(num_users, dtype=np.int64), test_degree)
    train_keys = np.sort(train_user * num_items + train_item)
    test_item = redraw_duplicates(test_user, draw(num_test), train_keys)
    return train_user, train_item, test_user, test_item


def write_user_lines(path: Path, user: np.ndarray, item: np.ndarray, num_users: int) -> None:
    """`user item item ...` per line (the LightGCN/NGCF train.txt/test.txt format), every user listed."""
    order = np.argsort(user, kind="stable")
    counts = np.bincount(user, minlength=num_users)
    chunks = np.split(item[order], np.cumsum(counts)[:-1])
    lines = [" ".join([str(u), *map(str, c.tolist())]) for u, c in enumerate(chunks)]
    path.write_text("\n".join(lines) + "\n")


def write_gowalla_like(data_dir: Path, quick: bool) -> dict:
    shape = QUICK_SHAPE if quick else GOWALLA_SHAPE
    t0 = time.perf_counter()
    tu, ti, eu, ei = generate_powerlaw_interactions(**shape)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_user_lines(data_dir / "train.txt", tu, ti, shape["num_users"])
    write_user_lines(data_dir / "test.txt", eu, ei, shape["num_users"])
    udeg = np.bincount(tu, minlength=shape["num_users"])
    ideg = np.bincount(ti, minlength=shape["num_items"])
    return {**shape, "generate_s": time.perf_counter() - t0, "max_user_degree": int(udeg.max()),
            "median_user_degree": float(np.median(udeg)), "max_item_degree": int(ideg.max()),
            "median_item_degree": float(np.median(ideg))}


# ------------------------------------------------------------------------------------------------ worker helpers
def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _recorder():
    """A Lightning callback recording train time per epoch (validation excluded), validation results and
    per-step times; module.setup is wrapped to time the set-up (A_hat / item-item neighbours + eval CSR).
    `sync` (torch.cuda.synchronize on a GPU) is called before each clock read of an epoch, step or validation."""
    import lightning as L

    class Recorder(L.Callback):
        def __init__(self, target: float | None = None, metric: str = "val/recall@20", sync=None) -> None:
            self.target, self.metric = target, metric
            self.sync = sync or (lambda: None)
            self.epochs: list[dict] = []
            self.step_ends: list[float] = []
            self.step_cpu: list[float] = []  # process CPU seconds at each step end (contention check)
            self.setup_s = 0.0
            self.rss = {}
            self._epoch_start = self._last_batch_end = self._val_start = 0.0
            self._cum_train = 0.0
            self.t_created = time.perf_counter()

        def setup(self, trainer, pl_module, stage: str) -> None:
            self.rss["before_module_setup"] = _maxrss_mib()
            self.t_before_setup = time.perf_counter() - self.t_created
            original = pl_module.setup

            def timed_setup(*args, **kwargs):
                t0 = time.perf_counter()
                out = original(*args, **kwargs)
                self.setup_s += time.perf_counter() - t0
                self.rss["after_module_setup"] = _maxrss_mib()
                return out

            pl_module.setup = timed_setup

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.sync()
            self._epoch_start = self._last_batch_end = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.sync()
            self._last_batch_end = time.perf_counter()
            self.step_ends.append(self._last_batch_end)
            self.step_cpu.append(_cpu_s())

        def on_validation_start(self, trainer, pl_module) -> None:
            self.rss["before_eval"] = _maxrss_mib()
            self.sync()
            self._val_start = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            self.sync()
            eval_s = time.perf_counter() - self._val_start
            self.rss["after_eval"] = _maxrss_mib()
            train_s = self._last_batch_end - self._epoch_start
            self._cum_train += train_s
            value = trainer.callback_metrics.get(self.metric)
            recall = float(value) if value is not None else float("nan")
            self.epochs.append({"epoch": int(trainer.current_epoch) + 1, "train_s": train_s,
                                "cum_train_s": self._cum_train, "eval_s": eval_s, "recall": recall})
            if self.target is not None and recall >= self.target:
                trainer.should_stop = True

    return Recorder


def _load_graph(graph: str, quick: bool, data_dir: str | None):
    from datamodules.interactions import InteractionDataModule

    if graph == "ml100k":
        dm = InteractionDataModule(name="synthetic" if quick else "ml-100k")
    else:
        dm = InteractionDataModule(name="gowalla", data_dir=data_dir)
    dm.setup()
    return dm


def _time_calls(fn, warmup: int, repeats: int, sync=None) -> list[float]:
    sync = sync or (lambda: None)  # torch.cuda.synchronize on a GPU: before each clock read
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------------------ cases
def case_ml100k(model: str, quick: bool, target: float | None = None, device: str = "cpu", **_) -> dict:
    """Train with the experiment config (validation every epoch) and record time and recall per epoch."""
    import torch

    from benchmarks.timing import device_sync
    from launch.config import compose
    from launch.train import run as train_run

    torch.set_num_threads(1)
    epochs = ML100K_LIGHTGCN_EPOCHS if model == "lightgcn" else ML100K_ULTRAGCN_MAX_EPOCHS
    if quick:
        epochs = 3 if model == "lightgcn" else 4
    overrides = [f"experiment={model}", "logger=none", "progress_bar=false", "stage=fit", "threads=1",
                 f"trainer.max_epochs={epochs}", "trainer.check_val_every_n_epoch=1", "early_stopping=null"]
    if quick:
        overrides.append("data.name=synthetic")
    overrides += _trainer_overrides(device)
    cfg = compose(overrides)
    recorder = _recorder()(target=target if model == "ultragcn" else None, sync=device_sync(device))
    t0 = time.perf_counter()
    metrics = train_run(cfg, make_run_dir=False, extra_callbacks=[recorder])
    return {"model": model, "epochs": recorder.epochs, "setup_s": recorder.setup_s, "max_epochs": epochs,
            "target": target, "wall_s": time.perf_counter() - t0, "final": {k: metrics[k] for k in metrics},
            "data": cfg.data.name, "batch_size": int(cfg.data.batch_size),
            "num_negatives": int(cfg.data.num_negatives)}


def _trainer_overrides(device: str) -> list[str]:
    """The experiment-config overrides that put a training on `device` (the configs' trainer is the CPU one)."""
    return ["trainer=gpu"] if device == "cuda" else []


def _prop_inputs(graph: str, quick: bool, data_dir: str | None, device: str):
    """The graph and the shared inputs of a propagation comparison: (dm, E0, output gradient), both (U+I, 64) on
    `device`, drawn from a fixed seed (the same in every process)."""
    import torch

    dm = _load_graph(graph, quick, data_dir)
    n = dm.num_users + dm.num_items
    gen = torch.Generator().manual_seed(0)
    e0 = torch.randn(n, PROP_DIM, generator=gen) * 0.1
    grad_out = torch.randn(n, PROP_DIM, generator=gen)
    return dm, e0.to(device), grad_out.to(device)


def _prop_step(impl: str, dm, e0, grad_out, device: str):
    """(step, params) for one implementation of K=3 LightGCN propagation from E0 on dm's train graph: `step()`
    clears the gradients, propagates (forward) and backpropagates `grad_out`, and returns the (U+I, d) output.
    ours: `LightGCN.propagate` on the CSR A_hat (built here: set-up); pyg: torch-geometric's LightGCN on the
    edge_index, gcn_norm recomputed per call as in PyG."""
    import torch

    num_users, num_items = dm.num_users, dm.num_items
    n, dim = num_users + num_items, e0.shape[1]
    user, item = dm.train_user, dm.train_item
    if impl == "ours":
        from lit_models.recsys.lightgcn import LightGCN, normalized_adjacency

        model = LightGCN(num_users, num_items, dim, PROP_LAYERS).to(device)
        with torch.no_grad():
            model.user_embedding.weight.copy_(e0[:num_users])
            model.item_embedding.weight.copy_(e0[num_users:])
        a_hat = normalized_adjacency(user, item, num_users, num_items).to(device)
        params = [model.user_embedding.weight, model.item_embedding.weight]

        def forward():
            return torch.cat(model.propagate(a_hat))
    elif impl == "pyg":
        from torch_geometric.nn.models import LightGCN as PygLightGCN

        model = PygLightGCN(num_nodes=n, embedding_dim=dim, num_layers=PROP_LAYERS).to(device)
        with torch.no_grad():
            model.embedding.weight.copy_(e0)
        edge_index = torch.stack([torch.cat([user, item + num_users]), torch.cat([item + num_users, user])])
        edge_index = edge_index.to(device)
        params = [model.embedding.weight]

        def forward():
            return model.get_embedding(edge_index)
    else:
        raise ValueError(f"impl must be 'ours' or 'pyg', got {impl!r}")

    def step():
        for p in params:
            p.grad = None
        out = forward()
        out.backward(grad_out)
        return out

    return step, params


def _e0_grad(params) -> "torch.Tensor":
    import torch

    return torch.cat([p.grad for p in params]) if len(params) > 1 else params[0].grad


def case_prop(impl: str, graph: str, quick: bool, data_dir: str | None = None, out_dir: str | None = None,
              device: str = "cpu", **_) -> dict:
    """Forward + backward of K=3 LightGCN propagation: ours (CSR A_hat) or torch-geometric (edge_index)."""
    import torch

    from benchmarks.timing import device_sync

    torch.set_num_threads(1)
    dm, e0, grad_out = _prop_inputs(graph, quick, data_dir, device)
    n, user = dm.num_users + dm.num_items, dm.train_user
    sync = device_sync(device)
    rss_before = _maxrss_mib()
    sync()
    t0 = time.perf_counter()
    step, params = _prop_step(impl, dm, e0, grad_out, device)
    sync()
    setup_s = time.perf_counter() - t0

    warmup, repeats = PROP_REPEATS[(graph, quick)]
    times = _time_calls(step, warmup, repeats, sync)
    out = step().detach()
    grad = _e0_grad(params)
    path = None
    if out_dir:
        path = str(Path(out_dir) / f"prop_{impl}_{graph}.npz")
        np.savez(path, out=out.cpu().numpy(), grad=grad.cpu().numpy())
    return {"impl": impl, "graph": graph, "nodes": n, "nnz": 2 * int(user.numel()), "setup_s": setup_s,
            "call_s": float(np.median(times)), "call_times": times, "saved": path,
            "rss_before_mib": rss_before, "device": device}


def case_prop_paired(graph: str, quick: bool, data_dir: str | None = None, device: str = "cpu", **_) -> dict:
    """Ours vs torch-geometric's propagation in this one process, on the same graph, E0 and output gradient: after
    a warm-up of each, interleaved rounds (benchmarks/timing.py) of a block of fwd+bwd calls of each, the order
    alternated; the per-round ratios, the two outputs' and E0 gradients' max abs difference, and on CUDA the peak
    GPU memory of one call of each (`cuda_peak_mib`)."""
    import torch

    from benchmarks.timing import cuda_peak_mib, device_sync, interleaved_step_times, paired_speed_ratio

    torch.set_num_threads(1)
    dm, e0, grad_out = _prop_inputs(graph, quick, data_dir, device)
    built = {impl: _prop_step(impl, dm, e0, grad_out, device) for impl in ("ours", "pyg")}
    warmup, rounds, block = PROP_PAIRED[(graph, quick)]
    times = interleaved_step_times({impl: (lambda i, step=step: step()) for impl, (step, _) in built.items()},
                                   rounds=rounds, block=block, warmup=warmup, sync=device_sync(device))
    outs = {impl: step().detach() for impl, (step, _) in built.items()}
    grads = {impl: _e0_grad(params) for impl, (_, params) in built.items()}
    peaks = {impl: cuda_peak_mib(step, device) for impl, (step, _) in built.items()} if device == "cuda" else {}
    return {"graph": graph, "nodes": dm.num_users + dm.num_items, "nnz": 2 * int(dm.train_user.numel()),
            "device": device, "warmup": warmup, "block": block,
            "paired": paired_speed_ratio(times["ours"], times["pyg"]), "ours_times": times["ours"],
            "pyg_times": times["pyg"],
            "out_diff": float((outs["ours"] - outs["pyg"]).abs().max()),
            "grad_diff": float((grads["ours"] - grads["pyg"]).abs().max()),
            "ours_peak_gpu_mib": peaks.get("ours"), "pyg_peak_gpu_mib": peaks.get("pyg")}


def case_gowalla(model: str, quick: bool, data_dir: str | None = None, device: str = "cpu", **_) -> dict:
    """Gowalla-shaped graph, the `<model>/gowalla` config: timed steps, one full evaluation, set-up, memory."""
    import warnings

    import torch

    from benchmarks.timing import device_sync
    from launch.config import compose
    from launch.train import run as train_run

    warnings.filterwarnings("ignore", message=".*gowalla has .* users .* expected.*")  # quick graph is small
    torch.set_num_threads(2)
    base = [f"experiment={model}/gowalla", "logger=none", "progress_bar=false", "stage=fit", "threads=2",
            f"data.data_dir={data_dir}", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
            "trainer.limit_val_batches=null", "early_stopping=null", *_trainer_overrides(device)]
    shape = QUICK_SHAPE if quick else GOWALLA_SHAPE
    steps_per_epoch = math.ceil(shape["num_train"] / int(compose(base).data.batch_size))
    warmup, timed = GOWALLA_STEPS[quick]
    timed = min(timed, steps_per_epoch - warmup)  # never past one epoch
    steps = warmup + timed
    cfg = compose([*base, f"trainer.limit_train_batches={steps}"])
    recorder = _recorder()(sync=device_sync(device))
    t0 = time.perf_counter()
    metrics = train_run(cfg, make_run_dir=False, extra_callbacks=[recorder])
    wall = time.perf_counter() - t0
    ends = recorder.step_ends
    if len(ends) < steps:
        raise RuntimeError(f"only {len(ends)} of {steps} train steps ran")
    step_s = (ends[steps - 1] - ends[warmup - 1]) / timed
    cpu = recorder.step_cpu
    cores_used = (cpu[steps - 1] - cpu[warmup - 1]) / (ends[steps - 1] - ends[warmup - 1])
    # fastest window of `window` consecutive timed steps: less sensitive to other processes on the machine
    window = max(1, min(10, timed // 3))
    best_window_s = min((ends[j + window] - ends[j]) / window for j in range(warmup - 1, steps - window))
    result = {"model": model, "step_s": step_s, "warmup_steps": warmup, "timed_steps": timed,
              "steps_per_epoch": steps_per_epoch, "epoch_s": step_s * steps_per_epoch,
              "cores_used": cores_used, "best_window_step_s": best_window_s, "window_steps": window,
              "eval_s": recorder.epochs[-1]["eval_s"] if recorder.epochs else float("nan"),
              "setup_s": recorder.setup_s, "before_setup_s": recorder.t_before_setup, "wall_s": wall,
              "rss_phases_mib": recorder.rss, "val_recall": metrics.get("val/recall@20"),
              "batch_size": int(cfg.data.batch_size), "num_negatives": int(cfg.data.num_negatives),
              "peak_rss_mib": _maxrss_mib()}  # before the breakdown below builds a second copy
    result["breakdown"] = _gowalla_breakdown(model, cfg, quick, device)
    return result


def _module_on(model: str, cfg, device: str):
    """(dm, module) of an experiment config outside a Trainer, set up as the module's setup() would (graph or
    constraints built from the train edges), the module on `device`."""
    from launch.train import instantiate

    dm, module = instantiate(cfg)
    dm.setup()
    module._build(dm.num_users, dm.num_items)
    if model == "lightgcn":
        module.setup_graph(dm.train_user, dm.train_item)
    else:
        module.setup_constraints(dm.user_degree, dm.item_degree, dm.train_matrix)
    return dm, module.to(device)


def _gowalla_breakdown(model: str, cfg, quick: bool, device: str = "cpu") -> dict:
    """Where a training step's time goes: batch sampling vs the model's forward+backward (separately timed)."""
    from benchmarks.timing import device_sync

    dm, module = _module_on(model, cfg, device)
    sync = device_sync(device)
    batches = dm._train_dataset().batches(0, 0, 1)
    n = 2 if quick else 5
    t0 = time.perf_counter()
    sample = [next(batches) for _ in range(n)]  # on the CPU, as the DataLoader yields them
    sample_s = (time.perf_counter() - t0) / n
    out = {"sample_batch_s": sample_s}
    if model == "lightgcn":
        def prop():
            module.zero_grad(set_to_none=True)
            u, i = module.final_embeddings()
            (u.sum() + i.sum()).backward()

        out["propagate_fwd_bwd_s"] = float(np.median(_time_calls(prop, 1, n, sync)))
    opt = module.configure_optimizers()
    batch0 = {k: v.to(device) for k, v in sample[0].items()}

    def train_step(batch=batch0):  # the real training_step (self.log is a no-op without a trainer)
        opt.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        opt.step()

    out["model_step_s"] = float(np.median(_time_calls(train_step, 1, n, sync)))
    return out


def case_step_paired(quick: bool, device: str = "cpu", **_) -> dict:
    """UltraGCN (ours) vs LightGCN (baseline) training steps on ML-100K (quick: the synthetic graph) with the
    paper-check experiment configs, in this one process without a Trainer: a step = the next batch of the model's
    own sampler (its batch size and negatives) moved to the device, the real training_step, backward, optimiser
    step. Interleaved rounds of a block of steps of each (benchmarks/timing.py); seconds per step x steps per epoch
    gives each one's epoch, the two batch sizes differing."""
    import torch

    from benchmarks.timing import cuda_peak_mib, device_sync, interleaved_step_times, paired_speed_ratio
    from launch.config import compose

    torch.set_num_threads(1)
    built = {}
    for model in ("ultragcn", "lightgcn"):
        overrides = [f"experiment={model}", "logger=none", "progress_bar=false", "stage=fit", "threads=1",
                     *(["data.name=synthetic"] if quick else []), *_trainer_overrides(device)]
        cfg = compose(overrides)
        torch.manual_seed(0)
        dm, module = _module_on(model, cfg, device)
        opt = module.configure_optimizers()
        train = dm._train_dataset()
        state = {"epoch": 0, "batches": train.batches(0, 0, 1)}

        def step(i: int, module=module, opt=opt, train=train, state=state) -> None:
            batch = next(state["batches"], None)
            if batch is None:  # the epoch's batches are used up: the next epoch's, as training would
                state["epoch"] += 1
                state["batches"] = train.batches(state["epoch"], 0, 1)
                batch = next(state["batches"])
            batch = {k: v.to(device) for k, v in batch.items()}
            opt.zero_grad(set_to_none=True)
            module.training_step(batch, i).backward()
            opt.step()

        built[model] = {"step": step, "steps_per_epoch": math.ceil(dm.train_user.numel() / train.batch_size),
                        "batch_size": int(train.batch_size), "num_negatives": int(cfg.data.num_negatives)}
    warmup, rounds, block = STEP_PAIRED[quick]
    times = interleaved_step_times({m: b["step"] for m, b in built.items()}, rounds=rounds, block=block,
                                   warmup=warmup, sync=device_sync(device))
    epoch = {m: [t * built[m]["steps_per_epoch"] for t in times[m]] for m in built}
    peaks = {m: cuda_peak_mib(lambda b=b: b["step"](0), device) for m, b in built.items()} \
        if device == "cuda" else {}
    return {"data": "synthetic" if quick else "ml-100k", "device": device, "warmup": warmup, "block": block,
            "paired": paired_speed_ratio(epoch["ultragcn"], epoch["lightgcn"]),
            "step_s": {m: float(np.median(times[m])) for m in built},
            **{f"{m}_{k}": b[k] for m, b in built.items() for k in ("steps_per_epoch", "batch_size", "num_negatives")},
            "ultragcn_peak_gpu_mib": peaks.get("ultragcn"), "lightgcn_peak_gpu_mib": peaks.get("lightgcn")}


def case_score_paired(quick: bool, device: str = "cpu", **_) -> dict:
    """UltraGCN training steps, its sampled scoring (ours) vs the dense matmul + gather through autograd (baseline,
    `_unfused_dot`), interleaved in one process on the same batches: two modules built alike (same seed), each with
    its own optimiser, a step = the model's next batch, training_step, backward, optimiser step. The first batch's
    losses of the two are compared (they agree up to the order of float sums). Off the CPU both sides take the
    dense path (`sampled_dot` is CPU-only), so the ratio is ~1 there."""
    import torch

    import lit_models.recsys.ultragcn as ug
    from benchmarks.timing import device_sync, interleaved_step_times, paired_speed_ratio
    from launch.config import compose

    torch.set_num_threads(1)
    cfg = compose(["experiment=ultragcn", "logger=none", "progress_bar=false", "stage=fit", "threads=1",
                   *(["data.name=synthetic"] if quick else []), *_trainer_overrides(device)])
    steps, first_loss = {}, {}
    for side, scorer in (("sampled", ug.sampled_dot), ("dense", ug._unfused_dot)):
        torch.manual_seed(0)
        dm, module = _module_on("ultragcn", cfg, device)
        opt = module.configure_optimizers()
        train = dm._train_dataset()
        state = {"epoch": 0, "batches": train.batches(0, 0, 1)}

        def step(i: int, module=module, opt=opt, train=train, state=state, scorer=scorer, side=side) -> None:
            batch = next(state["batches"], None)
            if batch is None:
                state["epoch"] += 1
                state["batches"] = train.batches(state["epoch"], 0, 1)
                batch = next(state["batches"])
            batch = {k: v.to(device) for k, v in batch.items()}
            saved, ug.sampled_dot = ug.sampled_dot, scorer
            try:
                opt.zero_grad(set_to_none=True)
                loss = module.training_step(batch, i)
                loss.backward()
                opt.step()
            finally:
                ug.sampled_dot = saved
            first_loss.setdefault(side, float(loss.detach()))

        steps[side] = step
    warmup, rounds, block = STEP_PAIRED[quick]
    times = interleaved_step_times(steps, rounds=rounds, block=block, warmup=warmup, sync=device_sync(device))
    return {"data": "synthetic" if quick else "ml-100k", "device": device, "warmup": warmup, "block": block,
            "paired": paired_speed_ratio(times["sampled"], times["dense"]),
            "first_loss_rel_diff": abs(first_loss["sampled"] - first_loss["dense"]) / abs(first_loss["dense"]),
            "num_negatives": int(cfg.data.num_negatives), "batch_size": int(cfg.data.batch_size)}


CASE_FUNCS = {
    "ml100k_lightgcn": lambda **kw: case_ml100k("lightgcn", **kw),
    "ml100k_ultragcn": lambda **kw: case_ml100k("ultragcn", **kw),
    "prop_ours_ml100k": lambda **kw: case_prop("ours", "ml100k", **kw),
    "prop_pyg_ml100k": lambda **kw: case_prop("pyg", "ml100k", **kw),
    "prop_ours_gowalla": lambda **kw: case_prop("ours", "gowalla", **kw),
    "prop_pyg_gowalla": lambda **kw: case_prop("pyg", "gowalla", **kw),
    "gowalla_lightgcn": lambda **kw: case_gowalla("lightgcn", **kw),
    "gowalla_ultragcn": lambda **kw: case_gowalla("ultragcn", **kw),
    "prop_paired_ml100k": lambda **kw: case_prop_paired("ml100k", **kw),
    "prop_paired_gowalla": lambda **kw: case_prop_paired("gowalla", **kw),
    "step_paired_ml100k": lambda **kw: case_step_paired(**kw),
    "score_paired_ml100k": lambda **kw: case_score_paired(**kw),
}


def worker(cases: list[str], quick: bool, data_dir: str | None, out_dir: str | None, target: float | None,
           device: str = "cpu") -> None:
    """Run cases in this process; print one JSON line per case (prefixed by MARK)."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch  # noqa: F401  (imports first, so that the baseline RSS includes them)
    import lightning  # noqa: F401

    import launch.train  # noqa: F401
    import lit_models.recsys.lightgcn  # noqa: F401
    import lit_models.recsys.ultragcn  # noqa: F401

    if any("pyg" in c or "paired" in c for c in cases):
        import torch_geometric.nn  # noqa: F401
    base = _maxrss_mib()
    for name in cases:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = CASE_FUNCS[name](quick=quick, data_dir=data_dir, out_dir=out_dir, target=target, device=device)
        result.setdefault("peak_rss_mib", _maxrss_mib())
        result.update(case=name, threads=CASE_THREADS.get(name, 1), rss_after_imports_mib=base, load1=load,
                      case_s=time.perf_counter() - t0)
        if name == "ml100k_lightgcn" and result["epochs"]:
            target = max(e["recall"] for e in result["epochs"])  # for ml100k_ultragcn in the same process
        print(MARK + json.dumps(result, default=float), flush=True)


# ------------------------------------------------------------------------------------------------ parent
def _spawn(cases: tuple[str, ...], quick: bool, data_dir: Path, out_dir: Path, target: float | None = None,
           timeout: float = 1200, device: str = "cpu") -> dict[str, dict]:
    threads = max(CASE_THREADS.get(c, 1) for c in cases)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "benchmarks.recsys_speed", "--case", ",".join(cases),
           "--quick" if quick else "--full", "--data-dir", str(data_dir), "--out-dir", str(out_dir),
           "--device", device]
    if target is not None:
        cmd += ["--target", repr(float(target))]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        stderr, code = f"timed out after {timeout:.0f} s", -1
    results = {}
    for line in stdout.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
            results[res["case"]] = res
    for case in cases:
        if case not in results:
            tail = " | ".join((stderr or "").strip().splitlines()[-3:])
            results[case] = {"case": case, "error": f"exit {code}: {tail[-400:]}"}
    return results


def run(quick: bool, device: str = "cpu") -> list[dict]:
    """Run every case (fresh subprocesses, each given `device`) and return the table rows."""
    # Every per-case row is a fresh process so that its peak RSS (ru_maxrss) is its own, so ours and
    # torch-geometric's propagation are timed there in two processes one after the other (in --quick, two groups at
    # a time), and a change of machine speed between them biases that ratio; the paired cases (prop_paired_*,
    # step_paired_ml100k) time both sides in one process, interleaved, and give the ratio to quote. The ML-100K
    # training rows are whole trainings (UltraGCN until it reaches LightGCN's recall), and the Gowalla rows compare
    # with quoted CPU figures of the official code on a 2-core machine (on cuda they get no ratio: a GPU time is not
    # comparable with them).
    from benchmarks.timing import check_device

    device = check_device(device)  # before any work: one line, exit 2 from `zoo bench`, when CUDA is absent
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="recsys_bench_") as tmp:
        data_dir, out_dir = Path(tmp) / "gowalla", Path(tmp) / "out"
        out_dir.mkdir()
        graph = write_gowalla_like(data_dir, quick)
        if quick:
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(_spawn, group, True, data_dir, out_dir, None, 300, device)
                           for group in QUICK_GROUPS]
                for fut in futures:
                    results.update(fut.result())
        else:
            for case in CASES:
                target = None
                if case == "ml100k_ultragcn":
                    target = _best(results.get("ml100k_lightgcn", {}))[0]
                results.update(_spawn((case,), False, data_dir, out_dir, target, device=device))
        rows = build_rows(results, graph, quick, device)
    return rows


# ------------------------------------------------------------------------------------------------ rows
def _best(res: dict) -> tuple[float | None, float | None, int | None]:
    """(best recall, cumulative train seconds when first reached, epoch) of an ml100k result."""
    epochs = res.get("epochs") or []
    if not epochs:
        return None, None, None
    best = max(e["recall"] for e in epochs)
    first = next(e for e in epochs if e["recall"] >= best)
    return best, first["cum_train_s"], first["epoch"]


def _ratio(baseline, ours) -> float | None:
    if baseline is None or ours is None or not ours > 0:
        return None
    return float(baseline) / float(ours)


def _row(case: str, what: str, ours, baseline, ratio, unit: str, note: str = "", **extra) -> dict:
    row = {"case": case, "what": what, "ours": None if ours is None else float(ours),
           "baseline": None if baseline is None else float(baseline),
           "ratio": None if ratio is None else float(ratio), "unit": unit}
    row.update(extra)
    row["note"] = note
    return row


def _mem_note(res: dict) -> str:
    return (f"peak RSS {res['peak_rss_mib']:.0f} MiB = {res['rss_after_imports_mib']:.0f} after imports "
            f"+ {res['peak_rss_mib'] - res['rss_after_imports_mib']:.0f}")


def build_rows(results: dict[str, dict], graph: dict, quick: bool, device: str = "cpu") -> list[dict]:
    rows = _build_rows(results, graph, quick, device)
    for row in rows:
        row["device"] = device
    return rows


def _paired_row(case: str, what: str, paired: dict, note: str, **extra) -> dict:
    """A row of an interleaved pair: ours / baseline = each one's median per round, ratio = the median of the
    per-round ratios (benchmarks.timing.RATIO_METHOD), its quartiles and rounds."""
    from benchmarks.timing import paired_fields

    return _row(case, what, paired["ours_step_s"], paired["baseline_step_s"], paired["ratio_median"], "s",
                f"{note}; per-round ratio quartiles {paired['ratio_q1']:.3g}-{paired['ratio_q3']:.3g}",
                **paired_fields(paired), **extra)


def _build_rows(results: dict[str, dict], graph: dict, quick: bool, device: str) -> list[dict]:
    rows: list[dict] = []
    on = "1 thread" if device == "cpu" else "on the GPU"
    for res in results.values():
        if "error" in res:
            rows.append(_row(res["case"], "FAILED", None, None, None, "", res["error"], error=res["error"]))
    shared = " (quick: cases share a process)" if quick else ""

    # 1. ML-100K: UltraGCN (ours) vs LightGCN (baseline), paper-check configs
    lg, ug = results.get("ml100k_lightgcn", {}), results.get("ml100k_ultragcn", {})
    if "epochs" in lg and "epochs" in ug:
        data = "synthetic (quick)" if quick else "ML-100K"
        lg_epoch = float(np.median([e["train_s"] for e in lg["epochs"]]))
        ug_epoch = float(np.median([e["train_s"] for e in ug["epochs"]]))
        rows.append(_row(
            "ml100k", "train s/epoch, UltraGCN (ours) vs LightGCN (baseline)", ug_epoch, lg_epoch,
            _ratio(lg_epoch, ug_epoch), "s", f"{data}, median over epochs, validation excluded, 1 thread; batches "
            f"{ug['batch_size']}x{ug['num_negatives']} neg vs {lg['batch_size']}x{lg['num_negatives']} neg; "
            f"set-up {ug['setup_s']:.2f} s vs {lg['setup_s']:.2f} s; load {ug['load1']:.1f}/{lg['load1']:.1f}"))
        lg_best, lg_time, lg_ep = _best(lg)
        ug_best, ug_best_time, ug_best_ep = _best(ug)
        reach = next((e for e in ug["epochs"] if e["recall"] >= lg_best), None)
        if reach is not None:
            note = (f"UltraGCN reached LightGCN's best val Recall@20 {lg_best:.4f} at epoch {reach['epoch']} "
                    f"(LightGCN: its best at epoch {lg_ep} of {lg['max_epochs']}); training time only, 1 thread")
            rows.append(_row("ml100k", "train time to LightGCN's best val Recall@20", reach["cum_train_s"],
                             lg_time, _ratio(lg_time, reach["cum_train_s"]), "s", note))
        else:
            note = (f"NOT REACHED: UltraGCN did not reach LightGCN's best val Recall@20 {lg_best:.4f} (epoch {lg_ep}) "
                    f"within {len(ug['epochs'])} epochs; its best was {ug_best:.4f} at epoch {ug_best_ep} "
                    f"after {ug_best_time:.1f} s of training")
            rows.append(_row("ml100k", "train time to LightGCN's best val Recall@20", None, lg_time, None, "s",
                             note))
        rows.append(_row(
            "ml100k", "train time to own best val Recall@20 (different levels)", ug_best_time, lg_time,
            _ratio(lg_time, ug_best_time), "s",
            f"UltraGCN best {ug_best:.4f} at epoch {ug_best_ep} of {len(ug['epochs'])} run; "
            f"LightGCN best {lg_best:.4f} at epoch {lg_ep} of {len(lg['epochs'])}"))
        rows.append(_row("ml100k", "best val Recall@20 within budget", ug_best, lg_best,
                         None if not lg_best else ug_best / lg_best, "recall@20",
                         f"ratio = ours/baseline; UltraGCN {len(ug['epochs'])} epochs (max {ug['max_epochs']}, "
                         f"stops at the target), LightGCN {len(lg['epochs'])}"))
        rows.append(_row("ml100k", "peak RSS, UltraGCN vs LightGCN training", ug["peak_rss_mib"], lg["peak_rss_mib"],
                         _ratio(lg["peak_rss_mib"], ug["peak_rss_mib"]), "MiB",
                         f"UltraGCN {_mem_note(ug)}; LightGCN {_mem_note(lg)}{shared}"))
    sp = results.get("step_paired_ml100k", {})
    if "paired" in sp:
        data = "synthetic (quick)" if quick else "ML-100K"
        gpu = ({"ours_peak_gpu_mib": sp["ultragcn_peak_gpu_mib"], "baseline_peak_gpu_mib": sp["lightgcn_peak_gpu_mib"]}
               if device == "cuda" else {})
        rows.append(_paired_row(
            "ml100k", "train s/epoch from interleaved steps, UltraGCN (ours) vs LightGCN (baseline), one process",
            sp["paired"],
            f"{data}, paper-check configs, no Trainer: batch sampling + training_step + backward + optimiser step, "
            f"s/step x steps/epoch ({sp['step_s']['ultragcn']:.4g} s x "
            f"{sp['ultragcn_steps_per_epoch']} vs {sp['step_s']['lightgcn']:.4g} s x {sp['lightgcn_steps_per_epoch']}; "
            f"batches {sp['ultragcn_batch_size']}x{sp['ultragcn_num_negatives']} neg vs "
            f"{sp['lightgcn_batch_size']}x{sp['lightgcn_num_negatives']} neg), {on}; {sp['paired']['rounds']} "
            f"interleaved rounds of {sp['block']} steps of each after {sp['warmup']} warm-up", **gpu))

    sc = results.get("score_paired_ml100k", {})
    if "paired" in sc:
        data = "synthetic (quick)" if quick else "ML-100K"
        rows.append(_paired_row(
            "ml100k", "UltraGCN train step, sampled scoring (ours) vs dense matmul + gather (baseline), one process",
            sc["paired"],
            f"{data}, the ultragcn config (batch {sc['batch_size']}, {sc['num_negatives']} negatives + item-item "
            f"neighbours), no Trainer; first-batch losses agree to {sc['first_loss_rel_diff']:.1e} (relative), {on}; "
            f"{sc['paired']['rounds']} interleaved rounds of {sc['block']} steps of each after {sc['warmup']} warm-up"))

    # 2. propagation: ours vs torch-geometric (the interleaved pair first, then the per-process rows)
    for g in ("ml100k", "gowalla"):
        pp = results.get(f"prop_paired_{g}", {})
        if "paired" in pp:  # the ratio to quote: both in one process, interleaved
            label = {"ml100k": "synthetic (quick)" if quick else "ML-100K",
                     "gowalla": "small generated (quick)" if quick else "Gowalla-shaped"}[g]
            gpu = ({"ours_peak_gpu_mib": pp["ours_peak_gpu_mib"], "baseline_peak_gpu_mib": pp["pyg_peak_gpu_mib"]}
                   if device == "cuda" else {})
            rows.append(_paired_row(
                f"prop_{g}",
                "LightGCN propagation fwd+bwd per call, ours vs torch-geometric, interleaved in one process",
                pp["paired"],
                f"{label}: {pp['nodes']} nodes, {pp['nnz']} nnz, K=3, d=64, {on}; same graph, E0 and output "
                f"gradient; {pp['paired']['rounds']} interleaved rounds of {pp['block']} calls of each after "
                f"{pp['warmup']} warm-up; max |ours - torch-geometric| of E {pp['out_diff']:.3g}, of the E0 gradient "
                f"{pp['grad_diff']:.3g}", out_diff=pp["out_diff"], grad_diff=pp["grad_diff"], **gpu))

        ours, pyg = results.get(f"prop_ours_{g}", {}), results.get(f"prop_pyg_{g}", {})
        if "call_s" not in ours or "call_s" not in pyg:
            continue
        label = {"ml100k": "synthetic (quick)" if quick else "ML-100K",
                 "gowalla": "small generated (quick)" if quick else "Gowalla-shaped"}[g]
        size = f"{label}: {ours['nodes']} nodes, {ours['nnz']} nnz, K=3, d=64, {on}"
        rows.append(_row(
            f"prop_{g}", "LightGCN propagation fwd+bwd per call, ours vs torch-geometric", ours["call_s"],
            pyg["call_s"], _ratio(pyg["call_s"], ours["call_s"]), "s",
            f"{size}; median of {len(ours['call_times'])} / {len(pyg['call_times'])} calls; set-up (A_hat / "
            f"edge_index) {ours['setup_s']:.3f} s / {pyg['setup_s']:.3f} s; PyG: edge_index message passing, "
            f"gcn_norm per call"))
        ours_inc = ours["peak_rss_mib"] - ours["rss_before_mib"]
        pyg_inc = pyg["peak_rss_mib"] - pyg["rss_before_mib"]
        rows.append(_row(
            f"prop_{g}", "peak RSS increase for set-up + propagation, ours vs torch-geometric",
            max(ours_inc, 1e-3), max(pyg_inc, 1e-3), _ratio(max(pyg_inc, 1e-3), max(ours_inc, 1e-3)), "MiB",
            f"increase over the RSS after imports and graph loading; peaks {ours['peak_rss_mib']:.0f} / "
            f"{pyg['peak_rss_mib']:.0f} MiB{shared}"))
        if ours.get("saved") and pyg.get("saved"):
            a, b = np.load(ours["saved"]), np.load(pyg["saved"])
            out_diff = float(np.abs(a["out"] - b["out"]).max())
            grad_diff = float(np.abs(a["grad"] - b["grad"]).max())
            scale = float(np.abs(b["out"]).max())
            rows.append(_row(f"prop_{g}", "outputs agree: max |ours - torch-geometric| of E", out_diff, None, None,
                             "max abs diff", f"max |E| = {scale:.3g}; E0 gradient max abs diff {grad_diff:.3g}",
                             grad_diff=grad_diff))

    # 3. Gowalla-shaped graph vs the official implementations' figures (quoted)
    shape = (f"{graph['num_users']} users, {graph['num_items']} items, {graph['num_train']} train + "
             f"{graph['num_test']} test (max user/item degree {graph['max_user_degree']}/{graph['max_item_degree']})")
    for model in ("lightgcn", "ultragcn"):
        res = results.get(f"gowalla_{model}", {})
        if "epoch_s" not in res:
            continue
        ref = REFERENCE[model]
        name = {"lightgcn": "LightGCN", "ultragcn": "UltraGCN"}[model]
        cfgtxt = (f"batch {res['batch_size']}, {res['num_negatives']} neg, 2 threads"
                  + (", quick: tiny graph, no ratio to the Gowalla reference" if quick else ""))
        br = res.get("breakdown", {})
        where = f"per step {res['step_s']:.3f} s: batch sampling {br.get('sample_batch_s', float('nan')):.3f} s"
        if "propagate_fwd_bwd_s" in br:
            where += f", propagation fwd+bwd {br['propagate_fwd_bwd_s']:.3f} s"
        where += f", model fwd+bwd+Adam {br.get('model_step_s', float('nan')):.3f} s"
        # the quoted figures are CPU times of the Gowalla graph: no ratio for a GPU time or --quick's tiny graph
        cpu_ref = device == "cpu" and not quick
        gpu_note = "" if device == "cpu" else "GPU time vs quoted CPU figures: no ratio; "
        ratio = _ratio(ref["epoch_s"], res["epoch_s"]) if cpu_ref else None
        # the 2 threads should keep ~2 cores busy; far less means other processes shared the cores
        contended = "CONTENDED (another process shared the 2 cores; rerun on an idle machine): " \
            if res["cores_used"] < 1.5 and not quick and cpu_ref else ""
        rows.append(_row(
            f"gowalla_{model}", f"{name} train s/epoch (extrapolated)", res["epoch_s"], ref["epoch_s"], ratio, "s",
            f"{gpu_note}{contended}{res['timed_steps']} steps timed after {res['warmup_steps']} warm-up, "
            f"x {res['steps_per_epoch']} steps/epoch; {cfgtxt}; {where}; fastest {res['window_steps']}-step window "
            f"{res['best_window_step_s']:.3f} s/step (-> {res['best_window_step_s'] * res['steps_per_epoch']:.0f} "
            f"s/epoch); CPU time / wall while timed {res['cores_used']:.2f} (2 = both cores ours), "
            f"load {res['load1']:.1f}; graph {shape}",
            target=f">= {TARGETS['epoch']:g}x", met=_met(ratio, TARGETS["epoch"])))
        ratio = _ratio(ref["eval_s"], res["eval_s"]) if cpu_ref else None
        rows.append(_row(
            f"gowalla_{model}", f"{name} full evaluation (all test users, train items masked)", res["eval_s"],
            ref["eval_s"], ratio, "s",
            "module's validation path incl. final embeddings" + ("" if ref["eval_s"] else
                                                                  "; no reference figure for UltraGCN"),
            target=f">= {TARGETS['eval']:g}x" if ref["eval_s"] else None,
            met=_met(ratio, TARGETS["eval"]) if ref["eval_s"] and cpu_ref else None))
        rows.append(_row(
            f"gowalla_{model}", f"{name} set-up ({'A_hat' if model == 'lightgcn' else 'item-item neighbours'}"
            " + eval CSR, module.setup)", res["setup_s"], None, None, "s",
            f"reading train/test txt + compose/instantiate before it: {res['before_setup_s']:.1f} s"))
        phases = ", ".join(f"{k} {v:.0f}" for k, v in res["rss_phases_mib"].items())
        ratio = _ratio(ref["peak_mib"], res["peak_rss_mib"]) if cpu_ref else None
        rows.append(_row(
            f"gowalla_{model}", f"{name} peak RSS (train + full evaluation)", res["peak_rss_mib"], ref["peak_mib"],
            ratio, "MiB", f"{_mem_note(res)}; high-water marks (MiB): {phases}{shared}",
            target=f"< {TARGETS['peak_mib']:g} MiB",
            met=res["peak_rss_mib"] < TARGETS["peak_mib"] if cpu_ref else None))
    return rows


def _met(ratio: float | None, target: float) -> bool | None:
    return None if ratio is None else bool(ratio >= target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recsys_speed")
    parser.add_argument("--case", required=True, help=f"comma-separated, from {', '.join(CASES)}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    parser.add_argument("--data-dir")
    parser.add_argument("--out-dir")
    parser.add_argument("--target", type=float)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    opts = parser.parse_args(argv)
    cases = opts.case.split(",")
    unknown = [c for c in cases if c not in CASE_FUNCS]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    worker(cases, opts.quick, opts.data_dir, opts.out_dir, opts.target, opts.device)


if __name__ == "__main__":
    main()
