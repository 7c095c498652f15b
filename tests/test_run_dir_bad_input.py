"""Broken run directories and interrupted runs: a one-line error (exit 2) that leaves the run as it was, or a repair,
never a traceback or a silently corrupted record. Each case was found by a read-only audit of the run-directory and
resume paths (stop 32) and seen failing before its fix (what it did is in each test's docstring)."""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ZOO, zoo_in_process

TINY = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=256", "trainer.check_val_every_n_epoch=1",
        "logger=csv", "progress_bar=false"]


def _train(runs_root: Path, run_id: str, *overrides: str) -> tuple[int, str]:
    code, out, err = zoo_in_process("train", *TINY, f"runs_root={runs_root}", f"run_id={run_id}", *overrides)
    return code, err + out


def _snapshot(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file()}


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def _error_line(text: str) -> str:
    errors = [line for line in text.strip().splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    return errors[0]


def test_a_checkpoint_that_does_not_fit_is_one_line_and_changes_nothing(runs_root):
    """A last.ckpt of another model size: was a 39-line traceback (the size mismatch inside Lightning's restore),
    and metrics.csv had already lost the rows logged after the checkpoint (an interrupted run's tail). A last.ckpt of
    another experiment whose weights have the same names and shapes (UltraGCN's, in a LightGCN run): was loaded and
    trained on, exit 0. A weights-only checkpoint: was a KeyError traceback."""
    assert _train(runs_root, "donor", "trainer.max_epochs=1", "model.embedding_dim=32")[0] == 0
    code, text = zoo_in_process("train", "experiment=ultragcn", *TINY[1:], f"runs_root={runs_root}", "run_id=other",
                                "trainer.max_epochs=1")[::2]
    assert code == 0, text
    assert _train(runs_root, "victim", "trainer.max_epochs=1")[0] == 0
    run = runs_root / "lightgcn" / "victim"
    with open(run / "metrics.csv", "a", newline="") as file:  # a row an interrupted run logged after its checkpoint
        file.write(",".join(["1", "20"] + [""] * (len(_rows(run)[0]) - 2)) + "\r\n")
    own = run / "checkpoints" / "last.ckpt"
    own.rename(run / "own.ckpt")
    for donor, words in ((runs_root / "lightgcn" / "donor", "does not fit this model"),
                         (runs_root / "ultragcn" / "other", "was written by experiment ultragcn")):
        own.write_bytes((donor / "checkpoints" / "last.ckpt").read_bytes())
        before = _snapshot(run)
        code, text = _train(runs_root, "victim", "trainer.max_epochs=2")
        assert code == 2 and words in _error_line(text), text[-3000:]
        assert _snapshot(run) == before
    state = torch.load(run / "own.ckpt", map_location="cpu", weights_only=False)
    del state["optimizer_states"]
    torch.save(state, own)
    code, text = _train(runs_root, "victim", "trainer.max_epochs=2")
    assert code == 2 and "holds weights only" in _error_line(text)


def test_a_torn_or_malformed_metrics_csv(runs_root):
    """A last line torn by a kill (no line end): the next resume glued its first row onto it (15 fields under a
    10-column header), and the resume after that crashed in the CSV reader. Now the torn line is dropped when the
    resumed run saves its first rows. A row that does not fit the header (a hand edit): a one-line error."""
    assert _train(runs_root, "torn", "trainer.max_epochs=2")[0] == 0
    run = runs_root / "lightgcn" / "torn"
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[: text.rstrip("\n").rfind("\n") + 8])  # 7 characters of the last row
    assert _train(runs_root, "torn", "trainer.max_epochs=3")[0] == 0
    rows = _rows(run)
    assert rows and all(None not in row and None not in row.values() for row in rows)
    assert _train(runs_root, "torn", "trainer.max_epochs=4")[0] == 0
    with open(run / "metrics.csv", "a") as file:
        file.write("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n")
    before = _snapshot(run)
    code, text = _train(runs_root, "torn", "trainer.max_epochs=5")
    assert code == 2 and "does not fit its header" in _error_line(text) and _snapshot(run) == before


def test_a_run_without_its_checkpoint_trains_again_without_duplicate_rows(runs_root):
    """last.ckpt moved away (as the corrupt-checkpoint error advises) or never written: the restart printed
    "resuming", trained from step 0 and kept the earlier attempt's rows too (steps 9, 19, 26 twice)."""
    assert _train(runs_root, "again", "trainer.max_epochs=2")[0] == 0
    run = runs_root / "lightgcn" / "again"
    straight = [(r["epoch"], r["step"]) for r in _rows(run)]
    (run / "checkpoints" / "last.ckpt").unlink()
    code, text = _train(runs_root, "again", "trainer.max_epochs=2")
    assert code == 0 and "has no checkpoint: it trains again from step 0" in text
    assert [(r["epoch"], r["step"]) for r in _rows(run)] == straight


