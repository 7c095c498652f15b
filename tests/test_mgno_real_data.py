"""MgNO's real benchmarks (datamodules.mgno_data): each loader on a tiny local fixture written in the real file format
(MATLAB v5 via scipy.io.savemat, v7.3 via h5py, numpy .npy), the download path through a local HTTP server, and a fast
contract run of each paper-scale variant configs/experiment/mgno/<dataset>.yaml pointed at its fixture (never the
network)."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from datamodules import mgno_data
from datamodules.mgno_data import MgNODataModule, load_helmholtz, load_pipe, navier_stokes_pairs
from launch.errors import UserError
from lit_models.pde.mgno import MgNOModule
from tests.conftest import serve_directory
from tests.papers.contract import fast_run


# ------------------------------------------------------------------------------------------------ fixtures
def save_mat73(path, arrays: dict) -> None:
    """A MATLAB v7.3 .mat: HDF5 with the 128-byte MATLAB text header in a 512-byte user block (version 0x0200,
    endian tag 'IM'), each variable stored with MATLAB's column-major axis order (reversed in HDF5)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=np.ascontiguousarray(np.asarray(arr).T))
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Tue Dec  1 00:00:00 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(text.ljust(116, b" ") + bytes(8) + b"\x00\x02IM")


def write_darcy(folder, name, n=(5, 4), s=32, v73=False):
    """FNO-format Darcy files (keys coeff, sol; N x s x s). v7.3: HDF5 with MATLAB's reversed axis order."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for (split, file), count in zip(mgno_data.DATASETS[name].items(), n):
        coeff = rng.uniform(1, 10, (count, s, s))
        sol = rng.random((count, s, s))
        if v73:
            save_mat73(folder / file, {"coeff": coeff, "sol": sol})
        else:
            scipy.io.savemat(folder / file, {"coeff": coeff, "sol": sol})
        out[split] = (coeff, sol)
    return out


def write_helmholtz(folder, n=12, s=16):
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = rng.uniform(1, 2, (s, s, n)), rng.standard_normal((s, s, n))
    np.save(folder / "Helmholtz_inputs.npy", x)
    np.save(folder / "Helmholtz_outputs.npy", y)
    return x, y


def write_pipe(folder, n=10, s=17):
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    gx, gy = np.meshgrid(np.linspace(0, 10, s), np.linspace(-1, 1, s), indexing="ij")
    px = gx[None] + 0.01 * rng.standard_normal((n, s, s))
    py = gy[None] + 0.1 * rng.standard_normal((n, s, s))
    q = rng.random((n, 3, s, s))
    for key, arr in (("x", px), ("y", py), ("q", q)):
        np.save(folder / mgno_data.DATASETS["pipe"][key], arr.astype(np.float32))
    return px.astype(np.float32), py.astype(np.float32), q.astype(np.float32)


def write_ns(folder, n=6, s=16, t=5, v73=False):
    """FNO Navier-Stokes file: key u of shape (N, s, s, T) (v7.3: HDF5, axes reversed)."""
    rng = np.random.default_rng(4)
    folder.mkdir(parents=True, exist_ok=True)
    u = rng.standard_normal((n, s, s, t)).astype(np.float32)
    path = folder / mgno_data.DATASETS["navier_stokes"]["u"]
    if v73:
        save_mat73(path, {"u": u})
    else:
        scipy.io.savemat(path, {"u": u})
    return u


# ------------------------------------------------------------------------------------------------- loaders
@pytest.mark.parametrize("v73", [False, True])
def test_darcy_rough_and_multiscale_subsample_and_normalise(tmp_path, v73):
    for name, rate in (("darcy_rough", 2), ("darcy_multiscale", 4)):
        arrays = write_darcy(tmp_path / name, name, v73=v73)
        dm = MgNODataModule(name=name, resolution=32 // rate, n_train=5, n_test=3, batch_size=2, sampling_rate=rate,
                            data_dir=str(tmp_path / name))
        dm.setup()
        t = dm.tensors
        s = 32 // rate
        assert t["x_train"].shape == (5, 1, s, s) and t["y_test"].shape == (3, 1, s, s)
        a_tr = arrays["train"][0][:, ::rate, ::rate]
        np.testing.assert_allclose(t["x_train"][:, 0].numpy(), (a_tr - a_tr.mean()) / a_tr.std(), rtol=1e-4, atol=1e-5)
        u_std = arrays["train"][1][:, ::rate, ::rate].std()
        np.testing.assert_allclose(t["y_test"][:, 0].numpy() * u_std, arrays["test"][1][:3, ::rate, ::rate], rtol=1e-5)
        b = next(iter(dm.train_dataloader()))
        assert b["x"].shape == (2, 1, 32 // rate, 32 // rate)


def test_official_validation_rows_for_rough_darcy_and_helmholtz(tmp_path):
    """Official getDataSize validation rows: darcy20c6 rows 1280.. of the train file, helm rows 8200..; pipe and
    Navier-Stokes have none (one-line error)."""
    arrays = write_darcy(tmp_path / "r", "darcy_rough", n=(6, 4))
    dm = MgNODataModule(name="darcy_rough", resolution=16, n_train=3, n_test=2, n_val=2, val_from="train",
                        val_offset=4, data_dir=str(tmp_path / "r"))
    dm.setup()
    u_std = arrays["train"][1][:3, ::2, ::2].std()
    np.testing.assert_allclose(dm.tensors["y_val"][:, 0].numpy() * u_std, arrays["train"][1][4:6, ::2, ::2],
                               rtol=1e-5)
    x, y = write_helmholtz(tmp_path / "h")
    hm = MgNODataModule(name="helmholtz", resolution=16, n_train=4, n_test=3, test_offset=5, n_val=2, val_offset=9,
                        data_dir=str(tmp_path / "h"))
    hm.setup()
    a_tr = x[..., :4]
    np.testing.assert_allclose(hm.tensors["x_val"][:, 0].numpy(),
                               (np.moveaxis(x[..., 9:11], -1, 0) - a_tr.mean()) / a_tr.std(), rtol=1e-4, atol=1e-5)
    assert len(hm.val_dataloader().dataset) == 2
    with pytest.raises(UserError, match="n_val"):
        MgNODataModule(name="pipe", n_val=10)
    from launch import config as zconfig

    d = zconfig.compose(["experiment=mgno/darcy_rough"]).data
    assert (d.n_val, d.val_from, d.val_offset) == (112, "train", 1280)
    assert zconfig.compose(["experiment=mgno/helmholtz"]).data.val_offset == 8200


def test_helmholtz_rows_and_sample_axis(tmp_path):
    x, y = write_helmholtz(tmp_path)
    a_tr, u_tr, a_te, u_te = load_helmholtz(tmp_path / "Helmholtz_inputs.npy", tmp_path / "Helmholtz_outputs.npy",
                                            (0, 4), (8, 11))
    np.testing.assert_array_equal(a_tr[2], x[..., 2])
    np.testing.assert_array_equal(u_te[0], y[..., 8])
    assert a_tr.shape == (4, 16, 16) and u_te.shape == (3, 16, 16)
    with pytest.raises(UserError, match="outside"):
        load_helmholtz(tmp_path / "Helmholtz_inputs.npy", tmp_path / "Helmholtz_outputs.npy", (0, 4), (10, 13))
    dm = MgNODataModule(name="helmholtz", resolution=16, n_train=4, n_test=3, test_offset=8, sampling_rate=1,
                        data_dir=str(tmp_path))
    dm.setup()
    assert dm.tensors["x_test"].shape == (3, 1, 16, 16)


def test_pipe_mesh_channels_crop_and_split(tmp_path):
    px, py, q = write_pipe(tmp_path)
    a_tr, u_tr, a_te, u_te = load_pipe(tmp_path / "Pipe_X.npy", tmp_path / "Pipe_Y.npy", tmp_path / "Pipe_Q.npy",
                                       n_train=6, n_test=3, n_total=10, crop=16)
    assert a_tr.shape == (6, 2, 16, 16) and u_te.shape == (3, 16, 16)
    np.testing.assert_array_equal(a_tr[1, 1], py[1, :16, :16])
    np.testing.assert_array_equal(u_te[0], q[7, 0, :16, :16])  # test = the last 3 of the first 10
    dm = MgNODataModule(name="pipe", resolution=16, n_train=6, n_test=3, n_total=10, normalize=False,
                        data_dir=str(tmp_path))
    dm.setup()
    assert dm.in_channels == 2 and dm.tensors["x_train"].shape == (6, 2, 16, 16)
    np.testing.assert_allclose(dm.tensors["y_test"][:, 0].numpy(), q[7:10, 0, :16, :16])  # raw, as the official
    with pytest.raises(UserError, match="n_total"):
        load_pipe(tmp_path / "Pipe_X.npy", tmp_path / "Pipe_Y.npy", tmp_path / "Pipe_Q.npy", 8, 3, 10)


@pytest.mark.parametrize("v73", [False, True])
def test_navier_stokes_one_step_pairs_and_rollout_targets(tmp_path, v73):
    u = write_ns(tmp_path, v73=v73)  # (N, s, s, T)
    dm = MgNODataModule(name="navier_stokes", resolution=16, n_train=3, n_test=2, n_total=6, t_steps=3,
                        normalize=False, data_dir=str(tmp_path))
    dm.setup()
    t = dm.tensors
    assert t["x_train"].shape == (9, 1, 16, 16) and t["y_train"].shape == (9, 1, 16, 16)
    # pair k = (trajectory k // 3, time k % 3): frame t -> frame t + 1
    np.testing.assert_allclose(t["x_train"][4, 0].numpy(), u[1, :, :, 1], rtol=1e-6)
    np.testing.assert_allclose(t["y_train"][4, 0].numpy(), u[1, :, :, 2], rtol=1e-6)
    assert t["x_test"].shape == (2, 1, 16, 16) and t["y_test"].shape == (2, 3, 16, 16)
    np.testing.assert_allclose(t["x_test"][0, 0].numpy(), u[4, :, :, 0], rtol=1e-6)  # last 2 trajectories
    np.testing.assert_allclose(t["y_test"][1, 2].numpy(), u[5, :, :, 3], rtol=1e-6)
    with pytest.raises(UserError, match="T >= 6"):
        navier_stokes_pairs(np.zeros((4, 5, 8, 8)), 2, 1, t_steps=5)


def _poison(name, folder, bad):
    """The fixture of `name` with one used value set to `bad`: (kwargs of MgNODataModule, the poisoned file, the
    variable the error names)."""
    if name in ("darcy_rough", "darcy_rough_v73"):
        arrays = write_darcy(folder, "darcy_rough", n=(5, 3))
        coeff, sol = arrays["test"]
        sol[2, 6, 4] = bad  # kept by the x2 subsampling
        path = folder / mgno_data.DATASETS["darcy_rough"]["test"]
        (save_mat73 if name.endswith("v73") else scipy.io.savemat)(path, {"coeff": coeff, "sol": sol})
        return dict(name="darcy_rough", resolution=16, n_train=5, n_test=3), path, "sol"
    if name == "helmholtz":
        x, _ = write_helmholtz(folder)
        x[3, 5, 9] = bad  # test sample 9 (rows 8..10)
        np.save(folder / "Helmholtz_inputs.npy", x)
        kw = dict(name="helmholtz", resolution=16, n_train=4, n_test=3, test_offset=8)
        return kw, folder / "Helmholtz_inputs.npy", "samples 8..10"
    if name == "pipe":
        q = write_pipe(folder)[2]
        q[1, 0, 2, 3] = bad
        np.save(folder / "Pipe_Q.npy", q)
        return dict(name="pipe", resolution=16, n_train=6, n_test=3, n_total=10), folder / "Pipe_Q.npy", r"Q\[:, 0\]"
    u = write_ns(folder)
    u[5, 1, 2, 3] = bad
    scipy.io.savemat(folder / mgno_data.DATASETS["navier_stokes"]["u"], {"u": u})
    kw = dict(name="navier_stokes", resolution=16, n_train=3, n_test=2, n_total=6, t_steps=3, normalize=False)
    return kw, folder / mgno_data.DATASETS["navier_stokes"]["u"], "u"


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
@pytest.mark.parametrize("name", ["darcy_rough", "darcy_rough_v73", "helmholtz", "pipe", "navier_stokes"])
def test_non_finite_values_are_a_one_line_error_naming_file_and_variable(tmp_path, name, bad):
    kw, path, what = _poison(name, tmp_path, bad)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: NaN or infinite values in {what}$"):
        MgNODataModule(data_dir=str(tmp_path), **kw).setup()


def test_non_finite_values_outside_the_used_samples_are_ignored(tmp_path):
    x, _ = write_helmholtz(tmp_path)
    x[0, 0, 6] = np.nan  # sample 6: neither train (0..3) nor test (8..10)
    np.save(tmp_path / "Helmholtz_inputs.npy", x)
    dm = MgNODataModule(name="helmholtz", resolution=16, n_train=4, n_test=3, test_offset=8, data_dir=str(tmp_path))
    dm.setup()
    assert all(torch.isfinite(t).all() for t in dm.tensors.values())


def test_rollout_feeds_predictions_back():
    torch.manual_seed(0)
    m = MgNOModule(num_layer=1, num_channel_u=4, levels=["10", "10"], resolution=16, padding_mode="circular",
                   skip=True, pointwise=False, bias_field=False, conv_bias=True, layer_norm=True, loss="l2")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = m.rollout(x, 3)
        assert out.shape == (2, 3, 16, 16)
        torch.testing.assert_close(out[:, 2:3], m(m(m(x))))
    assert m.net.linears is None and m.net.convs[0].pre[0][0].S.bias is not None


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match="unknown MgNO dataset"):
        MgNODataModule(name="darcy_smooth_typo", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="data_dir"):
        MgNODataModule(name="pipe").setup()
    with pytest.raises(UserError, match="not found"):
        MgNODataModule(name="darcy_rough", data_dir=str(tmp_path)).setup()
    write_darcy(tmp_path / "r", "darcy_rough")
    with pytest.raises(ValueError, match="resolution"):
        MgNODataModule(name="darcy_rough", resolution=256, n_train=5, n_test=3, data_dir=str(tmp_path / "r")).setup()


def test_helmholtz_through_download(tmp_path, monkeypatch):
    www = tmp_path / "www"
    write_helmholtz(www)
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    with serve_directory(www) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{file}}"
        dm = MgNODataModule(name="helmholtz", resolution=16, n_train=4, n_test=3, test_offset=8, url=url)
        dm.prepare_data()
        dm.setup()
    assert (tmp_path / "cache" / "mgno" / "Helmholtz_inputs.npy").is_file()
    assert (tmp_path / "cache" / "mgno" / "Helmholtz_outputs.npy.sha256").is_file()
    assert dm.tensors["y_train"].shape == (4, 1, 16, 16)


# ------------------------------------------------------------------------------ variants: fast contract runs
TINY = ["model.num_channel_u=4", "model.num_layer=2", "model.levels=[10,10,10]", "data.eval_batch_size=4",
        "data.batch_size=2"]


def _fixture(name, folder):
    if name in ("darcy_rough", "darcy_multiscale"):
        write_darcy(folder, name)
        rate = 2 if name == "darcy_rough" else 4
        val = ["data.val_offset=3", "data.n_val=2"] if name == "darcy_rough" else []  # the official range, shrunk
        return [f"data.resolution={32 // rate}", f"data.sampling_rate={rate}", "data.n_train=5", "data.n_test=3", *val]
    if name == "helmholtz":
        write_helmholtz(folder)
        return ["data.resolution=16", "data.n_train=4", "data.n_test=3", "data.test_offset=8", "data.val_offset=11",
                "data.n_val=1"]
    if name == "pipe":
        write_pipe(folder)
        return ["data.resolution=16", "data.n_train=6", "data.n_test=3", "data.n_total=10"]
    write_ns(folder)
    return ["data.resolution=16", "data.n_train=3", "data.n_test=2", "data.n_total=6", "data.t_steps=3"]


@pytest.mark.parametrize("name", list(mgno_data.DATASETS))
def test_variant_fast_contract(tmp_path, name):
    overrides = _fixture(name, tmp_path / name)
    run = fast_run(f"mgno/{name}", *TINY, *overrides, f"data.data_dir={tmp_path / name}")
    run.assert_contract()
    assert {"test/rel_l2", "test/rel_h1"} <= set(run.metrics), sorted(run.metrics)
    hp = run.model.hparams
    expected = {"darcy_rough": "zeros", "darcy_multiscale": "zeros", "pipe": "zeros", "helmholtz": "reflect",
                "navier_stokes": "circular"}[name]
    assert hp.padding_mode == expected
    assert hp.in_channels == (2 if name == "pipe" else 1)
    assert not hp.bias_field  # official MgNO_DC / MgNO_NS / MgNO_helm: no bias field (paper-size parameter counts)
    if name == "navier_stokes":
        assert hp.skip and hp.layer_norm and not hp.pointwise and not hp.bias_field and hp.loss == "l2"
    if name == "helmholtz":  # official --model_type MgNO_helm trained with HSloss_d
        from lit_models.pde.mgno_helm import MgNOHelm

        assert isinstance(run.model.net, MgNOHelm) and hp.loss == "fd_h1" and hp.loss_reduction == "mean"
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.parametrize("name", ["darcy_smooth", "darcy_rough", "darcy_multiscale", "helmholtz"])
def test_variant_reports_the_best_validation_epoch(name):
    """darcy.py / helm.py validate every epoch and report the test error at the best-validation epoch (for
    darcy_multiscale the validation rows are the test rows, data.n_val=0, as in darcy.py's a4f1 branch)."""
    from launch import config as zconfig

    cfg = zconfig.compose([f"experiment=mgno/{name}"])
    assert cfg.trainer.check_val_every_n_epoch == 1
    assert cfg.checkpoint.monitor == "val/rel_l2" and cfg.checkpoint.mode == "min" and cfg.checkpoint.test_on == "best"
    if name == "darcy_multiscale":
        assert cfg.data.n_val == 0


def test_the_url_template_hint_is_one_hydra_accepts():
    """The no-download error suggested `data.url=<... {file}>`, which Hydra's override parser refuses unquoted: the
    hint's quoted form composes to the template."""
    import re

    from datamodules.mgno_data import MgNODataModule
    from launch import config as zconfig
    from launch.errors import UserError

    with pytest.raises(UserError) as err:
        MgNODataModule(name="helmholtz")._paths()
    override = re.search(r"\"(data\.url=.*)\"", str(err.value)).group(1)
    assert zconfig.compose(["experiment=mgno/helmholtz", override]).data.url == "https://<host>/<path>/{file}"
