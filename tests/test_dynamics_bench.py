"""Smoke test of benchmarks/itransformer_speed.py and benchmarks/gtf_speed.py on tiny sizes (no timing asserts)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch


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
    assert {r["baseline"] for r in anchors if r["unit"] == "steps/s"} == {24.0, 10.0}  # the issue's anchor
    for row in rows:  # ratio = ours / baseline; of a paired row the median of its per-round ratios
        if "ratio_median" in row:
            assert row["ratio"] == row["ratio_median"], row
            assert row["case"].startswith(("official_structure_", "model_")), row
            assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"], row
        else:
            assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"])
    for h in (96, 336):  # THE iTransformer vs temporal speed ratio is the paired row; no unpaired speed ratio beside it
        speed = [r for r in rows if r["case"] == f"model_h{h}" and r["unit"] in ("steps/s", "ms")]
        assert len(speed) == 1 and speed[0]["rounds"] == itransformer_speed.QUICK["pair_rounds"], speed
        assert speed[0]["better_if"] == "ratio > 1" and "interleaved" in speed[0]["what"]
    assert itransformer_speed.SUMMARY


class _Steps:
    """Fake training steps for itransformer_speed's `_training_step`: each step of a model advances `machine`'s clock
    by that model's cost; `calls` records the order."""

    def __init__(self, machine, costs: dict[str, float]) -> None:
        self.machine, self.costs, self.calls, self.built = machine, costs, [], []

    def __call__(self, model_name: str, horizon: int, quick: bool, device: str = "cpu"):
        self.built.append((model_name, horizon))

        def step(i: int) -> None:
            self.calls.append(model_name)
            self.machine.work(self.costs[model_name])

        info = {"model": model_name, "horizon": horizon, "device": device, "params": 100, "d_model": 8, "batch": 2,
                "variates": 7, "tokens": 96 if model_name == "tmp" else 7}
        return step, info


