"""MgNO's Helmholtz network (official models.MgNO_helm / MgConv_helm, helm.py's HSloss_d): level sizes and kernels on
the paper's 101 x 101 grid, the parameter count against the official layer list, the V-cycle against a direct
evaluation of its equations, the loss against numpy, and the configuration errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_models.pde.mgno import MgNOModule
from lit_models.pde.mgno_helm import MgConvHelm, MgNOHelm, fd_h1_error, prolongation_kernel_onto


def official_vcycle_parameters(iterations, c_u, c_f, resolution=101):
    """Parameters of the official MgConv_helm(iterations, c_u, c_f) counted from its layer list: per smoothing an A
    (c_u' -> c_f') and an S (c_f' -> c_u'), 3 x 3 with bias, at c' = c (l + 1); Pi and R 3 x 3 without bias; R^T
    kernels 3 / 4 / ... / 4 / 3 on the 101 grid."""
    n, sizes = 0, [resolution]
    for l, it in enumerate(iterations):
        cu, cf = c_u * (l + 1), c_f * (l + 1)
        n += it * (9 * cu * cf + cf + 9 * cf * cu + cu)
        if l < len(iterations) - 1:
            n += 9 * cu * c_u * (l + 2) + 9 * cf * c_f * (l + 2)
            n += prolongation_kernel_onto(sizes[-1]) ** 2 * c_u * (l + 2) * cu
            sizes.append((sizes[-1] - 3) // 2 + 1)
    return n


def test_paper_grid_levels_kernels_and_parameter_count():
    """101 -> 50 -> 24 -> 11 -> 5 with R^T kernels 3, 4, 4, 3 (the official hard-coded list), output on the input grid;
    the official helm.py model (4 layers, c_u 20, iterations 1 1 1 1 2) has the official layer list's parameters less
    the finest level's unused first A (9 c_u c_f + c_f per V-cycle) plus the LayerNorms."""
    cycle = MgConvHelm([1, 1, 1, 1, 2], 20, 1, 101)
    assert cycle.sizes == [101, 50, 24, 11, 5]
    assert [p.kernel_size[0] for p in cycle.prolong] == [3, 4, 4, 3]
    assert cycle(torch.zeros(2, 1, 101, 101)).shape == (2, 20, 101, 101)
    net = MgNOHelm(1, 4, 20, [1, 1, 1, 1, 2], 101, torch.nn.GELU())
    expected = sum(official_vcycle_parameters([1, 1, 1, 1, 2], 20, cf) - (9 * 20 * cf + cf) for cf in (1, 20, 20, 20))
    expected += official_vcycle_parameters([1, 1, 1, 1, 2], 1, 20) - (9 * 1 * 20 + 20)  # the read-out V-cycle
    expected += 4 * 2 * 20 * 101 * 101  # LayerNorm([20, 101, 101]) weight + bias per layer
    assert sum(p.numel() for p in net.parameters()) == expected == 5_340_565
    assert net(torch.zeros(1, 1, 101, 101)).shape == (1, 1, 101, 101)


def test_vcycle_is_the_official_recursion():
    """Two levels, two smoothings on the finest: u0 = S1 f, u0 += S2(f - A2 u0); u1 = Pi u0, f1 = R f, u1 += S3(f1 - A3
    u1); u0 + R^T u1, evaluated directly with F.conv2d on reflect-padded inputs."""
    torch.manual_seed(0)
    cycle = MgConvHelm([2, 1], 3, 2, 9).double()
    f = torch.randn(2, 2, 9, 9, dtype=torch.float64)

    def smooth(conv, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias)

    s0, s1 = cycle.smoothers[0]
    u0 = smooth(s0.S, f)
    u0 = u0 + smooth(s1.S, f - smooth(s1.A, u0))
    u1 = F.conv2d(u0, cycle.restrict_u[0].weight, stride=2)
    f1 = F.conv2d(f, cycle.restrict_f[0].weight, stride=2)
    (s2,) = cycle.smoothers[1]
    u1 = u1 + smooth(s2.S, f1 - smooth(s2.A, u1))
    assert u1.shape == (2, 6, 4, 4) and f1.shape == (2, 4, 4, 4)  # channels c (l + 1)
    expected = u0 + F.conv_transpose2d(u1, cycle.prolong[0].weight, stride=2)
    torch.testing.assert_close(cycle(f), expected)
    assert s0.A is None  # the official first smoother's A never sees a u


def test_fd_h1_loss_is_the_official_hsloss_d():
    """HSloss_d: mean over the batch of sqrt(sum 10 e^2 + (d0 e)^2 + (d1 e)^2), central differences (one-sided at the
    edges) at spacing 1 / N: checked against numpy.gradient; absolute, so it scales with the error."""
    rng = np.random.default_rng(0)
    pred, y = rng.standard_normal((3, 1, 12, 12)), rng.standard_normal((3, 1, 12, 12))
    e = pred - y
    d0, d1 = np.gradient(e, 1 / 12, axis=(-2, -1))
    want = np.sqrt((10 * e ** 2 + d0 ** 2 + d1 ** 2).reshape(3, -1).sum(1))
    got = fd_h1_error(torch.tensor(pred), torch.tensor(y))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    torch.testing.assert_close(fd_h1_error(torch.tensor(2 * pred), torch.tensor(2 * y)), 2 * got)
    module = MgNOModule(resolution=12, levels=["10", "10"], num_channel_u=2, architecture="helm", bias_field=False,
                        loss="fd_h1", loss_reduction="mean")
    torch.testing.assert_close(module.loss_fn(torch.tensor(pred), torch.tensor(y)), got.mean())


def test_helm_configuration_errors():
    with pytest.raises(ValueError, match="post-smoothing"):
        MgNOModule(resolution=16, levels=["11", "10"], architecture="helm", bias_field=False)
    with pytest.raises(ValueError, match="bias_field"):
        MgNOModule(resolution=16, levels=["10", "10"], architecture="helm")
    with pytest.raises(ValueError, match="architecture"):
        MgNOModule(architecture="unet")
    with pytest.raises(ValueError, match="fd_h1"):
        MgNOModule(loss="h2")
    net = MgNOModule(resolution=16, levels=["10", "10"], num_channel_u=2, architecture="helm", bias_field=False).net
    with pytest.raises(ValueError, match="LayerNorm resolution"):
        net(torch.zeros(1, 1, 12, 12))
