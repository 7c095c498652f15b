"""Every training datamodule resumes on the batch where the run stopped: a run restarted from a checkpoint (mid-epoch,
in a later epoch, or after an epoch's last batch but before its end) trains on exactly the batches the uninterrupted
run trained on.

A recorder module (no learning, a fingerprint of each batch) stands in for the papers' models, so the test is about
the data alone and costs about a second per datamodule. Seen failing without each part of the mechanism
(`datamodules.resumable`):
- `ResumableLoaderMixin.load_state_dict` a no-op: 11 of the 17 fail at the mid-epoch stop (the shuffled itransformer,
  mgno, dysts, DMM x2, UM2N loaders and the (seed, epoch)-seeded lightgcn, gtf, prose, semilinear, MM-PDE ones replay
  the epoch's first batches); the fresh-point and fixed-item datamodules pass, their checkpointed generators were
  already exact;
- `CheckpointedShuffle.load_state_dict` a no-op: the 6 shuffled ones fail at the epoch-end stop (epoch 0's order again);
- the epoch's iterator made eagerly in `__iter__` (not on its first batch): lightgcn and gtf, whose datasets read the
  epoch when their iterator is made, fail at the epoch-end stop (Lightning makes it before its epoch counter has moved
  on; prose, semilinear and MM-PDE read it on the first batch).
"""
from __future__ import annotations

import hashlib

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from launch import config as zconfig
from launch import train

# (experiment, overrides): one per training datamodule class and loader kind
DATAMODULES = [
    ("causal_pinn", []),                              # fresh points from a checkpointed generator
    ("lagrangian_pinn", []),                          # one fixed item
    ("insr", []),                                     # FreshSampleLoaders
    ("pig", []),                                      # FreshSampleLoaders
    ("pig", ["data.resample_every=3"]),               # ... a batch reused 3 times (the cycle is datamodule state)
    ("pde_barron", []),                               # numpy generator in the datamodule state
    ("medida", []),                                   # the whole dataset every step
    ("itransformer", []),                             # shuffled windows (CheckpointedShuffle)
    ("itransformer", ["data.num_workers=2"]),         # ... drawn by worker processes
    ("mgno", []),                                     # shuffled pairs (PairLoaders)
    ("dysts_benchmark", []),                          # shuffled windows (WindowLoaders)
    ("data_free_mesh_mover", []),                     # EpochSampler with replacement
    ("data_free_mesh_mover", ["data.steps_per_epoch=null"]),  # one shuffled pass an epoch
    ("um2n", []),                                     # torch_geometric loader
    ("lightgcn", []),                                 # (seed, epoch)-seeded negative sampling
    ("gtf_plrnn", []),                                # (seed, epoch)-seeded subsequences
    ("prose", []),                                    # (seed, epoch)-seeded generated batches
    ("semilinear_operator", []),                      # (seed, epoch, rank)-seeded windows
    ("data_free_mesh_mover/mm_pde", []),              # PassBatchSampler
]
BATCHES = 4  # training batches an epoch (limit_train_batches)


def fingerprint(obj) -> str:
    """An exact digest of a batch: every tensor / array / value it holds, in order."""
    digest = hashlib.sha1()

    def visit(x) -> None:
        if hasattr(x, "to_dict") and not isinstance(x, dict):  # a torch_geometric Batch
            x = x.to_dict()
        if isinstance(x, torch.Tensor):
            digest.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, np.ndarray):
            digest.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            for key in sorted(x, key=str):
                digest.update(str(key).encode())
                visit(x[key])
        elif isinstance(x, (list, tuple)):
            for item in x:
                visit(item)
        else:
            digest.update(repr(x).encode())

    visit(obj)
    return digest.hexdigest()


