"""Shared test set-up: one torch thread per worker, W&B offline, runs under a temporary directory."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import torch  # noqa: E402

torch.set_num_threads(1)

ZOO = str(Path(sys.executable).with_name("zoo"))


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    return root


def zoo_in_process(*args: str) -> tuple[int, str, str]:
    """Run the `zoo` CLI in this process; return (exit code, stdout, stderr)."""
    from launch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def zoo_subprocess(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
                   check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `zoo` console script, as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([ZOO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"zoo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc
