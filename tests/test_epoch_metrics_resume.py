"""A resumed run logs the uninterrupted run's epoch-aggregated training metrics (`train/*_epoch`).

Lightning keeps the running state of `self.log(..., on_epoch=True)` training values outside the checkpoint;
`launch.epoch_metrics.ResumeEpochMetrics` (installed by `zoo train`) carries it across a resume.
"""
from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch

from launch import config as zconfig
from launch import train
from tests.conftest import zoo_in_process
from tests.test_validation_resume import _PreemptAtBatchStart, _Preempted, _PreemptInValidation

# A tiny LightGCN run on the generated interaction graph: 13 batches an epoch, two epochs, a validation after each
TINY = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=256", "seed=6", "logger=csv",
        "progress_bar=false", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1"]
EPOCH = 13


def _epoch_rows(run) -> list[dict]:
    """metrics.csv's epoch-aggregated training rows: epoch, step, the train/*_epoch values (Lightning's epoch
    reduction) and LightGCN's train/bpr and train/reg (sums the model keeps itself, `log_epoch_means`)."""
    with open(run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return [{k: v for k, v in row.items() if (k.startswith("train/") and not k.endswith("_step")
                                              or k in ("epoch", "step")) and v not in ("", None)}
            for row in rows if row.get("train/loss_epoch") not in ("", None)]


def _preempted_and_resumed(runs_root, settings: list[str], preempt: L.Callback, saved_at: int):
    """The run preempted by `preempt` (its last.ckpt at global step `saved_at`), restarted with the same run id, and
    the straight run: (resumed run dir, its final metrics, straight run dir, its final metrics)."""
    args = [*TINY, *settings, f"runs_root={runs_root}", "run_id=preempted"]
    with pytest.raises(_Preempted):
        train.run(zconfig.compose(args), extra_callbacks=[preempt])
    run = runs_root / "lightgcn" / "preempted"
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] \
        == saved_at
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    reference = train.run(zconfig.compose([*TINY, *settings, f"runs_root={runs_root / 'reference'}",
                                           "run_id=straight"]))
    final = json.loads((run / "final_metrics.json").read_text())
    return run, final, runs_root / "reference" / "lightgcn" / "straight", reference


def _assert_same_rows(rows: list[dict], reference: list[dict]) -> None:
    assert [sorted(r) for r in rows] == [sorted(r) for r in reference], (rows, reference)
    for row, expected in zip(rows, reference):
        for key in row:
            assert float(row[key]) == pytest.approx(float(expected[key]), abs=1e-6), (key, rows, reference)


def test_resume_from_a_mid_epoch_checkpoint_logs_the_whole_epochs_mean(runs_root):
    """Preempted in epoch 1 after its step-15 save (`checkpoint.every_n_train_steps=5`, 13 batches an epoch) and
    restarted: epoch 1's train/loss_epoch in metrics.csv and final_metrics.json (train/loss_epoch, train/loss) is the
    straight run's mean over the whole epoch. Seen failing without `ResumeEpochMetrics`: the mean of the 11 batches
    after the resume only."""
    run, final, straight, reference = _preempted_and_resumed(
        runs_root, ["checkpoint.every_n_train_steps=5"], _PreemptAtBatchStart(EPOCH + 4), saved_at=15)
    rows, reference_rows = _epoch_rows(run), _epoch_rows(straight)
    assert [int(r["epoch"]) for r in reference_rows] == [0, 1]
    _assert_same_rows(rows, reference_rows)
    for key in ("train/loss_epoch", "train/loss", "train/loss_step", "train/bpr", "train/reg"):
        assert final[key] == pytest.approx(reference[key], abs=1e-6), key


def test_resume_before_the_last_batchs_validation_logs_the_epochs_mean(runs_root):
    """Preempted during the validation after epoch 1's last batch, whose step save (`checkpoint.every_n_train_steps=13`)
    came before that validation, and restarted: the resumed run validates, ends the epoch and logs epoch 1's
    train/loss_epoch row, the straight run's; final_metrics.json's train/loss_epoch and train/loss are the straight
    run's. Seen failing without `ResumeEpochMetrics`: no train row for epoch 1 and no train/* key in
    final_metrics.json."""
    run, final, straight, reference = _preempted_and_resumed(
        runs_root, [f"checkpoint.every_n_train_steps={EPOCH}"], _PreemptInValidation(2 * EPOCH), saved_at=2 * EPOCH)
    rows, reference_rows = _epoch_rows(run), _epoch_rows(straight)
    assert [int(r["epoch"]) for r in reference_rows] == [0, 1]
    _assert_same_rows(rows, reference_rows)
    for key in ("train/loss_epoch", "train/loss", "train/bpr", "train/reg"):
        assert key in final, sorted(final)
        assert final[key] == pytest.approx(reference[key], abs=1e-6), key


def test_a_checkpoint_without_the_state_resumes_as_before(runs_root):
    """A last.ckpt written before `ResumeEpochMetrics` existed (no state of it) resumes without an error, and the
    resumed epoch is logged as before (from the batches after the resume)."""
    args = [*TINY, "checkpoint.every_n_train_steps=5", f"runs_root={runs_root}", "run_id=old"]
    with pytest.raises(_Preempted):
        train.run(zconfig.compose(args), extra_callbacks=[_PreemptAtBatchStart(EPOCH + 4)])
    path = runs_root / "lightgcn" / "old" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # the state is plain values
    assert checkpoint["callbacks"].pop("ResumeEpochMetrics")["epoch"] == 1
    torch.save(checkpoint, path)
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    assert [int(r["epoch"]) for r in _epoch_rows(runs_root / "lightgcn" / "old")] == [0, 1]


def test_the_progress_bar_of_a_mid_epoch_resume_counts_the_epochs_batches(runs_root):
    """After a resume in the middle of epoch 1 (saved at step 15: 2 of its 13 batches done) the bar reads
    "Epoch 1" and 2/13 from its first batch on. Lightning does not call on_train_epoch_start for a resumed epoch, so the
    bar was "Training 0/?" (no total, counting from 0) until epoch 2 (README audit, stop 38)."""
    args = [*TINY, "checkpoint.every_n_train_steps=5", f"runs_root={runs_root}", "run_id=bar"]
    with pytest.raises(_Preempted):
        train.run(zconfig.compose(args), extra_callbacks=[_PreemptAtBatchStart(EPOCH + 4)])
    seen = []

    class FirstBar(L.Callback):
        def on_train_batch_start(self, trainer, *_) -> None:  # the bar as the batch before it left it
            bar = trainer.progress_bar_callback.train_progress_bar
            seen.append((bar.desc, bar.n, bar.total))

    train.run(zconfig.compose([*args, "progress_bar=true"]), extra_callbacks=[FirstBar()])
    assert seen[1] == ("Epoch 1: ", 2, EPOCH), seen[:3]  # 2 of 13 done (the bar then moves every 50 batches)
