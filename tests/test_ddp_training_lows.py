"""The low findings of the DDP training audit: training metrics logged for rank 0 alone, the same global random
stream (dropout, points a step draws itself) on every rank, no notice that fresh collocation points are drawn per
process, and `trainer.sync_batchnorm` on CPU ranks (a traceback at the first fit)."""
from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# training quantities logged without `sync_dist`, each the same on every rank by construction
SAME_ON_EVERY_RANK = {
    ("lit_models/dynamics/gtf_plrnn.py", "train/alpha"),  # from the estimate reduced (max) over the ranks
    ("lit_models/dynamics/gtf_plrnn.py", "train/alpha_star"),
    ("lit_models/pde/insr.py", "train/time_step"),  # advanced by the rank-reduced loss
    ("lit_models/pde/data_free_mesh_mover.py", "train/rf_loss_start"),  # the L-BFGS step's gathered mean
    # reduced over the ranks before logging (`_log_train`: one collective a step, none inside the L-BFGS closure)
    ("lit_models/pde/data_free_mesh_mover.py", "train/loss"),
    ("lit_models/pde/data_free_mesh_mover.py", "f'train/{k}'"),
}


def _train_logs_without_sync() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "lit_models").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("log", "log_dict") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "self" and node.args):
                continue
            key = node.args[0]
            head = key.value if isinstance(key, ast.Constant) else (
                key.values[0].value if isinstance(key, ast.JoinedStr) and isinstance(key.values[0], ast.Constant)
                else "")
            if not str(head).startswith("train/"):
                continue
            sync = next((k.value for k in node.keywords if k.arg == "sync_dist"), None)
            if sync is None or (isinstance(sync, ast.Constant) and not sync.value):
                name = key.value if isinstance(key, ast.Constant) else ast.unparse(key)
                if (rel, name) not in SAME_ON_EVERY_RANK:
                    found.append((rel, name))
    return found


def test_every_training_metric_is_reduced_over_the_ranks():
    """pig, INSR, the data-free mesh mover, UM2N and MM-PDE logged their training losses without `sync_dist`: under
    DDP the run's train/* curves were rank 0's alone (DDP audit). Every train/* value is now averaged over the ranks
    (`sync_dist`, or a value reduced already), unless it is the same on every rank by construction."""
    assert _train_logs_without_sync() == []


def _fake_trainer(rank: int, world: int, step: int = 0):
    return SimpleNamespace(global_rank=rank, world_size=world, global_step=step, is_global_zero=rank == 0)


def _draws() -> tuple[float, float, float]:
    return float(torch.rand(())), float(np.random.rand()), random.random()


def test_rank_seed_gives_each_rank_its_own_stream_and_leaves_one_process_alone():
    from launch.rank_seed import RankSeed

    def start(rank: int, world: int, resumed_world=None, step: int = 0):
        torch.manual_seed(3), np.random.seed(3), random.seed(3)
        callback = RankSeed(seed=3)
        callback.setup(_fake_trainer(rank, world), None, "fit")
        if resumed_world is not None:
            callback.load_state_dict({"world_size": resumed_world})
        callback.on_train_start(_fake_trainer(rank, world, step), None)
        assert callback.state_dict() == {"world_size": world}
        return _draws()

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    untouched = _draws()
    assert start(0, 1) == untouched  # one process: exactly as before
    rank0, rank1 = start(0, 2), start(1, 2)
    assert all(a != b for a, b in zip(rank0, rank1)) and untouched not in (rank0, rank1)
    assert start(1, 2) == rank1  # deterministic in (seed, rank)
    # a resume from as many ranks keeps the states ResumeRandomState restored; from another number it reseeds, away
    # from the fresh run's streams
    assert start(1, 2, resumed_world=2, step=5) == untouched
    moved = start(1, 2, resumed_world=1, step=5)
    assert moved not in (untouched, rank1)


def test_a_resume_on_another_number_of_ranks_says_what_changes(caplog):
    """A checkpoint of 2 ranks resumed on 1 process (or 1 on 2): the step's batch, the interrupted epoch and the
    random states all differ from an uninterrupted run; rank 0 says so once (before: silently)."""
    from launch.rank_seed import RankSeed

    for rank, world, saved, said in ((0, 1, 2, True), (0, 2, 1, True), (1, 2, 1, False), (0, 2, 2, False),
                                     (0, 2, None, False)):
        caplog.clear()
        callback = RankSeed(seed=3)
        callback.setup(_fake_trainer(rank, world), None, "fit")
        if saved is not None:
            callback.load_state_dict({"world_size": saved})
        with caplog.at_level("WARNING", logger="paperzoo"):
            callback.on_train_start(_fake_trainer(rank, world, 5), None)
        lines = [r.getMessage() for r in caplog.records if "from a checkpoint of" in r.getMessage()]
        assert len(lines) == int(said), (rank, world, saved, lines)
        if said:
            assert f"resumed on {world} process(es) from a checkpoint of {saved}" in lines[0]


