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
