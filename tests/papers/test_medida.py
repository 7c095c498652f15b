"""MEDIDA (arXiv 2309.13211): the paper contract's fast test, the KS solver against exact invariants, the card's
check 1 (full observations: ARD selects exactly -0.2 u_xx) and the spectral-bias claim (RFF-MLP vs plain MLP)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.medida_data import KSETDRK4, MedidaDataModule, ks_wavenumbers, spectral_derivatives
from lit_models.dynamics.medida import Interpolant, build_library, discover, interpolant_derivatives
from tests.papers.contract import claims_pass_or_xfail, fast_run


def test_trains_in_float64():
    """`trainer.precision=64-true`: the batch follows the module's dtype (no hard-coded float32 casts)."""
    run = fast_run("medida", "trainer.precision=64-true", "data.n_snapshots=3", "data.spinup=20", steps=2)
    run.assert_contract()
    assert run.model.dtype == torch.float64 and next(run.model.parameters()).dtype == torch.float64


@pytest.mark.parametrize("rff", [True, False])
def test_fast_contract(rff):
    run = fast_run("medida", f"model.rff={str(rff).lower()}", "data.n_snapshots=3", "data.spinup=20")
    run.assert_contract()
    for key in ("test/uxxxx_rel_l2", "test/coef_error", "test/c_uxx", "test/n_wrong_terms"):
        assert key in run.metrics, sorted(run.metrics)
    assert run.model(torch.rand(5, 1, dtype=run.model.dtype)).shape == (5, 3)
    figs = run.model.figures()
    assert set(figs) == {"derivatives", "coefficients"}
    # the sensors are marked on u: one marker per sensor, at its x with its observed value (first snapshot)
    data, length = run.datamodule.data, run.datamodule.length
    markers = [line for line in figs["derivatives"].axes[0].lines if line.get_marker() == "o"]
    assert len(markers) == 1 and len(markers[0].get_xdata()) == len(data["sensors"])
    np.testing.assert_allclose(markers[0].get_xdata(), data["sensors"] * length / run.datamodule.n)
    np.testing.assert_allclose(markers[0].get_ydata(), data["obs"][0])
    assert "test" in figs["derivatives"]._suptitle.get_text()
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def test_fourier_features_ignore_mixed_precision():
    """The RFF phases (2 pi B s, hundreds of radians at the paper's sigma 10) are computed in float32 even under bf16
    autocast (a GPU run's default precision), so the features equal the float32 ones."""
    from lit_models.dynamics.medida import RandomFourierFeatures

    rff = RandomFourierFeatures(2, 500, sigma=10.0)
    s = torch.rand(256, 2) * 2 * np.pi - np.pi
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = rff(s)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, rff(s))


