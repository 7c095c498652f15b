"""Test metrics under DDP are the whole set's, as one process computes them (found by a read-only DDP audit, stop
33): Lightning's DistributedSampler padded an evaluation set to a multiple of the ranks by repeating its first
samples (iTransformer's 471 test windows: window 0 counted twice), UM2N computed its metrics from each rank's own
meshes (1 front + 2 bumps on 2 ranks: a crash, the ranks logging different keys; with time-dependent families one
key reduced with another), and the data-free mesh mover drew a field's evaluation points from one generator shared
by the batch (another batch, other points) and weighed per-rank means of the fields with a reference by every field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.samplers import EvalShardSampler
from lit_models.common.ddp_eval import combine
from tests.conftest import zoo_subprocess

CASES = {
    "itransformer": ["model.d_model=16", "model.d_ff=16"],  # 471 test windows (odd)
    "um2n": ["data.n_train=6", "data.train_sizes=[5,6]", "data.test_size=8", "data.n_test_fronts=1",
             "data.n_test_bumps=2", "data.bump_test_size=6", "model.n_interp_points=500"],
    "data_free_mesh_mover": ["data.n_train=16", "data.n_test=3", "data.n_test_aligned=2", "data.batch_size=2",
                             "data.grid=16", "data.steps_per_epoch=3", "model.n_points=32", "model.n_eval_points=64",
                             "model.n_interp_points=500"],
}


@pytest.mark.parametrize("slug", sorted(CASES))
def test_two_ranks_test_what_one_process_tests(slug, runs_root, tmp_path):
    """Seen failing before the fix: iTransformer mse_leader 1.20299 vs 1.20370 (2 ranks), UM2N a gloo crash, the mesh
    mover's ma_residual 0.4873 vs 0.4675."""
    zoo_subprocess("train", f"experiment={slug}", *CASES[slug], "trainer.max_steps=2", f"runs_root={runs_root}",
                   "run_id=r", "logger=none", "progress_bar=false", check=True)
    ckpt = runs_root / slug / "r" / "checkpoints" / "last.ckpt"
    zoo_subprocess("eval", f"ckpt={ckpt}", f"out={tmp_path / 'one.json'}", check=True)
    zoo_subprocess("eval", f"ckpt={ckpt}", "trainer.strategy=ddp", "trainer.devices=2", f"out={tmp_path / 'two.json'}",
                   check=True)
    one, two = (json.loads((tmp_path / f"{name}.json").read_text())["metrics"] for name in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key


def test_eval_shards_cover_the_set_once():
    for n, world in ((471, 2), (7, 3), (2, 2)):
        shards = [list(EvalShardSampler(range(n), num_replicas=world, rank=r)) for r in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(n))
        assert min(map(len, shards)) >= 1
    # a set smaller than the world goes whole to every rank (each rank needs a batch)
    assert [list(EvalShardSampler(range(2), num_replicas=3, rank=r)) for r in range(3)] == [[0, 1]] * 3


def test_combine_weighs_means_by_their_samples():
    rows = [("rmse", 2.0, 6, "mean"), ("rmse", 4.0, 2, "mean"), ("rmse", 9.0, 0, "mean"), ("ratio", 1.0, 0, "mean"),
            ("inverted", 1.0, 3, "sum"), ("inverted", 2.0, 3, "sum"), ("min_det", 0.2, 3, "min"),
            ("min_det", -0.1, 3, "min"), ("disp", 0.2, 3, "max"), ("disp", 0.5, 3, "max")]
    assert combine(rows) == {"disp": 0.5, "inverted": 3.0, "min_det": -0.1, "rmse": 2.5}  # no field had a ratio
    with pytest.raises(ValueError, match="unknown reduction"):
        combine([("x", 1.0, 1, "median")])


def _replicated_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank of a gloo group: what `gather_lists` returns for a test set of `n` samples, each rank holding the rows
    of the samples its `EvalShardSampler` gives it (a count of 1 per sample)."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from lit_models.common.ddp_eval import eval_set_replicated, gather_lists

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = {}
    for n in (1, 3):
        loader = SimpleNamespace(sampler=EvalShardSampler(range(n), num_replicas=world, rank=rank))
        module = SimpleNamespace(_trainer=SimpleNamespace(world_size=world, testing=True, test_dataloaders=loader))
        local = {"inverted": [1 for _ in loader.sampler]}
        out[n] = sum(gather_lists(local, eval_set_replicated(module))["inverted"])
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def test_a_test_set_smaller_than_the_ranks_is_counted_once(tmp_path):
    """A set smaller than the number of ranks goes whole to every rank (each needs a batch): a count summed over the
    gathered samples (UM2N's and the mesh mover's `inverted`) was multiplied by the ranks (1 mesh on 2 ranks: 2). The
    gathered metrics now take one rank's copy of a replicated set; a set split across the ranks is gathered as
    before (3 meshes on 2 ranks: 3)."""
    import torch.multiprocessing as mp

    mp.spawn(_replicated_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"1": 1, "3": 3}
    assert EvalShardSampler(range(1), num_replicas=2, rank=1).replicated
    assert not EvalShardSampler(range(3), num_replicas=2, rank=1).replicated
