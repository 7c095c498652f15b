"""Every registered `zoo bench` module without a smoke test of its own runs in --quick mode (tiny sizes, no
timing assertions): a benchmark that no longer builds its models fails here, not first in a user's hands."""
from __future__ import annotations

import importlib
import math

import pytest

# modules smoke-tested elsewhere: recsys_speed (tests/test_bench.py end to end; its paired cases below),
# itransformer_speed and gtf_speed
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
    import inspect

    module = importlib.import_module(name)
    takes_device = "device" in inspect.signature(module.run).parameters
    rows = module.run(quick=True, **({"device": "cpu"} if takes_device else {}))  # the --device path, on the CPU
    assert rows
    ratios = []
    for row in rows:
        assert row.get("device", "cpu") == "cpu", row
        assert not [k for k in row if "gpu" in k], row  # CUDA peak memory only on a GPU
        assert not row.get("error") and row.get("what") != "FAILED", row
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers and all(math.isfinite(v) for v in numbers.values()), row
        ratios += [v for k, v in numbers.items() if "ratio" in k]
    assert ratios and all(r > 0 for r in ratios)  # every benchmark reports ratios against its baseline


def test_mesh_mover_rows_say_how_far_each_solve_got():
    """The finite-difference MA relaxation stops at its step cap, before its tolerance (benchmark audit: its ratio
    only measured the cap): each row says the steps taken, whether the solve converged and how close its mesh is to
    the exact one."""
    from benchmarks import mesh_mover_speed

    all_rows = mesh_mover_speed.run(quick=True)
    rows = {r["baseline"]: r for r in all_rows if r["mover"] == "dmm" and r["size"] == "cpu"}
    [gat] = [r for r in all_rows if r["baseline"] == "torch_geometric_gatv2_train_step"]  # UM2N's CPU GATv2 path
    assert gat["first_loss_rel_diff"] <= 1e-5 and gat["ours_s"] > 0 and gat["ratio"] > 0
    fd, fem, exact = rows["ma_fd"], rows["ma_fem"], rows["equidistribution_1d"]
    assert fd["baseline_steps"] <= fd["fd_steps_cap"] and fd["baseline_converged"] == (
        fd["baseline_steps"] < fd["fd_steps_cap"])
    assert fem["baseline_converged"] and fem["baseline_steps"] > 0
    assert exact["baseline_rmse_cells"] == 0.0
    assert 0 < fd["baseline_rmse_cells"] < 0.5 and 0 < fem["baseline_rmse_cells"] < 0.5


def test_a_benchmark_leaves_the_thread_count_as_it_found_it(tmp_path, monkeypatch):
    """pig, mgno, mesh_mover, mm_pde set one thread and kept it, so under `--all` a later benchmark (precision_speed,
    threads=null) ran on whatever an earlier one left."""
    import sys
    import types

    import torch

    import benchmarks

    fake = types.ModuleType("benchmarks.fake_threads")
    fake.run = lambda quick: (torch.set_num_threads(1), [{"what": "x", "ratio": 1.0}])[1]
    monkeypatch.setitem(sys.modules, "benchmarks.fake_threads", fake)
    monkeypatch.setitem(benchmarks.REGISTRY, "fake", "benchmarks.fake_threads")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        benchmarks.run_benchmarks("fake", quick=True, out_dir=tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_all_with_a_device_runs_the_others_on_the_cpu(tmp_path, monkeypatch, capsys):
    """`zoo bench --all --device cuda` was refused ("gtf_speed does not take --device"), so no one command ran every
    benchmark on a GPU node; one benchmark named with --device it does not take is still refused."""
    import sys
    import types

    import benchmarks
    from launch.errors import UserError

    seen = {}
    with_device, without = types.ModuleType("benchmarks.fake_gpu"), types.ModuleType("benchmarks.fake_cpu")
    with_device.run = lambda quick, device="cpu": (seen.update(gpu=device), [{"what": "x", "ratio": 1.0}])[1]
    without.run = lambda quick: (seen.update(cpu=True), [{"what": "y", "ratio": 1.0}])[1]
    for module in (with_device, without):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(benchmarks, "REGISTRY", {"gpu": with_device.__name__, "cpu": without.__name__})
    benchmarks.run_benchmarks(None, quick=True, out_dir=tmp_path, options={"device": "cpu"})
    assert seen == {"gpu": "cpu", "cpu": True}
    assert "fake_cpu run on the CPU" in capsys.readouterr().out
    with pytest.raises(UserError, match="does not take --device"):
        benchmarks.run_benchmarks("cpu", quick=True, out_dir=tmp_path, options={"device": "cpu"})


# every benchmark that can time on a GPU (`zoo bench --all --device cuda` passes --device only to these)
DEVICE_MODULES = ["benchmarks.pig_speed", "benchmarks.mgno_speed", "benchmarks.mesh_mover_speed",
                  "benchmarks.mm_pde_speed", "benchmarks.gtf_speed", "benchmarks.pinn_residuals",
                  "benchmarks.precision_speed", "benchmarks.itransformer_speed", "benchmarks.dysts_runner",
                  "benchmarks.recsys_speed"]


def test_which_benchmarks_take_a_device():
    """Every registered benchmark takes --device (recsys_speed last: its fresh process per case gets it in its
    argument list; its Gowalla rows, against quoted CPU figures, then have no ratio)."""
    import inspect

    from benchmarks import REGISTRY, _modules

    takes = {m for entry in REGISTRY.values() for m in _modules(entry)
             if "device" in inspect.signature(importlib.import_module(m).run).parameters}
    assert takes == set(DEVICE_MODULES)


@pytest.mark.parametrize("name", [m for m in DEVICE_MODULES if m not in ("benchmarks.dysts_runner",
                                                                        "benchmarks.itransformer_speed")])
def test_a_bad_or_missing_device_is_a_one_line_error_before_any_work(name, monkeypatch):
    """--device tpu, or --device cuda where torch sees no GPU: a UserError (exit 2 from `zoo bench`), raised before
    any model is built (dysts_runner and itransformer_speed: tests/test_dynamics_bench.py)."""
    import torch

    from launch.errors import UserError

    module = importlib.import_module(name)
    with pytest.raises(UserError, match="--device must be 'cpu' or 'cuda'"):
        module.run(quick=True, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        module.run(quick=True, device="cuda")


def test_zoo_bench_device_cuda_without_a_gpu_exits_2_with_one_line(tmp_path, monkeypatch):
    import torch

    from tests.conftest import zoo_in_process

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = zoo_in_process("bench", "pig", "--quick", "--device", "cuda", "--out", str(tmp_path / "b"))
    assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "b").glob("*.json"))


