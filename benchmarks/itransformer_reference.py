"""A timing reference for the iTransformer speed anchor: the official implementation's operation sequence, rewritten.

The issue's anchor (~24 steps/s for the official thuml/iTransformer on a 2-core CPU with the ETTh1 settings) was
measured on another machine, and the official code cannot be installed offline here. So that the anchor also has a
same-machine, same-run counterpart, this module rebuilds the official model's *operations* (not its code): the
same layers and parameter count as `lit_models.dynamics.itransformer.ITransformer`, computed the way the official
`model/iTransformer.py` + `layers/` compute them:

- FFN as two `Conv1d(kernel_size=1)` layers over transposed tokens (ours: `nn.Linear`, same maths);
- attention as `einsum("blhe,bshe->bhls")`, an explicit softmax, `nn.Dropout` on the weights and a second einsum
  (ours: `F.scaled_dot_product_attention` with the same dropout);
- trained with `torch.optim.Adam(lr)` as the official `exp_long_term_forecasting.py` (on CPU tensors PyTorch's
  default is the per-parameter for-loop implementation; ours is configured `fused: true`).

Numerically both models are the same function family (tested: equal outputs with copied weights, dropout off).
Used only by `benchmarks/itransformer_speed.py` (cases `pair_ref_*`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ReferenceAttention(nn.Module):
    """Official `AttentionLayer(FullAttention(mask_flag=False))` operation order: projections, einsum scores,
    softmax(scale * scores), dropout, einsum with values, output projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h = self.n_heads
        q = self.query_projection(x).view(b, n, h, -1)
        k = self.key_projection(x).view(b, n, h, -1)
        v = self.value_projection(x).view(b, n, h, -1)
        scores = torch.einsum("blhe,bshe->bhls", q, k)
        weights = self.dropout(torch.softmax(scores / math.sqrt(q.shape[-1]), dim=-1))
        out = torch.einsum("bhls,bshd->blhd", weights, v).contiguous()
        return self.out_projection(out.view(b, n, -1))


class ReferenceEncoderLayer(nn.Module):
    """Official `EncoderLayer` operation order with Conv1d(kernel_size=1) feed-forward layers."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attention = ReferenceAttention(d_model, n_heads, dropout)
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(x))
        y = x = self.norm1(x)
        y = self.dropout(torch.nn.functional.gelu(self.conv1(y.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm2(x + y)


class ReferenceITransformer(nn.Module):
    """Inverted embedding (+ timestamp tokens), encoder, final LayerNorm, projector, instance normalisation."""

    def __init__(self, seq_len: int, pred_len: int, d_model: int, n_heads: int, e_layers: int, d_ff: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.value_embedding = nn.Linear(seq_len, d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(ReferenceEncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(e_layers))
        self.norm = nn.LayerNorm(d_model)
        self.projector = nn.Linear(d_model, pred_len)

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        n = x.shape[-1]
        means = x.mean(1, keepdim=True).detach()
        x = x - means
        stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
        x = x / stdev
        tokens = x.permute(0, 2, 1) if x_mark is None else torch.cat([x.permute(0, 2, 1), x_mark.permute(0, 2, 1)], 1)
        h = self.embedding_dropout(self.value_embedding(tokens))
        for layer in self.layers:
            h = layer(h)
        out = self.projector(self.norm(h)).permute(0, 2, 1)[:, :, :n]
        return out * stdev + means


def load_from_ours(reference: ReferenceITransformer, ours: nn.Module) -> None:
    """Copy an `ITransformer`'s weights into the reference (Linear -> Conv1d kernels), for the equivalence test."""
    with torch.no_grad():
        reference.value_embedding.load_state_dict(ours.enc_embedding.value_embedding.state_dict())
        for ref_layer, layer in zip(reference.layers, ours.layers):
            for name in ("query_projection", "key_projection", "value_projection", "out_projection"):
                getattr(ref_layer.attention, name).load_state_dict(getattr(layer.attention, name).state_dict())
            for name in ("conv1", "conv2"):
                src = getattr(layer, name)
                dst = getattr(ref_layer, name)
                dst.weight.copy_(src.weight.unsqueeze(-1))
                dst.bias.copy_(src.bias)
            ref_layer.norm1.load_state_dict(layer.norm1.state_dict())
            ref_layer.norm2.load_state_dict(layer.norm2.state_dict())
        reference.norm.load_state_dict(ours.norm.state_dict())
        reference.projector.load_state_dict(ours.projector.state_dict())
