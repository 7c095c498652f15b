"""iTransformer (Liu et al., ICLR 2024, arXiv 2310.06625): the Transformer encoder applied to inverted tokens.

From a lookback X in R^{L x N} predict Y in R^{S x N}. Each variate's whole lookback x_n in R^L is one token:
h_n^0 = Embedding(x_n) (one Linear(L -> D) shared by all variates, Eq. 1), then e_layers encoder layers
H^{l+1} = TrmBlock(H^l) = LayerNorm(H + FFN(LayerNorm(H + SelfAttn(H)))) over the N tokens (post-norm as the
official `EncoderLayer`; a final LayerNorm after the stack), and Y_hat_n = Projection(h_n^L) (Linear(D -> S)).
No positional encoding: the model is permutation-equivariant in the variates. Instance normalisation
(`use_norm`, from Non-stationary Transformer): per window and variate, subtract the lookback mean (detached, as
the official code) and divide by sqrt(biased var + 1e-5); undo both on the output. Optional timestamp covariates
x_mark (B x L x F) become F extra tokens whose outputs are dropped ([:, :, :N]).
Official code: thuml/iTransformer (`model/iTransformer.py`, `layers/Transformer_EncDec.py`); the FFN there is
two Conv1d(kernel_size=1) layers, written here as the equivalent nn.Linear layers.

Ablation (paper Table 3, "w/o" attention on the variate dimension; card check 1): `use_attention=False` removes
the attention sub-layer, so each layer is H <- LayerNorm(H) then the FFN sub-layer: every token is processed on
its own (channel-independent) with the same parameters otherwise.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from launch.errors import UserError, check_min


class InvertedEmbedding(nn.Module):
    """`DataEmbedding_inverted`: B x L x N (+ marks B x L x F) -> tokens B x (N + F) x D."""

    def __init__(self, seq_len: int, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.value_embedding = nn.Linear(seq_len, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        x = x.permute(0, 2, 1)  # variates become tokens
        if x_mark is not None:
            x = torch.cat([x, x_mark.permute(0, 2, 1)], dim=1)
        return self.dropout(self.value_embedding(x))


class FullAttentionLayer(nn.Module):
    """`AttentionLayer(FullAttention(mask_flag=False))`: multi-head softmax attention, scale 1/sqrt(d_k),
    dropout on the attention weights, no mask, no positional information."""

    def __init__(self, d_model: int, n_heads: int, attention_dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)
        self.attention_dropout = attention_dropout

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.n_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)  # B x H x N x d_k

        q, k, v = heads(self.query_projection(x)), heads(self.key_projection(x)), heads(self.value_projection(x))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attention_dropout if self.training else 0.0)
        return self.out_projection(out.transpose(1, 2).reshape(b, n, d))

    def attention_map(self, x: Tensor) -> Tensor:
        """B x H x N x N attention weights (the multivariate correlations the paper visualises)."""
        b, n, d = x.shape
        h = self.n_heads
        q = self.query_projection(x).view(b, n, h, d // h).transpose(1, 2)
        k = self.key_projection(x).view(b, n, h, d // h).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)


class EncoderLayer(nn.Module):
    """Official `EncoderLayer`: x = norm1(x + drop(attn(x))); y = drop(W2 drop(act(W1 x))); out = norm2(x + y)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1, activation: str = "gelu",
                 use_attention: bool = True) -> None:
        super().__init__()
        self.attention = FullAttentionLayer(d_model, n_heads, dropout) if use_attention else None
        self.conv1 = nn.Linear(d_model, d_ff)  # Conv1d(d_model, d_ff, 1) in the official code
        self.conv2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.activation = F.relu if activation == "relu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        if self.attention is not None:
            x = x + self.dropout(self.attention(x))
        y = x = self.norm1(x)
        y = self.dropout(self.activation(self.conv1(y)))
        y = self.dropout(self.conv2(y))
        return self.norm2(x + y)


