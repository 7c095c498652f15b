"""Each DDP rank its own global random stream in training.

`train.run` seeds the global random state (torch, numpy, Python's `random`) from the run's seed in every process, so
under DDP every rank drew the same dropout masks and the same points a training step draws for itself (the data-free
mesh mover's collocation and boundary points, MM-PDE's windows, the semilinear operator's frame masks): W copies of
one draw instead of W draws (DDP training audit). `RankSeed` reseeds each rank's global state from (run seed, global
rank) when training starts (`on_train_start`), and only when there are several ranks:

- a single process is left exactly as it was (no reseed, the same draws bit for bit);
- everything made before training is still made from the one shared state: the model (DDP broadcasts rank 0's
  parameters and buffers anyway), what `setup` / `configure_model` build and what `on_fit_start` fits (MM-PDE fits
  its frozen mesh mover there, drawing its points from the global state: the same mover on every rank), and the
  sanity check (Lightning isolates its random state);
- what must be the same on every rank does not draw from the global state: the shuffling orders (DistributedSampler,
  seeded by Lightning from the run seed), the collocation datamodules' shared generators (`collocation.own_draw`),
  generated evaluation sets and the epoch samplers (seeded generators);
- a resumed fit gets back each rank's own saved states (`callbacks.ResumeRandomState`, called before this callback):
  the reseed is skipped when the checkpoint was saved by as many ranks (this callback's state), and otherwise made
  from (seed, rank, global step), after the restore, which gave every rank rank 0's states.
"""
from __future__ import annotations

import logging
import os
import random

import lightning as L
import numpy as np
import torch

log = logging.getLogger("paperzoo")
_TAG = 0x52414E4B  # keeps the rank streams apart from the seeds `seed_everything(seed + k)` would give


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The global seed of `rank` under DDP: a hash of (run seed, rank, global step at the start of training)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(rank), int(step), _TAG]).generate_state(1)[0])


def seed_global_state(seed: int) -> None:
    """torch (CPU and CUDA), numpy and Python's `random`, as `seed_everything` seeds them (PL_GLOBAL_SEED is left as
    it is: Lightning's DistributedSampler takes its shuffling seed, the same on every rank, from it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RankSeed(L.Callback):
    """Reseeds every DDP rank's global random state from (seed, rank) when training starts (module docstring).
    `seed`: the run's seed (None: the one `seed_everything` chose, PL_GLOBAL_SEED)."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._world = 1
        self._resumed_world: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._world = int(getattr(trainer, "world_size", 1))

    def state_dict(self) -> dict:
        return {"world_size": self._world}  # the ranks whose random states the checkpoint holds

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed_world = state_dict.get("world_size")

    def on_train_start(self, trainer, pl_module) -> None:
        resumed_world, self._resumed_world = self._resumed_world, None
        if resumed_world is not None and resumed_world != trainer.world_size and trainer.is_global_zero:
            log.warning("resumed on %d process(es) from a checkpoint of %d: a step now trains %d per-process batches "
                        "(was %d), an interrupted epoch goes on from rank 0's position in it, and the random states "
                        "are not each rank's saved ones, so the run does not match an uninterrupted one exactly",
                        trainer.world_size, resumed_world, trainer.world_size, resumed_world)
        if trainer.world_size <= 1 or resumed_world == trainer.world_size:
            return
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", "0"))
        seed_global_state(rank_seed(seed, trainer.global_rank, trainer.global_step))
