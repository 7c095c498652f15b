"""NODA / semilinear neural operators (arXiv 2402.15656): the paper contract's fast test, deterministic checks of the
filter (innovation sign and masking, bounded gain, alpha masks, data module) and the card's small-scale claims."""
from __future__ import annotations

import pytest
import torch

from datamodules.semilinear_data import SemilinearDataModule
from launch.check import run_claim
from lit_models.dynamics.semilinear_operator import (
    NODA,
    SpectralConv,
    SpectralConv1d,
    alpha_frame_mask,
)
from tests.papers.contract import fast_run

SMALL_DATA = ["data.n_train=8", "data.n_test=4", "data.steps_per_epoch=3", "data.batch_size=4"]


def test_trains_in_float64():
    """`trainer.precision=64-true`: batches and the spectral convolutions follow the module's dtype (no hard-coded
    float32 casts)."""
    run = fast_run("semilinear_operator", *SMALL_DATA, "model.rollout=20", "model.error_start=10",
                   "model.error_end=20", "trainer.precision=64-true", steps=2)
    run.assert_contract()
    assert run.model.dtype == torch.float64 and all(p.dtype == torch.float64 for p in run.model.parameters())


def assert_error_panels_on_their_own_range(fig) -> None:
    """The error panels, at alpha = 1 and at alpha = 0 (no correction after the warm-up) beside it, each on a symmetric
    colour range of its own (on the truth's range a small error looked blank); the title names split and metric."""
    images = [(ax.get_title(), ax.images[0]) for ax in fig.axes if ax.images]
    truth = next(im.get_clim() for title, im in images if title.startswith("truth"))
    errors = [(title, im) for title, im in images if title.startswith("error")]
    assert {title.split(")")[0] for title, _ in errors} == {"error (alpha=1", "error (alpha=0"}, [t for t, _ in images]
    for title, im in errors:
        low, high = im.get_clim()
        assert low == -high and (low, high) != pytest.approx(truth), (title, (low, high), truth)
        assert high >= float(abs(im.get_array()).max()) * (1 - 1e-6)
    assert "test trajectory 0: rel L2" in fig._suptitle.get_text()


def test_fast_contract():
    run = fast_run("semilinear_operator", *SMALL_DATA, "model.rollout=20", "model.error_start=10",
                   "model.error_end=20")
    run.assert_contract()
    for key in ("test/rel_l2", "test/rel_l2_all", "test/one_step_rel_l2"):
        assert key in run.metrics, sorted(run.metrics)
    y, mask = torch.zeros(2, 7, 64, dtype=run.model.dtype), torch.ones(64, dtype=run.model.dtype)
    assert run.model(y, mask, torch.ones(7, dtype=torch.bool)).shape == (2, 7, 64)
    figs = run.model.figures()
    assert set(figs) == {"space_time"}
    assert_error_panels_on_their_own_range(figs["space_time"])
    import matplotlib.pyplot as plt

    plt.close(figs["space_time"])
    # physical axes (KS: x in [0, 22), a frame every 2 time units); a diverged estimate shows past the truth's range
    run.model._sample["assimilated"] = 3 * run.model._sample["truth"]
    fig = run.model.figures()["space_time"]
    panels = {ax.get_title(): ax for ax in fig.axes if ax.images}
    truth, est = panels["truth"], next(ax for title, ax in panels.items() if title.startswith("NODA (alpha=1"))
    assert truth.get_xlabel() == "x" and truth.get_ylabel().startswith("t ")
    assert truth.images[0].get_extent()[1] == pytest.approx(22.0 * 63.5 / 64)
    assert truth.images[0].colorbar.extend == "neither" and est.images[0].colorbar.extend == "both"
    plt.close(fig)


def test_fast_contract_partial_training_measurements():
    fast_run("semilinear_operator", *SMALL_DATA, "model.train_alpha=0.5", "model.alpha=0.5", "model.rollout=20",
             "model.error_start=10", "model.error_end=20").assert_contract()


