"""Every registered `zoo bench` module without a smoke test of its own runs in --quick mode (tiny sizes, no
timing assertions): a benchmark that no longer builds its models fails here, not first in a user's hands."""
from __future__ import annotations

import importlib
import math

import pytest

# modules smoke-tested elsewhere: recsys_speed (tests/test_bench.py), itransformer_speed and gtf_speed
# (tests/test_dynamics_bench.py), dysts_runner (tests/papers/test_dysts_benchmark.py), pinn_residuals
# (tests/papers/test_causal_pinn.py)
MODULES = ["benchmarks.pig_speed", "benchmarks.mgno_speed", "benchmarks.mesh_mover_speed", "benchmarks.mm_pde_speed",
           "benchmarks.precision_speed"]


def test_every_registered_benchmark_is_smoke_tested():
    from benchmarks import REGISTRY, _modules

    elsewhere = {"benchmarks.recsys_speed", "benchmarks.itransformer_speed", "benchmarks.gtf_speed",
                 "benchmarks.dysts_runner", "benchmarks.pinn_residuals"}
    assert {m for entry in REGISTRY.values() for m in _modules(entry)} == elsewhere | set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_quick(name):
    rows = importlib.import_module(name).run(quick=True)
    assert rows
    ratios = []
    for row in rows:
        assert not row.get("error") and row.get("what") != "FAILED", row
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers and all(math.isfinite(v) for v in numbers.values()), row
        ratios += [v for k, v in numbers.items() if "ratio" in k]
    assert ratios and all(r > 0 for r in ratios)  # every benchmark reports ratios against its baseline
