"""The cosine-series Monge-Ampere mesher (`lit_models.common.monge_ampere`): exact on separable monitors (whose MA
mesh is the product of 1-D equidistributions), the identity for a constant monitor, boundary nodes on their sides,
and the MA baseline of UM2N's coupled swirl solve.

Measured (35 x 35 mesh, 24 modes, 96^2 collocation points, one thread): separable bumps of amplitude 2 / 5 / 10 and
width 0.15 / 0.1 / 0.05 (x) times half that amplitude (y): node RMSE to the exact MA mesh 0.007 / 0.015 / 0.037
cells, median residual 0.0007 / 0.0018 / 0.0094, 0 inverted, 0.3-2.5 s; the swirl monitor at t = 0.25: residual
0.0012 in 0.08 s. Without the diagonal preconditioner of the coefficients the same L-BFGS stalled at RMSE 2.4-6.8
cells with up to 158 inverted triangles."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from datamodules.meshes import swirl_graph
from lit_models.common import mesh as M
from lit_models.common.monge_ampere import CosineMongeAmpere
from lit_models.pde.um2n_coupled import coupled_config, coupled_swirl

N = 25


@pytest.mark.parametrize("amp, width", [(2.0, 0.15), (10.0, 0.05)])
def test_separable_monitor_gives_the_exact_ma_mesh(amp, width):
    pos, tri = M.unit_square_mesh(N)
    m1 = functools.partial(M.bump_monitor_1d, amplitude=amp, centres=[0.4], widths=[width])
    m2 = functools.partial(M.bump_monitor_1d, amplitude=amp / 2, centres=[0.7], widths=[1.5 * width])
    exact = M.equidistributed_mesh(pos, m1, m2)
    ma = CosineMongeAmpere(warm_start=False)
    x = ma.solve(m1(pos[:, 0]) * m2(pos[:, 1]), N)
    rmse_cells = np.sqrt(np.mean(np.sum((x - exact) ** 2, 1))) * (N - 1)
    assert rmse_cells < 0.1, rmse_cells
    assert ma.last_residual < 0.02
    assert M.count_inverted(x, tri) == 0
    assert M.boundary_violation(x, pos) < 1e-12  # boundary nodes slide along their side, corners fixed


def test_constant_monitor_is_the_identity_and_bad_input_is_rejected():
    pos, _ = M.unit_square_mesh(N)
    ma = CosineMongeAmpere()
    np.testing.assert_allclose(ma.solve(np.full(N * N, 3.0), N), pos, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        ma.solve(np.full(N * N, -1.0), N)
    with pytest.raises(ValueError, match="structured"):
        ma(swirl_graph(9, 0.0, mesh="unstructured"))


def test_swirl_graph_monitor_is_equidistributed():
    g = swirl_graph(N, 0.25)
    ma = CosineMongeAmpere()
    x = ma(g)
    assert ma.last_residual < 0.01 and M.count_inverted(x, g.face.T.numpy()) == 0
    assert np.abs(x - g.pos.double().numpy()).max() > 0.5 / (N - 1)  # it does move nodes


def test_coupled_swirl_ma_baseline():
    tiny = {"n_side": 10, "dt": 0.005, "t_end": 0.05, "record_every": 5, "n_ref": 60}
    res = coupled_swirl(lambda g: g.pos, ma_baseline=True, **tiny)
    m = res.metrics()
    assert m["swirl_pde_error_reduction"] == 0.0  # identity mover
    assert np.isfinite(m["swirl_pde_error_ma"]) and m["swirl_coupled_inverted_ma"] == 0
    assert m["swirl_coupled_ma_residual"] < 0.05
    assert m["swirl_pde_error_reduction_ma"] != 0.0
    with pytest.raises(Exception, match="structured"):
        coupled_config({"ma_baseline": True, "mesh": "unstructured"})
