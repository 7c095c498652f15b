"""The local SLURM cluster (scripts/slurm/start-local-cluster.sh) works as launcher=slurm needs it.

Skipped only when SLURM is not installed (no `sbatch`) outside CI; in CI (`CI` set) a missing or
unresponsive cluster is a failure, never a silent skip.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

START = "scripts/slurm/start-local-cluster.sh"
JOB_TIMEOUT = 180  # s: two xdist workers may queue behind each other on a 2-CPU node


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    if shutil.which("sbatch") is None:
        if _in_ci():
            pytest.fail(f"CI is set but SLURM is not installed (no sbatch); .ci/run installs it and "
                        f"runs {START}", pytrace=False)
        pytest.skip(f"SLURM not installed (no sbatch); to run: apt-get install slurmctld slurmd "
                    f"slurm-client slurmdbd munge mariadb-server && sudo {START}")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"sbatch exists but no slurmctld answers (scontrol ping: "
                    f"{(ping.stdout + ping.stderr).strip()!r}); start it with sudo {START}",
                    pytrace=False)


def _run(*cmd: str, timeout: float = JOB_TIMEOUT, cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout}{r.stderr}"
    return r.stdout


def _sacct_state(job_id: str) -> str:
    out = _run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State", timeout=30)
    return out.strip().splitlines()[0].split()[0] if out.strip() else ""


def _wait_sacct(job_id: str, want: str, timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    state = ""
    while time.monotonic() < end:
        state = _sacct_state(job_id)
        if state == want:
            return state
        time.sleep(0.5)
    return state


def test_srun_runs_two_tasks():
    out = _run("srun", "-N1", "-n2", "-t", "2", "bash", "-c", "echo $SLURM_PROCID $SLURM_NTASKS")
    assert sorted(out.split("\n")[:2]) == ["0 2", "1 2"], out


def test_sbatch_job_completes_and_sacct_reports_it(tmp_path):
    out = _run("sbatch", "--parsable", "--wait", "-t", "2", "-o", str(tmp_path / "%j.out"),
               "--wrap", "echo hello from $SLURM_JOB_ID", cwd=tmp_path)
    job_id = out.strip().split(";")[0]
    assert (tmp_path / f"{job_id}.out").read_text().strip() == f"hello from {job_id}"
    assert _wait_sacct(job_id, "COMPLETED") == "COMPLETED"
    # and a failing job is reported as such
    out = subprocess.run(["sbatch", "--parsable", "--wait", "-t", "2", "-o", "/dev/null",
                          "--wrap", "exit 3"], capture_output=True, text=True, timeout=JOB_TIMEOUT,
                         cwd=tmp_path)
    assert out.returncode != 0
    assert _wait_sacct(out.stdout.strip().split(";")[0], "FAILED") == "FAILED"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def submitit_log():
    handler = _Records()
    logger = logging.getLogger("submitit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _executor(folder: Path):
    submitit = pytest.importorskip("submitit")
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=3, cpus_per_task=1)
    return ex


def test_submitit_function_job_returns_result(tmp_path, submitit_log):
    ex = _executor(tmp_path)
    job = ex.submit(os.getenv, "SLURM_JOB_ID")
    assert job.result() == job.job_id
    end = time.monotonic() + 60
    while job.state != "COMPLETED" and time.monotonic() < end:
        time.sleep(1)
    assert job.state == "COMPLETED" and job.done()
    assert not [m for m in submitit_log.messages if "inaccurate" in m or "sacct error" in m], \
        submitit_log.messages


# A Checkpointable that blocks until it has been requeued once. Pickled by value so that the job
# does not need to import this test module.
try:
    import submitit as _submitit

    class _WaitForRequeue(_submitit.helpers.Checkpointable):
        def __init__(self, marker: str):
            self.marker = marker

        def __call__(self):
            restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
            with open(self.marker, "a") as f:
                f.write(f"{restarts}\n")
            if restarts >= 1:
                return f"restarted {restarts}"
            time.sleep(150)
            return "not requeued"
except ImportError:  # pragma: no cover
    _submitit = None


@pytest.mark.slow
def test_usr2_requeues_checkpointable_job(tmp_path, submitit_log):
    cloudpickle = pytest.importorskip("cloudpickle")
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        ex = _executor(tmp_path)
        marker = tmp_path / "starts.txt"
        job = ex.submit(_WaitForRequeue(str(marker)))
        end = time.monotonic() + JOB_TIMEOUT
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < end, f"job {job.job_id} did not start (state {job.state})"
            time.sleep(0.5)
        _run("scancel", "--signal=USR2", job.job_id, timeout=30)
        assert job.result() == "restarted 1"
        assert marker.read_text().split() == ["0", "1"]
    finally:
        cloudpickle.unregister_pickle_by_value(module)
