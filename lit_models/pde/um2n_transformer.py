"""The graph transformer of the released UM2N code (mesh-adaptation/UM2N `transformer_model.py`, `TransformerModel`,
used by both MRTransformer and M2N_T): GELU MLPs around ParT-style blocks.

- mlp_in: Linear(in, D) -> GELU -> Linear(D, D) -> GELU; mlp_out: Linear(D, D) -> GELU -> Linear(D, out) -> GELU.
- block: x + Dropout(LN(c_attn (.) MHA(LN(x)))) with a learned scale per attention head (c_attn, init 1, applied as
  the official einsum "b n h d, h -> b n d h", which also reorders the channels to head-minor), then
  w (.) x + Dropout(Linear(LN(Dropout(GELU(Linear(LN(x))))))) with a learned per-channel residual weight w (init 1);
  the hidden width is 4 D; dropout 0.1 in the attention, after it and in the MLP.
Padding nodes of a batch of meshes are masked as keys (the official code assumes meshes of equal size per batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gelu_mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Official `MLP_model` with one hidden layer and GELU after both layers."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out), nn.GELU())


class TransformerBlock(nn.Module):
    """One block of the official TransformerModel (see the module docstring)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1, dense_ratio: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.pre_attn_norm, self.post_attn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.pre_dense_norm, self.post_dense_norm = nn.LayerNorm(dim), nn.LayerNorm(dim * dense_ratio)
        self.dense_1, self.dense_2 = nn.Linear(dim, dim * dense_ratio), nn.Linear(dim * dense_ratio, dim)
        self.act_dropout = nn.Dropout(dropout)
        self.c_attn = nn.Parameter(torch.ones(heads))
        self.residual_weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        residual, h = x, self.pre_attn_norm(x)
        h = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        b, n, _ = h.shape
        h = torch.einsum("bnhd,h->bndh", h.view(b, n, self.heads, self.head_dim), self.c_attn).reshape(b, n, -1)
        x = self.dropout(self.post_attn_norm(h)) + residual
        residual = x
        h = self.act_dropout(F.gelu(self.dense_1(self.pre_dense_norm(x))))
        h = self.dropout(self.dense_2(self.post_dense_norm(h)))
        return h + self.residual_weight * residual


class TransformerModel(nn.Module):
    """mlp_in -> `num_layers` blocks -> mlp_out, on (B, N, in) with a key padding mask (B, N), True = padding."""

    def __init__(self, in_dim: int, embed_dim: int, out_dim: int, num_heads: int = 4, num_layers: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp_in = gelu_mlp(in_dim, embed_dim, embed_dim)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, dropout) for _ in range(num_layers))
        self.mlp_out = gelu_mlp(embed_dim, embed_dim, out_dim)

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        x = self.mlp_in(x)
        for block in self.blocks:
            x = block(x, pad)
        return self.mlp_out(x)
