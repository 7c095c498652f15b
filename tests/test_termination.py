"""SIGTERM under DDP (launch.termination): every rank stops at the same batch, last.ckpt holds that step, and the
resumed run ends as the uninterrupted one."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ZOO, zoo_subprocess

# 2 gloo ranks, gradient accumulation over 2 batches (a stop point must end an optimizer step), validation every 40
# batches (the stop's checkpoint may come before one), a budget the signal comes well inside of
DDP = ["experiment=itransformer", "model.d_model=16", "model.d_ff=16", "data.eval_batch_size=512", "seed=6",
       "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=null", "trainer.max_steps=150",
       "+trainer.accumulate_grad_batches=2", "+trainer.val_check_interval=40", "trainer.check_val_every_n_epoch=null",
       "checkpoint.every_n_train_steps=4", "checkpoint.every_n_epochs=null", "logger=csv", "progress_bar=false"]


def test_the_sigterm_handler_makes_no_collective_call(monkeypatch):
    """The root of the hang: Lightning's handler broadcasts (a collective) from inside the signal handler, which runs
    between two bytecodes, also while the other rank waits in a different collective. The handler here records the
    request and forwards the signal to the launcher's children, nothing else; the decision waits for a batch end."""
    import torch.distributed as dist
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    from launch.termination import AgreedSigtermConnector

    def collective(*args, **kwargs):
        raise AssertionError("a collective call inside the signal handler")

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "broadcast", collective)
    forwarded = []
    launcher = SimpleNamespace(kill=forwarded.append)
    trainer = SimpleNamespace(world_size=2, global_rank=0, strategy=SimpleNamespace(launcher=launcher, root_device="cpu"),
                              local_rank=0)
    with pytest.raises(AssertionError, match="collective"):  # Lightning 2.6's own handler does
        _SignalConnector(trainer)._sigterm_notifier_fn(15, None)
    forwarded.clear()
    connector = AgreedSigtermConnector(trainer)
    connector._sigterm_notifier_fn(15, None)
    connector._sigterm_notifier_fn(15, None)
    assert connector.requested and not connector.received_sigterm and forwarded == [15]


def _wait_for(predicate, seconds: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{what}: not seen (exit {proc.poll()}):\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_stops_every_ddp_rank_at_one_step_and_the_resumed_run_matches(runs_root):
    """`kill -TERM` on a 2-rank local DDP run (Lightning's launcher forwards it to rank 1) hung for ever before
    launch.termination: Lightning's handler broadcast inside the signal handler while the other rank waited in the
    gradient all-reduce or a barrier (seen here; the gloo timeout is 30 min). Now the run exits with status 143 in
    seconds, each rank with one line and no traceback; last.ckpt holds the step it stopped at, a step that ends an
    accumulation window, past the first periodic save; the same command resumes it to the uninterrupted run's test
    MSE."""
    args = [*DDP, f"runs_root={runs_root}"]
    proc = subprocess.Popen([ZOO, "train", *args, "run_id=stopped"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = runs_root / "itransformer" / "stopped" / "checkpoints" / "last.ckpt"
    _wait_for(ckpt.exists, 120, "the first periodic checkpoint", proc)
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the run did not stop within 60 s of SIGTERM (the ranks hang)") from None
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "zoo train (rank 1): terminated (SIGTERM)" in err and "zoo train: terminated (SIGTERM)" in err, err[-3000:]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    step = state["global_step"]
    assert f"stopped by SIGTERM after step {step}; last.ckpt holds step {step}" in err, err[-3000:]
    assert 4 <= step < 150, step
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] % 2 == 0  # window end

    resumed = zoo_subprocess("train", *args, "run_id=stopped", check=True)
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    zoo_subprocess("train", *args, "run_id=straight", check=True)
    final, reference = (json.loads((runs_root / "itransformer" / name / "final_metrics.json").read_text())
                        for name in ("stopped", "straight"))
    assert final["global_step"] == reference["global_step"] == 150
    assert final == pytest.approx(reference, abs=1e-6)
    # every epoch's training mean, the stopped epoch's too (its running state per rank: launch.epoch_metrics)
    assert _epoch_means(runs_root / "itransformer" / "stopped") == \
        pytest.approx(_epoch_means(runs_root / "itransformer" / "straight"), abs=1e-6)


def _epoch_means(run) -> list[float]:
    with open(run / "metrics.csv", newline="") as file:
        return [float(row["train/loss_epoch"]) for row in csv.DictReader(file) if row.get("train/loss_epoch")]
