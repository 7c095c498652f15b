"""Small LightningModule mix-ins shared by several papers."""
from __future__ import annotations

from typing import Any


class EvaluateOnValAndTest:
    """validation_step and test_step both run the module's `_evaluate(batch, split)` with split "val" / "test"
    (the papers whose evaluation is one routine: metrics on the whole evaluation batch)."""

    def validation_step(self, batch: Any, batch_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int = 0) -> None:
        self._evaluate(batch, "test")


def computed_once(module: Any, compute: Any) -> Any:
    """`compute()` run on global rank 0 only and its (picklable) result sent to every rank: for a deterministic,
    minutes-long evaluation at an epoch's end (UM2N's coupled PDE solves) that each DDP rank would otherwise repeat.
    Every rank then logs the same values. Without a trainer or with one process it is simply `compute()`."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return compute()
    result = compute() if trainer.is_global_zero else None
    return trainer.strategy.broadcast(result, src=0)


def same_on_every_rank(module: Any, net: Any) -> None:
    """`net`'s parameters and buffers set to global rank 0's on every DDP rank (a broadcast): for a network that a
    training step re-initialises from the global random state, which differs per rank (`launch.rank_seed`); DDP
    broadcasts rank 0's weights only when it wraps the model. Without a trainer or with one process: nothing."""
    import torch
    import torch.distributed as dist

    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            dist.broadcast(tensor.data, src=0)


def attached_datamodule(module: Any) -> Any:
    """The datamodule of the trainer `module` is attached to, or None (a module used on its own, in a test or a
    probe): where a module's `setup` checks its settings against the data."""
    trainer = getattr(module, "_trainer", None)
    return getattr(trainer, "datamodule", None) if trainer is not None else None
