"""Training loaders that resume mid-epoch on the batch where the run stopped.

Lightning saves the state of a training loader that has `state_dict` / `load_state_dict` (its `_Stateful` protocol)
with every checkpoint, and hands it back when a run restarts inside an epoch. A plain DataLoader has neither, so a
run resumed from a mid-epoch checkpoint (`checkpoint.every_n_train_steps`, a SLURM requeue) replayed that epoch's
batches from the start: the right number of steps, not the right batches.

A `ResumableDataLoader` keeps, for the epoch it is iterating, a snapshot of everything that decides the epoch's
batches: the datamodule's own `state_dict()` as the epoch began (the seeded generators of the papers that draw fresh
points every step, or that shuffle with a generator they checkpoint), and the DataLoader's generator. Its checkpoint
state is that snapshot and the number of batches the trainer has taken this epoch. On a mid-epoch restart it puts the
snapshot back and draws, then discards, that many batches, so the next batch is the one the uninterrupted run trained
on next. Drawing them (not skipping indices) keeps this exact for datasets that make their items from a generator.
Datamodules whose batches are a function of (seed, epoch) (`datamodules.context.sampling_context`) need no snapshot.

The batch count comes from the trainer's own progress (`batch_progress.current.processed`), not from counting what
the loader yielded: Lightning prefetches a batch ahead of a loader without a length, which has then yielded one more
than was trained.
"""
from __future__ import annotations

import copy
import functools
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader


def _trainer_of(datamodule: Any) -> Any:
    return getattr(datamodule, "trainer", None) if datamodule is not None else None


class _StartOnFirstBatch:
    """The iterator of a `ResumableLoaderMixin` loader: the epoch's real iterator is made when its first batch is asked
    for. On a resume, Lightning makes the training iterator while restoring, before its epoch counter has caught up
    with a checkpoint saved after an epoch's last batch (validation or `on_train_epoch_end` still to run); an iterator
    made then read the finished epoch from `sampling_context` (or `set_epoch`) and trained the next epoch on the
    finished epoch's batches again. By the first batch the counter is right."""

    def __init__(self, start) -> None:
        self._start, self._iterator = start, None

    def __iter__(self) -> _StartOnFirstBatch:
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


