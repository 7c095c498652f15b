"""Bad hyperparameters of the issue-3/4 papers are one-line errors (exit 2) before training, leaving no run directory.
Each case was found by a bad-input sweep over the experiments' scalar model.* / data.* keys and was a traceback, a
silent run (NaN taken, a negative value read as something else, NaN or no test metrics) or a one-line error that did
not name the setting."""
from __future__ import annotations

import pytest

from tests.conftest import assert_refused_before_training, zoo_in_process

CASES = {
    # tracebacks (scipy / torch refused the value once the data were made or training had started)
    "dysts_method": (["experiment=gtf_plrnn", "data.method=RK54"], "data.method: unknown integrator 'RK54'"),
    "dysts_windows_method": (["experiment=dysts_benchmark", "data.method=rk45"],
                             "data.method: unknown integrator 'rk45'"),
    "itransformer_dropout_nan": (["experiment=itransformer", "model.dropout=nan"], "model.dropout must be a number, got nan"),
    "itransformer_scheduler": (["experiment=itransformer", "model.scheduler=0"], "model.scheduler must be null"),
    "causal_pinn_t_overshoot_nan": (["experiment=causal_pinn", "data.t_overshoot=nan"],
                                    "data.t_overshoot must be a number, got nan"),
    "causal_pinn_time_features": (["experiment=causal_pinn", "model.time_features=3"],
                                  "model.time_features must be null or a list of numbers"),
    "lagrangian_pinn_nu_nan": (["experiment=lagrangian_pinn", "data.nu=nan"], "data.nu must be a number, got nan"),
    "insr_plateau_factor": (["experiment=insr", "model.plateau_factor=1"], "model.plateau_factor multiplies the lr"),
    "mgno_div_factor": (["experiment=mgno", "model.div_factor=0"], "model.div_factor must be > 0"),
    "mgno_pct_start": (["experiment=mgno", "model.pct_start=1.5"], "model.pct_start is the warm-up's share"),
    "dmm_monitor_res": (["experiment=data_free_mesh_mover", "data.monitor_res=-1"], "data.monitor_res must be >= 2"),
    "dmm_monitor_scale_nan": (["experiment=data_free_mesh_mover", "data.monitor_scale=nan"],
                              "data.monitor_scale must be a number, got nan"),
    # silent runs
    "dysts_ic_scale": (["experiment=gtf_plrnn", "data.ic_scale=-1"], "data.ic_scale must be >= 0"),
    "gtf_regularization_nan": (["experiment=gtf_plrnn", "model.lat_model_regularization=nan"],
                               "model.lat_model_regularization must be a number, got nan"),
    "noda_pred_weight_nan": (["experiment=semilinear_operator", "model.pred_weight=nan"],
                             "model.pred_weight must be a number, got nan"),
    "medida_sigma": (["experiment=medida", "model.sigma=0"], "model.sigma must be > 0"),
    "medida_select_tol": (["experiment=medida", "model.select_tol=-1"], "model.select_tol must be >= 0"),
    "pde_barron_tau_nan": (["experiment=pde_barron", "model.tau=nan"], "model.tau must be a number, got nan"),
    "insr_ic_lr": (["experiment=insr", "model.ic_lr=-1"], "model.ic_lr must be > 0"),
    "insr_min_lr": (["experiment=insr", "model.min_lr=-1"], "model.min_lr must be >= 0"),
    "pig_min_sigma": (["experiment=pig", "model.min_sigma=0"], "model.min_sigma must be > 0"),
    "pig_helmholtz_a1": (["experiment=pig", "data.a1=0"], "data.a1 must be a finite non-zero number"),
    "dmm_aligned_fraction": (["experiment=data_free_mesh_mover", "data.aligned_fraction=1.5"],
                             "data.aligned_fraction is the share of axis-aligned training fronts"),
    "dmm_test_k": (["experiment=data_free_mesh_mover", "data.test_k=0"], "data.test_k must be > 0"),
    "um2n_test_k": (["experiment=um2n", "data.test_k=0"], "data.test_k must be > 0"),  # NaN test metrics
    "um2n_no_test_meshes": (["experiment=um2n", "data.n_test_fronts=0", "data.n_test_bumps=0"],
                            "leaves no test meshes"),
    # NaN loss at the first step, reported as a learning-rate problem
    "pde_barron_amplitude_nan": (["experiment=pde_barron", "data.amplitude=nan"], "data.amplitude must be a number, got nan"),
    "um2n_loss_weight_nan": (["experiment=um2n", "model.area_weight=nan"],
                             "model.area_weight must be a number, got nan"),
    # one-line errors that did not name the setting ("n_bins must be >= 1", "grid sizes must be >= 2", "float
    # division by zero", "mesh sizes must be >= 3 nodes per side", "encoder layout must be ...")
    "gtf_d_stsp_bins": (["experiment=gtf_plrnn", "model.d_stsp_bins=0"], "model.d_stsp_bins must be >= 1"),
    "gtf_pse_smoothing": (["experiment=gtf_plrnn", "model.pse_smoothing=0"], "model.pse_smoothing must be > 0"),
    "lagrangian_pinn_grid": (["experiment=lagrangian_pinn", "data.n_t=1"], "data.n_t must be >= 2"),
    "insr_in_features": (["experiment=insr", "model.in_features=0"], "model.in_features must be >= 1"),
    "um2n_test_size": (["experiment=um2n", "data.test_size=2"], "data.test_size must be >= 3"),
    "um2n_encoder_layout": (["experiment=um2n", "model.encoder_layout=offical"],
                            "model.encoder_layout must be 'official' or 'torch'"),
    "prose_no_val": (["experiment=prose", "data.num_val=0"], "data.num_val must be >= 1"),  # IndexError
    "prose_no_test": (["experiment=prose", "data.num_test=0"], "data.num_test must be >= 1"),
    "prose_test_param_range": (["experiment=prose", "data.test_param_range=0"],
                               "data.test_param_range must be [lo, hi]"),  # "'int' object is not iterable"
    "forecasting_offline": (["experiment=itransformer", "data.offline=-1"], "data.offline takes a mapping"),
    # any constructor argument annotated int / float (launch.train.check_numbers): text was a traceback, a fraction
    # for an integer was cut silently (batch_size=2.5 trained with 2), NaN passed every `< 0` check (the NaN cases above)
    "number_as_text": (["experiment=itransformer", "model.d_model=abc"],
                       "model.d_model must be a whole number, got 'abc'"),
    "fraction_for_integer": (["experiment=gtf_plrnn", "data.batch_size=2.5"],
                             "data.batch_size must be a whole number, got 2.5"),
    "float_as_text": (["experiment=pig", "model.sigma_init=wide"], "model.sigma_init must be a number, got 'wide'"),
}

