"""InteractionDataModule: offline ML-100K split, synthetic graph, batches, sharding, parsers, errors."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from datamodules.interactions import InteractionDataModule, recbole_ml100k_path
from launch.errors import UserError


def fake_trainer(epoch: int = 0, rank: int = 0, world: int = 1) -> SimpleNamespace:
    progress = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=epoch)))
    return SimpleNamespace(current_epoch=epoch, fit_loop=progress, global_rank=rank, world_size=world)


def attach(dm: InteractionDataModule, **kw) -> InteractionDataModule:
    dm.trainer = fake_trainer(**kw)
    return dm


def epoch_batches(dm: InteractionDataModule, **kw) -> list[dict[str, torch.Tensor]]:
    attach(dm, **kw)
    return list(dm.train_dataloader())


@pytest.fixture(scope="module")
def ml100k() -> InteractionDataModule:
    dm = InteractionDataModule()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def synth() -> InteractionDataModule:
    dm = InteractionDataModule(name="synthetic", batch_size=256, num_negatives=4)
    dm.setup()
    return dm


def test_recbole_not_imported_and_file_found():
    path = recbole_ml100k_path()
    assert path.name == "ml-100k.inter" and path.is_file()
    assert "recbole" not in sys.modules


def test_ml100k_counts_and_split(ml100k):
    dm = ml100k
    assert (dm.num_users, dm.num_items) == (943, 1682)
    assert dm.train_matrix.nnz == 80_000 and dm.test_matrix.nnz == 20_000
    assert dm.train_user.numel() == 80_000 and dm.train_item.numel() == 80_000
    for m in (dm.train_matrix, dm.test_matrix):
        assert isinstance(m, sp.csr_matrix) and m.dtype == np.float32 and m.shape == (943, 1682)
        assert set(np.unique(m.data)) == {1.0}
    assert dm.train_matrix.multiply(dm.test_matrix).nnz == 0  # disjoint
    n_test = np.diff(dm.test_matrix.indptr)
    n_all = n_test + np.diff(dm.train_matrix.indptr)
    assert np.array_equal(n_test, [round(0.2 * n) for n in n_all])
    assert dm.eval_users.tolist() == list(range(943))
    assert dm.user_degree.dtype == torch.float32 and dm.item_degree.dtype == torch.float32
    assert dm.user_degree.sum() == 80_000 and dm.item_degree.sum() == 80_000
    assert torch.equal(dm.user_degree, torch.bincount(dm.train_user, minlength=943).float())
    d = dm.describe()
    assert d["num_train"] == 80_000 and d["num_test"] == 20_000
    assert d["density"] == pytest.approx(100_000 / (943 * 1682))
    dm.setup("test")  # idempotent
    assert dm.train_matrix.nnz == 80_000


def test_ml100k_split_matches_recipe(ml100k):
    """Independent re-derivation of the card's recipe from the raw file (ids sorted => raw - 1)."""
    rows = np.loadtxt(recbole_ml100k_path(), skiprows=1, usecols=(0, 1), dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(rows))
    r = rows[perm][np.argsort(rows[perm, 0], kind="stable")]
    users, starts, counts = np.unique(r[:, 0], return_index=True, return_counts=True)
    test = np.concatenate([r[s : s + round(0.2 * c)] for s, c in zip(starts, counts)])
    expected = sp.csr_matrix((np.ones(len(test)), (test[:, 0] - 1, test[:, 1] - 1)), shape=(943, 1682))
    assert (expected != ml100k.test_matrix).nnz == 0


def test_synthetic_deterministic_and_sized():
    a = InteractionDataModule(name="synthetic")
    b = InteractionDataModule(name="synthetic")
    c = InteractionDataModule(name="synthetic", synthetic={"seed": 1})
    for dm in (a, b, c):
        dm.setup()
    assert (a.num_users, a.num_items) == (200, 300)
    assert (a.train_matrix != b.train_matrix).nnz == 0 and (a.test_matrix != b.test_matrix).nnz == 0
    assert (a.train_matrix != c.train_matrix).nnz > 0
    assert 15 * 200 < a.train_matrix.nnz + a.test_matrix.nnz < 25 * 200
    deg = np.sort(a.item_degree.numpy())[::-1]
    assert deg[:30].sum() > 0.3 * deg.sum()  # long tail: top 10% of items hold > 30% of train edges
    small = InteractionDataModule(name="synthetic", synthetic={"num_users": 7, "num_items": 11})
    small.setup()
    assert (small.num_users, small.num_items) == (7, 11)
    with pytest.raises(UserError, match="unknown keys"):
        InteractionDataModule(name="synthetic", synthetic={"users": 3}).setup()


