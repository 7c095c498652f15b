"""Shared test set-up: one torch thread per worker, W&B offline, runs under a temporary directory."""
from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
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


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files from its directory without logging each request to stderr."""

    def log_message(self, *args):
        pass


@contextmanager
def serve_directory(root: Path,
                    handler: type[SimpleHTTPRequestHandler] = QuietHandler) -> Iterator[ThreadingHTTPServer]:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving `root` for the download tests (never the network);
    shut down and joined on exit. The base URL is f"http://127.0.0.1:{server.server_address[1]}"."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _no_run_id_left_behind():
    """`runs.assign_run_id` hands a run's id to DDP children through PAPERZOO_RUN_ID: a run made in this process by
    one test must not lend its id to a later test's new run."""
    yield
    os.environ.pop("PAPERZOO_RUN_ID", None)


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


def assert_refused_before_training(overrides: list[str], words: str, runs_root: Path) -> None:
    """`zoo train <overrides>` exits 2 with one error line holding `words`, and leaves no run directory."""
    code, out, err = zoo_in_process("train", *overrides, "trainer.max_steps=2", f"runs_root={runs_root}",
                                    "progress_bar=false", "logger=csv")
    assert code == 2 and words in err, err + out
    assert [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]], err
    assert not list(runs_root.iterdir()), list(runs_root.rglob("*"))


def zoo_subprocess(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
                   check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `zoo` console script, as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([ZOO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"zoo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc
