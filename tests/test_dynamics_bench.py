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
    assert {"model_h96", "model_h336", "anchor_h96", "anchor_h336", "official_structure_h96",
            "official_structure_h336"} <= cases
    anchors = [r for r in rows if r["case"].startswith("anchor_")]
    assert {r["baseline"] for r in anchors if r["unit"] == "steps/s"} == {24.0, 10.0}  # the anchor
    for row in rows:  # ratio = ours / baseline
        assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    assert itransformer_speed.SUMMARY


def test_itransformer_reference_computes_the_same_function():
    """The official-structure timing reference (Conv1d FFN, einsum attention) equals our iTransformer with copied
    weights and dropout off, with and without timestamp tokens: the speed comparison is between equal models."""
    import torch

    from benchmarks.itransformer_reference import ReferenceITransformer, load_from_ours
    from lit_models.dynamics.itransformer import ITransformer

    torch.manual_seed(0)
    sizes = dict(seq_len=24, pred_len=12, d_model=32, n_heads=4, e_layers=2, d_ff=48, dropout=0.1)
    ours, reference = ITransformer(**sizes).eval(), ReferenceITransformer(**sizes).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    load_from_ours(reference, ours)
    x, marks = torch.randn(3, 24, 5), torch.randn(3, 24, 4)
    torch.testing.assert_close(reference(x), ours(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference(x, marks), ours(x, marks), rtol=1e-5, atol=1e-5)


def test_gtf_speed_quick():
    from benchmarks import gtf_speed

    rows = gtf_speed.run(quick=True)
    _check(rows, {"case", "what", "ours", "baseline", "ratio", "unit", "note"})
    assert {r["case"] for r in rows} == {"lorenz63_gtf", "lorenz63_agtf", "ecg_gtf", "ecg_agtf"}
    for row in rows:
        assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    assert gtf_speed.SUMMARY


def test_interleaved_timing_alternates_the_order_and_pairs_rounds():
    """benchmarks/timing.py on a fake clock (no wall-clock asserts): warm-up steps are untimed, the order reverses
    every other round (A B, B A, ...), every round times `block` steps of each variant, and the paired ratio is
    baseline time / ours time per round."""
    from benchmarks.timing import interleaved_step_times, paired_speed_ratio

    now = [0.0]
    calls: list[tuple[str, int]] = []

    def stepper(name: str, cost: float):
        def step(i: int) -> None:
            calls.append((name, i))
            now[0] += cost
        return step

    times = interleaved_step_times({"ours": stepper("ours", 2.0), "base": stepper("base", 3.0)}, rounds=3, block=2,
                                   warmup=1, clock=lambda: now[0])
    assert calls[:2] == [("ours", 0), ("base", 0)]                      # warm-up, untimed
    order = [name for name, _ in calls[2:]]
    assert order == ["ours"] * 2 + ["base"] * 2 + ["base"] * 2 + ["ours"] * 2 + ["ours"] * 2 + ["base"] * 2
    assert [i for name, i in calls if name == "ours"] == list(range(7))  # step indices keep counting
    assert times == {"ours": [2.0, 2.0, 2.0], "base": [3.0, 3.0, 3.0]}
    summary = paired_speed_ratio(times["ours"], times["base"])
    assert summary["ratio_median"] == pytest.approx(1.5) and summary["rounds"] == 3
    assert summary["ratio_q1"] == pytest.approx(1.5) and summary["ratio_q3"] == pytest.approx(1.5)
    with pytest.raises(ValueError):
        paired_speed_ratio([1.0], [1.0, 2.0])
