"""Speed and memory benchmarks, run by `zoo bench`: ratios against a baseline measured in the same run.

Each benchmark module exposes `run(quick: bool) -> list[dict]` (one row per measurement) and
`SUMMARY`, a sentence saying what the ratios mean. Register it under its paper slug below (a slug may have several
modules). A `run` that also takes `out_dir` (where it writes tables of its own) gets the `--out` folder; one that
takes further keyword options (e.g. `systems`, `shard` of dysts_runner) gets those `zoo bench` options the user set.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import time
from pathlib import Path

from launch.errors import UserError
from launch.runs import write_atomic

REGISTRY: dict[str, str | tuple[str, ...]] = {
    "lightgcn": "benchmarks.recsys_speed",
    "ultragcn": "benchmarks.recsys_speed",
    "dysts_benchmark": "benchmarks.dysts_runner",
    "causal_pinn": "benchmarks.pinn_residuals",
    "pig": "benchmarks.pig_speed",
    "mgno": "benchmarks.mgno_speed",
    "itransformer": "benchmarks.itransformer_speed",
    "gtf_plrnn": "benchmarks.gtf_speed",
    "data_free_mesh_mover": ("benchmarks.mesh_mover_speed", "benchmarks.mm_pde_speed"),
    "um2n": "benchmarks.mesh_mover_speed",
    "mixed_precision": "benchmarks.precision_speed",  # not a paper: the trainer's precision plugin, three papers
}


# which side of 1 is good, written on every row with a ratio that does not say it itself (`better_if`): the
# directions differ between benchmarks (itransformer's rows carry their own), and a reader of runs/bench/*.json
# across benchmarks could otherwise invert a result
BETTER_IF = {
    "benchmarks.recsys_speed": "> 1 (ours faster / smaller)",
    "benchmarks.pinn_residuals": "> 1 (torch.func faster than autograd)",
    "benchmarks.pig_speed": "> 1 (the PIG step cheaper)",
    "benchmarks.mgno_speed": "> 1 (MgNO faster / more accurate than the FNO)",
    "benchmarks.gtf_speed": "> 1 (GTF more steps/s than BPTT)",
    "benchmarks.mesh_mover_speed": "> 1 (the learned mover faster than the solve)",
    "benchmarks.mm_pde_speed": "> 1 (MM-PDE faster than the fixed-mesh GNN; < 1: it costs more)",
    "benchmarks.precision_speed": "< 1 (step_ratio: that precision faster than 32-true)",
}


def with_direction(name: str, rows: list[dict]) -> list[dict]:
    """Each row with a ratio (`ratio`, `*_ratio`) and no `better_if` of its own gets its benchmark's BETTER_IF."""
    direction = BETTER_IF.get(name)
    for row in rows:
        has_ratio = any((k == "ratio" or k.endswith("_ratio")) and row[k] is not None for k in row)
        if direction and has_ratio and "better_if" not in row:
            row["better_if"] = direction
    return rows


def _modules(entry: str | tuple[str, ...]) -> tuple[str, ...]:
    """The benchmark modules registered for one slug (one module name or several)."""
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _run_kwargs(module, name: str, out_dir: Path, options: dict) -> dict:
    """`out_dir` when the module's run() takes it, plus the user's options; an option run() lacks is an error."""
    params = inspect.signature(module.run).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise UserError(f"benchmark {name.rsplit('.', 1)[-1]} does not take {flags}")
    return {**({"out_dir": out_dir} if "out_dir" in params else {}), **options}


def check_name(slug: str | None) -> None:
    """A one-line error for a paper without a benchmark (None: every benchmark)."""
    if slug is not None and slug not in REGISTRY:
        raise UserError(f"no benchmark for '{slug}' (have: {', '.join(sorted(REGISTRY))})")


def run_benchmarks(slug: str | None, *, quick: bool, out_dir: Path,
                   options: dict | None = None) -> dict[str, list[dict]]:
    import torch
    from rich.table import Table

    from launch.summary import wide_console

    check_name(slug)
    modules = sorted(set(_modules(REGISTRY[slug])) if slug else {m for v in REGISTRY.values() for m in _modules(v)})
    # every selected benchmark takes the options, or none runs (with --all, a later one refused them after hours);
    # under --all, --device goes to the benchmarks that take it and the others run on the CPU, as they always do
    options = options or {}
    cpu_only = [name for name in modules if slug is None and "device" in options
                and "device" not in inspect.signature(importlib.import_module(name).run).parameters]
    kwargs = {name: _run_kwargs(importlib.import_module(name), name, out_dir,
                                {k: v for k, v in options.items() if not (k == "device" and name in cpu_only)})
              for name in modules}
    if cpu_only:
        print(f"--device {options['device']}: {', '.join(n.rsplit('.', 1)[-1] for n in cpu_only)} run on the CPU "
              "(they take no --device)")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in modules:
        module = importlib.import_module(name)
        threads = torch.get_num_threads()
        try:
            rows = module.run(quick=quick, **kwargs[name])
            ran_with = torch.get_num_threads()  # a benchmark sets its own (most: 1): record those, not the caller's
        finally:  # the next benchmark starts from the same count
            torch.set_num_threads(threads)
        rows = with_direction(name, rows)
        results[name] = rows
        short = name.rsplit(".", 1)[-1]
        payload = {"benchmark": short, "quick": quick, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "options": {k: v for k, v in kwargs[name].items() if k != "out_dir"},
                   "machine": machine(ran_with), "summary": getattr(module, "SUMMARY", ""), "rows": rows}
        name_of = getattr(module, "result_name", None)  # e.g. one file per shard of the dysts runner
        stem = name_of(quick=quick, **kwargs[name]) if name_of else short
        write_atomic(out_dir / f"{stem}.json", json.dumps(_finite(payload), indent=2))
        table = Table(title=f"{short}{' (quick)' if quick else ''}")
        columns = list(dict.fromkeys(k for row in rows for k in row))
        cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
        for col in columns:
            table.add_column(col)
        for row in cells:
            table.add_row(*row)
        wide_console(columns, cells).print(table)
        if getattr(module, "SUMMARY", ""):
            print(module.SUMMARY)
    return results


def machine(threads: int) -> dict:
    """Where and with what the numbers were measured: the timings mean little without it."""
    import os
    import platform

    import torch

    from launch.runs import git_commit

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # torch_threads: the benchmark process's count when its run ended (a case run in a child process of its own, as
    # itransformer's, states its threads in its rows)
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(), "git_commit": git_commit()}


def _finite(value):
    """NaN / inf as null: JSON has no such numbers (json.dumps writes a bare NaN that strict readers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
