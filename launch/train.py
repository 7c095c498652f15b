"""compose -> instantiate -> fit/test: the one code path for local runs, SLURM jobs, checks and tests."""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from launch import runs
from launch.errors import UserError, is_sigterm, one_line

log = logging.getLogger("paperzoo")


def _quiet_known_warnings() -> None:
    for pattern in (
        ".*Experiment logs directory .* exists and is not empty.*",
        ".*does not have many workers which may be a bottleneck.*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*srun.*command is available on your system but is not used.*",
        ".*LeafSpec.*is deprecated.*",
        ".*is set, but there is no last checkpoint available.*",  # every fresh run: fit(ckpt_path="last") resumes
        # the callbacks are rebuilt from the run's config; the test-only trainer of eval / stage=test needs none of
        # their state, and a resume that adds or drops one says so itself (callbacks.RestoreBestWeights and friends)
        ".*Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided.*",
        # every IterableDataset here either loads with num_workers=0 or yields each worker's share of one stream
        # (datamodules.context.worker_share), so its __len__ holds with workers too (PROSE, NODA, recsys runs)
        ".*Your `IterableDataset` has `__len__` defined.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    # torch's own forward-mode decompositions still script themselves on the first jvp (MEDIDA, UM2N): nothing a
    # user or this code can change (no code here scripts; the filter hides every torch.jit.script deprecation)
    warnings.filterwarnings("ignore", message=".*`torch.jit.script` is deprecated.*", category=FutureWarning,
                            module="torch.jit._script")
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_advert not in rank_zero_log.filters:
        rank_zero_log.addFilter(_drop_advert)


def _drop_advert(record: logging.LogRecord) -> bool:
    """Lightning's "Tip: ... try installing litlogger" line on every run is an advertisement, not information."""
    return "litlogger" not in str(record.msg)


def wandb_mode(requested: str) -> str:
    """An explicit mode, then WANDB_MODE, then `auto`'s credentials check (`wandb_logger.resolve_mode`)."""
    from launch.wandb_logger import resolve_mode

    return resolve_mode(requested)


def own_wandb_service() -> None:
    """Let this process's W&B run start a service of its own. wandb leaves its service's address in WANDB_SERVICE
    of any process that used it, for its child processes; a run started from such a process (a notebook, a test
    session, or through sbatch, which copies the submitter's environment into the job) would attach to that service,
    which may be gone, or still hold this run's id when a killed or requeued run resumes ("run ID ... is in use").
    Harmless where wandb already runs in this process: it keeps the service it connected to."""
    os.environ.pop("WANDB_SERVICE", None)


def build_loggers(cfg: DictConfig, run: runs.Run, resume_step: int | None = None) -> list:
    """W&B (resumed under the run id) and the run's metrics.csv (kept across restarts; `resume_step`: the global
    step a fit resumes from, whose later rows the resumed run logs again)."""
    from launch.metrics_csv import RunCSVLogger
    from launch.wandb_logger import RunWandbLogger, tags

    loggers = []
    wb = cfg.logger.get("wandb")
    if wb:
        mode = wandb_mode(wb.mode)
        if mode != "disabled":
            own_wandb_service()
            config = OmegaConf.to_container(cfg, resolve=True)
            config.pop("claims", None)  # the claims' prose: what `zoo check` measures, not a setting of the run
            config["meta"] = runs.provenance()  # this start's code: git commit, package versions, host, command
            loggers.append(RunWandbLogger(
                project=wb.project, entity=wb.entity, id=run.run_id, name=f"{run.experiment}/{run.run_id}",
                save_dir=str(run.dir), resume="allow", mode=mode, tags=tags(wb.get("tags")), group=wb.group,
                config=config, log_model=wb.get("log_model") or False, resume_step=resume_step))
    if cfg.logger.get("csv"):
        loggers.append(RunCSVLogger(save_dir=str(run.dir), resume_step=resume_step))
    return loggers


def build_trainer(cfg: DictConfig, run: runs.Run | None, extra_callbacks: list | None = None,
                  resume_step: int | None = None, model=None):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from datamodules.resumable import ResumeLoaderState
    from launch.callbacks import (
        AtomicCheckpointIO,
        FiguresCallback,
        FiniteLossGuard,
        RestoreBestWeights,
        ResumedEpochProgressBar,
        ResumeRandomState,
        RunCheckpoint,
        RunIdentity,
        resolve_precision,
    )
    from launch.epoch_metrics import ResumeEpochMetrics
    from launch.fit_loop import use_epoch_end_resume_loop
    from launch.rank_seed import RankSeed
    from launch.termination import StopTogetherOnSigterm

    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    check_trainer_integers(kwargs)
    kwargs["precision"] = resolve_precision(kwargs.get("precision", "auto"), kwargs.get("accelerator", "cpu"))
    if kwargs.get("strategy") == "ddp" and getattr(model, "ddp_unused_parameters", False):
        # a model that trains only part of its parameters in a step (one time-marching window's network, one INSR
        # stage, MM-PDE's branches): DDP must look for the unused ones, or its first step fails on every rank
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
    # RankSeed after ResumeRandomState: a resumed fit's restored per-rank states are what it keeps (launch/rank_seed.py)
    callbacks = [FiniteLossGuard(), ResumeRandomState(), RankSeed(_seed(cfg)), ResumeLoaderState(),
                 RunIdentity(**run_identity(cfg)), ResumeEpochMetrics(), StopTogetherOnSigterm(),
                 *(extra_callbacks or [])]
    plugins = [AtomicCheckpointIO()]
    ck = cfg.checkpoint
    test_on = ck.get("test_on", "final")
    if test_on not in ("final", "best"):
        raise UserError(f"checkpoint.test_on must be 'final' or 'best', got {test_on!r}")
    if test_on == "best":
        if not ck.monitor:
            raise UserError("checkpoint.test_on=best needs checkpoint.monitor (e.g. checkpoint.monitor=val/recall@20)")
        callbacks.append(RestoreBestWeights(ck.monitor, ck.mode))
    if run is not None:
        # Periodic state for resume/requeue: one file named last.ckpt, overwritten (atomically) each period. Given
        # every_n_train_steps alone (long paper-scale epochs), the epoch period is dropped (Lightning takes one).
        every_epochs = ck.every_n_epochs if not ck.every_n_train_steps else None
        try:
            callbacks.append(RunCheckpoint(
                dirpath=str(run.checkpoints), filename="last", save_top_k=1, monitor=None,
                every_n_epochs=every_epochs, every_n_train_steps=ck.every_n_train_steps,
                save_on_train_epoch_end=True, enable_version_counter=False))
            if ck.monitor:
                callbacks.append(ModelCheckpoint(
                    dirpath=str(run.checkpoints), filename="best-{epoch}", monitor=ck.monitor, mode=ck.mode,
                    save_top_k=1, enable_version_counter=False))
        except Exception as err:  # noqa: BLE001 - Lightning's MisconfigurationException and friends
            raise UserError(f"checkpoint: {one_line(err, 200)}") from None
        callbacks.append(FiguresCallback(run.figures, at_fit_end=cfg.get("stage", "fit_test") == "fit"))
    spec = OmegaConf.to_container(cfg.early_stopping, resolve=True) if cfg.get("early_stopping") else None
    if spec is not None:
        from launch.callbacks import ConfiguredEarlyStopping

        if isinstance(spec, dict) and not spec.get("monitor"):
            raise UserError(f"early_stopping needs a monitor, e.g. early_stopping='{{monitor: val/<metric>, mode: max, "
                            f"patience: 5}}' (got {spec})")
        if isinstance(spec, dict):
            # decide after each validation, not at the end of a training epoch: a run whose step budget ends before
            # its first validation (trainer.max_steps below one epoch) has no val metric there, and Lightning would
            # stop it with an error instead of finishing it
            spec.setdefault("check_on_train_epoch_end", False)
        try:
            callbacks.append(ConfiguredEarlyStopping(**spec))
        except Exception as err:  # noqa: BLE001 - an unknown key (TypeError) or a bad mode / value
            raise UserError(f"early_stopping: {one_line(err, 200)}") from None
    show_bar = cfg.progress_bar if cfg.progress_bar != "auto" else True
    if show_bar:
        callbacks.append(ResumedEpochProgressBar(refresh_rate=1 if sys.stderr.isatty() else 50))
    if "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))  # submitit owns requeueing
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer = L.Trainer(
            **kwargs, callbacks=callbacks, plugins=plugins,
            logger=build_loggers(cfg, run, resume_step) if run is not None else False,
            enable_checkpointing=run is not None, enable_progress_bar=bool(show_bar),
            default_root_dir=str(run.dir) if run is not None else None)
    except (MisconfigurationException, ValueError, TypeError) as err:  # a bad trainer.* value
        raise UserError(f"trainer: {one_line(err)}") from None
    check_sync_batchnorm(trainer, kwargs)
    # exact resume of max_steps runs from epoch-end checkpoints, and of a stop asked for under the same early stopping
    use_epoch_end_resume_loop(trainer, stop_setting=spec)
    return trainer


def check_sync_batchnorm(trainer, kwargs: dict) -> None:
    """`trainer.sync_batchnorm=true` (Lightning converts the BatchNorm layers, e.g. MgNO's, to SyncBatchNorm: batch
    statistics over all ranks) runs on CUDA GPUs only: torch's DistributedDataParallel refuses SyncBatchNorm on CPU
    processes (gloo) with a traceback at the first fit. One line instead; one process has nothing to sync."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if kwargs.get("sync_batchnorm") and trainer.world_size > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        raise UserError("trainer.sync_batchnorm=true needs CUDA GPUs (torch's SyncBatchNorm does not run on CPU "
                        "processes): drop it to normalise with each rank's own batch statistics, or use trainer=gpu")


def instantiate(cfg: DictConfig):
    """Build (datamodule, module) from the config, turning constructor errors into one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    for group in ("data", "model"):
        check_flags(cfg[group], group)
        check_numbers(cfg[group], group)
    try:
        datamodule = hydra_instantiate(cfg.data, _convert_="partial")
        model = hydra_instantiate(cfg.model, _convert_="partial")
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise UserError(f"cannot build the experiment: {one_line(cause)}") from None
    _probe_optimizer(cfg)
    check_stage = getattr(datamodule, "check_stage", None)
    if callable(check_stage):  # the data can serve the run's stage (a run that tests needs a test split)
        check_stage(cfg.get("stage", "fit_test"))
    return datamodule, model


def check_flags(node: DictConfig, group: str) -> None:
    """An on/off option (a constructor argument annotated `bool`) takes true or false only: a typo such as
    `model.rff=flase` is a non-empty string, which Python reads as true, and would silently train the method in
    place of its baseline."""
    for name, kinds in _annotated_kinds(node).items():
        if "bool" not in kinds or not kinds <= {"bool", "None"} or name not in node:
            continue
        value = node[name]
        if isinstance(value, bool) or (value is None and "None" in kinds):
            continue
        allowed = "true, false or null" if "None" in kinds else "true or false"
        raise UserError(f"{group}.{name} is an on/off option ({allowed}), got {value!r}")


def _annotated_kinds(node: DictConfig) -> dict:
    """{argument: set of the type names it is annotated with} of the constructor `node._target_` names ({} when it
    cannot be imported: reported when the experiment is built)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return {name: set(kinds) for name, kinds in _kinds_of(target).items()} if target else {}


@functools.lru_cache(maxsize=None)
def _kinds_of(target: str) -> dict:
    """{argument: frozenset of annotation names} of one constructor, read once per process (check_flags and
    check_numbers both ask)."""
    import inspect

    from hydra.utils import get_class

    try:
        params = inspect.signature(get_class(target)).parameters
    except Exception:  # noqa: BLE001 - an unknown target is reported when the experiment is built
        return {}
    kinds = {}
    for name, param in params.items():
        annotation = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation,
                                                                                        "__name__", "")
        kinds[name] = frozenset(part.strip() for part in annotation.split("|"))
    return kinds


def check_numbers(node: DictConfig, group: str) -> None:
    """A number (a constructor argument annotated `int` or `float`, optionally `| None`) takes a number only: text
    (`data.batch_size=abc`) was a traceback, a fraction for an integer (`data.batch_size=2.5`) was silently cut to 2
    (a whole-valued float, `data.batch_size=64.0`, is taken as 64) and NaN (`model.dropout=nan`) passed every `< 0`
    check. A factory (an argument annotated `Callable`, such as `model.optimizer`) takes a mapping with `_target_`:
    `model.optimizer=5` was a traceback once training started."""
    import math

    for name, kinds in _annotated_kinds(node).items():
        if any(kind.startswith("Callable") for kind in kinds) and name in node:
            value = node[name]
            if not (value is None and "None" in kinds) and not (isinstance(value, DictConfig) and "_target_" in value):
                raise UserError(f"{group}.{name} must be {'null or ' if 'None' in kinds else ''}a mapping with "
                                f"_target_ (and _partial_: true), got {value!r}")
            continue
        numbers = kinds - {"None"}
        if not numbers or not numbers <= {"int", "float"} or name not in node:
            continue
        value = node[name]
        if value is None and "None" in kinds:
            continue
        whole = numbers == {"int"}
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or (
                whole and isinstance(value, float) and not value.is_integer()):
            raise UserError(f"{group}.{name} must be {'a whole number' if whole else 'a number'}, got {value!r}")
        if whole and isinstance(value, float):
            node[name] = int(value)  # 64.0 is 64, as in the list and mapping options (common/checks.py)


def _probe_optimizer(cfg: DictConfig) -> None:
    """Build `model.optimizer` once on a dummy parameter, so that a bad learning rate, betas or an unknown keyword is
    a one-line error now rather than a traceback from `configure_optimizers` once training starts."""
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    spec = cfg.model.get("optimizer") if "model" in cfg else None
    if not isinstance(spec, DictConfig) or "_target_" not in spec:
        return
    try:
        factory = hydra_instantiate(spec, _convert_="partial")
        optimizer = factory([torch.nn.Parameter(torch.zeros(1))]) if callable(factory) else None
    except (InstantiationException, ValueError, TypeError) as err:
        cause = (err.__cause__ or err) if isinstance(err, InstantiationException) else err
        raise UserError(f"model.optimizer: {one_line(cause)}") from None
    lrs = [group.get("lr") for group in getattr(optimizer, "param_groups", [])]
    lbfgs_steps, max_steps = cfg.model.get("lbfgs_steps") or 0, cfg.get("trainer", {}).get("max_steps", -1)
    only_lbfgs = isinstance(max_steps, int) and 0 <= max_steps <= lbfgs_steps  # L-BFGS never reads this lr
    if (cfg.get("stage", "fit_test") != "test" and not only_lbfgs
            and any(isinstance(lr, (int, float)) and lr == 0 for lr in lrs)):
        # torch accepts it, and the run trains for its whole budget without moving a weight (bad-config sweep)
        raise UserError("model.optimizer.lr=0 trains nothing: training needs model.optimizer.lr > 0 (an untrained "
                        "model's test metrics: trainer.max_steps=1, or zoo eval of a checkpoint)")


_RELEASE_REGISTERED = threading.Event()


def release_process_group_at_exit() -> None:
    """Destroy the default process group while the interpreter is still whole, once, at exit. Lightning does so for
    NCCL only: a gloo group left to interpreter finalization can abort the process (SIGABRT, "terminate called without
    an active exception": gloo's worker threads may still hold tensors; once in CI, a rank of a two-process CPU run
    that had finished its work). A group the process destroyed itself is left alone."""
    if _RELEASE_REGISTERED.is_set():
        return
    _RELEASE_REGISTERED.set()
    import atexit

    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


STAGES = ("fit", "test", "fit_test")  # test: a trained run's last.ckpt (zoo train run_id=X stage=test) or zoo eval's


def run(cfg: DictConfig, *, make_run_dir: bool = True, extra_callbacks: list | None = None,
        test_ckpt: str | None = None, keep: dict | None = None) -> dict[str, float]:
    """Train and/or test one resolved config; return the final metrics as floats.

    `keep`, when given, receives the trainer, model and datamodule (so `zoo check` can evaluate the same trained
    model again under other test-time settings).

    Every (re)start calls `fit(ckpt_path="last")`, so a requeued or restarted run resumes from its
    periodic `last.ckpt` and ends with the same global step as an uninterrupted run.
    """
    import lightning as L
    import torch

    from launch.callbacks import FitStarted, SaveResumedConfig
    from launch.wandb_logger import finish_failed

    _quiet_known_warnings()
    release_process_group_at_exit()  # a DDP run's process group (made in fit / test) ends before Python does
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    check_settings(cfg)
    torch.set_float32_matmul_precision(_matmul_precision(cfg))
    if make_run_dir:
        cfg = runs.assign_run_id(cfg)
    L.seed_everything(_seed(cfg), workers=True, verbose=False)
    # experiment and trainer are built before anything is written: a bad config leaves no run directory behind
    datamodule, model = instantiate(cfg)
    run_dir = runs.run_of(cfg) if make_run_dir else None
    fresh = run_dir is not None and not run_dir.config_file.exists()  # this call makes the run directory
    started = FitStarted()
    if run_dir is not None and not fresh and cfg.stage in ("fit", "fit_test"):
        extra_callbacks = [*(extra_callbacks or []), SaveResumedConfig(run_dir, cfg)]
    # a fit that resumes: its checkpoint is checked now (a torn or foreign last.ckpt is one line) and its step keeps
    # the run's metrics.csv up to there
    resume_step = _guard_checkpoint(run_dir, cfg) if cfg.stage in ("fit", "fit_test") else None
    if (resume_step is None and run_dir is not None and cfg.stage in ("fit", "fit_test")
            and (run_dir.dir / "metrics.csv").exists()):
        # a run that logged but has no last.ckpt (moved away, or killed before its first save) trains again from
        # step 0; the earlier attempt's rows leave metrics.csv once the new ones come (they were kept twice)
        resume_step = 0
        if runs.global_rank() == 0:
            print(f"run {run_dir.run_id} has no checkpoint: it trains again from step 0", file=sys.stderr)
    trainer = build_trainer(cfg, run_dir, [*(extra_callbacks or []), started], resume_step, model=model)
    if make_run_dir:
        run_dir = runs.create(cfg)
    try:
        return _fit_and_test(cfg, trainer, model, datamodule, run_dir, test_ckpt, keep)
    except UserError as err:
        # bad data found in the datamodule's setup (a missing file, a wrong shape), before any training: no run
        # directory is left behind; an error once training has started (a NaN loss) keeps the run's evidence
        if fresh and not started.started:
            _discard_unstarted(trainer, run_dir)
        else:
            finish_failed(err)
        raise
    except BaseException as err:  # a bug, Ctrl-C, SIGTERM, a preemption: the W&B run does not end as finished
        if fresh and not started.started and not is_sigterm(err):
            # a failure in the data's setup (a value read from a file that no check caught) or a Ctrl-C before the
            # first step: nothing was trained, so the run directory this call made does not stay half-made (the
            # traceback still shows); a SIGTERM keeps it, a SLURM requeue resumes that run
            _discard_unstarted(trainer, run_dir)
        else:
            finish_failed(err)
        if is_sigterm(err) and run_dir is not None and trainer.is_global_zero:
            _say_where_it_stopped(trainer, run_dir)
        raise


def _say_where_it_stopped(trainer, run_dir: runs.Run) -> None:
    """After a SIGTERM (launch.termination): the step the run stopped at and how to go on from it."""
    from launch.callbacks import RunCheckpoint

    saver = next((c for c in trainer.callbacks if isinstance(c, RunCheckpoint)), None)
    if not (run_dir.checkpoints / "last.ckpt").exists():
        held = "no checkpoint was saved"
    elif saver is not None and saver._last_global_step_saved == trainer.global_step:
        held = f"last.ckpt holds step {trainer.global_step}"
    else:
        held = "last.ckpt holds an earlier step"
    print(f"run {run_dir.run_id} stopped by SIGTERM after step {trainer.global_step}; {held}; the same command "
          f"(run_id={run_dir.run_id}) resumes it", file=sys.stderr, flush=True)


def check_settings(cfg: DictConfig) -> None:
    """The run's own settings (stage, progress bar, matmul precision, interpolations, trainer integers)."""
    _matmul_precision(cfg)
    if cfg.get("stage") not in STAGES:
        raise UserError(f"stage must be one of {', '.join(STAGES)}, got {cfg.get('stage')!r}")
    if cfg.get("progress_bar", "auto") not in ("auto", True, False):
        raise UserError(f"progress_bar must be auto, true or false, got {cfg.progress_bar!r}")
    if (cfg.get("logger") or {}).get("wandb"):
        from launch.wandb_logger import check_wandb_settings

        check_wandb_settings(cfg.logger.wandb)
    from launch.config import check_resolves

    check_resolves(cfg)  # a resumed or evaluated run's overrides are applied to its saved config, not composed
    check_trainer_integers(cfg.get("trainer") or {})


def preflight(cfg: DictConfig) -> None:
    """What `run` checks before it writes anything, for a job about to be submitted (`zoo train launcher=slurm`): a
    bad setting, model or datamodule option is a one-line error (exit 2) here, not a failed job that leaves a run
    directory behind. The trainer is not built (a login node may have no GPU), nor is any data read."""
    check_settings(cfg)
    instantiate(cfg)


def _fit_and_test(cfg, trainer, model, datamodule, run_dir, test_ckpt, keep) -> dict[str, float]:
    """`run`'s fit (resuming from last.ckpt) and test stages; the final metrics."""
    from launch.callbacks import FitStarted, RestoreBestWeights

    notice = effective_batch_notice(cfg, trainer.world_size)
    if notice and trainer.is_global_zero:
        log.warning(notice)
    if trainer.world_size > 1 and getattr(datamodule, "same_batch_on_every_rank", False) and trainer.is_global_zero:
        log.warning("DDP: %s trains every step on one full batch, the same on every rank: %d processes repeat the "
                    "same computation (no speed-up; train on one device)", type(datamodule).__name__,
                    trainer.world_size)
    from datamodules.collocation import fresh_points_notice

    notice = fresh_points_notice(datamodule, trainer.world_size)
    if notice and trainer.is_global_zero:
        log.warning(notice)
    metrics: dict[str, float] = {}
    if cfg.stage in ("fit", "fit_test"):
        ckpt = "last" if run_dir is not None else None
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        # before training, a setting Lightning refuses (e.g. a resume whose trainer.max_epochs is below the run's
        # epoch) or a last.ckpt whose weights do not fit the model is one line; raised by a training step, a bug to
        # show in full
        def trained() -> bool:
            return any(isinstance(c, FitStarted) and c.trained for c in trainer.callbacks)

        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
        except MisconfigurationException as err:
            if trained():
                raise
            raise UserError(f"trainer: {one_line(err, 300)}") from None
        except RuntimeError as err:
            if trained() or "state_dict" not in str(err):
                raise
            raise UserError(f"checkpoint {run_dir.last_checkpoint if run_dir else ckpt} does not fit this model: "
                            f"{str(err).splitlines()[0][:200]}; move it away to restart the run from scratch") from None
        except ValueError as err:  # torch's Optimizer.load_state_dict: the saved groups are not this optimizer's
            if trained() or "parameter group" not in str(err):
                raise
            raise UserError(f"checkpoint {run_dir.last_checkpoint if run_dir else ckpt} does not fit this model's "
                            f"optimizer: {str(err).splitlines()[0][:200]}; move it away to restart the run from "
                            "scratch") from None
        metrics.update(_floats(trainer.callback_metrics))
        best = next((c for c in trainer.callbacks if isinstance(c, RestoreBestWeights)), None)
        if best is not None and best.best_epoch is not None:
            metrics["best_epoch"] = float(best.best_epoch)
        if run_dir is not None and trainer.is_global_zero and trained():
            # the fit's train and val metrics, for a restart that only tests (a job preempted during the test)
            import json

            fit = {**metrics, "global_step": float(trainer.global_step), "epoch": float(trainer.current_epoch)}
            runs.write_atomic(run_dir.dir / FIT_METRICS, json.dumps(fit, indent=2, sort_keys=True))
    if cfg.stage == "test" and test_ckpt is None and run_dir is not None:  # `zoo train ... run_id=X stage=test`
        test_ckpt = str(_checkpoint_to_test(cfg, run_dir))
    tested_at = None
    if cfg.stage in ("test", "fit_test"):
        if test_ckpt is not None:
            ckpt = _load_checkpoint(test_ckpt)
            epochs = epochs_trained(ckpt)
            tested_at = (float(ckpt.get("global_step", 0)), float(ckpt.get("epoch", 0) if epochs is None else epochs))
        if cfg.stage == "test" and tested_at is not None:  # logged at the tested weights' step, not step 0
            for logger in trainer.loggers:
                if hasattr(logger, "tested_at"):
                    logger.tested_at = tested_at
        try:
            trainer.test(model, datamodule=datamodule, verbose=False, ckpt_path=test_ckpt)
        except RuntimeError as err:
            if test_ckpt is None or "state_dict" not in str(err):
                raise
            raise UserError(f"checkpoint {test_ckpt} does not fit this model: {str(err).splitlines()[0][:200]}") \
                from None
        metrics.update(_floats(trainer.callback_metrics))
    # a test of a checkpoint reports the checkpoint's step and epoch (the test-only trainer's are 0)
    metrics["global_step"], metrics["epoch"] = tested_at or (float(trainer.global_step), float(trainer.current_epoch))
    if keep is not None:
        keep.update(trainer=trainer, model=model, datamodule=datamodule)
    if run_dir is not None and trainer.is_global_zero:
        metrics = _finish(trainer, run_dir, metrics, cfg.stage)  # what the run's metrics file now holds
    return metrics


def _checkpoint_to_test(cfg: DictConfig, run: runs.Run) -> Path:
    """stage=test of a run: its best checkpoint with checkpoint.test_on=best (as fit_test would report), else its
    last.ckpt; a one-line error when the run has none."""
    if cfg.checkpoint.get("test_on", "final") == "best":
        best = sorted(run.checkpoints.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not best:
            raise UserError(f"stage=test with checkpoint.test_on=best tests run {run.run_id}'s best-*.ckpt and it "
                            f"has none (set checkpoint.monitor when training it, or use checkpoint.test_on=final)")
        return best[-1]
    if not run.last_checkpoint.exists():
        raise UserError(f"stage=test tests a trained run's last.ckpt and run {run.run_id} has none: train it "
                        "first (stage=fit_test), or test any checkpoint with `zoo eval ckpt=<path>`")
    return run.last_checkpoint


def _discard_unstarted(trainer, run: runs.Run) -> None:
    """After a UserError in a run this call created: close its W&B run and, when no checkpoint was written, remove
    the run directory (rank zero), so a bad input leaves nothing half-made behind."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish(exit_code=2)
    if trainer.is_global_zero:
        runs.remove_unstarted(run)


def effective_batch_notice(cfg: DictConfig, world_size: int) -> str | None:
    """Under DDP `data.batch_size` is per process (Lightning's convention), so W processes step on W times the
    configured batch with the configured learning rate. The paper-scale configs give the paper's (single-device) batch:
    say what the run really uses and how to keep the paper's."""
    batch = (cfg.get("data") or {}).get("batch_size")
    if world_size <= 1 or not isinstance(batch, int):
        return None
    per_rank = batch // world_size
    keep = (f"data.batch_size={per_rank} keeps the global batch at {batch}" if per_rank * world_size == batch
            else f"{batch} is not divisible by {world_size}, so no per-process batch keeps it exactly")
    return (f"DDP: data.batch_size={batch} is per process; {world_size} processes step on a global batch of "
            f"{batch * world_size} with the configured learning rate ({keep})")


def _matmul_precision(cfg: DictConfig) -> str:
    """`matmul_precision` (highest | high | medium; null: highest) for torch.set_float32_matmul_precision; anything else
    is a one-line config error."""
    value = cfg.get("matmul_precision") or "highest"
    if value not in ("highest", "high", "medium"):
        raise UserError(f"matmul_precision must be highest, high or medium, got {value!r}")
    return value


def _seed(cfg: DictConfig) -> int | None:
    """The run's seed as an int (None: Lightning picks one); anything else is a one-line config error."""
    seed = cfg.get("seed")
    if seed is None:
        return None
    try:
        return int(seed)
    except (TypeError, ValueError):
        raise UserError(f"seed must be an integer, got {seed!r}") from None


TRAINER_INTEGERS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "check_val_every_n_epoch",
                    "accumulate_grad_batches", "log_every_n_steps", "num_sanity_val_steps")


def check_trainer_integers(trainer_cfg) -> None:
    """Lightning takes a string for these and fails later with an assertion deep in its loop: one line instead."""
    for key in TRAINER_INTEGERS:
        value = trainer_cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"trainer.{key} must be an integer, got {value!r}")


def epochs_trained(ckpt: dict) -> int | None:
    """The epochs whose training had finished when `ckpt` was saved, as final_metrics.json counts them (Lightning's
    own `epoch` entry is the index of the epoch it was saved in: one less at an epoch's end); None when unknown."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def run_identity(cfg: DictConfig) -> dict[str, str]:
    """What a run's checkpoints record of it (`callbacks.RunIdentity`): its experiment and model class."""
    return {"experiment": str(cfg.get("experiment_name")), "model": str(OmegaConf.select(cfg, "model._target_"))}


class ResumeStep(int):
    """The global step a fit resumes from, and whether its checkpoint was saved at a batch's end before what follows
    that batch (a validation, the epoch's end: `RunCheckpoint`'s first save), which the resumed run then runs
    (`fit_loop.ValidationFirstEpochLoop`): metrics.csv drops that validation's earlier row (`metrics_csv`)."""

    def __new__(cls, step: int, replays_what_follows: bool = False) -> ResumeStep:
        value = super().__new__(cls, step)
        value.replays_what_follows = replays_what_follows
        return value


def _saved_before_what_follows(ckpt: dict) -> bool:
    from launch.fit_loop import saved_at_batch_end

    try:
        total = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
        at_batch_end = saved_at_batch_end(total["ready"], total["started"], total["processed"], total["completed"])
    except (KeyError, TypeError):
        return False
    states = [v for k, v in (ckpt.get("callbacks") or {}).items() if str(k).startswith("RunCheckpoint")]
    return at_batch_end and any(isinstance(v, dict) and v.get("save_again_after") for v in states)


def _guard_checkpoint(run: runs.Run | None, cfg: DictConfig | None = None) -> int | None:
    """A torn or foreign last.ckpt is a clear error, not a stack trace deep inside Lightning, and so is a budget
    (`cfg.trainer`) below what the run has trained; returns its global step (None without one)."""
    if run is None or not run.last_checkpoint.exists():
        return None
    ckpt = _load_checkpoint(run.last_checkpoint, hint="; move it away to restart the run from scratch")
    if not {"optimizer_states", "loops"} <= ckpt.keys():
        raise UserError(f"checkpoint {run.last_checkpoint} holds weights only (no optimizer or loop state), so it "
                        "cannot resume the run; move it away to restart the run from scratch")
    identity = ckpt.get("paperzoo")
    if cfg is not None and isinstance(identity, dict):
        mine = run_identity(cfg)
        if identity != mine:
            raise UserError(f"checkpoint {run.last_checkpoint} was written by experiment {identity.get('experiment')} "
                            f"({identity.get('model')}), not by this run's {mine['experiment']}; move it away to "
                            "restart the run from scratch")
    step = ResumeStep(int(ckpt.get("global_step", 0)), _saved_before_what_follows(ckpt))
    trainer_cfg = cfg.get("trainer") or {} if cfg is not None else {}
    check_trainer_integers(trainer_cfg)
    epochs = epochs_trained(ckpt)
    max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps")
    limit = trainer_cfg.get("limit_train_batches")
    try:
        batches = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        in_epoch = 0 if batches["is_last_batch"] else int(batches["current"]["ready"])
    except (KeyError, TypeError, ValueError):
        in_epoch = 0
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < in_epoch:
        # Lightning would train the interrupted epoch on to its full length (it ends an epoch at exactly the limit)
        raise UserError(f"run {run.run_id} stopped {in_epoch} batches into an epoch: it cannot resume with "
                        f"trainer.limit_train_batches={limit}; keep the limit until the epoch ends, or resume from an "
                        f"epoch's end")
    below = []
    if epochs is not None and max_epochs is not None and 0 <= max_epochs < epochs:
        below.append(f"trainer.max_epochs={max_epochs} (it has trained {epochs} epochs)")
    if max_steps is not None and 0 <= max_steps < step:
        below.append(f"trainer.max_steps={max_steps} (it has trained {step} steps)")
    if below:
        raise UserError(f"run {run.run_id} cannot resume with {' and '.join(below)}: give a budget at or above what "
                        "it has trained (stage=test tests it as it is)")
    return step


def _load_checkpoint(path, hint: str = "") -> dict:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}){hint}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint{hint}")
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise UserError(f"checkpoint {path} is damaged: {problem}{hint}")
    return ckpt


