"""`checkpoint.test_on=best`: the test sees the weights of the best validation epoch (RestoreBestWeights), with and
without a run directory, across a resume, and bad settings are one-line errors."""
from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from launch.callbacks import RestoreBestWeights
from launch.errors import UserError
from tests.conftest import zoo_in_process


class Climber(L.LightningModule):
    """One weight w that grows by exactly 1 per epoch (SGD lr 1 on the loss -w, one batch an epoch); validation logs
    val/score = -(w - peak)^2, best at the epoch that ends with w = peak; the test logs w itself."""

    def __init__(self, peak: float = 3.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.peak = peak

    def training_step(self, batch, batch_idx):
        return -self.w

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -(self.w.detach() - self.peak) ** 2)

    def test_step(self, batch, batch_idx):
        self.log("test/w", self.w.detach())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)


def _trainer(callback: RestoreBestWeights, epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_test_sees_the_best_epochs_weights_not_the_last():
    model, best = Climber(peak=3.0), RestoreBestWeights("val/score", "max")
    trainer = _trainer(best, epochs=6)
    trainer.fit(model, _loader(), _loader())
    assert best.best_epoch == 2 and best.best_value == 0.0  # w = 1, 2, 3, 4, 5, 6 after epochs 0..5
    trainer.test(model, _loader(), verbose=False)
    assert float(trainer.callback_metrics["test/w"]) == 3.0
    # the baseline of the option: without the callback the test sees the last weights
    plain = Climber(peak=3.0)
    last = L.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0)
    last.fit(plain, _loader(), _loader())
    assert float(plain.w.detach()) == 6.0


def test_min_mode_and_resume_keeps_the_best_so_far():
    best = RestoreBestWeights("val/score", "min")  # -(w - 3)^2 at w = 1, 2, 3, 4: the smallest is the first epoch
    model = Climber()
    _trainer(best, epochs=4).fit(model, _loader(), _loader())
    assert best.best_epoch == 0 and float(model.w.detach()) == 1.0
    # the callback's state round-trips (a resumed run keeps the best weights seen before the restart)
    state = best.state_dict()
    resumed = RestoreBestWeights("val/score", "min")
    resumed.load_state_dict(state)
    assert resumed.best_epoch == 0 and torch.equal(resumed.best_state["w"], torch.tensor(1.0))
    # a resume that monitors another metric or direction does not compare against the old best, a value of another
    # metric or the extreme of the other direction (before, both took epoch 0's -4.0)
    for other in (RestoreBestWeights("val/score", "max"), RestoreBestWeights("val/other", "min")):
        other.load_state_dict(state)
        assert other.best_value is other.best_epoch is other.best_state is None
    older = RestoreBestWeights("val/score", "min")  # a checkpoint from before monitor and mode were saved
    older.load_state_dict({k: state[k] for k in ("best_value", "best_epoch", "best_state")})
    assert older.best_epoch == 0


def test_best_weights_or_early_stopping_added_on_resume_warn(tmp_path, caplog):
    """A resume that adds `checkpoint.test_on=best` or early stopping (or changes its monitor) cannot compare the
    validations before it (the checkpoint holds no state for them): the run says so (it was silent, found by the
    resume-keys audit). A resume with their state says nothing."""
    from launch.callbacks import ConfiguredEarlyStopping

    first = _trainer(RestoreBestWeights("val/score", "max"), epochs=2)
    first.fit(Climber(), _loader(), _loader())
    first.save_checkpoint(tmp_path / "with_best.ckpt")
    plain = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0)
    plain.fit(Climber(), _loader(), _loader())
    plain.save_checkpoint(tmp_path / "plain.ckpt")

    def warnings_resuming(ckpt: str, callback) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="paperzoo"):
            _trainer(callback, epochs=3).fit(Climber(), _loader(), _loader(), ckpt_path=str(tmp_path / ckpt))
        return [r.getMessage() for r in caplog.records if r.name == "paperzoo"]

    assert any("added on resume" in m for m in warnings_resuming("plain.ckpt", RestoreBestWeights("val/score")))
    assert warnings_resuming("with_best.ckpt", RestoreBestWeights("val/score")) == []
    stopper = ConfiguredEarlyStopping(monitor="val/score", mode="max", patience=5)
    assert any("added or changed on resume" in m for m in warnings_resuming("plain.ckpt", stopper))


