"""Callbacks and plugins every run gets: figures, a finite-loss guard, atomic checkpoints; and the best-weights
restore of `checkpoint.test_on=best`."""
from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from launch.errors import UserError

log = logging.getLogger("paperzoo")


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss."""


class FiniteLossGuard(L.Callback):
    """Stop at the first non-finite training loss, naming the step and the last finite value."""

    def __init__(self) -> None:
        self.last_finite: tuple[int, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        # under DDP every rank decides together: a NaN on one rank alone must stop all of them (a rank that raised
        # alone would leave the others waiting in the next gradient all-reduce)
        bad = trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False) \
            if trainer.world_size > 1 else not math.isfinite(value)
        if not bad:
            self.last_finite = (trainer.global_step, value)
            return
        before = (f"last finite value {self.last_finite[1]:.6g} at step {self.last_finite[0]}"
                  if self.last_finite else "no finite loss before it")
        where = "" if not math.isfinite(value) else " on another DDP rank"
        raise NonFiniteLossError(f"loss became {value if not where else 'non-finite'}{where} at step "
                                 f"{trainer.global_step} (epoch {trainer.current_epoch}); "
                                 f"{before}. Lower the learning rate or check the data.")


class FiguresCallback(L.Callback):
    """Save each module's `figures()` as PNG under the run dir and log them to W&B (rank zero): after the test, and
    after the fit only when no test follows (`stage=fit`). A test after the fit draws from the same weights, so figures
    at both ends would be saved under one name and logged twice (as val/ and test/)."""

    def __init__(self, directory: Path, at_fit_end: bool = True) -> None:
        self.directory = Path(directory)
        self.at_fit_end = at_fit_end

    @rank_zero_only
    def _save(self, trainer, pl_module, stage: str) -> None:
        make = getattr(pl_module, "figures", None)
        if make is None:
            return
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        figures = make() or {}
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            path = self.directory / f"{name}.png"
            tmp = path.with_name(path.name + ".tmp.png")
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
            os.replace(tmp, path)
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
                    logger.log_image(key=f"{stage}/{name}", images=[str(path)], step=trainer.global_step)
            plt.close(fig)

    def on_test_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "test")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.at_fit_end and not trainer.sanity_checking:
            self._save(trainer, pl_module, "val")


class RestoreBestWeights(L.Callback):
    """Keep a copy of the weights at the best value of a validation metric and load it back when fit ends, so that
    the test (and a later `zoo check` evaluation) sees the best epoch's model (`checkpoint.test_on=best`). This is the
    protocol of papers that report the best evaluation over training (e.g. the official LightGCN and UltraGCN code,
    whose evaluation split is the test split). Works without a run directory; the copy is part of the callback's
    checkpoint state, so a resumed run keeps its best so far. Under DDP rank 0's metric decides for every rank (the
    ranks hold the same weights), so every rank restores the same epoch."""

    def __init__(self, monitor: str, mode: str = "max") -> None:
        if mode not in ("min", "max"):
            raise UserError(f"checkpoint.mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self._state_seen = False  # a checkpoint's state was offered to load_state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and not self._state_seen and trainer.is_global_zero:
            log.warning("checkpoint.test_on=best was added on resume: the best epoch is searched from step %d on (the "
                        "validations before it are in metrics.csv, not compared)", trainer.global_step)

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            known = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/"))) or "none"
            raise UserError(f"checkpoint.monitor={self.monitor!r} was not logged by validation (logged: {known})")
        value = float(metric)
        # rank 0 decides, so every rank keeps the same epoch even for a metric logged without sync_dist
        value, better = trainer.strategy.broadcast((value, math.isfinite(value) and self._better(value)), src=0)
        if better:
            self.best_value, self.best_epoch = value, int(trainer.current_epoch)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.best_state is None:
            if trainer.is_global_zero:
                log.warning("checkpoint.test_on=best: no validation ran (the step budget ended first), so the test "
                            "sees the final weights; best_epoch is not reported")
            return
        pl_module.load_state_dict(self.best_state)
        if trainer.is_global_zero:
            print(f"test on the best weights: epoch {self.best_epoch}, {self.monitor} = {self.best_value:.6g}")

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state,
                "monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state_dict: dict) -> None:
        """The best so far of the same monitor and mode; a resume that changes either (`checkpoint.monitor` /
        `checkpoint.mode`, keys a resume may change) starts a new search, since the old best is not comparable."""
        self._state_seen = True
        saved = (state_dict.get("monitor", self.monitor), state_dict.get("mode", self.mode))
        if saved != (self.monitor, self.mode):
            log.warning("checkpoint.test_on=best: the resumed run monitors %s (%s), the checkpoint's best was of %s "
                        "(%s); the best epoch is searched again from here", self.monitor, self.mode, *saved)
            return
        self.best_value = state_dict.get("best_value")
        self.best_epoch = state_dict.get("best_epoch")
        self.best_state = state_dict.get("best_state")


class ConfiguredEarlyStopping(EarlyStopping):
    """Lightning's `EarlyStopping`, except that a restore keeps the configured patience. Lightning's takes the
    checkpoint's, so `early_stopping.patience=N` given to a resumed run (a key a resume may change) was ignored. The
    wait count and best score are restored as before (under the same monitor and mode; otherwise the search starts at
    the resume, with a warning)."""

    _state_loaded = False

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
        self._state_loaded = True

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step > 0 and not self._state_loaded and trainer.is_global_zero:
            log.warning("early stopping on %s (%s) was added or changed on resume: it counts from step %d on (the "
                        "validations before it are in metrics.csv, not counted)", self.monitor, self.mode,
                        trainer.global_step)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary name and rename, so a killed job never leaves a torn last.ckpt (the name is
    the writing process's own: two writers never share one, and a failed write leaves no temporary file)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import secrets

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed on GPUs that support bf16, 16-mixed on older GPUs, 32-true elsewhere.

    The GPU's compute capability is read through NVML so that no CUDA context exists before the Trainer.
    """
    if str(precision) != "auto":
        return str(precision)
    if accelerator not in ("gpu", "cuda", "auto"):
        return "32-true"
    major = _nvml_compute_major()
    if major is None:
        return "32-true"
    return "bf16-mixed" if major >= 8 else "16-mixed"