def test_batch_shapes_and_full_epoch(synth):
    batches = epoch_batches(synth)
    loader = synth.train_dataloader()
    assert len(loader) == len(batches) == -(-synth.train_user.numel() // 256)
    for b in batches:
        assert set(b) == {"user", "pos_item", "neg_item"}
        n = b["user"].numel()
        assert b["user"].dtype == b["pos_item"].dtype == b["neg_item"].dtype == torch.int64
        assert b["pos_item"].shape == (n,) and b["neg_item"].shape == (n, 4)
        assert 0 <= int(b["neg_item"].min()) and int(b["neg_item"].max()) < synth.num_items
    edges = torch.cat([b["user"] * synth.num_items + b["pos_item"] for b in batches])
    expected = synth.train_user * synth.num_items + synth.train_item
    assert torch.equal(edges.sort().values, expected.sort().values)


def test_user_sampling_weighs_users_equally_and_draws_their_positives(ml100k):
    """sampling="user" (official LightGCN UniformSample): as many samples per epoch as edges, each a uniformly drawn
    user with one of its own train items; users appear about equally often, whereas the edge pass weighs them by
    degree. Negatives still avoid the user's positives; batches are reproducible per (seed, epoch)."""
    dm = InteractionDataModule(batch_size=4096, sampling="user")
    dm.setup("fit")
    batches = epoch_batches(dm, epoch=2)
    n_edges = dm.train_user.numel()
    assert len(dm.train_dataloader()) == len(batches) == -(-n_edges // 4096)
    user = torch.cat([b["user"] for b in batches])
    pos = torch.cat([b["pos_item"] for b in batches])
    neg = torch.cat([b["neg_item"] for b in batches])
    assert user.numel() == n_edges
    dense = dm.train_matrix.toarray()
    assert dense[user.numpy(), pos.numpy()].all() and not dense[user.numpy()[:, None], neg.numpy()].any()
    counts = torch.bincount(user, minlength=dm.num_users).float()
    degree = torch.bincount(dm.train_user, minlength=dm.num_users).float()
    active = degree > 0
    cv = lambda x: float(x.std() / x.mean())  # noqa: E731
    assert cv(counts[active]) < 0.25 * cv(degree[active])  # near-uniform over users; the edge pass gives the degrees
    assert float(torch.corrcoef(torch.stack([counts, degree]))[0, 1]) < 0.1
    assert torch.equal(torch.cat([b["user"] for b in epoch_batches(dm, epoch=2)]), user)
    with pytest.raises(UserError, match="sampling"):
        InteractionDataModule(sampling="degree")


def test_negatives_never_positive_when_excluded():
    # dense tiny graph: ~half of each user's items are positives, so many draws hit positives
    dm = InteractionDataModule(
        name="synthetic", batch_size=64, num_negatives=16, test_fraction=0.0,
        synthetic={"num_users": 30, "num_items": 12, "interactions_per_user": 6, "min_interactions": 4},
    )
    dm.setup()
    dense = dm.train_matrix.toarray()
    hits = 0
    for epoch in range(3):
        for b in epoch_batches(dm, epoch=epoch):
            assert dense[b["user"][:, None].numpy(), b["neg_item"].numpy()].sum() == 0
    plain = InteractionDataModule(
        name="synthetic", batch_size=64, num_negatives=16, test_fraction=0.0,
        exclude_positive_negatives=False,
        synthetic={"num_users": 30, "num_items": 12, "interactions_per_user": 6, "min_interactions": 4},
    )
    plain.setup()
    for b in epoch_batches(plain):
        hits += dense[b["user"][:, None].numpy(), b["neg_item"].numpy()].sum()
    assert hits > 0  # without exclusion positives do appear (UltraGCN setting)


def test_same_epoch_same_batches_other_epoch_differs(synth):
    e0 = epoch_batches(synth, epoch=0)
    again = InteractionDataModule(name="synthetic", batch_size=256, num_negatives=4)  # fresh object
    again.setup()
    e0b = epoch_batches(again, epoch=0)
    e1 = epoch_batches(synth, epoch=1)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(e0, e0b) for k in x)
    assert not torch.equal(e0[0]["user"], e1[0]["user"])
    other_seed = InteractionDataModule(name="synthetic", batch_size=256, num_negatives=4, seed=1)
    assert not torch.equal(epoch_batches(other_seed)[0]["pos_item"], e0[0]["pos_item"])


def test_ddp_shards_disjoint_equal_length(synth):
    total = synth.train_user.numel()
    shards = []
    for rank in range(2):
        attach(synth, epoch=3, rank=rank, world=2)
        loader = synth.train_dataloader()
        batches = list(loader)
        assert len(loader) == len(batches)
        shards.append(batches)
    assert len(shards[0]) == len(shards[1])
    assert [b["user"].numel() for b in shards[0]] == [b["user"].numel() for b in shards[1]]
    keys = [torch.cat([b["user"] * 10**6 + b["pos_item"] * 10 for b in s]) for s in shards]
    # (user, item) keys are unique per edge: shards are disjoint and together drop < world_size edges
    assert np.intersect1d(keys[0].numpy(), keys[1].numpy()).size == 0
    assert keys[0].numel() == keys[1].numel() == total // 2
    # the negatives of the two ranks come from different streams
    assert not torch.equal(shards[0][0]["neg_item"], shards[1][0]["neg_item"])


def test_eval_users_partition(ml100k):
    dm = ml100k
    got = []
    for rank in range(3):
        attach(dm, rank=rank, world=3)
        for loader in (dm.val_dataloader(), dm.test_dataloader()):
            batches = list(loader)
            assert len(loader) == len(batches)
            assert all(b["user"].dtype == torch.int64 and b["user"].numel() <= 512 for b in batches)
        got.append(torch.cat([b["user"] for b in batches]))
    allu = torch.cat(got)
    assert allu.numel() == dm.eval_users.numel() and torch.equal(allu.sort().values, dm.eval_users)
    dm.trainer = None
    assert torch.equal(torch.cat([b["user"] for b in dm.val_dataloader()]), dm.eval_users)


def write(path, text):
    path.write_text(text)
    return path


def test_txt_parser_and_data_dir(tmp_path):
    write(tmp_path / "train.txt", "0 1 2\n1 0\n2\n3 4 1 0\n")  # user 2 has no train items
    write(tmp_path / "test.txt", "0 3\n1\n2 1 4\n3 2\n\n")  # user 1 has no test items
    with pytest.warns(UserWarning, match="expected"):
        dm = InteractionDataModule(name="gowalla", data_dir=str(tmp_path), batch_size=2)
        dm.setup()
    assert (dm.num_users, dm.num_items) == (4, 5)
    assert dm.train_matrix.toarray().tolist() == [
        [0, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 1]
    ]
    assert dm.test_matrix.toarray().tolist() == [
        [0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0]
    ]
    assert dm.eval_users.tolist() == [0, 2, 3]
    assert dm.user_degree.tolist() == [2, 1, 0, 3] and dm.item_degree.tolist() == [2, 2, 1, 0, 1]
    assert sum(b["user"].numel() for b in dm.train_dataloader()) == 6


def test_raw_movielens_from_data_dir_matches_offline(tmp_path, ml100k):
    lines = recbole_ml100k_path().read_text().splitlines()[1:]
    write(tmp_path / "u.data", "\n".join(lines) + "\n")  # same rows and order as GroupLens u.data
    dm = InteractionDataModule(name="ml-100k-raw", data_dir=str(tmp_path))
    dm.setup()
    assert (dm.train_matrix != ml100k.train_matrix).nnz == 0
    assert (dm.test_matrix != ml100k.test_matrix).nnz == 0
    ml1m = tmp_path / "ml1m"
    ml1m.mkdir()
    write(ml1m / "ratings.dat", "1::10::5::0\n1::20::3::0\n2::20::4::0\n2::30::1::0\n2::40::1::0\n")
    dm = InteractionDataModule(name="ml-1m-raw", data_dir=str(ml1m), test_fraction=0.5)
    dm.setup()
    assert (dm.num_users, dm.num_items) == (2, 4)
    assert dm.test_matrix.nnz == 1 + 2 and dm.train_matrix.nnz == 2


@pytest.mark.parametrize(
    "train, test, match",
    [
        ("0 1 2\n1 x\n", "0 1\n", r"train\.txt:2: item id 'x'"),
        ("0 1\n", "0 1\n-1 2\n", r"test\.txt:2: user id -1 is negative"),
        ("0 1\n", "0 1\n2 3.5\n", r"test\.txt:2: item id '3\.5' is not an integer"),
        ("", "0 1\n", r"train\.txt: no user lines"),
        ("0 1\n", None, r"test\.txt: file not found"),
    ],
)
def test_bad_files_raise_user_error(tmp_path, train, test, match):
    write(tmp_path / "train.txt", train)
    if test is not None:
        write(tmp_path / "test.txt", test)
    with pytest.raises(UserError, match=match):
        InteractionDataModule(name="yelp2018", data_dir=str(tmp_path)).setup()


def test_bad_rating_file_and_name(tmp_path):
    write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\n1\t2\n3\n")
    with pytest.raises(UserError, match=r"ml-100k\.inter:3: expected at least 2"):
        InteractionDataModule(data_dir=str(tmp_path)).setup()
    with pytest.raises(UserError, match="did you mean 'gowalla'"):
        InteractionDataModule(name="gowala")
    with pytest.raises(UserError, match=r"u\.data: file not found"):
        InteractionDataModule(name="ml-100k-raw", data_dir=str(tmp_path / "nowhere")).setup()


def test_lightning_resume_sees_same_batches(tmp_path):
    """A run resumed from an epoch-boundary checkpoint gets exactly the uninterrupted run's batches."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, _):
            self.seen.append((self.current_epoch, batch["user"].clone(), batch["neg_item"].clone()))
            return self.w.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(max_epochs, root, ckpt=None):
        model = Recorder()
        trainer = L.Trainer(
            max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
            limit_val_batches=0,
        )
        trainer.fit(model, InteractionDataModule(name="synthetic", batch_size=1024), ckpt_path=ckpt)
        return model.seen, trainer

    full, _ = fit(3, tmp_path / "a")
    first, trainer = fit(2, tmp_path / "b")
    trainer.save_checkpoint(tmp_path / "b" / "last.ckpt")
    rest, _ = fit(3, tmp_path / "b", ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert [e for e, _, _ in full] == [e for e, _, _ in first + rest] and {e for e, _, _ in rest} == {2}
    for (_, u1, n1), (_, u2, n2) in zip(full, first + rest, strict=True):
        assert torch.equal(u1, u2) and torch.equal(n1, n2)


def test_downloads_through_fetch(tmp_path, monkeypatch):
    """train.txt/test.txt from {url_base}/{name}/ and a raw GroupLens-style zip, via file:// URLs."""
    import hashlib
    import zipfile

    import datamodules.interactions as ix

    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "cache"))
    mirror = tmp_path / "mirror"
    (mirror / "yelp2018").mkdir(parents=True)
    write(mirror / "yelp2018" / "train.txt", "0 0 1\n1 2\n")
    write(mirror / "yelp2018" / "test.txt", "0 2\n1 0\n")
    dm = InteractionDataModule(name="yelp2018", url_base=mirror.as_uri() + "/")
    with pytest.warns(UserWarning, match="expected 31668"):
        dm.prepare_data()
        dm.setup()
    assert (dm.num_users, dm.num_items, dm.train_matrix.nnz, dm.test_matrix.nnz) == (2, 3, 3, 2)
    assert (tmp_path / "cache" / "interactions" / "yelp2018" / "train.txt").is_file()

    archive = tmp_path / "zips" / "ml-100k.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "7\t3\t5\t0\n7\t4\t5\t0\n9\t3\t1\t0\n9\t5\t1\t0\n9\t6\t1\t0\n")
    url, _, member, sep = ix._RAW_DATASETS["ml-100k-raw"]
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(ix._RAW_DATASETS, "ml-100k-raw", (url, md5, member, sep))
    dm = InteractionDataModule(name="ml-100k-raw", url_base=archive.parent.as_uri())
    dm.setup()
    assert (dm.num_users, dm.num_items) == (2, 4)  # users 7, 9 -> 0, 1; items 3, 4, 5, 6 -> 0..3
    assert dm.train_matrix.nnz + dm.test_matrix.nnz == 5 and dm.test_matrix.nnz == 1
    monkeypatch.setitem(ix._RAW_DATASETS, "ml-100k-raw", (url, "0" * 32, member, sep))
    with pytest.raises(UserError, match="md5"):  # checksum mismatch: a DownloadError (a UserError)
        InteractionDataModule(name="ml-100k-raw", url_base=archive.parent.as_uri()).setup()


