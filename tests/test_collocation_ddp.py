"""Fresh collocation points under DDP (datamodules.collocation.own_draw): each rank trains on its own points, drawn
from one seeded generator whose state stays the same on every rank (so one checkpointed state restores them all);
a single process draws exactly as before."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from datamodules.barron_data import BarronDataModule
from datamodules.pig_data import PigDataModule
from datamodules.pinn_data import CausalPINNDataModule


def _make(kind: str):
    if kind == "pig":
        dm = PigDataModule(n_collocation=100, n_boundary=10, eval_grid=11)
    elif kind == "causal":
        dm = CausalPINNDataModule(name="ks", n_t=8, n_x=5, sampling="random", t_end=0.1, n_modes=64, dt=1e-3,
                                  n_snapshots=101, steps_per_epoch=2)
    else:
        dm = BarronDataModule(dims=[2], seeds=[0], batch_size=16, steps_per_epoch=2, n_test=8)
    dm.setup("fit")
    return dm


def _points(batch) -> np.ndarray:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    return np.asarray(first.numpy() if isinstance(first, torch.Tensor) else first)


def _state(dm):
    gen = dm.generator
    return gen.get_state().clone() if isinstance(gen, torch.Generator) else str(gen.bit_generator.state)


def test_each_ddp_rank_draws_its_own_points_from_one_generator_state():
    for kind in ("pig", "causal", "barron"):
        single, rank0, rank1 = _make(kind), _make(kind), _make(kind)
        epoch = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))
        rank0.trainer = SimpleNamespace(global_rank=0, world_size=2, fit_loop=epoch)
        rank1.trainer = SimpleNamespace(global_rank=1, world_size=2, fit_loop=epoch)
        b_single, b0, b1 = (next(iter(dm.train_dataloader())) for dm in (single, rank0, rank1))
        assert not np.array_equal(_points(b0), _points(b1)), kind  # different points on the two ranks
        np.testing.assert_array_equal(_points(b0), _points(b_single))  # rank 0 keeps the first draw
        s0, s1 = _state(rank0), _state(rank1)
        assert (torch.equal(s0, s1) if isinstance(s0, torch.Tensor) else s0 == s1), kind  # one generator state
        assert not (torch.equal(s0, _state(single)) if isinstance(s0, torch.Tensor) else s0 == _state(single))


def test_every_rank_sampler_keeps_the_whole_generated_epoch():
    from datamodules.samplers import EveryRankSampler

    items = list(range(5))
    assert [list(EveryRankSampler(items, num_replicas=2, rank=r)) for r in (0, 1)] == [items, items]
    assert len(EveryRankSampler(items, num_replicas=2, rank=1)) == 5


def test_a_generated_epoch_has_all_its_steps_under_ddp(tmp_path):
    """Lightning split a generated training set's indices over the ranks (DistributedSampler), so under 2 ranks an
    epoch had half its steps: a `max_epochs` run trained half the steps of a single process (DDP training audit: the
    causal PINN 750 of 1500, pig/lid_driven_cavity 30,500 of 60,001; an L-BFGS phase at the end never ran)."""
    import json

    from tests.conftest import zoo_subprocess

    zoo_subprocess("train", "experiment=pde_barron", "data.dims=[2]", "data.seeds=[0]", "data.batch_size=64",
                   "data.steps_per_epoch=4", "data.n_test=64", "trainer.max_epochs=1", "trainer.max_steps=-1",
                   "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "logger=csv", "progress_bar=false",
                   f"runs_root={tmp_path}", "run_id=ddp", check=True, timeout=300)
    final = json.loads((tmp_path / "pde_barron" / "ddp" / "final_metrics.json").read_text())
    assert final["global_step"] == 4  # as one process (2 before)


def test_pig_reuses_each_ranks_own_batch_for_resample_every_steps():
    """With `resample_every` > 1 the cycle counted draws, and under DDP every step made one draw per rank: rank 1
    got rank 0's batch (the ranks trained on the same points) and a new batch came every R / 2 steps (DDP audit)."""
    def batches(rank: int, world: int, steps: int) -> list[np.ndarray]:
        dm = PigDataModule(n_collocation=50, n_boundary=10, eval_grid=11, resample_every=4)
        dm.setup("fit")
        epoch = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, fit_loop=epoch)
        loader = iter(dm.train_dataloader())
        return [_points(next(loader)) for _ in range(steps)]

    single, rank0, rank1 = batches(0, 1, 8), batches(0, 2, 8), batches(1, 2, 8)
    for run in (single, rank0, rank1):  # a new batch at steps 0 and 4, reused in between
        assert all(np.array_equal(run[0], run[k]) for k in (1, 2, 3)) and not np.array_equal(run[0], run[4])
        assert all(np.array_equal(run[4], run[k]) for k in (5, 6, 7))
    assert not np.array_equal(rank0[0], rank1[0]) and not np.array_equal(rank0[4], rank1[4])
    np.testing.assert_array_equal(rank0[0], single[0])  # rank 0 keeps the single process's first draw


def test_models_that_train_part_of_their_parameters_run_under_ddp(tmp_path):
    """`trainer=ddp` failed on every rank's first step for INSR's fluid case and the MM-PDE variants ("parameters that
    were not used in producing the loss"), and the time-marching causal PINN needed a strategy override by hand (DDP
    audit): such models now get DDP's search for unused parameters."""
    from hydra.utils import instantiate

    from launch import config as zconfig
    from launch import train
    from tests.conftest import zoo_subprocess

    for experiment, unused in (("data_free_mesh_mover/mm_pde", True), ("causal_pinn/ks", True), ("causal_pinn", False),
                               ("lightgcn", False)):
        cfg = zconfig.compose([f"experiment={experiment}", "trainer=ddp", "trainer.accelerator=cpu"])
        model = instantiate(cfg.model, _convert_="partial")
        strategy = train.build_trainer(cfg, None, model=model).strategy
        assert getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False) is unused, experiment
    zoo_subprocess("train", "experiment=insr/taylor_green", "model.ic_max_iters=1", "model.max_iters=1",
                   "data.n_steps=2", "data.n_samples=256", "data.eval_points=256", "model.hidden_features=8",
                   "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "logger=none",
                   "progress_bar=false", f"runs_root={tmp_path}", check=True, timeout=300)


def test_full_batch_papers_say_that_ddp_repeats_their_computation(tmp_path):
    """The Lagrangian PINN, the causal PINN on its grid and MEDIDA train every step on one full batch: under DDP every
    rank trains the same batch, silently doubling the compute (DDP audit); the run now says so."""
    from datamodules.medida_data import MedidaDataModule
    from datamodules.pinn_data import CausalPINNDataModule, LagrangianPINNDataModule
    from tests.conftest import zoo_subprocess

    assert LagrangianPINNDataModule.same_batch_on_every_rank and MedidaDataModule.same_batch_on_every_rank
    assert CausalPINNDataModule(sampling="grid").same_batch_on_every_rank
    assert not CausalPINNDataModule(sampling="random").same_batch_on_every_rank
    proc = zoo_subprocess("train", "experiment=lagrangian_pinn", "data.n_x=32", "data.n_t=16", "data.eval_n_x=32",
                          "data.eval_n_t=16", "trainer.max_steps=2", "trainer=ddp", "trainer.devices=2",
                          "trainer.accelerator=cpu", "logger=none", "progress_bar=false", f"runs_root={tmp_path}",
                          check=True, timeout=300)
    assert (proc.stdout + proc.stderr).count("the same on every rank") == 1  # rank 0 says it once
