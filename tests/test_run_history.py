"""What a run keeps across restarts and what a bad restart leaves behind: metrics.csv keeps the curve logged before a
resume (Lightning's CSVLogger deleted it), config.yaml takes a resume's changes only once it trains, run ids name one
directory, on/off options take true/false only, early stopping on a val metric survives a step budget shorter than
an epoch, and a OneCycle schedule cannot be stretched on resume."""
from __future__ import annotations

import csv
import json
import re

import pytest

from tests.conftest import zoo_in_process

# causal PINN on the oscillator: 2 steps an epoch, seconds on one thread
PINN = ["experiment=causal_pinn", "data.steps_per_epoch=2", "trainer.max_epochs=10", "trainer.log_every_n_steps=1",
        "logger=csv", "progress_bar=false", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _train(runs_root, *overrides: str) -> tuple[int, str, str]:
    return zoo_in_process("train", *PINN, f"runs_root={runs_root}", *overrides)


@pytest.fixture(autouse=True)
def _no_inherited_run_id(monkeypatch):
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)


def test_metrics_csv_keeps_the_curve_across_resume_and_test(runs_root):
    """Train 2 steps, train on to 4, test the run again: metrics.csv still holds steps 0 and 1 (before, each restart
    started a new file), the resumed steps once each, and every test row; the resumed fit drops what an interrupted
    run logged after its checkpoint (here: nothing) and keeps the earlier test."""
    run = runs_root / "causal_pinn" / "hist"
    assert _train(runs_root, "run_id=hist", "trainer.max_steps=2")[0] == 0
    assert _train(runs_root, "run_id=hist", "trainer.max_steps=4")[0] == 0
    rows = _rows(run / "metrics.csv")
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert train_steps == [0, 1, 2, 3], rows
    tests = [int(r["step"]) for r in rows if r.get("test/rel_l2")]
    assert tests == [2, 4]
    code, out, err = _train(runs_root, "run_id=hist", "stage=test")
    assert code == 0, err + out
    # the test of a checkpoint reports its step (the test-only trainer's was 0), here and in zoo eval
    assert json.loads((run / "test_metrics.json").read_text())["global_step"] == 4
    record = runs_root / "eval.json"
    code, out, err = zoo_in_process("eval", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"out={record}")
    assert code == 0 and re.search(r"global_step\s*│\s*4\s*│", out), out
    saved = json.loads(record.read_text())  # zoo eval out=: the evaluation's record
    assert saved["checkpoint"].endswith("last.ckpt") and saved["metrics"]["global_step"] == 4
    rows = _rows(run / "metrics.csv")
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3]
    assert len([r for r in rows if r.get("test/rel_l2")]) == 3
    # an interrupted run's rows after its last checkpoint (step 4) are logged again by the resumed run: dropped first
    header = list(rows[0])
    with open(run / "metrics.csv", "a", newline="") as file:
        csv.DictWriter(file, fieldnames=header).writerow({**{k: "" for k in header}, "step": "4", "epoch": "2",
                                                          "train/loss": "123.0"})
    assert _train(runs_root, "run_id=hist", "trainer.max_steps=6")[0] == 0
    rows = _rows(run / "metrics.csv")
    assert "123.0" not in [r.get("train/loss") for r in rows]
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3, 4, 5]
    # zoo status finds the run by its id under another runs root
    code, out, err = zoo_in_process("status", "hist", "--root", str(runs_root))
    assert code == 0 and "global_step 6" in out, err + out


def test_a_failed_resume_leaves_config_yaml_as_it_was(runs_root):
    """A bad trainer value on resume is one line (exit 2), and the run's config.yaml does not take it (before, it was
    written first, so every later resume and `zoo eval` of the run failed); a good change is saved once the resumed
    fit trains."""
    run = runs_root / "causal_pinn" / "cfg"
    assert _train(runs_root, "run_id=cfg", "trainer.max_steps=2")[0] == 0
    saved = (run / "config.yaml").read_text()
    code, out, err = _train(runs_root, "run_id=cfg", "trainer.max_steps=4", "trainer.precision=bogus")
    assert code == 2 and "bogus" in err, err + out
    assert (run / "config.yaml").read_text() == saved
    assert _train(runs_root, "run_id=cfg", "trainer.max_steps=4")[0] == 0
    assert "max_steps: 4" in (run / "config.yaml").read_text()
    assert json.loads((run / "final_metrics.json").read_text())["global_step"] == 4