def test_broken_run_files_are_one_line_errors(runs_root):
    """config.yaml that parses but is not a run config (no model section; a list): tracebacks in resume, status and
    eval; trainer.max_epochs=abc: a traceback on resume and, on a new run, an AssertionError deep in Lightning that
    left a half-made run directory; final_metrics.json that is JSON but not a mapping: tracebacks in zoo status and
    zoo runs (one bad run hid the table)."""
    assert _train(runs_root, "cfg", "trainer.max_epochs=1")[0] == 0
    assert _train(runs_root, "good", "trainer.max_epochs=1")[0] == 0
    run = runs_root / "lightgcn" / "cfg"
    config = (run / "config.yaml").read_text()
    code, text = _train(runs_root, "cfg", "trainer.max_epochs=abc")
    assert code == 2 and "trainer.max_epochs must be an integer" in _error_line(text)
    code, text = _train(runs_root, "fresh", "trainer.max_epochs=abc")
    assert code == 2 and not (runs_root / "lightgcn" / "fresh").exists()
    without_model = OmegaConf.load(run / "config.yaml")
    del without_model["model"]
    for broken in (OmegaConf.to_yaml(without_model), "- a\n"):
        (run / "config.yaml").write_text(broken)
        assert "is not a run config" in _error_line(_train(runs_root, "cfg", "trainer.max_epochs=2")[1])
        code, out, err = zoo_in_process("status", str(run))
        assert code == 2 and "is not a run config" in _error_line(err + out)
        code, out, err = zoo_in_process("eval", f"ckpt={run / 'checkpoints' / 'last.ckpt'}")
        assert code == 2 and "is not a run config" in _error_line(err + out)
    (run / "config.yaml").write_text(config)
    (run / "final_metrics.json").write_text("[1, 2]\n")
    code, out, err = zoo_in_process("status", str(run))
    assert code == 0 and "final_metrics.json unreadable" in out
    code, out, err = zoo_in_process("runs", "lightgcn", "--root", str(runs_root))
    assert code == 0 and "good" in out and "skipping" in err + out


