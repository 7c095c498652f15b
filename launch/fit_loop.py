"""Lightning's fit loop with an exact resume from an epoch-end checkpoint of an iteration-based run.

Lightning (2.6) marks every fit restored with `trainer.max_steps` set as restarting inside its last epoch, also when
the checkpoint was saved at that epoch's end (the default `every_n_epochs` checkpoint, saved in
`on_train_epoch_end`). The restored run then re-enters the finished epoch: it trains one more batch there (its
epoch loop waits for a validation that was not due) and runs the epoch's end again, so an epoch-interval scheduler
steps twice and `on_train_epoch_end` is called twice (related: Lightning-AI/pytorch-lightning#19617). An
epoch-based run (`max_steps=-1`) restored from the same checkpoint starts the next epoch, as it should.

Lightning forces the restart for iteration-based runs because `max_steps` can end an epoch early: a checkpoint
taken at that epoch's end must continue the epoch. `EpochEndResumeFitLoop` keeps that, and treats a checkpoint of
an epoch whose batches all ran (its last batch seen) as the epoch-based run does.

The loop also carries `trainer.should_stop` through the checkpoint. Lightning does not save it, so a run that early
stopping (or a model, e.g. causal PINN's last time window) asked to stop, restored from the checkpoint written at that
stop (for instance when the job is preempted during the test that follows), trained on where the straight run ended.
The stop is restored only under the early-stopping setting it was asked for under: a resume that changes or drops
`early_stopping` (to train on past the stop) starts without it.
"""
from __future__ import annotations

import json
from typing import Any

import lightning as L
from lightning.pytorch.loops.fit_loop import RestartStage, _FitLoop
from lightning.pytorch.loops.loop import _Loop


class EpochEndResumeFitLoop(_FitLoop):
    """`_FitLoop` whose restore from a finished epoch's end starts the next epoch, also under `max_steps`, and whose
    checkpoint keeps `trainer.should_stop`."""

    stop_setting: str = "null"  # the run's early-stopping setting, as JSON (`use_epoch_end_resume_loop`)

    @property
    def restarting(self) -> bool:
        return self._restarting

    @restarting.setter
    def restarting(self, restarting: bool) -> None:
        if restarting and self._iteration_based_training() and self._restored_after_complete_epoch():
            _Loop.restarting.fset(self, False)  # the epoch-based decision: nothing of that epoch is left to run
        else:
            _FitLoop.restarting.fset(self, restarting)

    def on_save_checkpoint(self) -> dict:
        return {**super().on_save_checkpoint(), "should_stop": bool(self.trainer.should_stop),
                "stop_setting": self.stop_setting}

    def on_load_checkpoint(self, state_dict: dict) -> None:
        super().on_load_checkpoint(state_dict)
        # restored after `fit` cleared it, so the loop's `done` holds as it did when the checkpoint was saved
        if state_dict.get("should_stop") and state_dict.get("stop_setting", "null") == self.stop_setting:
            self.trainer.should_stop = True

    def _restored_after_complete_epoch(self) -> bool:
        """The loaded state is an epoch's end (processed, not yet completed) after the epoch's last batch (not an
        epoch cut short by max_steps)."""
        current = self.epoch_progress.current
        at_epoch_end = current.ready == current.started == current.processed == current.completed + 1
        return at_epoch_end and bool(self.epoch_loop.batch_progress.is_last_batch)


def use_epoch_end_resume_loop(trainer: L.Trainer, stop_setting: Any = None) -> None:
    """Give `trainer` an `EpochEndResumeFitLoop` (keeping its limits and epoch loop); call before `fit`. Only on a
    Lightning whose fit loop resumes an epoch-based run at an epoch's end (`RestartStage.RESUMED_ON_EPOCH_END`,
    Lightning 2.5 on): the loop hands iteration-based runs to that path; without it, Lightning's loop is kept.
    `stop_setting`: the run's early-stopping configuration (a plain dict, or None), under which a restored stop
    holds."""
    if not hasattr(RestartStage, "RESUMED_ON_EPOCH_END"):
        return
    old = trainer.fit_loop
    loop = EpochEndResumeFitLoop(trainer, min_epochs=old.min_epochs, max_epochs=old.max_epochs)
    loop.stop_setting = json.dumps(stop_setting, sort_keys=True, default=str)
    loop.epoch_loop = old.epoch_loop
    trainer.fit_loop = loop