@pytest.mark.parametrize("run_id", ["../escape", "a/b", ".hidden", "-x", "a b"])
def test_run_id_names_one_directory(runs_root, run_id):
    code, out, err = _train(runs_root, f"run_id='{run_id}'", "trainer.max_steps=1")
    assert code == 2 and "run_id must be one directory name" in err, err + out
    assert not list(runs_root.parent.glob("escape")) and not list(runs_root.iterdir())


def test_on_off_options_take_true_or_false_only(runs_root):
    """`model.rff=flase` was a non-empty string, read as true: the run trained the RFF method in place of the plain
    MLP baseline without a word. Options annotated bool now take true/false (any case) only."""
    code, out, err = zoo_in_process("train", "experiment=medida", "model.rff=flase", f"runs_root={runs_root}")
    assert code == 2 and "model.rff is an on/off option (true or false), got 'flase'" in err, err + out
    code, out, err = zoo_in_process("train", "experiment=itransformer", "model.use_norm=1", f"runs_root={runs_root}")
    assert code == 2 and "model.use_norm is an on/off option" in err, err + out
    assert not list(runs_root.iterdir())


def test_early_stopping_on_a_val_metric_with_a_budget_shorter_than_an_epoch(runs_root):
    """The paper-scale iTransformer variants stop early on val/mse; a step budget that ends before the first
    validation raised Lightning's "metric val/mse not available" from the end of the training epoch. Early stopping
    now decides after each validation."""
    code, out, err = zoo_in_process("train", "experiment=itransformer", "early_stopping={monitor: val/mse}",
                                    "trainer.max_steps=2", "trainer.check_val_every_n_epoch=1",
                                    f"runs_root={runs_root}", "logger=csv", "progress_bar=false")
    assert code == 0, err + out


def test_one_cycle_schedule_cannot_be_stretched_on_resume(runs_root):
    """MgNO's OneCycle schedule is fixed by the first budget; training the run on to a longer one stepped past its end
    (a traceback). Now a one-line error before the first step, the run as it was; the same budget resumes."""
    args = ["experiment=mgno", "data.n_train=8", "data.n_test=4", "trainer.max_epochs=10", "run_id=oc",
            f"runs_root={runs_root}", "logger=csv", "progress_bar=false", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1"]
    assert zoo_in_process("train", *args, "trainer.max_steps=2")[0] == 0
    code, out, err = zoo_in_process("train", *args, "trainer.max_steps=4")
    assert code == 2 and "OneCycle learning-rate schedule spans 2 steps" in err, err + out
    assert "max_steps: 2" in (runs_root / "mgno" / "oc" / "config.yaml").read_text()


def test_a_finished_run_started_again_reports_its_train_and_val_metrics(runs_root):
    """The same command again after a run finished trains nothing and tests it again: its table showed the epoch and
    the test metrics only, while final_metrics.json kept train and validation (README audit, stop 38); the table is
    the file's now."""
    assert _train(runs_root, "run_id=again", "trainer.max_steps=4", "trainer.check_val_every_n_epoch=1")[0] == 0
    code, out, err = _train(runs_root, "run_id=again", "trainer.max_steps=4", "trainer.check_val_every_n_epoch=1")
    assert code == 0, err + out
    final = json.loads((runs_root / "causal_pinn" / "again" / "final_metrics.json").read_text())
    assert "train/loss" in final and "val/rel_l2" in final, sorted(final)
    for key in ("train/loss", "val/rel_l2", "test/rel_l2"):
        assert re.search(rf"{re.escape(key)}\s*│", out), (key, out[-2000:])