def test_fast_contract_training_from_the_true_first_state():
    fast_run("semilinear_operator", *SMALL_DATA, "model.train_init=truth", "model.rollout=20", "model.error_start=10",
             "model.error_end=20").assert_contract()


def test_datamodule_is_seeded_masked_and_noisy_only_at_sensors():
    full = SemilinearDataModule(n_train=2, n_test=1, n_frames=12, steps_per_epoch=1, batch_size=2, seed=0)
    full.setup("fit")
    assert bool(full.mask.all())  # default: the paper's y = u + noise on the whole grid
    dm = SemilinearDataModule(n_train=6, n_test=3, n_frames=40, steps_per_epoch=2, batch_size=5, seed=0,
                              obs_fraction=0.25)  # the card's sparse sensors
    dm.setup("fit")
    assert dm.u_train.shape == (6, 40, 64) and dm.u_test.shape == (3, 40, 64)
    assert int(dm.mask.sum()) == 16  # 25 % of 64 grid points
    assert dm.sigma == pytest.approx(0.1 * float(dm.u_train.double().std()), rel=1e-3)
    batches = list(dm.train_dataloader())
    again = list(dm.train_dataloader())
    assert len(batches) == 2 and torch.equal(batches[0]["y"], again[0]["y"])  # same epoch -> same batches
    b = batches[0]
    assert b["u"].shape == (5, 10, 64) and b["y"].shape == (5, 10, 64)
    off = dm.mask == 0
    assert torch.all(b["y"][..., off] == 0)
    noise = (b["y"] - b["u"])[..., ~off]
    assert 0.5 * dm.sigma < float(noise.std()) < 1.5 * dm.sigma
    item = next(iter(dm.test_dataloader()))
    assert item["u"].shape == (3, 40, 64) and torch.all(item["y"][..., off] == 0)


def test_bad_loss_weights_raise():
    from lit_models.dynamics.semilinear_operator import SemilinearOperatorModule

    for kwargs in ({"pred_weight": -1.0}, {"obs_weight": -0.5}):
        with pytest.raises(ValueError, match="weight"):
            SemilinearOperatorModule(**kwargs)
    with pytest.raises(ValueError, match="train_init"):
        SemilinearOperatorModule(train_init="warm")
    for kernels in ({"gain_kernel": 4}, {"gate_kernel": 6}):  # 'same' circular padding: a size mismatch at the first step
        with pytest.raises(ValueError, match="must be odd"):
            SemilinearOperatorModule(**kernels)


def test_bad_settings_against_the_data_are_one_line_errors():
    """model.dim against the data's states (a 2-D model on 1-D KS failed in conv2d at the first step) and
    data.unroll=1 (one frame is only the first correction: the predictor got no gradient, silently); review, stop 40."""
    from types import SimpleNamespace

    from launch.errors import UserError
    from lit_models.dynamics.semilinear_operator import SemilinearOperatorModule

    with pytest.raises(UserError, match="unroll"):
        SemilinearDataModule(unroll=1)
    dm = SimpleNamespace(u_test=torch.zeros(2, 120, 64))  # n x T x N: 1-D states
    model = SemilinearOperatorModule(dim=2)
    model._trainer = SimpleNamespace(datamodule=dm)
    with pytest.raises(UserError, match="model.dim=2 but the data's states are 1-D"):
        model.setup("fit")
    model = SemilinearOperatorModule(dim=1)
    model._trainer = SimpleNamespace(datamodule=dm)
    model.setup("fit")


def test_gain_linear_in_the_innovation_only_when_the_gate_reads_the_forecast():
    """gate_input=forecast: K_theta(u^f) d, linear in d (the paper's form); the card's gate on [u^f, d] is not."""
    from lit_models.dynamics.semilinear_operator import GatedGain

    torch.manual_seed(0)
    u_f, d1, d2 = torch.randn(3, 2, 32).unbind(0)
    paper, card = GatedGain(), GatedGain(gate_input="forecast_innovation")  # default: the paper's K(u^f)
    with torch.no_grad():
        torch.testing.assert_close(paper(u_f, 2.0 * d1 - 3.0 * d2), 2.0 * paper(u_f, d1) - 3.0 * paper(u_f, d2))
        assert (card(u_f, 2.0 * d1) - 2.0 * card(u_f, d1)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="gate_input"):
        GatedGain(gate_input="innovation")


