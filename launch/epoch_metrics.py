"""Epoch-aggregated training metrics that survive a checkpoint: a resumed run logs the uninterrupted run's values.

Lightning (2.6) reduces a value logged in training with `self.log(..., on_epoch=True)` over the epoch (into
`train/<name>_epoch`, or `train/<name>` when logged on_epoch only) from a running state kept in the training loop's
result collection (`trainer.fit_loop.epoch_loop._results`): per logged key a `_ResultMetric` holding the weighted sum
and the summed batch size (mean), or the running max, min or sum. That state is not in the checkpoint. A run resumed
from a checkpoint saved inside an epoch (a periodic `checkpoint.every_n_train_steps` save) therefore logged, at that
epoch's end, the mean of the batches trained after the resume only; resumed from the save at the epoch's last batch,
before its validation (`launch.fit_loop.ValidationFirstEpochLoop` runs that validation and the epoch's end on resume),
it logged no training value for the epoch at all: no train row in metrics.csv, no train/* key in final_metrics.json.

`ResumeEpochMetrics` puts that state into every checkpoint saved while an epoch's batches run (the epoch's aggregate
not yet logged) and back into the collection when a fit resumed from it starts training, so Lightning's own epoch-end
reduction gives the uninterrupted run's value. It also tells Lightning that the resumed batch is not the epoch's
first: at the first batch of an epoch `LightningModule.log` empties the collection's entries (its per-epoch reset),
which would drop the state just restored. A checkpoint saved at an epoch's end (its aggregate already logged, the
resumed run starts the next epoch) or before this callback existed carries nothing: the resume behaves as before.

A model that keeps running sums itself and logs them at the epoch's end (`lit_models.common.ranking`'s
`log_epoch_means`, whose per-step `self.log` bookkeeping cost ~10% of a recsys step) hands them over through
`epoch_running_sums()` / `load_epoch_running_sums(state)`; they are saved and restored with the rest, per rank.

Not covered: values logged with a `sync_dist_group` (a process group is not saved) or a custom reduction, and
torchmetrics `Metric` objects logged in training (they keep their own state; no model in lit_models logs one on_epoch
in training).

DDP: each rank accumulates its own batches, and the epoch's reduction (with `sync_dist`) combines the ranks' states.
Only rank 0 writes the checkpoint, so the state of every rank is gathered into it (a collective: Lightning builds a
checkpoint on every rank) and each rank restores its own, exactly. A resume on another number of processes (or with
DDP switched on or off) restores nothing, as before: the ranks' batches then differ from the saved run's anyway.
"""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric, _Sync
from lightning.pytorch.trainer.states import TrainerFn

from launch.callbacks import every_ranks

# the reductions `self.log(reduce_fx=...)` takes, by a name that a weights-only checkpoint can hold
_REDUCTIONS = {"torch.mean": torch.mean, "torch.max": torch.max, "torch.min": torch.min, "torch.sum": torch.sum,
               "max": max, "min": min, "sum": sum}


def _reduction_name(reduce_fx) -> str | None:
    return next((name for name, fx in _REDUCTIONS.items() if fx is reduce_fx), None)


def _inside_epoch(trainer) -> bool:
    """The fit is inside an epoch whose end (its aggregate logged, `on_train_epoch_end`) has not come yet: its batches,
    a validation between them or after its last one."""
    current = trainer.fit_loop.epoch_progress.current
    return current.processed < current.started


def _module_sums(pl_module):
    """The running sums a model keeps itself for a value it logs at the epoch's end (`epoch_running_sums`, e.g.
    `lit_models.common.ranking`'s `log_epoch_means`), or None."""
    sums = getattr(pl_module, "epoch_running_sums", None)
    return sums() if callable(sums) else None


def _is_distributed(trainer) -> bool:
    # what `LightningModule.log` uses to decide whether `sync_dist` syncs (part of each entry's metadata)
    return bool(trainer._accelerator_connector.is_distributed)


class ResumeEpochMetrics(L.Callback):
    """Saves the training result collection's epoch-level running state in checkpoints taken inside an epoch and
    restores it (this rank's) when the resumed fit starts training (`on_train_start`, after Lightning's loops have
    been restored and its result collection reset). See the module's docstring."""

    def __init__(self) -> None:
        self._trainer = None
        self._pending: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        self._pending = None  # a state is loaded after setup, by this fit's restore

    def _local_entries(self) -> dict:
        """This rank's epoch-level training entries with a value logged this epoch, as plain values on the CPU."""
        entries = {}
        for key, metric in self._trainer.fit_loop.epoch_loop._results.items():
            meta = metric.meta
            reduction = _reduction_name(meta.reduce_fx)
            if (not metric.is_tensor or not meta.on_epoch or metric.has_reset or reduction is None
                    or meta.sync.group is not None):
                continue
            entries[key] = {
                "fx": meta.fx, "name": meta.name, "prog_bar": meta.prog_bar, "logger": meta.logger,
                "on_step": meta.on_step, "reduce_fx": reduction, "enable_graph": meta.enable_graph,
                "add_dataloader_idx": meta.add_dataloader_idx, "dataloader_idx": meta.dataloader_idx,
                "sync_dist": meta.sync.should, "rank_zero_only": meta.sync.rank_zero_only,
                "update_count": metric.update_count,
                "state": {name: value.detach().cpu().clone() for name, value in metric.metric_state.items()},
            }
        return entries

    def state_dict(self) -> dict:
        trainer = self._trainer
        if trainer is None:
            return {}
        saving = (trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and _inside_epoch(trainer))
        mine = {"results": self._local_entries(), "module": _module_sums(trainer.lightning_module)} if saving else None
        ranks = every_ranks(trainer, mine)  # on every rank, saving or not (the same decision on all of them)
        if not saving:
            return {}
        return {"epoch": trainer.current_epoch, "world_size": trainer.world_size,
                "distributed": _is_distributed(trainer), "ranks": ranks}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        pending, self._pending = self._pending, None
        if not pending or not _inside_epoch(trainer) or pending.get("epoch") != trainer.current_epoch:
            return  # nothing saved, or the resumed fit starts a new epoch
        ranks = pending.get("ranks") or []
        if len(ranks) != trainer.world_size or pending.get("distributed") != _is_distributed(trainer):
            return
        mine = ranks[trainer.global_rank] or {}
        if mine.get("module") is not None and hasattr(pl_module, "load_epoch_running_sums"):
            pl_module.load_epoch_running_sums(mine["module"])
        results = trainer.fit_loop.epoch_loop._results
        for key, entry in mine.get("results", {}).items():
            meta = _Metadata(
                fx=entry["fx"], name=entry["name"], prog_bar=entry["prog_bar"], logger=entry["logger"],
                on_step=entry["on_step"], on_epoch=True, reduce_fx=_REDUCTIONS[entry["reduce_fx"]],
                enable_graph=entry["enable_graph"], add_dataloader_idx=entry["add_dataloader_idx"],
                dataloader_idx=entry["dataloader_idx"])
            # as `LightningModule.log` builds it, so that the model's next log of the key finds the same metadata
            meta.sync = _Sync(_should=entry["sync_dist"], fn=trainer.strategy.reduce,
                              rank_zero_only=entry["rank_zero_only"])
            metric = _ResultMetric(meta, is_tensor=True)
            for name, value in entry["state"].items():
                setattr(metric, name, value.to(pl_module.device))
            metric._update_count = entry["update_count"]  # computed without a further update (no warning)
            results[key] = metric
        # the epoch's first batch ran before the checkpoint: the next one must not start the entries over
        trainer._logger_connector._first_loop_iter = True
