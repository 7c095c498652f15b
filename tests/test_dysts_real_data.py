"""The dysts benchmark's published data (datamodules.dysts_data): a tiny fixture in the real file layout
({system: {"dt", "time", "values"}}, gzip JSON, named `{split}_univariate__pts_per_period_{100|15}__periods_12[_noise]
.json.gz`) served by a local HTTP server through datamodules.download, the paper's 5/6 split, one-line errors for
missing / corrupt files and unknown systems, and fast runs of the paper-scale variants (never the network)."""
from __future__ import annotations

import gzip
import json
import logging
import math

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import dysts_data
from datamodules.dysts_data import (DystsPrecomputedDataModule, dataset_filename, forecast_split, load_precomputed,
                                    system_series)
from launch import config as zconfig
from launch import train
from launch.errors import UserError
from tests.conftest import serve_directory, zoo_in_process
from tests.papers.contract import fast_run

FIXTURE_SYSTEMS = {"Lorenz": 0.0, "Rossler": 1.0, "Chua": 2.0}  # name -> phase (and offset) of the fake series


def fake_series(points_per_period: int, phase: float, split: str, noise: bool) -> tuple[list[float], list[float]]:
    """12 periods of a two-tone series (different per split, system and noise flag) and its time axis."""
    t = np.arange(12 * points_per_period) / points_per_period
    shift = phase + (0.3 if split == "train" else 0.0)
    values = 3.0 + phase + np.sin(2 * np.pi * t + shift) + 0.3 * np.sin(4 * np.pi * t + 2 * shift)
    if noise:
        values = values + 0.05 * np.random.default_rng(int(phase * 10)).standard_normal(len(t))
    return (t * 0.7).tolist(), values.tolist()


