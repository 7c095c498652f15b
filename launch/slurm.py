"""SLURM through submitit: derived resources, Checkpointable requeue, sweeps as one job array."""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from launch import runs
from launch.errors import UserError, check_min, check_positive, is_sigterm, one_line


def resources(cfg: DictConfig) -> dict:
    """sbatch resources derived from the trainer: tasks_per_node = gpus_per_node = devices, nodes = num_nodes."""
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    if not isinstance(devices, int) or devices < 1:
        raise UserError(f"launcher=slurm needs trainer.devices to be a positive integer per node, got {devices!r}")
    if not isinstance(nodes, int) or nodes < 1:
        raise UserError(f"launcher=slurm needs trainer.num_nodes to be a positive integer, got {nodes!r}")
    accelerator = cfg.trainer.accelerator
    on_gpu = accelerator in ("gpu", "cuda")
    if accelerator == "auto":
        raise UserError("launcher=slurm needs an explicit trainer.accelerator (trainer=gpu or trainer=cpu)")
    launcher = cfg.launcher
    check_launcher(launcher)
    params = {
        "nodes": nodes,
        "tasks_per_node": devices,
        "slurm_time": int(launcher.time_min),
        "slurm_signal_delay_s": int(launcher.signal_delay_s),
        "slurm_job_name": launcher.job_name or f"zoo-{cfg.experiment_name}",
        "slurm_array_parallelism": int(launcher.array_parallelism),
    }
    if on_gpu:
        params["gpus_per_node"] = devices
    optional = {"partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
                "constraint": "slurm_constraint", "exclude": "slurm_exclude", "cpus_per_task": "cpus_per_task",
                "mem_gb": "mem_gb"}
    for key, name in optional.items():
        if launcher.get(key) is not None:
            params[name] = launcher[key]
    if launcher.additional_parameters:
        params["slurm_additional_parameters"] = dict(launcher.additional_parameters)
    if launcher.setup:
        params["slurm_setup"] = list(launcher.setup)
    if launcher.srun_args:
        params["slurm_srun_args"] = list(launcher.srun_args)
    return params


def check_launcher(launcher: DictConfig) -> None:
    """The launcher's numbers and switches, before anything is submitted: a one-line error, not a traceback from
    `int()` or submitit, and not a job that sbatch accepts but that cannot work (a negative time limit, an array
    run with at most 0 tasks at a time, a USR2 due before the job has started)."""
    integers = {key: launcher.get(key) for key in ("time_min", "array_parallelism", "max_num_timeout",
                                                   "signal_delay_s", "cpus_per_task")}
    for key, value in integers.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"launcher.{key} must be an integer, got {value!r}")
    check_min("launcher", 1, time_min=integers["time_min"], array_parallelism=integers["array_parallelism"],
              cpus_per_task=integers["cpus_per_task"])
    check_min("launcher", 0, max_num_timeout=integers["max_num_timeout"], signal_delay_s=integers["signal_delay_s"])
    check_positive("launcher", mem_gb=launcher.get("mem_gb"))
    if integers["signal_delay_s"] is not None and integers["signal_delay_s"] >= 60 * integers["time_min"]:
        raise UserError(f"launcher.signal_delay_s={integers['signal_delay_s']} must be below the time limit "
                        f"(launcher.time_min={integers['time_min']} min): the job would be told to requeue as it "
                        "starts")
    if not isinstance(launcher.get("wait", False), bool):
        raise UserError(f"launcher.wait is an on/off option (true or false), got {launcher.wait!r}")


