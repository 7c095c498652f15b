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

Its epoch loop (`ValidationFirstEpochLoop`) runs, on resume, a validation that a checkpoint saved at a batch's end
(`on_train_batch_end`: the epoch's last batch, a `val_check_interval` batch) came before. Lightning skips it (it takes
the checkpoint for one saved after that validation), so a run preempted during that validation lost it: no row in
metrics.csv, unseen by early stopping and `checkpoint.test_on=best`, and for the epoch's last batch also the epoch's
end (`on_train_epoch_end`) and the next epoch's start hooks. `RunCheckpoint` saves such a batch again after its
validation; that second save (batch completed, validation done) resumes as before.
"""
from __future__ import annotations

import json
from typing import Any

import lightning as L
from lightning.pytorch.loops.fit_loop import RestartStage, _FitLoop
from lightning.pytorch.loops.loop import _Loop
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

# the Lightning (2.6) names `ValidationFirstEpochLoop` relies on, besides the progress counters
_VALIDATION_FIRST_NEEDS = ("update_restart_stage", "_should_check_val_fx", "on_advance_end")


def saved_at_batch_end(ready: int, started: int, processed: int, completed: int) -> bool:
    """The epoch loop's batch counters of a checkpoint saved in `on_train_batch_end`: the batch is processed but
    counted completed only after the hooks."""
    return ready == started == processed == completed + 1


class ValidationFirstEpochLoop(_TrainingEpochLoop):
    """`_TrainingEpochLoop` that, restored from a checkpoint saved at the end of a batch that a validation follows,
    runs that validation first (before the next batch), as the uninterrupted run did after that batch.

    Lightning restores such a checkpoint as one saved after the batch's validation (its `advance` skips a validation
    due on restart, and at an epoch's last batch its fit loop moves straight on to the next epoch). The restored
    progress tells the two apart: a save in `on_train_batch_end` has the batch processed and not yet completed, one
    after the validation (`on_validation_end`, `on_train_epoch_end`) has it completed. This loop completes the batch
    (the state Lightning's own loop has at the start of that validation, where it restarts as `RESTARTED_ON_LAST`:
    the fit loop stays in the epoch, `_batches_that_stepped` is counted once, by `on_advance_end`) and lets
    `on_advance_end` run the validation in full, from the same global random state (`ResumeRandomState` puts the
    checkpoint's back in `on_train_start`), so its loader's base seed and what follows are the uninterrupted run's.
    A time-based `val_check_interval` is not looked at (the due check reads the clock): such a validation is
    skipped, as by Lightning."""

    _validate_first = False  # restored before a validation that this loop runs before any batch

    def restored_before_validation(self) -> bool:
        """The loaded state is a batch's end, saved before what follows that batch in the uninterrupted run: the
        validation due after it, or the epoch's end after its last batch (with its validation when due: a run stopped
        in `on_train_epoch_end` lost those hooks too); or this loop has completed that batch and is about to run
        them."""
        if self._validate_first:
            return True
        if not self.restarting:
            return False
        total, trainer = self.batch_progress.total, self.trainer
        if not saved_at_batch_end(total.ready, total.started, total.processed, total.completed):
            return False
        if self.batch_progress.is_last_batch:  # the epoch's end (and its validation, when due) still to run
            return True
        return (trainer.val_check_batch is not None  # None before the fit loop's setup_data
                and getattr(trainer, "_val_check_time_interval", None) is None
                and self._should_check_val_fx(trainer.fit_loop._data_fetcher))

    def update_restart_stage(self) -> None:
        # called once per fit, by the fit loop's reset (after its setup_data: the validation interval is known)
        self._validate_first = False
        if self.restored_before_validation():
            self.batch_progress.increment_completed()
            self._validate_first = True
        super().update_restart_stage()

    def _broadcast_sigterm_tensor(self) -> None:
        # Lightning's per-batch broadcast of rank 0's SIGTERM flag: with `launch.termination`'s connector the ranks
        # agree on a stop at batch ends instead (one collective per step either way)
        from launch.termination import AgreedSigtermConnector

        if not isinstance(self.trainer._signal_connector, AgreedSigtermConnector):
            super()._broadcast_sigterm_tensor()

    def advance(self, data_fetcher) -> None:
        if self._validate_first:
            self._validate_first = False
            self.val_loop.restarting = False  # a whole validation, from its first batch
            return  # `on_advance_end` runs the validation (when due), then the loop goes on as after that batch
        super().advance(data_fetcher)


class EpochEndResumeFitLoop(_FitLoop):
    """`_FitLoop` whose restore from a finished epoch's end starts the next epoch, also under `max_steps`, and whose
    checkpoint keeps `trainer.should_stop`."""

    stop_setting: str = "null"  # the run's early-stopping setting, as JSON (`use_epoch_end_resume_loop`)

    @property
    def done(self) -> bool:
        # restored before the validation of the budget's last batch (`trainer.max_steps`): that validation and the
        # epoch's end run first, as in the uninterrupted run (Lightning's loop ends the fit at once)
        epoch_loop = self.epoch_loop
        if (self.restarting and isinstance(epoch_loop, ValidationFirstEpochLoop)
                and epoch_loop.restored_before_validation()):
            return False
        return super().done

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
    """Give `trainer` an `EpochEndResumeFitLoop` with a `ValidationFirstEpochLoop` (keeping their limits); call
    before `fit`. Only on a Lightning whose fit loop resumes an epoch-based run at an epoch's end
    (`RestartStage.RESUMED_ON_EPOCH_END`, Lightning 2.5 on): the loop hands iteration-based runs to that path;
    without it, Lightning's loops are kept.
    `stop_setting`: the run's early-stopping configuration (a plain dict, or None), under which a restored stop
    holds."""
    if not hasattr(RestartStage, "RESUMED_ON_EPOCH_END"):
        return
    old = trainer.fit_loop
    loop = EpochEndResumeFitLoop(trainer, min_epochs=old.min_epochs, max_epochs=old.max_epochs)
    loop.stop_setting = json.dumps(stop_setting, sort_keys=True, default=str)
    old_epoch_loop = old.epoch_loop
    if all(hasattr(_TrainingEpochLoop, name) for name in _VALIDATION_FIRST_NEEDS):
        loop.epoch_loop = ValidationFirstEpochLoop(trainer, min_steps=old_epoch_loop.min_steps,
                                                   max_steps=old_epoch_loop.max_steps)
    else:  # another Lightning: its own epoch loop (a validation stopped by a preemption is then skipped on resume)
        loop.epoch_loop = old_epoch_loop
    trainer.fit_loop = loop
