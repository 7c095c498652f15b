"""GTF-shPLRNN: the official evaluation / sampling protocol as options (DurstewitzLab/GTF-shPLRNN).

- src/evaluation.jl `evaluate_run`: free run of floor(1.25 T) = T + floor(0.25 T) steps from the test file's first
  point, the first floor(0.25 T) dropped as transients, D_stsp / D_H against the whole test file
  (`model.eval_transient_fraction`); PE_n (src/measures/prediction_error.jl, `model.pe_n`).
- src/tf_training/dataset.jl `sample_sequence`: windows X[i:i+T] of sequence_length + 1 points, T predicted steps
  (`data.seq_len_plus_one`).
All tiny (well under 10 s each).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics import Metric

from datamodules.dynamics import GTF_FILES, DystsDataModule, TrajectoryFileDataModule, window_length
from launch import config as zconfig
from lit_models.common.dynamics_metrics import power_spectrum_distance, state_space_divergence
from lit_models.dynamics.gtf_plrnn import GTFPLRNNModule, gtf_loss


def _module(**kw) -> GTFPLRNNModule:
    torch.manual_seed(0)
    kw.setdefault("latent_dim", 3)
    kw.setdefault("hidden_dim", 16)
    kw.setdefault("obs_dim", 3)
    return GTFPLRNNModule(**kw)


def _logged(module: GTFPLRNNModule, x: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    def log(name, value, **_):  # no trainer needed; a torchmetrics object is read as Lightning would at epoch end
        out[name] = float(value.compute() if isinstance(value, Metric) else value)

    module.log = log
    module._evaluate({"x": x}, "test")
    return out


def _series(t: int = 203, n: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    s = np.arange(t)[:, None] * 0.07
    x = np.sin(s * (1 + np.arange(n))) + 0.05 * rng.standard_normal((t, n))
    return torch.as_tensor(x, dtype=torch.float32).unsqueeze(0)


@pytest.mark.parametrize("observation_model,latent_dim", [("identity", 3), ("identity", 5), ("affine", 4)])
def test_transient_dropped_is_the_tail_of_a_longer_free_run(observation_model, latent_dim):
    x = _series()
    t = x.shape[1]
    drop = math.floor(0.25 * t)  # 50 of 203 (official floor(0.25 T); floor(1.25 T) - floor(0.25 T) = T)
    m = _module(eval_transient_fraction=0.25, observation_model=observation_model, latent_dim=latent_dim)
    logged = _logged(m, x)
    truth, gen = m._last_eval
    long = m.free_run(x, math.floor(1.25 * t)).numpy()
    assert long.shape == (t + drop, 3) and gen.shape == (t, 3)
    np.testing.assert_array_equal(gen, long[drop:])
    np.testing.assert_array_equal(truth, x[0].double().numpy())  # compared with the WHOLE segment
    assert logged["test/d_stsp"] == pytest.approx(state_space_divergence(truth, long[drop:], 30))
    assert logged["test/d_h"] == pytest.approx(power_spectrum_distance(truth, long[drop:], 20.0))
    assert "test/pe" not in logged  # pe_n = 0: not computed
    # default (fraction 0): the free run of T steps from the first point, as before
    m0 = _module(observation_model=observation_model, latent_dim=latent_dim)
    m0.load_state_dict(m.state_dict())
    logged0 = _logged(m0, x)
    np.testing.assert_array_equal(m0._last_eval[1], long[:t])
    assert logged0["test/d_stsp"] == pytest.approx(state_space_divergence(truth, long[:t], 30))


def test_free_run_starts_at_the_first_point():
    """Official `generate`: Z[1] = init_state(x_1), then T - 1 steps."""
    x = _series(40)
    m = _module()
    gen = m.free_run(x, 7)
    assert gen.shape == (7, 3)
    torch.testing.assert_close(gen[0], x[0, 0])
    torch.testing.assert_close(gen[1], m.model(x[0, :1])[0])


@pytest.mark.parametrize("observation_model,latent_dim", [("identity", 3), ("identity", 5), ("affine", 4)])
def test_prediction_error_matches_official_definition(observation_model, latent_dim):
    """PE_n: n-step free runs from x_1..x_{T-n}, MSE against x_{1+n}..x_T (one loop per start as reference)."""
    x = _series(60)
    n = 5
    m = _module(pe_n=n, observation_model=observation_model, latent_dim=latent_dim)
    ref = []
    for i in range(x.shape[1] - n):
        ref.append(m.free_run(x[:, i:], n + 1)[-1] - x[0, i + n])
    expected = float(torch.stack(ref).pow(2).mean())
    assert m.prediction_error(x, n) == pytest.approx(expected, rel=1e-5)
    assert _logged(m, x)["test/pe"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="pe_n"):
        m.prediction_error(x[:, :5], n)


def test_bad_protocol_options():
    with pytest.raises(ValueError, match="eval_transient_fraction"):
        _module(eval_transient_fraction=-0.1)
    with pytest.raises(ValueError, match="pe_n"):
        _module(pe_n=-1)


def _write_ecg(folder, t_train=600, t_test=100):
    x = _series(t_train + t_test, n=5)[0].numpy()
    for rel, part in zip(GTF_FILES["ECG"][:2], (x[:t_train], x[t_train:])):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, part)


def test_seq_len_plus_one_windows_and_loss_over_seq_len_predictions(tmp_path):
    _write_ecg(tmp_path)
    kw = dict(data_dir=str(tmp_path), seq_len=20, batch_size=4, steps_per_epoch=2)
    default = list(TrajectoryFileDataModule("ECG", **kw).train_dataloader())
    plus = list(TrajectoryFileDataModule("ECG", seq_len_plus_one=True, **kw).train_dataloader())
    assert all(b.shape == (4, 20, 5) for b in default)            # unchanged default: seq_len points
    assert all(b.shape == (4, 21, 5) for b in plus)               # official: seq_len + 1 points
    # the loss averages over the seq_len predicted steps F(z~_{t-1}) vs x_t, t = 1..seq_len (alpha = 1: one-step)
    x = plus[0]
    m = _module(latent_dim=5, obs_dim=5, alpha_method="constant", alpha=1.0)
    pred = m.model(x[:, :-1])
    assert pred.shape[1] == 20
    expected = (pred - x[:, 1:]).pow(2).mean()
    torch.testing.assert_close(gtf_loss(m.model, x, 1.0), expected, rtol=1e-5, atol=1e-7)
    # dysts data module: the same option
    assert window_length(DystsDataModule(seq_len=200).hparams) == 200
    assert window_length(DystsDataModule(seq_len=200, seq_len_plus_one=True).hparams) == 201


def test_configs_official_protocol_only_in_paper_scale_variants():
    cfg = zconfig.compose(["experiment=gtf_plrnn"])
    assert cfg.model.eval_transient_fraction == 0.0 and cfg.model.pe_n == 0
    assert not cfg.data.get("seq_len_plus_one", False)
    for variant, seq_len in (("lorenz63", 200), ("ecg", 200), ("eeg", 50)):
        v = zconfig.compose([f"experiment=gtf_plrnn/{variant}"])
        assert v.model.eval_transient_fraction == 0.25 and v.model.pe_n == 20, variant
        assert v.data.seq_len == seq_len and v.data.seq_len_plus_one is True, variant


def _set_up(module: GTFPLRNNModule, dm, stage: str = "fit", callbacks=()) -> None:
    """module.setup(stage) as the trainer calls it (a stand-in trainer with the datamodule and callbacks)."""
    from types import SimpleNamespace

    dm.setup(stage)
    module._trainer = SimpleNamespace(datamodule=dm, callbacks=list(callbacks))
    module.setup(stage)


def test_pe_n_longer_than_an_evaluation_segment_is_a_setup_error(tmp_path):
    """pe_n must be below the validation / test segments' length: one line in setup, not a traceback in the first
    validation (the ECG test file here has 100 points)."""
    from launch.errors import UserError

    _write_ecg(tmp_path)
    dm = TrajectoryFileDataModule("ECG", data_dir=str(tmp_path), seq_len=20)
    for stage in ("fit", "test"):
        with pytest.raises(UserError, match=r"model.pe_n=100 needs .* more than 100 points, the shortest has 100"):
            _set_up(_module(latent_dim=5, obs_dim=None, pe_n=100), dm, stage)
    _set_up(_module(latent_dim=5, obs_dim=None, pe_n=99), dm)
    _set_up(_module(latent_dim=5, obs_dim=None, pe_n=0), dm)


def test_model_selection_on_the_test_segment_is_refused(tmp_path):
    """Validation = the test segment (dysts val_points=0, the trajectory files): a val/ metric as checkpoint monitor
    (test_on=best, the best checkpoint) or early-stopping monitor would select the model on test data, so setup
    refuses it; a separate validation segment (val_points > 0), a train/ monitor, or no monitor pass."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from launch.callbacks import ConfiguredEarlyStopping, RestoreBestWeights
    from launch.errors import UserError

    _write_ecg(tmp_path)
    ecg = TrajectoryFileDataModule("ECG", data_dir=str(tmp_path), seq_len=20)
    dysts_same = DystsDataModule(n_points=3000, train_points=2000, seq_len=20)
    dysts_split = DystsDataModule(n_points=3000, train_points=2000, val_points=500, seq_len=20)
    selecting = [RestoreBestWeights("val/d_stsp", "min"), ConfiguredEarlyStopping(monitor="val/d_h", mode="min"),
                 ModelCheckpoint(monitor="val/d_stsp", mode="min")]
    for dm, latent, hint in ((ecg, 5, "no validation split"), (dysts_same, 3, "data.val_points > 0")):
        for cb in selecting:
            with pytest.raises(UserError, match=f"{cb.monitor} is monitored .* selected on test data .*{hint}"):
                _set_up(_module(latent_dim=latent, obs_dim=None), dm, callbacks=[cb])
        _set_up(_module(latent_dim=latent, obs_dim=None), dm, callbacks=[ModelCheckpoint(monitor=None)])
        _set_up(_module(latent_dim=latent, obs_dim=None), dm, callbacks=[RestoreBestWeights("train/loss", "min")])
        _set_up(_module(latent_dim=latent, obs_dim=None), dm, "test", callbacks=selecting)  # selection is in fit
    for cb in selecting:
        _set_up(_module(obs_dim=None), dysts_split, callbacks=[cb])


def test_model_selection_on_the_test_segment_fails_the_run():
    """End to end: `checkpoint.monitor=val/d_stsp checkpoint.test_on=best` with the default val_points=0 stops with
    the one-line error before training; with a validation segment it runs."""
    from launch.errors import UserError
    from tests.papers.contract import fast_run

    small = ["data.n_points=3000", "data.train_points=2000", "checkpoint.monitor=val/d_stsp", "checkpoint.mode=min",
             "checkpoint.test_on=best"]
    with pytest.raises(UserError, match="val/d_stsp is monitored"):
        fast_run("gtf_plrnn", *small)
    fast_run("gtf_plrnn", *small, "data.val_points=500").assert_contract()