def test_bad_settings_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="'min' or 'max'"):
        RestoreBestWeights("val/score", "biggest")
    model, cb = Climber(), RestoreBestWeights("val/typo")
    with pytest.raises(UserError, match="was not logged by validation.*val/score"):
        _trainer(cb, epochs=1).fit(model, _loader(), _loader())
    monkeypatch.chdir(tmp_path)
    tiny = ["experiment=lightgcn", "data=synthetic_graph", "trainer.max_epochs=1", f"runs_root={tmp_path}/runs"]
    code, _, err = zoo_in_process("train", *tiny, "checkpoint.test_on=best")
    assert code == 2 and "needs checkpoint.monitor" in err and len(err.strip().splitlines()) == 1
    code, _, err = zoo_in_process("train", *tiny, "checkpoint.test_on=latest")
    assert code == 2 and "'final' or 'best'" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_zoo_train_tests_the_best_epoch(tmp_path, monkeypatch):
    """End to end through `zoo train`: LightGCN on the generated graph with lr 0.5 (overshoots, so its validation
    recall is not monotone); the final test metric equals the best validation value and best_epoch is reported."""
    monkeypatch.chdir(tmp_path)
    code, out, err = zoo_in_process(
        "train", "experiment=lightgcn", "data=synthetic_graph", "trainer.max_epochs=4",
        "trainer.check_val_every_n_epoch=1", "data.batch_size=256", f"runs_root={tmp_path}/runs", "threads=1",
        "model.optimizer.lr=0.5", "checkpoint.monitor=val/recall@20", "checkpoint.test_on=best", "progress_bar=false")
    assert code == 0, err
    with open(next((tmp_path / "runs" / "lightgcn").glob("*/metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    val = [(int(r["epoch"]), float(r["val/recall@20"])) for r in rows if r.get("val/recall@20")]
    test = [float(r["test/recall@20"]) for r in rows if r.get("test/recall@20")]
    best_epoch, best_value = max(val, key=lambda e: e[1])
    assert best_epoch < val[-1][0] and best_value > val[-1][1]  # measured: 0.306 at epoch 0, 0.223 at epoch 3
    assert test == [pytest.approx(best_value)]
    assert f"test on the best weights: epoch {best_epoch}" in out + err


def test_ddp_ranks_restore_the_same_best_epoch(tmp_path):
    """Two DDP CPU ranks (gloo): rank 0's metric picks the epoch for both, and the DDP test (users split over the
    ranks) equals the best validation value. Measured: val 0.287 / 0.315 / 0.248 / 0.253, test 0.315 (epoch 1)."""
    from tests.conftest import zoo_subprocess

    proc = zoo_subprocess(
        "train", "experiment=lightgcn", "data=synthetic_graph", "trainer=ddp", "trainer.devices=2",
        "trainer.accelerator=cpu", "logger=csv", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=1",
        "data.batch_size=256", f"runs_root={tmp_path}/runs", "model.optimizer.lr=0.5",
        "checkpoint.monitor=val/recall@20", "checkpoint.test_on=best", "progress_bar=false", check=True, timeout=400)
    with open(next((tmp_path / "runs" / "lightgcn").glob("*/metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    val = [(int(r["epoch"]), float(r["val/recall@20"])) for r in rows if r.get("val/recall@20")]
    test = [float(r["test/recall@20"]) for r in rows if r.get("test/recall@20")]
    best_epoch, best_value = max(val, key=lambda e: e[1])
    assert best_epoch < val[-1][0] and test == [pytest.approx(best_value)]
    assert (proc.stdout + proc.stderr).count(f"test on the best weights: epoch {best_epoch}") == 1  # rank 0 only
