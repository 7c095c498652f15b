"""UltraGCN (Mao et al., CIKM 2021, arXiv 2110.15114): matrix factorisation trained with constraint losses
that stand in for infinitely many LightGCN layers; no message passing at train or test time.

Loss, with the semantics of the official code (xue-pai/UltraGCN `main.py`, `UltraGCN.forward`):
    L = sum_batch [ BCE(e_u.e_i, 1; w1 + w2 beta_ui) + negative_weight * mean_N BCE(e_u.e_j, 0; w3 + w4 beta_uj) ]
      + gamma * 0.5 * sum over ALL embedding entries of e^2            (`norm_loss`, every step, whole tables)
      + lambda_ * sum_batch sum_{j in S(i)} -omega_ij log sigmoid(e_u.e_j)      (`cal_loss_I`)
Every batch term is a sum over the batch (`loss.sum()`), not a mean. beta (Eq. 10 / `constraint_mat`):
beta_ui = (1/d_u) sqrt((d_u+1)/(d_i+1)). omega (Eq. 13 / `get_ii_constraint_mat`), see item_item_neighbours.
Name clash: here `gamma` weights the L2 term and `lambda_` weights L_I (the code's names, not the paper's).
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from launch.errors import check_min, check_positive
from lit_models.common.ranking import RankingModule


def beta_weights(user_degree: Tensor, item_degree: Tensor) -> Tensor:
    """Eq. (10): beta_ui = (1/d_u) sqrt((d_u + 1)/(d_i + 1)), broadcasting; 0 where d_u = 0 (no inf)."""
    d_u = torch.as_tensor(user_degree)
    d_i = torch.as_tensor(item_degree).to(d_u.dtype if d_u.is_floating_point() else torch.float32)
    d_u = d_u.to(d_i.dtype)
    inv_du = torch.where(d_u > 0, 1.0 / d_u.clamp(min=1e-12), torch.zeros_like(d_u))
    return inv_du * torch.sqrt((d_u + 1.0) / (d_i + 1.0))


def item_item_neighbours(
    train_matrix: sp.spmatrix,
    k: int = 10,
    omega_variant: str = "paper",
    zero_diagonal: bool = True,
    max_block_nnz: int = 1 << 22,
) -> tuple[Tensor, Tensor]:
    """Top-k item-item neighbours S(i) and their weights omega_ij on the co-occurrence graph G = A^T A.

    omega_variant:
      "paper": omega_ij = G_ij / (g_i - G_ii) * sqrt(g_i / g_j), g_i = sum_k G_ik (Eq. 13; g includes G_ii).
      "code":  omega_ij = G_ij * sqrt(g_i + 1) / g_i / sqrt(g_j + 1) (official `get_ii_constraint_mat`);
               with zero_diagonal the diagonal is zeroed before g is summed, like its `ii_diagonal_zero=True`
               (the official main.py keeps the default False: an item is its own first neighbour for ~92 % of
               ML-100K items; `omega_variant=code ii_diagonal_zero=false` reproduces it).
    zero_diagonal: G_ii is not a neighbour candidate (omega_ii = 0), as in the paper card's check and Eq. 13.
    G is formed in sparse row blocks of at most ~`max_block_nnz` nonzeros (plus one bigger row if a single
    row exceeds it), never as a dense I x I matrix; the top-k is taken on the sparse rows. Items with fewer
    than k co-occurring items are padded with their own id and omega 0 (no contribution to L_I).
    Returns (neighbour_ids (I, k) long, omega (I, k) float32), sorted by decreasing omega.
    """
    if omega_variant not in ("paper", "code"):
        raise ValueError(f"omega_variant must be 'paper' or 'code', got {omega_variant!r}")
    a = sp.csr_matrix(train_matrix, dtype=np.float64, copy=True)
    a.sum_duplicates()
    a.data[:] = 1.0  # binary interactions
    num_items = a.shape[1]
    k = int(min(k, num_items))
    at = a.T.tocsr()  # (I, U)
    user_degree = np.asarray(a.sum(axis=1)).ravel()
    g_diag = np.asarray(at.sum(axis=1)).ravel()  # G_ii = item degree for binary A
    g_full = at @ user_degree  # g_i = sum_k G_ik = sum_{u in N(i)} d_u, without forming G
    if omega_variant == "paper":
        g = g_full
        denom = g_full - g_diag
        row_scale = np.where(denom > 0, np.sqrt(g) / np.where(denom > 0, denom, 1.0), 0.0)
        col_scale = np.where(g > 0, 1.0 / np.sqrt(np.where(g > 0, g, 1.0)), 0.0)
    else:
        g = g_full - g_diag if zero_diagonal else g_full
        row_scale = np.where(g > 0, np.sqrt(g + 1.0) / np.where(g > 0, g, 1.0), 0.0)
        col_scale = 1.0 / np.sqrt(g + 1.0)

    neighbour_ids = np.repeat(np.arange(num_items, dtype=np.int64)[:, None], k, axis=1)  # padding: the item itself
    omega = np.zeros((num_items, k), dtype=np.float32)
    # row blocks bounded by their nonzero count: row i of G has at most g_i = sum_{u in N(i)} d_u entries
    cut = np.searchsorted(np.cumsum(g_full), np.arange(1, int(g_full.sum() // max_block_nnz) + 2) * max_block_nnz)
    starts = np.unique(np.concatenate([[0], np.minimum(cut, num_items), [num_items]]))
    slot = np.arange(k)
    for start, stop in zip(starts[:-1].tolist(), starts[1:].tolist()):
        g_block = at[start:stop] @ a  # rows start..stop-1 of G as CSR: rows contiguous
        count = np.diff(g_block.indptr)
        row = np.repeat(np.arange(stop - start, dtype=np.int64), count)
        col = g_block.indices.astype(np.int64)
        val = g_block.data * row_scale[start + row] * col_scale[col]
        del g_block
        if zero_diagonal:
            val[col == row + start] = 0.0
        # per-row top-k through one sort of an int64 key (row, descending value): positive float32 bit
        # patterns order like the values, so key = row << 32 | (INT32_MAX - bits)
        bits = val.astype(np.float32).view(np.int32).astype(np.int64)
        order = np.argsort((row << 32) | (np.int64(0x7FFFFFFF) - bits))
        first = np.cumsum(count) - count
        take = slot[None, :] < count[:, None]  # (b, k) slots that exist
        position = order[(first[:, None] + slot[None, :])[take]]
        block_ids = neighbour_ids[start:stop]
        block_omega = omega[start:stop]
        chosen = val[position].astype(np.float32)
        keep = chosen > 0  # zero weight (the zeroed diagonal, empty rows) is no neighbour: keep the padding
        r_idx, s_idx = np.nonzero(take)
        block_ids[r_idx[keep], s_idx[keep]] = col[position][keep]
        block_omega[r_idx[keep], s_idx[keep]] = chosen[keep]
    return torch.from_numpy(neighbour_ids), torch.from_numpy(omega)


class UltraGCN(nn.Module):
    """User and item embedding tables; the score is e_u . e_i (no graph at inference)."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, init_std: float = 1e-4) -> None:
        super().__init__()
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.user_embedding = nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, embedding_dim)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores e_u . e_i; items may carry extra trailing dims (e.g. (B, N) negatives)."""
        u = self.user_embedding(users)
        i = self.item_embedding(items)
        if i.dim() == u.dim() + 1:
            u = u.unsqueeze(-2)
        return (u * i).sum(-1)


# torch warns (once per process) that sparse CSR tensors are in beta; `_csr_pattern` only carries ids to sampled_addmm
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

_DENSE_NEGATIVE_RATIO = 50  # off CPU: dense scoring when num_items <= 50 * N (measured cross-over ~100x on 2 CPU cores)


def _batched_dot(user_emb: Tensor, item_emb: Tensor) -> Tensor:
    """(B, d) x (B, N, d) -> (B, N) dot products; bmm is ~3x faster than broadcast-multiply-sum on CPU."""
    return torch.bmm(item_emb, user_emb.unsqueeze(-1)).squeeze(-1)


def _csr_pattern(index: Tensor, num_columns: int, values: Tensor) -> Tensor:
    """(B, N) column ids as a (B, num_columns) CSR tensor with N entries per row, in the given order (columns may
    repeat or be unsorted: only sampled_addmm's and the transposed sums below read it, entry by entry)."""
    rows, cols = index.shape
    crow = torch.arange(0, rows * cols + 1, cols, device=index.device)
    return torch.sparse_csr_tensor(crow, index.reshape(-1), values, size=(rows, num_columns), check_invariants=False)


class _SampledDot(torch.autograd.Function):
    """scores[b, n] = user[b] . table[index[b, n]] on the CPU, without the dense (B, I) score matrix or a (B, N, d)
    copy of the gathered rows: forward is a sampled dense-dense product (one dot per entry), the user gradient
    sum_n g[b, n] table[index[b, n]] is an embedding_bag over the rows of `table`, and the table gradient
    sum_{(b, n): index[b, n] = j} g[b, n] user[b] an embedding_bag over the batch's user rows grouped by item
    (one stable sort of the ids). The values equal `(user @ table.T).gather(1, index)` and its gradients up to
    the order of floating-point sums (~1e-7 relative in float32)."""

    @staticmethod
    def forward(ctx, user: Tensor, table: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        pattern = _csr_pattern(index, table.shape[0], user.new_zeros(index.numel()))
        scores = torch.sparse.sampled_addmm(pattern, user, table.T, beta=0.0).values().view(index.shape)
        ctx.save_for_backward(user, table, index)
        return scores

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        user, table, index = ctx.saved_tensors
        grad = grad.contiguous()
        grad_user = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_user = F.embedding_bag(index, table, per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1]:
            num_items, (rows, cols) = table.shape[0], index.shape
            flat = index.reshape(-1)
            # entries grouped by item, batch order kept within an item; a stable sort of small ints is ~3x faster
            # on 16-bit keys than on int64 (index_select: ~4x faster than advanced indexing on the CPU)
            key = flat.to(torch.int16 if num_items <= torch.iinfo(torch.int16).max else torch.int32)
            order = torch.sort(key, stable=True).indices
            counts = torch.bincount(flat, minlength=num_items)
            offsets = counts.cumsum(0) - counts
            row_of_entry = torch.arange(rows, device=index.device).unsqueeze(1).expand(rows, cols).reshape(-1)
            grad_table = F.embedding_bag(row_of_entry.index_select(0, order), user, offsets,
                                         per_sample_weights=grad.reshape(-1).index_select(0, order), mode="sum")
        return grad_user, grad_table, None


def _unfused_dot(user_emb: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """`sampled_dot` off the CPU (and its reference): one dense (B, I) matmul and a gather when N is a sizeable share
    of the items (`_DENSE_NEGATIVE_RATIO`), else the gathered (B, N, d) rows and bmm; autograd does the rest."""
    if index.shape[1] * _DENSE_NEGATIVE_RATIO >= table.shape[0]:
        # many items per row: scoring all items with one matmul and gathering beats gathering B*N rows
        return (user_emb @ table.T).gather(1, index)
    return _batched_dot(user_emb, F.embedding(index, table))


def sampled_dot(user_emb: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """(B, d) user rows x (I, d) item table at (B, N) item ids -> (B, N) scores user_emb[b] . table[index[b, n]].

    CPU float32/float64 with at most as many ids per row as items: `_SampledDot` (one sampled product, two
    embedding_bags in backward; ~4x cheaper than the dense matmul and gather at ML-100K size, 1 + 50 + 10 ids per
    row). Elsewhere `_unfused_dot`."""
    index = index.long()
    if (user_emb.device.type == "cpu" and table.device.type == "cpu" and user_emb.dtype == table.dtype
            and user_emb.dtype in (torch.float32, torch.float64) and 0 < index.shape[1] <= table.shape[0]
            and index.shape[0] > 0):
        # (sampled_addmm sizes its output for at most one entry per (row, item): more ids per row than items fail)
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= table.shape[0]:  # the CSR pattern is not checked: an id off the table would read past it
            raise IndexError(f"item id {low if low < 0 else high} out of range for {table.shape[0]} items")
        return _SampledDot.apply(user_emb.contiguous(), table.contiguous(), index.contiguous())
    return _unfused_dot(user_emb, table, index)


def constraint_bce(
    pos_score: Tensor,
    neg_score: Tensor,
    pos_beta: Tensor,
    neg_beta: Tensor,
    w1: float,
    w2: float,
    w3: float,
    w4: float,
    negative_weight: float,
) -> Tensor:
    """L_O + L_C merged as in the official `cal_loss_L` (Eq. 11 + Eq. 6 with negative sampling), summed over B.

    pos_score/pos_beta (B,), neg_score/neg_beta (B, N). Negatives: mean over N, times negative_weight.
    """
    pos_loss = F.binary_cross_entropy_with_logits(
        pos_score, torch.ones_like(pos_score), weight=w1 + w2 * pos_beta, reduction="none"
    )
    neg_loss = F.binary_cross_entropy_with_logits(
        neg_score, torch.zeros_like(neg_score), weight=w3 + w4 * neg_beta, reduction="none"
    ).mean(dim=-1)
    return (pos_loss + negative_weight * neg_loss).sum()


def item_constraint_loss(score: Tensor, omega: Tensor) -> Tensor:
    """L_I (Eq. 14 / official `cal_loss_I`): -sum_{(u,i) in batch} sum_{j in S(i)} omega_ij log sigmoid(e_u.e_j).

    score (B, K) = e_u . e_j for the K neighbours j of each batch row's positive item, omega (B, K). Summed over
    batch and neighbours. logsigmoid is the stable form of the code's `.sigmoid().log()`.
    """
    return -(omega * F.logsigmoid(score)).sum()


class UltraGCNModule(RankingModule):
    """UltraGCN with the official code's loss and hyperparameter names; full-ranking evaluation."""

    def __init__(
        self,
        embedding_dim: int = 64,
        init_std: float = 1e-4,
        w1: float = 1e-7,
        w2: float = 1.0,
        w3: float = 1e-7,
        w4: float = 1.0,
        negative_weight: float = 50.0,
        gamma: float = 1e-4,
        lambda_: float = 1e-3,
        num_neighbours: int = 10,
        omega_variant: str = "paper",
        ii_diagonal_zero: bool = True,
        optimizer: Callable[..., torch.optim.Optimizer] = functools.partial(torch.optim.Adam, lr=1e-3),
        num_users: int | None = None,
        num_items: int | None = None,
        eval_k: int = 20,
    ) -> None:
        super().__init__(eval_k=eval_k, optimizer=optimizer)
        if omega_variant not in ("paper", "code"):
            raise ValueError(f"omega_variant must be 'paper' or 'code', got {omega_variant!r}")
        check_min("model", 1, embedding_dim=embedding_dim, num_users=num_users, num_items=num_items)
        check_min("model", 0, num_neighbours=num_neighbours)  # 0: no item-item constraint
        check_min("model", 0, w1=w1, w2=w2, w3=w3, w4=w4, negative_weight=negative_weight, gamma=gamma,
                  lambda_=lambda_)  # loss weights: 0 switches a term off (the beta-free baseline)
        check_positive("model", init_std=init_std)  # 0: all-zero embeddings, whose dot products never learn
        self.save_hyperparameters(ignore=["optimizer"])
        self.model: UltraGCN | None = None
        for name in ("user_degree", "item_degree", "ii_neighbours", "ii_omega"):
            self.register_buffer(name, None, persistent=False)  # filled from the data in setup()
        if num_users is not None and num_items is not None:
            self._build(int(num_users), int(num_items))

    def _build(self, num_users: int, num_items: int) -> None:
        hp = self.hparams
        self.model = UltraGCN(num_users, num_items, hp.embedding_dim, hp.init_std)
        self.hparams["num_users"], self.hparams["num_items"] = num_users, num_items

    def setup_constraints(self, user_degree: Tensor, item_degree: Tensor, train_matrix: sp.spmatrix | None) -> None:
        """Degrees for beta and the item-item neighbours/omega for L_I (skipped when lambda_ == 0)."""
        device = self.device
        self._register_data_buffer("user_degree", torch.as_tensor(user_degree, dtype=torch.float32).to(device))
        self._register_data_buffer("item_degree", torch.as_tensor(item_degree, dtype=torch.float32).to(device))
        if self.hparams.lambda_ != 0 and self.hparams.num_neighbours > 0:
            hp = self.hparams
            ids, omega = item_item_neighbours(train_matrix, hp.num_neighbours, hp.omega_variant,
                                              zero_diagonal=hp.ii_diagonal_zero)
            self._register_data_buffer("ii_neighbours", ids.to(device))
            self._register_data_buffer("ii_omega", omega.to(device))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule
        if stage == "fit":  # eval needs only the tables
            self.setup_constraints(dm.user_degree, dm.item_degree, dm.train_matrix)

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        if self.model is None:
            raise RuntimeError("UltraGCNModule has no embeddings yet: pass num_users/num_items or run setup()")
        return self.model.user_embedding.weight, self.model.item_embedding.weight

    def loss_terms(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """The three terms of the objective (unweighted) and the weighted total."""
        hp = self.hparams
        if neg.dim() == 1:
            neg = neg.unsqueeze(1)
        user_emb = self.model.user_embedding(users)
        item_table = self.model.item_embedding.weight
        # the positive, the N negatives and (L_I) the K neighbours of the positive: one sampled product
        use_ii = self.ii_neighbours is not None and hp.lambda_ != 0
        columns = [pos.unsqueeze(1), neg] + ([self.ii_neighbours.index_select(0, pos)] if use_ii else [])
        scores = sampled_dot(user_emb, item_table, torch.cat(columns, 1))
        num_neg = neg.shape[1]
        pos_score, neg_score = scores[:, 0], scores[:, 1 : 1 + num_neg]
        # index_select: the same values as advanced indexing, ~4x faster on the CPU for the (B, N) negatives
        d_u = self.user_degree.index_select(0, users)
        pos_beta = beta_weights(d_u, self.item_degree.index_select(0, pos))
        neg_beta = beta_weights(d_u.unsqueeze(1), self.item_degree.index_select(0, neg.reshape(-1)).view(neg.shape))
        loss_o_c = constraint_bce(pos_score, neg_score, pos_beta, neg_beta, hp.w1, hp.w2, hp.w3, hp.w4, hp.negative_weight)
        # official `norm_loss`: sum of squares of every parameter / 2, whole tables, every step
        l2 = 0.5 * sum(p.pow(2).sum() for p in self.model.parameters())
        if use_ii:
            loss_i = item_constraint_loss(scores[:, 1 + num_neg :], self.ii_omega.index_select(0, pos))
        else:
            loss_i = torch.zeros((), device=user_emb.device, dtype=user_emb.dtype)
        loss = loss_o_c + hp.gamma * l2 + hp.lambda_ * loss_i
        return {"loss": loss, "loss_O_C": loss_o_c, "loss_I": loss_i, "l2": l2}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        if self.user_degree is None:
            raise RuntimeError("UltraGCNModule: call setup()/setup_constraints() before training")
        terms = self.loss_terms(batch["user"], batch["pos_item"], batch["neg_item"])
        b = int(batch["user"].numel())
        self.log("train/loss", terms["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=b, sync_dist=True)
        self.log_epoch_means(b, **{name: terms[name] for name in ("loss_O_C", "loss_I", "l2")})
        return terms["loss"]