def test_interrupted_train_exits_with_the_signals_status(runs_root):
    """Ctrl-C and SIGTERM during a fit: exit 130 / 143 with one line. Lightning turned SIGTERM into exit status 0
    (a killed run looked finished to a script) and Ctrl-C into 1 without the line. SIGTERM stops the run after the
    current step with last.ckpt saved at it (before launch.termination: at the last period)."""
    for sig, status, words in ((signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")):
        run = runs_root / "lightgcn" / f"sig{status}"
        # Ctrl-C's default handling back in the child: a pytest-xdist worker ignores SIGINT, and Python leaves a
        # signal ignored that it inherits ignored (seen: the run went on after the signal)
        proc = subprocess.Popen([ZOO, "train", *TINY, f"runs_root={runs_root}", f"run_id=sig{status}",
                                 "trainer.max_epochs=500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while not (run / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == status and f"zoo train: {words}" in err.strip().splitlines()[-1], err[-2000:]
        assert not (run / "final_metrics.json").exists()  # its restart resumes from last.ckpt (tests/test_train.py)
        if sig == signal.SIGTERM:  # stopped after the current step, saved there (launch.termination)
            step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
            assert f"stopped by SIGTERM after step {step}; last.ckpt holds step {step}" in err, err[-2000:]


def test_a_read_only_run_directory_is_one_line(runs_root):
    """A run directory on a read-only mount, resumed: was an OSError traceback (hparams.yaml). Needs a private mount
    namespace (root); skipped where `unshare -m` is refused."""
    assert _train(runs_root, "ro", "trainer.max_epochs=1")[0] == 0
    run = runs_root / "lightgcn" / "ro"
    script = (f"mount --bind {run} {run} && mount -o remount,bind,ro {run} || exit 99; "
              f"{ZOO} train {' '.join(TINY)} runs_root={runs_root} run_id=ro trainer.max_epochs=2")
    proc = subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode == 99 or proc.stderr.startswith("unshare:"):
        pytest.skip(f"no private read-only mount here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 2 and "not writable" in _error_line(proc.stderr), proc.stderr[-2000:]


def test_a_run_id_names_one_run_across_experiments(runs_root):
    """A run id is the run's W&B id too, so it names one run under the runs root (README audit, stop 38): another
    experiment with the same id was a second run (exit 0; `zoo status <id>` then ambiguous, one W&B run for both);
    now one line naming the run. `zoo train run_id=X` alone resumes X in its own experiment (it was an error asking
    for experiment=; with it, a mistyped experiment would have started a new run); an id no run has is one line.
    The "starting a new run with this id" line comes after the command's settings are checked (it was printed before
    an error about them)."""
    assert _train(runs_root, "mine", "trainer.max_epochs=1")[0] == 0
    code, out, err = zoo_in_process("train", "experiment=ultragcn", *TINY[1:], f"runs_root={runs_root}", "run_id=mine",
                                    "trainer.max_epochs=1")
    line = _error_line(err + out)
    assert code == 2 and "run mine is a run of experiment lightgcn" in line and "experiment=lightgcn" in line, line
    assert not (runs_root / "ultragcn").exists()
    code, out, err = zoo_in_process("train", f"runs_root={runs_root}", "run_id=mine", "trainer.max_epochs=2",
                                    "progress_bar=false")
    assert code == 0 and "resuming run mine" in err, (err + out)[-3000:]
    assert OmegaConf.load(runs_root / "lightgcn" / "mine" / "config.yaml").trainer.max_epochs == 2
    code, out, err = zoo_in_process("train", f"runs_root={runs_root}", "run_id=typo")
    assert code == 2 and "no run 'typo' under" in _error_line(err + out)
    # an id taken twice before this check: each experiment still resumes (and shows) its own run
    shutil.copytree(runs_root / "lightgcn" / "mine", runs_root / "ultragcn" / "mine")
    code, out, err = zoo_in_process("train", *TINY, f"runs_root={runs_root}", "run_id=mine", "--cfg", "job")
    assert code == 0 and "max_epochs: 2" in out, (err + out)[-2000:]
    code, out, err = zoo_in_process("train", *TINY, f"runs_root={runs_root}", "run_id=fresh", "stage=bogus")
    assert code == 2 and "starting a new run" not in err + out and "stage must be one of" in _error_line(err + out)


def test_a_sweep_of_run_ids_alone_resumes_them_in_their_experiment(runs_root):
    """`zoo train -m run_id=a,b` without experiment= asked for experiment= though both runs had one (stop 38's
    `run_id=X` alone did not reach sweeps); now it resumes both in their experiment. With or without experiment=,
    such a sweep trained both runs and then exited 2 ("no runs ... in sweep <id>": its table looked for the ids
    `<sweep id>-<i>`); its table now has the named runs. Runs of two experiments, or an id no run has, are one line
    before anything trains."""
    for run_id in ("a1", "a2"):
        assert _train(runs_root, run_id, "trainer.max_epochs=1")[0] == 0
    code, out, err = zoo_in_process("train", "-m", f"runs_root={runs_root}", "run_id=a1,a2", "trainer.max_epochs=2",
                                    "progress_bar=false")
    assert code == 0 and "resuming run a1" in err and "resuming run a2" in err, (err + out)[-3000:]
    for run_id in ("a1", "a2"):
        assert OmegaConf.load(runs_root / "lightgcn" / run_id / "config.yaml").trainer.max_epochs == 2
    [table] = (runs_root / "sweeps").glob("*.csv")
    assert sorted(row["run"] for row in csv.DictReader(table.open())) == ["a1", "a2"]
    code, out, err = zoo_in_process("train", "-m", f"runs_root={runs_root}", "run_id=a1,typo")
    assert code == 2 and "no run 'typo' under" in _error_line(err + out)
    for ids in ("'a1','a2'", "choice(a1,a2)"):  # Hydra's other sweep syntax (refused as one bad id before)
        code, out, err = zoo_in_process("train", "-m", f"runs_root={runs_root}", f"run_id={ids}", "--cfg", "job")
        assert code == 0 and out.count("experiment=lightgcn") + out.count("slug: lightgcn") >= 2, (err + out)[-2000:]
    code, out, err = zoo_in_process("train", f"runs_root={runs_root}", "run_id=a1,a2")  # several ids need -m
    assert code == 2 and "need `zoo train -m" in _error_line(err + out)
    shutil.copytree(runs_root / "lightgcn" / "a2", runs_root / "ultragcn" / "b1")
    code, out, err = zoo_in_process("train", "-m", f"runs_root={runs_root}", "run_id=a1,b1")
    line = _error_line(err + out)
    assert code == 2 and "belong to different experiments" in line and "b1 (ultragcn)" in line, line


def test_every_run_of_a_local_sweep_is_checked_before_the_first_trains(runs_root):
    """`zoo train -m ... model.num_layers=1,x`: run 0 trained for its whole budget before run 1 failed on 'x', and no
    sweep table was written (README audit, stop 38); now one line before anything trains."""
    code, out, err = zoo_in_process("train", "-m", *TINY, f"runs_root={runs_root}", "trainer.max_epochs=1",
                                    "model.num_layers=1,x")
    assert code == 2 and "model.num_layers must be a whole number" in _error_line(err + out)
    assert not (runs_root / "lightgcn").exists()


DAMAGE = {  # stop 44's bad-checkpoint audit: each was a traceback (exit 1) or a silent NaN evaluation / test
    "no_lightning_version": (lambda c: c.pop("pytorch-lightning_version"), "no pytorch-lightning_version"),
    "nan_weights": (lambda c: next(iter(v for v in c["state_dict"].values() if v.is_floating_point())).fill_(
        float("nan")), "NaN in the weights"),
    "state_dict_list": (lambda c: c.update(state_dict=list(c["state_dict"].values())), "not a mapping of tensors"),
    "loops": (lambda c: c.update(loops={"fit_loop": 5}), "loops entry is not a mapping"),
    "global_step": (lambda c: c.update(global_step="x"), "global_step is 'x'"),
    "optimizer_groups": (lambda c: c["optimizer_states"][0].update(param_groups=[]), "optimizer_states are not"),
    "optimizer_nan": (lambda c: next(iter(next(iter(c["optimizer_states"][0]["state"].values())).values())).fill_(
        float("nan")), "NaN in the optimizer's state"),
}


def test_a_damaged_checkpoint_is_one_line_in_eval_test_and_resume(runs_root):
    """A checkpoint that opens but whose contents are damaged (a hand-saved dict without Lightning's version, NaN
    weights or optimizer moments, a state_dict or loops of the wrong kind, a text global_step, optimizer states
    without parameter groups): was a KeyError / TypeError / ValueError / LinAlgError traceback from Lightning's
    restore, or NaN test metrics written into the run (`stage=test`: test_metrics.json, metrics.csv rows and figures).
    Now one line naming the checkpoint and what is wrong, for `zoo eval`, `stage=test` and a resume, with the run as
    it was."""
    assert _train(runs_root, "whole", "trainer.max_epochs=1")[0] == 0
    run = runs_root / "lightgcn" / "whole"
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    for name, (damage, message) in DAMAGE.items():
        ckpt = torch.load(last, weights_only=False)
        damage(ckpt)
        torch.save(ckpt, last)
        before = _snapshot(run)
        for command in (["eval", f"ckpt={last}"],
                        ["train", *TINY, f"runs_root={runs_root}", "run_id=whole", "stage=test"],
                        ["train", *TINY, f"runs_root={runs_root}", "run_id=whole", "trainer.max_epochs=2"]):
            code, out, err = zoo_in_process(*command)
            assert code == 2, (name, command, err + out)
            line = _error_line(err + out)
            assert message in line and str(last) in line, (name, line)
            assert _snapshot(run) == before, (name, command)
        last.write_bytes(good)
    # optimizer states of another optimizer (two parameter groups for this model's one): only a resume reads them,
    # and torch's load_state_dict refused them with a ValueError traceback
    ckpt = torch.load(last, weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    ckpt["optimizer_states"][0]["param_groups"] = [groups[0], {**groups[0], "params": []}]
    torch.save(ckpt, last)
    before = _snapshot(run)
    code, text = _train(runs_root, "whole", "trainer.max_epochs=2")
    assert code == 2 and "does not fit this model's optimizer" in _error_line(text), text[-3000:]
    assert _snapshot(run) == before
    last.write_bytes(good)
    assert _train(runs_root, "whole", "trainer.max_epochs=2")[0] == 0  # the whole checkpoint resumes


def test_a_crash_in_the_data_setup_of_a_new_run_leaves_no_run_directory(runs_root, monkeypatch):
    """An exception other than a one-line input error, raised in the datamodule's setup before the first step (a
    value read from a data file that no check caught: stop 44's audit found a dysts file's `dt: null` and a damaged
    generated-data cache), left the new run's config.yaml and meta.json behind, a run that never trained. The
    traceback still shows (it is a bug to report), but the new run's directory goes; a run that has trained keeps
    its evidence."""
    from datamodules.interactions import InteractionDataModule

    def crash(self, stage=None):
        raise RuntimeError("boom in setup")

    monkeypatch.setattr(InteractionDataModule, "setup", crash)
    with pytest.raises(RuntimeError, match="boom in setup"):
        _train(runs_root, "crashed", "trainer.max_epochs=1")
    assert not (runs_root / "lightgcn" / "crashed").exists()
    monkeypatch.undo()
    assert _train(runs_root, "kept", "trainer.max_epochs=1")[0] == 0
    monkeypatch.setattr(InteractionDataModule, "setup", crash)
    with pytest.raises(RuntimeError, match="boom in setup"):  # a resume: the run is not new, nothing is removed
        _train(runs_root, "kept", "trainer.max_epochs=2")
    assert (runs_root / "lightgcn" / "kept" / "checkpoints" / "last.ckpt").is_file()
