"""What a run sends to W&B (found by a read-only audit of the W&B integration in offline mode, stop 33): the config is
the run's resolved config (Lightning's flat hyperparameters overwrote it), a re-test logs at the tested step (it
logged at step 0), a failed run does not end as finished, a sweep's runs are grouped, and the W&B settings are
checked."""
from __future__ import annotations

import csv
import json
import sys
import types

import pytest
from omegaconf import OmegaConf

from launch import config as zconfig
from launch import runs, train
from launch.wandb_logger import finish_failed, has_credentials, tags
from tests.conftest import zoo_in_process
from tests.test_cli import one_line_error

TINY = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=256", "progress_bar=false"]


def test_the_wandb_config_is_the_runs_config_without_flat_hyperparameters(tmp_path, monkeypatch):
    """pig's `model` block became the string "pig" and a datamodule's `seed` replaced the run's: Lightning logged
    every hyperparameter again as a flat key (`log_hyperparams`). The config keeps its provenance and not the claims'
    prose."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = runs.assign_run_id(zconfig.compose(["experiment=pig", f"runs_root={tmp_path}", "run_id=w", "seed=0"]))
    (logger,) = [lg for lg in train.build_loggers(cfg, runs.run_of(cfg)) if hasattr(lg, "_wandb_init")]
    logged = logger._wandb_init["config"]
    assert logged["model"] == OmegaConf.to_container(cfg.model, resolve=True)
    assert "claims" not in logged and logged["meta"]["git_commit"] and "anonymous" not in logger._wandb_init
    logger.log_hyperparams({"model": "pig", "seed": 5})  # what Lightning passes at fit start: not logged
    assert logger._experiment is None  # nothing reached W&B (no run was even started)


def test_a_retest_is_logged_at_the_tested_step(runs_root):
    """`zoo train run_id=X stage=test` logged its test metrics at step 0 and epoch 0 (W&B and metrics.csv)."""
    args = [*TINY, f"runs_root={runs_root}", "run_id=rt", "logger=csv", "trainer.max_epochs=2"]
    assert zoo_in_process("train", *args)[0] == 0
    code, _, err = zoo_in_process("train", *args, "stage=test")
    assert code == 0, err
    final = json.loads((runs_root / "lightgcn" / "rt" / "final_metrics.json").read_text())
    with open(runs_root / "lightgcn" / "rt" / "metrics.csv", newline="") as file:
        tests = [(float(r["step"]), float(r["epoch"])) for r in csv.DictReader(file) if r.get("test/recall@20")]
    assert tests == [(final["global_step"], final["epoch"])] * 2  # the fit's test and the re-test, same weights


def test_wandb_settings_are_checked_and_a_sweep_is_grouped(tmp_path):
    """`logger.wandb.mode=bogus` was a traceback that left a run directory; `tags=baseline` became b,a,s,e,...; a
    typo under logger.wandb was ignored; a sweep's runs had no group."""
    root = tmp_path / "runs"
    for override, message in (("logger.wandb.mode=bogus", "logger.wandb.mode must be one of"),
                              ("+logger.wandb.log_modle=true", "logger.wandb has no key log_modle")):
        line = one_line_error(*zoo_in_process("train", *TINY, override, f"runs_root={root}")[::2])
        assert message in line and not root.exists()
    assert tags("baseline") == ["baseline"] and tags(["a", "b"]) == ["a", "b"] and tags(None) == []
    code, out, err = zoo_in_process("train", "-m", *TINY, "seed=0,1", f"runs_root={root}", "--cfg", "job")
    assert code == 0, err
    groups = {line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("group:")}
    assert len(groups) == 1 and groups.pop().startswith("sweep-")


def test_a_failed_run_is_not_recorded_as_finished(monkeypatch):
    """A NaN stop (exit 2) and a SIGTERM (exit 143) ended their W&B runs with exit code 0."""
    finished = []
    fake = types.SimpleNamespace(run=object(), finish=lambda exit_code=0: finished.append(exit_code))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sigterm = type("SIGTERMException", (SystemExit,), {})
    for err in (RuntimeError("loss became nan"), KeyboardInterrupt(), sigterm(), SystemExit(0), SystemExit(None)):
        finish_failed(err)
    assert finished == [1, 130, 143]


@pytest.mark.parametrize("base_url, host", [(None, "api.wandb.ai"), ("https://wandb.example.org", "wandb.example.org")])
def test_auto_mode_finds_credentials_for_the_wandb_host(base_url, host, tmp_path, monkeypatch):
    """`mode: auto` looked for the text api.wandb.ai in ~/.netrc: a self-hosted server's login went offline."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert has_credentials() and train.wandb_mode("auto") == "online"
    netrc.write_text("machine elsewhere.org\n  login user\n  password secret\n")
    assert not has_credentials() and train.wandb_mode("auto") == "offline"


def test_figures_are_saved_and_logged_once_per_run(tmp_path):
    """A fit followed by its test saved `figures()` at both ends under one file name and logged the same figure twice
    (val/ and test/, from the same weights): the fit end now draws only when no test follows (`stage=fit`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from launch.callbacks import FiguresCallback

    for stage, at_fit_end in (("fit_test", False), ("fit", True)):
        cfg = runs.assign_run_id(zconfig.compose([*TINY, f"runs_root={tmp_path}", f"run_id={stage}", f"stage={stage}",
                                                  "logger=csv"]))
        (callback,) = [c for c in train.build_trainer(cfg, runs.run_of(cfg)).callbacks
                       if isinstance(c, FiguresCallback)]
        assert callback.at_fit_end is at_fit_end, stage
        logged: list[str] = []
        logger = types.SimpleNamespace(log_image=lambda key, images, step, into=logged: into.append(key))
        trainer = types.SimpleNamespace(loggers=[logger], global_step=3, sanity_checking=False)
        module = types.SimpleNamespace(figures=lambda: {"field": plt.figure()})
        callback.on_fit_end(trainer, module)
        if stage == "fit_test":
            callback.on_test_end(trainer, module)
        assert logged == (["test/field"] if stage == "fit_test" else ["val/field"])
        assert (callback.directory / "field.png").is_file()
