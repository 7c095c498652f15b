"""A run preempted during a validation resumes with that validation.

`RunCheckpoint` saves a step checkpoint due on a batch that a validation follows (the epoch's last batch, a
`val_check_interval` batch) at that batch, and again after the validation. A run stopped during the validation is left
with the first save; Lightning (2.6) restores it as if the validation had run and skipped it: no row in metrics.csv,
unseen by `checkpoint.test_on=best` and early stopping, and at an epoch's last batch no epoch-end hooks either.
`launch.fit_loop.ValidationFirstEpochLoop` (installed by `zoo train`) runs it on resume, before the next batch.
"""
from __future__ import annotations

import csv
import json
import shutil

import lightning as L
import pytest
import torch

from launch import config as zconfig
from launch import train
from tests.conftest import zoo_in_process
from tests.test_resumable_data import BATCHES, _EpochRecorder, _fit_until_preempted, _Preempted, fingerprint


class _Recorder(_EpochRecorder):
    """Also records each validation (epoch, global step, global random state) and the random state at each batch."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.seen[-1] = (*self.seen[-1], self.global_step, fingerprint(torch.get_rng_state()))
        return out

    def validation_step(self, batch, batch_idx):
        self.seen.append(("validation", self.current_epoch, self.global_step, fingerprint(torch.get_rng_state())))


class _PreemptInValidation(L.Callback):
    """Preempts the fit as the first validation at or after global step `step` starts its first batch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_start(self, trainer, *args) -> None:
        if trainer.global_step >= self.step and not trainer.sanity_checking:
            raise _Preempted