def test_fresh_collocation_points_notice():
    from datamodules.collocation import fresh_points_notice
    from datamodules.insr_data import InsrDataModule
    from datamodules.pig_data import PigDataModule
    from datamodules.pinn_data import CausalPINNDataModule, LagrangianPINNDataModule

    pig = PigDataModule(n_collocation=100, n_boundary=10, eval_grid=11)
    line = fresh_points_notice(pig, 2)
    assert line is not None and "\n" not in line
    assert "data.n_collocation=100, data.n_boundary=10 per process" in line and "2 times as many points" in line
    assert "data.n_collocation=50 data.n_boundary=5 keep" in line
    assert fresh_points_notice(pig, 1) is None
    assert "data.n_samples=5000" in fresh_points_notice(InsrDataModule(), 4)
    assert "not all divisible by 3" in fresh_points_notice(InsrDataModule(n_samples=100), 3)
    assert "data.n_t=128" in fresh_points_notice(CausalPINNDataModule(sampling="random"), 2)
    for same in (CausalPINNDataModule(sampling="grid"), LagrangianPINNDataModule()):
        assert fresh_points_notice(same, 2) is None  # said by the full-batch notice


def test_sync_batchnorm_on_cpu_ranks_is_one_line(runs_root):
    """torch's DDP refuses SyncBatchNorm on CPU (gloo) processes with a traceback at the first fit: one line and exit
    2 before anything is written; one CPU process (nothing to sync) and GPUs keep Lightning's behaviour."""
    from launch import config as zconfig
    from launch import train
    from launch.errors import UserError
    from tests.conftest import zoo_in_process

    assert zconfig.compose(["experiment=mgno"]).trainer.sync_batchnorm is False  # a documented key (trainer/_base)
    sync = "trainer.sync_batchnorm=true"
    code, out, err = zoo_in_process("train", "experiment=mgno", sync, "trainer=ddp", "trainer.devices=2",
                                    "trainer.accelerator=cpu", f"runs_root={runs_root}", "logger=none",
                                    "progress_bar=false")
    assert code == 2 and "sync_batchnorm=true needs CUDA GPUs" in err, err + out
    assert len(err.strip().splitlines()) == 1 and not any(runs_root.rglob("config.yaml"))
    cfg = zconfig.compose(["experiment=mgno", sync, "trainer.accelerator=cpu"])
    assert train.build_trainer(cfg, None).world_size == 1
    with pytest.raises(UserError):
        train.build_trainer(zconfig.compose(["experiment=mgno", sync, "trainer=ddp", "trainer.accelerator=cpu"]), None)


PROBE = '''
import hashlib, json, random, sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

from launch import config as zconfig
from launch import train


class Probe(L.Callback):
    def __init__(self):
        self.rec = {"rng": [], "loss": [], "logged": []}

    def on_train_start(self, trainer, pl_module):
        h = hashlib.sha1()
        for value in pl_module.state_dict().values():
            h.update(value.detach().cpu().numpy().tobytes())
        self.rec["params"] = h.hexdigest()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        state = (torch.get_rng_state().numpy().tobytes() + np.random.get_state()[1].tobytes()
                 + repr(random.getstate()).encode())
        self.rec["rng"].append(hashlib.sha1(state).hexdigest())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rec["loss"].append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))
        self.rec["logged"].append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
        self.rec.setdefault("unroll", []).append(getattr(pl_module, "last_unroll", None))

    def on_train_end(self, trainer, pl_module):
        h = hashlib.sha1()
        for value in pl_module.state_dict().values():
            h.update(value.detach().cpu().numpy().tobytes())
        self.rec["end_params"] = h.hexdigest()
        Path(sys.argv[1], f"rank{trainer.global_rank}.json").write_text(json.dumps(self.rec))


cfg = zconfig.compose(json.loads(sys.argv[2]))
train.run(cfg, make_run_dir=False, extra_callbacks=[Probe()])
'''


