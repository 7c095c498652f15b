"""MgNO: Efficient Parameterization of Linear Operators via Multigrid (He, Liu, Xu; ICLR 2024, arXiv 2310.19809).

A neural operator written like an MLP whose weights are operators (paper Sec. 3, Eq. of the operator layer):
    O(u) = sigma( W u + K u + B ),
with W all linear operators between the channels of one layer parameterised at once by a multi-channel multigrid
V-cycle (MgNet-style, paper Sec. 4 / Alg. 1), K a 1 x 1 convolution (the official `MgNO_DC` adds it) and B a learnable
bias *function* (a per-pixel field on the grid, `bias_field=True`; the paper's B_ij is a function).

V-cycle (`MgConv`), input f (c_f channels), unknown u (c_u channels):
- level l, pre-smoothing: u <- u + S_l(f - A_l u) (the very first iteration on the finest level is u = S(f));
  A: c_u -> c_f and S: c_f -> c_u are 3 x 3 convolutions without bias;
- restriction: u <- Pi(u), f <- R(f) (`use_res=True`: R(f - A u)), 3 x 3 stride-2 convolutions;
- back up: u_l <- u_l + R^T(u_{l+1}) with a 4 x 4 stride-2 transposed convolution (cropped to the fine size when
  it is odd; the coarse grid is padded with `padding_mode` first, so R^T respects the boundary condition as well),
  then `post` smoothing iterations; the NS variant adds a LayerNorm after each prolongation
  (`layer_norm=True`). The coarsest level has pre-smoothings only (the official forward never runs a coarsest
  post-smoother), so its token must be "p0".
The level spec is the official `--num_iteration`: one [pre, post] pair per level, written "10" for [1, 0]
(two digits, not the number ten). Every convolution uses `padding_mode` (zeros: Dirichlet, circular: periodic).
No lifting or projection network: the first layer reads the raw input channels; a final 1 x 1 conv reads out.
Loss: relative H1 (paper default for Darcy, FNO's `HsLoss` with k = 1: Fourier weights sqrt(1 + |k|^2)) or relative L2.
A single level (`levels=[[1, 0]]`) is the baseline: a plain 3 x 3 convolution stack with the same layout.
Per-benchmark variants (configs/experiment/mgno/*.yaml, official `models.py`): MgNO_DC (Darcy, pipe: zero padding,
1 x 1 branch, no bias field), MgNO_NS (`padding_mode=circular`, `layer_norm`, `skip`, `pointwise=False`,
`conv_bias=True`; evaluated by the autoregressive `rollout` u_{t+1} = MgNO(u_t) when the target has T > 1 frames).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from launch.errors import UserError, check_positive
from lit_models.common.pde import RelativeL2, relative_l2
from lit_models.pde.mgno_helm import MgNOHelm, fd_h1_error

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
PROLONGATION_PADDINGS = ("same", "zeros")  # R^T: padded as the other convolutions, or with zeros (official MgNO_NS)


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


def parse_levels(levels: Sequence[Any] | str) -> list[list[int]]:
    """Level spec -> [[pre, post], ...]. Accepts pairs, two-digit tokens ("10", 10 -> [1, 0]) or a string
    "10 10 20"."""
    if isinstance(levels, str):
        levels = levels.split()
    out = []
    for tok in levels:
        if isinstance(tok, (list, tuple)) or (hasattr(tok, "__len__") and not isinstance(tok, str)):
            pair = [int(t) for t in tok]
        else:
            s = str(tok)
            if len(s) != 2 or not s.isdigit():
                raise ValueError(f"model.levels: level token {tok!r} must be two digits 'pq' (p pre-, q "
                                 f"post-smoothings), e.g. '10'")
            pair = [int(s[0]), int(s[1])]
        if len(pair) != 2 or min(pair) < 0:
            raise ValueError(f"model.levels: level {tok!r} must be a [pre, post] pair of non-negative counts")
        out.append(pair)
    if not out:
        raise ValueError("model.levels: at least one level is required")
    if out[0][0] < 1:
        raise ValueError("model.levels: the finest level needs at least one pre-smoothing (u = S(f) starts the cycle)")
    return out


def _conv3(cin: int, cout: int, padding_mode: str, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias, padding_mode=padding_mode)


class MgIte(nn.Module):
    """One smoothing iteration u <- u + S(f - A u); with `first=True` (no A) u = S(f)."""

    def __init__(self, c_u: int, c_f: int, padding_mode: str, first: bool = False, bias: bool = False) -> None:
        super().__init__()
        self.S = _conv3(c_f, c_u, padding_mode, bias=bias)
        self.A = None if first else _conv3(c_u, c_f, padding_mode, bias=bias)

    def forward(self, u: Tensor | None, f: Tensor) -> Tensor:
        if self.A is None or u is None:
            return self.S(f)
        return u + self.S(f - self.A(u))


class Restrict(nn.Module):
    """u <- Pi(u), f <- R(f) or R(f - A u) (`use_res`): 3 x 3 stride-2 convolutions. As the official MgConv_DC,
    Pi and R never have a bias and the residual's A (stride 1) has one when the smoothers do (`bias`)."""

    def __init__(self, c_u: int, c_f: int, padding_mode: str, use_res: bool = False, bias: bool = False) -> None:
        super().__init__()
        self.Pi = _conv3(c_u, c_u, padding_mode, stride=2)
        self.R = _conv3(c_f, c_f, padding_mode, stride=2)
        self.A = _conv3(c_u, c_f, padding_mode, bias=bias) if use_res else None

    def forward(self, u: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        f = self.R(f - self.A(u)) if self.A is not None else self.R(f)
        return self.Pi(u), f


def prolongation_kernels(n_levels: int, resolution: int | None, kind: int | str = 4) -> list[int]:
    """Kernel size of each level's R^T (finest first): `kind` 4 (MgNO_DC) or "auto" (MgNO_DC_smooth: 3 where the
    finer level has an odd number of nodes, 4 where even; level sizes n_{l+1} = ceil(n_l / 2))."""
    if kind == 4:
        return [4] * (n_levels - 1)
    if kind != "auto":
        raise ValueError(f"prolongation_kernel must be 4 or 'auto', got {kind!r}")
    if resolution is None:
        raise ValueError("prolongation_kernel='auto' needs the grid resolution")
    sizes = [resolution]
    for _ in range(n_levels - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return [3 if size % 2 else 4 for size in sizes[:-1]]


class MgConv(nn.Module):
    """The multigrid V-cycle that parameterises all linear operators of one layer (paper Alg. 1, `MgConv_DC`)."""

    def __init__(self, levels: Sequence[Sequence[int]], c_u: int, c_f: int, padding_mode: str = "zeros",
                 use_res: bool = False, layer_norm: bool = False, resolution: int | None = None,
                 conv_bias: bool = False, prolongation_kernel: int | str = 4,
                 prolongation_padding: str = "same") -> None:
        super().__init__()
        if prolongation_padding not in PROLONGATION_PADDINGS:
            raise ValueError(f"prolongation_padding must be one of {PROLONGATION_PADDINGS}, "
                             f"got {prolongation_padding!r}")
        self.levels = [list(p) for p in levels]
        if self.levels and self.levels[-1][1]:
            # official MgConv / MgConv_DC build post_smooth_layer{L-1} but their forward never reaches it: the
            # coarsest level's pre-smoothing is the coarse solve
            raise ValueError(f"the coarsest level has no post-smoothing in the official V-cycle: its token must be "
                             f"'p0' (pre-smoothings only), got {self.levels[-1]}")
        self.pre = nn.ModuleList()
        self.post = nn.ModuleList()
        self.restrict = nn.ModuleList()
        for l, (n_pre, n_post) in enumerate(self.levels):
            self.pre.append(nn.ModuleList([MgIte(c_u, c_f, padding_mode, first=(l == 0 and i == 0), bias=conv_bias)
                                           for i in range(n_pre)]))
            self.post.append(nn.ModuleList([MgIte(c_u, c_f, padding_mode, bias=conv_bias) for _ in range(n_post)]))
            if l < len(self.levels) - 1:
                self.restrict.append(Restrict(c_u, c_f, padding_mode, use_res, bias=conv_bias))
        # R^T: 4 x 4 stride-2 transposed conv (2n nodes, cropped to the finer level). The coarse grid is padded by one
        # cell with the padding mode and the transposed conv crops 3 instead of 1, so that R^T follows the boundary
        # condition too (identical to the official padding=1 for zeros). The official code has no circular R^T: its
        # MgNO_NS pads every convolution circularly but R^T with zeros, which `prolongation_padding="zeros"` gives.
        # prolongation_kernel="auto" (official MgConv_DC_smooth): 3 x 3 onto odd levels (2n - 1 nodes, no crop, the
        # symmetric stencil of nested vertex grids), 4 x 4 onto even ones
        self.prolong_pad = "constant" if "zeros" in (padding_mode, prolongation_padding) else padding_mode
        self.prolong = nn.ModuleList([nn.ConvTranspose2d(c_u, c_u, k, stride=2, padding=3, bias=False)
                                      for k in prolongation_kernels(len(self.levels), resolution, prolongation_kernel)])
        self.norms = nn.ModuleList()
        if layer_norm:
            if resolution is None:
                raise ValueError("layer_norm needs the grid resolution")
            size = resolution
            for _ in range(len(self.levels) - 1):
                self.norms.append(nn.LayerNorm([c_u, size, size]))
                size = (size + 1) // 2

    def forward(self, f: Tensor) -> Tensor:
        u: Tensor | None = None
        states: list[tuple[Tensor, Tensor]] = []
        for l in range(len(self.levels)):
            if l > 0:
                u, f = self.restrict[l - 1](u, f)
            for it in self.pre[l]:
                u = it(u, f)
            states.append((u, f))
        u_coarse = states[-1][0]
        for l in range(len(self.levels) - 2, -1, -1):
            u, f = states[l]
            u = u + self.prolongate(l, u_coarse, u.shape[-2:])
            if len(self.norms):
                u = self.norms[l](u)
            for it in self.post[l]:
                u = it(u, f)
            u_coarse = u
        return u_coarse

    def prolongate(self, level: int, u_coarse: Tensor, size: Sequence[int]) -> Tensor:
        """R^T from level + 1 onto `level` (`size` nodes a side): the coarse grid padded by one cell, the transposed
        convolution, cropped to the finer grid."""
        padded = F.pad(u_coarse, (1, 1, 1, 1), mode=self.prolong_pad)
        return self.prolong[level](padded)[..., : size[0], : size[1]]


class MgNO(nn.Module):
    """Stack of `num_layer` operator layers u <- GELU(MgConv(u) + Conv1x1(u) + B) and a 1 x 1 read-out
    (official `MgNO_DC`; B a bias field when `bias_field`; `pointwise=False` drops the 1 x 1 branch as the official
    `MgNO_NS`, `conv_bias=True` gives the smoothers S, A (and `use_res`'s A) a per-channel bias, the NS `--bias`;
    `prolongation_kernel="auto"` the 3 x 3 / 4 x 4 prolongations of `MgNO_DC_smooth`; `prolongation_padding="zeros"`
    the zero-padded R^T of `MgNO_NS` under circular padding, "same": R^T padded as every other convolution).
    `skip=True` adds the NS global skip u_out + u_in."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, num_layer: int = 5, num_channel_u: int = 24,
                 levels: Sequence[Any] | str = ("10", "10", "10", "10", "10", "20"), padding_mode: str = "zeros",
                 use_res: bool = False, layer_norm: bool = False, bias_field: bool = True, resolution: int = 64,
                 activation: str = "gelu", skip: bool = False, pointwise: bool = True,
                 conv_bias: bool = False, prolongation_kernel: int | str = 4,
                 prolongation_padding: str = "same") -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if num_layer < 1 or num_channel_u < 1 or in_channels < 1:
            raise ValueError("num_layer, num_channel_u and in_channels must be >= 1")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        lv = parse_levels(levels)
        if resolution < 2 ** (len(lv) - 1):
            raise ValueError(f"{len(lv)} levels need a grid of at least {2 ** (len(lv) - 1)} points, got {resolution}")
        coarsest = -(-resolution // 2 ** (len(lv) - 1))  # the stride-2 restrictions: n -> ceil(n / 2) each
        if padding_mode == "reflect" and coarsest < 2:
            raise ValueError(f"padding_mode=reflect needs a coarsest grid of at least 2 x 2 points (a 1 x 1 grid has "
                             f"nothing to reflect): {len(lv)} levels on {resolution} points end at {coarsest}; use "
                             "fewer levels, a finer grid or another padding_mode")
        if skip and in_channels != out_channels:
            raise ValueError("skip=True needs in_channels == out_channels")
        self.levels, self.resolution, self.skip = lv, resolution, skip
        chans = [in_channels] + [num_channel_u] * num_layer
        self.convs = nn.ModuleList([MgConv(lv, num_channel_u, chans[i], padding_mode, use_res, layer_norm, resolution,
                                           conv_bias, prolongation_kernel, prolongation_padding)
                                    for i in range(num_layer)])
        self.linears = nn.ModuleList([nn.Conv2d(chans[i], num_channel_u, 1) for i in range(num_layer)]) \
            if pointwise else None
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num_channel_u, resolution, resolution))
                                        for _ in range(num_layer)]) if bias_field else None
        self.act = ACTIVATIONS[activation]()
        self.readout = nn.Conv2d(num_channel_u, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.biases is not None and tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            raise UserError(f"input grid {tuple(x.shape[-2:])} != the bias field's resolution {self.resolution}: a "
                            "model with model.bias_field=true runs at the resolution it was trained at")
        u = x
        for i, conv in enumerate(self.convs):
            z = conv(u)
            if self.linears is not None:
                z = z + self.linears[i](u)
            if self.biases is not None:
                z = z + self.biases[i]
            u = self.act(z)
        out = self.readout(u)
        return out + x if self.skip else out


def at_least_float32(t: Tensor) -> Tensor:
    """t upcast to float32 when it is half precision (FFTs and relative errors under mixed precision); float32 and
    float64 (64-true runs) pass through unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def h1_weighted_spectrum(u: Tensor, truncation: int | None = None) -> Tensor:
    """FFT of u (.., H, W) weighted by sqrt(1 + kx^2 + ky^2), integer wavenumbers (FNO `HsLoss`, k = 1, a = 1);
    real and imaginary parts stacked, so that relative L2 of this is the relative H1 error. `truncation` T: a
    wavenumber component with |k| >= T counts as 0 (the official `HsLoss(truncation=True)`, T = 20: such modes keep
    weight 1 in that direction)."""
    h, w = u.shape[-2:]
    kx = torch.fft.fftfreq(h, 1.0 / h, device=u.device)
    ky = torch.fft.fftfreq(w, 1.0 / w, device=u.device)
    if truncation is not None:
        kx, ky = kx * (kx.abs() < truncation), ky * (ky.abs() < truncation)
    weight = torch.sqrt(1 + kx[:, None] ** 2 + ky[None, :] ** 2)
    spec = torch.fft.fft2(at_least_float32(u)) * weight
    return torch.view_as_real(spec)


def relative_h1(pred: Tensor, target: Tensor, truncation: int | None = None) -> Tensor:
    """Per-sample relative H1 error (Fourier-weighted, as the paper's training loss; see `h1_weighted_spectrum`)."""
    return relative_l2(h1_weighted_spectrum(pred, truncation), h1_weighted_spectrum(target, truncation))


def boundary_ring(shape: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Mask (H, W) of the outer ring of max(1, H // 16) cells, where the boundary condition acts."""
    h, w = shape
    r = max(1, h // 16)
    m = torch.ones(h, w, device=device)
    m[r:h - r, r:w - r] = 0
    return m


def build_mgno_helm(in_channels: int, num_layer: int, num_channel_u: int, levels: Sequence[Any] | str,
                    resolution: int, activation: str, **darcy_only: bool) -> MgNOHelm:
    """`architecture="helm"`: the official MgNO_helm from the same level spec (pre-smoothings per level; it has no
    post-smoothing) and sizes. Its smoothers pad by reflection and its restrictions not at all, so padding_mode,
    pointwise, conv_bias and the prolongation options do not enter; the Darcy-only switches must stay off."""
    on = sorted(k for k, v in darcy_only.items() if v)
    if on:
        raise ValueError(f"architecture=helm has no {', '.join(on)} (official MgNO_helm): set them false")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    lv = parse_levels(levels)
    if any(post for _, post in lv):
        raise ValueError(f"architecture=helm has no post-smoothing: levels must be 'p0' tokens, got {levels}")
    iterations = [pre for pre, _ in lv]
    return MgNOHelm(in_channels, num_layer, num_channel_u, iterations, resolution, ACTIVATIONS[activation]())


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=5e-4, weight_decay=1e-4)


class MgNOModule(L.LightningModule):
    """Trains MgNO on coefficient -> solution pairs with the relative H1 (or L2) loss, Adam + OneCycle
    (div_factor 2, final_div_factor 100, pct_start 0.2), stepped per batch (`scheduler_interval="step"`) or, as the
    official scripts do (`OneCycleLR(steps_per_epoch=1, epochs=E)`, one `scheduler.step()` an epoch), once per
    epoch over trainer.max_epochs (`scheduler_interval="epoch"`, the paper-scale variants). `architecture="helm"`
    builds the official Helmholtz network (lit_models.pde.mgno_helm.MgNOHelm) instead of the MgNO_DC layers, and
    `loss="fd_h1"` is its absolute finite-difference H1 loss (helm.py's HSloss_d, batch mean). As in the official
    code the loss is the sum of the per-sample errors over the batch (`loss_reduction="sum"`, LpLoss /
    HsLoss(size_average=False); with Adam's coupled weight decay the loss scale matters) and the H1 weights are
    truncated at |k| = 20 (`h1_truncation`, also for the val/test H1 metric); "mean" and None are the CPU-scale
    experiments' choices.
    `output_normalizer` (official `--normalizer`, with `data.normalizer_type` GN or PGN): the network's output is
    decoded as out x std(x, y) + mean(x, y), the statistics of the training solutions (one value for GN, per grid point
    for PGN), so the loss compares raw solutions.
    Metrics: train/loss, val|test/rel_l2, val|test/rel_h1 (against the batch's y: solutions divided by one scale, so the
    relative errors are those in physical units, or raw solutions with the official normalisers) and
    val|test/boundary_rel_l2 (relative L2 on the outer ring of cells, `boundary_ring`)."""

    def __init__(self, in_channels: int = 1, num_layer: int = 5, num_channel_u: int = 24,
                 levels: Sequence[Any] | str = ("10", "10", "10", "10", "10", "20"), padding_mode: str = "zeros",
                 use_res: bool = False, layer_norm: bool = False, bias_field: bool = True, resolution: int = 64,
                 activation: str = "gelu", skip: bool = False, pointwise: bool = True, conv_bias: bool = False,
                 loss: str = "h1", loss_reduction: str = "sum", h1_truncation: int | None = 20,
                 div_factor: float = 2.0, final_div_factor: float = 100.0, pct_start: float = 0.2,
                 output_normalizer: bool = False, prolongation_kernel: int | str = 4,
                 prolongation_padding: str = "same", scheduler_interval: str = "step", architecture: str = "dc",
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER) -> None:
        super().__init__()
        if loss not in ("h1", "l2", "fd_h1"):
            raise ValueError(f"loss must be 'h1', 'l2' or 'fd_h1' (helm.py's absolute HSloss_d), got {loss!r}")
        if architecture not in ("dc", "helm"):
            raise ValueError(f"architecture must be 'dc' (MgNO_DC layers) or 'helm' (MgNO_helm), got {architecture!r}")
        if loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction must be 'sum' (official) or 'mean', got {loss_reduction!r}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch' (official), got {scheduler_interval!r}")
        if h1_truncation is not None and h1_truncation < 1:
            raise ValueError(f"h1_truncation must be >= 1 or null, got {h1_truncation}")
        # OneCycle: lr from max_lr / div_factor up to max_lr over the first pct_start of the run, then down to
        # max_lr / (div_factor x final_div_factor); torch refused these only when training started
        check_positive("model", div_factor=div_factor, final_div_factor=final_div_factor, pct_start=pct_start)
        if not pct_start < 1:
            raise UserError(f"model.pct_start is the warm-up's share of the OneCycle schedule: it must lie in (0, 1), "
                            f"got {pct_start!r}")
        if isinstance(levels, (list, tuple)):
            levels = [list(p) if isinstance(p, (list, tuple)) else p for p in levels]
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        if architecture == "helm":
            self.net = build_mgno_helm(in_channels, num_layer, num_channel_u, levels, resolution, activation,
                                       bias_field=bias_field, skip=skip, use_res=use_res, layer_norm=layer_norm)
        else:
            self.net = MgNO(in_channels, 1, num_layer, num_channel_u, levels, padding_mode, use_res, layer_norm,
                            bias_field, resolution, activation, skip, pointwise, conv_bias, prolongation_kernel,
                            prolongation_padding)
        if output_normalizer:  # the training solutions' mean / std fields (std + 1e-5), set from the data at fit start
            self.register_buffer("y_mean", torch.zeros(resolution, resolution))
            self.register_buffer("y_std", torch.ones(resolution, resolution))
        self.metrics = nn.ModuleDict({f"{s}_{m}": RelativeL2() for s in ("val", "test")
                                      for m in ("l2", "h1", "boundary_l2")})
        self._last: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out * self.y_std + self.y_mean if self.hparams.output_normalizer else out

    def on_fit_start(self) -> None:
        if not self.hparams.output_normalizer:
            return
        stats = getattr(self.trainer.datamodule, "output_stats", None)
        if stats is None:
            raise UserError("model.output_normalizer=true decodes the output with the statistics of the training "
                            "solutions: it needs data.normalizer_type=GN or PGN")
        mean, std = stats
        if tuple(mean.shape) != tuple(self.y_mean.shape):
            raise UserError(f"model.output_normalizer: data grid {tuple(mean.shape)} != model.resolution "
                            f"{tuple(self.y_mean.shape)}")
        self.y_mean.copy_(mean)
        self.y_std.copy_(std)

    def rollout(self, x: Tensor, steps: int) -> Tensor:
        """Autoregressive time stepping (NS benchmark, official `navier.py` test): u_{t+1} = MgNO(u_t) from the
        single input frame x (B, 1, H, W), `steps` frames stacked as channels (B, steps, H, W)."""
        if x.shape[1] != 1 or self.hparams.in_channels != 1:
            raise ValueError(f"rollout needs one input frame (in_channels=1), got {x.shape[1]} channels")
        frames, u = [], x
        for _ in range(steps):
            u = self(u)
            frames.append(u)
        return torch.cat(frames, dim=1)

    def predict(self, x: Tensor, y: Tensor) -> Tensor:
        """One-shot map, or the autoregressive rollout when the target has several frames (B, T > 1, H, W)."""
        return self.rollout(x, y.shape[1]) if y.shape[1] > 1 else self(x)

    def loss_fn(self, pred: Tensor, y: Tensor) -> Tensor:
        hp = self.hparams
        if hp.loss == "h1":
            err = relative_h1(pred, y, hp.h1_truncation)
        elif hp.loss == "fd_h1":
            err = fd_h1_error(at_least_float32(pred), at_least_float32(y))
        else:
            err = relative_l2(at_least_float32(pred), at_least_float32(y))
        return err.sum() if hp.loss_reduction == "sum" else err.mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        loss = self.loss_fn(self(batch["x"]), batch["y"])
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["x"]),
                 sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str, batch_idx: int) -> None:
        y = at_least_float32(batch["y"])
        pred = at_least_float32(self.predict(batch["x"], y))
        self.metrics[f"{split}_l2"].update(pred, y)
        trunc = self.hparams.h1_truncation
        self.metrics[f"{split}_h1"].update(h1_weighted_spectrum(pred, trunc), h1_weighted_spectrum(y, trunc))
        ring = boundary_ring(y.shape[-2:], y.device)
        self.metrics[f"{split}_boundary_l2"].update(pred * ring, y * ring)
        n = len(pred)
        self.log(f"{split}/rel_l2", self.metrics[f"{split}_l2"], on_step=False, on_epoch=True, batch_size=n,
                 prog_bar=True)
        self.log(f"{split}/rel_h1", self.metrics[f"{split}_h1"], on_step=False, on_epoch=True, batch_size=n)
        self.log(f"{split}/boundary_rel_l2", self.metrics[f"{split}_boundary_l2"], on_step=False, on_epoch=True,
                 batch_size=n)
        if batch_idx == 0:
            self._last = {"x": batch["x"][0, 0].detach().cpu(), "pred": pred[0, -1].detach().cpu(),
                          "y": y[0, -1].detach().cpu(), "split": split}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self._evaluate(batch, "test", batch_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optimizer_factory(self.parameters())
        interval = self.hparams.scheduler_interval
        if self._trainer is None:
            total = 1
        elif interval == "epoch":
            total = self.trainer.max_epochs
            if total is None or total < 1:
                raise UserError("model.scheduler_interval=epoch spreads the OneCycle schedule over trainer.max_epochs: "
                                f"set it (got {total})")
        else:
            total = int(self.trainer.estimated_stepping_batches)
        if total < 1 or total > 10**9:
            return {"optimizer": opt}
        if float(self.hparams.pct_start * max(total, 2)) == 1.0:  # torch's warm-up phase would span 0 steps (0 / 0)
            raise UserError(f"model.pct_start={self.hparams.pct_start} of a OneCycle over {max(total, 2)} "
                            f"{interval}s leaves a warm-up of one step, which torch cannot anneal: change the number "
                            "of epochs / steps or pct_start")
        max_lr = [g["lr"] for g in opt.param_groups]
        self._one_cycle_total = max(total, 2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(total, 2),
                                                    div_factor=self.hparams.div_factor,
                                                    final_div_factor=self.hparams.final_div_factor,
                                                    pct_start=self.hparams.pct_start)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    def on_train_start(self) -> None:
        """A resumed run keeps the OneCycle schedule of its first budget (restored with the scheduler), which cannot be
        stretched: training it on to another trainer.max_steps / max_epochs would step past its end (torch raises
        there), so that is a one-line error before the first step."""
        planned = getattr(self, "_one_cycle_total", None)
        scheduler = self.lr_schedulers()
        restored = getattr(scheduler, "total_steps", None)
        if planned is not None and restored is not None and restored != planned:
            unit = self.hparams.scheduler_interval
            raise UserError(f"this run's OneCycle learning-rate schedule spans {restored} {unit}s (its first budget) "
                            f"and cannot be stretched to {planned}: resume it with its own budget, or start a new run "
                            "for the longer one")

    def figures(self) -> dict[str, Any]:
        """{"fields": coefficient | prediction | reference | error for the first sample of the last evaluated split
        (titled with it)}."""
        if self._last is None:
            return {}
        import matplotlib.pyplot as plt

        d = self._last
        err = (d["pred"] - d["y"]).numpy()
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
        panels = [("coefficient a (normalised)", d["x"].numpy(), "viridis"),
                  ("prediction", d["pred"].numpy(), "magma"), ("reference", d["y"].numpy(), "magma"),
                  (f"error (rel. L2 {float(relative_l2(d['pred'][None], d['y'][None])[0]):.3f})", err, "RdBu_r")]
        vmin, vmax = float(d["y"].min()), float(d["y"].max())
        for ax, (title, img, cmap) in zip(axes, panels):
            kw = {"vmin": vmin, "vmax": vmax} if title in ("prediction", "reference") else {}
            if cmap == "RdBu_r":
                m = float(abs(err).max()) or 1.0
                kw = {"vmin": -m, "vmax": m}
            im = ax.imshow(img, cmap=cmap, origin="lower", **kw)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"MgNO, {d.get('split', 'test')} set, its first sample", fontsize=10)
        fig.tight_layout()
        return {"fields": fig}