@pytest.mark.parametrize("horizon", [96, 336])
def test_itransformer_vs_temporal_ratio_comes_from_interleaved_rounds(monkeypatch, horizon):
    """Each horizon has a paired case (pair_tmp_h*) in which iTransformer and the temporal-token Transformer take turns
    in one process (full-mode rounds, >= 8, after untimed warm-up), and its ratio is the model row's ratio: with fake
    steps of known cost (temporal 3x iTransformer's) and the machine 3x slower from halfway on, the ratio is 3 (timed
    one after the other it would not be), and the rows give it with its quartiles and `better_if`."""
    from benchmarks import itransformer_speed as bench

    assert f"pair_tmp_h{horizon}" in bench.CASES and f"pair_tmp_h{horizon}" in bench.cases_for("cuda")
    full = bench.FULL
    assert full["pair_rounds"] >= 8
    timed = 2 * full["pair_rounds"] * full["pair_block"]
    machine = _DriftingMachine(slow_after=2 * full["warmup"] + timed // 2 + 1)  # mid-block
    steps = _Steps(machine, {"itr": 1.0, "tmp": 3.0})
    monkeypatch.setattr(bench, "_training_step", steps)
    _fake_clock(monkeypatch, machine)
    res = bench.case_pair(horizon, quick=False, baseline="tmp")
    assert steps.built == [("itr", horizon), ("tmp", horizon)]
    assert steps.calls[:2 * full["warmup"]] == ["itr"] * full["warmup"] + ["tmp"] * full["warmup"]  # untimed
    block = full["pair_block"]
    assert steps.calls[2 * full["warmup"]:][:4 * block] == ["itr"] * block + ["tmp"] * 2 * block + ["itr"] * block
    assert res["rounds"] == full["pair_rounds"] and res["ratio_median"] == pytest.approx(3.0)
    assert res["ratio_q1"] <= res["ratio_median"] <= res["ratio_q3"]

    res.update(case=f"pair_tmp_h{horizon}", threads=2, load1=0.0)
    rows = [r for r in bench.build_rows({res["case"]: res}, quick=False) if r["case"] == f"model_h{horizon}"]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["unit"] == "steps/s" and row["better_if"] == "ratio > 1"
    assert row["ratio"] == row["ratio_median"] == pytest.approx(3.0)
    assert row["ours"] == pytest.approx(1 / res["step_s"])
    assert row["baseline"] == pytest.approx(1 / res["baseline_step_s"])
    assert {"ratio_q1", "ratio_q3", "rounds", "ratio_method"} <= row.keys()


def _fit(device: str, step_s: float = 0.05) -> dict:
    return {"case": "fit_itr_h96" + ("_cuda" if device == "cuda" else ""), "model": "itr", "horizon": 96,
            "device": device, "step_s": step_s, "timed_steps": 40, "warmup_steps": 5, "epoch_s": step_s * 264,
            "best_window_step_s": step_s, "window_steps": 10, "cores_used": 1.0, "wall_s": 3.0, "d_model": 256,
            "batch": 32, "time_features": True, "threads": 2, "load1": 0.0, "peak_rss_mib": 900.0,
            "rss_after_imports_mib": 500.0}


def _step(model: str, step_s: float, rss: float) -> dict:
    return {"case": f"step_{model}_h96", "model": model, "horizon": 96, "device": "cpu", "step_s": step_s,
            "best_step_s": step_s, "timed_steps": 20, "params": 100, "tokens": 7, "d_model": 256, "batch": 32,
            "variates": 7, "threads": 2, "load1": 0.0, "cores_used": 1.0, "peak_rss_mib": rss,
            "rss_after_imports_mib": 500.0}


def test_itransformer_rows_cuda_anchor_has_no_ratio_and_unpaired_steps_give_none():
    """build_rows on fake numbers (no GPU): the anchor rows of a CUDA run keep their numbers but get no ratio (the
    anchor is a CPU figure) while the CPU anchor rows keep theirs; the fresh-process step cases give a peak-RSS row
    and no speed ratio of their own; the CUDA memory row is the peak of one step above what was allocated before it."""
    from benchmarks import itransformer_speed as bench

    pair = {"case": "pair_tmp_h96_cuda", "model": "itr", "horizon": 96, "device": "cuda", "params": 100,
            "d_model": 256, "batch": 32, "variates": 7, "tokens": 7, "baseline_tokens": 96, "baseline_params": 110,
            "step_s": 0.01, "baseline_step_s": 0.02, "ours_step_s": 0.01, "ratio_median": 2.0, "ratio_q1": 1.9,
            "ratio_q3": 2.1, "rounds": 12, "pair_block": 5, "pair_warmup": 3, "threads": 2, "load1": 0.0,
            "cores_used": 1.0, "ours_peak_gpu_mib": 30.0, "baseline_peak_gpu_mib": 120.0}
    results = {"fit_itr_h96": _fit("cpu"), "fit_itr_h96_cuda": {**_fit("cuda", 0.01), "case": "fit_itr_h96_cuda"},
               "step_itr_h96": _step("itr", 0.05, 600.0), "step_tmp_h96": _step("tmp", 0.5, 800.0),
               "pair_tmp_h96_cuda": pair}
    rows = bench.build_rows(results, quick=False)
    cuda_anchor = [r for r in rows if r["case"] == "anchor_h96_cuda"]
    cpu_anchor = [r for r in rows if r["case"] == "anchor_h96"]
    assert cuda_anchor and all(r["ratio"] is None for r in cuda_anchor), cuda_anchor
    assert all(r["ours"] is not None and r["baseline"] is not None for r in cuda_anchor)
    assert "CPU figure" in cuda_anchor[0]["note"]
    assert not any("peak memory" in r["what"] for r in cuda_anchor)  # a GPU run has no process RSS to compare
    assert cpu_anchor and all(r["ratio"] is not None for r in cpu_anchor), cpu_anchor
    assert cpu_anchor[0]["ratio"] == pytest.approx((1 / 0.05) / 24.0)

    cpu_model = [r for r in rows if r["case"] == "model_h96"]
    assert [r["unit"] for r in cpu_model] == ["MiB"], cpu_model  # only the peak RSS row: no unpaired speed ratio
    assert cpu_model[0]["ratio"] == pytest.approx(100.0 / 300.0) and "unpaired" in cpu_model[0]["note"]
    gpu_model = [r for r in rows if r["case"] == "model_h96_cuda"]
    assert [r["unit"] for r in gpu_model] == ["steps/s", "MiB"], gpu_model
    assert gpu_model[0]["ratio"] == 2.0 and gpu_model[1]["ratio"] == pytest.approx(0.25)
    assert gpu_model[1]["ours_peak_gpu_mib"] == 30.0 and "allocated before" in gpu_model[1]["what"]


def test_itransformer_speed_rejects_a_bad_device():
    from benchmarks import itransformer_speed
    from launch.errors import UserError

    with pytest.raises(UserError, match="--device"):
        itransformer_speed.run(quick=True, device="tpu")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            itransformer_speed.run(quick=True, device="cuda")


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
    from benchmarks.timing import RATIO_METHOD

    for row in rows:  # the ratio of the interleaved rounds: the median of the per-round ratios
        assert row["ratio"] == row["ratio_median"] and row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
        assert row["ratio_method"] == RATIO_METHOD and row["device"] == "cpu" and row["rounds"] == 2
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



# ------------------------------------------------------------------ drift: sequential vs interleaved timing


class _DriftingMachine:
    """A fake clock and fake workloads of known cost: each workload call advances the clock by its cost, `factor`
    times that once `slow_after` calls (of all workloads together) have been made: the machine becomes `factor` times
    slower partway through a measurement (another job starts, the CPU clocks down), as a shared machine does."""

    def __init__(self, slow_after: int, factor: float = 3.0) -> None:
        self.now, self.calls, self.slow_after, self.factor = 0.0, 0, slow_after, factor

    def clock(self) -> float:
        return self.now

    def work(self, cost: float) -> None:
        self.calls += 1
        self.now += cost * (self.factor if self.calls > self.slow_after else 1.0)


@pytest.mark.parametrize("slow_from", [0.25, 0.5, 0.75])
def test_interleaved_rounds_get_the_ratio_right_where_sequential_timing_does_not(slow_from):
    """Two workloads of known costs (baseline 2, ours 1: ratio 2) and a 3x slowdown from a quarter, half or three
    quarters of the measurement on: timed one after the other the ratio comes out 2/3 (ours ran slow) or wrong by
    up to 3x; in interleaved rounds the per-round ratio is 2 in every round but the one where the slowdown began,
    and the median of the rounds is 2."""
    from benchmarks.timing import interleaved_step_times, paired_speed_ratio

    rounds, block, warmup = 9, 2, 1
    timed = 2 * rounds * block
    slow_after = 2 * warmup + int(slow_from * timed)

    machine = _DriftingMachine(slow_after)
    steps = {"ours": lambda i: machine.work(1.0), "base": lambda i: machine.work(2.0)}
    # sequential (what the benchmarks did): warm-up and every timed step of one variant, then the other's
    seq = {}
    for name, step in steps.items():
        step(0)
        t0 = machine.clock()
        for i in range(rounds * block):
            step(i)
        seq[name] = (machine.clock() - t0) / (rounds * block)
    assert abs(seq["base"] / seq["ours"] - 2.0) > 0.2  # wrong by more than 10 %

    machine.__init__(slow_after)
    times = interleaved_step_times(steps, rounds=rounds, block=block, warmup=warmup, clock=machine.clock)
    assert paired_speed_ratio(times["ours"], times["base"])["ratio_median"] == pytest.approx(2.0, rel=0.02)


def _fake_clock(monkeypatch, machine: _DriftingMachine) -> None:
    """time.perf_counter reads the machine's clock (the benchmarks look it up at each call)."""
    import time

    monkeypatch.setattr(time, "perf_counter", machine.clock)


def test_pinn_residual_ratio_survives_a_slowdown_halfway(monkeypatch):
    """benchmarks/pinn_residuals.compare with the two residual ways replaced by fake workloads (autograd costs 2,
    torch.func 1: ratio 2) and the machine 3x slower from the middle of the first row's measurement on. Timed one
    after the other (the old `_time`: autograd's calls, then torch.func's) the ratio was 2/3."""
    from benchmarks import pinn_residuals

    repeats = 8
    machine = _DriftingMachine(slow_after=2 + 1 + repeats)  # 2 agreement calls, then half of the measurement

    def fake(cost):
        def residual(model, problem, t, x):
            machine.work(cost)
            return model(t, x)[:, 0]
        return residual

    monkeypatch.setattr(pinn_residuals, "residual_autograd", fake(2.0))
    monkeypatch.setattr(pinn_residuals, "residual_func", fake(1.0))
    _fake_clock(monkeypatch, machine)
    row = pinn_residuals.compare("allen_cahn", 8, repeats=repeats, width=8)[0]
    assert row["what"] == "residual"
    assert row["ratio"] == pytest.approx(2.0, rel=0.05), row


class _FakePIG(torch.nn.Module):
    """PIGModule's interface for pig_speed (losses, parameters): a training step of a known cost."""

    machine: _DriftingMachine
    costs = {"mlp": 1.0, "autograd": 2.0, "analytic": 1.5}

    def __init__(self, model: str, problem: str, num_gaussians: int = 0, laplacian: str = "autograd") -> None:
        super().__init__()
        self.cost = self.costs["mlp" if model == "mlp" else laplacian]
        self.w = torch.nn.Parameter(torch.ones(1))

    def losses(self, batch) -> dict:
        self.machine.work(self.cost)
        return {"loss": (self.w ** 2).sum()}


class _FakePigData:
    def __init__(self, **_) -> None:
        pass

    def sample(self) -> dict:
        return {"x": torch.zeros(1, 2)}


def test_pig_ratio_survives_a_slowdown_halfway(monkeypatch):
    """benchmarks/pig_speed.run with fake steps of known cost (MLP-PINN 1, PIG autograd 2, analytic 1.5: ratios
    0.5 and 0.667) and the machine 3x slower from the middle of the first problem's measurement on. Timed one variant
    after the other (MLP-PINN's steps, then each PIG's), the PIG steps ran slow and the ratios came out 3x too small."""
    import datamodules.pig_data
    import lit_models.pde.pig
    from benchmarks import pig_speed

    machine = _DriftingMachine(slow_after=6)  # quick: 3 variants x (1 warm-up + 3 timed steps) = 12 calls
    monkeypatch.setattr(_FakePIG, "machine", machine, raising=False)
    monkeypatch.setattr(lit_models.pde.pig, "PIGModule", _FakePIG)
    monkeypatch.setattr(datamodules.pig_data, "PigDataModule", _FakePigData)
    _fake_clock(monkeypatch, machine)
    rows = {r["case"]: r for r in pig_speed.run(quick=True)}
    assert rows["pig_autograd"]["ratio"] == pytest.approx(0.5, rel=0.05), rows["pig_autograd"]
    assert rows["pig_analytic"]["ratio"] == pytest.approx(1 / 1.5, rel=0.05), rows["pig_analytic"]


class _FakeOperator(torch.nn.Module):
    """An operator whose forward costs `cost` on the drifting machine."""

    def __init__(self, machine: _DriftingMachine, cost: float) -> None:
        super().__init__()
        self.machine, self.cost = machine, cost
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.machine.work(self.cost)
        return x * self.w


class _FakeDarcy:
    def __init__(self, **_) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batches = [{"x": torch.rand(2, 1, 4, 4, generator=gen), "y": torch.rand(2, 1, 4, 4, generator=gen)}
                        for _ in range(5)]

    def setup(self) -> None:
        pass

    def train_dataloader(self):
        return list(self.batches)

    def test_dataloader(self):
        return self.batches[:1]


def test_mgno_time_ratio_survives_a_slowdown(monkeypatch):
    """benchmarks/mgno_speed.run with fake operators (MgNO step 1, FNO step 2: time_ratio FNO / MgNO = 2) and the
    machine 3x slower once MgNO's 12 quick training steps are done. Trained one after the other (MgNO, then the FNO)
    the FNO's timed steps all ran slow: time_ratio 6."""
    import lit_models.pde.mgno
    import datamodules.darcy
    from benchmarks import mgno_speed

    machine = _DriftingMachine(slow_after=12)  # quick: 12 steps per model, the last 8 timed
    monkeypatch.setattr(lit_models.pde.mgno, "MgNO", lambda *a, **k: _FakeOperator(machine, 1.0))
    def fake_fno(target, modes):
        fno = _FakeOperator(machine, 2.0)
        fno.modes, fno.width, fno.padding = modes, 1, 0  # what the rows report of the FNO's setup
        return fno

    monkeypatch.setattr(mgno_speed, "matched_fno", fake_fno)
    monkeypatch.setattr(datamodules.darcy, "DarcyDataModule", _FakeDarcy)
    _fake_clock(monkeypatch, machine)
    ratio_row = mgno_speed.run(quick=True)[-1]
    assert ratio_row["time_ratio"] == pytest.approx(2.0, rel=0.05), ratio_row

# ------------------------------------------------------------------ dysts runner: out_dir, systems, shards, merge
def test_bench_passes_out_dir_only_to_runs_that_take_it(tmp_path):
    """`zoo bench --out X` reaches run(out_dir=...) of benchmarks that write tables; others keep run(quick)."""
    import types

    from benchmarks import _run_kwargs
    from launch.errors import UserError

    plain = types.SimpleNamespace(run=lambda quick: [])
    assert _run_kwargs(plain, "benchmarks.plain", tmp_path, {}) == {}
    with pytest.raises(UserError, match="does not take --systems"):
        _run_kwargs(plain, "benchmarks.plain", tmp_path, {"systems": "Lorenz"})
    from benchmarks import dysts_runner

    assert _run_kwargs(dysts_runner, "benchmarks.dysts_runner", tmp_path, {"shard": "0/2"}) == \
        {"out_dir": tmp_path, "shard": "0/2"}


def test_zoo_bench_dysts_writes_its_table_under_out(tmp_path, monkeypatch):
    from tests.conftest import zoo_in_process

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere"
    code, stdout, stderr = zoo_in_process("bench", "dysts_benchmark", "--quick", "--systems", "Rossler,Chua",
                                          "--out", str(out))
    assert code == 0, stderr
    assert (out / "dysts_runner_quick.csv").is_file() and (out / "dysts_runner_quick.md").is_file()
    payload = json.loads((out / "dysts_runner_quick.json").read_text())  # named as its tables (was dysts_runner.json)
    assert payload["options"] == {"systems": "Rossler,Chua"}
    machine = payload["machine"]  # where the numbers come from (benchmark audit: no result recorded it)
    assert machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    assert machine["git_commit"] and machine["cpu"]
    assert not (tmp_path / "runs").exists()  # nothing lands in ./runs/bench any more
    text = (out / "dysts_runner_quick.csv").read_text()
    assert "Rossler" in text and "Chua" in text and "Lorenz," not in text


def test_each_shard_and_dataset_has_its_own_json():
    """The tasks of a sharded job array all wrote `dysts_runner.json`, each over the other (benchmark audit)."""
    from benchmarks.dysts_runner import result_name

    names = {result_name(quick=False, shard="0/2"), result_name(quick=False, shard="1/2"), result_name(quick=False),
             result_name(quick=True), result_name(quick=False, dataset="fine", shard="0/2"),
             result_name(quick=False, shard="0/2", merge=True)}
    assert names == {"dysts_runner_shard0of2", "dysts_runner_shard1of2", "dysts_runner", "dysts_runner_quick",
                     "dysts_runner_fine_shard0of2"}


def test_a_system_named_twice_runs_once():
    from benchmarks.dysts_runner import _resolve_systems

    assert _resolve_systems("Chua,Rossler,Chua", False, True) == ["Chua", "Rossler"]


def test_benchmark_json_has_no_bare_nan():
    from benchmarks import _finite

    assert json.loads(json.dumps(_finite({"a": [float("nan"), 1.0], "b": float("inf")}))) == {"a": [None, 1.0],
                                                                                              "b": None}


def test_parse_shard_and_slurm_environment():
    from benchmarks.dysts_runner import parse_shard, shard_systems
    from launch.errors import UserError

    assert parse_shard(None) is None and parse_shard("1/4") == (1, 4)
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}) == (2, 3)
    for bad in ("4/4", "a/b", "3"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(UserError, match="SLURM_ARRAY_TASK_ID"):
        parse_shard("slurm", {})
    names = [f"s{i}" for i in range(7)]
    parts = [shard_systems(names, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(names) and not set(parts[0]) & set(parts[1])


def test_shards_merge_into_the_unsharded_table(tmp_path, monkeypatch):
    """Three systems of the published coarse data (local fixture over HTTP), two shards + merge == one run."""
    from benchmarks import dysts_runner
    from launch.errors import UserError
    from tests.conftest import serve_directory
    from tests.test_dysts_real_data import write_fixture

    www = tmp_path / "www"
    write_fixture(www, granularities=("coarse",), noise_options=(False,))
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    with serve_directory(www) as server:
        common = dict(quick=True, dataset="coarse", all_systems=True,
                      base_url=f"http://127.0.0.1:{server.server_address[1]}")
        whole = dysts_runner.run(out_dir=tmp_path / "whole", **common)
        shard0 = dysts_runner.run(out_dir=tmp_path / "shards", shard="0/2", **common)
        with pytest.raises(UserError, match="missing shard tables 1/2"):
            dysts_runner.merge_shards(tmp_path / "shards", quick=True, dataset="coarse")
        shard1 = dysts_runner.run(out_dir=tmp_path / "shards", shard="1/2", **common)
    assert {r["system"] for r in shard0} == {"Chua", "Rossler"} and {r["system"] for r in shard1} == {"Lorenz"}
    assert not any(r["system"].startswith("spearman") for r in shard0 + shard1)  # partial tables only
    assert (tmp_path / "shards" / "dysts_runner_coarse_quick_shard0of2.csv").is_file()
    merged = dysts_runner.run(out_dir=tmp_path / "shards", merge=True, quick=True, dataset="coarse")
    assert (tmp_path / "shards" / "dysts_runner_coarse_quick.md").is_file()
    key = lambda r: (r["system"], r["forecaster"])
    assert sorted(map(key, merged)) == sorted(map(key, whole))
    by_key = {key(r): r for r in whole}
    for row in merged:
        for column in ("smape", "nrmse", "rho_smape_lyapunov", "rho_nrmse_lyapunov_per_period"):
            if column in row and math.isfinite(row[column]):
                assert row[column] == pytest.approx(by_key[key(row)][column], rel=1e-9), (row, column)
    forecasters = {r["forecaster"] for r in whole if r["system"].startswith("spearman")}
    assert forecasters == {"naive", "ridge_ar15", "nbeats_lite"}  # coarse: one period (15 points) of lags
    per_system = [r for r in whole if not r["system"].startswith("spearman")]
    assert all(r["windows"] == 1 for r in per_system)  # the paper's single forecast of the last sixth
    # the cost columns survive the shard files: each row its own fit, each system's data step on one row, and the
    # merged summary sums the shards' rows (timings differ from the whole run's, so not compared with it)
    merged_systems = [r for r in merged if not r["system"].startswith("spearman")]
    assert all(r["fit_seconds"] >= 0 for r in merged_systems)
    assert sorted(r["system"] for r in merged_systems if "data_seconds" in r) == ["Chua", "Lorenz", "Rossler"]
    shard_rows = shard0 + shard1
    summary = {r["forecaster"]: r for r in merged if r["system"].startswith("spearman")}
    for forecaster, row in summary.items():
        fits = [r["fit_seconds"] for r in shard_rows if r["forecaster"] == forecaster]
        assert row["fit_seconds_total"] == pytest.approx(sum(fits), rel=1e-9)
    assert summary["naive"]["system_seconds_total"] == pytest.approx(
        sum(r["fit_seconds"] + r.get("data_seconds", 0.0) for r in shard_rows), rel=1e-9)


def test_dysts_runner_times_each_step_once_after_an_untimed_warm_up(tmp_path, monkeypatch):
    """Issue 3 (the runner's cost per system): each system's data step is timed once (`data_seconds`, on its first
    row only) and each forecaster's fit + forecast on its own row (`fit_seconds`), not one whole-system figure copied
    onto every row; the summary rows give median and total per forecaster and per system; an untimed warm-up runs
    before the first timed system and changes no error. Structure only, no wall-clock thresholds."""
    from benchmarks import dysts_runner
    from tests.test_dysts_real_data import write_fixture

    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    common = dict(quick=True, dataset="coarse", systems="Lorenz,Rossler", data_dir=str(tmp_path / "d"))
    real_warm_up, real_rows, calls = dysts_runner._warm_up, dysts_runner._system_rows, []

    def warm_up(name, *args):
        calls.append(("warm-up", name))
        return real_warm_up(name, *args)

    def system_rows(name, *args):
        calls.append(("timed", name))
        return real_rows(name, *args)

    monkeypatch.setattr(dysts_runner, "_warm_up", warm_up)
    monkeypatch.setattr(dysts_runner, "_system_rows", system_rows)
    rows = dysts_runner.run(out_dir=tmp_path / "warm", **common)
    assert calls == [("warm-up", "Lorenz"), ("timed", "Lorenz"), ("timed", "Rossler")]
    assert not any("seconds" in r for r in rows)  # the whole-system figure is gone
    per_system = [r for r in rows if not r["system"].startswith("spearman")]
    for name in ("Lorenz", "Rossler"):
        mine = [r for r in per_system if r["system"] == name]
        assert [r["forecaster"] for r in mine] == ["naive", "ridge_ar15", "nbeats_lite"]
        assert [("data_seconds" in r) for r in mine] == [True, False, False]
        assert all(math.isfinite(r["fit_seconds"]) and r["fit_seconds"] >= 0 for r in mine)
    summary = [r for r in rows if r["system"].startswith("spearman")]
    assert [r["forecaster"] for r in summary] == ["naive", "ridge_ar15", "nbeats_lite"]
    for row in summary:
        fits = [r["fit_seconds"] for r in per_system if r["forecaster"] == row["forecaster"]]
        assert row["fit_seconds_total"] == pytest.approx(sum(fits))
        assert row["fit_seconds_median"] == pytest.approx(float(np.median(fits)))
    data = [r["data_seconds"] for r in per_system if "data_seconds" in r]
    whole = [sum(r["fit_seconds"] + r.get("data_seconds", 0.0) for r in per_system if r["system"] == name)
             for name in ("Lorenz", "Rossler")]
    assert summary[0]["data_seconds_total"] == pytest.approx(sum(data))
    assert summary[0]["data_seconds_median"] == pytest.approx(float(np.median(data)))
    assert summary[0]["system_seconds_total"] == pytest.approx(sum(whole))
    assert summary[0]["system_seconds_median"] == pytest.approx(float(np.median(whole)))
    assert not any("data_seconds_total" in r for r in summary[1:])  # per-system figures once
    markdown = (tmp_path / "warm" / "dysts_runner_coarse_quick.md").read_text()
    assert "fit_seconds_median" in markdown and "system_seconds_total" in markdown
    # without the warm-up: the same errors to the last bit (every forecaster seeds itself)
    monkeypatch.setattr(dysts_runner, "_warm_up", lambda *args: None)
    cold = dysts_runner.run(out_dir=tmp_path / "cold", **common)
    errors = lambda table: [(r["system"], r["forecaster"], r.get("smape"), r.get("nrmse")) for r in table]
    assert errors(cold) == errors(rows)


def test_dysts_warm_up_integrates_a_shorter_trajectory_than_the_timed_one(monkeypatch):
    """The offline default's warm-up must not fill make_trajectories' per-process cache with the trajectory the
    first timed system then reads (its data step would time a cache hit)."""
    from benchmarks import dysts_runner
    from datamodules import dysts_windows

    lengths, real = [], dysts_windows.load_series
    monkeypatch.setattr(dysts_windows, "load_series",
                        lambda name, n, *a, **k: lengths.append(n) or real(name, n, *a, **k))
    dysts_runner._warm_up("Chua", dysts_runner._integrated_task, "cpu", None)
    assert lengths == [dysts_runner.WARM_UP_POINTS] and dysts_runner.WARM_UP_POINTS < dysts_runner.N_POINTS


def test_runner_rejects_bad_device_and_dataset(tmp_path):
    from benchmarks import dysts_runner
    from launch.errors import UserError

    with pytest.raises(UserError, match="--device"):
        dysts_runner.run(quick=True, out_dir=tmp_path, device="tpu")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            dysts_runner.run(quick=True, out_dir=tmp_path, device="cuda")
    with pytest.raises(UserError, match="--dataset"):
        dysts_runner.run(quick=True, out_dir=tmp_path, dataset="medium")


def test_itransformer_spawn_reports_each_case_of_one_process(monkeypatch, tmp_path):
    """Full mode on CUDA runs every case in one subprocess: each JSON line becomes that case's result, and a case the
    process never reached becomes an error row instead of hiding the others."""
    import json
    import subprocess

    from benchmarks import itransformer_speed as bench

    line = bench.MARK + json.dumps({"case": "step_itr_h96_cuda", "step_s": 0.01})

    def fake_run(cmd, **kwargs):
        assert cmd[cmd.index("--case") + 1] == "step_itr_h96,step_tmp_h96"
        return subprocess.CompletedProcess(cmd, 1, stdout=line + "\n", stderr="RuntimeError: out of time\n")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    results = bench._spawn(["step_itr_h96", "step_tmp_h96"], tmp_path, "cuda")
    assert results[0] == {"case": "step_itr_h96_cuda", "step_s": 0.01}
    assert results[1]["case"] == "step_tmp_h96_cuda" and "out of time" in results[1]["error"]


def test_itransformer_worker_reports_a_failing_case_and_goes_on(monkeypatch, capsys):
    """In the one-process CUDA mode a case that raises (e.g. out of GPU memory) prints an error line for itself and
    the next case still runs."""
    import json

    from benchmarks import itransformer_speed as bench

    def fake_case(name, quick, data_dir, device):
        if name == "step_itr_h96":
            raise RuntimeError("CUDA out of memory")
        return {"case": f"{name}_cuda", "step_s": 0.02}

    monkeypatch.setattr(bench, "run_case", fake_case)
    bench.worker(["step_itr_h96", "step_tmp_h96"], False, "unused", "cuda")
    lines = [json.loads(x[len(bench.MARK):]) for x in capsys.readouterr().out.splitlines() if x.startswith(bench.MARK)]
    assert lines[0]["case"] == "step_itr_h96_cuda" and "out of memory" in lines[0]["error"]
    assert lines[1]["case"] == "step_tmp_h96_cuda" and lines[1]["step_s"] == 0.02


def test_official_protocol_one_step_nbeats_with_per_system_input_lengths(tmp_path, monkeypatch):
    """--protocol official: the N-BEATS row is compute_benchmarks.py's one-step model rolled over the held-out sixth,
    scored on all but its last point, with the input length of the official hyperparameter file per system (one
    period where the file has none); the table gets its own name; bad combinations are one-line errors."""
    import json

    from benchmarks import dysts_runner
    from launch.errors import UserError
    from tests.test_dysts_real_data import write_fixture

    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(json.dumps({"Lorenz": {"NBEATSModel": {"input_chunk_length": 5, "output_chunk_length": 1},
                                         "ARIMA": {"p": 5}}, "Rossler": {"ARIMA": {"p": 1}}}))
    assert dysts_runner.official_input_lengths(hp) == {"Lorenz": 5}
    calls = {}
    real = dysts_runner._nbeats_one_step

    def spy(history, lags, horizon, epochs, size, **kw):
        calls[len(calls)] = (lags, horizon, epochs, size)
        out = real(history, lags, horizon, epochs, size, **kw)
        assert out.shape == (1, horizon)
        return out

    monkeypatch.setattr(dysts_runner, "_nbeats_one_step", spy)
    rows = dysts_runner.run(quick=True, out_dir=tmp_path / "out", dataset="coarse", systems="Lorenz,Rossler",
                            data_dir=str(tmp_path / "d"), protocol="official", hyperparameters=str(hp))
    nb = {r["system"]: r for r in rows if r["forecaster"] == "nbeats_official"}
    assert nb["Lorenz"]["lags"] == 5 and nb["Rossler"]["lags"] == 15  # from the file / one period
    # the untimed warm-up's one epoch of a one-block net first (on Lorenz: no file length there, one period)
    assert calls[0] == (15, 30, 1, (1, 1, 8))
    assert sorted(list(calls.values())[1:]) == [(5, 30, 2, (3, 2, 32)), (15, 30, 2, (3, 2, 32))]
    assert all(math.isfinite(r["smape"]) for r in nb.values())
    assert (tmp_path / "out" / "dysts_runner_coarse_official_quick.md").is_file()
    # --hyperparameters official: compute_benchmarks.py's file for the granularity (the fixture's: Lorenz 5, Rossler 10)
    calls.clear()
    rows = dysts_runner.run(quick=True, out_dir=tmp_path / "out2", dataset="coarse", systems="Lorenz,Rossler",
                            data_dir=str(tmp_path / "d"), protocol="official", hyperparameters="official")
    assert {r["system"]: r.get("lags") for r in rows if r["forecaster"] == "nbeats_official" and
            r["system"] in ("Lorenz", "Rossler")} == {"Lorenz": 5, "Rossler": 10}
    # scored on all but the last point: a forecast exact there and wrong only at the end scores 0
    monkeypatch.setattr(dysts_runner, "_nbeats_one_step",
                        lambda history, lags, horizon, *a, **k: np.concatenate([truth[:, :-1], truth[:, -1:] + 9], 1))
    task, _ = dysts_runner._precomputed_loader("coarse", str(tmp_path / "d"), None)
    truth = task("Lorenz")[2]
    official = {"epochs": 1, "size": (1, 1, 4), "lags": {}}
    row = next(r for r in dysts_runner._system_rows("Lorenz", task, 1, "cpu", official)
               if r["forecaster"] == "nbeats_official")
    assert row["smape"] == 0.0
    with pytest.raises(UserError, match="--dataset"):
        dysts_runner.run(quick=True, out_dir=tmp_path, protocol="official")
    with pytest.raises(UserError, match="--protocol official"):
        dysts_runner.run(quick=True, out_dir=tmp_path, dataset="coarse", hyperparameters=str(hp))
    with pytest.raises(UserError, match="--protocol"):
        dysts_runner.run(quick=True, out_dir=tmp_path, protocol="paper")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not a readable JSON"):
        dysts_runner.official_input_lengths(tmp_path / "bad.json")
