"""NODA's faster 1D paths (lit_models/dynamics/semilinear_operator.py) against the direct forms they replace, kept
here as references: the spectral layer as rfft -> complex mixing -> irfft, the FNO with channel-last layers, the gate / gain / observation convolutions as circular 1-D convolutions, the filter with each step building
its own weights, and the one-step evaluation on all states at once. Same functions: float64 to ~1e-12, float32 to
float rounding, forward and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_models.dynamics.semilinear_operator import (
    CIRCULANT_MAX_POINTS,
    FNO,
    NODA,
    GatedGain,
    ObservationOperator,
    SemilinearOperatorModule,
    SpectralConv,
)


def reference_spectral_1d(conv: SpectralConv, x: Tensor) -> Tensor:  # B x C x N
    """The FFT form: rfft, the lowest modes times the complex weights, irfft."""
    n = x.shape[-1]
    xh = torch.fft.rfft(x, dim=-1)
    m = min(conv.modes, xh.shape[-1])
    w = torch.view_as_complex(conv.weight[:, :, :m].contiguous())
    out = torch.zeros(x.shape[0], w.shape[1], xh.shape[-1], dtype=xh.dtype)
    out[..., :m] = torch.einsum("bim,iom->bom", xh[..., :m], w)
    return torch.fft.irfft(out, n=n, dim=-1)


def reference_fno_1d(fno: FNO, u: Tensor) -> Tensor:  # B x N
    """Lift every point to `width` channels, layers channel-last with the FFT spectral form, project."""
    v = fno.lift(u[..., None])
    for i, (spec, pw) in enumerate(zip(fno.spectral, fno.pointwise)):
        v = reference_spectral_1d(spec, v.movedim(-1, 1)).movedim(1, -1) + pw(v)
        if i < len(fno.spectral) - 1:
            v = F.gelu(v)
    return fno.proj2(F.gelu(fno.proj1(v)))[..., 0]


def circular_conv(conv: torch.nn.Conv1d, x: Tensor) -> Tensor:
    p = conv.padding[0]
    return F.conv1d(F.pad(x, (p, p), mode="circular") if p else x, conv.weight, conv.bias)


def reference_gain(gain: GatedGain, u_f: Tensor, d: Tensor) -> Tensor:
    g = torch.stack([u_f, d], 1) if gain.gate_input == "forecast_innovation" else u_f[:, None]
    gate = torch.sigmoid(circular_conv(gain.gate, g))
    return circular_conv(gain.mix, gate * circular_conv(gain.gain, d[:, None]))[:, 0]


def perturbed(module: torch.nn.Module, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """The module in `dtype` with its parameters moved off their initial values (biases included)."""
    torch.manual_seed(seed)
    module = module.to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def assert_same_function(new, ref, inputs, params, dtype):
    """Outputs and gradients (inputs and parameters) agree, each relative to its largest entry."""
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 2e-6}
    out_new, out_ref = new(), ref()
    g = torch.randn_like(out_ref)
    grads_new = torch.autograd.grad(out_new, inputs + params, g)
    grads_ref = torch.autograd.grad(out_ref, inputs + params, g)
    for a, b in zip((out_new, *grads_new), (out_ref, *grads_ref)):
        scale = float(b.detach().abs().max()) or 1.0
        torch.testing.assert_close(a / scale, b / scale, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,modes", [(64, 12), (64, 33), (63, 40), (16, 9), (65, 12)])  # incl. Nyquist, odd n, all
def test_spectral_layer_equals_fft_form(dtype, n, modes):
    conv = perturbed(SpectralConv(3, 4, modes), dtype)
    x = torch.randn(5, 3, n, dtype=dtype, requires_grad=True)
    assert_same_function(lambda: conv(x), lambda: reference_spectral_1d(conv, x), [x], [conv.weight], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,modes,width,layers", [(64, 12, 32, 2), (64, 40, 8, 1), (63, 12, 8, 3), (16, 9, 4, 0)])
def test_fno_equals_direct_form(dtype, n, modes, width, layers):
    fno = perturbed(FNO(modes, width, layers), dtype)
    u = torch.randn(6, n, dtype=dtype, requires_grad=True)
    params = list(fno.parameters())
    assert_same_function(lambda: fno(u), lambda: reference_fno_1d(fno, u), [u], params, dtype)
    # prepared once and shared (a filter run) = prepared per call; leading axes kept
    torch.testing.assert_close(fno(u, fno.prepare(n)), fno(u), rtol=0, atol=0)
    assert fno(u.detach().view(2, 3, n)).shape == (2, 3, n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gate_input", ["forecast", "forecast_innovation"])
@pytest.mark.parametrize("n", [64, 9])
def test_circulant_gain_equals_circular_convolutions(dtype, gate_input, n):
    gain = perturbed(GatedGain(gate_input=gate_input), dtype)
    u_f = torch.randn(4, n, dtype=dtype, requires_grad=True)
    d = torch.randn(4, n, dtype=dtype, requires_grad=True)
    params = list(gain.parameters())
    assert_same_function(lambda: gain(u_f, d), lambda: reference_gain(gain, u_f, d), [u_f, d], params, dtype)
    obs = perturbed(ObservationOperator(), dtype)
    mask = (torch.rand(n) < 0.5).to(dtype)
    assert_same_function(lambda: obs(u_f, mask), lambda: circular_conv(obs.conv, u_f[:, None])[:, 0] * mask, [u_f],
                         list(obs.parameters()), dtype)


@pytest.mark.parametrize("n", [8, CIRCULANT_MAX_POINTS + 1])
def test_gain_falls_back_to_convolutions_where_the_kernel_exceeds_the_grid_or_the_grid_is_large(n):
    """Gain kernel 9 > 8 points, or a grid where the n x n circulant outgrows the convolution: the unfold + einsum
    path."""
    gain = perturbed(GatedGain(), torch.float64)
    assert gain.operators(n) is None
    u_f, d = torch.randn(2, 3, n, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(gain(u_f, d), reference_gain(gain, u_f, d))


@pytest.mark.parametrize("gate_input", ["forecast", "forecast_innovation"])
def test_filter_run_equals_steps_with_their_own_weights(gate_input):
    """NODA.forward builds the FNO's and the gain's derived weights once; the same run step by step through the
    public per-call modules (each builds its own) gives the same values bit for bit, and the direct forms (FFT layer,
    convolutions) the same up to float64 rounding."""
    noda = perturbed(NODA(modes=8, width=8, gate_input=gate_input), torch.float64)
    y = torch.randn(3, 7, 32, dtype=torch.float64)
    mask = (torch.rand(32) < 0.6).double()
    frames = torch.tensor([1, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    u_a, u_f, y_hat = noda(y, mask, frames)

    def run(predictor, gain, observation):
        u, out = torch.zeros_like(y[:, 0]), []
        for k in range(y.shape[1]):
            f = u if k == 0 else predictor(u)
            e = observation(f, mask)
            u = f + gain(f, (y[:, k] - e) * mask) if frames[k] else f
            out.append((u, f, e))
        return [torch.stack(z, 1) for z in zip(*out)]

    stepwise = run(noda.predictor, noda.gain, noda.observation)
    for a, b in zip((u_a, u_f, y_hat), stepwise):
        assert torch.equal(a, b)
    direct = run(lambda u: u + reference_fno_1d(noda.predictor.operator, u),
                 lambda f, d: reference_gain(noda.gain, f, d),
                 lambda f, m: circular_conv(noda.observation.conv, f[:, None])[:, 0] * m)
    for a, b in zip((u_a, u_f, y_hat), direct):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_one_step_in_chunks_equals_all_states_at_once():
    torch.manual_seed(0)
    model = SemilinearOperatorModule(modes=8, width=8)
    states = torch.randn(1000, 64)
    model.ONE_STEP_CHUNK_POINTS = 64 * 128  # 128 states per call: 8 chunks, the last one short
    with torch.no_grad():
        torch.testing.assert_close(model.one_step(states), model.model.predictor(states), rtol=1e-6, atol=1e-7)


def test_weights_first_built_under_inference_mode_still_train():
    """Lightning validates and tests under inference mode. A DFT matrix (or circulant index) first built there was an
    inference tensor, so a later training step of the same model or a new one failed in backward ("Inference tensors
    cannot be saved for backward": a model validated before it was fit; review, stop 39)."""
    torch.manual_seed(0)
    y, mask, frames = torch.randn(2, 4, 32), torch.ones(32), torch.ones(4, dtype=torch.bool)
    noda = NODA(modes=8, width=8)
    with torch.inference_mode():
        noda(y, mask, frames)
    for model in (noda, NODA(modes=8, width=8)):
        u_a, _, _ = model(y, mask, frames)
        u_a.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pred_weight_adds_the_chunked_one_step_loss_and_trains_the_predictor():
    """`pred_weight` > 0 (off in every shipped config) adds pred_weight x the one-frame MSE of the predictor on the
    window's true states, computed by `one_step` (chunked, as evaluation): the loss rises by exactly that term and the
    predictor's gradient changes, in chunks as at once."""
    torch.manual_seed(0)
    u = torch.randn(3, 6, 32)
    batch = {"u": u, "y": u + 0.01 * torch.randn_like(u), "mask": (torch.arange(32) % 4 == 0).float().expand(3, 32)}
    losses, grads = {}, {}
    for weight, chunk in ((0.0, None), (10.0, None), (10.0, 32 * 4)):
        torch.manual_seed(1)
        model = SemilinearOperatorModule(modes=8, width=8, pred_weight=weight)
        model.log = lambda *args, **kwargs: None
        if chunk is not None:
            model.ONE_STEP_CHUNK_POINTS = chunk  # 4 states per predictor call: 4 chunks of the 15 states
        loss = model.training_step(batch)
        loss.backward()
        losses[weight, chunk] = loss.detach()
        grads[weight, chunk] = torch.cat([p.grad.flatten() for p in model.model.predictor.parameters()])
    with torch.no_grad():
        mse = F.mse_loss(model.model.predictor(u[:, :-1].reshape(-1, 32)), u[:, 1:].reshape(-1, 32))
    torch.testing.assert_close(losses[10.0, None], losses[0.0, None] + 10.0 * mse)
    torch.testing.assert_close(losses[10.0, 32 * 4], losses[10.0, None])
    torch.testing.assert_close(grads[10.0, 32 * 4], grads[10.0, None])
    assert not torch.allclose(grads[10.0, None], grads[0.0, None])
