"""The dysts benchmark's published data (datamodules.dysts_data): a tiny fixture in the real file layout
({system: {"dt", "time", "values"}}, gzip JSON, named `{split}_univariate__pts_per_period_{100|15}__periods_12[_noise]
.json.gz`) served by a local HTTP server through datamodules.download, the paper's 5/6 split, one-line errors for
missing / corrupt files and unknown systems, and fast runs of the paper-scale variants (never the network)."""
from __future__ import annotations

import gzip
import json
import math

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


def test_official_hyperparameter_file_sets_the_systems_input_length(tmp_path):
    """data.hyperparameters = the official hyperparameters_train_univariate__*.json: lags = the system's NBEATSModel
    input_chunk_length (one period for a system without an entry); an unreadable file is a one-line error."""
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
    other = DystsPrecomputedDataModule(system="Rossler", granularity="coarse", hyperparameters=str(hp),
                                       data_dir=str(tmp_path / "d"))
    assert other.lags == 15
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not a readable JSON"):
        DystsPrecomputedDataModule(system="Lorenz", hyperparameters=str(tmp_path / "bad.json"))


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