class TrainJob(submitit.helpers.Checkpointable):
    """The submitted callable: trains one resolved config; on preemption or timeout it resubmits itself
    with the same config (same run id), and the new job resumes from `last.ckpt`.

    Two things around submitit's preemption signal (USR2), which SLURM sends to every task of the job:
    - once the run has finished (its final metrics written by this start, or `train.run` returned), the signal is
      ignored: submitit's handler would checkpoint and requeue a finished run, or end its job FAILED, when the signal
      came in the last moments of the job (while submitit pickles the result, or W&B finishes);
    - a rank other than 0 that loses its process group because rank 0 stopped for the signal (gloo: "Connection
      closed by peer"; Lightning's SIGTERM broadcast) ends with one line instead of a traceback. Any other error, or
      one without the signal, is raised as it is.

    SIGTERM (a preemption with a grace time, the time limit, scancel's first signal) stops every rank at the same
    batch, with last.ckpt saved there (`launch.termination`); each rank then says one line and exits with status 143
    (Lightning's exit status for it would be 0, a finished-looking task)."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def __call__(self) -> dict[str, float]:
        from launch import train

        cfg = OmegaConf.create(self.config)
        check_allocation(cfg)
        train.FINISHED.clear()
        watch = _PreemptionWatch(train.FINISHED)
        try:
            result = train.run(cfg)
        except SystemExit as stop:
            if not is_sigterm(stop):
                raise
            # every rank stopped at the same batch (launch.termination); Lightning's exit code is None (status 0)
            print(f"rank {runs.global_rank()}: terminated (SIGTERM), with the other ranks; a job that SLURM requeues "
                  "resumes from last.ckpt, as does `zoo train` with the same run_id", file=sys.stderr, flush=True)
            raise SystemExit(143) from None
        except Exception as err:
            rank = int(os.environ.get("SLURM_PROCID") or 0)
            if rank != 0 and watch.signalled and _lost_process_group(err):
                print(f"rank {rank}: stopped with the job after the preemption signal (rank 0 requeues the job, "
                      f"or ends it past launcher.max_num_timeout): {one_line(err, 160)}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            raise
        watch.done = True
        return result

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # State lives in the periodic last.ckpt; the resubmission only has to carry the same config.
        return submitit.helpers.DelayedSubmission(TrainJob(self.config))


def _preemption_signal() -> int:
    """The signal submitit handles as preemption/timeout (SUBMITIT_PREEMPT_SIGNAL, USR2 by default)."""
    try:
        return submitit.JobEnvironment._usr_sig()
    except Exception:  # noqa: BLE001 - a private helper of submitit's; its default otherwise
        return signal.SIGUSR2


class _PreemptionWatch:
    """Wraps the handler installed for the preemption signal (submitit's): records that the signal came, and ignores
    it once the run is done (`done`: `train.run` returned, or `finished` set: `train._finish` wrote the run's final
    metrics; an in-process flag, no file system call in the handler)."""

    def __init__(self, finished: threading.Event) -> None:
        self.done, self.signalled, self._finished = False, False, finished
        self.signum = _preemption_signal()
        self.previous = None
        if threading.current_thread() is threading.main_thread() and callable(signal.getsignal(self.signum)):
            self.previous = signal.getsignal(self.signum)  # submitit's (not installed: a call outside a job)
            signal.signal(self.signum, self._handle)

    def finished(self) -> bool:
        return self.done or self._finished.is_set()

    def _handle(self, signum, frame) -> None:
        self.signalled = True
        if self.finished():
            print(f"signal {signal.Signals(signum).name} after the run finished: ignored (nothing to requeue)",
                  file=sys.stderr, flush=True)
            return
        self.previous(signum, frame)


LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
             "NCCL communicator was aborted")


def _lost_process_group(err: BaseException) -> bool:
    """An error of a collective whose peer went away (torch.distributed's DistError, gloo's RuntimeError naming a
    closed connection) or Lightning's SIGTERMException, anywhere in the exception's chain."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", ())
    seen = 0
    while err is not None and seen < 10:
        if (isinstance(err, dist_error) or is_sigterm(err)
                or (isinstance(err, RuntimeError) and any(text in str(err) for text in LOST_PEER))):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def check_allocation(cfg: DictConfig) -> None:
    """Inside the job: the allocation SLURM gave must be the one derived from the trainer config."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return
    expected = {"SLURM_NTASKS_PER_NODE": cfg.trainer.devices, "SLURM_JOB_NUM_NODES": cfg.trainer.num_nodes}
    for var, want in expected.items():
        got = env.get(var)
        if got is not None and int(got.split("(")[0]) != int(want):
            raise UserError(f"SLURM allocation mismatch: {var}={got} but the config asks for {want}")


def executor(folder: Path, cfg: DictConfig) -> submitit.AutoExecutor:
    extra = {"slurm_python": cfg.launcher.python} if cfg.launcher.get("python") else {}
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm",
                               slurm_max_num_timeout=int(cfg.launcher.max_num_timeout), **extra)
    ex.update_parameters(**resources(cfg))
    return ex


def submit(cfgs: list[DictConfig], sweep_id: str | None = None) -> list[submitit.Job]:
    """Submit one run, or a sweep as a single job array. Each config already has its run id and dir."""
    if not cfgs:
        return []
    first = runs.run_of(cfgs[0])
    if len(cfgs) == 1:
        folder = first.slurm
    else:
        folder = first.root / first.experiment / f"sweep-{sweep_id}" / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    if any(resources(c) != resources(cfgs[0]) for c in cfgs[1:]):
        raise UserError("a sweep submitted as one job array must keep the same resources in every element; "
                        "sweep trainer.devices/num_nodes/launcher.* with separate `zoo train` calls")
    ex = executor(folder, cfgs[0])
    return _submit_calls(ex, [TrainJob(OmegaConf.to_container(c, resolve=True)) for c in cfgs])


def _submit_calls(ex: submitit.AutoExecutor, calls: list) -> list[submitit.Job]:
    """One call: one job; several: one job array (`ex.batch()`). sbatch's refusal is a one-line UserError.

    submitit leaves a `.submission_file_<uuid>.sh` link to `<job>_submission.sh` per submission (and, when sbatch
    refuses, the script and the `<uuid>.pkl` it was given): nothing reads them once sbatch has answered (SLURM keeps
    its own copy of the script, for requeues too), so the links are removed after each submission, and what a
    refused one wrote with it."""
    folder = submitit.core.utils.JobPaths.get_first_id_independent_folder(ex.folder)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        if len(calls) == 1:
            return [ex.submit(calls[0])]
        with ex.batch():
            jobs = [ex.submit(call) for call in calls]
        return jobs
    except submitit.core.utils.FailedJobError as err:
        _remove_submission_leftovers(folder, before)
        raise UserError(f"sbatch refused the job: {one_line(err)}") from None
    finally:
        _remove_submission_links(folder)


def _remove_submission_links(folder: Path) -> None:
    """The `.submission_file_*.sh` links in `folder` (each names the `<job>_submission.sh` beside it). A regular file
    of that name is a submission in progress (submitit renames it when sbatch answers): kept."""
    for path in folder.glob(".submission_file_*.sh"):
        if path.is_symlink():
            path.unlink(missing_ok=True)


_LEFTOVER = re.compile(r"(\.submission_file_[0-9a-f]{32}\.sh|[0-9a-f]{32}\.pkl)")


def _remove_submission_leftovers(folder: Path, before: set[Path]) -> None:
    """What a refused submission wrote into `folder`: its script and its pickled call, under submitit's temporary
    names (`.submission_file_<uuid hex>.sh`, `<uuid hex>.pkl`). A job's own files that appeared meanwhile (a
    requeue's `<job>_submitted.pkl`, a `<job>_<task>_result.pkl`) are kept."""
    for path in set(folder.iterdir()) - before if folder.is_dir() else ():
        if path.is_file() and _LEFTOVER.fullmatch(path.name):
            path.unlink(missing_ok=True)