def test_negatives_for_nearly_saturated_users(tmp_path):
    """User 0 has all but one item (rejection sampling alone would stall), user 1 has every item."""
    items = lambda n: " ".join(map(str, range(n)))  # noqa: E731
    write(tmp_path / "train.txt", f"0 {items(199)}\n1 {items(200)}\n2 5\n")
    write(tmp_path / "test.txt", "0 199\n1\n2 7\n")
    dm = InteractionDataModule(name="gowalla", data_dir=str(tmp_path), batch_size=128, num_negatives=8)
    with pytest.warns(UserWarning):
        dm.setup()
    for b in dm.train_dataloader():
        neg0 = b["neg_item"][b["user"] == 0]
        assert (neg0 == 199).all()
        assert (b["neg_item"][b["user"] == 2] != 5).all()


def test_a_validation_split_is_held_out_of_training():
    """data.val_fraction: that share of each user's train interactions becomes the validation set (seeded, the same
    every run), out of the training edges, the item degrees and the negatives' positives; validation iterates the
    users with validation items, the test the users with test items; the test split is unchanged. Without it the
    validation loader is the test one (the official protocol)."""
    plain = InteractionDataModule(name="synthetic")
    plain.setup()
    held = InteractionDataModule(name="synthetic", val_fraction=0.1)
    held.setup()
    assert plain.val_matrix is None and torch.equal(plain.val_users, plain.eval_users)
    assert (held.train_matrix.multiply(held.val_matrix)).nnz == 0
    assert ((held.train_matrix + held.val_matrix) != plain.train_matrix).nnz == 0
    assert (held.test_matrix != plain.test_matrix).nnz == 0
    assert 0.08 < held.val_matrix.nnz / plain.train_matrix.nnz < 0.12
    assert held.train_user.numel() == held.train_matrix.nnz and held.describe()["num_val"] == held.val_matrix.nnz
    assert float(held.item_degree.sum()) == held.train_matrix.nnz
    val_users = torch.cat([b["user"] for b in held.val_dataloader()])
    test_users = torch.cat([b["user"] for b in held.test_dataloader()])
    assert torch.equal(val_users.sort().values, torch.from_numpy(np.flatnonzero(np.diff(held.val_matrix.indptr))))
    assert torch.equal(test_users.sort().values, plain.eval_users)
    again = InteractionDataModule(name="synthetic", val_fraction=0.1, seed=5)  # the batch seed leaves the split
    again.setup()
    assert (again.val_matrix != held.val_matrix).nnz == 0
    with pytest.raises(UserError, match="val_fraction"):
        InteractionDataModule(name="synthetic", val_fraction=0.5)
    with pytest.raises(UserError, match="holds out no interaction"):  # every user's rounded share is 0: an error,
        InteractionDataModule(name="synthetic", val_fraction=0.001).setup()  # not a run that never validates
