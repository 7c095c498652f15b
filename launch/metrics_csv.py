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


class KeptMetricsWriter(ExperimentWriter):
    """Appends to an existing metrics.csv instead of deleting it. When a fit resumes from a checkpoint at global step
    `resume_step`, the rows logged at or after that step (the part of an interrupted run after its last checkpoint,
    which the resumed run trains and logs again) are dropped; test rows are kept (a test at the end of an earlier
    budget is part of the run's history), except when the run starts again from step 0 (`resume_step` 0: its
    checkpoint is gone), which keeps nothing of the earlier attempt. A last line torn by a kill (no line end) is
    dropped too. The file is rewritten (atomically) only when the first new rows are saved, so a resume that fails
    before (in Lightning's restore) leaves it as it was. Rows that do not fit the header are a one-line error."""

    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        self._kept_rows: list[dict[str, str]] | None = None  # the rewrite due before the first save
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

    def save(self) -> None:
        if self._kept_rows is not None and self.metrics:
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self._kept_rows)
            write_atomic(Path(self.metrics_file_path), text.getvalue())
            self._kept_rows = None
        super().save()

    def _replayed(self, row: dict[str, str]) -> bool:
        try:
            step = int(float(row.get("step") or ""))
        except ValueError:
            return False
        is_test = any(key.startswith("test/") and value not in ("", None) for key, value in row.items())
        return step >= self.resume_step and (not is_test or self.resume_step == 0)


class RunCSVLogger(CSVLogger):
    """CSVLogger writing `<run>/metrics.csv` through KeptMetricsWriter."""

    def __init__(self, save_dir: str, resume_step: int | None = None) -> None:
        super().__init__(save_dir=save_dir, name="", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> KeptMetricsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptMetricsWriter(log_dir=self.log_dir, resume_step=self.resume_step)
        return self._experiment