class ResumableLoaderMixin:
    """Mix-in for a DataLoader class: the `_Stateful` protocol that makes a mid-epoch resume continue with the next
    batch of the interrupted epoch (module docstring). `datamodule` is the LightningDataModule that built the loader."""

    def _init_resume(self, datamodule: Any) -> None:
        if self.persistent_workers:
            # persistent workers reuse one iterator: the epochs after the first draw no base seed from the generator
            # that also shuffles, so a resumed run (a new iterator) would shuffle differently; workers that restart
            # each epoch draw alike in both runs (seen: itransformer with 2 persistent workers resumed on other batches)
            raise ValueError("a resumable training loader cannot keep persistent workers (they break exact resume)")
        self.datamodule = datamodule
        self._epoch_start: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None

    def _snapshot(self) -> dict[str, Any]:
        dm = self.datamodule
        snap: dict[str, Any] = {"datamodule": copy.deepcopy(dm.state_dict()) if dm is not None else {}}
        if self.generator is not None:
            snap["generator"] = self.generator.get_state()
        return snap

    def _restore(self, snap: dict[str, Any]) -> None:
        if self.datamodule is not None and snap.get("datamodule"):
            dm = self.datamodule
            getattr(dm, "restore_epoch_start", dm.load_state_dict)(copy.deepcopy(snap["datamodule"]))
        if self.generator is not None and "generator" in snap:
            self.generator.set_state(snap["generator"])

    def __iter__(self) -> _StartOnFirstBatch:
        return _StartOnFirstBatch(self._start_epoch)

    def _start_epoch(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            self._restore(pending["epoch_start"])
        self._epoch_start = self._snapshot()
        if pending is None:
            return super().__iter__()
        # Mid-epoch: the uninterrupted run made no iterator here, so neither the new iterator's base seed nor the
        # batches drawn again may use up the global random state (that dropout draws from next, as restored by
        # launch.callbacks.ResumeRandomState)
        with torch.random.fork_rng(devices=[]):
            iterator = super().__iter__()
            for _ in range(int(pending["batches"])):  # drawn, not skipped by index: generators advance as in the run
                next(iterator)
        return iterator

    def state_dict(self) -> dict[str, Any]:
        trainer = _trainer_of(self.datamodule)
        batches = 0 if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if trainer is not None and batches >= trainer.num_training_batches:
            batches = 0  # saved after the epoch's last batch (limit_train_batches counts): the next epoch starts afresh
        return {"epoch_start": self._epoch_start if self._epoch_start is not None else self._snapshot(),
                "batches": batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Called by Lightning only when a run restarts inside an epoch; applied when the epoch's first batch is asked
        for. Nothing to do for a state saved after an epoch's last batch (`state_dict` stores 0 batches then)."""
        batches = int(state.get("batches", 0))
        if "epoch_start" in state and batches > 0:
            self._pending = {"epoch_start": state["epoch_start"], "batches": batches}


class CheckpointedShuffle:
    """Datamodule mix-in: the generator that shuffles the training set is saved with every checkpoint and put back on
    resume. Before, each `train_dataloader()` seeded a new generator, so a run resumed at epoch e drew epoch 0's order
    again (the uninterrupted run draws the generator's e-th permutation). A loader built without a resume starts from
    `seed`, as before, so uninterrupted runs shuffle exactly as they did."""

    def shuffle_generator(self, seed: int) -> torch.Generator:
        """A generator seeded with `seed`, or in the state a checkpoint restored since the last call."""
        generator = torch.Generator().manual_seed(int(seed))
        restored = self.__dict__.pop("_restored_shuffle_state", None)
        if restored is not None:
            generator.set_state(restored)
        self._shuffle_generator = generator
        return generator

    def state_dict(self) -> dict[str, Any]:
        generator = getattr(self, "_shuffle_generator", None)
        return {} if generator is None else {"shuffle_generator": generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shuffle_generator" in state:
            self._restored_shuffle_state = state["shuffle_generator"]
            self.restore_epoch_start(state)

    def restore_epoch_start(self, state: dict[str, Any]) -> None:
        """The live generator only (a `ResumableDataLoader` putting its epoch's start back)."""
        generator = getattr(self, "_shuffle_generator", None)
        if generator is not None and "shuffle_generator" in state:
            generator.set_state(state["shuffle_generator"])


class ResumableDataLoader(ResumableLoaderMixin, DataLoader):
    """A torch DataLoader that resumes mid-epoch on the next batch (`ResumableLoaderMixin`)."""

    def __init__(self, *args: Any, datamodule: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_resume(datamodule)


class ResumeLoaderState(L.Callback):
    """Hands a mid-epoch checkpoint's loader states to the training loaders when Lightning does not. Lightning loads
    them when it first builds the training loader, unless that happened before the checkpoint was restored: a module
    whose `configure_optimizers` reads `trainer.estimated_stepping_batches` or `num_training_batches` (GTF's lr decay,
    MgNO's per-step OneCycle) makes Lightning build it during setup, and the states were then never loaded (the
    resumed epoch started its data over). Applied in `on_train_start`, before the epoch's first batch makes its
    iterator, through Lightning's own loading, which does it only for a run restarting inside an epoch and only
    once (it empties its list of states to load)."""

    def on_train_start(self, trainer, pl_module) -> None:
        fit_loop = trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None):
            fit_loop._load_combined_loader_states()


@functools.cache
def _geometric_loader_class() -> type:
    from torch_geometric.loader import DataLoader as GeometricLoader  # imported on first use: a slow import

    class ResumableGeometricLoader(ResumableLoaderMixin, GeometricLoader):
        """torch_geometric's DataLoader (graph batches) that resumes mid-epoch on the next batch."""

        def __init__(self, *args: Any, datamodule: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._init_resume(datamodule)

    return ResumableGeometricLoader


def resumable_geometric_loader(*args: Any, datamodule: Any = None, **kwargs: Any) -> DataLoader:
    """torch_geometric's DataLoader with the same mid-epoch resume as `ResumableDataLoader`."""
    return _geometric_loader_class()(*args, datamodule=datamodule, **kwargs)