def test_cuda_peak_mib_calls_once_and_measures_only_on_cuda():
    from benchmarks.timing import cuda_peak_mib

    calls = []
    assert cuda_peak_mib(lambda: calls.append(1), "cpu") is None and calls == [1]


@pytest.mark.filterwarnings("ignore:.*gowalla has .* users", "ignore:You are trying to `self.log")
def test_recsys_paired_rows_quick(tmp_path):
    """recsys_speed's paired cases in this process on the quick graphs (seconds; the whole `zoo bench lightgcn
    --quick`, its fresh processes included, runs in tests/test_bench.py): ours vs torch-geometric's propagation and
    UltraGCN vs LightGCN training steps, UltraGCN's sampled vs dense scoring, interleaved, on the CPU; their rows carry
    the paired fields, consistently, and the two scorings train on the same first loss."""
    import torch

    from benchmarks import recsys_speed
    from benchmarks.timing import RATIO_METHOD

    threads = torch.get_num_threads()
    try:
        graph = recsys_speed.write_gowalla_like(tmp_path / "gowalla", quick=True)
        results = {name: {"case": name, **recsys_speed.CASE_FUNCS[name](
            quick=True, data_dir=str(tmp_path / "gowalla"), out_dir=None, target=None, device="cpu")}
            for name in ("prop_paired_ml100k", "prop_paired_gowalla", "step_paired_ml100k", "score_paired_ml100k")}
    finally:
        torch.set_num_threads(threads)
    rows = recsys_speed.build_rows(results, graph, quick=True, device="cpu")
    paired = [r for r in rows if "ratio_median" in r]
    assert len(paired) == len(rows) == 4 and {r["case"] for r in rows} == {"prop_ml100k", "prop_gowalla", "ml100k"}
    assert results["score_paired_ml100k"]["first_loss_rel_diff"] <= 1e-5
    for row in paired:
        assert row["ratio"] == row["ratio_median"] and row["ratio_q1"] <= row["ratio_median"] <= row["ratio_q3"], row
        assert row["rounds"] >= 1 and row["ratio_method"] == RATIO_METHOD and row["device"] == "cpu", row
        assert row["ours"] > 0 and row["baseline"] > 0 and row["ratio"] > 0 and row["unit"] == "s", row
        assert not [k for k in row if "gpu" in k], row  # CUDA peak memory only on a GPU
    for row in (r for r in paired if r["case"].startswith("prop_")):  # the two propagations agree
        assert row["out_diff"] <= 1e-4 and row["grad_diff"] <= 1e-4, row


def test_recsys_cases_get_the_device_and_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch):
    """Each fresh process of recsys_speed gets `--device` in its argument list (its parser takes it); `zoo bench
    lightgcn --device cuda` where torch sees no GPU: one line, exit 2, no case started."""
    import subprocess

    import torch

    from benchmarks import recsys_speed
    from tests.conftest import zoo_in_process

    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "not run (test)")

    monkeypatch.setattr(recsys_speed.subprocess, "run", fake_run)
    rows = recsys_speed.run(quick=True, device="cpu")
    assert len(commands) == len(recsys_speed.QUICK_GROUPS)
    assert all(cmd[cmd.index("--device") + 1] == "cpu" for cmd in commands), commands
    assert {r["what"] for r in rows} == {"FAILED"} and all(r["device"] == "cpu" for r in rows)
    assert {c for group in recsys_speed.QUICK_GROUPS for c in group} == set(recsys_speed.CASES)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    commands.clear()
    code, _, err = zoo_in_process("bench", "lightgcn", "--quick", "--device", "cuda", "--out", str(tmp_path / "b"))
    assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1, err
    assert not commands and not list((tmp_path / "b").glob("*.json"))
