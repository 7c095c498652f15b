"""Full-ranking evaluation for implicit-feedback recommenders (Recall@K, NDCG@K) and a base module.

Protocol (NGCF / LightGCN / UltraGCN papers): score every item for a user, mask the user's train items,
take the top K, compare against the user's test items. Users without test items are skipped.
- Recall@K = |top-K ∩ T_u| / |T_u|
- NDCG@K   = DCG / IDCG with DCG = sum_{r<K} hit_r / log2(r + 2) and IDCG over min(|T_u|, K) positions.
Both metrics are means over users; their states are (sum over users, number of users) reduced with "sum",
so a DDP run in which every user is evaluated on exactly one rank reproduces the single-process numbers.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torchmetrics import Metric

from launch.errors import check_min


# ----------------------------------------------------------------------------------------------- helpers
def scipy_to_torch_csr(matrix: sp.spmatrix) -> Tensor:
    """A scipy sparse matrix as a torch sparse CSR tensor (float32, canonical: sorted, no duplicates)."""
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data),
            size=m.shape,
            check_invariants=False,
        )


def csr_rows(crow: Tensor, col: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entries of the CSR rows `rows`, vectorised (no loop over rows).

    Returns (local_row, column, count): local_row[e] indexes into `rows`, column[e] is the column of that
    entry, count[r] = number of entries of row rows[r].
    """
    start = crow[rows]
    count = crow[rows + 1] - start
    total = int(count.sum())
    local_row = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count, output_size=total)
    # position of each entry inside its row: global running index minus the row's offset in the output
    offsets = torch.cumsum(count, 0) - count
    within = torch.arange(total, device=rows.device) - torch.repeat_interleave(offsets, count, output_size=total)
    column = col[torch.repeat_interleave(start, count, output_size=total) + within]
    return local_row, column, count


def rank_and_hit(
    user_emb: Tensor,
    item_emb: Tensor,
    users: Tensor,
    train_crow: Tensor,
    train_col: Tensor,
    test_crow: Tensor,
    test_col: Tensor,
    k: int,
) -> tuple[Tensor, Tensor]:
    """Full ranking for a block of users.

    Returns hits (b, k) bool (hit at rank r among the top-k after masking train items) and
    num_relevant (b,) long = number of test items of each user.
    """
    scores = user_emb[users] @ item_emb.T  # (b, I), the only dense block
    row, column, _ = csr_rows(train_crow, train_col, users)
    scores.index_put_((row, column), torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))
    top = torch.topk(scores, k=min(k, scores.shape[1]), dim=1, sorted=True).indices  # (b, k)
    del scores
    num_items = item_emb.shape[0]
    t_row, t_col, num_relevant = csr_rows(test_crow, test_col, users)
    # membership of (row, item) pairs through one flat key per pair: no dense (b, I) test mask needed
    test_keys = t_row * num_items + t_col
    top_keys = torch.arange(users.numel(), device=users.device).unsqueeze(1) * num_items + top
    hits = torch.isin(top_keys, test_keys)
    if hits.shape[1] < k:  # fewer items than k: pad with misses so shapes stay (b, k)
        hits = torch.cat([hits, hits.new_zeros(hits.shape[0], k - hits.shape[1])], dim=1)
    return hits, num_relevant


def per_user_recall_ndcg(hits: Tensor, num_relevant: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-user Recall@k and NDCG@k (float64) and the mask of users with at least one test item."""
    k = hits.shape[1]
    valid = num_relevant > 0
    hits = hits.to(torch.float64)
    discount = 1.0 / torch.log2(torch.arange(k, device=hits.device, dtype=torch.float64) + 2.0)
    idcg_table = torch.cumsum(discount, 0)  # idcg_table[n-1] = IDCG with n relevant items in the top k
    n = num_relevant.clamp(min=1)
    recall = hits.sum(1) / n.to(torch.float64)
    dcg = (hits * discount).sum(1)
    ndcg = dcg / idcg_table[n.clamp(max=k) - 1]
    return recall, ndcg, valid


# ----------------------------------------------------------------------------------------------- metrics
class _MeanOverUsers(Metric):
    """Mean of a per-user quantity; states are sums so DDP reduction is exact."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = int(k)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _per_user(self, hits: Tensor, num_relevant: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, hits: Tensor, num_relevant: Tensor) -> None:
        """hits: (b, >=k) bool, hit at each rank of the sorted top list; num_relevant: (b,) |T_u|."""
        if hits.shape[1] < self.k:
            raise ValueError(f"need hits for at least k={self.k} ranks, got {hits.shape[1]}")
        value, valid = self._per_user(hits[:, : self.k], num_relevant)
        self.total += value[valid].sum().to(self.total.dtype)
        self.count += valid.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).to(torch.float32)


