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
