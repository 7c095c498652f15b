"""The SLURM path's checks that need no cluster (found by a read-only audit of the SLURM path on the local cluster, stop
33): launcher values, a config that a local run refuses, a resume's launcher, a run whose job is still running, the
job states when sacct fails, and the reason a job failed."""
from __future__ import annotations

import os
import stat

import pytest
from omegaconf import OmegaConf

from launch import config as zconfig
from launch import runs
from tests.conftest import zoo_in_process, zoo_subprocess
from tests.test_cli import one_line_error

SLURM = ["experiment=lightgcn", "data=synthetic_graph", "launcher=slurm", "trainer=cpu"]


@pytest.mark.parametrize("override, message", [
    ("launcher.time_min=abc", "launcher.time_min must be an integer"),  # a traceback from int() (exit 1)
    ("launcher.time_min=-5", "launcher.time_min must be >= 1"),  # submitted: an ~8000-year limit
    ("launcher.array_parallelism=0", "launcher.array_parallelism must be >= 1"),  # --array=0-1%0, accepted
    ("launcher.mem_gb=abc", "launcher.mem_gb must be a number"),  # submitit's AssertionError
    ("launcher.wait=maybe", "launcher.wait is an on/off option"),  # read as true
    ("launcher.time_min=1", "must be below the time limit"),  # USR2 120 s before a 60 s limit: a requeue loop
    ("model.num_layers=-1", "model.num_layers must be >= 0"),  # submitted; failed in the job, run dir left behind
])
def test_a_bad_launcher_value_or_model_option_is_refused_before_submitting(override, message, tmp_path):
    code, _, err = zoo_in_process("train", *SLURM, override, f"runs_root={tmp_path / 'runs'}")
    assert message in one_line_error(code, err)
    assert not (tmp_path / "runs").exists()


def test_cfg_job_refuses_bad_resources_before_printing_the_config(tmp_path):
    """`--cfg job` with resources SLURM cannot take: the one error line only (the whole resolved config was printed
    first; README audit, stop 38); valid resources print the config and then submitit's resource names."""
    code, out, err = zoo_in_process("train", *SLURM, "launcher.time_min=0", "--cfg", "job")
    assert "launcher.time_min must be >= 1" in one_line_error(code, err) and out == ""
    code, out, err = zoo_in_process("train", *SLURM, "--cfg", "job")
    last = out.splitlines()[-1]
    assert code == 0 and "experiment_name: lightgcn" in out and "'tasks_per_node': 1" in last, out[-500:]


def _saved_slurm_run(root, run_id: str, *overrides: str):
    given = os.environ.get(runs.RUN_ID_ENV)
    cfg = runs.assign_run_id(zconfig.compose([*SLURM, f"runs_root={root}", f"run_id={run_id}", *overrides]))
    if given is None:  # assign_run_id hands the id to DDP children through the environment: not to later tests
        os.environ.pop(runs.RUN_ID_ENV, None)
    runs.create(cfg)
    return runs.run_of(cfg)


def test_a_resume_keeps_the_runs_launcher_and_what_a_group_choice_does_not_set(tmp_path):
    """A resume reset every launcher key to the command's (partition, time, setup gone; `zoo train run_id=X` of a
    SLURM run ran it locally), and a group choice (`trainer=cpu`) every key of its group (the run's max_epochs)."""
    root = tmp_path / "runs"
    _saved_slurm_run(root, "kept", "launcher.time_min=7", "launcher.partition=short", "trainer.max_epochs=80",
                     "launcher.setup=[module load x]")
    base = ["experiment=lightgcn", f"runs_root={root}", "run_id=kept"]

    def shown(*overrides: str):
        code, out, err = zoo_in_process("train", *base, *overrides, "--cfg", "job")
        assert code == 0, err
        return OmegaConf.create(out.split("# sbatch resources")[0])

    cfg = shown("trainer.max_epochs=90")
    assert (cfg.launcher.name, cfg.launcher.time_min, cfg.launcher.partition) == ("slurm", 7, "short")
    assert list(cfg.launcher.setup) == ["module load x"] and cfg.trainer.max_epochs == 90
    cfg = shown("launcher=slurm", "launcher.mem_gb=4", "trainer=cpu")
    assert (cfg.launcher.time_min, cfg.launcher.partition, cfg.launcher.mem_gb) == (7, "short", 4)
    assert cfg.trainer.max_epochs == 80 and cfg.trainer.accelerator == "cpu"
    cfg = shown("launcher=local")
    assert cfg.launcher.name == "local" and "partition" not in cfg.launcher


def _fake_slurm_commands(folder, sacct: str, squeue: str) -> dict:
    folder.mkdir()
    for name, script in (("sacct", sacct), ("squeue", squeue)):
        path = folder / name
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_a_run_whose_job_is_queued_or_running_is_not_started_again(tmp_path):
    """Two jobs wrote one run at once (a resume while the first job was pending its requeue): they raced on
    last.ckpt and metrics.csv. Refused now with one line; a finished job does not stop the resume. And when sacct
    fails (no accounting), squeue gives the state of a job still queued or running: `zoo runs` said "stopped"."""
    root = tmp_path / "runs"
    run = _saved_slurm_run(root, "busy", "trainer.max_epochs=1")
    run.slurm.mkdir(parents=True)
    (run.slurm / "jobs.txt").write_text("41\n42\n")
    running = _fake_slurm_commands(tmp_path / "bin1", "exit 1", 'echo "42|RUNNING"')
    proc = zoo_subprocess("train", "experiment=lightgcn", f"runs_root={root}", "run_id=busy", "launcher=local",
                          env=running)
    assert "is running as SLURM job 42" in one_line_error(proc.returncode, proc.stderr)
    proc = zoo_subprocess("runs", "--root", str(root), env=running)
    assert proc.returncode == 0 and "running (job 42)" in proc.stdout, proc.stdout + proc.stderr
    unknown = _fake_slurm_commands(tmp_path / "bin2", "exit 1", "exit 1")
    proc = zoo_subprocess("runs", "--root", str(root), env=unknown)
    assert "state unknown (job 42)" in proc.stdout, proc.stdout + proc.stderr
    done = _fake_slurm_commands(tmp_path / "bin3", 'echo "42|COMPLETED"', "exit 0")
    proc = zoo_subprocess("train", "experiment=lightgcn", f"runs_root={root}", "run_id=busy", "launcher=local",
                          "logger=none", "progress_bar=false", env=done)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_failed_job_reports_its_exception():
    """`launcher.wait=true` printed submitit's first line ("Job (task=0) failed during processing with trace:"), not
    why the job failed."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from launch.cli import _job_failure

    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
             "last):\n  File \"x.py\", line 1\nlaunch.errors.UserError: cannot build the experiment: model.num_layers "
             "must be >= 0, got -1\n")
    assert _job_failure(FailedJobError(trace), "/nonexistent") == ("UserError: cannot build the experiment: "
                                                                   "model.num_layers must be >= 0, got -1")
    err = UncompletedJobError("Job 715 (task: 0) with path /x/715_0_result.pkl\nhas not produced any output")
    assert _job_failure(err, "/nonexistent").startswith("Job 715")
