"""SIGTERM under DDP (launch.termination): every rank stops at the same batch, last.ckpt holds that step, and the
resumed run ends as the uninterrupted one."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import zoo_subprocess

# 2 gloo ranks, 7 training batches an epoch each; gradient accumulation over 2 batches (a stop point must end an
# optimizer step: steps end at batches 2, 4, 6 and 7); a validation after each epoch; 201 users in batches of 100
# give rank 0 two evaluation batches and rank 1 one (`UserBatches` deals users [r::W])
DDP = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=256", "data.synthetic.num_users=201",
       "data.eval_batch_size=100", "seed=6", "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=null",
       "trainer.max_steps=20", "+trainer.accumulate_grad_batches=2", "trainer.check_val_every_n_epoch=1",
       "checkpoint.every_n_train_steps=3", "checkpoint.every_n_epochs=null", "logger=csv", "progress_bar=false"]
SCRIPT = Path(__file__).with_name("sigterm_one_rank.py")


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


@pytest.mark.slow
def test_sigterm_to_one_ddp_rank_stops_both_at_one_step_and_the_resumed_run_matches(runs_root):
    """Rank 1 alone gets SIGTERM as epoch 1's last batch starts (7 steps done; tests/sigterm_one_rank.py). Before
    launch.termination this hung until killed (seen here): Lightning's handler broadcast from inside the signal
    handler while rank 0 went on into the gradient all-reduce (the gloo timeout is 30 min). Now both ranks stop after
    that batch (it ends step 8): exit status 143 in seconds, no traceback, last.ckpt holds step 8. The epoch's
    validation after that batch runs in full first: cut short after one batch (Lightning's reaction to the flag),
    rank 0 left it with one of its two batches done while rank 1, with one, waited at its end ("Connection closed by
    peer" traceback on rank 1, seen without `on_validation_start`). The same command resumes the run to the
    uninterrupted run's final metrics and per-epoch training means."""
    args = [*DDP, f"runs_root={runs_root}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGTERM_RANK": "1", "SIGTERM_STEP": "7"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args, "run_id=stopped"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the ranks did not stop within 120 s (they hang)") from None
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "[rank 1] SIGTERM: stopping after the current step" in err, err[-3000:]
    ckpt = runs_root / "lightgcn" / "stopped" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 8, state["global_step"]
    assert "stopped by SIGTERM after step 8; last.ckpt holds step 8" in err, err[-3000:]

    resumed = zoo_subprocess("train", *args, "run_id=stopped", check=True)
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    zoo_subprocess("train", *args, "run_id=straight", check=True)
    final, reference = (json.loads((runs_root / "lightgcn" / name / "final_metrics.json").read_text())
                        for name in ("stopped", "straight"))
    assert final["global_step"] == reference["global_step"] == 20
    assert final == pytest.approx(reference, abs=1e-6)
    # every epoch's training mean, the stopped epoch's too (each rank's running state: launch.epoch_metrics)
    assert _epoch_means(runs_root / "lightgcn" / "stopped") == \
        pytest.approx(_epoch_means(runs_root / "lightgcn" / "straight"), abs=1e-6)
    assert len(_epoch_means(runs_root / "lightgcn" / "straight")) >= 2


def _epoch_means(run) -> list[float]:
    with open(run / "metrics.csv", newline="") as file:
        return [float(row["train/loss_epoch"]) for row in csv.DictReader(file) if row.get("train/loss_epoch")]
