"""UltraGCN's fused CPU scoring (`sampled_dot` / `_SampledDot`) against the computations it replaced: the dense
(B, I) matmul and gather (or gathered rows and bmm) for the scores and autograd for their gradients, and the old
`loss_terms` (positives by an elementwise product, negatives dense, L_I by bmm over the gathered neighbours)."""
from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from lit_models.recsys import ultragcn
from lit_models.recsys.ultragcn import UltraGCNModule, beta_weights, constraint_bce, sampled_dot


def _dense_reference(user: torch.Tensor, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return (user @ table.T).gather(1, index)


def _grads(fn, user, table, index, upstream):
    u = user.detach().clone().requires_grad_()
    t = table.detach().clone().requires_grad_()
    scores = fn(u, t, index)
    (scores * upstream).sum().backward()
    return scores.detach(), u.grad, t.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7, 1, 5, 3), (33, 61, 80, 8), (64, 12, 300, 16), (5, 9, 4, 3)])  # rows, ids/row, items, d
def test_sampled_dot_matches_dense_matmul_and_gather(dtype, shape):
    rows, cols, items, dim = shape
    gen = torch.Generator().manual_seed(rows * cols)
    user = torch.randn(rows, dim, generator=gen, dtype=dtype)
    table = torch.randn(items, dim, generator=gen, dtype=dtype)
    index = torch.randint(items, (rows, cols), generator=gen)
    index[0, :] = index[0, 0]  # a row naming one item several times (sampling with replacement)
    upstream = torch.randn(rows, cols, generator=gen, dtype=dtype)
    got = _grads(sampled_dot, user, table, index, upstream)
    want = _grads(_dense_reference, user, table, index, upstream)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-5)
    for g, w, name in zip(got, want, ("scores", "user grad", "table grad")):
        torch.testing.assert_close(g, w, **tol, msg=name)
    # items never sampled get an exactly zero gradient row
    unused = torch.ones(items, dtype=torch.bool)
    unused[index.reshape(-1)] = False
    assert (got[2][unused] == 0).all()


def test_an_item_id_off_the_table_is_an_index_error():
    """The CSR pattern is built unchecked, so an id past the table read memory beyond it (values like 1e-45, no
    error; the dense gather raised; review, stop 39): now an IndexError, as the other paths give."""
    user, table = torch.randn(3, 4), torch.randn(5, 4)
    for bad in (7, -1):
        index = torch.tensor([[0, bad], [1, 2], [3, 4]])
        with pytest.raises(IndexError, match="out of range"):
            sampled_dot(user, table, index)
        with pytest.raises((IndexError, RuntimeError)):
            ultragcn._unfused_dot(user, table, index)


def test_sampled_dot_fallback_and_one_sided_gradients():
    gen = torch.Generator().manual_seed(0)
    user, table = torch.randn(9, 4, generator=gen, dtype=torch.float64), torch.randn(20, 4, generator=gen, dtype=torch.float64)
    index = torch.randint(20, (9, 6), generator=gen)
    torch.testing.assert_close(ultragcn._unfused_dot(user, table, index), _dense_reference(user, table, index))
    # only one input needs a gradient: the other side is skipped, the needed one is still right
    t = table.clone().requires_grad_()
    sampled_dot(user, t, index).sum().backward()
    t_ref = table.clone().requires_grad_()
    _dense_reference(user, t_ref, index).sum().backward()
    torch.testing.assert_close(t.grad, t_ref.grad)
    u = user.clone().requires_grad_()
    sampled_dot(u, table, index.to(torch.int32)).sum().backward()  # int32 ids are accepted
    u_ref = user.clone().requires_grad_()
    _dense_reference(u_ref, table, index).sum().backward()
    torch.testing.assert_close(u.grad, u_ref.grad)


def _old_loss_terms(module: UltraGCNModule, users, pos, neg) -> dict[str, torch.Tensor]:
    """`UltraGCNModule.loss_terms` before the fused scoring (kept verbatim as the reference)."""
    hp = module.hparams
    user_emb = module.model.user_embedding(users)
    pos_score = (user_emb * module.model.item_embedding(pos)).sum(-1)
    item_table = module.model.item_embedding.weight
    neg_score = (user_emb @ item_table.T).gather(1, neg)
    d_u = module.user_degree[users]
    pos_beta = beta_weights(d_u, module.item_degree[pos])
    neg_beta = beta_weights(d_u.unsqueeze(1), module.item_degree[neg])
    loss_o_c = constraint_bce(pos_score, neg_score, pos_beta, neg_beta, hp.w1, hp.w2, hp.w3, hp.w4, hp.negative_weight)
    l2 = 0.5 * sum(p.pow(2).sum() for p in module.model.parameters())
    if module.ii_neighbours is not None and hp.lambda_ != 0:
        neighbour_emb = module.model.item_embedding(module.ii_neighbours[pos])
        score = torch.bmm(neighbour_emb, user_emb.unsqueeze(-1)).squeeze(-1)
        loss_i = -(module.ii_omega[pos] * F.logsigmoid(score)).sum()
    else:
        loss_i = torch.zeros((), dtype=user_emb.dtype)
    loss = loss_o_c + hp.gamma * l2 + hp.lambda_ * loss_i
    return {"loss": loss, "loss_O_C": loss_o_c, "loss_I": loss_i, "l2": l2}


@pytest.mark.parametrize("lambda_", [1e-1, 0.0])  # with L_I (K neighbours in the fused ids) and the beta-free setting
def test_loss_terms_and_gradients_match_the_unfused_computation(lambda_):
    gen = torch.Generator().manual_seed(1)
    num_users, num_items = 30, 50
    train = sp.random(num_users, num_items, density=0.2, format="csr", random_state=3)
    train.data[:] = 1.0
    module = UltraGCNModule(embedding_dim=8, init_std=0.3, negative_weight=5.0, gamma=1e-2, lambda_=lambda_,
                            num_neighbours=4, num_users=num_users, num_items=num_items).double()
    deg_u = torch.from_numpy(train.sum(1).A1).float()
    deg_i = torch.from_numpy(train.sum(0).A1).float()
    module.setup_constraints(deg_u, deg_i, train)
    users = torch.randint(num_users, (64,), generator=gen)
    pos = torch.randint(num_items, (64,), generator=gen)
    neg = torch.randint(num_items, (64, 7), generator=gen)
    results = []
    for fn in (lambda: module.loss_terms(users, pos, neg), lambda: _old_loss_terms(module, users, pos, neg)):
        module.zero_grad(set_to_none=True)
        terms = fn()
        terms["loss"].backward()
        results.append(({k: v.detach() for k, v in terms.items()}, [p.grad.clone() for p in module.parameters()]))
    (new_terms, new_grads), (old_terms, old_grads) = results
    for name in old_terms:
        torch.testing.assert_close(new_terms[name], old_terms[name], rtol=1e-12, atol=1e-14, msg=name)
    for new, old in zip(new_grads, old_grads):
        torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-14)