class CheckJob(submitit.helpers.Checkpointable):
    """The submitted callable of `zoo check ... --launcher slurm`: one paper's claims (`launch.check.check`), at one
    seed with `--seeds` (results then under `check.seed_dir`), results written as a local `zoo check` writes them;
    returns the claim reports and how many failed. On preemption or timeout it resubmits itself and reruns the
    claims (they keep no state between runs)."""

    def __init__(self, slug: str, names: list[str] | None, extra: list[str], out_dir: str,
                 seed: int | None = None) -> None:
        self.slug, self.names, self.extra, self.out_dir, self.seed = slug, names, list(extra), out_dir, seed

    def __call__(self) -> tuple[list[str], int]:
        from launch import check

        results = check.check_at_seed(self.slug, Path(self.out_dir), self.names, self.extra, self.seed)
        return [check.seed_report(r, self.seed) for r in results], sum(r.verdict == "FAIL" for r in results)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(CheckJob(self.slug, self.names, self.extra, self.out_dir,
                                                           self.seed))


def submit_checks(tasks: list[tuple[str, int | None]], names: list[str] | None, extra: list[str], out_dir: Path,
                  launcher_overrides: list[str]) -> tuple[DictConfig, list[submitit.Job]]:
    """`zoo check` on SLURM: one job per (paper, seed) task (seed None: the configured one); several: one job array.
    Resources come from `launcher=slurm` + `launcher_overrides` and the trainer that `extra` selects (e.g.
    `trainer=gpu`: one GPU per job; the claims' runs train on a single device inside the job)."""
    from launch import config as zconfig

    trainer_overrides = [o for o in extra if o.split("=", 1)[0].split(".")[0].lstrip("+") == "trainer"]
    cfg = zconfig.compose([f"experiment={tasks[0][0]}", "launcher=slurm", *trainer_overrides, *launcher_overrides])
    if cfg.trainer.devices != 1 or cfg.trainer.num_nodes != 1:
        raise UserError("zoo check runs each claim on one device: leave trainer.devices and trainer.num_nodes at 1")
    if not cfg.launcher.job_name:
        cfg.launcher.job_name = "zoo-check"
    resources(cfg)  # a bad launcher value fails before the folder is made
    folder = out_dir / "slurm"
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        ex = executor(folder, cfg)
        return cfg, _submit_calls(ex, [CheckJob(slug, names, extra, str(out_dir), seed) for slug, seed in tasks])
    except BaseException:  # refused (sbatch): no folder of logs for jobs that never ran
        if made:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise
