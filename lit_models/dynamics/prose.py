"""PROSE (Liu, Sun, Schaeffer et al., Neural Networks 2024, arXiv 2309.16816): Predicting Operators and Symbolic
Expressions with a multimodal Transformer. Official code: felix-lyx/prose (`prose_ode/`).

Inputs: data u(t_i) (B x N_in x max_dim, zero-padded, per-sample normalised) at input times t_i, and text: the
(possibly corrupted) prefix skeleton of du/dt = f(u). Encoders (Sec. 3.1): data embedder MLP([t, u] -> D) +
`n_data_enc_layers` Transformer layers; text: token + sinusoidal position embedding + `n_text_enc_layers` layers
(padding-masked). Feature fusion (Sec. 3.2): concatenation + learned modality-type embedding + `n_fusion_layers` joint
self-attention layers. Decoders (Sec. 3.3): (i) data (operator) decoder: query tokens Linear(t) for arbitrary output
times, `n_data_dec_layers` layers of cross-attention to the fused data features + FFN (no causal mask),
Linear(D -> max_dim); (ii) symbol decoder: `n_text_dec_layers` causal decoder layers with teacher forcing on the
shifted target expression (with constants), greedy decoding at evaluation.
Loss (Sec. 3.4): data_loss_weight (6.0) x MSE(data, valid dims only) + CE(symbols).
Blocks (`norm_first=False`, the default): post-norm residual layers with a LayerNorm on each stack's input embeddings,
as the official `symbolicregression/model/transformer.py` (x = LN(x + attention(x)); x = LN(x + FFN(x)));
`norm_first=True` gives pre-norm layers closed by a final LayerNorm (this module's layout before that check).

Data-only baseline (card check 1): `text_input=False` is the official `--no_text` model (model/__init__.py
build_modules, trainer.enc_dec_step): no text encoder, no fusion block and no symbol decoder; the data decoder reads
the data encoder's output and the loss is the data loss alone (no symbol supervision, weight 1).
"""
from __future__ import annotations

import functools
import math
import textwrap
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from launch.errors import check_min
from lit_models.common.dynamics_metrics import SymbolicAccuracy
from lit_models.dynamics.prose_symbolic import SymbolicTokenizer, expression_rel_l2


def _encoder(d: int, heads: int, ffn: int, layers: int, dropout: float, norm_first: bool) -> nn.TransformerEncoder:
    """`norm_first=False`: the official post-norm blocks (x = LN(x + attn(x)); x = LN(x + FFN(x)), XLM style), whose
    output is already normalised; `norm_first=True`: pre-norm blocks closed by a final LayerNorm."""
    layer = nn.TransformerEncoderLayer(d, heads, ffn, dropout, activation="gelu", batch_first=True,
                                       norm_first=norm_first)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d) if norm_first else None,
                                 enable_nested_tensor=False)


def _decoder(d: int, heads: int, ffn: int, layers: int, dropout: float, norm_first: bool) -> nn.TransformerDecoder:
    """Causal decoder stack; post-norm (official) or pre-norm + final LayerNorm, as `_encoder`."""
    layer = nn.TransformerDecoderLayer(d, heads, ffn, dropout, activation="gelu", batch_first=True,
                                       norm_first=norm_first)
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(d) if norm_first else None)


def _embedding_norm(d: int, norm_first: bool) -> nn.Module:
    """The official `layer_norm_emb` on a stack's input embeddings (post-norm blocks); none for pre-norm blocks."""
    return nn.Identity() if norm_first else nn.LayerNorm(d)


