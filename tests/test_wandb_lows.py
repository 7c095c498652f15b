"""W&B low findings (audit follow-up): an explicit `logger.wandb.mode` against an exported WANDB_MODE, and the steps a
resumed run logs again. W&B never leaves this machine: the runs are offline or disabled, or their `experiment` is a
recording stand-in."""
from __future__ import annotations

import json

import pytest

from launch import config as zconfig
from launch import runs, train, wandb_logger
from launch.wandb_logger import LOGGED_FILE, RunWandbLogger, resolve_mode

pytestmark = [pytest.mark.wandb]


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.mark.parametrize("requested, env, mode", [
    ("disabled", "offline", "disabled"),  # was offline: WANDB_MODE won over the config
    ("offline", "online", "offline"),  # was online
    ("online", "disabled", "online"),
    ("auto", "disabled", "disabled"),  # auto: the environment, then the credentials
    ("auto", "offline", "offline"),
    ("auto", None, "offline"),  # no credentials here
])
def test_an_explicit_mode_wins_over_wandb_mode_which_wins_over_auto(requested, env, mode, no_credentials,
                                                                    monkeypatch):
    if env:
        monkeypatch.setenv("WANDB_MODE", env)
    assert resolve_mode(requested) == mode


def test_logger_wandb_mode_disabled_is_not_overridden_by_an_exported_wandb_mode(tmp_path, monkeypatch):
    """`logger.wandb.mode=disabled` with WANDB_MODE=offline exported (a shell profile, a cluster module) wrote an
    offline W&B run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = runs.assign_run_id(zconfig.compose(["experiment=lightgcn", "data=synthetic_graph", f"runs_root={tmp_path}",
                                              "run_id=off", "logger=wandb", "logger.wandb.mode=disabled"]))
    modes = [lg._wandb_init["mode"] for lg in train.build_loggers(cfg, runs.run_of(cfg)) if hasattr(lg, "_wandb_init")]
    assert modes in ([], ["disabled"])


class Recorder:
    """Stands in for the wandb run behind `logger.experiment`: records what is logged."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))


def _logger(save_dir, resume_step: int | None = None) -> tuple[RunWandbLogger, Recorder]:
    logger = RunWandbLogger(project="p", id="r", save_dir=str(save_dir), mode="offline", config={},
                            resume_step=resume_step)
    recorder = Recorder()
    logger._experiment = recorder  # nothing reaches wandb
    return logger, recorder