def _nvml_compute_major() -> int | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                return None
            major, _ = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0))
            return int(major)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


class SaveResumedConfig(L.Callback):
    """A resumed run's changed settings (a new budget, another precision) go into its config.yaml once the resumed
    fit has trained a step, or its test starts (a finished run restarted, e.g. under another precision, trains
    nothing but writes new test metrics): a resume that fails before that (a bad value, a schedule that cannot be
    extended, an error on restore) leaves the run's config as it was, next to the checkpoint it describes. The saved
    stage is kept (a stage given on resume is for that call only)."""

    def __init__(self, run, cfg) -> None:
        from omegaconf import OmegaConf

        from launch import runs

        saved = runs.saved_config(run)
        self.run, self.cfg, self.done = run, cfg, saved is None
        if saved is not None:
            self.stage = saved.get("stage")
            mine = OmegaConf.to_container(cfg, resolve=True)
            theirs = OmegaConf.to_container(saved, resolve=True)
            mine["stage"] = theirs.get("stage")
            self.done = mine == theirs

    def on_train_batch_end(self, trainer, *args) -> None:
        self._save(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self._save(trainer)

    def _save(self, trainer) -> None:
        if self.done:
            return
        self.done = True
        if trainer.is_global_zero:
            from launch import runs

            runs.save_resumed_config(self.run, self.cfg, stage=self.stage)


class RunCheckpoint(ModelCheckpoint):
    """The run's `last.ckpt`: Lightning's periodic ModelCheckpoint (every_n_epochs or every_n_train_steps), which
    also saves when the fit ends: at the batch that reaches `trainer.max_steps`, and at the end of the epoch that
    reaches it, `trainer.max_epochs` or stops early. With a step period that does not divide the budget, last.ckpt
    lagged the final weights: `stage=test` and `zoo eval` tested older weights, and a longer budget redid the last
    steps.

    A save made at a batch that a validation follows (the epoch's last batch, or a `val_check_interval` batch) is
    made again, over it, after that validation (at the epoch's end, or at the validation's end): Lightning skips, on
    resume, a validation that follows the checkpoint's batch, and with it its early-stopping and best-weights
    bookkeeping and the epoch-end hooks. A run resumed from the second save continues exactly (with
    `launch.fit_loop`'s loop, which `build_trainer` installs); the first is what is left if the run stops during the
    validation: `launch.fit_loop.ValidationFirstEpochLoop` runs that validation on resume, before the next batch, and
    the first save's state (`save_again_after`) has the resumed run save again after it, as the uninterrupted run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._save_again_after: str | None = None  # "epoch_end" | "validation_end"
        self._after_this_batch: str | None = None  # what follows the batch whose on_train_batch_end saves now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        saved_before = self._last_global_step_saved
        # before the save, so that its state records it (`state_dict`); the save changes nothing it reads
        self._after_this_batch = _validation_or_epoch_end_after(trainer)
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            # the fit's last step, or a stop that every rank agreed on at this batch (launch.termination: SIGTERM)
            if 0 < trainer.max_steps <= trainer.global_step or trainer.received_sigterm:
                self._save_final(trainer)
        finally:
            after, self._after_this_batch = self._after_this_batch, None
        # saved at this batch (a later gradient-accumulation batch of the same step does not count)
        if self._last_global_step_saved != saved_before:
            self._save_again_after = after

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._save_again_after == "validation_end" and not trainer.sanity_checking:
            self._save_again(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        max_epochs = trainer.max_epochs
        pending, self._save_again_after = self._save_again_after, None  # a save-again never outlives its epoch
        if pending == "epoch_end":
            self._save_again(trainer)
        elif (trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
                or (max_epochs is not None and 0 <= max_epochs <= trainer.current_epoch + 1)):
            self._save_final(trainer)

    def _save_again(self, trainer) -> None:
        self._save_again_after = None
        self._last_global_step_saved = -1  # the same step, saved again after its validation
        self._save_final(trainer)

    def _save_final(self, trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skips a step it has already saved
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # the step of this save, before the checkpoint's state is taken: Lightning sets it after writing, so the
        # checkpoint recorded the save before it and a resumed accumulation run saved again inside its first window
        self._last_global_step_saved = trainer.global_step
        super()._save_checkpoint(trainer, filepath)

    def state_dict(self) -> dict:
        # the step last saved, so that a resumed run does not save that step again in the middle of a gradient
        # accumulation window (ModelCheckpoint starts from 0 in a new process)
        # and, for a save at a batch's end, what follows that batch: a run resumed from it saves again after it
        return {**super().state_dict(), "last_global_step_saved": self._last_global_step_saved,
                "save_again_after": self._after_this_batch}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._last_global_step_saved = int(state_dict.get("last_global_step_saved", self._last_global_step_saved))
        self._save_again_after = state_dict.get("save_again_after")


def _validation_or_epoch_end_after(trainer) -> str | None:
    """What follows the batch just trained: "epoch_end" on an epoch's last batch (its validation, if due, comes
    first), "validation_end" before a validation inside the epoch, else None. Time-based validation intervals are
    not looked at (Lightning's check reads the clock)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if epoch_loop.batch_progress.is_last_batch:
        return "epoch_end"
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return None
    return "validation_end" if epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher) else None


