"""PROSE evaluates its val / test sets sharded under DDP: its loaders yield whole batches from an IterableDataset, so
every rank generated and greedy-decoded every batch (right metrics, world-size times the time). Now batch b goes to
rank b % world (a set of fewer batches than ranks to every rank), and the epoch metrics are the whole set's, as one
process computes them. Two gloo CPU ranks of a tiny PROSE, driven by Lightning as `zoo` drives them."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch

from datamodules.prose_data import ProseDataModule
from lit_models.dynamics.prose import ProseModule

# the test set: 38 samples in 5 batches of 8 (the last 6), split 3 / 2 over two ranks (22 / 16 samples: a mean of
# the ranks' means would differ); the val set: 1 batch, fewer than the ranks
DATA = dict(num_train=8, num_val=8, num_test=38, eval_batch_size=8, seed=0)
MODEL = dict(dim_emb=16, n_heads=2, dim_ffn=32, n_text_enc_layers=1, n_data_enc_layers=1, n_fusion_layers=1,
             n_data_dec_layers=1, n_text_dec_layers=1, max_gen_len=8)


class _DecodesNeighbours(ProseModule):
    """Greedy decoding replaced by a fixed rule (an untrained model's decodes are all invalid): sample i decodes sample
    i - 1's true expression (valid; the right skeleton when of the same family; a text_rel_l2 that depends on the
    batch's seeded points), every third sample an invalid sequence."""

    def _symbolic_metrics(self, batch, split, batch_idx, logits, tgt, memory, pad):
        ids = batch["text_out"][:, 1:].roll(1, 0).clone()
        ids[::3] = self.tokenizer.eos_id
        with mock.patch.object(self.model, "generate", lambda *args: ids):
            return super()._symbolic_metrics(batch, split, batch_idx, logits, tgt, memory, pad)


class _Batches(L.Callback):
    """The evaluation batches this process ran, by a fingerprint of their targets."""

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = {"val": [], "test": []}

    @staticmethod
    def _print(batch) -> str:
        return hashlib.sha1(batch["target"].numpy().tobytes()).hexdigest()[:16]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["val"].append(self._print(batch))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["test"].append(self._print(batch))


def _evaluate(weights: str, devices: int, strategy="auto") -> dict:
    """Test and validate the saved weights: {"metrics": {stage: logged metrics}, "seen": {stage: batches run}}."""
    torch.set_num_threads(1)
    model = _DecodesNeighbours(**MODEL)
    model.load_state_dict(torch.load(weights))
    batches = _Batches()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, callbacks=[batches],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    dm = ProseDataModule(**DATA)
    metrics = {}
    for stage, run in (("test", trainer.test), ("val", trainer.validate)):
        run(model, datamodule=dm, verbose=False)
        metrics[stage] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"metrics": metrics, "seen": batches.seen}


def _rank(rank: int, port: int, weights: str, out_dir: str) -> None:
    """One of two DDP ranks that Lightning takes as launched outside it (LOCAL_RANK set), as under torchrun."""
    from lightning.pytorch.strategies import DDPStrategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0", LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    try:
        result = _evaluate(weights, 2, DDPStrategy(process_group_backend="gloo"))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        # Lightning leaves a gloo group to interpreter finalization, which can abort the process (SIGABRT, once in
        # CI): end it here, as `zoo` does at exit (launch.train.release_process_group_at_exit)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_evaluate_disjoint_shares_with_the_one_process_metrics(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    weights = str(tmp_path / "weights.pt")
    torch.save(ProseModule(**MODEL).state_dict(), weights)
    one = _evaluate(weights, 1)
    mp.spawn(_rank, args=(_free_port(), weights, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # the test set: batch b on rank b % 2, each batch once; the 1-batch val set on both ranks
    test = one["seen"]["test"]
    assert len(test) == 5 and len(set(test)) == 5
    assert [r["seen"]["test"] for r in ranks] == [test[0::2], test[1::2]]
    assert len(one["seen"]["val"]) == 1 and [r["seen"]["val"] for r in ranks] == [one["seen"]["val"]] * 2

    for stage in ("test", "val"):
        expected = one["metrics"][stage]
        keys = {f"{stage}/{k}" for k in ("rel_l2", "mse", "loss", "ce", "valid_frac", "skeleton_acc",
                                         "symbol_token_acc", "text_rel_l2")}
        assert set(expected) == keys, sorted(expected)
        assert 0 < expected[f"{stage}/valid_frac"] < 1 and expected[f"{stage}/text_rel_l2"] > 0
        for rank in ranks:
            assert rank["metrics"][stage].keys() == expected.keys()
            for key, value in expected.items():
                assert rank["metrics"][stage][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (stage, key)
