"""The FNO baseline of `zoo bench mgno` (benchmarks/mgno_speed.py): the official Darcy FNO-2d pads the domain after
the lifting and crops before the projection (the data are Dirichlet, not periodic), padding=0 is the periodic variant
the benchmark used before, and the matched width / modes give a parameter count within the stated tolerance of MgNO's.
Exact properties only, no timing: seconds to run."""
from __future__ import annotations

import pytest
import torch

from benchmarks.mgno_speed import FNO2d, PADDING, PARAM_TOL, matched_fno, n_params


def _rfft2_input_shapes(monkeypatch) -> list[tuple[int, int]]:
    """Record the spatial shape of every torch.fft.rfft2 input (the spectral layers' grids)."""
    seen: list[tuple[int, int]] = []
    rfft2 = torch.fft.rfft2

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape[-2:]))
        return rfft2(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfft2", spy)
    return seen


@pytest.mark.parametrize("padding", [PADDING, 3, 0])
@pytest.mark.parametrize("grid", [(16, 16), (12, 20)])
def test_fno_pads_before_the_fourier_layers_and_crops_after(monkeypatch, padding, grid):
    torch.manual_seed(0)
    model = FNO2d(modes=4, width=6, padding=padding)
    seen = _rfft2_input_shapes(monkeypatch)
    x = torch.randn(2, 1, *grid)
    out = model(x)
    assert out.shape == (2, 1, *grid)  # cropped back to the input grid
    h, w = grid
    assert seen == [(h + padding, w + padding)] * len(model.spectral)  # every FFT on the padded grid


def test_padding_adds_no_parameters_and_defaults_to_the_official_9():
    assert PADDING == 9 and FNO2d().padding == 9
    assert n_params(FNO2d(8, 10, padding=9)) == n_params(FNO2d(8, 10, padding=0))
    with pytest.raises(ValueError, match="padding"):
        FNO2d(padding=-1)


def _periodic_forward(model: FNO2d, x: torch.Tensor) -> torch.Tensor:
    """The benchmark's FNO forward before padding (FFTs on the grid itself: periodic boundaries), verbatim."""
    b, _, h, w = x.shape
    gy, gx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    v = model.lift(torch.cat([x, gx.expand(b, 1, h, w), gy.expand(b, 1, h, w)], 1))
    for i, (k, lin) in enumerate(zip(model.spectral, model.local)):
        v = k(v) + lin(v)
        if i < len(model.spectral) - 1:
            v = model.act(v)
    return model.proj(v)


def test_padding_zero_is_the_old_periodic_fno_and_padding_changes_the_operator():
    torch.manual_seed(0)
    periodic = FNO2d(modes=4, width=6, padding=0)
    padded = FNO2d(modes=4, width=6, padding=PADDING)
    padded.load_state_dict(periodic.state_dict())  # same weights: only the boundary treatment differs
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(periodic(x), _periodic_forward(periodic, x))
        assert not torch.allclose(padded(x), periodic(x), atol=1e-4)
    # periodic: the spectral layer is a circular convolution, so it commutes with a circular shift
    v = torch.randn(1, 6, 16, 16)
    k = periodic.spectral[0]
    with torch.no_grad():
        assert torch.allclose(k(torch.roll(v, 5, dims=-1)), torch.roll(k(v), 5, dims=-1), atol=1e-5)


@pytest.mark.parametrize("res, levels, c_u, modes, width", [(32, 4, 12, 7, 11), (64, 5, 16, 12, 12)])
def test_matched_fno_is_within_the_stated_parameter_tolerance(res, levels, c_u, modes, width):
    """--quick (32 x 32): 8 modes give width 10 at +8.4%, so the match lowers the modes to 7 (width 11, +0.8%); the
    64 x 64 reference scale keeps the nominal 12 modes (width 12, -0.3%)."""
    from lit_models.pde.mgno import MgNO

    target = n_params(MgNO(1, 1, num_layer=3, num_channel_u=c_u, levels=["10"] * levels, resolution=res))
    fno = matched_fno(target, modes=min(12, res // 4))
    assert (fno.modes, fno.width, fno.padding) == (modes, width, PADDING)
    assert abs(n_params(fno) / target - 1) <= PARAM_TOL
    assert fno.spectral[0].w1.device.type == "cpu"  # a real model, not the meta-device one the search counts on
    if res == 32:  # 8 modes alone miss: width 9 is ~12% below, width 10 8.4% above (the reason for the modes search)
        assert all(abs(n_params(FNO2d(8, w)) / target - 1) > PARAM_TOL for w in (9, 10))


def test_every_quick_row_states_both_parameter_counts():
    from benchmarks import mgno_speed

    rows = mgno_speed.run(quick=True)
    for row in rows:
        assert {"params_mgno", "params_fno"} <= row.keys(), row
        assert abs(row["params_fno"] / row["params_mgno"] - 1) <= PARAM_TOL
    fno, ratio = rows[1], rows[-1]
    assert (fno["model"], fno["padding"], fno["params"]) == ("fno", PADDING, ratio["params_fno"])
    assert f"{ratio['params_fno']:,}" in ratio["note"] and f"{ratio['params_mgno']:,}" in ratio["note"]
