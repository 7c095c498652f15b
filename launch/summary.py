"""`zoo runs`: the runs under a runs root as one table (what differs between them and their final metrics), or
aggregated over seeds (mean +- sample std and n per setting) - the table a sweep is run for."""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from launch.errors import UserError, one_line

# never shown as "what differs": bookkeeping that differs between any two runs, and how a run was watched (a
# progress bar, waiting for a SLURM job), which changes nothing it computes
IGNORED_KEYS = ("run_id", "runs_root", "progress_bar", "launcher.wait", "logger")
# an experiment's claim texts and paper block describe it, and the loggers watch it (W&B project, group, tags, mode):
# they are no settings
DESCRIPTIVE = ("claims.", "paper.", "logger.")


@dataclass
class RunRecord:
    """One run directory: its resolved config (flattened to dotted keys) and final metrics (None: unfinished)."""

    experiment: str
    run_id: str
    path: Path
    config: dict[str, object]
    metrics: dict[str, float] | None = None
    created: str = ""
    job: str | None = None  # the run's latest SLURM job (slurm/jobs.txt)
    job_state: str | None = None  # its state from sacct, when known

    @property
    def status(self) -> str:
        if self.metrics is not None:
            return "done"
        if self.job and self.job_state and self.job_state != "COMPLETED":  # running, pending, failed, cancelled...
            return f"{self.job_state.lower()} (job {self.job})"
        if self.job and not self.job_state:  # neither sacct nor squeue knows it: it may still be running
            return f"state unknown (job {self.job})"
        return "stopped" if (self.path / "checkpoints" / "last.ckpt").exists() else "no checkpoint"


# the states of a job that is (or will be again) running: a second job on its run would write the same files
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT")


