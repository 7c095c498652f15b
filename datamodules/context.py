"""Where a datamodule is in training: the epoch and DDP rank its sampling must depend on."""
from __future__ import annotations


def sampling_context(datamodule) -> tuple[int, int, int]:
    """(epoch, global rank, world size) from the attached trainer, else (0, 0, 1).

    The epoch is the one Lightning passes to samplers' `set_epoch` (`epoch_progress.current.processed`):
    on a resume from an end-of-epoch checkpoint the train iterator is created before `current_epoch`
    catches up, so reading `current_epoch` would replay the finished epoch's batches.
    """
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 0, 1
    epoch = int(trainer.fit_loop.epoch_progress.current.processed)
    return epoch, int(trainer.global_rank), int(trainer.world_size)


def worker_share() -> tuple[int, int]:
    """(this DataLoader worker's index, the number of workers); (0, 1) in the main process. An IterableDataset that
    makes its batches from one stream makes them all in every worker (so the stream is the single-process one) and
    yields every n-th from its index on: the DataLoader takes the workers' batches in turn, so the batches arrive in
    the single-process order. Yielding all of them in every worker repeated each batch once per worker."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