def _checkpoint_problem(ckpt: dict) -> str | None:
    """What makes a loaded checkpoint unusable before Lightning restores it (a traceback deep inside Lightning or
    torch, or a silent NaN evaluation, otherwise): a missing Lightning version (a hand-saved dict), a state dict that
    is not a mapping of tensors, NaN in the weights or the optimizer's state, or loop / step / optimizer / scheduler
    entries of the wrong kind. None when it looks whole."""
    import torch

    if "pytorch-lightning_version" not in ckpt:
        return "no pytorch-lightning_version (a hand-saved dict, not one written by Lightning)"
    weights = ckpt["state_dict"]
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "its state_dict is not a mapping of tensors"
    nan = next((k for k, v in weights.items() if v.is_floating_point() and bool(torch.isnan(v).any())), None)
    if nan is not None:
        return f"NaN in the weights ({nan})"
    step = ckpt.get("global_step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"global_step is {step!r}, not a step count"
    loops = ckpt.get("loops")
    if loops is not None and not (isinstance(loops, Mapping) and all(isinstance(v, Mapping) for v in loops.values())):
        return "its loops entry is not a mapping of loop states"
    optimizers = ckpt.get("optimizer_states")
    if optimizers is not None:
        if not isinstance(optimizers, list) or not all(
                isinstance(o, Mapping) and isinstance(o.get("param_groups"), list) and o["param_groups"]
                for o in optimizers):
            return "its optimizer_states are not optimizer state dicts"
        for state in (o.get("state") or {} for o in optimizers):
            values = state.values() if isinstance(state, Mapping) else []
            if any(isinstance(t, torch.Tensor) and t.is_floating_point() and bool(torch.isnan(t).any())
                   for per_param in values if isinstance(per_param, Mapping) for t in per_param.values()):
                return "NaN in the optimizer's state"
    schedulers = ckpt.get("lr_schedulers")
    if schedulers is not None and not (isinstance(schedulers, list) and all(isinstance(s, Mapping) and s
                                                                            for s in schedulers)):
        return "its lr_schedulers are not scheduler state dicts"
    return None


def _floats(metrics) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


FIT_METRICS = "fit_metrics.json"  # the last fit's metrics, written when it ends (before its test)


def _with_earlier_metrics(path: Path, metrics: dict[str, float]) -> dict[str, float]:
    """A restarted run's final metrics over those an earlier start of the run wrote (its final metrics, else the
    metrics its fit ended with, `FIT_METRICS` beside them: a start preempted during its test wrote no final ones): a
    train or validation metric this process did not log keeps its last value (as in a straight run's callback
    metrics), e.g. those of a finished run whose restart (a requeue during its test) trains nothing; a restart that
    trains nothing keeps the epoch (Lightning's counter is not advanced by an empty fit). Test metrics and
    `best_epoch` are this process's only."""
    import json

    found = []
    for source in (path, path.with_name(FIT_METRICS)):
        try:
            record = json.loads(source.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found.append(record)
    if not found:
        return metrics
    earlier = max(found, key=lambda r: r.get("global_step", -1) if isinstance(r.get("global_step"), (int, float))
                  else -1)  # the later of the two (the final metrics when they are as late: max keeps the first)
    kept = {k: v for k, v in earlier.items() if k.startswith(("train/", "val/")) and isinstance(v, (int, float))}
    merged = {**kept, **metrics}
    if metrics.get("global_step") == earlier.get("global_step") and "epoch" in earlier:
        merged["epoch"] = earlier["epoch"]
    return merged


# set when this process's run has written its final metrics: a SLURM job ignores a preemption signal after that
# (launch.slurm._PreemptionWatch; cleared by each job's start)
FINISHED = threading.Event()


def _finish(trainer, run: runs.Run, metrics: dict[str, float], stage: str = "fit_test") -> dict[str, float]:
    """Write the run's final (or a re-test's) metrics and end its W&B run; the metrics written: a restart that
    trains nothing reports the run's train and validation metrics too, not only its test."""
    import json

    # stage=test of a trained run adds test_metrics.json: the run's own final metrics (train, val, best epoch) stay
    name = "test_metrics.json" if stage == "test" else "final_metrics.json"
    if stage != "test":
        metrics = _with_earlier_metrics(run.dir / name, metrics)
    runs.write_atomic(run.dir / name, json.dumps(metrics, indent=2, sort_keys=True))
    FINISHED.set()
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment  # noqa: B018 - make sure the run exists before finishing
            import wandb

            if "best_epoch" in metrics and wandb.run is not None:  # not logged by a step: the run's summary only
                wandb.run.summary["best_epoch"] = metrics["best_epoch"]
            offline = wandb.run is not None and wandb.run.settings.mode in ("offline", "dryrun")
            wandb.finish()
            if offline:
                # a resumed or requeued run writes one offline folder per start, each counting its steps from 0:
                # `--id` syncs them into the one run, in order of start time (separately, a later one would start
                # the run's history over)
                print(f"W&B run saved offline; upload it with: wandb sync --id {run.run_id} "
                      f"{run.dir / 'wandb'}/offline-run-*-{run.run_id}", file=sys.stderr)
    return metrics
