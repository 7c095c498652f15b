"""`python tests/sigterm_one_rank.py <zoo train overrides>`: a `zoo train` run in which one DDP rank sends itself
SIGTERM as the first training batch after SIGTERM_STEP optimizer steps starts (env SIGTERM_RANK, SIGTERM_STEP), for
tests/test_termination.py. Lightning's launcher starts the other local ranks with this same script, so every rank
has the callback; only the chosen one signals. Exits as `zoo train` does (143 after SIGTERM)."""
from __future__ import annotations

import os
import signal
import sys

import lightning as L

from launch import config as zconfig
from launch import train
from launch.errors import is_sigterm


class SigtermAtStep(L.Callback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step, self.sent = rank, step, False

    def on_train_batch_start(self, trainer, *args) -> None:
        if not self.sent and trainer.global_rank == self.rank and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    callback = SigtermAtStep(int(os.environ["SIGTERM_RANK"]), int(os.environ["SIGTERM_STEP"]))
    try:
        train.run(zconfig.compose(sys.argv[1:]), extra_callbacks=[callback])
    except SystemExit as stop:
        if is_sigterm(stop):
            sys.exit(143)
        raise