def test_coefficient_figure_keeps_the_true_bars_visible():
    """Discovered coefficients 100x the true ones (an untrained interpolant) switch the bar chart to a symmetric-log
    axis, on which the true -0.2 bar stays visible; a discovery near the truth keeps a linear axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lit_models.dynamics.medida import _scale_for_true_coefficients

    true = np.array([0.0, 0.0, -0.2, 0.0])
    for discovered, scale in ((np.array([10.0, -3.0, -20.0, 5.0]), "symlog"), (true + 0.01, "linear")):
        fig, ax = plt.subplots()
        _scale_for_true_coefficients(ax, true, discovered)
        assert ax.get_yscale() == scale
        plt.close(fig)


def test_ks_linear_part_decays_exactly():
    """Without the nonlinear term ETDRK4 is exact: each Fourier mode evolves as exp((k^2 - k^4) t)."""
    n, length, h, steps = 64, 22.0, 0.05, 40
    rng = np.random.default_rng(0)
    u0 = rng.standard_normal((2, n))
    u = KSETDRK4(n, length, h, nonlinear=False).step(u0, steps)
    k = ks_wavenumbers(n, length)
    exact = np.fft.irfft(np.fft.rfft(u0, axis=-1) * np.exp((k**2 - k**4) * h * steps), n=n, axis=-1)
    np.testing.assert_allclose(u, exact, atol=1e-10)


def test_ks_conserves_the_mean_and_stays_bounded():
    n, length = 128, 22.0
    x = length * np.arange(n) / n
    u0 = np.cos(2 * np.pi * x / length) + 0.3 + 0.1 * np.sin(4 * np.pi * x / length)
    u = KSETDRK4(n, length, 0.05).step(u0[None], 2000)
    assert abs(u.mean() - u0.mean()) < 1e-10
    assert np.isfinite(u).all() and np.abs(u).max() < 10


def test_spectral_derivatives_of_a_sine():
    length, n = 22.0, 128
    x = length * np.arange(n) / n
    k = 2 * np.pi * 3 / length
    d = spectral_derivatives(np.sin(k * x), length)
    np.testing.assert_allclose(d[4], k**4 * np.sin(k * x), atol=1e-9)
    np.testing.assert_allclose(d[3], -k**3 * np.cos(k * x), atol=1e-9)


def test_autograd_derivatives_match_analytic():
    torch.manual_seed(0)
    net = Interpolant(n_outputs=2, width=16, depth=2, rff=True, sigma=1.0)
    s = torch.rand(7, 1, dtype=torch.float64)
    d = interpolant_derivatives(net, s, length=2.0)
    eps = 1e-4
    f = lambda t: net.double()(t).detach()  # noqa: E731
    fd = (f(s + eps) - f(s - eps)) / (2 * eps) / 2.0
    torch.testing.assert_close(d[1], fd, atol=1e-6, rtol=1e-5)


def test_check1_full_observations_select_exactly_uxx():
    """Card check 1: with full observations (exact spectral derivatives) ARD selects only u_xx with coefficient
    -0.2 +- 5% and every other |c| < 0.01. Measured: u_xx -0.2023, u_xxxx -0.0062, the rest exactly 0."""
    dm = MedidaDataModule()
    dm.setup()
    d = dm.data
    coef = discover(build_library(d["derivs"]), d["increment"])
    assert coef[2] == pytest.approx(-0.2, rel=0.05), coef
    assert np.all(np.abs(np.delete(coef, 2)) < 0.01), coef
    # a wrong increment sign or missing division by dt fails
    assert not discover(build_library(d["derivs"]), -d["increment"])[2] == pytest.approx(-0.2, rel=0.05)
    assert not discover(build_library(d["derivs"]), d["increment"] * dm.h)[2] == pytest.approx(-0.2, rel=0.05)


def test_autograd_fourth_derivative_matches_finite_differences():
    """u_xxxx = (1/L^4) d^4u/ds^4 by nested forward-mode autograd equals a central finite difference in float64."""
    torch.manual_seed(0)
    net = Interpolant(n_outputs=2, width=32, depth=3, rff=True, sigma=2.0).double()
    s = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)[:, None]
    d = interpolant_derivatives(net, s, length=22.0)
    h, f = 1e-2, (lambda t: net(t).detach())  # noqa: E731
    fd4 = (f(s - 2 * h) - 4 * f(s - h) + 6 * f(s) - 4 * f(s + h) + f(s + 2 * h)) / h**4 / 22.0**4
    fd2 = (f(s - h) - 2 * f(s) + f(s + h)) / h**2 / 22.0**2
    torch.testing.assert_close(d[4], fd4, rtol=0.05, atol=1e-3 * float(fd4.abs().max()))
    torch.testing.assert_close(d[2], fd2, rtol=0.01, atol=1e-4 * float(fd2.abs().max()))


def test_band_limited_fit_of_the_sensors_reaches_the_card_threshold():
    """Diagnostic for check 2: the 32 noisy sensors do hold u_xxxx. A least-squares Fourier fit with modes <= 10
    (21 unknowns per snapshot) on the same sensors gives u_xxxx relative L2 0.071 (modes <= 11: 0.058); with
    modes <= 15 (31 unknowns for 32 sensors) it fits the gaps wildly (7.1)."""
    dm = MedidaDataModule()
    dm.setup()
    d = dm.data

    def fit_error(m_max: int) -> float:
        k = 2 * np.pi * np.arange(m_max + 1) / dm.length

        def basis(x: np.ndarray, p: int) -> np.ndarray:
            phase = np.outer(x, k) + p * np.pi / 2  # d^p/dx^p cos(kx) = k^p cos(kx + p pi/2)
            return np.concatenate([k**p * np.cos(phase), (k**p * np.sin(phase))[:, 1:]], axis=1)

        coef, *_ = np.linalg.lstsq(basis(d["x"][d["sensors"]], 0), d["obs"].T, rcond=None)
        pred = (basis(d["x"], 4) @ coef).T
        return float(np.linalg.norm(pred - d["derivs"][4]) / np.linalg.norm(d["derivs"][4]))

    assert fit_error(10) <= 0.15
    assert fit_error(15) > 1.0


def test_observed_increments_are_the_analysis_increments_of_the_paper():
    """model.increments=observed: (u_a(t + h) - model step of u_a(t)) / h from the two interpolants, with the
    datamodule's imperfect model. Interpolants that return the truth exactly give exactly the true increments (sign,
    h and model all right); the sensors at t + h are the truth one step on, observed like those at t."""
    from types import SimpleNamespace

    from lit_models.dynamics.medida import MedidaModule

    dm = MedidaDataModule()
    dm.setup()
    d = dm.data
    np.testing.assert_allclose(d["u_next"], KSETDRK4(128, 22.0, 0.05).step(d["u"]))
    assert d["obs_next"].shape == d["obs"].shape
    assert np.abs(d["obs_next"] - d["u_next"][:, d["sensors"]]).max() < 0.01 * d["u"].std()

    class Lookup(torch.nn.Module):  # "interpolates" the grid exactly
        def __init__(self, u: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("u", torch.tensor(u.T))

        def forward(self, s):
            return self.u.to(s)

    module = MedidaModule(n_outputs=20, width=8, depth=1)
    module.interpolant, module.interpolant_next = Lookup(d["u"]), Lookup(d["u_next"])
    module._trainer = SimpleNamespace(datamodule=dm)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MedidaModule, "trainer", property(lambda self: self._trainer))
        inc = module.observed_increments(torch.tensor(dm.x_unit)[:, None])
    np.testing.assert_allclose(inc, d["increment"].T, rtol=1e-9, atol=1e-9)
    assert MedidaModule(width=8, depth=1, increments="exact").interpolant_next is None
    with pytest.raises(ValueError, match="increments"):
        MedidaModule(width=8, depth=1, increments="true")


def test_rff_needs_at_least_one_fourier_feature():
    """model.width=1 left num_features = width // 2 = 0 (an RFF layer without features, silently): a one-line error for
    both MEDIDA modules; the plain MLP and an explicit num_features still build."""
    from lit_models.dynamics.medida import MedidaModule, MedidaQGModule

    for module in (MedidaModule, MedidaQGModule):
        with pytest.raises(ValueError, match="model.width=1 gives width // 2 = 0 random Fourier features"):
            module(width=1, depth=1)
        module(width=1, depth=1, rff=False)
    net = Interpolant(n_outputs=2, width=1, depth=1, num_features=3)
    assert net.rff.out_dim == 6 and net(torch.rand(4, 1)).shape == (4, 2)


@pytest.mark.slow
def test_claim_spectral_bias_known_gap():
    """Card check 2 (spectral bias, expected values): 25% sensors, u_xxxx relative L2 of the RFF-MLP <= 0.15 and
    of the plain MLP >= 0.5. NOT reproduced at CPU scale (32 sensors, 4x128 tanh, Adam 1e-3, 2000 steps): measured
    RFF-MLP (sigma 2) 1.544 vs plain MLP 1.554 at seed 0 (sigma 1: 2.31, 3: 2.60, 5: 12.2, 10: 342). The
    interpolant, not the data, is the limit (see the band-limited fit test above): both networks leave ~1e-3 of
    spurious content at modes 13-30 between the sensors. The claim carries a `known_gap`, so this test xfails while
    the gap stands and still requires the baseline (plain MLP swapped in) to fail.
    The card's second half (sparse_discovery: u_xx within 15% of -0.2, i.e. c_uxx in [-0.23, -0.17], from the
    observed analysis increments; the same trained runs, cached, score both claims) passes at the configured seed 0:
    RFF-MLP -0.1742, plain MLP -0.2557 (the swapped baseline fails). The pass depends on the seed (its known_gap):
    RFF-MLP at seeds 0-4 -0.1742, -0.3155, -0.1811, -0.2928, -0.2373 (passes at 0 and 2 only); plain MLP -0.2557,
    -0.4593, -0.3324, -0.2358, -0.0224 (fails at all five). Only c_uxx is checked: the card's "correct terms" is
    not reproduced, the RFF-MLP keeps 3-6 terms other than u_xx with |c| > 0.01 (seeds 0-4: 3, 5, 3, 4, 6), the
    plain MLP 4-6 (5, 4, 6, 5, 4); with the exact increments both give u_xx alone (-0.2038 / -0.2057, seed 0).
    The test runs at the configured seed only, so its outcome is deterministic. In the paper's 2-D QG setting the
    RFF advantage does show at CPU scale (tests/test_medida_qg.py, claim medida/qg spectral_bias)."""
    torch.set_num_threads(1)
    claims_pass_or_xfail("medida", ("spectral_bias", "sparse_discovery"))
