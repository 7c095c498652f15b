"""End-to-end local runs: run directories, W&B offline, checkpoints, resume, DDP, precision, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from launch import config as zconfig
from launch import train
from tests.conftest import ZOO, zoo_in_process, zoo_subprocess

# A tiny LightGCN run on the generated interaction graph: seconds on one CPU thread.
TINY = ["experiment=lightgcn", "data=synthetic_graph", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1",
        "data.batch_size=256"]


def run_dir_of(runs_root: Path, experiment: str = "lightgcn") -> Path:
    dirs = [p for p in (runs_root / experiment).iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.wandb
def test_local_run_writes_complete_run_dir(runs_root):
    # started from a process whose W&B service is gone (wandb leaves its address in WANDB_SERVICE): zoo starts its own
    proc = zoo_subprocess("train", *TINY, f"runs_root={runs_root}", "logger=wandb", check=True,
                          env={"WANDB_SERVICE": "3-4242-tcp-localhost-9"})
    run = run_dir_of(runs_root)
    assert (run / "config.yaml").exists() and (run / "meta.json").exists()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["versions"]["torch"] and meta["git_commit"]
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "metrics.csv").read_text().count("\n") > 2
    assert list((run / "figures").glob("*.png")), "figures() must be saved as PNG"
    # the W&B run id is the run id (offline here), and the sync command is printed
    wandb_runs = list((run / "wandb").glob(f"offline-run-*-{run.name}"))
    assert wandb_runs, list((run / "wandb").iterdir())
    assert f"wandb sync --id {run.name} " in proc.stderr
    assert "test/recall@20" in proc.stdout  # metrics table
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_step"] > 0 and 0.0 <= final["test/recall@20"] <= 1.0
    # zoo status and zoo eval work from the run directory alone
    code, out, _ = zoo_in_process("status", str(run))
    assert code == 0 and "global_step" in out
    code, out, _ = zoo_in_process("eval", f"ckpt={run / 'checkpoints' / 'last.ckpt'}")
    assert code == 0
    assert f"{final['test/recall@20']:.4f}" in out


def _uninterrupted(runs_root: Path, overrides: list[str]) -> dict:
    cfg = zconfig.compose([*overrides, f"runs_root={runs_root / 'reference'}", "logger=csv", "progress_bar=false"])
    return train.run(cfg)


def test_resume_after_killed_run_matches_uninterrupted(runs_root):
    """Kill -9 a run after its first checkpoint; rerunning with the same run id resumes from last.ckpt and
    ends at the same global step with the same metrics as an uninterrupted run with the same seed."""
    overrides = ["experiment=lightgcn", "data=synthetic_graph", "trainer.max_epochs=12", "data.batch_size=64",
                 "trainer.check_val_every_n_epoch=6", "seed=3"]
    args = [*overrides, f"runs_root={runs_root}", "run_id=killme", "logger=csv"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([ZOO, "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    ckpt = runs_root / "lightgcn" / "killme" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never wrote a checkpoint"
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    resumed = zoo_subprocess("train", *args, check=True)
    assert "resuming run killme" in resumed.stderr
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    final = json.loads((runs_root / "lightgcn" / "killme" / "final_metrics.json").read_text())
    reference = _uninterrupted(runs_root, overrides)
    assert 0 < killed_at < reference["global_step"], "the kill must land mid-run for this test to mean anything"
    assert final["global_step"] == reference["global_step"]
    assert final["test/recall@20"] == pytest.approx(reference["test/recall@20"], abs=1e-6)
    assert final["test/ndcg@20"] == pytest.approx(reference["test/ndcg@20"], abs=1e-6)


@pytest.mark.parametrize("experiment", ["lightgcn", "itransformer", "semilinear_operator"])
def test_mid_epoch_resume_matches_uninterrupted(runs_root, experiment):
    """A run stopped inside an epoch (trainer.max_steps=3 of a longer epoch, `checkpoint.every_n_train_steps=2`: its
    last.ckpt is the final step's) and resumed with a larger budget trains as the uninterrupted run did: same test
    metrics to 1e-6. Seen failing before: last.ckpt held step 2 (the period only); the
    resumed epoch started its data over (steps 4-6 saw batches 1-3 again; all three); itransformer's dropout drew
    from a re-seeded global random state (without launch.callbacks.ResumeRandomState); semilinear_operator's
    frame masks (train_alpha 0.5, global random state) were shifted by the draw a new loader iterator makes (without
    the fork_rng in datamodules.resumable)."""
    base = {"lightgcn": [*TINY[:2], "data.batch_size=64"],
            "itransformer": ["experiment=itransformer", "model.d_model=16", "model.d_ff=16",
                             "data.eval_batch_size=512"],
            "semilinear_operator": ["experiment=semilinear_operator", "model.train_alpha=0.5"]}
    overrides = [*base[experiment], "seed=4", "trainer.max_epochs=null", "trainer.limit_val_batches=0",
                 "checkpoint.every_n_train_steps=2", "checkpoint.every_n_epochs=null"]
    args = [*overrides, f"runs_root={runs_root}", "run_id=midepoch", "logger=csv", "progress_bar=false"]
    code, _, err = zoo_in_process("train", *args, "trainer.max_steps=3")
    assert code == 0, err
    ckpt = runs_root / experiment / "midepoch" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    progress = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    # saved at the fit's last step (launch.callbacks.RunCheckpoint), not only at the period (step 2)
    assert state["global_step"] == 3 and progress == 3, "the checkpoint must hold the final step, inside epoch 0"
    code, _, err = zoo_in_process("train", *args, "trainer.max_steps=6")
    assert code == 0 and "changed: trainer.max_steps: 3 -> 6" in err, err
    final = json.loads((runs_root / experiment / "midepoch" / "final_metrics.json").read_text())
    reference = _uninterrupted(runs_root, [*overrides, "trainer.max_steps=6"])
    assert final["global_step"] == reference["global_step"] == 6
    metrics = [k for k in reference if k.startswith("test/")]
    assert metrics
    for key in metrics:
        assert final[key] == pytest.approx(reference[key], abs=1e-6), key


def test_step_budget_resumed_from_an_epoch_end_matches_uninterrupted(runs_root):
    """An iteration-based run (trainer.max_steps) whose budget ends an epoch, with the default every-epoch
    checkpoint and no validation in that epoch, resumed to a larger budget: same test metrics as the uninterrupted
    run. Its last.ckpt is taken at the epoch's end (launch.callbacks.RunCheckpoint). Seen failing with Lightning's
    own fit loop (without `launch.fit_loop.use_epoch_end_resume_loop`): the resumed run trained one more batch in the
    finished epoch (related: Lightning-AI/pytorch-lightning#19617): recall@20 0.3043 vs 0.3085."""
    overrides = [*TINY[:2], "data.batch_size=256", "seed=5", "trainer.max_epochs=null",
                 "trainer.check_val_every_n_epoch=2"]
    args = [*overrides, f"runs_root={runs_root}", "run_id=stepbudget", "logger=csv", "progress_bar=false"]
    cfg = zconfig.compose([*overrides, f"runs_root={runs_root}"])
    datamodule = train.instantiate(cfg)[0]
    datamodule.setup("fit")
    epoch = len(datamodule.train_dataloader())
    assert epoch >= 2
    code, _, err = zoo_in_process("train", *args, f"trainer.max_steps={epoch}")
    assert code == 0, err
    state = torch.load(runs_root / "lightgcn" / "stepbudget" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    epochs = state["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert state["global_step"] == epoch and epochs["processed"] == 1 and epochs["completed"] == 0, \
        "last.ckpt must be epoch 0's end"
    code, _, err = zoo_in_process("train", *args, f"trainer.max_steps={2 * epoch + 1}")
    assert code == 0, err
    final = json.loads((runs_root / "lightgcn" / "stepbudget" / "final_metrics.json").read_text())
    reference = _uninterrupted(runs_root, [*overrides, f"trainer.max_steps={2 * epoch + 1}"])
    assert final["global_step"] == reference["global_step"] == 2 * epoch + 1
    for key in ("test/recall@20", "test/ndcg@20"):
        assert final[key] == pytest.approx(reference[key], abs=1e-6), key


def test_run_stopped_early_and_restarted_trains_no_more(runs_root):
    """Early stopping ends a run at its 2nd validation (min_delta 1: no later epoch counts as better), inside its
    epoch budget. Restarted with the same run id (a job preempted during its test is requeued so), it resumes from
    last.ckpt, trains nothing more and tests the same weights. Seen failing without the fit loop's `should_stop`
    state (`launch.fit_loop.EpochEndResumeFitLoop.on_save_checkpoint`): the restart trained a 3rd epoch and
    stopped again (global step 3 epochs, not 2).

    A resume that changes early stopping trains on as a straight run with the new setting: patience 3 stops at the
    4th validation, as the straight run with patience 3 (seen failing with Lightning's EarlyStopping, which restores
    the checkpoint's patience 1: stopped after 3 epochs; and with the stop restored whatever the setting: it trained
    nothing more); no early stopping trains to max_epochs."""
    overrides = [*TINY[:2], "data.batch_size=256", "seed=5", "trainer.max_epochs=6",
                 "trainer.check_val_every_n_epoch=1",
                 "+early_stopping={monitor: val/recall@20, mode: max, patience: 1, min_delta: 1.0}"]
    args = [*overrides, f"runs_root={runs_root}", "run_id=stopped", "logger=csv", "progress_bar=false"]
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    first = json.loads((runs_root / "lightgcn" / "stopped" / "final_metrics.json").read_text())
    cfg = zconfig.compose([*overrides, f"runs_root={runs_root}"])
    datamodule = train.instantiate(cfg)[0]
    datamodule.setup("fit")
    assert first["global_step"] == 2 * len(datamodule.train_dataloader())  # stopped at epoch 1's end
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    again = json.loads((runs_root / "lightgcn" / "stopped" / "final_metrics.json").read_text())
    assert again["global_step"] == first["global_step"]
    for key in ("test/recall@20", "test/ndcg@20"):
        assert again[key] == pytest.approx(first[key], abs=1e-6), key

    epoch = first["global_step"] // 2
    # the resume gives only the key it changes (refused before: early_stopping is null in the root config)
    code, _, err = zoo_in_process("train", *(a for a in args if not a.startswith("+early_stopping")),
                                  "early_stopping.patience=3")
    assert code == 0 and "early_stopping.patience: 1 -> 3" in err, err
    patient = json.loads((runs_root / "lightgcn" / "stopped" / "final_metrics.json").read_text())
    reference = _uninterrupted(runs_root, [*overrides, "early_stopping.patience=3"])
    assert patient["global_step"] == reference["global_step"] == 4 * epoch
    for key in ("test/recall@20", "test/ndcg@20"):
        assert patient[key] == pytest.approx(reference[key], abs=1e-6), key
    code, _, err = zoo_in_process("train", *(a for a in args if not a.startswith("+early_stopping")),
                                  "early_stopping=null")
    assert code == 0, err
    final = json.loads((runs_root / "lightgcn" / "stopped" / "final_metrics.json").read_text())
    assert final["global_step"] == 6 * epoch


def test_mid_epoch_resume_under_ddp_matches_uninterrupted(runs_root):
    """The same under DDP (2 gloo ranks): Lightning rebuilds the shuffled training loader with a DistributedSampler
    (keeping it resumable), and the run resumed at step 3 of the epoch ends with the uninterrupted run's test MSE."""
    overrides = ["experiment=itransformer", "model.d_model=16", "model.d_ff=16", "data.eval_batch_size=512", "seed=2",
                 "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=null", "trainer.limit_val_batches=0",
                 "checkpoint.every_n_train_steps=3", "checkpoint.every_n_epochs=null", f"runs_root={runs_root}",
                 "logger=csv", "progress_bar=false"]
    zoo_subprocess("train", *overrides, "run_id=resumed", "trainer.max_steps=3", check=True)
    resumed = zoo_subprocess("train", *overrides, "run_id=resumed", "trainer.max_steps=6", check=True)
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    zoo_subprocess("train", *overrides, "run_id=straight", "trainer.max_steps=6", check=True)
    final, reference = (json.loads((runs_root / "itransformer" / name / "final_metrics.json").read_text())
                        for name in ("resumed", "straight"))
    assert final["global_step"] == reference["global_step"] == 6
    assert final["test/mse"] == pytest.approx(reference["test/mse"], abs=1e-6)


def test_resume_trains_on_with_a_new_budget_and_refuses_to_change_what_it_trains(runs_root, monkeypatch):
    """`zoo train ... run_id=X trainer.max_epochs=<more>` continues run X to the new budget (the change is printed
    and written to its config.yaml); an override that would change what the run trains (here the seed) is a one-line
    error (exit 2) that leaves the run as it was. Before, every override on resume was silently dropped. stage=test
    tests the run's last.ckpt (before, a new model's untrained weights); a bad stage name is a one-line error."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    args = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=256", "trainer.check_val_every_n_epoch=1",
            f"runs_root={runs_root}", "run_id=extend", "logger=csv", "progress_bar=false"]
    run = runs_root / "lightgcn" / "extend"
    code, _, err = zoo_in_process("train", *args, "trainer.max_epochs=1")
    assert code == 0 and "no run extend under" in err and "starting a new run with this id" in err, err
    first = json.loads((run / "final_metrics.json").read_text())["global_step"]
    code, _, err = zoo_in_process("train", *args, "trainer.max_epochs=2")
    assert code == 0 and "changed: trainer.max_epochs: 1 -> 2" in err, err
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_step"] == 2 * first
    tested = final["test/recall@20"]
    assert OmegaConf.load(run / "config.yaml").trainer.max_epochs == 2
    saved = (run / "config.yaml").read_text()
    code, out, err = zoo_in_process("train", *args, "trainer.max_epochs=3", "seed=7")
    assert code == 2 and "seed (saved 0, given 7) cannot change on resume" in err, err + out
    assert len(err.strip().splitlines()) == 1 and (run / "config.yaml").read_text() == saved
    # a config group that sets keys all over the config cannot be applied on resume (it was silently dropped)
    code, out, err = zoo_in_process("train", *args, "debug=fast")
    assert code == 2 and "debug (a config group" in err, err + out
    # stage=test on the resumed run tests its last.ckpt (not fresh weights): the metrics of the run's own test, in
    # test_metrics.json; final_metrics.json and the saved stage stay (a later resume still trains)
    final = (run / "final_metrics.json").read_text()
    code, out, err = zoo_in_process("train", *args, "stage=test")
    assert code == 0, err
    assert json.loads((run / "test_metrics.json").read_text())["test/recall@20"] == pytest.approx(tested, abs=1e-6)
    assert (run / "final_metrics.json").read_text() == final
    assert OmegaConf.load(run / "config.yaml").stage == "fit_test"
    # zoo eval of the run: a key the saved config lacks, or a config group, is a one-line error
    ckpt = run / "checkpoints" / "last.ckpt"
    for override, words in (("seeed=3", "unknown key 'seeed'"), ("trainer=gpu", "trainer is a section")):
        code, out, err = zoo_in_process("eval", f"ckpt={ckpt}", override)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err + out
    # ... and a new run with stage=test has nothing to test: one line, no run directory left
    fresh = [a for a in args if not a.startswith("run_id=")]
    code, out, err = zoo_in_process("train", *fresh, "run_id=untrained", "stage=test")
    assert code == 2 and "has none" in err and not (runs_root / "lightgcn" / "untrained").exists(), err + out
    code, out, err = zoo_in_process("train", *fresh, "stage=tset")
    assert code == 2 and "stage must be one of fit, test, fit_test" in err, err + out


def test_a_finished_run_restarted_keeps_its_record_and_a_moved_run_resumes_where_it_is(tmp_path, monkeypatch):
    """Found by a read-only audit of the keys a resume may change (stop 32); each part seen failing before its fix:
    - a finished run restarted as it stands (a requeue during its test) trains nothing; its final_metrics.json kept
      only the test metrics (train/* and val/* were dropped) and its epoch went from 2 to 1;
    - restarted under another precision it tests under that precision, and config.yaml now says so (it kept the old
      one: the config was saved only after a training batch);
    - either restart appended a second test row at the same step to metrics.csv (now it replaces the first; the
      audit saw it after a kill during the test);
    - `zoo status` and a `stage=test`'s test_metrics.json counted epochs from 0 (2 where final_metrics.json says 3);
    - a resume that lowers trainer.max_epochs below the run's epoch: a one-line error, the run as it was (was a
      Lightning traceback);
    - a runs tree moved away, resumed from its new place with the default (relative) runs_root: it resumed at the
      saved absolute path, i.e. started a new run from step 0 at the old place."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    args = [*TINY[:2], "data.batch_size=256", "trainer.check_val_every_n_epoch=1", "run_id=kept", "logger=csv",
            "progress_bar=false", "trainer.max_epochs=2"]
    run = tmp_path / "a" / "runs" / "lightgcn" / "kept"
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    first = json.loads((run / "final_metrics.json").read_text())
    assert {"train/loss_epoch", "val/recall@20", "test/recall@20"} <= set(first) and first["epoch"] == 2
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    again = json.loads((run / "final_metrics.json").read_text())
    assert again.keys() == first.keys() and all(again[k] == pytest.approx(first[k], abs=1e-6) for k in first)
    assert _test_row_steps(run) == [first["global_step"]]  # the test again replaces its row (it was appended)
    code, _, err = zoo_in_process("train", *args, "trainer.precision=64-true")
    assert code == 0 and "trainer.precision" in err, err
    assert _test_row_steps(run) == [first["global_step"]]
    assert OmegaConf.load(run / "config.yaml").trainer.precision == "64-true"
    saved = (run / "config.yaml").read_text()
    code, out, err = zoo_in_process("train", *args, "trainer.max_epochs=1")
    assert code == 2 and "max_epochs" in err and len(err.strip().splitlines()) == 2, err + out  # "resuming ..." + error
    assert (run / "config.yaml").read_text() == saved

    import shutil

    shutil.move(tmp_path / "a" / "runs", tmp_path / "b" / "runs")
    monkeypatch.chdir(tmp_path / "b")
    code, _, err = zoo_in_process("train", *args[:-1], "trainer.max_epochs=3")
    assert code == 0 and "resuming run kept" in err, err
    moved = json.loads((tmp_path / "b" / "runs" / "lightgcn" / "kept" / "final_metrics.json").read_text())
    assert moved["global_step"] == 3 * first["global_step"] // 2 and not (tmp_path / "a" / "runs").exists()
    assert _test_row_steps(tmp_path / "b" / "runs" / "lightgcn" / "kept") == [first["global_step"],
                                                                              moved["global_step"]]
    # one epoch count everywhere (README audit, stop 33: status and test_metrics.json gave the checkpoint's 0-based
    # epoch index, 2 where final_metrics.json says 3 epochs)
    code, out, err = zoo_in_process("status", "kept")
    assert code == 0 and "last.ckpt: 3 epochs of max_epochs 3" in out, out + err
    code, _, err = zoo_in_process("train", *args[:-1], "trainer.max_epochs=3", "stage=test")
    assert code == 0, err
    tested = json.loads((tmp_path / "b" / "runs" / "lightgcn" / "kept" / "test_metrics.json").read_text())
    assert tested["epoch"] == moved["epoch"] == 3 and tested["global_step"] == moved["global_step"]


def test_a_run_stopped_during_its_test_keeps_its_fit_metrics(runs_root):
    """A job preempted during its final test (after the fit, before final_metrics.json) is requeued, trains nothing
    and tests: its final metrics had no train/* metrics and epoch 0 (the SLURM audit, stop 33); now the fit's metrics
    (fit_metrics.json, written when the fit ends) fill them in, as in the straight run."""
    args = [*TINY[:2], "data.batch_size=256", "trainer.check_val_every_n_epoch=1", f"runs_root={runs_root}",
            "run_id=pt", "logger=csv", "progress_bar=false", "trainer.max_epochs=2"]
    run = runs_root / "lightgcn" / "pt"
    assert zoo_in_process("train", *args)[0] == 0
    first = json.loads((run / "final_metrics.json").read_text())
    (run / "final_metrics.json").unlink()  # stopped during the test
    code, _, err = zoo_in_process("train", *args)
    assert code == 0, err
    again = json.loads((run / "final_metrics.json").read_text())
    assert again.keys() == first.keys() and again["epoch"] == first["epoch"] == 2, (sorted(again), sorted(first))
    assert all(again[k] == pytest.approx(first[k], abs=1e-6) for k in first)


def _test_row_steps(run) -> list[int]:
    import csv

    with open(run / "metrics.csv", newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("test/recall@20")]


def test_a_limit_below_the_interrupted_epochs_batches_is_refused(runs_root):
    """A run stopped 5 batches into an epoch, resumed with trainer.limit_train_batches=3: a one-line error (exit 2).
    Lightning ends an epoch at exactly the limit, so it trained that epoch to its full length instead (the audit:
    35 steps where 30 were due); a limit at or above the batches done resumes."""
    args = [*TINY[:2], "data.batch_size=256", f"runs_root={runs_root}", "run_id=limit", "logger=csv",
            "progress_bar=false", "trainer.max_epochs=3"]
    code, _, err = zoo_in_process("train", *args, "trainer.max_steps=5")
    assert code == 0, err
    code, out, err = zoo_in_process("train", *args, "trainer.max_steps=-1", "trainer.limit_train_batches=3")
    assert code == 2 and "limit_train_batches=3" in err and len(err.strip().splitlines()) == 2, err + out
    code, _, err = zoo_in_process("train", *args, "trainer.max_steps=-1", "trainer.limit_train_batches=6")
    assert code == 0, err
    assert json.loads((runs_root / "lightgcn" / "limit" / "final_metrics.json").read_text())["global_step"] == 6 + 6 + 6


@pytest.mark.wandb
def test_a_csv_run_resumes_with_wandb(runs_root):
    """`logger=wandb` given to a resume of a `logger=csv` run logs to W&B (offline here) from then on. It crashed
    with a traceback (`Missing key entity`): the resume dropped the W&B settings whose value is null."""
    args = [*TINY[:2], "data.batch_size=256", f"runs_root={runs_root}", "run_id=tow", "progress_bar=false"]
    zoo_subprocess("train", *args, "logger=csv", "trainer.max_epochs=1", check=True)
    proc = zoo_subprocess("train", *args, "logger=wandb", "trainer.max_epochs=2", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = runs_root / "lightgcn" / "tow"
    assert list((run / "wandb").glob("offline-run-*-tow")) and OmegaConf.load(run / "config.yaml").logger.wandb.mode


def test_bad_data_found_in_setup_leaves_no_run_directory(runs_root, tmp_path, monkeypatch):
    """A data error that only the datamodule's setup can see (here the real ETTh1 file is missing) is one line, exit
    2, and the run directory made for the run is removed (nothing half-made; it had no checkpoint), W&B included."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    code, out, err = zoo_in_process("train", "experiment=itransformer/etth1", f"data.data_dir={tmp_path / 'nope'}",
                                    "trainer.max_steps=2", f"runs_root={runs_root}", "progress_bar=false")
    assert code == 2 and "ETTh1.csv does not exist" in err, err + out
    assert [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]]
    assert not list(runs_root.iterdir()), list(runs_root.rglob("*"))


def test_a_diverged_run_keeps_its_directory_and_a_sweep_cannot_share_one_run_id(runs_root, monkeypatch):
    """A NaN loss is a one-line error (exit 2) that keeps the run directory (its config and metrics are the evidence;
    only errors before training starts remove a new run's directory); `-m` with one run_id for every run is refused
    (each run restored the first's checkpoint)."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    code, out, err = zoo_in_process("train", *TINY, f"runs_root={runs_root}", "run_id=diverged", "logger=csv",
                                    "progress_bar=false", "model.optimizer.lr=1e30", "model.l2_weight=1e30")
    assert code == 2 and "loss became" in err, err + out
    assert (runs_root / "lightgcn" / "diverged" / "config.yaml").exists()
    code, out, err = zoo_in_process("train", "-m", *TINY, f"runs_root={runs_root}", "seed=0,1", "run_id=mysweep",
                                    "logger=csv", "progress_bar=false")
    assert code == 2 and "one run directory" in err, err + out
    assert not (runs_root / "lightgcn" / "mysweep").exists()
    # a local sweep of DDP runs: each child process would restart the sweep (refused; SLURM runs one job per run)
    code, out, err = zoo_in_process("train", "-m", *TINY, f"runs_root={runs_root}", "seed=0,1", "trainer=ddp",
                                    "trainer.devices=2", "logger=csv", "progress_bar=false")
    assert code == 2 and "cannot use several processes per run" in err, err + out


def test_step_based_checkpoints_alone(runs_root, monkeypatch):
    """checkpoint.every_n_train_steps alone (long paper-scale epochs, SLURM requeue) works: the epoch period is
    dropped for it (Lightning refused both together: a MisconfigurationException traceback before)."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    code, out, err = zoo_in_process("train", *TINY, f"runs_root={runs_root}", "run_id=steps", "logger=csv",
                                    "progress_bar=false", "checkpoint.every_n_train_steps=1", "trainer.max_steps=2")
    assert code == 0, err
    ckpt = torch.load(runs_root / "lightgcn" / "steps" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert ckpt["global_step"] == 2


def test_ddp_two_cpu_processes_match_single_process_eval(runs_root):
    """DDP with 2 CPU ranks (gloo): both ranks train; evaluation splits users across ranks without double
    counting, so the DDP test metrics equal a single-process evaluation of the same checkpoint."""
    proc = zoo_subprocess("train", *TINY, f"runs_root={runs_root}", "trainer=ddp", "trainer.devices=2",
                          "trainer.accelerator=cpu", "logger=csv", check=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 0" in log and "GLOBAL_RANK: 1" in log
    # rank 0 says once that the configured batch is per process
    assert log.count("DDP: data.batch_size=256 is per process; 2 processes step on a global batch of 512") == 1
    assert "data.batch_size=128 keeps the global batch at 256" in log
    run = run_dir_of(runs_root)
    final = json.loads((run / "final_metrics.json").read_text())
    code, out, err = zoo_in_process("eval", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "trainer.devices=1",
                                    "trainer.strategy=auto")
    assert code == 0, err
    assert f"{final['test/recall@20']:.4f}" in out and f"{final['test/ndcg@20']:.4f}" in out


def test_effective_batch_notice():
    cfg = OmegaConf.create({"data": {"batch_size": 1000}})
    assert train.effective_batch_notice(cfg, 1) is None
    assert "global batch of 3000" in train.effective_batch_notice(cfg, 3)
    assert "not divisible by 3" in train.effective_batch_notice(cfg, 3)
    assert train.effective_batch_notice(OmegaConf.create({"data": {"name": "x"}}), 4) is None
    assert train.effective_batch_notice(OmegaConf.create({"seed": 0}), 4) is None


def test_bf16_mixed_cpu_run():
    cfg = zconfig.compose([*TINY, "trainer.precision=bf16-mixed", "logger=none", "progress_bar=false"])
    metrics = train.run(cfg, make_run_dir=False)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert metrics["test/recall@20"] > 0


def test_nan_loss_stops_with_clear_message(runs_root):
    code, _, err = zoo_in_process("train", *TINY, f"runs_root={runs_root}", "logger=none", "progress_bar=false",
                                  "model.optimizer.lr=1e30", "model.l2_weight=1.0")
    assert code == 2, err
    assert "loss became" in err and "last finite value" in err


def test_corrupt_and_incompatible_checkpoints_are_clear_errors(runs_root, tmp_path):
    zoo_in_process("train", *TINY, "trainer.max_epochs=1", f"runs_root={runs_root}", "run_id=r1", "logger=none",
                   "progress_bar=false")
    ckpt = runs_root / "lightgcn" / "r1" / "checkpoints" / "last.ckpt"
    good = ckpt.read_bytes()
    code, _, err = zoo_in_process("eval", f"ckpt={ckpt}", "model.embedding_dim=8")
    assert code == 2 and "does not fit this model" in err, err
    ckpt.write_bytes(good[: len(good) // 2])
    code, _, err = zoo_in_process("eval", f"ckpt={ckpt}")
    assert code == 2 and "corrupt" in err, err
    code, _, err = zoo_in_process("train", *TINY, f"runs_root={runs_root}", "run_id=r1", "logger=none")
    assert code == 2 and "corrupt" in err and "move it away" in err, err
    code, _, err = zoo_in_process("eval", f"ckpt={tmp_path / 'missing.ckpt'}")
    assert code == 2 and "no checkpoint" in err


def _add_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def test_torchs_own_jit_deprecation_is_not_shown_to_users():
    """torch's forward-mode decompositions call torch.jit.script on the first jvp (MEDIDA's derivatives, UM2N): a
    FutureWarning on every such run that no user can act on (README audit, stop 38). Other FutureWarnings still show."""
    import warnings

    train._quiet_known_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        train._quiet_known_warnings()
        torch.jit.script(_add_one)  # a scripted function, as torch's decompositions are
        warnings.warn("another deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another deprecation"], [str(w.message) for w in caught]
