"""A DDP run destroys its process group before the interpreter finalizes. Lightning does so at exit for NCCL only;
a gloo group left to finalization can abort the process that finished its work (SIGABRT, "terminate called without
an active exception": seen once in CI, rank 1 of a two-process CPU evaluation). `zoo train trainer=ddp` on one CPU
process makes a real gloo group; an exit handler registered before the run (so it runs after the run's own exit
handlers) reports whether the group is still alive."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.test_train import TINY

PROBE = """
import atexit, sys
import torch.distributed as dist

def report():
    print("group alive at exit:", dist.is_available() and dist.is_initialized(), flush=True)

atexit.register(report)
from launch.cli import main
code = main(sys.argv[1:])
print("group made:", dist.is_initialized() or code, flush=True)
sys.exit(code)
"""


def test_a_ddp_run_destroys_its_gloo_group_before_python_exits(runs_root):
    args = ["train", *TINY, "trainer.max_epochs=1", "trainer=ddp", "trainer.devices=1", "trainer.accelerator=cpu",
            "logger=none", "progress_bar=false", f"runs_root={runs_root}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=240, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "group made: True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "group alive at exit: False" in proc.stdout, proc.stdout + proc.stderr[-2000:]