def test_alpha_frame_masks():
    m1, m0, mh = alpha_frame_mask(1.0, 5, 100), alpha_frame_mask(0.0, 5, 100), alpha_frame_mask(0.5, 5, 100)
    assert m1.all() and m0[:5].all() and not m0[5:].any()
    assert mh[:5].all() and int(mh[5:].sum()) == 50 and torch.equal(mh, alpha_frame_mask(0.5, 5, 100))


def test_correction_pulls_toward_measurements_only_through_the_masked_innovation():
    torch.manual_seed(0)
    noda = NODA(modes=8, width=8)
    mask = torch.zeros(32)
    mask[::4] = 1.0
    u_f = torch.randn(3, 32)
    y = noda.observation(u_f, mask)  # measurements that agree with the forecast: zero innovation
    u_a, _ = noda.correct(u_f, y, mask)
    torch.testing.assert_close(u_a, u_f)
    # values of y off the sensors are ignored (masked innovation)
    u_a2, _ = noda.correct(u_f, y + 5.0 * (1 - mask), mask)
    torch.testing.assert_close(u_a2, u_f)
    # the innovation is y - E(u^f), masked (card pitfall: not E(u^f) - y): with the gain replaced by the identity,
    # the correction is exactly mask * (y - E(u^f))
    d = torch.randn(3, 32) * mask
    plus, _ = noda.correct(u_f, y + d, mask)
    assert float((plus - u_f).abs().max()) > 0
    class IdentityGain(torch.nn.Module):
        def forward(self, u, innovation):
            return innovation

    gain, noda.gain = noda.gain, IdentityGain()
    y_off = torch.randn(3, 32)
    identity_gain, _ = noda.correct(u_f, y_off, mask)
    torch.testing.assert_close(identity_gain - u_f, (y_off - noda.observation(u_f, mask)) * mask)
    noda.gain = gain
    # bounded gain: |K d| <= sum_c |mix_c| * |gain_c * d| pointwise, whatever u^f
    big, _ = noda.correct(1e3 * u_f, noda.observation(1e3 * u_f, mask) + d, mask)
    bound = (noda.gain.mix.weight.abs().squeeze()[None, :, None]
             * torch.nn.functional.conv1d(torch.nn.functional.pad(d[:, None], (4, 4), mode="circular"),
                                          noda.gain.gain.weight).abs()).sum(1)
    assert torch.all((big - 1e3 * u_f).abs() <= bound + 1e-3)


def test_spectral_conv_is_translation_equivariant_and_float32_under_autocast():
    torch.manual_seed(0)
    conv = SpectralConv1d(3, 4, modes=6)
    x = torch.randn(2, 3, 32)
    shifted = conv(torch.roll(x, 5, dims=-1))
    torch.testing.assert_close(shifted, torch.roll(conv(x), 5, dims=-1), atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x.bfloat16()).dtype == torch.float32


@pytest.mark.slow
def test_claim_assimilation_bounds_error_and_fails_with_baseline():
    """Card check 1 (KS L=22, 1,500 steps, 1 thread): rel. L2 over rollout frames 50-100 with measurements at every
    frame (alpha=1) <= 0.3, the same trained model with the correction disabled (alpha=0, `zoo check`'s
    {train: [], eval: [model.alpha=0.0]}) >= 0.8. Measurements on the whole grid (the paper's y = u + noise; see the
    experiment config).
    Measured (2026-12-06, gain K_theta(u^f)): alpha=1 0.045 / 0.050 / 0.045, alpha=0 1.394 / 1.377 / 1.364 (seeds
    0 / 1 / 2; the card's gate on [u^f, d]: 0.049 / 0.044 / 0.049 vs 1.297 / 1.424 / 1.392; the card
    expects saturation near sqrt(2)); with the card's 25 % sensors (data.obs_fraction=0.25) alpha=1 0.130, alpha=0
    1.302. The card's thresholds separate them with a wide margin and are kept. The swap (alpha=0 in place of
    alpha=1) must fail: 1.394 > 0.3."""
    torch.set_num_threads(1)
    result = run_claim("semilinear_operator", "assimilation_bounds_error")
    assert result.passed, result.report()
    swapped = run_claim("semilinear_operator", "assimilation_bounds_error", swap_baseline=True)
    assert not swapped.passed, swapped.report()