def write_fixture(folder, granularities=("fine", "coarse"), noise_options=(False, True), gz=True) -> None:
    """Every split x granularity x noise file in the published layout, for FIXTURE_SYSTEMS."""
    folder.mkdir(parents=True, exist_ok=True)
    for granularity in granularities:
        ppp = dysts_data.GRANULARITY[granularity]
        for split in ("train", "test"):
            for noise in noise_options:
                data = {}
                for name, phase in FIXTURE_SYSTEMS.items():
                    time, values = fake_series(ppp, phase, split, noise)
                    data[name] = {"dt": 0.7 / ppp, "time": time, "values": values}
                text = json.dumps(data, indent=4).encode()
                filename = dataset_filename(split, granularity, noise)
                if gz:
                    (folder / filename).write_bytes(gzip.compress(text))
                else:
                    (folder / filename.removesuffix(".gz")).write_bytes(text)
        # the official per-system hyperparameters (compute_benchmarks.py reads NBEATSModel's input_chunk_length)
        lengths = {"Lorenz": 5, "Rossler": 10} if granularity == "coarse" else {"Lorenz": 25, "Rossler": 50}
        table = {name: {"NBEATSModel": {"input_chunk_length": n, "output_chunk_length": 1}, "ARIMA": {"p": 3}}
                 for name, n in lengths.items()}
        (folder / dysts_data.hyperparameter_filename(granularity)).write_text(json.dumps(table))


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(base_url, cache dir): the fixture behind a local HTTP server, the download cache under tmp_path."""
    www = tmp_path / "www"
    write_fixture(www)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PAPERZOO_DATA", str(cache))
    with serve_directory(www) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", cache


def test_filenames_match_the_published_ones():
    assert dataset_filename("test", "fine") == "test_univariate__pts_per_period_100__periods_12.json.gz"
    assert dataset_filename("train", "coarse", noise=True) == \
        "train_univariate__pts_per_period_15__periods_12_noise.json.gz"
    assert dataset_filename("test", "coarse", univariate=False) == \
        "test_multivariate__pts_per_period_15__periods_12.json.gz"
    with pytest.raises(UserError, match="granularity"):
        dataset_filename("test", "medium")
    assert forecast_split(1200) == 1000 and forecast_split(180) == 150


@pytest.mark.parametrize("granularity,lags,horizon,length", [("fine", 100, 200, 1200), ("coarse", 15, 30, 180)])
def test_download_and_paper_split(served, granularity, lags, horizon, length):
    base_url, cache = served
    dm = DystsPrecomputedDataModule(system="Rossler", granularity=granularity, base_url=base_url)
    dm.prepare_data()
    dm.setup()
    for split in ("train", "test"):
        name = dataset_filename(split, granularity)
        assert (cache / "dysts_data" / name).is_file()
        assert (cache / "dysts_data" / f"{name}.sha256").is_file()  # trust on first use: sha256 recorded
    assert dm.lags == lags and dm.horizon == horizon and len(dm.series) == length and dm.split == length - horizon
    _, test_values = fake_series(dysts_data.GRANULARITY[granularity], 1.0, "test", False)
    x, y = dm.test_set[0]
    assert len(dm.test_set) == 1  # the paper scores one forecast per system: the last sixth from its history
    np.testing.assert_allclose(x.numpy(), test_values[dm.split - lags:dm.split], rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), test_values[dm.split:], rtol=1e-6)
    assert len(dm.train_set) == dm.split - lags - horizon + 1
    last_target = dm.train_set[len(dm.train_set) - 1][1]
    assert last_target[-1].item() == pytest.approx(test_values[dm.split - 1], rel=1e-6)  # history only, no leak
    _, tune_values = fake_series(dysts_data.GRANULARITY[granularity], 1.0, "train", False)
    np.testing.assert_allclose(dm.val_set[0][1].numpy(), tune_values[-horizon:], rtol=1e-6)  # other ic
    assert dm.mean == pytest.approx(np.mean(test_values[:dm.split]))


def test_noise_files_and_local_data_dir(tmp_path):
    write_fixture(tmp_path / "plain", gz=False)  # uncompressed copies (older dysts layout) are accepted too
    clean = DystsPrecomputedDataModule(system="Chua", granularity="coarse", data_dir=str(tmp_path / "plain"))
    noisy = DystsPrecomputedDataModule(system="Chua", granularity="coarse", noise=True, data_dir=str(tmp_path / "plain"))
    clean.setup()
    noisy.setup()
    diff = np.abs(clean.series - noisy.series)
    assert 0 < diff.max() < 0.5


def test_measurement_noise_is_the_official_noisy_benchmark(tmp_path):
    """compute_benchmarks_noise_*.py: the clean test series + 0.2 std(series) N(0, 1) over its whole length, so the
    history and the scored future are both noisy; the tuning series stays clean; seeded by data.seed here."""
    write_fixture(tmp_path / "d")
    kw = {"system": "Chua", "granularity": "coarse", "data_dir": str(tmp_path / "d")}
    clean, noisy = DystsPrecomputedDataModule(**kw), DystsPrecomputedDataModule(**kw, measurement_noise=0.2)
    again = DystsPrecomputedDataModule(**kw, measurement_noise=0.2)
    for dm in (clean, noisy, again):
        dm.setup()
    noise = noisy.series - clean.series
    assert float(noise.std()) == pytest.approx(0.2 * float(clean.series.std()), rel=0.25)
    assert np.all(noise[noisy.split:] != 0) and np.array_equal(noisy.series, again.series)
    torch.testing.assert_close(noisy.val_set.tensors[1], clean.val_set.tensors[1])  # the clean tuning series
    torch.testing.assert_close(noisy.test_set.tensors[1][0], torch.as_tensor(noisy.series[noisy.split:],
                                                                             dtype=torch.float32)[:noisy.horizon])
    with pytest.raises(UserError, match="measurement_noise"):
        DystsPrecomputedDataModule(**kw, measurement_noise=-0.1)


def test_unknown_system_missing_and_corrupt_files(tmp_path):
    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    with pytest.raises(UserError, match=r"unknown dysts system 'Rosler' \(did you mean Rossler"):
        DystsPrecomputedDataModule(system="Rosler", granularity="coarse", data_dir=str(tmp_path / "d")).setup()
    with pytest.raises(UserError, match="not found"):
        DystsPrecomputedDataModule(system="Lorenz", granularity="fine", data_dir=str(tmp_path / "d")).setup()
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(b'{"Lorenz": {"dt": 0.1, "values": [1.0, 2.0')[:-4])
    with pytest.raises(UserError, match="corrupt") as err:
        load_precomputed(bad)
    assert "\n" not in str(err.value)
    bad.write_bytes(b'{"Lorenz": {"dt": 0.1, "time": [0, 1]}}')
    with pytest.raises(UserError, match="no 'values'"):
        load_precomputed(bad)
    with pytest.raises(UserError, match="coordinate"):
        system_series({"Lorenz": {"values": np.zeros(10)}}, "Lorenz", coordinate=1)
    for dt in ("null", '"0.1"', "0", "-1"):  # was a TypeError traceback (null, text) or a negative Lyapunov time
        bad.write_bytes(b'{"Lorenz": {"dt": %s, "values": [1.0, 2.0, 3.0]}}' % dt.encode())
        with pytest.raises(UserError, match="'dt' .* not a positive number"):
            load_precomputed(bad)


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    with serve_directory(tmp_path) as server:  # serves nothing: HTTP 404
        dm = DystsPrecomputedDataModule(system="Lorenz", base_url=f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(UserError, match="HTTP 404") as err:
            dm.prepare_data()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("variant,lags,horizon", [("dysts_data_fine", 100, 200), ("dysts_data_coarse", 15, 30)])
def test_variant_composes_with_paper_settings(variant, lags, horizon):
    cfg = zconfig.compose([f"experiment=dysts_benchmark/{variant}"])
    assert cfg.data.lags == lags and cfg.data.horizon == horizon and cfg.data.data_dir is None
    assert cfg.data.base_url == dysts_data.BASE_URL
    assert cfg.data.hyperparameters == "official" and cfg.data.hyperparameters_url == dysts_data.HYPERPARAMETERS_URL
    assert (cfg.model.width, cfg.model.num_layers, cfg.model.num_blocks) == (256, 4, 30)  # darts N-BEATS defaults
    assert cfg.trainer.max_epochs == 100 and cfg.trainer.precision == "32-true"
    datamodule, model = train.instantiate(cfg)  # no download at instantiation
    assert model.hparams.lags == lags and model.hparams.horizon == horizon
    assert isinstance(datamodule, DystsPrecomputedDataModule)
    # official compute_benchmarks.py: one-step model on raw values rolled over the window, last point unscored
    assert (cfg.model.output_chunk, cfg.data.train_horizon, cfg.model.standardize) == (1, 1, False)
    assert cfg.model.scored_steps == horizon - 1 and model.model.horizon == 1
    head = model.model.blocks[0].forecast  # darts generic block: width -> theta (5) -> forecast
    assert [m.out_features for m in head] == [5, 1] and cfg.model.theta_dim == 5


def test_one_step_model_rolls_forward_and_trains_on_next_points(tmp_path):
    """output_chunk=1: the network predicts one step, fed back into its window until the horizon (darts' predict
    with output_chunk_length 1); training windows carry train_horizon targets; scored_steps drops the last point."""
    from lit_models.dynamics.dysts_benchmark import DystsForecastModule

    torch.manual_seed(0)
    m = DystsForecastModule(lags=6, horizon=5, width=8, num_layers=1, num_blocks=2, output_chunk=1,
                            standardize=False)
    x = torch.randn(3, 6)
    with torch.no_grad():
        pred = m(x)
        window, expect = x.clone(), []
        for _ in range(5):
            step = m.model(window)
            expect.append(step)
            window = torch.cat([window[:, 1:], step], 1)
    torch.testing.assert_close(pred, torch.cat(expect, 1))
    two = DystsForecastModule(lags=6, horizon=5, width=8, num_layers=1, num_blocks=2, output_chunk=2)
    assert two(x).shape == (3, 5) and two.model.horizon == 2
    direct = DystsForecastModule(lags=6, horizon=5, width=8, num_layers=1, num_blocks=2)
    assert direct.model.horizon == 5
    with pytest.raises(ValueError, match="output_chunk"):
        DystsForecastModule(lags=6, horizon=5, output_chunk=6)
    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    dm = DystsPrecomputedDataModule(system="Lorenz", granularity="coarse", train_horizon=1,
                                    data_dir=str(tmp_path / "d"))
    dm.setup()
    xtr, ytr = dm.train_set.tensors
    assert ytr.shape[1] == 1 and len(xtr) == 150 - 15  # every window of the 150-point history with its next point
    assert dm.test_set.tensors[1].shape[1] == 30


def test_official_hyperparameter_file_sets_the_systems_input_length(tmp_path, caplog):
    """data.hyperparameters = the official hyperparameters_train_univariate__*.json: lags = the system's NBEATSModel
    input_chunk_length (one period for a system without an entry, with a warning naming it: it fell back silently);
    an unreadable file is a one-line error."""
    import json

    from launch.errors import UserError

    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"Lorenz": {"NBEATSModel": {"input_chunk_length": 5}, "RNNModel": {}},
                              "Rossler": {"RNNModel": {"input_chunk_length": 10}}}))
    dm = DystsPrecomputedDataModule(system="Lorenz", granularity="coarse", train_horizon=1, hyperparameters=str(hp),
                                    data_dir=str(tmp_path / "d"))
    dm.setup()
    assert dm.lags == 5 and dm.train_set.tensors[0].shape == (150 - 5, 5)
    with caplog.at_level(logging.WARNING, logger="datamodules.dysts_data"):
        other = DystsPrecomputedDataModule(system="Rossler", granularity="coarse", hyperparameters=str(hp),
                                           data_dir=str(tmp_path / "d"))
    assert other.lags == 15
    assert [r.getMessage() for r in caplog.records] == [  # the fallback is said, naming the system
        "data.hyperparameters: hp.json has no NBEATSModel input_chunk_length for Rossler: using one period "
        "(15 points) as input length"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.dysts_data"):
        official = DystsPrecomputedDataModule(system="Chua", granularity="coarse", hyperparameters="official",
                                              data_dir=str(tmp_path / "d"))  # the fixture's file has no Chua
        official.setup()
    assert official.lags == 15 and len(caplog.records) == 1 and "for Chua: using one period" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.dysts_data"):
        DystsPrecomputedDataModule(system="Lorenz", granularity="coarse", hyperparameters="official",
                                   data_dir=str(tmp_path / "d")).setup()
    assert not caplog.records  # systems with an entry: no warning
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not a readable JSON"):
        DystsPrecomputedDataModule(system="Lorenz", hyperparameters=str(tmp_path / "bad.json"))
    for lags in (0, -3, True, 2.5, "25"):  # 0 trained 3 steps then a shape traceback; -3 a traceback; true was 1
        hp.write_text(json.dumps({"Lorenz": {"NBEATSModel": {"input_chunk_length": lags}}}))
        with pytest.raises(UserError, match="input_chunk_length is .* not a whole number >= 1"):
            DystsPrecomputedDataModule(system="Lorenz", granularity="coarse", hyperparameters=str(hp),
                                       data_dir=str(tmp_path / "d"))


TINY = ["model.width=16", "model.num_layers=1", "model.num_blocks=2", "data.batch_size=8",
        "trainer.check_val_every_n_epoch=1"]


def test_official_input_length_reaches_the_model(tmp_path):
    """`zoo train experiment=dysts_benchmark/... data.hyperparameters=<json>`: the network is built for the system's
    official input length (it was built for data.lags and the first batch failed with a shape error), and the
    checkpoint records it."""
    import json

    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"Lorenz": {"NBEATSModel": {"input_chunk_length": 5}}}))
    run = fast_run("dysts_benchmark/dysts_data_coarse", *TINY, "data.system=Lorenz", f"data.data_dir={tmp_path / 'd'}",
                   f"data.hyperparameters={hp}")
    run.assert_contract()
    assert run.datamodule.lags == run.model.hparams.lags == 5
    assert run.model.model.blocks[0].mlp[0].in_features == 5


@pytest.mark.parametrize("variant", ["dysts_data_fine", "dysts_data_coarse"])
def test_variant_fast_run_through_download(served, variant):
    base_url, cache = served
    run = fast_run(f"dysts_benchmark/{variant}", *TINY, "data.system=Lorenz", f"data.base_url={base_url}",
                   f"data.hyperparameters_url={base_url}")
    run.assert_contract()
    # the system's official input length (fixture: Lorenz 25 fine / 5 coarse), downloaded with the data
    assert run.datamodule.lags == run.model.hparams.lags == (25 if variant == "dysts_data_fine" else 5)
    assert (cache / "dysts_data" / dysts_data.hyperparameter_filename(run.datamodule.hparams.granularity)).is_file()
    for key in ("train/loss", "val/smape", "test/smape", "test/smape_naive", "test/nrmse"):
        assert key in run.metrics and math.isfinite(run.metrics[key]), sorted(run.metrics)
    assert "test/vpt" in run.metrics  # Lorenz is a dysts system: its Lyapunov exponent sets the VPT scale
    assert any((cache / "dysts_data").glob("test_univariate__*.json.gz"))


def test_cli_unknown_system_exits_2(tmp_path):
    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    code, out, err = zoo_in_process("train", "experiment=dysts_benchmark/dysts_data_coarse", "logger=none",
                                    "progress_bar=false", f"runs_root={tmp_path / 'runs'}", "data.system=Lorenzz",
                                    f"data.data_dir={tmp_path / 'd'}", "trainer.max_steps=1")
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown dysts system 'Lorenzz'" in lines[0], err


def _coarse_one_step(folder, **kw) -> DystsPrecomputedDataModule:
    """The coarse fixture as the paper-scale config serves it: 15 lags -> one target, 150 - 15 = 135 windows."""
    write_fixture(folder, granularities=("coarse",), noise_options=(False,))
    return DystsPrecomputedDataModule(system="Lorenz", granularity="coarse", train_horizon=1, batch_size=32,
                                      data_dir=str(folder), **kw)


def test_paper_scale_epoch_trains_on_every_window(tmp_path):
    """darts' fit (official compute_benchmarks.py) keeps the last short batch: 135 windows at batch 32 are 5 steps an
    epoch (4 x 32 + 7), every window once. The loader dropped it (4 steps, 7 windows unseen each epoch); the offline
    default keeps whole batches (its beats_naive claim was measured so)."""
    assert zconfig.compose(["experiment=dysts_benchmark/dysts_data_coarse"]).data.drop_last is False
    dm = _coarse_one_step(tmp_path / "d")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and [len(b["x"]) for b in batches] == [32, 32, 32, 32, 7]
    seen = [tuple(w.tolist()) for b in batches for w in b["x"]]
    assert sorted(seen) == sorted(tuple(w.tolist()) for w in dm.train_set.tensors[0])  # each window exactly once
    whole = _coarse_one_step(tmp_path / "d", drop_last=True)
    assert len(whole.train_dataloader()) == 4


def test_short_last_batch_under_ddp_sampling(tmp_path):
    """Under DDP Lightning rebuilds the training loader with a DistributedSampler (padded to equal shares): each of 2
    ranks gets ceil(135 / 2) = 68 windows, 3 batches (32, 32, 4), so the ranks agree on the steps of an epoch."""
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    from datamodules.resumable import ResumableDataLoader

    dm = _coarse_one_step(tmp_path / "d")
    loader = dm.train_dataloader()
    indices = set()
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ddp = _update_dataloader(loader, sampler, mode="fit")
        assert isinstance(ddp, ResumableDataLoader) and ddp.datamodule is dm and not ddp.drop_last
        batches = list(ddp)
        assert len(ddp) == len(batches) == 3 and [len(b["x"]) for b in batches] == [32, 32, 4]
        indices |= set(sampler)
    assert indices == set(range(135))  # together: every window


def test_resume_with_a_short_last_batch(tmp_path):
    """A run resumed mid-epoch, inside the next epoch or after an epoch's short last batch trains on the uninterrupted
    run's batches (the loader state counts the short batch as one of the epoch's 5)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.test_resumable_data import Recorder

    folder = tmp_path / "d"
    _coarse_one_step(folder)

    def fit(root, ckpt=None, callbacks=(), **limits):
        model = Recorder()
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=bool(callbacks),
                            callbacks=list(callbacks), default_root_dir=str(root), limit_val_batches=0,
                            num_sanity_val_steps=0, **limits)
        trainer.fit(model, _coarse_one_step(folder), ckpt_path=ckpt)
        return model.seen

    full = fit(tmp_path / "full", max_epochs=3)
    assert len(full) == 3 * 5
    for stop in (2, 5, 7):  # inside epoch 0, after its short last batch, inside epoch 1
        root = tmp_path / f"stop{stop}"
        saver = ModelCheckpoint(dirpath=str(root), filename="at", every_n_train_steps=stop, save_top_k=-1)
        first = fit(root, callbacks=[saver], max_steps=stop)
        rest = fit(root, ckpt=str(root / "at.ckpt"), max_epochs=3)
        assert first + rest == full, stop


def test_training_targets_shorter_than_the_output_chunk_are_refused(tmp_path):
    """model.output_chunk=null (the network forecasts the whole horizon) with data.train_horizon=1: the (B, 30)
    output was broadcast against the (B, 1) targets by the MSE (only a torch warning); now a one-line error, exit 2."""
    write_fixture(tmp_path / "d", granularities=("coarse",), noise_options=(False,))
    code, out, err = zoo_in_process("train", "experiment=dysts_benchmark/dysts_data_coarse", "logger=none",
                                    "progress_bar=false", f"runs_root={tmp_path / 'runs'}", "data.system=Lorenz",
                                    f"data.data_dir={tmp_path / 'd'}", "data.hyperparameters=null",
                                    "model.output_chunk=null", "trainer.max_steps=1", *TINY)
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "1 target step(s), fewer than the network's output chunk of 30" in lines[0], err