class _PreemptAtBatchStart(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise _Preempted


def _saved_before(checkpoint: dict) -> str | None:
    return next(v for k, v in checkpoint["callbacks"].items() if k.startswith("RunCheckpoint")).get("save_again_after")


def _fit_recorded(root, period: int, ckpt=None, before=(), after=(), **trainer_kw) -> list:
    """A recorded LightGCN fit (seed 7) with the global random states checkpointed (`ResumeRandomState`) and
    `RunCheckpoint` saving `root/last.ckpt` every `period` steps; `before` / `after`: callbacks placed before / after
    the saver (one placed before it acts first at a hook they share)."""
    from launch.callbacks import ResumeRandomState, RunCheckpoint

    L.seed_everything(7)
    saver = RunCheckpoint(dirpath=str(root), filename="last", save_top_k=1, monitor=None, every_n_train_steps=period,
                          save_on_train_epoch_end=True, enable_version_counter=False)
    model = train.instantiate(zconfig.compose(["experiment=lightgcn"]))[0]
    return _fit_until_preempted(_Recorder(), model, root, ckpt, [ResumeRandomState(), *before, saver, *after],
                                **trainer_kw)


# (trainer settings, RunCheckpoint's step period, where the first run is preempted)
CASES = {
    "validation_inside_the_epoch": ({"val_check_interval": 2, "max_steps": 3 * BATCHES}, 2, 2, "in_validation"),
    "last_batch": ({"check_val_every_n_epoch": 1, "max_steps": 3 * BATCHES}, BATCHES, BATCHES, "in_validation"),
    "last_batch_max_epochs": ({"check_val_every_n_epoch": 1, "max_epochs": 3, "max_steps": -1}, BATCHES, BATCHES,
                              "in_validation"),
    "budget_end": ({"check_val_every_n_epoch": 1, "max_steps": 2 * BATCHES}, BATCHES, 2 * BATCHES, "in_validation"),
    "after_the_second_save": ({"val_check_interval": 2, "max_steps": 3 * BATCHES}, 2, 2, "after_validation"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_preempted_during_a_validation_runs_it_on_resume(case, tmp_path):
    """4-batch epochs, an epoch-interval scheduler, the global random states checkpointed (`ResumeRandomState`). The
    run is preempted during the validation after a step save (inside the epoch, after the epoch's last batch under
    max_steps or max_epochs, after the budget's last batch), and resumed from that save: it runs the validation first
    (same step, epoch and global random state: the validation loader's base seed is drawn as in the straight run),
    then the epoch's end and the rest exactly as the straight run, and saves again after that validation. Preempted
    after the second save (the validation done), the resumed run does not validate again. Seen failing before
    `ValidationFirstEpochLoop`: the first 4 cases resumed without the validation (and, after an epoch's last batch,
    without that epoch's end and the next one's start hooks; after the budget's last batch, with nothing at all)."""
    trainer_kw, period, preempt_at, where = CASES[case]
    root = tmp_path / "run"

    def fit(ckpt=None, callbacks=()):
        return _fit_recorded(root, period, ckpt, after=callbacks, **trainer_kw)

    full = fit()
    assert sum(1 for r in full if r[0] == "validation") >= 2
    shutil.rmtree(root)
    preempt = _PreemptInValidation(preempt_at) if where == "in_validation" else _PreemptAtBatchStart(preempt_at)
    first = fit(callbacks=[preempt])
    last = root / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == preempt_at
    validated = [r for r in full if r[0] == "validation" and r[2] == preempt_at]
    assert len(validated) == 1
    assert (validated[0] in first) == (where == "after_validation")
    rest = fit(ckpt=str(last))
    assert first + rest == full
    # the first save records what follows its batch, the second (and the resumed run's saves after it) nothing
    assert _saved_before(saved) == {"validation_inside_the_epoch": "validation_end",
                                    "after_the_second_save": None}.get(case, "epoch_end")
    assert _saved_before(torch.load(last, map_location="cpu", weights_only=False)) is None


# A tiny LightGCN run on the generated interaction graph: 13 batches an epoch
TINY = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=256", "seed=6", "logger=csv",
        "progress_bar=false"]
EPOCH = 13


def _validation_rows(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return [{k: v for k, v in row.items() if (k.startswith("val/") or k in ("step", "epoch")) and v not in ("", None)}
            for row in rows if any(k.startswith("val/") and v not in ("", None) for k, v in row.items())]


def _same_rows(rows, reference) -> bool:
    if [sorted(r) for r in rows] != [sorted(r) for r in reference]:
        return False
    return all(abs(float(r[k]) - float(s[k])) <= 1e-6 for r, s in zip(rows, reference) for k in r)


@pytest.mark.parametrize(("settings", "preempt_at"), [
    # a step checkpoint at each epoch's end, the best validation's weights tested (and a sanity check, which
    # Lightning skips on resume)
    (["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1", f"checkpoint.every_n_train_steps={EPOCH}",
      "checkpoint.monitor=val/recall@20", "checkpoint.test_on=best", "trainer.num_sanity_val_steps=1"], 2 * EPOCH),
    # validations inside the epoch, early stopping at the 2nd (nothing counts as better)
    (["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "+trainer.val_check_interval=5",
      "checkpoint.every_n_train_steps=5",
      "+early_stopping={monitor: val/recall@20, mode: max, patience: 1, min_delta: 1.0}"], 5),
], ids=["test_on_best", "early_stopping"])
def test_zoo_run_preempted_during_a_validation_resumes_as_the_straight_run(settings, preempt_at, runs_root):
    """`zoo train` preempted during the validation that follows a step checkpoint, restarted with the same run id:
    metrics.csv has the straight run's validation rows (step, epoch, values), and the final step, best epoch and test
    metrics are the straight run's (1e-6). Seen failing before `launch.fit_loop.ValidationFirstEpochLoop`: the
    preempted validation's row was missing; with early stopping the resumed run trained on to the epoch's end (its
    first validation was the straight run's second)."""
    args = [*TINY, *settings, f"runs_root={runs_root}", "run_id=preempted"]
    cfg = zconfig.compose(args)
    with pytest.raises(_Preempted):
        train.run(cfg, extra_callbacks=[_PreemptInValidation(preempt_at)])
    run = runs_root / "lightgcn" / "preempted"
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == preempt_at
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    final = json.loads((run / "final_metrics.json").read_text())
    reference = train.run(zconfig.compose([*TINY, *settings, f"runs_root={runs_root / 'reference'}",
                                           "run_id=straight"]))
    straight = runs_root / "reference" / "lightgcn" / "straight"
    rows, reference_rows = _validation_rows(run), _validation_rows(straight)
    assert any(int(r["step"]) == preempt_at - 1 for r in reference_rows)  # the preempted validation (logger step)
    assert _same_rows(rows, reference_rows), (rows, reference_rows)
    assert final["global_step"] == reference["global_step"]
    assert final.get("best_epoch") == reference.get("best_epoch")
    tests = [k for k in reference if k.startswith("test/")]
    assert tests
    for key in tests:
        assert final[key] == pytest.approx(reference[key], abs=1e-6), key
    assert _saved_before(saved) in ("validation_end", "epoch_end")


class _PreemptAfter(L.Callback):
    """Preempts the fit in `on_validation_end` or `on_train_epoch_end` at or after global step `step`: after the
    validation logged its row, before `RunCheckpoint` saved again (it comes later in the callback list)."""

    def __init__(self, step: int, hook: str) -> None:
        self.step, self.hook = step, hook

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.hook == "on_validation_end" and trainer.global_step >= self.step and not trainer.sanity_checking:
            raise _Preempted

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.hook == "on_train_epoch_end" and trainer.global_step >= self.step:
            raise _Preempted


def test_epoch_end_lost_to_a_preemption_runs_on_resume(tmp_path):
    """Review: a step save at an epoch's last batch with no validation due (`check_val_every_n_epoch=2`), preempted
    in `on_train_epoch_end` before the epoch's save: the resumed run skipped that epoch's end and the next epoch's
    start hooks. They now run first, as in the straight run."""
    root = tmp_path / "run"

    def fit(ckpt=None, callbacks=()):  # the preemption before the saver: it stops the epoch's end before its save
        return _fit_recorded(root, BATCHES, ckpt, before=callbacks, check_val_every_n_epoch=2, max_steps=3 * BATCHES)

    full = fit()
    shutil.rmtree(root)
    first = fit(callbacks=[_PreemptAfter(BATCHES, "on_train_epoch_end")])
    assert torch.load(root / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == BATCHES
    rest = fit(ckpt=str(root / "last.ckpt"))
    assert ("end", 0) in full and ("end", 0) not in first
    assert first + rest == full


@pytest.mark.parametrize("hook", ["on_validation_end", "on_train_epoch_end"])
def test_a_validation_logged_before_the_preemption_is_one_row(hook, runs_root):
    """Review: preempted after the validation logged its row but before the second save, the resumed run validates
    again: metrics.csv kept the first row too (two rows at that step). The resumed run now drops it, as it drops the
    rows after its checkpoint's step; its validation rows are the straight run's."""
    settings = (["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "+trainer.val_check_interval=5",
                 "checkpoint.every_n_train_steps=5"] if hook == "on_validation_end" else
                ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", f"checkpoint.every_n_train_steps={EPOCH}"])
    at = 5 if hook == "on_validation_end" else EPOCH
    args = [*TINY, *settings, f"runs_root={runs_root}", "run_id=p"]
    with pytest.raises(_Preempted):
        train.run(zconfig.compose(args), extra_callbacks=[_PreemptAfter(at, hook)])
    run = runs_root / "lightgcn" / "p"
    assert [int(r["step"]) for r in _validation_rows(run)] == [at - 1]  # logged before the preemption
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    train.run(zconfig.compose([*TINY, *settings, f"runs_root={runs_root / 'reference'}", "run_id=s"]))
    rows, reference = _validation_rows(run), _validation_rows(runs_root / "reference" / "lightgcn" / "s")
    assert _same_rows(rows, reference), (rows, reference)


def test_ddp_resume_runs_the_validation_due_after_the_checkpoint_batch(runs_root):
    """Under DDP (2 gloo ranks): a run whose last.ckpt is a batch's end that a validation follows runs that validation
    on resume, on both ranks, before the next batch. The checkpoint comes from a run with validation off
    (`trainer.limit_val_batches=0`, the step budget ending on a `val_check_interval` batch), resumed with it on and a
    longer budget: metrics.csv has the straight run's validation rows and the test MSE is the straight run's (1e-6;
    iTransformer draws dropout from each rank's global random state). Seen failing before
    `launch.fit_loop.ValidationFirstEpochLoop`: the resumed run skipped the validation at the checkpoint's step."""
    from tests.conftest import zoo_subprocess

    overrides = ["experiment=itransformer", "model.d_model=16", "model.d_ff=16", "data.eval_batch_size=512", "seed=2",
                 "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=null", "+trainer.val_check_interval=3",
                 "trainer.check_val_every_n_epoch=1",
                 "checkpoint.every_n_train_steps=3", "checkpoint.every_n_epochs=null", f"runs_root={runs_root}",
                 "logger=csv", "progress_bar=false"]
    zoo_subprocess("train", *overrides, "run_id=resumed", "trainer.max_steps=3", "trainer.limit_val_batches=0",
                   check=True)
    resumed = zoo_subprocess("train", *overrides, "run_id=resumed", "trainer.max_steps=6",
                             "trainer.limit_val_batches=null", check=True)
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    zoo_subprocess("train", *overrides, "run_id=straight", "trainer.max_steps=6", check=True)
    runs = {name: runs_root / "itransformer" / name for name in ("resumed", "straight")}
    rows, reference_rows = _validation_rows(runs["resumed"]), _validation_rows(runs["straight"])
    assert [int(r["step"]) for r in reference_rows] == [2, 5]
    assert _same_rows(rows, reference_rows), (rows, reference_rows)
    final, reference = (json.loads((run / "final_metrics.json").read_text()) for run in runs.values())
    assert final["global_step"] == reference["global_step"] == 6
    assert final["test/mse"] == pytest.approx(reference["test/mse"], abs=1e-6)
