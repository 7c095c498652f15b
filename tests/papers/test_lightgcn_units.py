"""Exact unit checks for LightGCN (lit_models/recsys/lightgcn.py) and the shared ranking metrics."""
from __future__ import annotations

import functools
import math
import warnings

import lightning as L
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lit_models.common.ranking import NDCGAtK, RankingModule, RecallAtK, rank_and_hit, scipy_to_torch_csr
from lit_models.recsys.lightgcn import LightGCN, LightGCNModule, normalized_adjacency

warnings.filterwarnings("ignore", message=".*Sparse.*")


# ------------------------------------------------------------------------------------------ fake data
def random_interactions(num_users: int, num_items: int, density: float, seed: int):
    """Binary train/test matrices (disjoint), every user with >= 1 train item."""
    rng = np.random.default_rng(seed)
    dense = rng.random((num_users, num_items)) < density
    dense[np.arange(num_users), rng.integers(0, num_items, num_users)] = True
    is_test = (rng.random((num_users, num_items)) < 0.25) & dense
    train = dense & ~is_test
    for u in range(num_users):  # keep at least one train item per user
        if not train[u].any():
            j = np.flatnonzero(dense[u])[0]
            train[u, j], is_test[u, j] = True, False
    return sp.csr_matrix(train.astype(np.float32)), sp.csr_matrix(is_test.astype(np.float32))


class FakeInteractions(L.LightningDataModule):
    """Stands in for datamodules/interactions.py: same attributes and batch formats."""

    def __init__(self, num_users=24, num_items=30, density=0.2, num_negatives=1, batch_size=16, seed=0):
        super().__init__()
        train, test = random_interactions(num_users, num_items, density, seed)
        self.num_users, self.num_items = num_users, num_items
        self.train_matrix, self.test_matrix = train, test
        coo = train.tocoo()
        self.train_user = torch.from_numpy(coo.row.astype(np.int64))
        self.train_item = torch.from_numpy(coo.col.astype(np.int64))
        self.user_degree = torch.from_numpy(np.asarray(train.sum(1)).ravel().astype(np.float32))
        self.item_degree = torch.from_numpy(np.asarray(train.sum(0)).ravel().astype(np.float32))
        self.eval_users = torch.from_numpy(np.flatnonzero(np.diff(test.indptr) > 0).astype(np.int64))
        self.num_negatives, self.batch_size, self.seed = num_negatives, batch_size, seed

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.seed)
        neg = torch.randint(0, self.num_items, (self.train_user.numel(), self.num_negatives), generator=g)
        rows = [
            {"user": self.train_user[e], "pos_item": self.train_item[e], "neg_item": neg[e]}
            for e in range(self.train_user.numel())
        ]
        return torch.utils.data.DataLoader(rows, batch_size=self.batch_size, shuffle=True, generator=g)

    def _eval_loader(self):
        rows = [{"user": u} for u in self.eval_users]
        return torch.utils.data.DataLoader(rows, batch_size=7)

    val_dataloader = _eval_loader
    test_dataloader = _eval_loader


def dense_a_hat(train: np.ndarray) -> np.ndarray:
    u, i = train.shape
    a = np.zeros((u + i, u + i))
    a[:u, u:] = train
    a[u:, :u] = train.T
    deg = a.sum(1)
    d = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return d[:, None] * a * d[None, :]


def to_dense(a_hat: torch.Tensor) -> np.ndarray:
    return a_hat.to_dense().double().numpy()


# ------------------------------------------------------------------------------------------ graph
@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_normalized_adjacency_matches_dense_definition(layout):
    train, _ = random_interactions(9, 7, 0.3, seed=1)
    coo = train.tocoo()
    a_hat = normalized_adjacency(torch.from_numpy(coo.row), torch.from_numpy(coo.col), 9, 7, layout=layout)
    ref = dense_a_hat(train.toarray())
    got = to_dense(a_hat)
    np.testing.assert_allclose(got, ref, atol=1e-7)
    assert np.allclose(got, got.T)
    assert np.all(np.diag(got) == 0), "no self-loops"
    eig = np.linalg.eigvalsh(got)
    assert eig.max() == pytest.approx(1.0, abs=1e-6)
    assert eig.min() >= -1.0 - 1e-6


