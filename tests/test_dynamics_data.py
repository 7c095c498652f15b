"""DystsDataModule: determinism, shapes, train-only standardisation, no leakage between splits (fast, small n);
flows and discrete maps (Henon, Logistic)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.dynamics import DystsDataModule, dysts_systems, make_trajectories
from launch.errors import UserError

SMALL = {"n_points": 1200, "train_points": 800, "val_points": 200, "pts_per_period": 40, "num_trajectories": 3,
             "heldout_trajectories": 1, "burn_in": 200, "seq_len": 50, "batch_size": 4, "steps_per_epoch": 5, "noise": 0.0}


def make(**kw):
    dm = DystsDataModule(**{**SMALL, **kw})
    dm.setup("fit")
    return dm


def test_shapes_and_lengths():
    dm = make()
    batches = list(dm.train_dataloader())
    assert len(dm.train_dataloader()) == 5 and len(batches) == 5
    assert all(b.shape == (4, 50, 3) and b.dtype == torch.float32 for b in batches)
    val, test = list(dm.val_dataloader()), list(dm.test_dataloader())
    assert [v["x"].shape for v in val] == [(1, 200, 3)] * 2
    assert [t["x"].shape for t in test] == [(1, 200, 3)] * 2 + [(1, 1200, 3)]
    assert dm.dim == 3


def test_deterministic_by_seed_and_epoch():
    a, b = make(), make()
    for sa, sb in zip(a.train_segments, b.train_segments):
        assert torch.equal(sa, sb)
    ea0 = list(a.train_dataset().batches(epoch=0))
    eb0 = list(b.train_dataset().batches(epoch=0))
    ea1 = list(a.train_dataset().batches(epoch=1))
    assert all(torch.equal(x, y) for x, y in zip(ea0, eb0))
    assert not torch.equal(ea0[0], ea1[0])
    # another seed: other perturbed initial conditions for trajectories 1..K-1, the same trajectory 0
    r0 = make_trajectories("Lorenz", 2, 300, 40, "RK45", 1e-9, 1e-9, 0.1, 50, 0)
    r1 = make_trajectories("Lorenz", 2, 300, 40, "RK45", 1e-9, 1e-9, 0.1, 50, 1)
    assert np.array_equal(r0[0], r1[0]) and not np.allclose(r0[1], r1[1])


def test_standardisation_fitted_on_train_only():
    dm = make()
    train = torch.cat(dm.train_segments).double()
    assert torch.allclose(train.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    raw = make_trajectories("Lorenz", 3, 1200, 40, "RK45", 1e-9, 1e-9, 0.1, 200, 0)
    stacked = np.concatenate([raw[0, :800], raw[1, :800]])
    np.testing.assert_allclose(dm.mean, stacked.mean(0))
    np.testing.assert_allclose(dm.std, stacked.std(0))
    # the held-out trajectory and the test segments are transformed with the train statistics, not refitted
    np.testing.assert_allclose(dm.test_segments[-1].numpy(), (raw[2] - dm.mean) / dm.std, rtol=1e-5, atol=1e-5)


def test_no_leakage_between_splits():
    dm = make()
    raw = make_trajectories("Lorenz", 3, 1200, 40, "RK45", 1e-9, 1e-9, 0.1, 200, 0)
    z = (raw - dm.mean) / dm.std
    for k in range(2):
        np.testing.assert_allclose(dm.train_segments[k].numpy(), z[k, :800], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dm.val_segments[k].numpy(), z[k, 800:1000], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dm.test_segments[k].numpy(), z[k, 1000:], rtol=1e-5, atol=1e-5)
    train_rows = {tuple(r) for s in dm.train_segments for r in s.numpy().round(5)}
    for s in dm.val_segments + dm.test_segments:
        assert not train_rows & {tuple(r) for r in s.numpy().round(5)}
    # every training window comes from a train segment
    segs = [s.numpy() for s in dm.train_segments]
    for batch in dm.train_dataset().batches(epoch=0):
        for w in batch.numpy():
            assert any(np.isin(w[0, 0], s[:, 0]) for s in segs)


def test_noise_on_train_only_and_val_defaults_to_test():
    clean, noisy = make(), make(noise=0.05)
    diff = (noisy.train_segments[0] - clean.train_segments[0]).std()
    assert 0.04 < float(diff) < 0.06
    assert torch.equal(noisy.test_segments[0], clean.test_segments[0])
    dm = make(val_points=0)
    assert len(dm.val_segments) == len(dm.test_segments) == 3
    assert all(torch.equal(v, t) for v, t in zip(dm.val_segments, dm.test_segments))


def test_bad_arguments():
    with pytest.raises(UserError, match=r"unknown dysts system 'Lorenzz' \(did you mean Lorenz"):
        make(name="Lorenzz")
    with pytest.raises(UserError):
        DystsDataModule(n_points=100, train_points=100)
    with pytest.raises(UserError, match="seq_len"):
        make(seq_len=5000).train_dataset()


# ---- discrete maps (dysts.maps) -------------------------------------------------------------------------------


def _henon_raw(seed: int = 0, pts_per_period: int = 40) -> np.ndarray:
    return make_trajectories("Henon", 3, 1200, pts_per_period, "RK45", 1e-9, 1e-9, 0.1, 200, seed)


def test_henon_map_shapes_and_dynamics():
    dm = make(name="Henon")
    assert dm.kind == "map" and dm.dim == 2
    assert all(b.shape == (4, 50, 2) for b in dm.train_dataloader())
    assert [v["x"].shape for v in dm.val_dataloader()] == [(1, 200, 2)] * 2
    assert [t["x"].shape for t in dm.test_dataloader()] == [(1, 200, 2)] * 2 + [(1, 1200, 2)]
    # every trajectory iterates the Henon map x' = 1 - 1.4 x^2 + y, y' = 0.3 x (dysts' parameters)
    raw = _henon_raw()
    assert np.isfinite(raw).all()
    x, y = raw[:, :-1, 0], raw[:, :-1, 1]
    np.testing.assert_allclose(raw[:, 1:, 0], 1 - 1.4 * x**2 + y, atol=1e-12)
    np.testing.assert_allclose(raw[:, 1:, 1], 0.3 * x, atol=1e-12)


def test_map_deterministic_by_seed_and_granularity_ignored():
    a = _henon_raw()
    b = make_trajectories.__wrapped__("Henon", 3, 1200, 40, "RK45", 1e-9, 1e-9, 0.1, 200, 0)  # bypass the cache
    assert np.array_equal(a, b)
    c = _henon_raw(seed=1)
    assert np.array_equal(a[0], c[0]) and not np.allclose(a[1:], c[1:])  # trajectory 0: the default ic
    # a map has no time step: pts_per_period (and method, rtol, atol) do not change the data
    assert np.array_equal(a, make_trajectories("Henon", 3, 1200, 150, "Radau", 1e-6, 1e-6, 0.1, 200, 0))
    d1, d2 = make(name="Henon"), make(name="Henon")
    assert all(torch.equal(s, t) for s, t in zip(d1.train_segments, d2.train_segments))
    batches1, batches2 = d1.train_dataset().batches(epoch=0), d2.train_dataset().batches(epoch=0)
    assert all(torch.equal(x, y) for x, y in zip(batches1, batches2))


def test_map_splits_and_train_only_standardisation():
    dm = make(name="Henon")
    raw = _henon_raw()
    stacked = np.concatenate([raw[0, :800], raw[1, :800]])  # train segments of the two training trajectories
    np.testing.assert_allclose(dm.mean, stacked.mean(0))
    np.testing.assert_allclose(dm.std, stacked.std(0))
    assert not np.allclose(dm.mean, raw.reshape(-1, 2).mean(0), atol=1e-6)  # the held-out trajectory is not used
    z = (raw - dm.mean) / dm.std
    for k in range(2):
        np.testing.assert_allclose(dm.train_segments[k].numpy(), z[k, :800], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dm.val_segments[k].numpy(), z[k, 800:1000], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dm.test_segments[k].numpy(), z[k, 1000:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dm.test_segments[2].numpy(), z[2], rtol=1e-5, atol=1e-5)


def test_one_dimensional_map_and_name_resolution():
    dm = make(name="Logistic", num_trajectories=4, heldout_trajectories=1, seed=3)
    assert dm.dim == 1 and all(b.shape == (4, 50, 1) for b in dm.train_dataloader())
    raw = make_trajectories("Logistic", 4, 1200, 40, "RK45", 1e-9, 1e-9, 0.1, 200, 3)
    assert raw.shape == (4, 1200, 1) and ((raw >= 0) & (raw <= 1)).all()  # perturbed starts stay in [0, 1]
    # a name both modules use resolves to the flow; the map is reachable as maps.<Name>
    assert DystsDataModule(name="Duffing").kind == "flow" and DystsDataModule(name="maps.Duffing").kind == "map"
    assert dysts_systems()["Henon"] is dysts_systems()["maps.Henon"]
    with pytest.raises(UserError, match=r"unknown dysts system 'Henonn' \(did you mean Henon"):
        DystsDataModule(name="Henonn")