def _fit_rows(logger: RunWandbLogger, upto: int, start: int = 0) -> None:
    """What Lightning logs in a fit: a training row every 10 steps, a validation row at the epoch ends (every 20)."""
    for step in range(start, upto + 1):
        if step % 10 == 9:
            logger.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": step // 20}, step)
        if step % 20 == 19:
            logger.log_metrics({"val/recall": step / 100, "epoch": step // 20}, step)


def test_a_resumed_start_does_not_log_the_steps_the_run_already_logged(tmp_path, monkeypatch):
    """Preempted after logging step 49's training row (not its validation row), resumed from a checkpoint at step
    21: the resumed start logged steps 29..49 a second time (W&B kept both rows of each, at the same
    trainer/global_step). It now logs only what W&B does not have: step 59's validation row onwards, and step 49's
    validation row, which the first start never sent."""
    monkeypatch.setattr(wandb_logger, "RECORD_EVERY_S", 0.0)  # the record written at every row (see the lag test)
    first, sent_first = _logger(tmp_path)
    _fit_rows(first, 48)
    first.log_metrics({"train/loss": 0.02, "epoch": 2}, 49)  # then killed, before step 49's validation row
    assert (tmp_path / "wandb" / LOGGED_FILE).is_file() and sent_first.rows[-1]["trainer/global_step"] == 49

    resumed, sent = _logger(tmp_path, resume_step=21)
    for step in range(22, 70):
        if step % 10 == 9:
            resumed.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": step // 20}, step)
        if step == 49:
            resumed.log_metrics({"val/recall": step / 100, "epoch": 2}, step)
    steps = [(r["trainer/global_step"], sorted(k for k in r if k != "trainer/global_step")) for r in sent.rows]
    assert steps == [(49, ["epoch", "val/recall"]), (59, ["epoch", "train/loss"]), (69, ["epoch", "train/loss"])]

    # a third start resumed at step 60 again: step 69 was logged, only later steps go
    third, sent_third = _logger(tmp_path, resume_step=60)
    third.log_metrics({"train/loss": 0.1, "epoch": 3}, 69)
    third.log_metrics({"train/loss": 0.1, "epoch": 3}, 79)
    assert [r["trainer/global_step"] for r in sent_third.rows] == [79]


def test_a_start_from_step_0_sends_every_row_and_the_record_lags_never_leads(tmp_path, monkeypatch):
    """Review of the record: (1) a run that trains again from step 0 (its checkpoint gone) dropped every new row up to
    the earlier attempt's last step, while metrics.csv keeps the new attempt's rows: a start without a checkpoint now
    sends all it logs. (2) The record was rewritten at every row (~2 ms each, a metadata operation on a network
    disk): it is written at most every RECORD_EVERY_S seconds, at checkpoints and at the end, so it lags what was
    sent (a start after a kill resends a few rows) and never leads it."""
    clock = [100.0]
    monkeypatch.setattr(wandb_logger.time, "monotonic", lambda: clock[0])
    first, _ = _logger(tmp_path)
    _fit_rows(first, 49)
    assert json.loads((tmp_path / "wandb" / LOGGED_FILE).read_text())["step"] == 9  # the first row; no time passed
    clock[0] += wandb_logger.RECORD_EVERY_S
    first.log_metrics({"train/loss": 0.5, "epoch": 2}, 59)
    assert json.loads((tmp_path / "wandb" / LOGGED_FILE).read_text())["step"] == 59
    first.log_metrics({"train/loss": 0.4, "epoch": 3}, 69)
    first.finalize("failed")
    assert json.loads((tmp_path / "wandb" / LOGGED_FILE).read_text())["step"] == 69

    for resume_step in (None, 0):  # no checkpoint: a new attempt from step 0
        again, sent = _logger(tmp_path, resume_step=resume_step)
        _fit_rows(again, 29)
        assert [r["trainer/global_step"] for r in sent.rows] == [9, 19, 19, 29]


def test_a_retest_still_logs_at_the_tested_step(tmp_path):
    """`stage=test` of a trained run logs its test row at the tested checkpoint's step, which W&B has: it is a new row
    (another test of the same weights), not a repeat of the fit's."""
    first, _ = _logger(tmp_path)
    _fit_rows(first, 39)
    retest, sent = _logger(tmp_path)
    retest.tested_at = (39.0, 1.0)
    retest.log_metrics({"test/recall": 0.3}, 0)
    assert sent.rows == [{"test/recall": 0.3, "epoch": 1.0, "trainer/global_step": 39}]


def test_a_real_resume_continues_lightnings_step_numbering_and_skips_what_wandb_has(runs_root, monkeypatch):
    """The record against Lightning's own step numbering (the tests above drive the logger by hand): a fit resumed
    from its last checkpoint logs W&B rows at steps after the first start's, none twice; with the record claiming
    more (a start killed after logging past its checkpoint) the resumed start drops the rows up to the claimed step
    and sends the rest."""
    from lightning.pytorch.loggers import WandbLogger

    from tests.conftest import zoo_in_process

    sent: list[tuple[int, tuple[str, ...]]] = []
    monkeypatch.setattr(WandbLogger, "log_metrics",
                        lambda self, metrics, step=None: sent.append((step, tuple(sorted(metrics)))))
    monkeypatch.setattr(wandb_logger, "RECORD_EVERY_S", 0.0)
    args = ["experiment=lightgcn", "data=synthetic_graph", "data.batch_size=64", "trainer.max_epochs=null",
            "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=2",
            "checkpoint.every_n_epochs=null", "stage=fit", f"runs_root={runs_root}", "run_id=wb", "logger=wandb",
            "logger.wandb.mode=offline", "progress_bar=false"]

    def train_steps(max_steps: int) -> list[int]:
        sent.clear()
        code, _, err = zoo_in_process("train", *args, f"trainer.max_steps={max_steps}")
        assert code == 0, err
        return [step for step, keys in sent if "train/loss_step" in keys]

    first = train_steps(3)
    assert first == [0, 1, 2]
    resumed = train_steps(6)
    assert resumed == [3, 4, 5]  # Lightning's numbering goes on from the checkpoint: no row twice, none missing
    record = runs_root / "lightgcn" / "wb" / "wandb" / LOGGED_FILE
    assert json.loads(record.read_text())["step"] == 5
    record.write_text(json.dumps({"step": 7, "keys": ["epoch", "train/loss_step"]}))  # W&B has rows up to step 7
    assert train_steps(9) == [8]
