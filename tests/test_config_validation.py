"""Size-like hyperparameters are checked when the experiment is built: a bad value is a one-line UserError naming
the key (exit status 2 from `zoo`), never a traceback later in training. The default configs instantiating is
tests/test_configs.py's job."""
from __future__ import annotations

import pytest

from launch import config as zconfig
from launch import train
from launch.errors import UserError
from tests.conftest import zoo_in_process, zoo_subprocess
from tests.test_cli import one_line_error

# experiment -> (override key, bad value); every key must be rejected by the constructors (instantiate only)
BAD = {
    "causal_pinn": [("model.depth", -1), ("model.width", 0), ("model.weight_snapshot_every", -1),
                    ("data.n_modes", -1), ("data.n_snapshots", 1), ("data.steps_per_epoch", 0), ("data.dt", 0.0)],
    "data_free_mesh_mover": [("model.n_eval_points", -1), ("model.eval_nodes", 1), ("model.n_interp_points", 0),
                             ("model.gnn_hidden", -1), ("model.gnn_layers", -1), ("model.gnn_knn", 0),
                             ("model.w_boundary", -1.0), ("data.n_train", -1), ("data.n_test", 0),
                             ("data.n_test_aligned", -1), ("data.sub", 0), ("data.n_burgers_train", -1)],
    "dysts_benchmark": [("data.pts_per_period", -1), ("data.coordinate", -1), ("data.eval_stride", 0),
                        ("data.batch_size", -1), ("data.eval_batch_size", 0), ("model.width", 0)],
    "gtf_plrnn": [("data.pts_per_period", 0), ("data.burn_in", -1), ("data.seq_len", -1), ("data.seq_len", 1),
                  ("data.batch_size", 0), ("model.hidden_dim", 0)],
    "insr": [("model.plateau_patience", -1), ("model.early_stop_plateau", -1), ("model.snapshot_every", 0),
             ("model.snapshot_points", -1), ("data.min_boundary", -1), ("data.eval_points", 0), ("data.width", 0.0)],
    "itransformer": [("model.n_heads", -1), ("model.n_heads", 0), ("model.e_layers", -1), ("model.d_model", 0)],
    "lagrangian_pinn": [("model.depth_u", -1), ("model.depth_x", -1), ("model.width", 0), ("data.solver_modes", -1),
                        ("data.solver_dt", 0.0)],
    "lightgcn": [("model.embedding_dim", -1), ("model.eval_k", 0), ("model.num_layers", -1)],
    "ultragcn": [("model.embedding_dim", 0), ("model.eval_k", -1), ("model.num_neighbours", -1)],
    "medida": [("model.depth", -1), ("model.cut", -1), ("model.width", 0), ("data.n", 0), ("data.n_snapshots", 0)],
    "mgno": [("data.eval_batch_size", -1), ("data.eval_batch_size", 0)],
    "pde_barron": [("model.ritz_width", -1), ("model.eta", -1.0), ("data.m", 0), ("data.s", -1),
                   ("data.batch_size", 0), ("data.n_test", -1)],
    "pig": [("model.mlp_width", 0), ("model.mlp_depth", -1), ("model.hidden_dim", 0), ("data.ac_modes", -1),
            ("data.ac_snapshots", 1)],
    "prose": [("model.max_gen_len", 0), ("data.batch_size", -1), ("data.eval_batch_size", 0), ("data.n_input", -1),
              ("data.n_output", 0), ("data.dt", 0.0)],
    "semilinear_operator": [("model.n_layers", -1), ("data.grid", 0), ("data.save_every", -1), ("data.n_frames", 0),
                            ("data.n_train", -1), ("data.n_test", 0), ("data.unroll", -1), ("data.unroll", 1000),
                            ("data.batch_size", -1), ("data.eval_batch_size", 0)],
    "um2n": [("model.n_interp_points", -1), ("model.embed_dim", 30), ("data.n_train", 0),
             ("data.n_test_fronts", -1), ("data.n_test_bumps", -1), ("data.bump_test_size", 2),
             ("data.batch_size", 0)],
}

# values at the edge that stay valid ("0 = off" switches, zero-layer ablations, a coordinate other than 0)
EDGE_OK = [("causal_pinn", "model.weight_snapshot_every", 0), ("lagrangian_pinn", "model.depth_x", 0),
           ("lightgcn", "model.num_layers", 0), ("ultragcn", "model.num_neighbours", 0),
           ("itransformer", "model.e_layers", 0), ("medida", "model.cut", 0), ("insr", "data.min_boundary", 0),
           ("gtf_plrnn", "data.burn_in", 0), ("semilinear_operator", "model.n_layers", 0),
           ("um2n", "data.n_test_bumps", 0), ("dysts_benchmark", "data.coordinate", 2)]


def test_every_experiment_is_covered():
    assert set(BAD) == set(zconfig.experiments())