def _probe_ddp(tmp_path: Path, overrides: list[str]) -> tuple[dict, dict, str]:
    """A 2-rank gloo fit of `overrides` with a probe on both ranks: (rank 0's record, rank 1's, the output)."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    args = [*overrides, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "stage=fit", "logger=none",
            "progress_bar=false", "trainer.enable_model_summary=false", "trainer.limit_val_batches=0",
            f"runs_root={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    return rank0, rank1, proc.stdout + proc.stderr


def test_pig_under_ddp_logs_the_ranks_mean_draws_per_rank_and_says_so(tmp_path):
    """One 2-rank pig fit: the logged train/loss is the mean of the two ranks' losses, the same on both (before:
    each rank's own); the ranks start from the same parameters but draw from different global random streams
    (before: the same); rank 0 says once that each rank draws its own collocation points."""
    rank0, rank1, output = _probe_ddp(tmp_path, ["experiment=pig", "data.n_collocation=64", "data.n_boundary=8",
                                                 "data.eval_grid=16", "model.num_gaussians=16", "seed=0",
                                                 "trainer.max_steps=3", "data.steps_per_epoch=3"])
    assert rank0["params"] == rank1["params"]
    assert len(rank0["rng"]) == 3 and all(a != b for a, b in zip(rank0["rng"], rank1["rng"]))
    for step, (a, b) in enumerate(zip(rank0["loss"], rank1["loss"])):
        assert a != b  # each rank its own points
        for logged in (rank0["logged"][step], rank1["logged"][step]):
            assert logged["train/loss"] == pytest.approx((a + b) / 2, rel=1e-5), (step, logged, a, b)
            assert {"train/boundary_loss", "train/residual_loss"} <= logged.keys()
        assert rank0["logged"][step] == pytest.approx(rank1["logged"][step], rel=1e-6)
    assert output.count("draws fresh collocation points on every rank") == 1, output[-3000:]


def test_data_free_mesh_mover_under_ddp_logs_the_ranks_mean_in_both_phases(tmp_path):
    """The data-free mesh mover's Adam steps and random-feature L-BFGS steps under 2 ranks: every train/* value is
    the same on both ranks (the L-BFGS closure reuses the one gather of its line search: no extra collective)."""
    rank0, rank1, _ = _probe_ddp(tmp_path, [
        "experiment=data_free_mesh_mover", "data.n_train=16", "data.n_test=2", "data.n_test_aligned=2",
        "data.batch_size=2", "data.grid=16", "data.steps_per_epoch=4", "model.n_points=32", "model.n_eval_points=64",
        "model.n_interp_points=500", "model.rf_epochs=1", "model.rf_fields=2", "model.rf_max_iter=5",
        "trainer.max_steps=3", "trainer.max_epochs=1"])
    assert rank0["params"] == rank1["params"]
    assert all(a != b for a, b in zip(rank0["rng"], rank1["rng"]))
    assert len(rank0["logged"]) == len(rank1["logged"]) >= 2
    for step in range(len(rank0["logged"])):
        assert rank0["logged"][step] == pytest.approx(rank1["logged"][step], rel=1e-6), step
    a, b = rank0["loss"][0], rank1["loss"][0]  # an Adam step: each rank's own loss, the mean logged
    assert rank0["logged"][0]["train/loss"] == pytest.approx((a + b) / 2, rel=1e-5)
    assert "train/rf_loss_start" in rank0["logged"][-1]


def test_insr_reinitialised_every_step_keeps_one_model_on_every_rank(tmp_path):
    """INSR's `model.warm_start=false` baseline re-initialises the field at every time step from the global random
    state, which differs per rank since `RankSeed`: the ranks trained different fields (review of the RankSeed change;
    DDP broadcasts weights only when it wraps the model). The re-initialised field is now rank 0's on every rank."""
    rank0, rank1, _ = _probe_ddp(tmp_path, ["experiment=insr", "model.warm_start=false", "model.ic_max_iters=2",
                                            "model.max_iters=2", "data.n_steps=2", "data.n_samples=64",
                                            "model.hidden_features=8"])
    assert rank0["params"] == rank1["params"]
    assert rank0["rng"] != rank1["rng"]
    assert rank0["end_params"] == rank1["end_params"]


def test_mm_pde_pushforward_depth_is_the_same_on_every_rank(tmp_path):
    """MM-PDE's pushforward depth r ~ U{0..min(epoch, unrolling)} is drawn in the training step: one draw per DDP
    rank gave ranks different numbers of forwards (a hang with SyncBatchNorm). Rank 0's depth is every rank's."""
    from tests.papers.test_mm_pde import SMALL

    rank0, rank1, _ = _probe_ddp(tmp_path, ["experiment=data_free_mesh_mover/mm_pde", *SMALL, "model.unrolling=3",
                                            "data.n_frames=11", "data.n_train=8", "trainer.max_epochs=6",
                                            "trainer.max_steps=-1"])
    depths = [r for r in rank0["unroll"] if r is not None]
    assert rank0["unroll"] == rank1["unroll"] and len(depths) >= 6 and max(depths) > 0, (rank0["unroll"],
                                                                                         rank1["unroll"])