@pytest.mark.slow
def test_claim_beats_direct_insertion_and_fails_with_it():
    """Not a card check (stop 44's review): with measurements on the whole grid, check 1's 0.3 is met by the
    measurements alone (their noise is 0.1 std(u)), so check 1 would pass a filter that copies y. The same trained
    model with the learned correction replaced by direct insertion (u^a = u^f + mask (.) (y - u^f): the noisy y at
    every sensor) must do clearly worse. Measured (2026-12-08): NODA 0.0449 / 0.0502 / 0.0452 vs direct insertion
    0.1022 / 0.1022 / 0.1025 (seeds 0 / 1 / 2; ratio 0.44-0.49); with the card's 25 % sensors and gate on [u^f, d]
    (seed 0) 0.130 vs 0.801. Threshold 0.7x, between the two with a margin; the swap (direct insertion for NODA)
    compares it with itself and must fail."""
    torch.set_num_threads(1)
    result = run_claim("semilinear_operator", "beats_direct_insertion")
    assert result.passed, result.report()
    swapped = run_claim("semilinear_operator", "beats_direct_insertion", swap_baseline=True)
    assert not swapped.passed, swapped.report()


def test_direct_insertion_puts_the_measurement_at_the_sensors_and_the_forecast_elsewhere():
    """The direct-insertion baseline (model.correction=direct_insertion): the analysis equals y at measured points
    and the forecast elsewhere, whatever the learned E and K; an unknown correction is refused."""
    filt = NODA(correction="direct_insertion")
    y, mask = torch.randn(2, 4, 64), (torch.rand(64) < 0.25).float()
    u_a, u_f, _ = filt(y, mask, torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(u_a * mask, y * mask)
    torch.testing.assert_close(u_a * (1 - mask), u_f * (1 - mask))
    learned, _, _ = filt(y, mask, torch.ones(4, dtype=torch.bool), correction="learned")
    assert not torch.allclose(learned * mask, y * mask)
    with pytest.raises(ValueError, match="correction must be one of learned, direct_insertion"):
        NODA(correction="insert")


@pytest.mark.slow
def test_claim_monotone_in_alpha_and_fails_with_baseline():
    """Card check 2: error(alpha=1) < error(alpha=0.5) < error(alpha=0), one trained model evaluated three ways.
    Measured: 0.045 < 0.058 < 1.394 (seed 0; seeds 1 / 2: 0.050 < 0.058 < 1.377, 0.045 < 0.057 < 1.364); with the
    card's 25 % sensors 0.130 < 0.226 < 1.302 (alpha=0.25: 0.377). The swap (alpha=0 for alpha=1) must fail."""
    torch.set_num_threads(1)
    result = run_claim("semilinear_operator", "monotone_in_alpha")
    assert result.passed, result.report()
    swapped = run_claim("semilinear_operator", "monotone_in_alpha", swap_baseline=True)
    assert not swapped.passed, swapped.report()


@pytest.mark.slow
def test_claim_predictor_sanity_and_fails_with_persistence():
    """Card check 3: one-frame relative error of the trained predictor alone <= 0.05; persistence (u^f = u^a, no
    trainable predictor, so its one-frame error does not depend on training: run for one step) must fail (0.344).
    Measured with the paper's full-grid measurements (2026-12-06): 0.0215 / 0.0192 / 0.0217 (seeds 0 / 1 / 2; the
    card's gate on [u^f, d]: 0.032 / 0.023 / 0.033).
    History with the card's 25 % spatial sensors (data.obs_fraction=0.25), where the card's 0.05 is not reached at
    CPU scale: 0.130 / 0.112 (seeds 0 / 1) after 1,500 steps, 0.082 after 6,000, 0.0545 after 15,000 (the predictor
    learns only through the unrolled filter loss, from analyses u^a that carry 0.65 / 0.42 / 0.26 / ... / 0.14
    error across a training window). Tried there and not used (not in the card's or the paper's loss): an extra
    one-frame predictor loss on true states (`model.pred_weight=100`) 0.018 at 1,000 steps (pred_weight=1 0.123);
    training windows started from their true first state (`model.train_init=truth`) 0.041 / 0.049; windows of 5
    warm-up + 10 frames 0.167 / 0.176; gradients cut between unrolled steps 0.101; measurements at half the
    training frames 0.171. The same FNO trained one-step alone: 0.007."""
    torch.set_num_threads(1)
    swapped = run_claim("semilinear_operator", "predictor_sanity", swap_baseline=True)
    assert not swapped.passed, swapped.report()
    result = run_claim("semilinear_operator", "predictor_sanity")
    assert result.passed, result.report()


def test_fast_contract_two_dimensional_navier_stokes():
    """NODA in 2D (paper Sec. 4, Navier-Stokes vorticity): the offline generated data at a tiny size."""
    run = fast_run("semilinear_operator", "data.name=ns", "data.grid=16", "data.solver_dt=0.01", "data.save_every=50",
                   "data.burn_in_time=0.0", "data.n_frames=12", "data.n_train=4", "data.n_test=2",
                   "data.steps_per_epoch=3", "data.batch_size=2", "data.unroll=4", "model.dim=2", "model.modes=4",
                   "model.width=8", "model.warmup=2", "model.rollout=8", "model.error_start=4", "model.error_end=8")
    run.assert_contract()
    dtype = run.model.dtype
    assert run.model(torch.zeros(2, 5, 16, 16, dtype=dtype), torch.ones(16, 16, dtype=dtype),
                     torch.ones(5, dtype=torch.bool)).shape == (2, 5, 16, 16)
    run.model._sample["assimilated"] = 3 * run.model._sample["truth"]  # out of the truth's range: arrows
    figs = run.model.figures()
    assert set(figs) == {"snapshots"}
    assert_error_panels_on_their_own_range(figs["snapshots"])
    bars = {ax.get_title().split(",")[0]: ax.images[0].colorbar for ax in figs["snapshots"].axes
            if ax.images and ax.images[0].colorbar is not None}  # one colour bar per row
    assert bars["truth"].extend == "neither" and bars["NODA (alpha=1)"].extend == "both"
    import matplotlib.pyplot as plt

    plt.close(figs["snapshots"])


def test_spectral_conv_2d_is_translation_equivariant():
    torch.manual_seed(0)
    conv = SpectralConv(2, 3, modes=4, dim=2)
    x = torch.randn(2, 2, 16, 16)
    torch.testing.assert_close(conv(torch.roll(x, (3, 5), dims=(-2, -1))), torch.roll(conv(x), (3, 5), dims=(-2, -1)),
                               atol=1e-5, rtol=1e-5)


def test_kdv_variant_generates_finite_trajectories():
    """experiment=semilinear_operator/kdv generates its two-soliton data offline: its 2,048 + 256 start states at the
    variant's grid, step and spacing stay finite (at the base 64 points some blew up, so the variant could not run;
    the first 264 states include such ones)."""
    import numpy as np

    from datamodules.semilinear_data import make_pde_trajectories
    from launch import config as zconfig

    d = zconfig.compose(["experiment=semilinear_operator/kdv"]).data
    u = make_pde_trajectories("kdv", 264, d.grid, d.domain_length, d.solver_dt, d.save_every, d.burn_in_time,
                              d.n_frames, d.seed)
    assert u.shape == (264, d.n_frames, 128) and np.isfinite(u).all()
    coarse = make_pde_trajectories("kdv", 264, 64, d.domain_length, d.solver_dt, d.save_every, d.burn_in_time,
                                   d.n_frames, d.seed)
    assert not np.isfinite(coarse).all()  # what the variant ran into before
