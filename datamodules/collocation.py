"""Map-style datasets shared by the collocation datamodules (PINNs, INSR, PIG): an epoch of `length` items made by a
function, and a single fixed item (an evaluation grid)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from datamodules.context import sampling_context
from datamodules.resumable import ResumableDataLoader
from datamodules.samplers import generated_train_sampler


class MadeItems(Dataset):
    """`length` items, item i = `make(i)` (index-seeded makers give reproducible epochs; makers that ignore i and
    draw from a datamodule's own seeded generator give fresh points every step)."""

    def __init__(self, make: Callable[[int], Any], length: int) -> None:
        self.make, self.length = make, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.make(i)


class OneItem(Dataset):
    """A dataset of exactly one item (e.g. the evaluation grid with its reference field)."""

    def __init__(self, item: Any) -> None:
        self.item = item

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> Any:
        return self.item


def generated_train_loader(dataset: Dataset, datamodule: Any) -> DataLoader:
    """The training loader of a dataset whose items are whole step batches the datamodule makes: resumable mid-epoch,
    and under DDP all `len(dataset)` steps on every rank (`samplers.EveryRankSampler`)."""
    return ResumableDataLoader(dataset, batch_size=None, sampler=generated_train_sampler(dataset), datamodule=datamodule)


def own_draw(datamodule: Any, draw: Callable[[], Any]) -> Any:
    """One fresh batch for this process: under DDP every rank makes all `world size` draws from the shared seeded
    generator and keeps the one of its rank, so the ranks train on different points (not W copies of one batch)
    while the generator state stays the same on every rank (one checkpointed state restores them all). A single
    process draws once, as before."""
    _, rank, world = sampling_context(datamodule)
    mine = None
    for r in range(world):
        batch = draw()
        if r == rank:
            mine = batch
    return mine


# The data.* settings that count the points each DDP rank draws afresh for one step, by datamodule (a datamodule may
# name its own in a `fresh_points` attribute); the points of a paper whose per-rank draw is `data.batch_size` (Barron,
# the mesh movers' fields) are in `train.effective_batch_notice`. The causal PINN's random sampling draws an n_t x n_x
# grid: n_t alone scales it.
FRESH_POINTS = {"PigDataModule": ("n_collocation", "n_boundary", "n_initial"), "InsrDataModule": ("n_samples",),
                "CausalPINNDataModule": ("n_t",)}


def fresh_points_notice(datamodule: Any, world_size: int) -> str | None:
    """The start-up line of a DDP run whose datamodule draws fresh collocation points on every rank (`own_draw`): a
    step trains on world_size times the configured points, with the configured learning rate. None for one process
    and for a datamodule that trains every rank on the same full batch (`same_batch_on_every_rank`)."""
    if world_size <= 1 or getattr(datamodule, "same_batch_on_every_rank", False):
        return None
    keys = getattr(datamodule, "fresh_points", None) or FRESH_POINTS.get(type(datamodule).__name__, ())
    hparams = getattr(datamodule, "hparams", None) or {}
    counts = {k: hparams.get(k) for k in keys}
    counts = {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}
    if not counts:
        return None
    given = ", ".join(f"data.{k}={v}" for k, v in counts.items())
    keep = (" ".join(f"data.{k}={v // world_size}" for k, v in counts.items()) + " keep one process's number"
            if all(v % world_size == 0 for v in counts.values())
            else f"not all divisible by {world_size}, so no per-process number keeps it exactly")
    return (f"DDP: {type(datamodule).__name__} draws fresh collocation points on every rank ({given} per process); "
            f"{world_size} processes train each step on {world_size} times as many points with the configured "
            f"learning rate ({keep})")


class FreshSampleLoaders:
    """Datamodule mix-in for collocation methods that draw fresh points every step: `steps_per_epoch` batches from
    `self.sample()` (a seeded `self.generator`, saved and restored with the checkpoint), and `self.eval_item()` as
    the single validation / test item."""

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def step_batch(self) -> Any:
        """This rank's batch of the next training step."""
        return own_draw(self, self.sample)

    def train_dataloader(self) -> DataLoader:
        return generated_train_loader(MadeItems(lambda _: self.step_batch(), self.hparams.steps_per_epoch), self)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(OneItem(self.eval_item()), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(OneItem(self.eval_item()), batch_size=None)
