"""The run's metrics.csv, kept across restarts: Lightning's CSVLogger deletes an existing metrics.csv when it starts,
so a resumed or requeued run (and `stage=test` of a trained run) would lose the curve logged before."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from launch.errors import UserError
from launch.runs import write_atomic
from launch.wandb_logger import TestedAtStep


class KeptMetricsWriter(ExperimentWriter):
    """Appends to an existing metrics.csv instead of deleting it. When a fit resumes from a checkpoint at global step
    `resume_step`, the rows logged at or after that step (the part of an interrupted run after its last checkpoint,
    which the resumed run trains and logs again) are dropped; test rows are kept (a test at the end of an earlier
    budget is part of the run's history), except when the run starts again from step 0 (`resume_step` 0: its
    checkpoint is gone), which keeps nothing of the earlier attempt. A last line torn by a kill (no line end) is
    dropped too. The file is rewritten (atomically) only when the first new rows are saved, so a resume that fails
    before (in Lightning's restore) leaves it as it was. Rows that do not fit the header are a one-line error. A
    resumed fit that tests at the step of an earlier test row (a restart killed after its test was logged, before it
    finished: nothing more to train) replaces that row rather than repeating it."""

    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        self._kept_rows: list[dict[str, str]] | None = None  # the rewrite due before the first save
        self._earlier_test_steps: set[int | None] = set()  # steps of the test rows kept from earlier attempts
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            text = file.read()
        torn = bool(text) and not text.endswith("\n")
        if torn:
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        keys, rows = list(reader.fieldnames or []), list(reader)
        for number, row in enumerate(rows, start=2):
            if None in row or None in row.values():
                raise UserError(f"{self.metrics_file_path} line {number} does not fit its header ({len(keys)} "
                                f"columns): repair or move the file away to resume the run")
        self.metrics_keys = keys
        kept = rows if self.resume_step is None else [row for row in rows if not self._replayed(row)]
        if torn or len(kept) < len(rows):
            self._kept_rows = kept
        if self.resume_step:
            self._earlier_test_steps = {_step(row) for row in kept if _logs(row, "test/")}

    def save(self) -> None:
        repeated = {_step(row) for row in self.metrics if _logs(row, "test/")} & self._earlier_test_steps
        if repeated:  # a restart tests the same weights again (it was killed after its test row, a requeue)
            self._kept_rows = [row for row in self._rows_so_far()
                               if not (_logs(row, "test/") and _step(row) in repeated)]
            self._earlier_test_steps -= repeated
        if self._kept_rows is not None and self.metrics:
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self._kept_rows)
            write_atomic(Path(self.metrics_file_path), text.getvalue())
            self._kept_rows = None
        super().save()

    def _rows_so_far(self) -> list[dict[str, str]]:
        if self._kept_rows is not None:
            return self._kept_rows
        with open(self.metrics_file_path, newline="") as file:
            return list(csv.DictReader(file))

    def _replayed(self, row: dict[str, str]) -> bool:
        step = _step(row)
        if step is None:
            return False
        replays = getattr(self.resume_step, "replays_what_follows", False)
        if replays and step == self.resume_step - 1 and _logs(row, "val/"):
            # the checkpoint came before its batch's validation, which the resumed run runs (and logs) again: the
            # row of a run stopped after that validation logged it, before the checkpoint was saved again
            return True
        return step >= self.resume_step and (not _logs(row, "test/") or self.resume_step == 0)


def _step(row: dict) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except (TypeError, ValueError):
        return None


def _logs(row: dict, prefix: str) -> bool:
    """Whether the row holds a value of a `prefix` metric (val/, test/)."""
    return any(str(key).startswith(prefix) and value not in ("", None) for key, value in row.items())


class RunCSVLogger(TestedAtStep, CSVLogger):
    """CSVLogger writing `<run>/metrics.csv` through KeptMetricsWriter (a re-test's row at the tested step)."""

    def __init__(self, save_dir: str, resume_step: int | None = None) -> None:
        super().__init__(save_dir=save_dir, name="", version="")
        self.resume_step = resume_step

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(*self._at_tested_step(metrics, step))

    @property
    @rank_zero_experiment
    def experiment(self) -> KeptMetricsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptMetricsWriter(log_dir=self.log_dir, resume_step=self.resume_step)
        return self._experiment