def sinusoidal(n: int, d: int) -> Tensor:
    """Fixed sinusoidal position table (the official text encoder/decoder default)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, d, 2, dtype=torch.float32) / d)
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table


class DataEncoder(nn.Module):
    """Sec. 3.1: each time point (t_i, u(t_i)) -> one token through the embedder MLP (Linear-GELU-Linear, as the
    official `embedder`), then `layers` self-attention layers (no positional embedding: time is in the token)."""

    def __init__(self, max_dim: int, d: int, heads: int, ffn: int, layers: int, dropout: float,
                 norm_first: bool = False) -> None:
        super().__init__()
        self.embedder = nn.Sequential(nn.Linear(max_dim + 1, d), nn.GELU(), nn.Linear(d, d))
        self.embedding_norm = _embedding_norm(d, norm_first)
        self.encoder = _encoder(d, heads, ffn, layers, dropout, norm_first)

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        return self.encoder(self.embedding_norm(self.embedder(torch.cat([t.unsqueeze(-1), u], -1))))


def _token_embedding(vocab: int, d: int, pad_id: int) -> nn.Embedding:
    """Symbol embedding N(0, 1/d) with a zero, gradient-free padding row (text encoder and symbol decoder)."""
    token = nn.Embedding(vocab, d, padding_idx=pad_id)
    nn.init.normal_(token.weight, std=d ** -0.5)
    with torch.no_grad():
        token.weight[pad_id].zero_()
    return token


class TextEncoder(nn.Module):
    """Sec. 3.1: token embedding + sinusoidal positions, `layers` self-attention layers with the padding masked."""

    def __init__(self, vocab: int, d: int, heads: int, ffn: int, layers: int, dropout: float, max_len: int,
                 pad_id: int, norm_first: bool = False) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.token = _token_embedding(vocab, d, pad_id)
        self.register_buffer("position", sinusoidal(max_len, d), persistent=False)
        self.embedding_norm = _embedding_norm(d, norm_first)
        self.encoder = _encoder(d, heads, ffn, layers, dropout, norm_first)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        pad = ids == self.pad_id  # True = padding (not attended)
        x = self.embedding_norm(self.token(ids) + self.position[: ids.shape[1]])
        return self.encoder(x, src_key_padding_mask=pad), pad


class Fusion(nn.Module):
    """Sec. 3.2 feature fusion: concatenate [data tokens; text tokens], add the learned modality-type embedding
    (0 = data, 1 = text), LayerNorm, `layers` joint self-attention layers; padded text tokens are masked as keys.
    Returns the fused sequence, its padding mask and the number of data tokens (to split the features)."""

    def __init__(self, d: int, heads: int, ffn: int, layers: int, dropout: float, norm_first: bool = False) -> None:
        super().__init__()
        self.type_embedding = nn.Embedding(2, d)
        nn.init.normal_(self.type_embedding.weight, std=d ** -0.5)
        self.norm = nn.LayerNorm(d)
        self.encoder = _encoder(d, heads, ffn, layers, dropout, norm_first)

    def forward(self, data: Tensor, text: Tensor | None = None,
                text_pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        feats = [data + self.type_embedding.weight[0]]
        pad = [torch.zeros(data.shape[:2], dtype=torch.bool, device=data.device)]
        if text is not None:
            feats.append(text + self.type_embedding.weight[1])
            pad.append(text_pad)
        x, mask = self.norm(torch.cat(feats, 1)), torch.cat(pad, 1)
        return self.encoder(x, src_key_padding_mask=mask), mask


class OperatorLayer(nn.Module):
    """One data-decoder layer (official `DataOperatorModel`): the query tokens cross-attend to the fused features,
    then an FFN; optional self-attention among the queries (`data_decoder_attn`, off in the paper). Nothing is
    causal: every query sees all of the memory. Post-norm residual blocks as the official code (`norm_first=False`:
    q = LN(q + cross(q)); q = LN(q + FFN(q))) or pre-norm (`norm_first=True`)."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, self_attn: bool, norm_first: bool = False) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm_q, self.cross = nn.LayerNorm(d), nn.MultiheadAttention(d, heads, dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(d, heads, dropout, batch_first=True) if self_attn else None
        self.norm_s = nn.LayerNorm(d) if self_attn else None
        self.norm_f = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))

    def forward(self, q: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        def cross(h: Tensor) -> Tensor:
            return self.cross(h, memory, memory, key_padding_mask=memory_pad, need_weights=False)[0]

        def among(h: Tensor) -> Tensor:
            return self.self_attn(h, h, h, need_weights=False)[0]

        if not self.norm_first:
            q = self.norm_q(q + cross(q))
            if self.self_attn is not None:
                q = self.norm_s(q + among(q))
            return self.norm_f(q + self.ffn(q))
        q = q + cross(self.norm_q(q))
        if self.self_attn is not None:
            q = q + among(self.norm_s(q))
        return q + self.ffn(self.norm_f(q))


class DataDecoder(nn.Module):
    """Sec. 3.3 operator decoder: query tokens = Linear(t) + LayerNorm for arbitrary output times t (no positions:
    queries are times, not sequence indices), `layers` OperatorLayers, Linear(D -> max_dim)."""

    def __init__(self, max_dim: int, d: int, heads: int, ffn: int, layers: int, dropout: float,
                 self_attn: bool = False, norm_first: bool = False) -> None:
        super().__init__()
        self.query = nn.Linear(1, d)
        self.query_norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList(OperatorLayer(d, heads, ffn, dropout, self_attn, norm_first)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d) if norm_first else nn.Identity()
        self.out = nn.Linear(d, max_dim)

    def forward(self, t: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        q = self.query_norm(self.query(t.unsqueeze(-1)))
        for layer in self.layers:
            q = layer(q, memory, memory_pad)
        return self.out(self.norm(q))


class SymbolDecoder(nn.Module):
    """Sec. 3.3 symbol decoder: autoregressive (causal mask, teacher forcing on the shifted target), token
    embedding + sinusoidal positions, cross-attention to the fused features, output projection tied to the input
    embedding (official `text_share_inout_emb`)."""

    def __init__(self, vocab: int, d: int, heads: int, ffn: int, layers: int, dropout: float, max_len: int,
                 pad_id: int, norm_first: bool = False) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.token = _token_embedding(vocab, d, pad_id)
        self.register_buffer("position", sinusoidal(max_len, d), persistent=False)
        self.embedding_norm = _embedding_norm(d, norm_first)
        self.decoder = _decoder(d, heads, ffn, layers, dropout, norm_first)
        self.out_bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, ids: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        n = ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1)  # True = not attended
        x = self.embedding_norm(self.token(ids) + self.position[:n])
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=ids == self.pad_id,
                         memory_key_padding_mask=memory_pad)
        return F.linear(h, self.token.weight, self.out_bias)

    @staticmethod
    def _heads(x: Tensor, heads: int) -> Tensor:
        """B x L x D -> B x heads x L x D / heads (as nn.MultiheadAttention splits them)."""
        b, n, d = x.shape
        return x.view(b, n, heads, d // heads).transpose(1, 2)

    @staticmethod
    def _merge(o: Tensor, attn: nn.MultiheadAttention) -> Tensor:
        """Attention output B x heads x L x D / heads -> out_proj(B x L x D)."""
        b, h, n, e = o.shape
        return attn.out_proj(o.transpose(1, 2).reshape(b, n, h * e))

    def _cached_layer(self, layer: nn.TransformerDecoderLayer, x: Tensor, t: int, cache: tuple[Tensor, Tensor],
                      self_ok: Tensor, memory: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """One decoder layer (torch's TransformerDecoderLayer, post- or pre-norm) for the token at position t alone
        (x: B x 1 x D): its self-attention keys / values go into `cache` (each B x heads x max_len x D / heads) at t
        and it attends to positions <= t where `self_ok`; `memory`: the cross-attention keys, values and key mask."""
        attn_s, attn_c = layer.self_attn, layer.multihead_attn
        heads, d = attn_s.num_heads, x.shape[-1]
        cache_k, cache_v = cache
        mem_k, mem_v, mem_ok = memory

        def self_block(h: Tensor) -> Tensor:
            q, k, v = F.linear(h, attn_s.in_proj_weight, attn_s.in_proj_bias).chunk(3, -1)
            cache_k[:, :, t] = self._heads(k, heads)[:, :, 0]
            cache_v[:, :, t] = self._heads(v, heads)[:, :, 0]
            o = F.scaled_dot_product_attention(self._heads(q, heads), cache_k[:, :, :t + 1], cache_v[:, :, :t + 1],
                                               self_ok[:, None, None, :t + 1])
            return layer.dropout1(self._merge(o, attn_s))

        def cross_block(h: Tensor) -> Tensor:
            bias = None if attn_c.in_proj_bias is None else attn_c.in_proj_bias[:d]
            q = self._heads(F.linear(h, attn_c.in_proj_weight[:d], bias), heads)
            return layer.dropout2(self._merge(F.scaled_dot_product_attention(q, mem_k, mem_v, mem_ok), attn_c))

        def ff_block(h: Tensor) -> Tensor:
            return layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))

        if layer.norm_first:
            x = x + self_block(layer.norm1(x))
            x = x + cross_block(layer.norm2(x))
            return x + ff_block(layer.norm3(x))
        x = layer.norm1(x + self_block(x))
        x = layer.norm2(x + cross_block(x))
        return layer.norm3(x + ff_block(x))

    @torch.no_grad()
    def greedy(self, memory: Tensor, memory_pad: Tensor, bos_id: int, eos_id: int, max_len: int) -> Tensor:
        """Greedy decoding with cached keys and values: each step runs the new token alone through the layers (the
        causal mask makes the earlier positions' states final), attending to the cached self-attention keys / values
        of the earlier tokens and to the memory's cross-attention keys / values (computed once). The same tokens as
        re-running the whole prefix each step (`PROSE.generate(..., cache=False)`), up to float rounding; rows that
        emitted <eos> leave the batch and their later positions are <pad>, as there."""
        layers = list(self.decoder.layers)
        batch, d = memory.shape[0], memory.shape[-1]
        heads = layers[0].self_attn.num_heads
        for layer in layers:
            for attn in (layer.self_attn, layer.multihead_attn):
                if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
                    raise NotImplementedError("cached decoding needs plain packed-projection attention")

        def project(attn: nn.MultiheadAttention, part: slice) -> Tensor:
            bias = None if attn.in_proj_bias is None else attn.in_proj_bias[part]
            return self._heads(F.linear(memory, attn.in_proj_weight[part], bias), heads)

        mem_k = [project(layer.multihead_attn, slice(d, 2 * d)) for layer in layers]
        mem_v = [project(layer.multihead_attn, slice(2 * d, 3 * d)) for layer in layers]
        mem_ok = ~memory_pad[:, None, None, :]  # scaled_dot_product_attention: True = attended
        cache_k = memory.new_zeros(len(layers), batch, heads, max_len, d // heads)
        cache_v = torch.zeros_like(cache_k)
        self_ok = torch.zeros(batch, max_len, dtype=torch.bool, device=memory.device)
        ids = torch.full((batch, max_len), self.pad_id, dtype=torch.long, device=memory.device)
        ids[:, 0] = bos_id
        rows = torch.arange(batch, device=memory.device)  # the rows still decoding
        tok, length = ids[:, 0], 1
        for t in range(max_len - 1):
            self_ok[:, t] = tok != self.pad_id  # a <pad> token is not attended, as tgt_key_padding_mask
            x = self.embedding_norm(self.token(tok)[:, None] + self.position[t])
            for i, layer in enumerate(layers):
                x = self._cached_layer(layer, x, t, (cache_k[i], cache_v[i]), self_ok, (mem_k[i], mem_v[i], mem_ok))
            if self.decoder.norm is not None:
                x = self.decoder.norm(x)
            nxt = F.linear(x[:, 0], self.token.weight, self.out_bias).argmax(-1)
            ids[rows, t + 1] = nxt
            length = t + 2
            live = nxt != eos_id
            if not bool(live.any()):
                break
            if not bool(live.all()):  # finished rows leave the batch (and its caches)
                rows, nxt, self_ok, mem_ok = rows[live], nxt[live], self_ok[live], mem_ok[live]
                cache_k, cache_v = cache_k[:, live], cache_v[:, live]
                mem_k, mem_v = [k[live] for k in mem_k], [v[live] for v in mem_v]
            tok = nxt
        return ids[:, :length]


class PROSE(nn.Module):
    """Fig. 2 of the paper: data encoder + text encoder -> fusion -> data (operator) decoder and symbol decoder.

    `split_features` (official `split_fused_feature_data/_text`, both true by default): after fusion the data
    decoder reads only the fused *data* tokens and the symbol decoder only the fused *text* tokens (each has seen
    the other modality through the joint self-attention). `text_input=False` is the data-only model, the official
    `--no_text`: no text encoder, fusion or symbol decoder; the data decoder reads the data encoder's output.
    `norm_first`: False = the official post-norm blocks, True = pre-norm blocks (see the module docstring).
    `layer_norm_eps`: of every LayerNorm (official 1e-12; torch's default 1e-5)."""

    def __init__(self, vocab: int, pad_id: int, max_dim: int = 3, dim_emb: int = 512, n_heads: int = 8,
                 dim_ffn: int = 2048, n_text_enc_layers: int = 4, n_data_enc_layers: int = 2,
                 n_fusion_layers: int = 8, n_data_dec_layers: int = 8, n_text_dec_layers: int = 8,
                 dropout: float = 0.0, max_text_len: int = 200, text_input: bool = True,
                 split_features: bool = True, data_decoder_attn: bool = False, norm_first: bool = False,
                 layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        a = (dim_emb, n_heads, dim_ffn)
        self.split_features = split_features
        self.data_encoder = DataEncoder(max_dim, *a, n_data_enc_layers, dropout, norm_first)
        self.text_encoder = (TextEncoder(vocab, *a, n_text_enc_layers, dropout, max_text_len, pad_id, norm_first)
                             if text_input else None)
        self.fusion = Fusion(*a, n_fusion_layers, dropout, norm_first) if text_input else None
        self.data_decoder = DataDecoder(max_dim, *a, n_data_dec_layers, dropout, data_decoder_attn, norm_first)
        self.symbol_decoder = (SymbolDecoder(vocab, *a, n_text_dec_layers, dropout, max_text_len, pad_id, norm_first)
                               if text_input else None)
        for module in self.modules():  # every LayerNorm, inside the torch layers too (official transformer.py: 1e-12)
            if isinstance(module, nn.LayerNorm):
                module.eps = layer_norm_eps

    def fuse(self, data_in: Tensor, t_in: Tensor, text_in: Tensor | None) -> tuple[Tensor, Tensor, int]:
        """-> fused features (B x (N_in [+ L_text]) x D), their padding mask (True = pad), N_in."""
        data = self.data_encoder(data_in, t_in)
        if self.text_encoder is None:  # official --no_text: the data decoder reads the data encoder's output
            return data, torch.zeros(data.shape[:2], dtype=torch.bool, device=data.device), data.shape[1]
        if text_in is None:
            raise ValueError("PROSE with a text encoder needs text_in")
        text, text_pad = self.text_encoder(text_in)
        fused, pad = self.fusion(data, text, text_pad)
        return fused, pad, data.shape[1]

    def memories(self, fused: Tensor, pad: Tensor, n_data: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """(data-decoder memory, symbol-decoder memory), each (features, padding mask)."""
        if not self.split_features or fused.shape[1] == n_data:
            return (fused, pad), (fused, pad)
        return (fused[:, :n_data], pad[:, :n_data]), (fused[:, n_data:], pad[:, n_data:])

    def forward(self, data_in: Tensor, t_in: Tensor, t_out: Tensor, text_in: Tensor | None,
                text_out: Tensor | None = None, keep: dict | None = None) -> tuple[Tensor, Tensor | None]:
        """-> (data prediction B x N_out x max_dim, symbol logits for text_out[:, :-1] or None). `keep`, when given,
        receives the symbol decoder's memory and its padding mask as "symbol_memory" (for greedy decoding)."""
        (mem_d, pad_d), (mem_s, pad_s) = self.memories(*self.fuse(data_in, t_in, text_in))
        if keep is not None:
            keep["symbol_memory"] = (mem_s, pad_s)
        data = self.data_decoder(t_out, mem_d, pad_d)
        logits = None if text_out is None or self.symbol_decoder is None else \
            self.symbol_decoder(text_out[:, :-1], mem_s, pad_s)
        return data, logits

    @torch.no_grad()
    def generate(self, memory: Tensor, pad: Tensor, bos_id: int, eos_id: int, max_len: int,
                 cache: bool = True) -> Tensor:
        """Greedy decoding (beam 1) from the symbol-decoder memory: B x <= max_len token ids starting with <bos>.
        `cache` (default): keys and values of the decoded prefix are cached (`SymbolDecoder.greedy`); False re-runs the
        decoder on the whole prefix at every step (the same tokens, up to float rounding, at many times the cost)."""
        if cache and not self.training:  # the cached steps leave out dropout: training mode decodes the whole prefix
            return self.symbol_decoder.greedy(memory, pad, bos_id, eos_id, max_len)
        ids = torch.full((memory.shape[0], 1), bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        for _ in range(max_len - 1):
            # only the rows still decoding go through the decoder (finished rows get <pad>); each row is decoded
            # independently, so this gives the same tokens at a fraction of the cost once short expressions end
            live = (~done).nonzero().squeeze(1)
            nxt = torch.full_like(done, self.symbol_decoder.pad_id, dtype=torch.long)
            nxt[live] = self.symbol_decoder(ids[live], memory[live], pad[live])[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return ids


DEFAULT_OPTIMIZER = functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=1e-4)  # optim.py: decoupled decay


class ProseModule(L.LightningModule):
    """PROSE trained on the multimodal ODE data. Metrics: `val|test/rel_l2` (relative L2 error of the data decoder on
    the query window, original scale, valid dims, mean over samples), `val|test/mse` (normalised scale),
    `val|test/valid_frac` (greedy decodes that parse as prefix expressions), `val|test/skeleton_acc` (decoded
    skeleton == true skeleton), `val|test/symbol_token_acc` (teacher-forced next-token accuracy), `val|test/text_rel_l2`
    (official evaluate.py `text_loss`: relative L2 of the decoded right-hand side against the true one at 50 points
    uniform in [-5, 5]^d, mean over the decodes that evaluate, not logged when none does; the points are seeded by batch
    here, unseeded there). Under DDP each rank evaluates its share of the batches (`ProseBatches`); the epoch values
    are the whole set's: the logged means are weighted by batch size across the ranks, the metrics' states summed."""

    def __init__(self, max_dim: int = 3, float_precision: int = 3, dim_emb: int = 512, n_heads: int = 8,
                 dim_ffn: int = 2048, n_text_enc_layers: int = 4, n_data_enc_layers: int = 2,
                 n_fusion_layers: int = 8, n_data_dec_layers: int = 8, n_text_dec_layers: int = 8,
                 dropout: float = 0.0, text_input: bool = True, split_features: bool = True,
                 data_decoder_attn: bool = False, norm_first: bool = False, layer_norm_eps: float = 1e-12,
                 data_loss_weight: float = 6.0,
                 text_loss_weight: float = 1.0, data_loss: str = "relative",
                 max_gen_len: int = 150, warmup_steps: int = 20000,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER) -> None:
        super().__init__()
        check_min("model", 1, dim_emb=dim_emb, n_heads=n_heads, dim_ffn=dim_ffn, max_gen_len=max_gen_len)
        if data_loss not in ("relative", "mse"):
            raise ValueError(f"prose: data_loss must be 'relative' (official) or 'mse', got {data_loss!r}")
        if dim_emb % n_heads:
            raise ValueError(f"prose: dim_emb ({dim_emb}) must be a multiple of n_heads ({n_heads})")
        if min(n_data_enc_layers, n_data_dec_layers) < 1 or \
                (text_input and min(n_text_enc_layers, n_fusion_layers, n_text_dec_layers) < 1):
            raise ValueError("prose: every block needs >= 1 layer (text encoder, fusion and symbol decoder only when "
                             "text_input)")
        if not 1 <= max_dim <= 3:
            raise ValueError(f"prose: max_dim must be 1..3, got {max_dim}")
        if not 1 <= float_precision <= 4:  # the vocabulary holds 9 x 10^(float_precision - 1) mantissa tokens
            raise ValueError(f"prose: float_precision must be 1..4, got {float_precision}")
        if not layer_norm_eps > 0:
            raise ValueError(f"prose: layer_norm_eps must be > 0, got {layer_norm_eps}")
        if data_loss_weight < 0 or text_loss_weight < 0 or warmup_steps < 0:
            raise ValueError("prose: loss weights and warmup_steps must be >= 0")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.tokenizer = SymbolicTokenizer(max_dim=max_dim, float_precision=float_precision)
        self.model = PROSE(len(self.tokenizer), self.tokenizer.pad_id, max_dim, dim_emb, n_heads, dim_ffn,
                           n_text_enc_layers, n_data_enc_layers, n_fusion_layers, n_data_dec_layers,
                           n_text_dec_layers, dropout, max(max_gen_len, 200), text_input, split_features,
                           data_decoder_attn, norm_first, layer_norm_eps)
        self.symbolic = nn.ModuleDict({f"{split}_{name}": SymbolicAccuracy() for split in ("val", "test")
                                       for name in ("symbol_token_acc", "valid_frac", "skeleton_acc")})
        self.text_rel_l2 = nn.ModuleDict({split: MeanMetric(nan_strategy="ignore") for split in ("val", "test")})
        self._sample: dict[str, Any] | None = None

    def forward(self, batch: dict[str, Tensor], keep: dict | None = None) -> tuple[Tensor, Tensor | None]:
        text_in = batch["text_in"] if self.hparams.text_input else None
        return self.model(batch["data_in"], batch["t_in"], batch["t_out"], text_in, batch.get("text_out"), keep)

    def _losses(self, batch: dict[str, Tensor],
                keep: dict | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(mse, ce, pred, logits, text target, the training data loss: `data_loss`); ce 0 and logits None for the
        data-only model (no symbol decoder). `keep`: as `PROSE.forward`'s."""
        pred, logits = self(batch, keep)  # under the trainer's autocast (bf16-mixed on GPUs)
        with torch.autocast(self.device.type, enabled=False):  # the data loss and the symbols' CE in fp32 (card)
            pred = pred.float()
            mask = batch["dim_mask"][:, None, :].expand_as(pred).float()
            sq = (pred - batch["target"]) ** 2 * mask
            mse = sq.sum() / mask.sum()
            # the training data loss: official trainer.enc_dec_step weighs sample i by 1 / (||y_i||^2 + 1e-5) / B,
            # a per-sample relative squared error averaged over the batch; "mse": the mean over all elements
            data = mse if self.hparams.data_loss == "mse" else (
                sq.sum((1, 2)) / ((batch["target"] ** 2 * mask).sum((1, 2)) + 1e-5)).mean()
            tgt = batch["text_out"][:, 1:]
            if logits is None:
                return mse, pred.new_zeros(()), pred, None, tgt, data
            logits = logits.float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                 ignore_index=self.tokenizer.pad_id)
        return mse, ce, pred, logits, tgt, data

    def _trained_loss(self, data: Tensor, ce: Tensor) -> Tensor:
        """data_loss_weight x data + text_loss_weight x CE; the data-only model trains on the data loss alone
        (official enc_dec_step: `loss = data_loss` with --no_text)."""
        if not self.hparams.text_input:
            return data
        return self.hparams.data_loss_weight * data + self.hparams.text_loss_weight * ce

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        mse, ce, *_, data = self._losses(batch)
        loss = self._trained_loss(data, ce)
        bs = batch["data_in"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/mse", mse, on_step=True, on_epoch=False, batch_size=bs, sync_dist=True)
        if self.hparams.text_input:
            self.log("train/ce", ce, on_step=True, on_epoch=False, batch_size=bs, sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str, batch_idx: int) -> None:
        kept: dict = {}
        mse, ce, pred, logits, tgt, data = self._losses(batch, kept)
        bs = pred.shape[0]
        mask = batch["dim_mask"][:, None, :].float()
        scale = batch["scale"][:, None, :]
        err = (((pred - batch["target"]) * scale) ** 2 * mask).sum((1, 2))
        ref = ((batch["target"] * scale) ** 2 * mask).sum((1, 2))
        rel_l2 = (err.sqrt() / ref.sqrt().clamp_min(1e-8)).mean()
        log = functools.partial(self.log, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        log(f"{split}/rel_l2", rel_l2, prog_bar=True)
        log(f"{split}/mse", mse)
        log(f"{split}/loss", self._trained_loss(data, ce))  # as trained
        ids = None
        if logits is not None:  # the symbol decoder: teacher-forced tokens and greedy decoding of the expression
            log(f"{split}/ce", ce)
            ids = self._symbolic_metrics(batch, split, batch_idx, logits, tgt, *kept["symbol_memory"])
        if batch_idx == 0:
            s = batch["scale"][0].cpu()
            self._sample = {"split": split, "rel_l2": float(err[0].sqrt() / ref[0].sqrt().clamp_min(1e-8)),
                            "true": self.tokenizer.decode(batch["text_out"][0].cpu()),
                            "t_in": batch["t_in"][0].cpu(), "t_out": batch["t_out"][0].cpu(),
                            "data_in": batch["data_in"][0].cpu() * s, "target": batch["target"][0].cpu() * s,
                            "pred": pred[0].detach().cpu() * s, "dims": int(batch["dim_mask"][0].sum()),
                            "generated": "" if ids is None else " ".join(self.tokenizer.ids_to_tokens(ids[0])),
                            "expr": None if ids is None else self.tokenizer.decode(ids[0])}

    def _symbolic_metrics(self, batch: dict[str, Tensor], split: str, batch_idx: int, logits: Tensor,
                          tgt: Tensor, memory: Tensor, pad: Tensor) -> Tensor:
        """Teacher-forced token accuracy, greedy decodes from the symbol decoder's memory of the same forward pass
        (valid prefix expressions, exact skeletons, text_rel_l2); returns the decoded ids."""
        bs = logits.shape[0]
        keep = tgt != self.tokenizer.pad_id
        token_hits = (logits.argmax(-1) == tgt)[keep]
        ids = self.model.generate(memory, pad, self.tokenizer.bos_id, self.tokenizer.eos_id,
                                  self.hparams.max_gen_len).cpu()
        valid, skeleton = torch.zeros(bs, dtype=torch.bool), torch.zeros(bs, dtype=torch.bool)
        # seeded by the batch's index in the whole set (`batch_index`: under DDP a rank's batch_idx counts its share)
        rng = np.random.default_rng(int(batch["batch_index"][0]) if "batch_index" in batch else batch_idx)
        for i in range(bs):
            expr = self.tokenizer.decode(ids[i])
            true = self.tokenizer.decode(batch["text_out"][i].cpu())
            points = rng.uniform(-5.0, 5.0, size=(50, int(batch["dim_mask"][i].sum())))
            if expr is not None:
                valid[i] = True
                skeleton[i] = self.tokenizer.skeleton(expr) == self.tokenizer.skeleton(true)
                err = expression_rel_l2(expr, true, points) if true is not None else None
                if err is not None:
                    self.text_rel_l2[split].update(torch.tensor(err))
        for name, correct in (("symbol_token_acc", token_hits), ("valid_frac", valid), ("skeleton_acc", skeleton)):
            metric = self.symbolic[f"{split}_{name}"]
            metric.update(correct)
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True)
        return ids

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "test", batch_idx)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        warmup = self.hparams.warmup_steps
        if not warmup:
            return optimizer
        # inverse-sqrt schedule with linear warm-up (paper: 20k warm-up steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, math.sqrt(warmup / (s + 1))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _log_text_rel_l2(self, split: str) -> None:
        """Epoch value of text_rel_l2; not logged when no decode of the epoch could be evaluated (e.g. untrained)."""
        metric = self.text_rel_l2[split]
        with warnings.catch_warnings():  # every rank computes (a DDP sync), so all agree on logging or not
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            value = metric.compute()
        if torch.isfinite(value):
            self.log(f"{split}/text_rel_l2", value)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_text_rel_l2("val")

    def on_test_epoch_end(self) -> None:
        self._log_text_rel_l2("test")

    def figures(self) -> dict[str, Any]:
        """{"trajectory": input data, true and predicted query window; with the generated expression
        integrated from the first query point when it parses (text_ode_solve). Each panel's title gives the true and
        the generated right-hand side of its component; the figure's, the split and the sample's rel L2}."""
        if self._sample is None:
            return {}
        import matplotlib.pyplot as plt

        s = self._sample
        d = s["dims"]
        fig, axes = plt.subplots(d, 1, figsize=(7, 1.2 + 1.9 * d), sharex=True, squeeze=False)
        sym = None
        if s["expr"] is not None and len(s["expr"]) == d:
            from lit_models.dynamics.prose_symbolic import eval_rhs

            t = s["t_out"].numpy().astype(np.float64)
            u = s["target"][0].numpy().astype(np.float64)[:d]
            sym = [u]
            with np.errstate(all="ignore"):
                for k in range(1, len(t)):  # RK4 with 10 sub-steps between query times, fp64
                    h = (t[k] - t[k - 1]) / 10
                    for _ in range(10):
                        k1 = eval_rhs(s["expr"], u)
                        k2 = eval_rhs(s["expr"], u + h / 2 * k1)
                        k3 = eval_rhs(s["expr"], u + h / 2 * k2)
                        k4 = eval_rhs(s["expr"], u + h * k3)
                        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
                    sym.append(u)
            sym = np.stack(sym)
        for i, ax in enumerate(axes[:, 0]):
            ax.plot(s["t_in"], s["data_in"][:, i], ".", color="0.5", ms=3, label="input data")
            ax.plot(s["t_out"], s["target"][:, i], color="k", lw=1.2, label="truth")
            ax.plot(s["t_out"], s["pred"][:, i], color="C3", lw=1.2, label="PROSE data decoder")
            if sym is not None:
                ax.plot(s["t_out"], sym[:, i], "--", color="C0", lw=1, label="generated expression")
            ax.set_ylabel(f"x_{i}")
        axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # outside: not over the data
        from lit_models.dynamics.prose_symbolic import format_expression

        # per component: the true right-hand side above the decoded one (format_expression: "dx_i/dt = ...; ...")
        true = format_expression(s["true"]).split("; ") if s["true"] is not None else []
        gen = format_expression(s["expr"]).split("; ") if s["expr"] is not None else []
        for i, ax in enumerate(axes[:, 0]):
            lines = [f"true: {true[i]}" if i < len(true) else "true: (not decodable)"]
            if i < len(gen):
                lines.append(f"generated: {gen[i]}")
            elif s["expr"] is None and s["generated"] and i == 0:  # its raw tokens
                lines.append(f"generated, invalid expression: {s['generated']}")
            elif s["expr"] is not None:
                lines.append("generated: (no such component)")
            # long lines wrap at spaces (between tokens), not cut inside one
            wrapped = [textwrap.fill(line, 110, break_long_words=False, max_lines=3, placeholder=" ...",
                                     subsequent_indent="    ") for line in lines]
            ax.set_title("\n".join(wrapped), fontsize=7, loc="left")
        fig.suptitle(f"PROSE {s['split']} sample 0: data decoder rel L2 = {s['rel_l2']:.3g}", fontsize=9)
        axes[-1, 0].set_xlabel("t")
        fig.tight_layout()
        return {"trajectory": fig}