# The second sweep: list- and mapping-valued keys (layer sizes, ranges, optimizer / scheduler factories, the
# generated data's options) and the recommendation papers' keys; tracebacks, silent runs and unclear messages.
CASES.update({
    # tracebacks
    "optimizer_not_a_mapping": (["experiment=lightgcn", "model.optimizer=5"],
                                "model.optimizer must be a mapping with _target_"),  # 'int' object is not callable
    "scheduler_step_size": (["experiment=causal_pinn", "model.scheduler.step_size=0"],
                            "model.scheduler.step_size must be >= 1"),  # integer modulo by zero
    "scheduler_unknown_keyword": (["experiment=pig", "+model.scheduler.bogus=1"],
                                  "model.scheduler: ExponentialLR.__init__() got an unexpected keyword argument"),
    "scheduler_milestones": (["experiment=data_free_mesh_mover", "model.scheduler.milestones=100"],
                             "model.scheduler.milestones must be a list of whole numbers >= 1"),
    "gtf_end_lr_from_zero": (["experiment=gtf_plrnn", "model.optimizer.lr=0"], "needs model.optimizer.lr > 0"),
    "optimizer_lr_zero": (["experiment=mgno", "model.optimizer.lr=0"], "model.optimizer.lr=0 trains nothing"),
    "dmm_branch_channels": (["experiment=data_free_mesh_mover", "model.branch_channels=[8,16,8,0]"],
                            "model.branch_channels must be a list of whole numbers >= 1"),
    "dmm_ks_empty": (["experiment=data_free_mesh_mover", "data.ks=[]"], "data.ks must be a list of finite numbers > 0"),
    "dmm_c_range_reversed": (["experiment=data_free_mesh_mover", "data.c_range=[0.3,0]"],
                             "data.c_range is the [low, high] range"),
    "pde_barron_seeds": (["experiment=pde_barron", "data.seeds=[0,-1]"],
                         "data.seeds must be a list of whole numbers >= 0"),
    "pde_barron_dims_nan": (["experiment=pde_barron", "data.dims=[2,16,nan]"],
                            "data.dims must be a list of whole numbers >= 1"),
    "um2n_train_sizes_nan": (["experiment=um2n", "data.train_sizes=[15,nan]"],
                             "data.train_sizes must be a list of whole numbers >= 3"),
    "um2n_swirl_times_nan": (["experiment=um2n", "data.test_family=swirl", "data.swirl={times:[nan]}"],
                             "swirl options must be finite numbers"),
    "forecasting_offline_lag": (["experiment=itransformer", "data.offline={lag:-1}"],
                                "data.offline.lag must be >= 0"),
    "forecasting_offline_text": (["experiment=itransformer", "data.offline={phi:abc}"],
                                 "data.offline.phi must be a finite number, got 'abc'"),
    "synthetic_dim_negative": (["experiment=lightgcn", "data.name=synthetic", "data.synthetic={dim:-1}"],
                               "data.synthetic.dim must be >= 1"),
    "synthetic_seed_text": (["experiment=ultragcn", "data.name=synthetic", "data.synthetic={seed:abc}"],
                            "data.synthetic.seed must be a whole number, got 'abc'"),
    "ultragcn_init_std": (["experiment=ultragcn", "model.init_std=-1"], "model.init_std must be > 0"),
    # silent runs
    "scheduler_gamma": (["experiment=pig", "model.scheduler.gamma=-1"], "model.scheduler.gamma must be > 0"),
    "dmm_zero_width_layer": (["experiment=data_free_mesh_mover", "model.trunk_layers=[2,32,0]"],
                             "model.trunk_layers must be a list of at least 2 whole numbers >= 1"),
    "dmm_c_range_one_value": (["experiment=data_free_mesh_mover", "data.c_range=[0.3]"],
                              "data.c_range is the [low, high] range"),  # drawn in [0.3, 1)
    "um2n_swirl_radius_nan": (["experiment=um2n", "data.test_family=swirl", "data.swirl={radius:nan}"],
                              "swirl options must be finite numbers"),
    "forecasting_offline_sigma": (["experiment=itransformer", "data.offline={sigma:-1}"],
                                  "data.offline.sigma must be >= 0"),
    "medida_true_coefficients_nan": (["experiment=medida", "model.true_coefficients=[nan,0,-0.2,0,0,0,0,0]"],
                                     "model.true_coefficients must be a list of finite numbers"),
    "synthetic_dim_zero": (["experiment=ultragcn", "data.name=synthetic", "data.synthetic={dim:0}"],
                           "data.synthetic.dim must be >= 1"),  # NaN affinities
    "synthetic_fraction_of_users": (["experiment=lightgcn", "data.name=synthetic", "data.synthetic={num_users:2.5}"],
                                    "data.synthetic.num_users must be a whole number, got 2.5"),
    "synthetic_not_a_mapping": (["experiment=lightgcn", "data.name=synthetic", "data.synthetic=0"],
                                "data.synthetic takes a mapping"),  # read as {}
    "ultragcn_negative_loss_weight": (["experiment=ultragcn", "model.w1=-1"], "model.w1 must be >= 0"),
    "lightgcn_negative_l2_weight": (["experiment=lightgcn", "model.l2_weight=-1"], "model.l2_weight must be >= 0"),
    # one-line errors that did not name the setting ("loss became nan at step 1", "could not convert string to
    # float", "'int' object is not iterable", "level token 'abc' must be two digits")
    "causal_pinn_epsilons_nan": (["experiment=causal_pinn", "model.epsilons=[nan]"],
                                 "model.epsilons must be a list of finite numbers"),
    "causal_pinn_time_features_text": (["experiment=causal_pinn", "model.time_features=[1.0,abc]"],
                                       "model.time_features must be a list of finite numbers"),
    "um2n_deformer_widths_scalar": (["experiment=um2n", "model.deformer_widths=508"],
                                    "model.deformer_widths must be a list of whole numbers"),
    "mgno_levels": (["experiment=mgno", "model.levels=[abc,'10']"], "model.levels: level token 'abc'"),
})


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_hparam_is_a_one_line_error_before_training(case, runs_root, monkeypatch):
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    assert_refused_before_training(*CASES[case], runs_root)