def test_degree_zero_nodes_get_zero_and_duplicates_count_once():
    # user 2 and item 3 have no edges; edge (0, 1) appears twice
    user = torch.tensor([0, 0, 1, 0])
    item = torch.tensor([1, 0, 1, 1])
    a_hat = to_dense(normalized_adjacency(user, item, 3, 4))
    assert np.isfinite(a_hat).all()
    assert np.all(a_hat[2] == 0) and np.all(a_hat[:, 2] == 0)
    assert np.all(a_hat[3 + 3] == 0)
    train = np.zeros((3, 4))
    train[0, 1] = train[0, 0] = train[1, 1] = 1
    np.testing.assert_allclose(a_hat, dense_a_hat(train), atol=1e-7)
    # per-edge weight 1/sqrt(|N_u||N_i|): user 0 (deg 2), item 1 (deg 2)
    assert a_hat[0, 3 + 1] == pytest.approx(0.5)


@pytest.mark.parametrize("num_layers", [0, 1, 2, 3, 4])
def test_propagation_is_layer_mean_of_powers(num_layers):
    train, _ = random_interactions(11, 8, 0.3, seed=2)
    coo = train.tocoo()
    torch.manual_seed(0)
    model = LightGCN(11, 8, embedding_dim=5, num_layers=num_layers).double()
    a_hat = normalized_adjacency(torch.from_numpy(coo.row), torch.from_numpy(coo.col), 11, 8).to(torch.float64)
    user, item = model.propagate(a_hat)
    e0 = model.ego_embeddings().detach().numpy()
    a = dense_a_hat(train.toarray())
    ref = sum(np.linalg.matrix_power(a, k) @ e0 for k in range(num_layers + 1)) / (num_layers + 1)
    got = torch.cat([user, item]).detach().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    assert user.shape == (11, 5) and item.shape == (8, 5)