class Recorder(L.LightningModule):
    """Records (epoch, batch_idx, fingerprint) of every training batch; learns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int, str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch_idx, fingerprint(batch)))
        return self.w.sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(make_datamodule, root, ckpt=None, callbacks=(), **limits) -> list:
    model = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
                        default_root_dir=str(root), limit_train_batches=BATCHES, limit_val_batches=0,
                        num_sanity_val_steps=0, **limits)
    trainer.fit(model, make_datamodule(), ckpt_path=ckpt)
    return model.seen


@pytest.mark.parametrize(("experiment", "overrides"), DATAMODULES,
                         ids=[e + ("+" + ",".join(o) if o else "") for e, o in DATAMODULES])
def test_resumed_run_trains_on_the_uninterrupted_runs_batches(experiment, overrides, tmp_path):
    cfg = zconfig.compose([f"experiment={experiment}", *overrides])

    def make_datamodule():
        return train.instantiate(cfg)[0]

    full = _fit(make_datamodule, tmp_path / "full", max_epochs=3)
    assert len(full) == 3 * BATCHES
    # the batches differ from epoch to epoch (else a replayed epoch could not be told apart), unless the paper trains
    # on one fixed item
    varies = len({f for _, _, f in full}) > 1
    for stop in (2, BATCHES + 1, BATCHES):  # inside epoch 0, inside epoch 1, at the end of epoch 0
        root = tmp_path / f"stop{stop}"
        saver = ModelCheckpoint(dirpath=str(root), filename="at", every_n_train_steps=stop, save_top_k=-1)
        first = _fit(make_datamodule, root, callbacks=[saver], max_steps=stop)
        rest = _fit(make_datamodule, root, ckpt=str(root / "at.ckpt"), max_epochs=3)
        assert first + rest == full, (experiment, stop, varies)


def test_persistent_workers_are_refused():
    """Persistent workers reuse one iterator, so the epochs after the first draw no base seed from the shuffling
    generator while a resumed run's new iterator does: seen resuming on other batches (itransformer, 2 workers)."""
    from datamodules.resumable import ResumableDataLoader

    with pytest.raises(ValueError, match="persistent workers"):
        ResumableDataLoader(list(range(8)), batch_size=2, num_workers=1, persistent_workers=True)


@pytest.mark.parametrize("experiment", ["prose", "semilinear_operator"])
def test_data_workers_give_the_single_process_batches(experiment):
    """Batches made by an IterableDataset in 2 worker processes are the single-process batches, in order. Before,
    every worker made (and the loader yielded) the whole epoch: each batch came twice in a row (4 times with
    prose/ode3d's 4 workers) and the epoch saw half of its batches."""
    def batches(workers: int) -> list[str]:
        dm = train.instantiate(zconfig.compose([f"experiment={experiment}", f"data.num_workers={workers}"]))[0]
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [fingerprint(b) for b, _ in zip(loader, range(6))]

    single = batches(0)
    assert len(set(single)) == 6 and batches(2) == single


class _RecorderWithValidation(Recorder):
    def validation_step(self, batch, batch_idx):
        return None


@pytest.mark.xfail(strict=True, reason="Lightning 2.6: an iteration-based run (trainer.max_steps) restored from an "
                   "epoch-end checkpoint of an epoch without validation trains one more batch in the finished epoch "
                   "(Lightning-AI/pytorch-lightning#19617); not worked around here")
def test_iteration_based_resume_from_an_epoch_end_checkpoint(tmp_path):
    """Records a known limitation (found in this stop's audit): max_steps set, validation every 2nd epoch,
    last.ckpt from epoch 0's end (the default every_n_epochs=1 checkpoint). The resumed run trains batch (0, 4) of
    a 4-batch epoch before moving on, so it ends one batch short of the straight run's data. Runs that checkpoint
    every N steps (`checkpoint.every_n_train_steps`) resume exactly (the other tests here and
    tests/test_resume_every_paper.py)."""
    cfg = zconfig.compose(["experiment=lightgcn"])

    def fit(root, ckpt=None, callbacks=(), max_steps=3 * BATCHES):
        model = _RecorderWithValidation()
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=list(callbacks), default_root_dir=str(root),
                            limit_train_batches=BATCHES, limit_val_batches=1, check_val_every_n_epoch=2,
                            num_sanity_val_steps=0, max_epochs=-1, max_steps=max_steps)
        trainer.fit(model, train.instantiate(cfg)[0], ckpt_path=ckpt)
        return model.seen

    full = fit(tmp_path / "full")
    saver = ModelCheckpoint(dirpath=str(tmp_path / "r"), filename="at", every_n_epochs=1, save_on_train_epoch_end=True)
    first = fit(tmp_path / "r", callbacks=[saver], max_steps=BATCHES)
    rest = fit(tmp_path / "r", ckpt=str(tmp_path / "r" / "at.ckpt"))
    assert [(e, i) for e, i, _ in first + rest] == [(e, i) for e, i, _ in full]