@pytest.mark.parametrize("experiment,key,bad", [(e, k, v) for e, pairs in BAD.items() for k, v in pairs])
def test_bad_size_is_a_user_error_naming_the_key(experiment, key, bad):
    cfg = zconfig.compose([f"experiment={experiment}", f"{key}={bad}"])
    with pytest.raises(UserError) as err:
        train.instantiate(cfg)
    message = str(err.value)
    assert key.rsplit(".", 1)[1] in message and "\n" not in message, message


@pytest.mark.parametrize("experiment,key,value", EDGE_OK)
def test_edge_values_stay_valid(experiment, key, value):
    datamodule, model = train.instantiate(zconfig.compose([f"experiment={experiment}", f"{key}={value}"]))
    assert datamodule is not None and model is not None


@pytest.mark.parametrize("experiment,key", [("semilinear_operator", "data.batch_size"),
                                            ("itransformer", "model.n_heads")])
def test_cli_bad_size_exits_2_with_one_line(tmp_path, experiment, key):
    """The installed `zoo`: exit 2, one `zoo train: error:` line naming the key, no traceback."""
    proc = zoo_subprocess("train", f"experiment={experiment}", f"{key}=-1", "trainer.max_steps=2", "logger=none",
                          "progress_bar=false", cwd=tmp_path)
    line = one_line_error(proc.returncode, proc.stderr + proc.stdout)
    assert line.startswith("zoo train: error:") and key in line, line


def test_cli_in_process_bad_seq_len(tmp_path, monkeypatch):
    """`main()` itself (the gtf_plrnn case was an IndexError traceback before); no run directory is left behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)  # restored (unset) afterwards: no run id leaks to later tests
    code, out, err = zoo_in_process("train", "experiment=gtf_plrnn", "data.seq_len=-1", "trainer.max_steps=2",
                                    "logger=none", "progress_bar=false", f"runs_root={tmp_path / 'runs'}")
    line = one_line_error(code, err + out)
    assert line.startswith("zoo train: error:") and "data.seq_len" in line, line
    assert not (tmp_path / "runs").exists(), "a config error must not leave a half-made run directory"


@pytest.mark.parametrize("experiment,override", [("itransformer", "model.optimizer.lr=-1"),
                                                 ("lightgcn", "model.optimizer.lr=-0.001"),
                                                 ("pig", "+model.optimizer.no_such_option=1")])
def test_bad_optimizer_is_a_user_error_at_build_time(experiment, override):
    """The optimizer is built once on a dummy parameter when the experiment is built (not first in
    configure_optimizers, mid-run): a negative learning rate or an unknown keyword is a one-line UserError."""
    with pytest.raises(UserError) as err:
        train.instantiate(zconfig.compose([f"experiment={experiment}", override]))
    assert str(err.value).startswith("model.optimizer:") and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("override,words", [("trainer.precision=17", "Precision"),
                                            ("trainer.max_epochs=-5", "max_epochs"),
                                            ("seed=abc", "seed"), ("matmul_precision=low", "matmul_precision"),
                                            ("+early_stopping={monitor: val/mse, patiance: 3}", "early_stopping"),
                                            ("checkpoint.every_n_epochs=-3", "checkpoint: Invalid value")])
def test_bad_trainer_or_seed_is_one_line_and_leaves_no_run_dir(tmp_path, monkeypatch, override, words):
    """Lightning's own Trainer checks and the seed become one `zoo train: error:` line (exit 2), before any run
    directory is written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    code, out, err = zoo_in_process("train", "experiment=itransformer", override, "trainer.max_steps=2", "logger=none",
                                    "progress_bar=false", f"runs_root={tmp_path / 'runs'}")
    line = one_line_error(code, err + out)
    assert line.startswith("zoo train: error:") and words in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("experiment,key", [(e, k) for e, pairs in BAD.items() for k, _ in pairs])
def test_text_for_a_number_is_a_user_error_naming_the_key(experiment, key):
    """`model.dim_emb=abc` (text where a number belongs): the key and "must be a number" in one line, not Python's
    "'>=' not supported between instances of 'str' and 'int'"."""
    cfg = zconfig.compose([f"experiment={experiment}", f"{key}=abc"])
    with pytest.raises(UserError) as err:
        train.instantiate(cfg)
    message = str(err.value)
    assert key.rsplit(".", 1)[1] in message and "number" in message and "\n" not in message, message


def test_unwritable_runs_root_is_one_line(tmp_path, monkeypatch):
    """runs_root where no run directory can be made (here a file is in the way): one `zoo train: error:` line naming
    the directory, exit 2 (an OSError traceback from mkdir before)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAPERZOO_RUN_ID", raising=False)
    (tmp_path / "afile").write_text("")
    code, out, err = zoo_in_process("train", "experiment=itransformer", "trainer.max_steps=2", "logger=none",
                                    "progress_bar=false", f"runs_root={tmp_path / 'afile'}")
    line = one_line_error(code, err + out)
    assert line.startswith("zoo train: error: cannot write the run directory") and "Not a directory" in line, line