def test_um2n_without_transformer_layers_trains(runs_root, monkeypatch):
    """model.num_layers=0 ("no transformer layer", allowed by the module) was an IndexError inside torch's
    TransformerEncoder at the first step."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    code, out, err = zoo_in_process("train", "experiment=um2n", "model.num_layers=0", "trainer.max_steps=1",
                                    f"runs_root={runs_root}", "progress_bar=false", "logger=csv")
    assert code == 0, err + out


def test_recsys_without_a_test_split_tests_nothing(runs_root, monkeypatch):
    """data.test_fraction=0 (recsys, in its documented range [0, 1)) trained and ended with no test metric, and no
    validation metric either (validation runs on the test interactions unless data.val_fraction > 0): a run that tests
    is now refused before anything is written, a fit-only run still trains on every interaction, and a share so small
    that every user's rounds to 0 is one line at the test."""
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    base = ["experiment=lightgcn", "data=synthetic_graph"]
    assert_refused_before_training([*base, "data.test_fraction=0"], "data.test_fraction=0 holds out no test", runs_root)
    code, out, err = zoo_in_process("train", *base, "data.test_fraction=0", "stage=fit", "trainer.max_steps=1",
                                    f"runs_root={runs_root}", "progress_bar=false", "logger=csv")
    assert code == 0, err + out
    code, out, err = zoo_in_process("train", *base, "data.test_fraction=0.001", "trainer.max_steps=1",
                                    f"runs_root={runs_root}", "progress_bar=false", "logger=csv")
    assert code == 2 and "data.test_fraction=0.001 holds out no test interaction" in err, err + out