def every_ranks(trainer, mine) -> list:
    """`mine` from every rank, in rank order, for a checkpoint that must hold each rank's own state (only rank 0 writes
    the file). Call it from a callback's `state_dict`: Lightning builds the checkpoint on every rank (its
    `dump_checkpoint`), so the gather is collective. One process: `[mine]`."""
    world = getattr(trainer, "world_size", 1)
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        ranks: list = [None] * world
        torch.distributed.all_gather_object(ranks, mine)
        return ranks
    return [mine]


class ResumeRandomState(L.Callback):
    """The global random states (torch on the CPU and on this process's CUDA device, numpy, Python's `random`) go into
    every checkpoint and are put back when a resumed fit starts training, so the layers that draw from them (dropout,
    stochastic depth, noise injection) draw what the uninterrupted run drew after the checkpoint. Lightning restores
    weights, optimizer and loops but not these: a resumed run re-seeded at start and diverged from its first step.
    Under DDP every rank's states are gathered into the checkpoint (ranks whose batches differ in shape draw
    different amounts) and each rank gets its own back; on another number of ranks, every rank gets rank 0's. Put
    back in `on_train_start`, after the sanity check (which Lightning runs in isolated random states anyway)."""

    def __init__(self) -> None:
        self._pending: dict | None = None
        self._trainer = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    @staticmethod
    def _local_states() -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # plain values: checkpoints load weights_only
        # this process's CUDA device only (every device's state would open a CUDA context on each GPU in every rank)
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return {"torch": torch.get_rng_state(), "cuda": cuda,
                "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)},
                "python": random.getstate()}

    def state_dict(self) -> dict:
        return {"ranks": every_ranks(self._trainer, self._local_states())}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        pending, self._pending = self._pending, None
        ranks = (pending or {}).get("ranks")
        if not ranks:
            return
        state = ranks[trainer.global_rank] if len(ranks) == trainer.world_size else ranks[0]
        torch.set_rng_state(state["torch"])
        if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        numpy_state = state["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["gauss"]))
        random.setstate(state["python"])


class RunIdentity(L.Callback):
    """Writes the experiment and model class into every checkpoint (`checkpoint["paperzoo"]`), so that a resume from
    another run's last.ckpt (a copied file) is a one-line error (`train._guard_checkpoint`), not a load of weights
    whose names and shapes happen to match (seen: an UltraGCN checkpoint trained on as LightGCN)."""

    def __init__(self, experiment: str, model: str) -> None:
        self.identity = {"experiment": experiment, "model": model}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["paperzoo"] = dict(self.identity)


class FitStarted(L.Callback):
    """Records whether fitting started (on_fit_start: after the datamodule's setup), so that `train.run` can tell
    an input error found in setup (nothing to keep) from one during training (the run's evidence is kept), and
    whether this process trained a batch."""

    def __init__(self) -> None:
        self.started = False
        self.trained = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.trained = True


class ResumedEpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar, also set up for the epoch a mid-epoch resume continues: Lightning does not call
    `on_train_epoch_start` again for it, so the bar showed "Training 0/?" until the next epoch. At the first batch
    after such a resume it takes the epoch's number, total and the batches already done."""

    _resumed_mid_epoch = False

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._resumed_mid_epoch = bool(getattr(trainer.fit_loop, "restarted_mid_epoch", False))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._resumed_mid_epoch:
            self._resumed_mid_epoch = False
            self.on_train_epoch_start(trainer)
            self.train_progress_bar.initial = self.train_progress_bar.n = batch_idx
            self.train_progress_bar.refresh()