def slurm_states(jobs: list[str]) -> dict[str, str]:
    """The state of each SLURM job id from one `sacct` call; where sacct is missing or fails (no accounting, slurmdbd
    down), `squeue`'s, which knows only the jobs still queued or running. Jobs neither knows are left out."""
    if not jobs:
        return {}
    for command in (["sacct", "-n", "-P", "-X", "-j", ",".join(jobs), "-o", "JobID,State"],
                    ["squeue", "-h", "-j", ",".join(jobs), "-o", "%i|%T"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode != 0 and command[0] == "sacct":
            continue
        states = {}
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            if state.strip():
                states[job.strip()] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
        return states
    return {}


def run_jobs(run_dir: Path) -> list[str]:
    """The SLURM job ids of a run, oldest first (`slurm/jobs.txt`, one line per submission); [] for a local run."""
    jobs_file = run_dir / "slurm" / "jobs.txt"
    return jobs_file.read_text().split() if jobs_file.exists() else []


def job_log(run_dir: Path, job: str) -> Path | None:
    """submitit's stdout log of one of the run's jobs: in the run's `slurm/` folder, or for an element of a sweep (one
    job array) in the sweep's `sweep-<id>/slurm/` folder beside the runs; None when it is not (or no longer) there."""
    folders = [run_dir / "slurm", *sorted(run_dir.parent.glob("sweep-*/slurm"))]
    return next((log for folder in folders for log in sorted(folder.glob(f"{job}_*_log.out"))), None)


def active_job(run_dir: Path) -> tuple[str, str] | None:
    """(job id, state) of the run's latest SLURM job while it is queued, running or requeued; None when it has ended,
    or its state cannot be known (no SLURM here)."""
    jobs = run_jobs(run_dir)
    if not jobs:
        return None
    state = slurm_states(jobs[-1:]).get(jobs[-1])
    return (jobs[-1], state) if state in ACTIVE_STATES else None


@dataclass
class Table:
    """Rows of strings under `columns`; `numbers` keeps the raw values for the CSV (mean, std, n per metric);
    `settings` the config keys shown (for an aggregated table: those it groups by), `metrics` the metrics shown,
    `over` the key an aggregated table averages over (None: one row per run)."""

    columns: list[str]
    settings: list[str]
    metrics: list[str]
    over: str | None = None
    rows: list[list[str]] = field(default_factory=list)
    numbers: list[dict[str, object]] = field(default_factory=list)


def _flatten(tree, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
    else:
        flat[prefix[:-1]] = json.dumps(tree) if isinstance(tree, list) else tree
    return flat


def collect(root: Path, experiment: str | None = None, sweep: str | None = None,
            only: Collection[tuple[str, str]] | None = None) -> list[RunRecord]:
    """Every run under `root` (`<root>/<experiment>/<run_id>/config.yaml`), oldest first; `sweep` keeps the runs of
    one `zoo train -m` sweep (their ids are `<sweep_id>-<i>`), `only` the runs of these (experiment directory, run id)
    pairs (a sweep over run ids the user named)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"no runs root at {root}")
    pattern = f"{experiment}/*/config.yaml" if experiment else "*/*/config.yaml"
    records = []
    for config_file in sorted(root.glob(pattern)):
        run_dir = config_file.parent
        if sweep and not re.fullmatch(re.escape(sweep) + r"-\d+", run_dir.name):  # not a longer id's prefix
            continue
        if only is not None and (run_dir.parent.name, run_dir.name) not in only:
            continue
        final = run_dir / "final_metrics.json"
        try:
            config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
        except Exception as err:  # noqa: BLE001 - one broken run (a torn file) does not hide the others
            _skip(run_dir, config_file, err)
            continue
        try:
            metrics = json.loads(final.read_text()) if final.exists() else None
            if final.exists() and not isinstance(metrics, dict):
                raise ValueError(f"not a mapping of metrics ({type(metrics).__name__})")
        except (OSError, ValueError) as err:
            _skip(run_dir, final, err)
            continue
        created = _created(run_dir / "meta.json")
        jobs = run_jobs(run_dir)
        records.append(RunRecord(run_dir.parent.name, run_dir.name, run_dir, _flatten(config), metrics, created,
                                 jobs[-1] if jobs else None))
    if not records:
        what = f"experiment '{experiment}'" if experiment else "any experiment"
        known = sorted({p.parent.parent.name for p in root.glob("*/*/config.yaml")})
        raise UserError(f"no runs of {what}{f' in sweep {sweep}' if sweep else ''} under {root}"
                        + (f" (experiments there: {', '.join(known)})" if known else ""))
    states = slurm_states(sorted({r.job for r in records if r.job and r.metrics is None}))
    for r in records:
        r.job_state = states.get(r.job) if r.job else None
    return sorted(records, key=lambda r: (r.created, r.run_id))


def _skip(run_dir: Path, path: Path, err: Exception) -> None:
    print(f"zoo runs: skipping {run_dir}: {path.name} is unreadable ({one_line(err, 120)})", file=sys.stderr)


def _created(meta: Path) -> str:
    """The run's creation time from meta.json (provenance only: missing or unreadable sorts first, no error)."""
    try:
        return str(json.loads(meta.read_text()).get("created", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def varying_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose value differs between runs of one experiment (a value that only embeds the run id does not
    count); what differs only between experiments (their models and data) is the experiment column's."""
    def comparable(record: RunRecord, key: str):
        value = record.config.get(key, "<unset>")
        return value.replace(record.run_id, "<run>") if isinstance(value, str) else value

    by_experiment: dict[str, list[RunRecord]] = {}
    for record in records:
        by_experiment.setdefault(record.experiment, []).append(record)
    keys = sorted({key for record in records for key in record.config})
    return [key for key in keys if key not in IGNORED_KEYS and not key.startswith(DESCRIPTIVE)
            and any(len({json.dumps(comparable(r, key), default=str) for r in group}) > 1
                    for group in by_experiment.values())]


def default_metrics(records: list[RunRecord]) -> list[str]:
    """Every test metric of the finished runs (else their val metrics; a claim's metric may sort anywhere, so none
    is cut)."""
    names = sorted({name for r in records if r.metrics for name in r.metrics})
    for prefix in ("test/", "val/"):
        chosen = [n for n in names if n.startswith(prefix)]
        if chosen:
            return chosen
    return [n for n in names if n not in ("epoch", "global_step")]


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values; mean nan for none)."""
    mean = statistics.fmean(values) if values else math.nan
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def mean_std_text(values: list[float]) -> str:
    """"mean ± std" of values over seeds ("-" for none, the value alone for one)."""
    mean, std = mean_std(values)
    return "-" if not values else _fmt(mean) if len(values) == 1 else f"{_fmt(mean)} ± {std:.2g}"


def per_run(records: list[RunRecord], keys: list[str], metrics: list[str]) -> Table:
    table = Table(["experiment", "run", "status", *keys, *metrics], keys, metrics)
    for r in records:
        values = [r.metrics.get(m, math.nan) if r.metrics else math.nan for m in metrics]
        table.rows.append([r.experiment, r.run_id, r.status, *(_fmt(r.config.get(k, "")) for k in keys),
                           *("-" if r.metrics is None else _fmt(v) for v in values)])
        table.numbers.append({"experiment": r.experiment, "run": r.run_id, "status": r.status,
                              **{k: r.config.get(k, "") for k in keys}, **dict(zip(metrics, values))})
    return table


def over_seeds(records: list[RunRecord], keys: list[str], metrics: list[str], over: str = "seed") -> Table:
    """One row per setting (the varying keys except `over`): mean +- sample std of each metric over the finished
    runs of that setting, and how many finished of how many."""
    # the key itself and keys that follow it in every run (data.seed: ${seed} in the saved, resolved config)
    group_keys = [k for k in keys if k != over and any(r.config.get(k) != r.config.get(over) for r in records)]
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.experiment, *(json.dumps(r.config.get(k), default=str) for k in group_keys)), []).append(r)
    table = Table(["experiment", *group_keys, "runs", *metrics], group_keys, metrics, over)
    for group in groups.values():
        done = [r for r in group if r.metrics is not None]
        cells, numbers = [], {}
        for m in metrics:
            values = [float(r.metrics[m]) for r in done if m in r.metrics]
            mean, std = mean_std(values)
            cells.append(mean_std_text(values))
            numbers.update({f"{m} mean": mean, f"{m} std": std, f"{m} n": len(values)})
        first = group[0]
        table.rows.append([first.experiment, *(_fmt(first.config.get(k, "")) for k in group_keys),
                           f"{len(done)}/{len(group)}", *cells])
        table.numbers.append({"experiment": first.experiment, **{k: first.config.get(k, "") for k in group_keys},
                              "finished": len(done), "runs": len(group), **numbers})
    return table


def build(records: list[RunRecord], metrics: list[str] | None = None, over: str | None = None) -> Table:
    """The per-run table, or with `over` (a config key, e.g. seed) the table aggregated over that key."""
    keys = varying_keys(records)
    if metrics:
        logged = {name for r in records if r.metrics for name in r.metrics}
        missing = [m for m in metrics if m not in logged]
        if missing:
            import difflib

            close = difflib.get_close_matches(missing[0], sorted(logged), n=1)
            raise UserError(f"--metric {missing[0]}: no run has it in its final metrics"
                            + (f" (did you mean '{close[0]}'?)" if close else ""))
    metrics = metrics or default_metrics(records)
    if over:
        if not any(over in r.config for r in records):
            import difflib

            close = difflib.get_close_matches(over, sorted({k for r in records for k in r.config}), n=1)
            raise UserError(f"--over {over}: no run has a config key '{over}'"
                            + (f" (did you mean '{close[0]}'?)" if close else ""))
        return over_seeds(records, keys, metrics, over)
    return per_run(records, keys, metrics)


def print_table(table: Table, title: str) -> None:
    from rich.table import Table as RichTable

    rich_table = RichTable(title=title)
    for column in table.columns:
        rich_table.add_column(column, justify="left" if column in ("experiment", "run", "status") else "right")
    for row in table.rows:
        rich_table.add_row(*row)
    wide_console(table.columns, table.rows).print(rich_table)


def wide_console(columns: list[str], rows: list[list[str]]):
    """A console wide enough for every cell of a table: run ids, metric names and numbers were cut ("20261206-064…",
    "0.8…") on a narrow or piped console (rich assumes 80 columns when stdout is not a terminal)."""
    from rich.console import Console

    widths = [max([len(c)] + [len(str(row[i])) for row in rows]) for i, c in enumerate(columns)]
    return Console(width=max(120, sum(w + 3 for w in widths) + 1))


def can_plot(table: Table) -> bool:
    """An aggregated table (`over_seeds`) with a setting to put on the x axis and a metric to plot."""
    return bool(table.over and table.settings and table.metrics and table.numbers)


def plot(table: Table, path: Path) -> None:
    """One panel per metric against the first setting key of an aggregated table (mean, sample-std error bars), one
    line per value of the other setting keys; the PNG is written to a temporary file first, then renamed."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problem = plot_problem(table)
    if problem:
        raise UserError(problem)
    metrics = table.metrics
    x_key, line_keys = table.settings[0], table.settings[1:]
    lines: dict[tuple, list[dict]] = {}  # (experiment, the other settings' values as text): rows
    for row in table.numbers:
        lines.setdefault((row["experiment"], *(_fmt(row[k]) for k in line_keys)), []).append(row)
    # numbers first, in order; then other values (strings, None, lists) by their text
    def text(value) -> str:  # a hashable key for any config value (lists and dicts included)
        return json.dumps(value, default=str)

    xs = sorted({text(row[x_key]): row[x_key] for row in table.numbers}.values(),
                key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
    position = {text(v): i for i, v in enumerate(xs)}
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, rows in lines.items():
            rows = sorted(rows, key=lambda r: position[text(r[x_key])])
            x = [r[x_key] if numeric else position[text(r[x_key])] for r in rows]
            ax.errorbar(x, [r[f"{metric} mean"] for r in rows],
                        yerr=[0.0 if math.isnan(r[f"{metric} std"]) else r[f"{metric} std"] for r in rows],
                        marker="o", capsize=3, label=", ".join(f"{k}={v}" for k, v in zip(line_keys, label[1:]))
                        or label[0])
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        elif all(isinstance(v, int) for v in xs):
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(x_key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if len(lines) > 1:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        fig.savefig(tmp, dpi=120)
        _replace(tmp, path)
    finally:
        plt.close(fig)


def plot_problem(table: Table) -> str | None:
    """Why `table` cannot be plotted (a one-line reason), or None."""
    if not table.settings:
        return "--plot needs a setting that differs between the runs (besides the aggregated key)"
    if not can_plot(table):
        return "--plot needs finished runs with final metrics, aggregated with --over"
    return None


def _replace(tmp: Path, path: Path) -> None:
    """Rename a written temporary file over `path`; a failure is one line and leaves no temporary file."""
    try:
        tmp.replace(path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(table: Table, path: Path) -> None:
    """The raw numbers (not the rounded strings) as CSV; written to a temporary file first, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in table.numbers for key in row))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table.numbers)
    _replace(tmp, path)
