"""Smoke test of benchmarks/itransformer_speed.py and benchmarks/gtf_speed.py on tiny sizes (no timing asserts)."""
from __future__ import annotations

import math

import pytest


def _check(rows: list[dict], keys: set[str]) -> None:
    assert rows
    failed = [r for r in rows if r.get("error") or r.get("what") == "FAILED"]
    assert not failed, failed
    for row in rows:
        assert keys <= row.keys(), row
        assert row["what"] and row["unit"], row
        for key in ("ours", "baseline", "ratio"):
            assert row[key] is not None and math.isfinite(row[key]) and row[key] > 0, (key, row)


def test_itransformer_speed_quick():
    from benchmarks import itransformer_speed

    rows = itransformer_speed.run(quick=True)
    _check(rows, {"case", "what", "ours", "baseline", "ratio", "unit", "better_if", "note"})
    cases = {r["case"] for r in rows}
    assert {"model_h96", "model_h336", "anchor_h96", "anchor_h336"} <= cases
    anchors = [r for r in rows if r["case"].startswith("anchor_")]
    assert {r["baseline"] for r in anchors if r["unit"] == "steps/s"} == {24.0, 10.0}  # the anchor
    for row in rows:  # ratio = ours / baseline
        assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    assert itransformer_speed.SUMMARY


def test_gtf_speed_quick():
    from benchmarks import gtf_speed

    rows = gtf_speed.run(quick=True)
    _check(rows, {"case", "what", "ours", "baseline", "ratio", "unit", "note"})
    assert {r["case"] for r in rows} == {"lorenz63_gtf", "lorenz63_agtf", "ecg_gtf", "ecg_agtf"}
    for row in rows:
        assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    assert gtf_speed.SUMMARY
