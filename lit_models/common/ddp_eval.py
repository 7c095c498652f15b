"""Evaluation metrics computed at an epoch's end from values each DDP rank collected, made the whole set's: every rank
gathers every rank's values, so all ranks compute (and log) the same metrics with the same keys. Lightning's
per-key reduction of `self.log(..., sync_dist=True)` pairs the ranks' calls by order, so a key one rank logs and
another does not (a test family only one rank holds) crashes the run or, worse, reduces one key with another; and a
mean over ranks of per-rank means weighs ranks equally, whatever they held."""
from __future__ import annotations

import torch.distributed as dist

REDUCTIONS = ("mean", "sum", "max", "min")


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def eval_set_replicated(module) -> bool:
    """Whether the evaluation set the module's trainer is running (test, else validation) went whole to every DDP rank:
    `datamodules.samplers.EvalShardSampler` does that for a set smaller than the number of ranks (each rank needs a
    batch). The same answer on every rank. False without a trainer, for one process, and when not every one of the
    stage's loaders is so replicated."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return False
    loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    samplers = [getattr(getattr(loader, "batch_sampler", None), "sampler", None) or getattr(loader, "sampler", None)
                for loader in loaders if loader is not None]
    return bool(samplers) and all(getattr(sampler, "replicated", False) for sampler in samplers)


def gather_lists(local: dict[str, list], replicated: bool = False) -> dict[str, list]:
    """`local` ({name: list of picklable values}) of every rank, concatenated in rank order: the same on every rank.
    Outside DDP, or for a `replicated` set (every rank evaluated all of it: `eval_set_replicated`), `local` itself:
    gathered, a count summed over the set would count each sample once per rank. Collective unless `replicated`:
    every rank calls it at the same point."""
    world = _world()
    if world == 1 or replicated:
        return local
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    return {key: [v for part in parts for v in part.get(key, [])] for key in dict.fromkeys(k for p in parts for k in p)}


def combine(rows: list[tuple[str, float, float, str]]) -> dict[str, float]:
    """Metrics from (key, value, weight, reduction) rows (one per batch and key): `mean` weighted by `weight` (the
    number of samples the value averages; a weight of 0 counts nothing), `sum`, `max`, `min`. A mean whose weights
    are all 0 is left out."""
    out: dict[str, float] = {}
    totals: dict[str, list[float]] = {}
    for key, value, weight, reduce in rows:
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduce!r} of {key} (one of {', '.join(REDUCTIONS)})")
        if reduce == "mean":
            total = totals.setdefault(key, [0.0, 0.0])
            if weight:
                total[0] += value * weight
                total[1] += weight
        elif key not in out:
            out[key] = value
        else:
            out[key] = {"sum": out[key] + value, "max": max(out[key], value), "min": min(out[key], value)}[reduce]
    for key, (weighted, weight) in totals.items():
        if weight:
            out[key] = weighted / weight
    return {key: out[key] for key in sorted(out)}
