"""SIGTERM (a SLURM preemption or time limit, `kill`, a container stop): every rank stops at the same batch, and
the run's last.ckpt is saved at the training batch it stops after.

Lightning 2.6 answers SIGTERM with a collective inside the signal handler (`_SignalConnector._sigterm_notifier_fn`
broadcasts a flag from rank 0). Python runs a handler between two bytecodes of the main thread, so a rank whose
handler runs while its peer waits in another collective (the gradient all-reduce, a barrier) starts a mismatched
one: both ranks wait for ever. Seen here with 2 gloo ranks: `kill -TERM` on a local `zoo train trainer=ddp
trainer.devices=2` run, or on the tasks of a SLURM job, hung until SIGKILL (py-spy: rank 0 in the all-reduce of a
`reduce_boolean_decision`, rank 1 in the handler's broadcast on top of the barrier of the same call). Its checks after
the handler read each rank's own flag, so ranks that saw the signal on either side of a check also stopped at
different batches, and the late rank failed in the next collective with a traceback (Lightning-AI/pytorch-lightning
#20806 describes the same race).

Here the handler only records the request (and forwards the signal to the local child ranks that Lightning's launcher
started, as Lightning does). `StopTogetherOnSigterm` makes it a decision at the next batch end, the same batch on
every rank (any rank's request counts: one all-reduce of a flag at each batch that ends an optimizer step under DDP,
in place of Lightning's per-batch broadcast of rank 0's flag, which `launch.fit_loop`'s epoch loop skips), by setting
`trainer.received_sigterm`, which Lightning's loops then act on together: a training batch ends with last.ckpt saved
at it (`RunCheckpoint` saves when `trainer.received_sigterm` is set; only batches that finish an optimizer step are
stop points, never the middle of a gradient-accumulation window), then the fit raises `SIGTERMException` (status 143
from `zoo`, one line per rank); a validation due after that batch stops after its first batch in one process and runs
again, in full, on resume (`launch.fit_loop`), and runs in full first under DDP (see `on_validation_start`). A
validation that is running when the signal comes runs to its end first (the next training batch is the stop point: the
state a resume needs is a batch's end). A stand-alone validation or test (`zoo eval`, the test after the fit) in one
process stops after the batch it is at (there is nothing to save); under DDP it runs to its end (its loaders may give
the ranks different numbers of batches, so there is no common batch to agree at). A resumed run (the same run id)
continues as the uninterrupted one.
"""
from __future__ import annotations

import logging
import os

import lightning as L
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger("paperzoo")


class AgreedSigtermConnector(_SignalConnector):
    """Lightning's signal connector whose SIGTERM handler makes no collective call: it records the request
    (`requested`, kept across the stages of one process: a signal during the fit's last moments stops the test that
    follows) and forwards the signal to the launcher's child processes once."""

    def __init__(self, trainer) -> None:
        super().__init__(trainer)
        self.requested = False

    def _sigterm_notifier_fn(self, signum, _frame) -> None:
        if not self.requested:
            # os.write: a print here could interrupt a print of the main thread ("reentrant call")
            os.write(2, f"[rank {self.trainer.global_rank}] SIGTERM: stopping after the current step, with the other "
                        f"ranks\n".encode())
            launcher = self.trainer.strategy.launcher
            if launcher is not None:  # Lightning's subprocess launcher: the local child ranks get the signal too
                launcher.kill(signum)
        self.requested = True


class StopTogetherOnSigterm(L.Callback):
    """Turns a recorded SIGTERM into a stop that every rank takes at the same batch end (see the module docstring).
    Installs `AgreedSigtermConnector` in `setup`, before Lightning registers its signal handlers for the stage."""

    def __init__(self) -> None:
        self._held_back = False  # the agreed stop, hidden from the validation that follows its batch (DDP)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if type(trainer._signal_connector) is _SignalConnector:
            trainer._signal_connector = AgreedSigtermConnector(trainer)

    # Under DDP the validation that follows the stop's batch runs in full: Lightning's validation loop stops each rank
    # after its current batch unless it is the rank's last, and evaluation loaders may give the ranks different
    # numbers of batches (`UserBatches`, `EvalShardSampler`): a rank with one batch would wait at the validation's
    # end for a rank that has left (a traceback with gloo, a hang with NCCL). Hidden during it, the stop is taken
    # right after it (`on_advance_end`, or the fit loop's epoch end).
    def on_validation_start(self, trainer, pl_module) -> None:
        connector = trainer._signal_connector
        if trainer.world_size > 1 and isinstance(connector, AgreedSigtermConnector) and connector.received_sigterm:
            connector.received_sigterm, self._held_back = False, True

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._held_back:
            trainer._signal_connector.received_sigterm, self._held_back = True, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.fit_loop.epoch_loop._should_accumulate():  # a batch that stepped the optimizer
            self._agree(trainer, "training step")

    # Evaluation batches are stop points for one process only: an evaluation loader may give DDP ranks different
    # numbers of batches (a sharded set of meshes or fields), so a per-batch collective there would hang. Inside a fit
    # the next training step is the stop point anyway.
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.world_size == 1 and trainer.state.fn != TrainerFn.FITTING:
            self._agree(trainer, "validation batch")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.world_size == 1:
            self._agree(trainer, "test batch")

    @staticmethod
    def _agree(trainer, where: str) -> None:
        connector = trainer._signal_connector
        if not isinstance(connector, AgreedSigtermConnector) or connector.received_sigterm:
            return
        stop = connector.requested
        if trainer.world_size > 1:  # every rank calls this at the same batches: one decision, the same everywhere
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            connector.received_sigterm = True
            if trainer.is_global_zero:
                log.warning("SIGTERM: every rank stops after this %s (global step %d)", where, trainer.global_step)
