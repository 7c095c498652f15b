"""A vanilla temporal-token Transformer forecaster: the baseline iTransformer (arXiv 2310.06625) inverts.

Same data contract and the same encoder as `lit_models.dynamics.itransformer.ITransformer` (B x L x N -> B x S x N,
instance normalisation `use_norm`, `EncoderLayer` blocks with d_model / n_heads / d_ff / e_layers, final
LayerNorm), but a token is one *time step*, as in the vanilla Transformer (Vaswani et al. 2017) used by the
forecasting baselines the iTransformer paper compares against (its Fig. 2 / Sec. 3, "temporal tokens"):

    h_t^0 = W_emb x_t + PE(t)          x_t in R^N (all variates at step t), W_emb: Linear(N -> D),
                                        PE: fixed sinusoidal positional encoding (Vaswani et al., Sec. 3.5)
    H^L   = Encoder(H^0)                 self-attention over the L time tokens
    Y_hat = Linear_time(Linear_var(H^L)) Linear_var: D -> N per time token, Linear_time: L -> S per variate

Encoder-only (a linear head over time instead of the thuml encoder-decoder with a zero-filled decoder input),
so that it has the same depth and width as the iTransformer and differs only in what a token is; the cost of
attention is O(L^2) instead of O(N^2). Used by `benchmarks/itransformer_speed.py` as the same-size baseline.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_models.dynamics.itransformer import EncoderLayer

__all__ = ["TemporalTransformer", "sinusoidal_positional_encoding"]


def sinusoidal_positional_encoding(length: int, d_model: int) -> Tensor:
    """PE(t, 2i) = sin(t / 10000^(2i/D)), PE(t, 2i+1) = cos(t / 10000^(2i/D)) -> (length, D)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[: d_model // 2])
    return pe


class TemporalTransformer(nn.Module):
    """Temporal-token Transformer encoder forecaster: B x L x N -> B x S x N (see the module docstring).

    `num_variates` N is fixed at construction (the embedding is Linear(N -> D)), unlike the iTransformer whose
    parameters do not depend on N.
    """

    def __init__(self, num_variates: int, seq_len: int = 96, pred_len: int = 96, d_model: int = 512,
                 n_heads: int = 8, e_layers: int = 2, d_ff: int = 2048, dropout: float = 0.1,
                 activation: str = "gelu", use_norm: bool = True) -> None:
        super().__init__()
        if int(num_variates) < 1 or int(seq_len) < 1 or int(pred_len) < 1:
            raise ValueError(f"num_variates, seq_len and pred_len must be >= 1, got {num_variates}, {seq_len}, "
                             f"{pred_len}")
        self.num_variates, self.seq_len, self.pred_len = int(num_variates), int(seq_len), int(pred_len)
        self.use_norm = bool(use_norm)
        self.value_embedding = nn.Linear(self.num_variates, d_model)
        self.register_buffer("positional_encoding", sinusoidal_positional_encoding(self.seq_len, d_model),
                             persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout, activation) for _ in range(e_layers))
        self.norm = nn.LayerNorm(d_model)
        self.variate_head = nn.Linear(d_model, self.num_variates)
        self.time_head = nn.Linear(self.seq_len, self.pred_len)

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        if x.shape[1] != self.seq_len or x.shape[2] != self.num_variates:
            raise ValueError(f"expected input (B, {self.seq_len}, {self.num_variates}), got {tuple(x.shape)}")
        if self.use_norm:  # the same instance normalisation as the iTransformer (fair comparison)
            means = x.mean(1, keepdim=True).detach()
            x = x - means
            stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
            x = x / stdev
        h = self.dropout(self.value_embedding(x) + self.positional_encoding)  # B x L x D: time tokens
        for layer in self.layers:
            h = layer(h)
        out = self.variate_head(self.norm(h))                      # B x L x N
        out = self.time_head(out.transpose(1, 2)).transpose(1, 2)  # B x S x N
        if self.use_norm:
            out = out * stdev + means
        return out
