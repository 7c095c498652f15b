"""Settings that must agree with the data are one-line errors (exit 2) before training, and leave no run directory:
each of these was a traceback, at setup, mid-training or after the whole budget, or (MEDIDA's QG cut) silent nonsense
(found in an audit of the paper configs)."""
from __future__ import annotations

import pytest

from tests.conftest import assert_refused_before_training, zoo_in_process

QG = ["experiment=medida/qg", "data.nx=32", "data.ny=64", "data.spinup=200", "data.n_snapshots=2", "model.width=16",
      "data.steps_per_epoch=3"]
CASES = {
    "gtf_latent_below_data": (["experiment=gtf_plrnn", "model.latent_dim=2"],
                              "model.latent_dim=2 is below the data's 3 dimensions"),
    "noda_rollout_too_long": (["experiment=semilinear_operator", "model.rollout=500"],
                              "model.warmup + model.rollout = 505 frames"),
    "noda_ns_solver_diverges": (["experiment=semilinear_operator/navier_stokes", "data.name=ns", "data.n_train=2",
                                 "data.n_test=1", "data.batch_size=2", "data.eval_batch_size=1"],
                                "the ns solver diverged at data.solver_dt=0.25"),
    "medida_cut_beyond_grid": (["experiment=medida", "model.cut=1000"], "model.cut=1000 drops 2000 of the 128"),
    "medida_coefficients_length": (["experiment=medida", "model.true_coefficients=[1,2]"],
                                   "model.true_coefficients needs one value per library term"),
    "medida_qg_coefficients": ([*QG, "model.cut=4", "model.true_coefficients=[1,2]"], "needs 2 x 10 values"),
    "medida_qg_cut": ([*QG, "model.cut=40"], "model.cut=40 drops 80 points of each axis of the 32 x 64 grid"),
    "medida_qg_observations": ([*QG, "model.cut=4", "model.analysis=observations"],
                               "model.analysis=observations needs every grid point observed"),
    "causal_pinn_problem_vs_data": (["experiment=causal_pinn", "data.name=lorenz"],
                                    "model.problem=oscillator but data.name=lorenz"),
    "lagrangian_pinn_problem_vs_data": (["experiment=lagrangian_pinn", "model.problem=burgers", "model.nu=0.01"],
                                        "model.problem=burgers but data.name=convection"),
    "insr_equation_vs_data": (["experiment=insr", "data.name=taylor_green", "data.length=2.0"],
                              "model.equation=advection but data.name=taylor_green"),
    "insr_fluid_integrator": (["experiment=insr/taylor_green", "model.integrator=explicit_euler"],
                              "applies to the advection equation"),
    "pig_problem_vs_data": (["experiment=pig", "model.problem=helmholtz2d", "data.name=klein_gordon3d"],
                            "model.problem=helmholtz2d but data.name=klein_gordon3d"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_setting_is_a_one_line_error_before_training(case, runs_root, monkeypatch):
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    assert_refused_before_training(*CASES[case], runs_root)


@pytest.mark.parametrize("variant", ["darcy_smooth", "pipe"])
def test_mgno_file_missing_from_data_dir(variant, runs_root, tmp_path, monkeypatch):
    """With the default W&B logger (offline): removing the unstarted run also closes its W&B run, which called
    wandb.finish(quiet=...), an argument wandb 0.31 does not take (a TypeError in place of the one-line error)."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    code, out, err = zoo_in_process("train", f"experiment=mgno/{variant}", f"data.data_dir={tmp_path}",
                                    "trainer.max_steps=1", f"runs_root={runs_root}", "progress_bar=false")
    assert code == 2 and "not found (data.data_dir=" in err, err + out
    assert not list(runs_root.iterdir())


def test_small_config_errors_name_the_setting():
    """Errors that were one line but said nothing useful ("integer modulo by zero", "'<=' not supported ...")."""
    from datamodules.meshes import FrontFieldDataModule
    from datamodules.mm_pde_data import MMPDEDataModule
    from launch.errors import UserError

    with pytest.raises(UserError, match="data.grid must be >= 2"):
        MMPDEDataModule(grid=0)
    with pytest.raises(ValueError, match="set data.steps_per_epoch or data.passes_per_epoch"):
        FrontFieldDataModule(steps_per_epoch=None, passes_per_epoch=None)
    FrontFieldDataModule(steps_per_epoch=2, passes_per_epoch=None)  # a step count alone is enough