def test_propagation_runs_in_fp32_under_autocast():
    train, _ = random_interactions(6, 5, 0.4, seed=3)
    coo = train.tocoo()
    model = LightGCN(6, 5, embedding_dim=4, num_layers=2)
    a_hat = normalized_adjacency(torch.from_numpy(coo.row), torch.from_numpy(coo.col), 6, 5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        user, item = model.propagate(a_hat)
    assert user.dtype == torch.float32 and item.dtype == torch.float32
    ref_user, _ = model.propagate(a_hat)
    torch.testing.assert_close(user, ref_user)


def test_sparse_backward_matches_dense():
    train, _ = random_interactions(7, 6, 0.35, seed=4)
    coo = train.tocoo()
    model = LightGCN(7, 6, embedding_dim=3, num_layers=3).double()
    a_sparse = normalized_adjacency(torch.from_numpy(coo.row), torch.from_numpy(coo.col), 7, 6).to(torch.float64)
    w = torch.randn(13, 3, dtype=torch.float64)
    user, item = model.propagate(a_sparse)
    (torch.cat([user, item]) * w).sum().backward()
    got = torch.cat([model.user_embedding.weight.grad, model.item_embedding.weight.grad])
    a = torch.from_numpy(dense_a_hat(train.toarray()))
    ref = sum(torch.linalg.matrix_power(a, k) for k in range(4)).T @ w / 4
    torch.testing.assert_close(got, ref)


# ------------------------------------------------------------------------------------------ loss
def make_module(dm: FakeInteractions, **kwargs) -> LightGCNModule:
    module = LightGCNModule(num_users=dm.num_users, num_items=dm.num_items, **kwargs)
    module.setup_graph(dm.train_user, dm.train_item)
    module.setup_ranking(dm.train_matrix, dm.test_matrix)
    return module


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_bpr_loss_and_ego_regulariser_by_hand():
    torch.manual_seed(0)
    dm = FakeInteractions(num_users=8, num_items=9, density=0.3)
    module = make_module(dm, embedding_dim=4, num_layers=2, l2_weight=0.3).double()
    module.a_hat = module.a_hat.to(torch.float64)
    batch = {"user": torch.tensor([0, 3, 3, 7]), "pos_item": torch.tensor([1, 2, 5, 0]), "neg_item": torch.tensor([[4], [4], [8], [2]])}
    loss = module.training_step(batch)

    user_emb, item_emb = (t.detach().numpy() for t in module.final_embeddings())
    u0 = module.model.user_embedding.weight.detach().numpy()
    i0 = module.model.item_embedding.weight.detach().numpy()
    bpr, reg = 0.0, 0.0
    for u, i, j in zip(batch["user"].tolist(), batch["pos_item"].tolist(), batch["neg_item"][:, 0].tolist()):
        x = user_emb[u] @ item_emb[i] - user_emb[u] @ item_emb[j]
        bpr += -math.log(1.0 / (1.0 + math.exp(-x)))
        reg += 0.5 * (u0[u] @ u0[u] + i0[i] @ i0[i] + i0[j] @ i0[j])
    expected = bpr / 4 + 0.3 * reg / 4
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("num_layers", [0, 3])
def test_gradients_reach_every_parameter(num_layers):
    dm = FakeInteractions()
    module = make_module(dm, num_layers=num_layers)
    batch = next(iter(dm.train_dataloader()))
    module.training_step(batch).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------ metrics
def brute_force_metrics(scores: np.ndarray, train: np.ndarray, test: np.ndarray, k: int):
    recalls, ndcgs = [], []
    for u in range(scores.shape[0]):
        relevant = set(np.flatnonzero(test[u]).tolist())
        if not relevant:
            continue
        s = np.where(train[u] > 0, -np.inf, scores[u])
        top = np.argsort(-s, kind="stable")[:k]
        rel = [1.0 if j in relevant else 0.0 for j in top]
        recalls.append(sum(rel) / len(relevant))
        dcg = sum(r / math.log2(pos + 2) for pos, r in enumerate(rel))
        idcg = sum(1.0 / math.log2(pos + 2) for pos in range(min(len(relevant), k)))
        ndcgs.append(dcg / idcg)
    return float(np.mean(recalls)), float(np.mean(ndcgs)), len(recalls)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_ranking_metrics_match_brute_force(k):
    train, test = random_interactions(40, 50, 0.25, seed=5)
    test = test.tolil()
    test[3, :] = 0  # a user without test items is skipped
    test = test.tocsr()
    torch.manual_seed(1)
    user_emb, item_emb = torch.randn(40, 8), torch.randn(50, 8)
    tr, te = scipy_to_torch_csr(train), scipy_to_torch_csr(test)
    recall, ndcg = RecallAtK(k), NDCGAtK(k)
    users = torch.randperm(40)
    for block in users.split(9):
        hits, n_rel = rank_and_hit(
            user_emb, item_emb, block, tr.crow_indices(), tr.col_indices(), te.crow_indices(), te.col_indices(), k
        )
        recall.update(hits, n_rel)
        ndcg.update(hits, n_rel)
    ref_recall, ref_ndcg, n_users = brute_force_metrics((user_emb @ item_emb.T).numpy(), train.toarray(), test.toarray(), k)
    assert int(recall.count) == n_users
    assert recall.compute().item() == pytest.approx(ref_recall, abs=1e-6)
    assert ndcg.compute().item() == pytest.approx(ref_ndcg, abs=1e-6)


def test_metrics_ddp_merge_equals_single_process():
    rng = torch.Generator().manual_seed(0)
    hits = torch.rand(30, 20, generator=rng) < 0.2
    n_rel = torch.randint(0, 25, (30,), generator=rng)
    for cls in (RecallAtK, NDCGAtK):
        single, rank0, rank1 = cls(20), cls(20), cls(20)
        single.update(hits, n_rel)
        rank0.update(hits[:13], n_rel[:13])
        rank1.update(hits[13:], n_rel[13:])
        rank0.merge_state(rank1)  # what dist_reduce_fx="sum" does across ranks
        assert int(rank0.count) == int(single.count) == int((n_rel > 0).sum())
        torch.testing.assert_close(rank0.compute(), single.compute())


class _TableRanker(RankingModule):
    def __init__(self, user_emb, item_emb):
        super().__init__(eval_k=20)
        self.u = torch.nn.Parameter(user_emb)
        self.i = torch.nn.Parameter(item_emb)

    def final_embeddings(self):
        return self.u, self.i


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_ranking_module_eval_epoch_and_figure():
    train, test = random_interactions(40, 50, 0.25, seed=6)
    torch.manual_seed(2)
    module = _TableRanker(torch.randn(40, 8), torch.randn(50, 8))
    module.setup_ranking(train, test)
    with torch.no_grad():
        module.on_validation_epoch_start()
        for block in torch.arange(40).split(6):
            module.validation_step({"user": block})
        got = module.val_recall.compute().item(), module.val_ndcg.compute().item()
        module.on_validation_epoch_end()
    ref = brute_force_metrics((module.u @ module.i.T).detach().numpy(), train.toarray(), test.toarray(), 20)
    assert got == pytest.approx(ref[:2], abs=1e-6)
    assert module._eval_cache is None  # cleared after the epoch
    quartiles = module._degree_recall
    assert sum(quartiles["users"]) == ref[2]
    weighted = sum(r * n for r, n in zip(quartiles["recall"], quartiles["users"])) / sum(quartiles["users"])
    assert weighted == pytest.approx(ref[0], abs=1e-6)
    figures = module.figures()
    assert set(figures) == {"recall_by_user_degree"}
    figures["recall_by_user_degree"].canvas.draw()


# ------------------------------------------------------------------------------------------ Lightning
def _trainer(tmp_path, **kwargs):
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_trainer_smoke_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    dm = FakeInteractions()
    module = LightGCNModule(embedding_dim=8, num_layers=2, optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    trainer = _trainer(tmp_path, max_steps=6, limit_val_batches=2, val_check_interval=3, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and "val/recall@20" in metrics and "val/ndcg@20" in metrics
    assert module.hparams.num_users == dm.num_users and module.hparams.num_items == dm.num_items
    test_before = _trainer(tmp_path).test(module, datamodule=dm, verbose=False)[0]

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    # the optimizer factory is not a hyperparameter, so the checkpoint loads with weights_only=True
    loaded = LightGCNModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.num_layers == 2 and loaded.hparams.num_users == dm.num_users
    for (name, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    test_after = _trainer(tmp_path).test(loaded, datamodule=dm, verbose=False)[0]
    assert test_after == pytest.approx(test_before)
    assert set(test_after) == {"test/recall@20", "test/ndcg@20"}
    assert set(loaded.figures()) == {"recall_by_user_degree"}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_a_validation_split_ranks_its_items_and_the_test_masks_them():
    """With held-out validation interactions (data.val_fraction > 0) validation finds them with the train items
    masked, and the test finds the test items with train and validation items masked (brute-force references);
    without them both stages rank the test items as before (README audit, stop 38: val/* was the test set)."""
    train, test = random_interactions(40, 50, 0.25, seed=6)
    val, _ = random_interactions(40, 50, 0.1, seed=7)
    val = (val - val.multiply(train) - val.multiply(test)).tocsr()
    val.eliminate_zeros()
    torch.manual_seed(2)
    module = _TableRanker(torch.randn(40, 8), torch.randn(50, 8))
    scores = (module.u @ module.i.T).detach().numpy()

    def measured(stage: str) -> tuple[float, float]:
        recall, ndcg = ((module.val_recall, module.val_ndcg) if stage == "val"
                        else (module.test_recall, module.test_ndcg))
        recall.reset(), ndcg.reset()
        with torch.no_grad():
            module._start_eval()
            for block in torch.arange(40).split(6):
                module._eval_step({"user": block}, stage)
            return recall.compute().item(), ndcg.compute().item()

    module.setup_ranking(train, test, val)
    assert measured("val") == pytest.approx(brute_force_metrics(scores, train.toarray(), val.toarray(), 20)[:2])
    seen = (train + val).toarray()
    assert measured("test") == pytest.approx(brute_force_metrics(scores, seen, test.toarray(), 20)[:2])
    assert measured("test") != pytest.approx(brute_force_metrics(scores, train.toarray(), test.toarray(), 20)[:2])
    module.setup_ranking(train, test)
    plain = brute_force_metrics(scores, train.toarray(), test.toarray(), 20)[:2]
    assert measured("val") == pytest.approx(plain) and measured("test") == pytest.approx(plain)