class RecallAtK(_MeanOverUsers):
    """Recall@K = hits in the top K / number of test items, averaged over users with test items."""

    def _per_user(self, hits, num_relevant):
        recall, _, valid = per_user_recall_ndcg(hits, num_relevant)
        return recall, valid


class NDCGAtK(_MeanOverUsers):
    """NDCG@K with binary relevance, log2(rank + 2) discounts, IDCG over min(|T_u|, K) positions."""

    def _per_user(self, hits, num_relevant):
        _, ndcg, valid = per_user_recall_ndcg(hits, num_relevant)
        return ndcg, valid


# ----------------------------------------------------------------------------------------------- module
class RankingModule(L.LightningModule):
    """Base LightningModule for full-ranking recommenders.

    Subclasses implement `final_embeddings() -> (user_emb (U, d), item_emb (I, d))`; scores are dot
    products. Needs a datamodule with scipy CSR `train_matrix` / `test_matrix` (users x items) and optionally
    `val_matrix` (held-out train interactions: validation ranks them with the train items masked, the test masks
    train and validation items; without it validation ranks the test items); eval batches are dicts with `"user"`:
    LongTensor of user ids, each user on exactly one rank.
    """

    # Buffers built from the data: identical on every rank, never broadcast by DDP, never checkpointed.
    _data_buffers: tuple[str, ...] = ("_train_crow", "_train_col", "_test_crow", "_test_col", "_val_crow", "_val_col",
                                      "_seen_crow", "_seen_col", "_user_degree_bin")

    def __init__(self, eval_k: int = 20, optimizer: Callable[..., torch.optim.Optimizer] | None = None) -> None:
        super().__init__()
        # the optimizer factory is not a hyperparameter: checkpoints stay loadable with weights_only=True
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        check_min("model", 1, eval_k=eval_k)
        self.eval_k = int(eval_k)
        self.val_recall = RecallAtK(self.eval_k)
        self.val_ndcg = NDCGAtK(self.eval_k)
        self.test_recall = RecallAtK(self.eval_k)
        self.test_ndcg = NDCGAtK(self.eval_k)
        self._eval_cache: tuple[Tensor, Tensor] | None = None
        self._has_val_split = False  # setup_ranking with a val_matrix: validation has items of its own
        self._user_recall_buffer: list[tuple[Tensor, Tensor]] = []
        self._degree_recall: dict[str, Any] | None = None
        self._degree_bin_labels: list[str] = []
        self._epoch_sums: dict[str, tuple[Tensor, int]] = {}  # log_epoch_means: (sum of value x batch size, count)

    # -- to implement -------------------------------------------------------------------------------
    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    # -- data ---------------------------------------------------------------------------------------
    def _register_data_buffer(self, name: str, value: Tensor) -> None:
        self.register_buffer(name, value, persistent=False)
        ignore = list(getattr(self, "_ddp_params_and_buffers_to_ignore", []))
        if name not in ignore:
            ignore.append(name)
        self._ddp_params_and_buffers_to_ignore = ignore

    def setup_ranking(self, train_matrix: sp.spmatrix, test_matrix: sp.spmatrix,
                      val_matrix: sp.spmatrix | None = None) -> None:
        """Torch CSR copies of the train/test (and validation) matrices and the user degree quartiles for
        `figures()`."""
        device = self.device
        train = scipy_to_torch_csr(train_matrix)
        test = scipy_to_torch_csr(test_matrix)
        self.train_csr, self.test_csr = train, test
        matrices = [("_train", train), ("_test", test)]
        self._has_val_split = val_matrix is not None
        if self._has_val_split:  # the validation items, and the items a test masks: train and validation
            matrices += [("_val", scipy_to_torch_csr(val_matrix)),
                         ("_seen", scipy_to_torch_csr((train_matrix + val_matrix).tocsr()))]
        for name, matrix in matrices:
            self._register_data_buffer(f"{name}_crow", matrix.crow_indices().to(device))
            self._register_data_buffer(f"{name}_col", matrix.col_indices().to(device))
        # degree quartiles over the users that are evaluated (>= 1 test item); same edges on every rank
        train_degree = torch.diff(train.crow_indices()).to(torch.float64)
        has_test = torch.diff(test.crow_indices()) > 0
        pool = train_degree[has_test] if bool(has_test.any()) else train_degree
        quarters = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
        edges = torch.quantile(pool, quarters) if pool.numel() else torch.zeros(3, dtype=torch.float64)
        self._register_data_buffer("_user_degree_bin", torch.bucketize(train_degree, edges, right=True).to(device))
        lo = [float(pool.min()) if pool.numel() else 0.0] + edges.tolist()
        hi = edges.tolist() + [float(pool.max()) if pool.numel() else 0.0]
        self._degree_bin_labels = [f"Q{q + 1}\n[{lo[q]:.0f}, {hi[q]:.0f}]" for q in range(4)]

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.build_for(int(dm.num_users), int(dm.num_items))
        self.setup_ranking(dm.train_matrix, dm.test_matrix, getattr(dm, "val_matrix", None))

    def build_for(self, num_users: int, num_items: int) -> None:
        """Build the subclass's tables (`_build`) for the data's sizes, or check that loaded ones fit them."""
        model = getattr(self, "model", None)
        if model is None:
            self._build(num_users, num_items)
        elif (model.num_users, model.num_items) != (num_users, num_items):
            raise ValueError(f"model was built for {model.num_users} users x {model.num_items} items, "
                             f"datamodule has {num_users} x {num_items}")

    def _build(self, num_users: int, num_items: int) -> None:
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        return self.optimizer_factory(self.parameters())

    # -- training diagnostics -----------------------------------------------------------------------
    def log_epoch_means(self, batch_size: int, **terms: Tensor) -> None:
        """Accumulate training diagnostics `train/<name>`; their batch-size weighted means over the epoch (all ranks)
        are logged once in on_train_epoch_end, the values `self.log(..., on_step=False, on_epoch=True,
        sync_dist=True)` gives, without its per-call bookkeeping (~1 ms per call and step on a CPU, ~10% of a
        recsys step)."""
        for name, value in terms.items():
            total, count = self._epoch_sums.get(name, (0.0, 0))
            self._epoch_sums[name] = (value.detach().to(torch.float64) * batch_size + total, count + batch_size)

    def epoch_running_sums(self) -> dict[str, tuple[Tensor, int]]:
        """This rank's `log_epoch_means` sums of the epoch so far (CPU copies), for a checkpoint taken inside the
        epoch (`launch.epoch_metrics.ResumeEpochMetrics`): a resumed run logs the whole epoch's means."""
        return {name: (torch.as_tensor(total).detach().cpu().clone(), int(count))
                for name, (total, count) in self._epoch_sums.items()}

    def load_epoch_running_sums(self, sums: dict[str, tuple[Tensor, int]]) -> None:
        self._epoch_sums = {name: (total.to(self.device), int(count)) for name, (total, count) in sums.items()}

    def on_train_epoch_end(self) -> None:
        sums, self._epoch_sums = self._epoch_sums, {}
        for name, (total, count) in sums.items():
            # weight `count`: Lightning's epoch reduction (synced sums of value x weight and of weights) gives the
            # mean over all ranks' samples, and it orders the collectives itself
            self.log(f"train/{name}", (total / count).to(torch.float32), on_step=False, on_epoch=True,
                     batch_size=count, sync_dist=True)

    # -- evaluation ---------------------------------------------------------------------------------
    def _start_eval(self) -> None:
        if not hasattr(self, "_train_crow"):
            raise RuntimeError(f"{type(self).__name__}: call setup()/setup_ranking() before evaluation")
        with torch.no_grad():
            user_emb, item_emb = self.final_embeddings()
            self._eval_cache = (user_emb.detach().float(), item_emb.detach().float())
        self._user_recall_buffer = []

    def _end_eval(self, stage: str) -> None:
        self._eval_cache = None
        buffer, self._user_recall_buffer = self._user_recall_buffer, []
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        counts = torch.zeros(4, dtype=torch.float64, device=self.device)
        if buffer:
            users = torch.cat([u for u, _ in buffer])
            recall = torch.cat([r for _, r in buffer]).to(torch.float64)
            bins = self._user_degree_bin[users]
            sums.index_add_(0, bins, recall)
            counts.index_add_(0, bins, torch.ones_like(recall))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        if float(counts.sum()) > 0:
            self._degree_recall = {
                "stage": stage,
                "recall": (sums / counts.clamp(min=1)).cpu().tolist(),
                "users": counts.cpu().long().tolist(),
            }

    def evaluate_batch(self, users: Tensor, stage: str = "test") -> tuple[Tensor, Tensor]:
        """(hits (b, k), num_relevant (b,)) for a batch of users with the cached final embeddings: the test items
        (train and validation items masked) or, stage "val", the validation items (train items masked)."""
        if self._eval_cache is None:
            self._start_eval()
        user_emb, item_emb = self._eval_cache
        users = users.to(user_emb.device).long()
        # rank in fp32 even under bf16/16-mixed autocast: low-precision scores create spurious ties
        with torch.autocast(device_type=user_emb.device.type, enabled=False):
            masked, found = (self._train_crow, self._train_col), (self._test_crow, self._test_col)
            if self._has_val_split:  # (without a split, validation ranks the test items)
                if stage == "val":
                    found = (self._val_crow, self._val_col)
                else:
                    masked = (self._seen_crow, self._seen_col)
            return rank_and_hit(user_emb, item_emb, users, *masked, *found, self.eval_k)

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        users = batch["user"]
        hits, num_relevant = self.evaluate_batch(users, stage)
        recall_metric, ndcg_metric = (
            (self.val_recall, self.val_ndcg) if stage == "val" else (self.test_recall, self.test_ndcg)
        )
        recall_metric.update(hits, num_relevant)
        ndcg_metric.update(hits, num_relevant)
        recall_u, _, valid = per_user_recall_ndcg(hits, num_relevant)
        self._user_recall_buffer.append((users.to(valid.device)[valid], recall_u[valid]))
        k = self.eval_k
        b = int(users.numel())
        self.log(f"{stage}/recall@{k}", recall_metric, on_step=False, on_epoch=True, batch_size=b)
        self.log(f"{stage}/ndcg@{k}", ndcg_metric, on_step=False, on_epoch=True, batch_size=b)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    # -- figures ------------------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        """Recall@K by user train-degree quartile, from the last validation or test epoch."""
        if self._degree_recall is None:
            return {}
        from matplotlib.figure import Figure

        data = self._degree_recall
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot(1, 1, 1)
        labels = self._degree_bin_labels or [f"Q{q + 1}" for q in range(4)]
        bars = ax.bar(range(4), data["recall"], color="tab:blue")
        for bar, n in zip(bars, data["users"]):
            x = bar.get_x() + bar.get_width() / 2
            ax.annotate(f"n={n}", (x, bar.get_height()), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(4), labels, fontsize=7)
        ax.set_xlabel("user train-degree quartile")
        ax.set_ylabel(f"{data['stage']} recall@{self.eval_k}")
        ax.set_title(f"{type(self).__name__}: recall@{self.eval_k} by user degree")
        fig.tight_layout()
        return {"recall_by_user_degree": fig}
