"""Paired timing for speed ratios near 1: the variants take turns in one process.

On a shared 2-core machine the speed of one process drifts by tens of percent from one minute (or one process) to
the next: two variants timed one after the other, or in two fresh processes, gave ratios from 0.84 to 1.17 for the
same pair of iTransformer steps. Here every variant runs a block of steps in each round, the order reversed every
other round (A B, B A, ...), so that a slow spell of the machine costs all variants alike; the ratio is then taken
round by round (the two blocks of a round ran seconds apart) and summarised by its median and quartiles.

Every paired benchmark reports that median of the per-round ratios as its ratio (`RATIO_METHOD`, written into the
rows as `ratio_method`): a slowdown of the machine that starts, or ends, partway through the measurement scales both
blocks of a round alike and leaves that round's ratio as it was (tests/test_dynamics_bench.py shows sequential timing
getting such a ratio wrong and the rounds getting it right). The helpers for a `--device` option are here too:
`check_device` (a one-line error for cuda without a GPU), `device_sync` (before each clock read) and
`cuda_peak_mib` (peak GPU memory of one call).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

from launch.errors import UserError

RATIO_METHOD = "median of per-round ratios (variants interleaved, order alternated A B, B A, ...)"


def check_device(device: str) -> str:
    """A benchmark's `--device`: cpu, or cuda where torch sees a GPU; anything else is a one-line UserError."""
    import torch

    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch")
    return device


def device_sync(device: str) -> Callable[[], None]:
    """What to call before reading the clock: torch.cuda.synchronize on a GPU (kernels run asynchronously), else
    nothing."""
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def cuda_peak_mib(fn: Callable[[], object], device: str) -> float | None:
    """Call `fn()` once; on CUDA return the peak GPU memory allocated while it ran, above what was allocated before
    it, in MiB (torch.cuda.max_memory_allocated after reset_peak_memory_stats: the parameters, optimiser state and
    data already on the GPU are not counted, what the call allocates on top of them is); elsewhere None."""
    if device != "cuda":
        fn()
        return None
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def interleaved_step_times(steps: Mapping[str, Callable[[int], None]], *, rounds: int, block: int,
                           warmup: int = 2, sync: Callable[[], None] | None = None,
                           clock: Callable[[], float] | None = None) -> dict[str, list[float]]:
    """Seconds per step of each variant, one value per round (the mean over that round's block of `block` steps).

    `steps[name](i)` runs training step i of variant `name`. Each variant first runs `warmup` untimed steps; then
    `rounds` rounds run every variant's block, in the given order on even rounds and reversed on odd ones. `sync`
    (e.g. torch.cuda.synchronize) is called before each clock read.
    """
    if rounds < 1 or block < 1 or warmup < 0:
        raise ValueError(f"rounds and block must be >= 1 and warmup >= 0, got {rounds}, {block}, {warmup}")
    sync = sync or (lambda: None)
    clock = clock or time.perf_counter  # looked up at call time (a test may replace time.perf_counter)
    names = list(steps)
    counters = dict.fromkeys(names, 0)

    def run(name: str, n: int) -> None:
        for _ in range(n):
            steps[name](counters[name])
            counters[name] += 1

    for name in names:
        run(name, warmup)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync()
            t0 = clock()
            run(name, block)
            sync()
            times[name].append((clock() - t0) / block)
    return times


def interleaved_call_times(calls: Mapping[str, Callable[[], object]], *, rounds: int, warmup: int = 1,
                           sync: Callable[[], None] | None = None, clock: Callable[[], float] | None = None
                           ) -> tuple[dict[str, list[float]], dict[str, object]]:
    """`interleaved_step_times` for calls that take no step index and return a result (e.g. a solve and its mesh):
    seconds of one call per round per name, and each name's last result."""
    last: dict[str, object] = {}

    def step(name: str) -> Callable[[int], None]:
        def call(_: int) -> None:
            last[name] = calls[name]()
        return call

    times = interleaved_step_times({name: step(name) for name in calls}, rounds=rounds, block=1, warmup=warmup,
                                   sync=sync, clock=clock)
    return times, last


def paired_speed_ratio(ours: list[float], baseline: list[float]) -> dict[str, float]:
    """Speed ratio ours / baseline (> 1: ours faster) per round, baseline_time / ours_time: median and quartiles,
    and the medians of both step times. The rounds must be matched: round r of both ran in the same round of
    `interleaved_step_times`. `ratio_median` is the ratio to report (RATIO_METHOD)."""
    if len(ours) != len(baseline) or not ours:
        raise ValueError(f"need the same number (>= 1) of rounds, got {len(ours)} and {len(baseline)}")
    ratios = sorted(b / o for o, b in zip(ours, baseline))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"ratio_median": statistics.median(ratios), "ratio_q1": q1, "ratio_q3": q3, "rounds": len(ratios),
            "ours_step_s": statistics.median(ours), "baseline_step_s": statistics.median(baseline)}


def paired_fields(summary: dict[str, float]) -> dict:
    """The row fields every paired benchmark adds: the per-round ratio's median and quartiles, the rounds, and how
    the ratio was taken."""
    return {"ratio_median": summary["ratio_median"], "ratio_q1": summary["ratio_q1"],
            "ratio_q3": summary["ratio_q3"], "rounds": summary["rounds"], "ratio_method": RATIO_METHOD}
