"""The `zoo` command: train, eval, list, check, bench, status, runs."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from launch.errors import UserError, is_sigterm, one_line

USAGE = """zoo <command> [args]

  zoo train experiment=<slug> [group=option] [key=value ...]   train locally or (launcher=slurm) on SLURM
  zoo train ... --cfg job                                      print the resolved config (and sbatch resources)
  zoo train -m experiment=<slug> key=a,b,c                     a sweep (one SLURM job array with launcher=slurm)
  zoo eval ckpt=<path/to/ckpt> [out=F.json] [key=value ...]    test metrics from a checkpoint and its saved config
  zoo list                                                     every paper, its data and the state of its claims
  zoo check <slug>[/<variant>] [--claim NAME] [k=v ...] | --all  rerun the papers' small-scale claims
  zoo check ... --seeds 0,1,2 | 0-4                             each claim at several seeds: how many pass, spread
  zoo check ... --launcher slurm [launcher.k=v ...]             the same as SLURM jobs (one per paper and seed)
  zoo bench <slug> | --all [--quick]                           speed and memory benchmarks (ratios)
  zoo status <run_id | run_dir> [--root R]                     progress, checkpoint, metrics, SLURM jobs of a run
  zoo runs [<experiment>] [--sweep ID] [--over seed] [--csv F]  runs as a table: what differs, final metrics
           [--metric M ...] [--plot F.png] [--root R]           (--over seed: mean ± std over seeds per setting;
                                                               --plot F.png: those against the first setting)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    handlers = {"train": cmd_train, "eval": cmd_eval, "list": cmd_list, "check": cmd_check, "bench": cmd_bench,
                "status": cmd_status, "runs": cmd_runs}
    if command not in handlers:
        import difflib

        close = difflib.get_close_matches(command, list(handlers), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"zoo: unknown command '{command}'{hint}; run `zoo --help`", file=sys.stderr)
        return 2
    finished = False
    _MADE_DIRS.clear()
    try:
        code = handlers[command](rest) or 0
        finished = True
        return code
    except UserError as err:
        print(f"zoo {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zoo {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `zoo ... | head`: the reader has gone; no traceback (and none at exit's flush)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as stop:
        # Lightning ends a fit on Ctrl-C with sys.exit(1) and on SIGTERM with an exception whose exit code is None
        # (status 0: a killed run would look finished); both leave last.ckpt for a restart with the same run_id
        if isinstance(stop.__context__, KeyboardInterrupt):
            print(f"zoo {command}: interrupted", file=sys.stderr)
            return 130
        if is_sigterm(stop):
            from launch.runs import global_rank

            rank = global_rank()
            print(f"zoo {command}{f' (rank {rank})' if rank else ''}: terminated (SIGTERM)", file=sys.stderr)
            return 143
        raise
    finally:
        if not finished:  # an error after --out was made leaves no empty folder behind
            _remove_empty_made_dirs()


_MADE_DIRS: list[Path] = []  # folders `writable_dir` created in this command, outermost first


def _remove_empty_made_dirs() -> None:
    for path in reversed(_MADE_DIRS):
        try:
            path.rmdir()  # only when empty
        except OSError:
            pass
    _MADE_DIRS.clear()


def writable_dir(path: Path | str, what: str) -> Path:
    """Make the output folder `path` (a command's `what`, e.g. --out) before any work: a one-line error when it
    cannot be made or written (or is given as an empty string: not the current folder), rather than a traceback
    after the work is done."""
    if isinstance(path, str) and not path.strip():
        raise UserError(f"{what}: empty path")
    path = Path(path)
    missing = [p for p in (path.absolute(), *path.absolute().parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
        _MADE_DIRS.extend(missing)
    except OSError as err:
        raise UserError(f"{what} {path}: cannot create it ({err.strerror or err})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: not writable")
    return path


def writable_file(target: str, what: str) -> Path:
    """An output file (`what`, e.g. --csv) checked before any work: a name (not empty, not a folder) in a folder that
    can be made and written (`writable_dir`)."""
    path = Path(target).expanduser()
    if not target.strip() or path.is_dir():
        given = f"{what}{target}" if what.endswith("=") else f"{what} {target}"
        raise UserError(f"{given}: give a file name (it is {'a folder' if target.strip() else 'empty'})")
    writable_dir(path.absolute().parent, what)
    return path


class _Parser(argparse.ArgumentParser):
    """A command's flags: a mistake is one line (exit 2), not the usage block; `zoo <command> --help` shows it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (`{self.prog} --help` lists the options)")


def _is_rank_zero() -> bool:
    from launch.runs import global_rank

    return global_rank() == 0


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        value = metrics[key]
        table.add_row(key, f"{value:.0f}" if key in ("global_step", "epoch") else f"{value:.4f}")
    Console(stderr=False).print(table)


TRAIN_USAGE = """zoo train [-m] experiment=<slug>[/<variant>] [group=option ...] [key=value ...] [--cfg job]

  experiment=<slug>      the paper (zoo list shows them); groups: trainer=cpu|gpu|ddp, launcher=local|slurm,
                         logger=wandb|csv|none, debug=fast|overfit; any key is overridable (model.x=..., data.y=...)
  run_id=<id>            resume that run from its last.ckpt (a resume may change trainer.*, launcher.*, logger)
  stage=fit|test|fit_test  test only: the run's last.ckpt (best-*.ckpt with checkpoint.test_on=best)
  -m k=a,b,c             a sweep: one run per combination (one SLURM job array with launcher=slurm)
  --cfg job              print the resolved config this command would run (and its sbatch resources with
                         launcher=slurm), then stop: nothing is trained, written or submitted
"""


def _pop_cfg_flag(args: list[str]) -> tuple[list[str], bool]:
    """Hydra's `--cfg job` (or `--cfg=job`): print the config instead of running it."""
    rest, show, i = [], False, 0
    while i < len(args):
        if args[i] == "--cfg" or args[i].startswith("--cfg="):
            value = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
            if value != "job":
                raise UserError(f"--cfg takes 'job' (the resolved config), got {value!r}")
            show, i = True, i + (1 if "=" in args[i] else 2)
            continue
        rest.append(args[i])
        i += 1
    return rest, show


def _show_config(cfg, overrides: list[str]) -> None:
    """`zoo train ... --cfg job`: the resolved config (a resumed run's: its saved config with this resume's
    changes), and with launcher=slurm the sbatch resources; nothing is created."""
    from omegaconf import OmegaConf

    from launch import runs, slurm

    if cfg.run_id:
        runs.check_run_id(cfg.run_id)
        if runs.saved_config(runs.run_of(cfg)) is None:
            _refuse_id_of_another_experiment(runs.run_of(cfg))
        else:
            given = os.environ.get(runs.RUN_ID_ENV)
            cfg = _resume_or_new(cfg, overrides, check_jobs=False)
            if given is None:  # the run id goes to DDP children of a run; this command starts none
                os.environ.pop(runs.RUN_ID_ENV, None)
    resources = slurm.resources(cfg) if cfg.launcher.name == "slurm" else None  # refused before anything is printed
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    if resources is not None:
        print(f"# sbatch resources (launcher=slurm; submitit's names): {resources}")


def _with_the_runs_experiment(overrides: list[str], multirun: bool = False) -> list[str]:
    """`zoo train run_id=X` (or `-m run_id=X,Y`, any sweep syntax) without experiment=: the runs' experiment, found
    under runs_root (one run of each id; a sweep's ids must share one experiment)."""
    from launch import config as zconfig
    from launch import runs

    given = {o.split("=", 1)[0].lstrip("+"): o for o in overrides if "=" in o}
    if "experiment" in given or "run_id" not in given:
        return overrides
    run_ids = zconfig.sweep_values(given["run_id"])
    if not any(run_ids) or (len(run_ids) > 1 and not multirun):
        return overrides  # a new run's own id; several without -m: the sweep's own error
    given = {key: o.split("=", 1)[1] for key, o in given.items()}
    root = Path(given.get("runs_root", "runs")).expanduser()
    experiments = {}
    for run_id in run_ids:
        runs.check_run_id(run_id)
        found = runs.dirs_with_id(root, run_id)
        if len(found) > 1:
            raise UserError(f"run id '{run_id}' is ambiguous: {', '.join(map(str, found))}: "
                            "add experiment=<one of them>")
        if not found:
            raise UserError(f"no run '{run_id}' under {root}/*/ (`zoo runs` lists them); "
                            "a new run needs experiment=<slug>")
        experiments[run_id] = runs.experiment_option(found[0].parent.name)
    if len(set(experiments.values())) > 1:
        listed = ", ".join(f"{i} ({e})" for i, e in experiments.items())
        raise UserError(f"the runs {listed} belong to different experiments: resume each with its own zoo train, "
                        "or add experiment=<slug>")
    return [f"experiment={next(iter(experiments.values()))}", *overrides]


def cmd_train(args: list[str]) -> int:
    from launch import config as zconfig
    from launch import runs

    if any(a in ("-h", "--help") for a in args):
        print(TRAIN_USAGE)
        return 0
    args, show = _pop_cfg_flag(args)
    multirun = bool(args) and args[0] in ("-m", "--multirun")
    overrides = _with_the_runs_experiment(args[1:] if multirun else args, multirun)
    combos = zconfig.expand_sweep(overrides)
    if len(combos) > 1 and not multirun:
        raise UserError("overrides with several values (a,b) need `zoo train -m ...` to run as a sweep")
    cfgs = [zconfig.compose(c) for c in combos]
    given = [cfg.run_id for cfg in cfgs if cfg.run_id]
    if len(cfgs) > 1 and len(set(given)) < len(given):
        raise UserError(f"run_id={given[0]} would put every run of the sweep in one run directory: omit it (the runs "
                        "are <sweep id>-<i>) or sweep it too (run_id=a,b,...)")
    named = [bool(cfg.run_id) for cfg in cfgs]  # ids the user gave (a sweep's own ids are new by construction)
    if len(cfgs) > 1:
        sweep_id = runs.new_run_id()
        for i, cfg in enumerate(cfgs):
            cfg.run_id = cfg.run_id or f"{sweep_id}-{i}"
            if (cfg.get("logger") or {}).get("wandb") and not cfg.logger.wandb.get("group"):
                cfg.logger.wandb.group = f"sweep-{sweep_id}"  # the sweep's runs side by side in the W&B UI
    else:
        sweep_id = None
    if show:
        for i, (cfg, combo) in enumerate(zip(cfgs, combos)):
            if len(cfgs) > 1:
                print(f"# run {i + 1} of {len(cfgs)}: {' '.join(combo)}")
            _show_config(cfg, combo)
        return 0
    cfgs = [_resume_or_new(cfg, combo) for cfg, combo in zip(cfgs, combos)]
    from launch import slurm, train

    slurm_job = cfgs[0].launcher.name == "slurm"
    for cfg in cfgs:  # every run of a sweep (or a job to submit) is checked before the first trains or is submitted
        if slurm_job:
            slurm.resources(cfg)  # resources that don't map onto SLURM first
        if len(cfgs) > 1 or slurm_job:
            train.preflight(cfg)  # settings, model and data options: not a failed job or a sweep stopped midway
        else:
            train.check_settings(cfg)  # a single local run builds its experiment itself, first thing
    for cfg, given_id in zip(cfgs, named):
        run = runs.run_of(cfg)  # a resumed run has its config.yaml; a new one gets it when it starts
        if given_id and not run.config_file.exists() and cfg.stage != "test" and _is_rank_zero():
            print(f"no run {run.run_id} under {run.dir.parent}: starting a new run with this id", file=sys.stderr)
    if slurm_job:
        return _submit(cfgs, sweep_id)
    if len(cfgs) > 1 and any(_processes(cfg) > 1 for cfg in cfgs):
        # Lightning's local DDP launcher re-runs this command in each child process, which would start the sweep
        # from its first run (and a sweep id of its own) while rank 0 is further on
        raise UserError("a local sweep (-m) cannot use several processes per run (trainer.devices / num_nodes > 1): "
                        "submit it with launcher=slurm (one job per run), or run the settings one by one")
    for cfg in cfgs:
        metrics = train.run(cfg)
        if _is_rank_zero():
            run = runs.run_of(cfg)
            print_metrics(f"{run.experiment} / {run.run_id}", metrics)
            print(f"run directory: {run.dir}")
    if sweep_id and _is_rank_zero():
        _sweep_summary(cfgs, sweep_id)
    return 0


def _sweep_summary(cfgs, sweep_id: str) -> None:
    """After a sweep: its runs in one table, averaged over seeds when the seed is one of the swept keys. Its runs are
    its run directories: ids `<sweep_id>-<i>`, or the ones the user named (`-m run_id=a,b`)."""
    from launch import runs, summary

    root = Path(cfgs[0].runs_root)
    dirs = [runs.run_of(cfg).dir for cfg in cfgs]
    own_ids = all(d.name.startswith(f"{sweep_id}-") for d in dirs)  # `zoo runs --sweep` finds these again later
    records = summary.collect(root, only={(d.parent.name, d.name) for d in dirs})
    over = "seed" if "seed" in summary.varying_keys(records) else None
    table = summary.build(records, over=over)
    summary.print_table(table, f"sweep {sweep_id}" + (", mean ± std over seed" if over else ""))
    out = root / "sweeps" / sweep_id
    summary.write_csv(table, out.with_suffix(".csv"))
    written = [out.with_suffix(".csv")]
    if summary.can_plot(table):  # seeds aggregated, a setting besides the seed, finished runs
        summary.plot(table, out.with_suffix(".png"))
        written.append(out.with_suffix(".png"))
    later = f"; the same table later: zoo runs --root {root} --sweep {sweep_id}" + (" --over seed" if over else "")
    print(f"wrote {', '.join(map(str, written))}" + (later if own_ids else ""))


def _processes(cfg) -> int:
    """Processes per run that trainer.devices x trainer.num_nodes asks for (1 for 'auto' and -1, which a CPU run
    resolves to one process)."""
    from omegaconf import OmegaConf

    devices = cfg.trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else devices
    count = count if isinstance(count, int) and count > 0 else 1
    return count * int(cfg.trainer.get("num_nodes", 1) or 1)


def _resume_or_new(cfg, overrides: list[str] = (), check_jobs: bool = True):
    """An existing run id resumes that run with its saved config, changed by the overrides a resume may change (how
    long and how it trains: `runs.apply_resume_overrides`; its launcher settings stay unless the command names
    them: a SLURM run resumes as a SLURM job with its partition, time and setup); otherwise a new run is created,
    unless another experiment has a run of that id (one W&B run id, and `zoo status <id>` could not tell them
    apart). A run whose SLURM job is still queued or running is refused (`check_jobs`)."""
    from launch import config as zconfig
    from launch import runs

    if cfg.run_id:
        run = runs.run_of(runs.assign_run_id(cfg))
        saved = runs.saved_config(run)
        if saved is not None:
            if check_jobs:
                _refuse_while_its_job_runs(run)
            own = {runs.override_key(o): zconfig.option_keys(runs.override_key(o), o.split("=", 1)[1])
                   for o in overrides if runs.override_key(o) in ("trainer", "launcher", "logger") and "=" in o}
            changes = runs.apply_resume_overrides(saved, cfg, list(overrides), own)
            if _is_rank_zero():
                changed = f" (changed: {'; '.join(changes)})" if changes else ""
                print(f"resuming run {cfg.run_id} with its saved config{changed}", file=sys.stderr)
            # where the run was found: a moved or copied runs tree, or a relative runs_root from another directory,
            # resumes there (the saved absolute path would start the run afresh at its old place)
            saved.runs_root, saved.run_id = cfg.runs_root, cfg.run_id
            # config.yaml takes the changes once the resumed fit has trained a step (callbacks.SaveResumedConfig)
            return saved
        _refuse_id_of_another_experiment(run)
    return runs.assign_run_id(cfg)


def _refuse_id_of_another_experiment(run) -> None:
    """`zoo train experiment=B run_id=<a run of A>`: the id names A's run (resume it with experiment=A; a plain
    `zoo train run_id=X` composes the default experiment), not a new run of B."""
    from launch import runs

    elsewhere = runs.same_id_elsewhere(run)
    if elsewhere:
        other = runs.experiment_option(elsewhere[0].parent.name)
        raise UserError(f"run {run.run_id} is a run of experiment {other} ({elsewhere[0]}), not of "
                        f"{runs.experiment_option(run.experiment)}: add experiment={other} to resume it, or pick "
                        "another run_id for a new run")


def _refuse_while_its_job_runs(run) -> None:
    """A run whose SLURM job is queued, running or waiting to requeue is not started a second time (here or as
    another job): both would write its checkpoint and metrics.csv. Not asked inside a job (a batch script's own
    `srun zoo train`), nor by the other ranks of a local DDP run (their rank 0 asked)."""
    from launch import summary

    if os.environ.get("SLURM_JOB_ID") or not _is_rank_zero():
        return
    active = summary.active_job(run.dir)
    if active is not None:
        raise UserError(f"run {run.run_id} is {active[1].lower()} as SLURM job {active[0]}: wait for it, or "
                        f"`scancel {active[0]}` first (a second start would write the same checkpoint)")


def _submit(cfgs, sweep_id) -> int:
    """Submit checked runs (cmd_train checked each run's resources and settings first)."""
    from launch import runs, slurm

    fresh = [runs.run_of(cfg) for cfg in cfgs if not runs.run_of(cfg).config_file.exists()]
    for cfg in cfgs:
        runs.create(cfg)
    try:
        jobs = slurm.submit(cfgs, sweep_id)
    except BaseException:  # refused (sbatch, a sweep's mixed resources): the run directories made here go again
        _remove_unstarted(fresh, sweep_id)
        raise
    for cfg, job in zip(cfgs, jobs):
        run = runs.run_of(cfg)
        (run.slurm).mkdir(parents=True, exist_ok=True)
        with open(run.slurm / "jobs.txt", "a") as fh:
            fh.write(f"{job.job_id}\n")
        print(f"submitted job {job.job_id}: run {run.run_id}  dir {run.dir}  logs {job.paths.stdout}")
    if not cfgs[0].launcher.wait:
        return 0
    failed = _wait_for(jobs, [f"run {cfg.run_id}" for cfg in cfgs],  # one result per task; rank 0's: the metrics
                       lambda i, results: print_metrics(f"{cfgs[i].experiment_name} / {cfgs[i].run_id} "
                                                        f"(job {jobs[i].job_id})", results[0]))
    if sweep_id:
        _sweep_summary(cfgs, sweep_id)
    return 1 if failed else 0


def _remove_unstarted(fresh_runs: list, sweep_id: str | None) -> None:
    """The run directories (and the sweep's SLURM folder) a refused submission made, none with a checkpoint."""
    import shutil

    from launch import runs

    if sweep_id and fresh_runs:
        first = fresh_runs[0]
        shutil.rmtree(first.root / first.experiment / f"sweep-{sweep_id}", ignore_errors=True)
    for run in fresh_runs:
        runs.remove_unstarted(run)


def _job_failure(err: Exception, stderr_log: Path) -> str:
    """Why a SLURM job failed, in one line: the exception its trace ends with (`UserError: ...`, `NonFiniteLossError:
    ...`), or, for a job that produced no result (srun or the setup lines failed), the last line of its error log.
    submitit's own first line ("Job (task=0) failed during processing with trace:") says nothing."""
    from submitit.core.utils import FailedJobError

    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, FailedJobError) and len(lines) > 1:
        return lines[-1].removeprefix("launch.errors.")[:300]
    try:
        tail = [line.strip() for line in Path(stderr_log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        tail = []
    return (tail[-1] if tail else lines[0] if lines else type(err).__name__)[:300]


def _wait_for(jobs: list, names: list[str], report) -> int:
    """Wait for the submitit jobs in order; `report(i, task results)` as each one finishes (it may return a number
    of failures found in the results), a job that failed is one printed line (job, what it ran, why, its log).
    Returns the number of failures."""
    import submitit

    failed = 0
    for i, (job, name) in enumerate(zip(jobs, names)):
        try:
            results = job.results()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as err:
            failed += 1
            print(f"job {job.job_id} ({name}) failed: {_job_failure(err, job.paths.stderr)} "
                  f"(logs: {job.paths.stderr})", file=sys.stderr)
            continue
        failed += report(i, results) or 0
    return failed


def cmd_eval(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from launch import runs, train

    usage = "usage: zoo eval ckpt=<path/to/checkpoint.ckpt> [out=<metrics.json>] [key=value ...]"
    if args in (["-h"], ["--help"]):
        print(f"{usage}\n  test metrics of a checkpoint under its run's saved config (key=value changes it)")
        return 0
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt=")), None)
    out = next((a.split("=", 1)[1] for a in args if a.startswith("out=")), None)
    if not ckpt:
        raise UserError(usage)
    if out is not None:  # checked before the evaluation, not after it
        writable_file(out, "out=")
    ckpt_path = Path(ckpt).expanduser()
    if ckpt_path.is_dir() and (ckpt_path / "checkpoints" / "last.ckpt").is_file():
        last = ckpt_path / "checkpoints" / "last.ckpt"
        raise UserError(f"ckpt= takes a checkpoint file, not a run directory: ckpt={last}")
    if not ckpt_path.is_file():
        raise UserError(f"no checkpoint at {ckpt_path}")
    run_dir = ckpt_path.absolute().parent.parent
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise UserError(f"no saved config for {ckpt_path}: zoo eval reads a run's checkpoint under "
                        f"<run>/checkpoints/ with its <run>/config.yaml (looked for {config_file})")
    cfg = runs.saved_config(runs.Run.at(run_dir))
    others = [a for a in args if not a.startswith(("ckpt=", "out="))]
    _check_eval_overrides(cfg, others)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in others]),
                              {"stage": "test", "logger": {"wandb": None}})
    except Exception as err:  # noqa: BLE001
        raise UserError(f"bad override in {others}: {one_line(err, 200)}") from None
    metrics = train.run(cfg, make_run_dir=False, test_ckpt=str(ckpt_path))
    if not _is_rank_zero():  # under DDP every rank returns the same (synced) metrics: one report, one file
        return 0
    print_metrics(f"eval {ckpt_path}", metrics)
    if out:  # a record of the evaluation: which checkpoint, under which overrides, with what result
        record = {"checkpoint": str(ckpt_path.absolute()), "overrides": others, "metrics": metrics}
        try:
            runs.write_atomic(Path(out).expanduser(), json.dumps(record, indent=2, sort_keys=True))
        except OSError as err:
            raise UserError(f"cannot write out={out}: {err.strerror or one_line(err)}") from None
        print(f"wrote {out}")
    return 0


def _check_eval_overrides(cfg, overrides: list[str]) -> None:
    """`zoo eval` overrides are key=value on the run's saved config: a key it lacks is a one-line error (with the
    closest key; +key=value adds one), and so is a config group (trainer=gpu: give its keys instead)."""
    import difflib

    from omegaconf import OmegaConf

    from launch.runs import leaves

    known = leaves(cfg)
    for override in overrides:
        key, eq, _ = override.partition("=")
        if not eq or not key:
            raise UserError(f"overrides look like key=value, got {override!r}")
        if key.startswith("+"):
            continue
        node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if OmegaConf.is_dict(node):
            raise UserError(f"{key} is a section of the saved config (a config group such as "
                            f"{key}=<option> cannot be re-selected here): give its keys, e.g. {key}.<name>=<value>")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (closest: {close[0]})" if close else ""
            raise UserError(f"unknown key {key!r} in the run's saved config{hint}; +{key}=... adds it")


def cmd_list(args: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    if args in (["-h"], ["--help"]):
        print("zoo list: every paper, its data and the state of its claims (results under $PAPERZOO_CHECKS, default "
              "runs/checks)")
        return 0
    if args:
        raise UserError(f"zoo list takes no arguments, got {' '.join(args)}")

    from launch import check
    from launch import config as zconfig

    out_dir = Path(os.environ.get("PAPERZOO_CHECKS", "runs/checks"))
    table = Table(title="paperzoo")
    for col in ("slug", "paper", "domain", "data (offline default / real)", "claims"):
        table.add_column(col)
    with_claims = zconfig.variants_with_claims()
    for slug in zconfig.experiments():
        cfg = zconfig.compose([f"experiment={slug}"])
        paper = cfg.get("paper") or {}
        variants = [v.split("/", 1)[1] for v in zconfig.options("experiment") if v.startswith(slug + "/")]
        data = f"{cfg.data.get('name', '?')} / {', '.join(variants) or '-'}"
        title = str(paper.get("title", "?")).split(":")[0]
        n = len(cfg.get("claims") or {})
        table.add_row(slug, f"{title} ({paper.get('venue', paper.get('arxiv', '?'))})", str(paper.get("domain", "?")), data,
                      f"{n}: {check.status(slug, out_dir, n)}")
        for variant in (v for v in with_claims if v.startswith(slug + "/")):  # variants with claims of their own
            n = len(zconfig.compose([f"experiment={variant}"]).get("claims") or {})
            table.add_row(f"  {variant}", "", "", "", f"{n}: {check.status(variant, out_dir, n)}")
    Console(width=max(Console().width, 140)).print(table)
    return 0


def cmd_check(args: list[str]) -> int:
    """`zoo check <slug> [--claim NAME ...] [key=value ...]`: the overrides go on top of every run of the claims
    (before each run's own, so a baseline's `trainer.max_steps=1` still holds), e.g. a GPU and a longer schedule:
    `zoo check um2n --claim node_rmse trainer=gpu trainer.max_steps=4000`."""
    from launch import check, runs, train
    from launch import config as zconfig

    parser = _Parser(prog="zoo check")
    parser.add_argument("slug", nargs="?", help="the paper (or <slug>/<variant> with claims of its own)")
    parser.add_argument("overrides", nargs="*", help="key=value on top of every run")
    parser.add_argument("--all", action="store_true", help="every paper and variant with claims")
    parser.add_argument("--claim", action="append", dest="claims", metavar="NAME",
                        help="only this claim (repeatable)")
    parser.add_argument("--out", default="runs/checks", help="where the JSON and markdown results go")
    parser.add_argument("--seeds", help="run every claim at these seeds (0,1,2 or 0-4): per-seed results under "
                                        "<out>/seed<k>/, the pass count and spread in <out>/<slug>.seeds.md")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="slurm: one job per paper (a job array for several); launcher.* overrides set its "
                             "resources, launcher.wait=true waits for the results")
    opts = parser.parse_intermixed_args(args)
    opts.claims = list(dict.fromkeys(opts.claims)) if opts.claims else opts.claims  # --claim X --claim X: once
    checkable = zconfig.experiments() + zconfig.variants_with_claims()
    if opts.all and (opts.slug or opts.claims):
        raise UserError("zoo check --all takes no slug and no --claim")
    slugs = checkable if opts.all else [opts.slug]
    if not opts.all and not opts.slug:
        raise UserError("usage: zoo check <slug> [--claim NAME] [key=value ...] | --all")
    bad = [o for o in opts.overrides if "=" not in o]
    if bad:
        raise UserError(f"overrides look like key=value, got {', '.join(map(repr, bad))}")
    for slug in slugs:
        if slug not in checkable:
            raise UserError(f"unknown experiment '{slug}' (or it declares no claims){zconfig._closest(slug, checkable)}")
    launcher_overrides = [o for o in opts.overrides if o.lstrip("+").startswith("launcher")]
    extra = [o for o in opts.overrides if o not in launcher_overrides]
    seeds = check.parse_seeds(opts.seeds) if opts.seeds is not None else None
    if seeds is not None and any(o.lstrip("+").split("=", 1)[0] == "seed" for o in extra):
        raise UserError("give the seeds with --seeds or seed=<k>, not both")
    fixed = [o for o in extra if o.lstrip("+~").split("=", 1)[0] in ("experiment", "run_id")]
    if fixed:  # experiment=<other> would train another paper's model under this paper's claims
        raise UserError(f"{', '.join(fixed)}: the experiment is the slug (zoo check <slug>) and claim runs have no "
                        "run id")
    for slug in slugs if extra else ():  # a mistyped key fails now, not after hours of other claims (or never)
        # and so does a malformed value (a probe-only claim would record it as its setting without applying it)
        train.check_settings(zconfig.compose([f"experiment={slug}", *extra]))
    ignored = [o for o in extra if runs.override_key(o).split(".")[0] == "logger"]
    if ignored and _is_rank_zero():  # accepted (a shared command line may carry it), but a claim run never logs
        print(f"zoo check: {', '.join(ignored)} has no effect: claim runs keep no run directory and log to no "
              "logger; the results go to --out", file=sys.stderr)
    if launcher_overrides and opts.launcher != "slurm":
        raise UserError(f"{', '.join(launcher_overrides)} needs --launcher slurm (claims run locally)")
    writable_dir(opts.out, "--out")
    for slug in slugs:  # a folder where a results file goes fails now, not after the claims have run
        folders = [check.seed_dir(Path(opts.out), k) for k in seeds] if seeds is not None else [Path(opts.out)]
        targets = [d / f"{slug}{ext}" for d in folders for ext in (".json", ".md")]
        targets += [Path(opts.out) / f"{slug}.seeds{ext}" for ext in (".json", ".md")] if seeds is not None else []
        taken = next((t for t in targets if t.is_dir()), None)
        if taken is not None:
            raise UserError(f"cannot write the check results: {taken} is a folder")
    if opts.launcher == "slurm":
        return _submit_checks(slugs, opts.claims, extra, Path(opts.out).resolve(), launcher_overrides, seeds)
    failed = 0
    out = Path(opts.out)
    for slug in slugs:
        for seed in seeds if seeds is not None else [None]:
            if seed is not None:
                check.clear_cache()  # nothing is shared between seeds: free the trained models
            results = check.check_at_seed(slug, out, opts.claims, extra, seed)
            for r in results if _is_rank_zero() else ():
                print(check.seed_report(r, seed))
            failed += sum(r.verdict == "FAIL" for r in results)
        if seeds is not None and _is_rank_zero():
            print("\n".join(check.summarize_seeds(slug, seeds, out)))
    if _is_rank_zero():
        print(f"results written to {opts.out}/")
    return 1 if failed else 0


def _submit_checks(slugs: list[str], names: list[str] | None, extra: list[str], out_dir: Path,
                   launcher_overrides: list[str], seeds: list[int] | None = None) -> int:
    """`zoo check ... --launcher slurm`: submit (one job per paper, and per seed with --seeds), print the job ids;
    with launcher.wait=true print every claim's report and, with --seeds, each paper's summary over the seeds (exit
    1 when a claim or a job failed)."""
    from launch import check, slurm

    tasks = [(slug, seed) for slug in slugs for seed in (seeds if seeds is not None else [None])]
    cfg, jobs = slurm.submit_checks(tasks, names, extra, out_dir, launcher_overrides)
    labels = [f"zoo check {slug}" + ("" if seed is None else f" seed={seed}") for slug, seed in tasks]
    for (slug, seed), label, job in zip(tasks, labels, jobs):
        where = out_dir if seed is None else check.seed_dir(out_dir, seed)
        print(f"submitted job {job.job_id}: {label}  results {where}/{slug}.md  logs {job.paths.stdout}")
    if not cfg.launcher.wait:
        return 0

    def report(_: int, results: list) -> int:
        reports, n_failed = results[0]  # one task per check job
        print("\n".join(reports))
        return n_failed

    failed = _wait_for(jobs, labels, report)
    if seeds is not None:
        for slug in slugs:
            print("\n".join(check.summarize_seeds(slug, seeds, out_dir)))
    print(f"results written to {out_dir}/" if not failed else
          f"{failed} claim(s) or job(s) failed; the results that were written are in {out_dir}/")
    return 1 if failed else 0


def cmd_bench(args: list[str]) -> int:
    from benchmarks import run_benchmarks

    parser = _Parser(prog="zoo bench")
    parser.add_argument("slug", nargs="?")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", default="runs/bench")
    # options passed on to benchmarks whose run() takes them (an error for the others)
    parser.add_argument("--systems", help="comma-separated names (e.g. dysts systems)")
    parser.add_argument("--all-systems", action="store_true", help="every system the benchmark knows")
    parser.add_argument("--shard", help="run shard i of n ('i/n', or 'slurm' for the job-array index)")
    parser.add_argument("--merge", action="store_true", help="combine the shard tables in --out")
    parser.add_argument("--dataset", help="which data the benchmark runs on (e.g. fine, coarse)")
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument("--protocol", help="the benchmark's protocol (dysts: direct | official)")
    parser.add_argument("--hyperparameters", help="the official per-system hyperparameter file (dysts: input lengths)")
    opts = parser.parse_args(args)
    if not opts.all and not opts.slug:
        raise UserError("usage: zoo bench <slug> | --all [--quick]")
    options = {key: value for key in ("systems", "all_systems", "shard", "merge", "dataset", "device", "protocol",
                                      "hyperparameters")
               if (value := getattr(opts, key)) not in (None, False)}
    from benchmarks import check_name

    check_name(None if opts.all else opts.slug)  # before --out is made
    writable_dir(opts.out, "--out")
    run_benchmarks(None if opts.all else opts.slug, quick=opts.quick, out_dir=Path(opts.out), options=options)
    return 0


def cmd_status(args: list[str]) -> int:
    from launch import runs, summary, train

    parser = _Parser(prog="zoo status", description="progress, checkpoint, metrics and SLURM jobs of a run")
    parser.add_argument("run", help="a run id (searched under --root) or a run directory")
    parser.add_argument("--root", default="runs", help="the runs root to search (default: runs)")
    opts = parser.parse_args(args)  # --root before or after the run, --root=R, --help
    run_dir = runs.find(opts.run, opts.root)
    cfg = runs.saved_config(runs.Run.at(run_dir))
    print(f"run {cfg.run_id}  experiment {cfg.experiment_name}  dir {run_dir}")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        import torch

        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
            epochs = train.epochs_trained(ckpt)
            done = f"{epochs} epochs" if epochs is not None else f"epoch {ckpt.get('epoch')}"
            print(f"last.ckpt: {done} of max_epochs {cfg.trainer.max_epochs}, global_step {ckpt.get('global_step')}"
                  + (f" of max_steps {cfg.trainer.max_steps}" if (cfg.trainer.get("max_steps") or -1) > 0 else ""))
        except Exception as err:  # noqa: BLE001
            print(f"last.ckpt unreadable: {type(err).__name__}")
    else:
        print("no checkpoint yet")
    final = run_dir / "final_metrics.json"
    if final.exists():
        try:
            metrics = json.loads(final.read_text())
        except (OSError, ValueError) as err:
            print(f"final_metrics.json unreadable: {type(err).__name__}")
        else:
            if isinstance(metrics, dict):
                print_metrics("final metrics", metrics)
            else:
                print(f"final_metrics.json unreadable: not a mapping ({type(metrics).__name__})")
    jobs = summary.run_jobs(run_dir)
    states = summary.slurm_states(jobs)
    for job in jobs:
        log = summary.job_log(run_dir, job)
        print(f"slurm job {job}: {states.get(job, 'unknown')}" + (f"  logs {log} (.err beside it)" if log else ""))
    return 0


def cmd_runs(args: list[str]) -> int:
    from launch import summary

    parser = _Parser(prog="zoo runs")
    parser.add_argument("experiment", nargs="?", help="experiment name (runs/<experiment>/; a variant as "
                                                      "<slug>/<variant> or <slug>-<variant>); default: every one")
    parser.add_argument("--root", default="runs", help="runs root (the runs_root of the runs)")
    parser.add_argument("--sweep", help="only the runs of this `zoo train -m` sweep id")
    parser.add_argument("--metric", action="append", help="a final metric to show (repeatable); default: test/*")
    parser.add_argument("--over", help="aggregate over this config key (e.g. seed): mean ± std per setting")
    parser.add_argument("--csv", help="also write the table's numbers to this CSV file")
    parser.add_argument("--plot", help="with --over: plot each metric (mean, std bars) against the first setting key "
                                       "to this PNG file")
    opts = parser.parse_args(args)
    if opts.plot and not opts.over:
        raise UserError("--plot needs --over <key> (the metrics are plotted as mean ± std over it)")
    if opts.plot and Path(opts.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--plot {opts.plot}: give a .png, .pdf or .svg file")
    for flag, target in (("--csv", opts.csv), ("--plot", opts.plot)):
        if target:
            writable_file(target, flag)
    experiment = opts.experiment.replace("/", "-") if opts.experiment else None  # a variant's runs/<slug>-<variant>
    records = summary.collect(Path(opts.root), experiment, opts.sweep)
    table = summary.build(records, opts.metric, opts.over)
    if opts.plot and summary.plot_problem(table):  # before anything is written
        raise UserError(summary.plot_problem(table))
    title = f"{len(records)} runs under {opts.root}" + (f" (sweep {opts.sweep})" if opts.sweep else "")
    summary.print_table(table, title + (f", mean ± std over {opts.over}" if opts.over else ""))
    if opts.csv:
        summary.write_csv(table, Path(opts.csv))
        print(f"wrote {opts.csv}")
    if opts.plot:
        summary.plot(table, Path(opts.plot))
        print(f"wrote {opts.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