class ITransformer(nn.Module):
    """The forecaster: B x L x N (+ optional marks B x L x F) -> B x S x N."""

    def __init__(self, seq_len: int = 96, pred_len: int = 96, d_model: int = 512, n_heads: int = 8,
                 e_layers: int = 2, d_ff: int = 2048, dropout: float = 0.1, activation: str = "gelu",
                 use_norm: bool = True, use_attention: bool = True) -> None:
        super().__init__()
        self.seq_len, self.pred_len, self.use_norm = seq_len, pred_len, use_norm
        self.enc_embedding = InvertedEmbedding(seq_len, d_model, dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout, activation, use_attention) for _ in range(e_layers))
        self.norm = nn.LayerNorm(d_model)
        self.projector = nn.Linear(d_model, pred_len, bias=True)

    def encode(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        """Token representations B x (N + F) x D after the encoder (input already normalised)."""
        h = self.enc_embedding(x, x_mark)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        if x.shape[1] != self.seq_len:
            raise ValueError(f"expected a lookback of {self.seq_len} steps, got input of shape {tuple(x.shape)}")
        n = x.shape[-1]
        if self.use_norm:
            means = x.mean(1, keepdim=True).detach()
            x = x - means
            stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
            x = x / stdev
        out = self.projector(self.encode(x, x_mark)).permute(0, 2, 1)[:, :, :n]  # B x S x N
        if self.use_norm:
            out = out * stdev + means
        return out


def type1_lr_schedule(optimizer: torch.optim.Optimizer, gamma: float = 0.5) -> torch.optim.lr_scheduler.LambdaLR:
    """The official `lradj=type1` (utils/tools.adjust_learning_rate, called with epoch + 1 after each epoch): epoch e
    (0-based) runs at lr * gamma ** max(0, e - 1), i.e. the first two epochs at lr, then halved every epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: gamma ** max(0, epoch - 1))


# official run.py: Adam lr 1e-4; lradj=type1 (see type1_lr_schedule)
DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=1e-4)
DEFAULT_SCHEDULER = type1_lr_schedule


class ITransformerModule(L.LightningModule):
    """iTransformer trained with MSE on z-scored windows; MSE/MAE metrics (and per variate group, e.g. the
    offline default's followers: `val/mse_follower`, `test/mse_follower`).

    Defaults are the official `run.py` values (d_model 512, n_heads 8, e_layers 2, d_ff 2048, dropout 0.1,
    gelu, use_norm 1, Adam lr 1e-4, `lradj=type1`: lr halved every epoch from the third); `scheduler=None` keeps lr
    constant.
    `setup` reads the datamodule's `variate_groups` (name -> variate indices) for the per-group MSE.
    """

    def __init__(
        self,
        seq_len: int = 96,
        pred_len: int = 96,
        d_model: int = 512,
        n_heads: int = 8,
        e_layers: int = 2,
        d_ff: int = 2048,
        dropout: float = 0.1,
        activation: str = "gelu",
        use_norm: bool = True,
        use_attention: bool = True,
        optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER,
        scheduler: Callable[..., Any] | None = DEFAULT_SCHEDULER,
    ) -> None:
        super().__init__()
        check_min("model", 1, seq_len=seq_len, pred_len=pred_len, d_model=d_model, n_heads=n_heads, d_ff=d_ff)
        check_min("model", 0, e_layers=e_layers)  # 0: embedding + projection only
        check_min("model", 0, dropout=dropout)
        if not dropout < 1:
            raise UserError(f"model.dropout is a probability: it must lie in [0, 1), got {dropout!r}")
        if scheduler is not None and not callable(scheduler):
            raise UserError(f"model.scheduler must be null (constant lr) or a scheduler factory (a config with "
                            f"_target_ and _partial_: true), got {scheduler!r}")
        # optimizer/scheduler factories stay out of the checkpoint (weights_only loading)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.model = ITransformer(seq_len, pred_len, d_model, n_heads, e_layers, d_ff, dropout, activation,
                                  use_norm, use_attention)
        self.val_mse, self.val_mae = MeanSquaredError(), MeanAbsoluteError()
        self.test_mse, self.test_mae = MeanSquaredError(), MeanAbsoluteError()
        self.group_metrics = nn.ModuleDict()
        self.variate_groups: dict[str, list[int]] = {}
        # for the figure: the datamodule's variate names, its target column's index, whether values are z-scored
        self.variate_names: list[str] = []
        self.target_variate: int | None = None
        self.values_scaled = True
        self._sample: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        # variate groups with their own MSE (offline default: leaders / followers); Lightning sets the
        # datamodule up before the module
        dm = self.trainer.datamodule if self._trainer is not None else None
        self.variate_groups = {g: list(idx) for g, idx in (getattr(dm, "variate_groups", None) or {}).items()}
        self.variate_names = [str(n) for n in (getattr(dm, "variate_names", None) or [])]
        target = getattr(getattr(dm, "spec", None), "target", None)
        self.target_variate = self.variate_names.index(target) if target in self.variate_names else None
        self.values_scaled = bool(getattr(dm, "scale", True))
        for g in self.variate_groups:
            for split in ("val", "test"):
                key = f"{split}_mse_{g}"
                if key not in self.group_metrics:
                    self.group_metrics[key] = MeanSquaredError().to(self.device)

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        return self.model(x, x_mark)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        pred = self(batch["x"], batch.get("x_mark"))
        loss = F.mse_loss(pred.float(), batch["y"].float())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(pred),
                 sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str, batch_idx: int) -> None:
        pred, y = self(batch["x"], batch.get("x_mark")).float(), batch["y"].float()
        mse, mae = (self.val_mse, self.val_mae) if split == "val" else (self.test_mse, self.test_mae)
        mse.update(pred.reshape(-1), y.reshape(-1))
        mae.update(pred.reshape(-1), y.reshape(-1))
        self.log(f"{split}/mse", mse, on_step=False, on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/mae", mae, on_step=False, on_epoch=True)
        for g, idx in self.variate_groups.items():
            metric = self.group_metrics[f"{split}_mse_{g}"]
            metric.update(pred[..., idx].reshape(-1), y[..., idx].reshape(-1))
            self.log(f"{split}/mse_{g}", metric, on_step=False, on_epoch=True)
        if batch_idx == 0:  # the figure shows the first window of the latest val/test pass
            self._sample = {"x": batch["x"][:1].detach().float().cpu(), "y": y[:1].detach().cpu(),
                            "pred": pred[:1].detach().cpu(), "split": split}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "test", batch_idx)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        # lradj type1, stepped once per epoch
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "epoch"}}

    def figures(self) -> dict[str, Any]:
        """{"forecast": lookback + truth vs forecast for up to 4 variates of one held-out window (a leader/follower
        pair first where the data has them, the target column, e.g. ETT's OT, where it has one), named as in the data,
        with the split's MSE when it was logged}."""
        if self._sample is None:
            return {}
        import matplotlib.pyplot as plt

        from lit_models.common.plotting import logged_metric

        x, y, pred = self._sample["x"][0], self._sample["y"][0], self._sample["pred"][0]
        split = self._sample.get("split", "val")
        n = x.shape[-1]
        names = self.variate_names if len(self.variate_names) == n else [f"var {i}" for i in range(n)]
        pair = [self.variate_groups[g][0] for g in ("leader", "follower") if self.variate_groups.get(g)]
        target = [self.target_variate] if self.target_variate is not None and self.target_variate < n else []
        rest = [i for i in range(n) if i not in pair + target][: max(0, 4 - len(pair) - len(target))]
        picks = (pair + sorted(rest) + target)[:4]  # a leader/follower pair on top, the target column at the bottom
        fig, axes = plt.subplots(len(picks), 1, figsize=(8, 1.2 + 1.8 * len(picks)), sharex=True, squeeze=False)
        L_, S = x.shape[0], y.shape[0]
        t_in, t_out = torch.arange(-L_, 0), torch.arange(0, S)
        unit = "scaled" if self.values_scaled else "raw"
        for ax, i in zip(axes[:, 0], picks):
            ax.plot(t_in, x[:, i], color="0.5", lw=1, label="lookback")
            ax.plot(t_out, y[:, i], color="k", lw=1.2, label="truth")
            ax.plot(t_out, pred[:, i], color="C3", lw=1.2, label="iTransformer")
            group = next((g for g, idx in self.variate_groups.items() if i in idx and not names[i].startswith(g)), None)
            role = " (target)" if i == self.target_variate else ""
            ax.set_ylabel(f"{names[i]}{role}\n({unit})" + (f"\n{group}" if group else ""), fontsize=8)
        axes[0, 0].legend(loc="upper left", fontsize=7, ncol=3)
        axes[-1, 0].set_xlabel("time step (0 = forecast start)")
        mse = logged_metric(self, f"{split}/mse")
        scores = f"; {split} MSE {mse:.3g}" if mse is not None else ""
        fig.suptitle(f"iTransformer, first {split} window: {len(picks)} of {n} variates shown ({unit} values){scores}",
                     fontsize=9)
        fig.tight_layout()
        return {"forecast": fig}
