"""`zoo train launcher=slurm` on a real one-node SLURM cluster (scripts/slurm/start-local-cluster.sh).

Skipped only when `sbatch` is absent and CI is unset; in CI a missing cluster is a failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launch import config as zconfig
from launch import train
from tests.conftest import zoo_subprocess

pytestmark = [pytest.mark.slurm]

if shutil.which("sbatch") is None:
    if os.environ.get("CI"):
        pytest.fail("CI is set but sbatch is missing: .ci/run must start the local SLURM cluster",
                    pytrace=False)
    pytestmark.append(pytest.mark.skip(reason="no SLURM here (sbatch absent); start scripts/slurm/start-local-cluster.sh"))

BASE = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=64", "trainer.accelerator=cpu",
        "launcher=slurm", "launcher.time_min=10"]


def job_ids(stdout: str) -> list[str]:
    return re.findall(r"submitted job (\S+):", stdout)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def slurm_logs(folder: Path) -> str:
    return "\n".join(p.read_text(errors="ignore") for p in sorted(folder.glob("*_log.*")))


def test_two_task_ddp_job(runs_root):
    proc = zoo_subprocess("train", *BASE, "trainer.devices=2", "trainer.max_epochs=2", f"runs_root={runs_root}",
                          "run_id=ddp", "launcher.wait=true", "logger=csv", check=True, timeout=600)
    assert len(job_ids(proc.stdout)) == 1
    run = runs_root / "lightgcn" / "ddp"
    logs = slurm_logs(run / "slurm")
    assert "GLOBAL_RANK: 0" in logs and "GLOBAL_RANK: 1" in logs, logs[-3000:]
    assert list((run / "slurm").glob("*_0_log.out")) and list((run / "slurm").glob("*_1_log.out"))
    assert (run / "checkpoints" / "last.ckpt").exists()
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_step"] > 0 and final["test/recall@20"] > 0


def test_preempted_job_requeues_and_matches_uninterrupted_run(runs_root):
    """USR2 (what SLURM sends before preemption/timeout) -> submitit checkpoints and requeues the job; the
    new start resumes from last.ckpt with the same run id and W&B id and ends exactly like a run that was
    never interrupted (same global step, same metrics). Checkpoints every 7 steps (not an epoch boundary): the
    requeued job resumes inside an epoch, on the batch after the checkpoint's. The submitter's environment names a
    W&B service that no longer runs (as wandb leaves in a process that used it): the jobs must start their own."""
    overrides = [*BASE[:4], "trainer.max_epochs=40", "trainer.check_val_every_n_epoch=20", "seed=5",
                 "checkpoint.every_n_train_steps=7", "checkpoint.every_n_epochs=null"]
    proc = zoo_subprocess("train", *overrides, *BASE[4:], "trainer.devices=1", f"runs_root={runs_root}",
                          "run_id=preempt", "logger=wandb", check=True,
                          env={"WANDB_SERVICE": "3-4242-tcp-localhost-9"})
    (job,) = job_ids(proc.stdout)
    run = runs_root / "lightgcn" / "preempt"
    ckpt = run / "checkpoints" / "last.ckpt"
    wait_for(ckpt.exists, 240, "the first periodic checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: (run / "final_metrics.json").exists(), 420, "the requeued job to finish")
    logs = slurm_logs(run / "slurm")
    assert re.search(r"requeu", logs, re.IGNORECASE), logs[-3000:]
    assert logs.count("Restoring states from the checkpoint") >= 1, logs[-3000:]
    final = json.loads((run / "final_metrics.json").read_text())
    cfg = zconfig.compose([*overrides, f"runs_root={runs_root / 'reference'}", "logger=csv", "progress_bar=false"])
    reference = train.run(cfg)
    assert final["global_step"] == reference["global_step"]
    assert final["test/recall@20"] == pytest.approx(reference["test/recall@20"], abs=1e-6)
    assert final["test/ndcg@20"] == pytest.approx(reference["test/ndcg@20"], abs=1e-6)
    # every start logged into the same W&B run id (offline dirs are per start, the id is the run id)
    wandb_dirs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_dirs) >= 2 and all(d.name.endswith("-preempt") for d in wandb_dirs), wandb_dirs
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == final["global_step"]


def test_sweep_is_one_job_array(runs_root):
    proc = zoo_subprocess("train", "-m", *BASE, "trainer.devices=1", "trainer.max_epochs=1", "seed=1,2",
                          f"runs_root={runs_root}", "launcher.wait=true", "logger=none", check=True, timeout=600)
    ids = job_ids(proc.stdout)
    assert len(ids) == 2
    array_ids = {i.split("_")[0] for i in ids}
    assert len(array_ids) == 1 and {i.split("_")[1] for i in ids} == {"0", "1"}, ids
    finals = sorted((runs_root / "lightgcn").glob("*/final_metrics.json"))
    assert len(finals) == 2
    # the submitting shell ends with the sweep's table: one setting, both seeds finished
    assert "mean ± std over seed" in proc.stdout and any("2/2" in line for line in proc.stdout.splitlines())


def test_check_as_a_slurm_job_writes_the_results(tmp_path):
    """`zoo check <slug> --claim ... --launcher slurm launcher.wait=true`: the claims run inside one SLURM job, the
    results land where a local `zoo check` writes them, and the reports come back to the submitting shell."""
    out = tmp_path / "checks"
    proc = zoo_subprocess("check", "gtf_plrnn", "--claim", "alpha_star", "--claim", "bounded_gradients",
                          "--launcher", "slurm", "launcher.wait=true", "launcher.time_min=5", "--out", str(out),
                          check=True, timeout=300)
    assert len(job_ids(proc.stdout)) == 1, proc.stdout
    assert "gtf_plrnn/alpha_star: PASS" in proc.stdout and "gtf_plrnn/bounded_gradients: PASS" in proc.stdout
    payload = json.loads((out / "gtf_plrnn.json").read_text())
    assert [c["claim"] for c in payload["claims"]] == ["bounded_gradients", "alpha_star"]  # the config's order
    assert all(c["passed"] for c in payload["claims"])
    assert list((out / "slurm").glob("*_log.out"))
    bad = zoo_subprocess("check", "gtf_plrnn", "--launcher", "slurm", "trainer.devices=2", "--out", str(out))
    assert bad.returncode == 2 and "one device" in bad.stderr


def test_check_seeds_as_a_slurm_job_array(tmp_path):
    """`zoo check <slug> --claim ... --seeds 0,1 --launcher slurm launcher.wait=true`: one job array, a task per
    seed, each seed's results under <out>/seed<k>/, then the summary over the seeds in the submitting shell."""
    out = tmp_path / "checks"
    proc = zoo_subprocess("check", "gtf_plrnn", "--claim", "alpha_star", "--seeds", "0,1", "--launcher", "slurm",
                          "launcher.wait=true", "launcher.time_min=5", "--out", str(out), check=True, timeout=300)
    ids = job_ids(proc.stdout)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1, proc.stdout  # one array
    assert "[seed 0] gtf_plrnn/alpha_star: PASS" in proc.stdout and "[seed 1] gtf_plrnn/alpha_star: PASS" in proc.stdout
    assert "gtf_plrnn/alpha_star: 2/2 seeds pass" in proc.stdout
    for k in (0, 1):
        assert json.loads((out / f"seed{k}" / "gtf_plrnn.json").read_text())["overrides"] == [f"seed={k}"]
    assert "| alpha_star | 2/2 |" in (out / "gtf_plrnn.seeds.md").read_text()


def test_a_failed_job_is_one_line_and_exit_status_1(runs_root):
    """`launcher.wait=true` on a job that dies before training (its setup line exits 3): the submitting shell gets
    one line naming the job, the run and its log, and exit status 1, not a traceback."""
    proc = zoo_subprocess("train", *BASE, "trainer.devices=1", "trainer.max_epochs=1", f"runs_root={runs_root}",
                          "run_id=dies", "launcher.wait=true", "logger=none", "launcher.setup=[exit 3]",
                          timeout=300)
    (job,) = job_ids(proc.stdout)
    assert proc.returncode == 1, proc.stderr[-2000:]
    failed = [line for line in proc.stderr.splitlines() if "failed:" in line]
    assert len(failed) == 1 and f"job {job} (run dies) failed:" in failed[0] and "logs:" in failed[0], proc.stderr
    assert "Traceback" not in proc.stderr
