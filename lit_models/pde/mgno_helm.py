"""MgNO's Helmholtz architecture (the official `MgNO_helm` / `MgConv_helm`, the model of the paper's Helmholtz row).

Differences from the Darcy layer (`lit_models.pde.mgno.MgNO`), all from the official code:
- channels grow with the level: level l carries c_u (l + 1) solution and c_f (l + 1) right-hand-side channels;
- smoothers u <- u + S(f - A u) (the first one u = S f) are 3 x 3 convolutions with reflect padding and a bias;
- restrictions Pi (u) and R (f) are 3 x 3 stride-2 convolutions without padding (101 -> 50 -> 24 -> 11 -> 5), and the
  prolongations R^T transposed convolutions without padding, 3 x 3 onto odd and 4 x 4 onto even sizes, so each level
  returns to its exact size (the official hard-codes the 3 / 4 / 4 / 3 kernels of the 101 grid; the rule gives them);
- no post-smoothing: the up pass only adds the prolongated coarse solution, u_l <- u_l + R^T u_{l+1};
- each of the `num_layer` layers is u <- act(LayerNorm(V-cycle(u))) (no 1 x 1 branch, no bias field), and the read-out
  is a further V-cycle with one solution channel (`MgConv_helm(num_iteration, 1, c_u)`).
The official first smoother of the finest level also builds an A it never uses (it only ever sees f); it is not
built here, so the parameter count is c_u c_f 9 + c_f smaller per V-cycle.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def coarse_size(n: int) -> int:
    """Grid size after one unpadded 3 x 3 stride-2 restriction."""
    return (n - 3) // 2 + 1


def prolongation_kernel_onto(n: int) -> int:
    """Kernel of the unpadded stride-2 transposed convolution that maps coarse_size(n) back onto n points: 3 for odd n,
    4 for even n ((m - 1) 2 + k = n)."""
    return n - 2 * (coarse_size(n) - 1)


def _smoother_conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=True, padding_mode="reflect")


class HelmSmoother(nn.Module):
    """One smoothing step u <- u + S(f - A u) on a level (or u = S f when `first`, without an A)."""

    def __init__(self, c_u: int, c_f: int, first: bool) -> None:
        super().__init__()
        self.S = _smoother_conv(c_f, c_u)
        self.A = None if first else _smoother_conv(c_u, c_f)

    def forward(self, u: Tensor | None, f: Tensor) -> Tensor:
        if self.A is None:
            return self.S(f)
        return u + self.S(f - self.A(u))


class MgConvHelm(nn.Module):
    """One V-cycle of the official MgConv_helm (see the module docstring): `iterations[l]` smoothings at level l with
    c_u (l + 1) / c_f (l + 1) channels, unpadded restrictions, prolongation-only up pass; returns u on the finest
    level. `resolution` is the finest grid size."""

    def __init__(self, iterations: Sequence[int], c_u: int, c_f: int, resolution: int) -> None:
        super().__init__()
        if not iterations or min(iterations) < 1:
            raise ValueError(f"every level needs at least one smoothing, got {list(iterations)}")
        sizes = [resolution]
        for _ in range(len(iterations) - 1):
            sizes.append(coarse_size(sizes[-1]))
        if sizes[-1] < 1:
            raise ValueError(f"{len(iterations)} levels need a larger grid than {resolution}")
        self.sizes = sizes
        self.smoothers = nn.ModuleList(
            nn.ModuleList(HelmSmoother(c_u * (l + 1), c_f * (l + 1), first=(l == 0 and i == 0)) for i in range(n))
            for l, n in enumerate(iterations))
        self.restrict_u = nn.ModuleList(nn.Conv2d(c_u * (l + 1), c_u * (l + 2), 3, stride=2, bias=False)
                                        for l in range(len(iterations) - 1))
        self.restrict_f = nn.ModuleList(nn.Conv2d(c_f * (l + 1), c_f * (l + 2), 3, stride=2, bias=False)
                                        for l in range(len(iterations) - 1))
        self.prolong = nn.ModuleList(
            nn.ConvTranspose2d(c_u * (l + 2), c_u * (l + 1), prolongation_kernel_onto(sizes[l]), stride=2, bias=False)
            for l in range(len(iterations) - 1))

    def forward(self, f: Tensor) -> Tensor:
        u, levels = None, []
        for level, smoothers in enumerate(self.smoothers):
            if level > 0:
                u, f = self.restrict_u[level - 1](u), self.restrict_f[level - 1](f)
            for smoother in smoothers:
                u = smoother(u, f)
            levels.append(u)
        for level in range(len(levels) - 2, -1, -1):
            levels[level] = levels[level] + self.prolong[level](levels[level + 1])
        return levels[0]


class MgNOHelm(nn.Module):
    """The official MgNO_helm: `num_layer` layers u <- act(LayerNorm_[c_u, N, N](MgConvHelm(u))) and a read-out
    V-cycle MgConvHelm(iterations, 1, c_u) (one output channel)."""

    def __init__(self, in_channels: int, num_layer: int, num_channel_u: int, iterations: Sequence[int],
                 resolution: int, activation: nn.Module) -> None:
        super().__init__()
        chans = [in_channels] + [num_channel_u] * num_layer
        self.convs = nn.ModuleList(MgConvHelm(iterations, num_channel_u, chans[i], resolution)
                                   for i in range(num_layer))
        self.norms = nn.ModuleList(nn.LayerNorm([num_channel_u, resolution, resolution]) for _ in range(num_layer))
        self.readout = MgConvHelm(iterations, 1, num_channel_u, resolution)
        self.act = activation
        self.resolution = resolution

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(f"input grid {tuple(x.shape[-2:])} != the LayerNorm resolution {self.resolution}")
        u = x
        for conv, norm in zip(self.convs, self.norms):
            u = self.act(norm(conv(u)))
        return self.readout(u)


def fd_h1_error(pred: Tensor, y: Tensor) -> Tensor:
    """Per-sample absolute finite-difference H1 error of the official helm.py loss (utilities3 HSloss_d):
    sqrt(sum 10 e^2 + (d_0 e)^2 + (d_1 e)^2) with e = pred - y and torch.gradient central differences at spacing
    1 / N over the last two axes; the official loss is its batch mean. (B, C, H, W) or (B, H, W) -> (B,)."""
    e = pred - y
    d0, d1 = torch.gradient(e, dim=(-2, -1), spacing=1.0 / e.shape[-1])
    return torch.sqrt((10 * e ** 2 + d0 ** 2 + d1 ** 2).flatten(1).sum(1))
