"""Lagrangian PINN (arXiv 2205.02902): the paper contract's fast test (LPINN and the Eulerian PINN, convection and
Burgers), residuals on exact characteristics, autograd derivatives vs finite differences (incl. the chain rule for
u_xx), the periodic interpolation back to the Eulerian grid, and the card's claim (LPINN vs Eulerian PINN, c = 30)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from launch.check import run_claim
from lit_models.pde.lagrangian_pinn import (
    EulerianPINN,
    LagrangianPINN,
    LagrangianPINNModule,
    eulerian_residual,
    exact_characteristics,
    lagrangian_residuals,
    periodic_interp,
)
from tests.papers.contract import fast_run

SMALL = ["data.n_x=16", "data.n_t=6", "data.eval_n_x=20", "data.eval_n_t=5", "data.steps_per_epoch=3"]
BURGERS = ["data.name=burgers", "data.nu=0.05", "data.shift=1.0", "data.solver_modes=64", "data.solver_dt=1e-2"]


def _close_figures(figs):
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


@pytest.mark.parametrize("overrides", [
    [],
    ["model.method=pinn"],
    ["model.hard_ic=false", "model.loss_norm=l2", "data.nu=0.01"],
    [*BURGERS, "model.hard_ic=false"],
    [*BURGERS, "model.method=pinn"],
])
def test_fast_contract(overrides):
    run = fast_run("lagrangian_pinn", *SMALL, *overrides)
    run.assert_contract()
    assert {"test/rel_l2", "test/rel_l2_grid"} <= set(run.metrics), sorted(run.metrics)
    out = run.model(torch.rand(5, dtype=run.model.dtype), torch.rand(5, dtype=run.model.dtype))
    lpinn = "model.method=pinn" not in overrides
    if lpinn:
        assert out[0].shape == (5,) and out[1].shape == (5,)
    else:
        assert out.shape == (5,)
    figs = run.model.figures()
    assert set(figs) == ({"field", "characteristics"} if lpinn else {"field"})
    if lpinn:  # the exact characteristics from the learned ones' x0, dashed: dx/dt = c, or u of the reference
        ax = figs["characteristics"].axes[0]
        exact = [line for line in ax.lines if line.get_gid() == "exact"]
        assert len(exact) >= 4 and len(exact) == len(ax.lines) // 2
        x, t = run.model._last["x"], run.model._last["t"]
        for line in exact:
            xs, ts = line.get_data()
            np.testing.assert_allclose(ts, t)
            if "data.name=burgers" not in overrides:
                np.testing.assert_allclose(xs, xs[0] + run.model.c * t, rtol=1e-6)
        assert {line.get_data()[0][0] for line in exact} <= set(x.tolist())
        learned = [line for line in ax.lines if line.get_gid() == "learned"]  # drawn above the exact ones: visible
        assert len(learned) == len(exact)
        assert min(line.get_zorder() for line in learned) > max(line.get_zorder() for line in exact)
    assert figs["field"]._suptitle.get_text().startswith("test set: ")
    _close_figures(figs)


def test_fast_contract_paper_variants():
    for exp in ("lagrangian_pinn/convection", "lagrangian_pinn/burgers"):
        extra = BURGERS[3:] if exp.endswith("burgers") else []
        fast_run(exp, *SMALL, *extra, "model.width=8", "trainer.precision=32-true").assert_contract()


class _Exact(torch.nn.Module):
    """Exact characteristics of u_t + c u_x = 0 with u0 = sin: u_L = sin x0, x_L = x0 + c t."""

    def __init__(self, c):
        super().__init__()
        self.c, self.p = c, torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x0, t):
        return torch.sin(x0) + 0 * t + 0 * self.p, x0 + self.c * t + 0 * self.p


def test_residuals_vanish_on_exact_characteristics():
    x0 = torch.linspace(0, 6, 11, dtype=torch.float64)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    r_x, r_u, _, _ = lagrangian_residuals(_Exact(30.0), x0, t, "convection", 30.0, 0.0)
    assert float(r_x.abs().max()) < 1e-12 and float(r_u.abs().max()) < 1e-12
    module = LagrangianPINNModule(method="lpinn", problem="convection", c=30.0, nu=0.0)
    module.model = _Exact(30.0)
    x = torch.tensor(2 * np.pi * np.arange(64) / 64)
    tt = torch.linspace(0, 1, 9, dtype=torch.float64)
    ref = torch.sin(x[None] - 30.0 * tt[:, None])
    p = module.predict(x, tt)
    assert np.abs(p["x_L"] - x.numpy()[None] - 30 * tt.numpy()[:, None]).max() < 1e-9
    # interpolation of the scattered (x_L mod 2 pi, u_L) pairs back onto the grid: exact up to linear interpolation
    assert np.abs(p["u"] - ref.numpy()).max() < 1e-2


def _fd(f, z, h, order):
    if order == 1:
        return (f(z + h) - f(z - h)) / (2 * h)
    return (f(z + h) - 2 * f(z) + f(z - h)) / h ** 2


@pytest.mark.parametrize("problem,nu,form", [("convection", 0.0, "label"), ("convection", 0.01, "label"),
                                             ("burgers", 0.01, "label"), ("burgers", 0.01, "chain")])
def test_lagrangian_residuals_match_finite_differences(problem, nu, form):
    """R_x, R_u against central differences; u_xx of R_u is d2u_L/dx0^2 in the label (the official mynet_POLAR.py
    `lib`, the default) or, with diffusion_derivative="chain", the Eulerian derivative through dx_L/dx0."""
    torch.manual_seed(0)
    model = LagrangianPINN(width=12, depth_u=2, depth_x=2, hard_ic=False).double()
    x0 = torch.tensor([0.3, 2.0, 5.1], dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    r_x, r_u, u, xl = lagrangian_residuals(model, x0, t, problem, 7.0, nu, form)
    with torch.no_grad():
        uf = lambda a, b: model(a, b)[0]  # noqa: E731
        xf = lambda a, b: model(a, b)[1]  # noqa: E731
        u_t = _fd(lambda s: uf(x0, s), t, 1e-5, 1)
        x_t = _fd(lambda s: xf(x0, s), t, 1e-5, 1)
        a = 7.0 if problem == "convection" else uf(x0, t)
        torch.testing.assert_close(r_x, x_t - a, rtol=1e-6, atol=1e-7)
        if nu > 0 and form == "chain":
            # chain rule: u_x = u_x0 / x_x0, u_xx = d(u_x)/dx0 / x_x0, differences in the label x0
            ux = lambda s: _fd(lambda z: uf(z, t), s, 1e-5, 1) / _fd(lambda z: xf(z, t), s, 1e-5, 1)  # noqa: E731
            u_xx = _fd(ux, x0, 1e-4, 1) / _fd(lambda z: xf(z, t), x0, 1e-5, 1)
            expected = u_t - nu * u_xx
        elif nu > 0:
            expected = u_t - nu * _fd(lambda z: uf(z, t), x0, 1e-4, 2)
        else:
            expected = u_t
        torch.testing.assert_close(r_u, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("problem", ["convection", "burgers"])
def test_eulerian_residual_matches_finite_differences(problem):
    torch.manual_seed(0)
    model = EulerianPINN(width=12, depth=2).double()
    x = torch.tensor([0.3, 2.0, 5.1], dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    r = eulerian_residual(model, x, t, problem, 5.0, 0.02)
    with torch.no_grad():
        u = model(x, t)
        u_t = _fd(lambda s: model(x, s), t, 1e-5, 1)
        u_x = _fd(lambda s: model(s, t), x, 1e-5, 1)
        u_xx = _fd(lambda s: model(s, t), x, 1e-4, 2)
        a = 5.0 if problem == "convection" else u
        torch.testing.assert_close(r, u_t + a * u_x - 0.02 * u_xx, rtol=1e-5, atol=1e-6)


def test_hard_ic_and_periodicity():
    torch.manual_seed(0)
    lp = LagrangianPINN(width=8, depth_u=2, depth_x=1, hard_ic=True).double()
    x0 = torch.linspace(0, 6, 7, dtype=torch.float64)
    u, xl = lp(x0, torch.zeros_like(x0))
    torch.testing.assert_close(u, torch.sin(x0))
    torch.testing.assert_close(xl, x0)
    e = EulerianPINN(width=8, depth=2).double()
    t = torch.full_like(x0, 0.4)
    torch.testing.assert_close(e(x0, t), e(x0 + 2 * math.pi, t))


def test_periodic_interp_handles_the_seam():
    """Scattered points straddling the wrap (unsorted after mod 2 pi) interpolate without a spike at the seam."""
    x0 = 2 * np.pi * np.arange(128) / 128
    shifted = x0 + 30.0 * 0.37  # x_L far outside [0, 2 pi)
    values = np.sin(shifted)
    grid = 2 * np.pi * np.arange(200) / 200
    out = periodic_interp(grid, shifted, values, 2 * np.pi)
    assert np.abs(out - np.sin(grid)).max() < 2e-3


def test_exact_characteristics_follow_the_velocity_field():
    """RK4 on a gridded velocity: dx/dt = sin x has x(t) = 2 arctan(tan(x0 / 2) e^t); a field that changes in time,
    u = t, gives x0 + t^2 / 2 (linear in t between the rows: exact)."""
    x = 2 * np.pi * np.arange(256) / 256
    t = np.linspace(0, 1, 11)
    x0 = np.array([0.3, 1.0, 2.0, 3.0])
    u = np.broadcast_to(np.sin(x), (len(t), len(x)))
    np.testing.assert_allclose(exact_characteristics(x0, t, x, u),
                               2 * np.arctan(np.tan(x0[None] / 2) * np.exp(t[:, None])), atol=2e-4)
    u = np.broadcast_to(t[:, None], (len(t), len(x)))
    np.testing.assert_allclose(exact_characteristics(x0, t, x, u), x0[None] + t[:, None] ** 2 / 2, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"method": "fem"}, {"problem": "kdv"}, {"loss_norm": "l1"}, {"nu": -0.1}])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        LagrangianPINNModule(**kwargs)


@pytest.mark.slow
def test_claim_lpinn_beats_pinn_and_fails_with_pinn():
    """Card check (convection c = 30, nu = 0, u0 = sin x, hard ICs, 48 x 21 collocation, N_u 3x32, N_x 2x32 / PINN 3x32,
    mean-square losses, Adam 3e-3, seed 0, evaluation on 200 x 50): LPINN relative L2 < 0.10 and Eulerian PINN > 0.5,
    each after 600 steps (the same budget; the card's 300-step shortcut for the PINN gave 1.012, and the 600-step PINN
    is the swap's run anyway, trained once). Measured: LPINN 0.0239 (max characteristic error 0.05), PINN 0.989 (card:
    0.040 vs 0.99). Thresholds kept from the card. The swap (Eulerian PINN in place of the LPINN) must fail."""
    torch.set_num_threads(1)
    result = run_claim("lagrangian_pinn", "lpinn_beats_pinn")
    assert result.passed, result.report()
    swapped = run_claim("lagrangian_pinn", "lpinn_beats_pinn", swap_baseline=True)
    assert not swapped.passed, swapped.report()


def test_residuals_ignore_autocast():
    torch.manual_seed(0)
    model = LagrangianPINN(width=12, depth_u=2, depth_x=2)
    x0, t = torch.rand(6) * 6, torch.rand(6)
    plain = lagrangian_residuals(model, x0, t, "burgers", 0.0, 0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = lagrangian_residuals(model, x0, t, "burgers", 0.0, 0.01)
    for a, b in zip(mixed, plain):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs", [
    {},                                                   # LPINN, convection: rel_l2 at the predicted positions
    {"method": "pinn"},                                   # Eulerian PINN: rel_l2 = the grid error
    {"problem": "burgers", "shift": 1.0, "nu": 0.05},     # LPINN, Burgers: grid error normalised by ||u - shift||
])
def test_logged_relative_l2_is_the_papers_pooled_definition(kwargs):
    """The metrics go through the shared `relative_l2` (pooled over the whole (T, X) grid) and equal the paper's
    definitions, computed here inline, to 1e-6."""
    torch.manual_seed(0)
    model = LagrangianPINNModule(width=8, depth_u=2, depth_x=2, c=3.0, **kwargs).double()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    x = torch.linspace(0, 2 * math.pi, 17, dtype=torch.float64)[:-1]
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    ref = torch.sin(x[None] - 0.5 * t[:, None]) + model.shift + 0.1 * torch.rand(5, 16, dtype=torch.float64)
    model._evaluate({"x": x, "t": t, "u": ref}, "test")
    p = model.predict(x, t)
    r = ref.numpy()
    grid = np.linalg.norm(p["u"] - r) / np.linalg.norm(r - model.shift)
    assert logged["test/rel_l2_grid"] == pytest.approx(grid, rel=1e-6)
    if model.method == "lpinn" and model.problem == "convection":
        tt = t.numpy()[:, None]
        true = np.exp(-model.nu * tt) * np.sin(p["x_L"] - model.c * tt)
        assert logged["test/rel_l2"] == pytest.approx(np.linalg.norm(p["u_L"] - true) / np.linalg.norm(true), rel=1e-6)
    else:
        assert logged["test/rel_l2"] == pytest.approx(grid, rel=1e-6)
    if model.shift:  # the shift matters: the plain relative L2 (normalised by ||u||) is a different number
        assert logged["test/rel_l2_grid"] != pytest.approx(np.linalg.norm(p["u"] - r) / np.linalg.norm(r), rel=1e-3)
    # the official LPINN.py error table: largest singular value of the (x-trimmed by 2 points) error matrix over that
    # of u - C, written here with the SVD
    du, uc = (p["u"] - r)[:, 2:-2], (r - model.shift)[:, 2:-2]
    spectral = np.linalg.svd(du, compute_uv=False)[0] / np.linalg.svd(uc, compute_uv=False)[0]
    assert logged["test/rel_l2_spectral"] == pytest.approx(spectral, rel=1e-6)
