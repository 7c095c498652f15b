"""`zoo bench lightgcn --quick`: the recsys speed benchmark runs end to end (no timing assertions)."""
from __future__ import annotations

import json
import math

from tests.conftest import zoo_in_process


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_bench_lightgcn_quick(tmp_path):
    out = tmp_path / "bench"
    code, stdout, stderr = zoo_in_process("bench", "lightgcn", "--quick", "--out", str(out))
    assert code == 0, stderr[-2000:]
    payload = json.loads((out / "recsys_speed.json").read_text())
    assert payload["quick"] is True and payload["summary"]
    rows = payload["rows"]
    assert not [r for r in rows if r.get("error")], [r["error"] for r in rows if r.get("error")]
    assert "recsys_speed" in stdout
    assert "…" not in stdout  # every cell whole in a pipe (rich cut the table to 80 columns: "0.8…", "qua…")

    cases = {r["case"] for r in rows}
    assert {"ml100k", "prop_ml100k", "prop_gowalla", "gowalla_lightgcn", "gowalla_ultragcn"} <= cases
    for row in rows:
        assert row["what"] and row["unit"], row
        for key, value in _numbers(row).items():
            assert math.isfinite(value), (key, row)
            if row["unit"] == "max abs diff" or key in ("grad_diff", "out_diff"):
                assert value >= 0, (key, row)
            else:
                assert value > 0, (key, row)

    # every speed / memory measurement has a number; ratios exist wherever a baseline does
    for row in rows:
        if row["unit"] in ("s", "MiB") and "time to LightGCN's best" not in row["what"]:
            assert row["ours"] is not None, row
        if row["baseline"] is not None and row["ours"] is not None:
            if row["case"].startswith("gowalla_"):  # quick's tiny graph against the quoted Gowalla figures: no
                assert row["ratio"] is None and row.get("met") is None, row  # ratio (it was "met True" at 1371x)
            else:
                assert row["ratio"] is not None, row

    # our propagation agrees with torch-geometric's LightGCN on the same graph, K and E0
    diffs = [r for r in rows if r["unit"] == "max abs diff"]
    assert {r["case"] for r in diffs} == {"prop_ml100k", "prop_gowalla"}
    for row in diffs:
        assert row["ours"] <= 1e-4 and row["grad_diff"] <= 1e-4, row

    # the paired rows (both sides in one process, interleaved rounds): ours vs torch-geometric's propagation on each
    # graph, UltraGCN vs LightGCN training steps and UltraGCN's sampled vs dense scoring, ratio = the median of the
    # per-round ratios
    from benchmarks.timing import RATIO_METHOD

    paired = [r for r in rows if "ratio_median" in r]
    assert sorted(r["case"] for r in paired) == ["ml100k", "ml100k", "prop_gowalla", "prop_ml100k"]
    for row in paired:
        assert row["ratio"] == row["ratio_median"] and row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"], row
        assert row["rounds"] >= 1 and row["ratio_method"] == RATIO_METHOD, row
    for row in (r for r in paired if r["case"].startswith("prop_")):
        assert row["out_diff"] <= 1e-4 and row["grad_diff"] <= 1e-4, row
    assert {r["device"] for r in rows} == {"cpu"} and not [k for r in rows for k in r if "gpu" in k]

    # the Gowalla-scale rows say what they are measured against
    gowalla = [r for r in rows if r["case"].startswith("gowalla_")]
    assert len(gowalla) == 8
    assert all("met" in r for r in gowalla if r["what"].endswith("(extrapolated)"))


def test_an_option_some_benchmark_refuses_fails_before_any_runs(tmp_path):
    """`zoo bench --all --systems lorenz`: a one-line error before any benchmark runs. Before, the benchmarks that
    take --systems ran (the whole dysts runner) and a later one refused it (found by the CLI audit, stop 32)."""
    code, _, err = zoo_in_process("bench", "--all", "--quick", "--systems", "lorenz", "--out", str(tmp_path / "b"))
    assert code == 2 and "does not take --systems" in err and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "b").glob("*.json"))


def test_the_result_records_the_threads_the_benchmark_ran_with(tmp_path, monkeypatch):
    """Most benchmarks pin 1 torch thread; the JSON's machine.torch_threads recorded the caller's count (2 on a
    2-core machine) read before the run (benchmark audit, stop 44). It records the count the benchmark ran with, and
    the caller's count is restored afterwards."""
    import json
    import sys
    import types

    import torch

    from benchmarks import REGISTRY, run_benchmarks

    fake = types.ModuleType("benchmarks.fake_one_thread")

    def run(quick: bool):
        torch.set_num_threads(1)
        return [{"case": "x", "ratio": 1.0}]

    fake.run, fake.SUMMARY = run, "fake"
    monkeypatch.setitem(sys.modules, "benchmarks.fake_one_thread", fake)
    monkeypatch.setitem(REGISTRY, "fake", "benchmarks.fake_one_thread")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_benchmarks("fake", quick=True, out_dir=tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "fake_one_thread.json").read_text())["machine"]["torch_threads"] == 1


def test_every_ratio_row_says_which_side_of_one_is_good():
    """Ratios point different ways across benchmarks (itransformer: ours / baseline seconds, < 1 good; the PINN,
    PIG and mesh-mover rows: baseline / ours seconds, > 1 good) and only itransformer's rows said so (benchmark audit,
    stop 44): every registered benchmark module has a direction, written on each row with a ratio that lacks one."""
    from benchmarks import BETTER_IF, REGISTRY, _modules, with_direction

    modules = {m for entry in REGISTRY.values() for m in _modules(entry)}
    assert modules - {"benchmarks.itransformer_speed", "benchmarks.dysts_runner"} <= set(BETTER_IF), modules
    rows = with_direction("benchmarks.pinn_residuals", [{"ratio": 2.0}, {"ratio": None}, {"ratio": 0.5,
                                                         "better_if": "< 1"}, {"time_ratio": 1.2}])
    assert [r.get("better_if") for r in rows] == [BETTER_IF["benchmarks.pinn_residuals"], None, "< 1",
                                                  BETTER_IF["benchmarks.pinn_residuals"]]
