"""UM2N's Helmholtz dataset reader (`datamodules/um2n_helmholtz.py`) on a tiny local fixture in the official file
format: data_<i>.npy files holding pickled dicts with the key names and shapes written by the official
`MeshProcessor` (mesh-adaptation/UM2N, UM2N/processor/processor.py), built here from our own unit-square meshes and
exact separable MA targets so the numbers mean something. No network, no Firedrake."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from datamodules.meshes import MeshGraphDataModule, square_mesh
from datamodules.um2n_helmholtz import KIND_FILE, load_graphs, read_sample, sample_files, sample_to_graph
from launch.errors import UserError
from lit_models.common import mesh as M
from tests.papers.contract import fast_run

RELEASED = ("z=<0,1>_ndist=None_max_dist=6_lc=0.05_n=300_aniso_full_meshtype_6",
            "z=<0,1>_ndist=None_max_dist=6_lc=0.055_n=300_aniso_full_meshtype_6")


def official_sample(n_side: int, seed: int, flip_every: int = 2) -> dict:
    """One sample dict as the official generator saves it (unstructured square mesh, separable bump monitor, its
    exact MA mesh as `y`); every `flip_every`-th triangle is stored clockwise (Firedrake gives no orientation)."""
    rng = np.random.default_rng(seed)
    pos, tri = square_mesh(n_side, "unstructured", mesh_seed=seed)
    m1 = functools.partial(M.bump_monitor_1d, amplitude=float(rng.uniform(2, 10)), centres=rng.uniform(0.2, 0.8, 1),
                           widths=np.array([0.08]))
    m2 = functools.partial(M.bump_monitor_1d, amplitude=float(rng.uniform(2, 10)), centres=rng.uniform(0.2, 0.8, 1),
                           widths=np.array([0.08]))
    target = M.equidistributed_mesh(pos, m1, m2)
    monitor = (m1(pos[:, 0]) * m2(pos[:, 1]))[:, None]
    faces = tri.copy()
    faces[::flip_every] = faces[::flip_every][:, [0, 2, 1]]
    e = M.mesh_edges(tri)
    bm = M.boundary_masks(pos)
    col = lambda m: m.astype(int).reshape(-1, 1)  # noqa: E731
    ro = pos.copy()
    ro.setflags(write=False)
    return {"x": np.concatenate([pos, monitor, monitor], 1), "coord": pos, "pos": pos, "y": target,
            "edge_index": e.T.copy(), "edge_index_bi": np.concatenate([e, e[:, ::-1]]).T.copy(),
            "cluster_edges": None, "scale": ro.max, "cell_node_list": faces.astype(np.int32),
            "face_idxs": faces.astype(np.int32), "conv_uh": np.zeros((1, 20, 20)), "bd_mask": col(bm["any"]),
            "bd_left_mask": col(bm["x0"]), "bd_right_mask": col(bm["x1"]), "bd_down_mask": col(bm["y0"]),
            "bd_up_mask": col(bm["y1"]), "σ_x": [0.1], "μ_x": [0.5], "z": [0.3], "n_dist": 1, "use_iso": False,
            "poly_mesh": False, "monitor_val": monitor, "u": monitor, "phi": None}


def write_dir(directory, samples: dict[int, dict], padded: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, d in samples.items():
        np.save(directory / (f"data_{i:04d}.npy" if padded else f"data_{i}.npy"), d)


@pytest.fixture(scope="module")
def helmholtz_root(tmp_path_factory):
    """<root>/<released dataset folder>/{train,test,val}/data_XXXX.npy for both released folder names."""
    root = tmp_path_factory.mktemp("helmholtz")
    for k, name in enumerate(RELEASED):
        base = 100 * k
        write_dir(root / name / "train", {i: official_sample(6 + i % 2, base + i) for i in range(4)})
        write_dir(root / name / "test", {i: official_sample(7, base + i) for i in range(4, 6)})
        write_dir(root / name / "val", {6: official_sample(6, base + 6)})
    return root


def test_loader_round_trip(tmp_path):
    """Graphs carry the UM2N layout; targets and monitors are what was written, faces counter-clockwise (the same
    triangles), boundary flags from the side masks, files in integer-index order (data_2 before data_10)."""
    samples = {10: official_sample(7, 1), 2: official_sample(6, 2), 0: official_sample(8, 3)}
    write_dir(tmp_path, samples, padded=False)
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in sample_files(tmp_path)] == ["data_0.npy", "data_2.npy", "data_10.npy"]
    graphs = load_graphs(tmp_path)
    for g, i in zip(graphs, (0, 2, 10)):
        d = samples[i]
        n, t = len(d["coord"]), len(d["face_idxs"])
        assert g.x.shape == (n, 4) and g.pos.shape == (n, 2) and g.y.shape == (n, 2) and g.face.shape == (3, t)
        assert g.edge_index.shape == d["edge_index_bi"].shape and g.edge_index.dtype == torch.long
        np.testing.assert_allclose(g.y.double().numpy(), d["y"], atol=1e-6)
        np.testing.assert_allclose(g.pos.double().numpy(), d["coord"], atol=1e-7)
        np.testing.assert_allclose(g.x[:, :2].numpy(), g.pos.numpy())
        np.testing.assert_allclose(g.x[:, 3].double().numpy(), d["monitor_val"][:, 0] / d["monitor_val"].max(),
                                   rtol=1e-6)
        np.testing.assert_array_equal(g.x[:, 2].numpy(), d["bd_mask"][:, 0])
        np.testing.assert_array_equal(g.x_fixed.numpy(), (d["bd_left_mask"] | d["bd_right_mask"])[:, 0] == 1)
        np.testing.assert_array_equal(g.y_fixed.numpy(), (d["bd_down_mask"] | d["bd_up_mask"])[:, 0] == 1)
        assert g.x_fixed.dtype == torch.bool
        ref, tri = g.pos.double().numpy(), g.face.T.numpy()
        assert M.count_inverted(ref, tri) == 0 and M.count_inverted(g.y.double().numpy(), tri) == 0
        assert {frozenset(f) for f in tri.tolist()} == {frozenset(f) for f in d["face_idxs"].tolist()}
        assert M.boundary_violation(g.y.double().numpy(), ref) < 1e-6
        assert int(g.kind[0]) == KIND_FILE and g.params.shape == (1, 4) and torch.isnan(g.params).all()
        side = round(np.mean([d[k].sum() for k in ("bd_left_mask", "bd_right_mask", "bd_down_mask", "bd_up_mask")]))
        assert int(g.n_side[0]) == side >= 6


def test_datamodule_builds_loaders_from_the_released_layout(helmholtz_root):
    dm = MeshGraphDataModule(name="um2n_helmholtz", data_dir=str(helmholtz_root), dataset_dirs=list(RELEASED),
                             batch_size=3)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.test_set) == 4
    batch = next(iter(dm.train_dataloader()))
    assert int(batch.num_graphs) == 3 and batch.x.shape[1] == 4 and batch.face.max() < batch.num_nodes
    assert batch.kind.tolist() == [KIND_FILE] * 3 and batch.n_side.shape == (3,)
    assert len(list(dm.val_dataloader())) == 4
    one = MeshGraphDataModule(name="um2n_helmholtz", data_dir=str(helmholtz_root / RELEASED[1]), test_subdir="val")
    assert len(one.test_set) == 1  # built on first use; a single dataset folder as data_dir
    assert len(one.train_set) == 4


def test_training_run_on_the_fixture(helmholtz_root):
    """`zoo train experiment=um2n/helmholtz data.data_dir=...` at toy size: finite losses, every parameter trained,
    finite test metrics (no fronts here: no interpolation ratio)."""
    run = fast_run("um2n/helmholtz", f"data.data_dir={helmholtz_root}", "model.deformer_lin=14",
                   "model.deformer_widths=[16,8,8,4]", "model.gat_heads=2", "data.batch_size=3", "threads=1", steps=2)
    run.assert_contract()
    hp = run.model.hparams  # the released checkpoint's training (pretrain_model/config.yaml)
    assert hp.architecture == "m2n_t" and (hp.coord_weight, hp.area_weight, hp.chamfer_weight) == (0.0, 300.0, 100.0)
    assert hp.encoder_layout == "official"
    opt = run.model.configure_optimizers()
    assert type(opt) is torch.optim.Adam and opt.defaults["lr"] == 5e-5 and opt.defaults["weight_decay"] == 5e-4
    assert len(run.coverage.losses) == 2
    for key in ("test/inverted", "test/boundary_violation", "test/node_rmse_cells", "test/node_rmse_cells_dataset"):
        assert np.isfinite(run.metrics[key]), key
    assert run.metrics["test/boundary_violation"] < 1e-6
    assert "test/interp_ratio" not in run.metrics


def _bad(tmp_path, name: str, change) -> str:
    d = official_sample(6, 0)
    change(d)
    np.save(tmp_path / name, d)
    with pytest.raises(UserError) as err:
        load_graphs(tmp_path)
    msg = str(err.value)
    assert name in msg and "\n" not in msg, msg
    return msg


def test_missing_key_is_a_user_error_naming_file_and_key(tmp_path):
    assert "'monitor_val'" in _bad(tmp_path, "data_0003.npy", lambda d: d.pop("monitor_val"))


def test_wrong_shapes_are_user_errors(tmp_path):
    assert "'y'" in _bad(tmp_path, "data_0001.npy", lambda d: d.update(y=d["y"][:-1]))
    (tmp_path / "data_0001.npy").unlink()
    assert "'face_idxs'" in _bad(tmp_path, "data_0002.npy", lambda d: d.update(face_idxs=d["face_idxs"].T.copy(),
                                                                                 cell_node_list=None))
    (tmp_path / "data_0002.npy").unlink()
    assert "'edge_index_bi'" in _bad(tmp_path, "data_0004.npy",
                                     lambda d: d.update(edge_index_bi=d["edge_index_bi"].T.astype(float)))


def test_complex_values_are_a_user_error(tmp_path):
    """A complex array passed the numeric check and lost its imaginary part in the float cast (numpy warned)."""
    message = _bad(tmp_path, "data_0005.npy", lambda d: d.update(monitor_val=d["monitor_val"] + 1j))
    assert "'monitor_val' must be real numbers" in message and "complex" in message


def test_not_a_pickled_dict_or_corrupt_file_is_a_user_error(tmp_path):
    np.save(tmp_path / "data_0.npy", np.zeros((5, 2)))
    with pytest.raises(UserError, match=r"data_0\.npy: expected a pickled dict"):
        load_graphs(tmp_path)
    (tmp_path / "data_0.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match=r"data_0\.npy: not a readable \.npy file"):
        read_sample(tmp_path / "data_0.npy")
    with pytest.raises(UserError, match=r"<sample>: missing key 'coord'"):
        sample_to_graph({})


def test_empty_or_missing_directories_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=f"no data_<i>.npy files in {tmp_path}"):
        load_graphs(tmp_path)
    with pytest.raises(UserError, match="train not found"):
        MeshGraphDataModule(name="um2n_helmholtz", data_dir=str(tmp_path), dataset_dirs=["missing"]).setup()
    with pytest.raises(UserError, match="needs data.data_dir"):
        MeshGraphDataModule(name="um2n_helmholtz").setup()