def test_values_the_new_checks_still_accept():
    """Review of the sweep's checks (stop 42): valid values they refused. A Poisson mean of interactions per user is
    any number >= 0 (12.5 was refused as 'not a whole number'); a whole-valued float in a size list (64.0), a
    mapping's integer option (30.0 users) or an integer argument (data.batch_size=64.0, refused until stop 44) is taken as the integer, as before the checks; an all-L-BFGS run
    (trainer.max_steps <= lbfgs_steps) never reads the Adam learning rate, so lr=0 is not refused there."""
    from datamodules.interactions import synthetic_params
    from launch import config as zconfig
    from launch.train import _probe_optimizer, check_numbers
    from lit_models.common.checks import whole_list

    assert synthetic_params({"interactions_per_user": 12.5})["interactions_per_user"] == 12.5
    users = synthetic_params({"num_users": 30.0})["num_users"]
    assert users == 30 and isinstance(users, int)
    assert whole_list("model.deformer_widths", [64.0, 20]) == [64, 20]
    scalar = zconfig.compose(["experiment=itransformer", "data.batch_size=64.0"])
    check_numbers(scalar.data, "data")  # a whole-valued float for an int argument, as in the lists above
    assert scalar.data.batch_size == 64 and isinstance(scalar.data.batch_size, int)
    only_lbfgs = zconfig.compose(["experiment=lagrangian_pinn", "model.lbfgs_steps=100", "trainer.max_steps=100",
                                  "model.optimizer.lr=0"])
    _probe_optimizer(only_lbfgs)  # no error
    with pytest.raises(Exception, match="model.optimizer.lr=0 trains nothing"):
        _probe_optimizer(zconfig.compose(["experiment=lagrangian_pinn", "model.lbfgs_steps=100",
                                          "trainer.max_steps=101", "model.optimizer.lr=0"]))
