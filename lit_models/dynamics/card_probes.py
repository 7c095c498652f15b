"""Deterministic card checks of the dynamics family as `zoo check` probes (`{probe: <module>:<function>, args}` in an
experiment's `claims:`). Each probe trains nothing and returns a dict of metrics; the tests in tests/papers/ call the
same functions, so `zoo check <slug>` and pytest measure the same thing.

- GTF-shPLRNN (card checks 1-2): gradient norm of the GTF loss on the exact chaotic shPLRNN (the tent map), with
  alpha set by hand or by an alpha* = 1 - 1/G estimator (default the product upper bound).
- iTransformer (card check 2): permutation equivariance over variates, against the temporal-token Transformer.
- dysts benchmark (card checks 1 and 3): timescale alignment (periodogram peak in samples = points per period) and
  bitwise determinism of the generated trajectories.
- PROSE (card check 3): tokenizer round trip of random expressions with constants.
- MEDIDA (card check 1): sparse regression on full observations of KS selects -0.2 u_xx only.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------
# GTF-shPLRNN: the tent map as an exact shPLRNN (M = L = 1, A = a, W1 = -4, W2 = 1, h2 = -0.5, h1 = 0)
# ------------------------------------------------------------------------------------------------


def tent_model(a: float = 2.0):
    """The shPLRNN z' = a z + W2 relu(W1 z + h2) + h1 with W1 = -4, W2 = 1, h2 = -0.5, h1 = 0 (unclipped): for a = 2
    it is the tent map, |J| = 2 everywhere. float64."""
    from lit_models.dynamics.gtf_plrnn import ShallowPLRNN

    model = ShallowPLRNN(1, 1, clipped=False).double()
    with torch.no_grad():
        model.A.fill_(a)
        model.W1.fill_(-4.0)
        model.W2.fill_(1.0)
        model.h2.fill_(-0.5)
        model.h1.fill_(0.0)
    return model


def tent_sequences(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length, 1) orbits of the true tent map from uniform starts, float64."""
    z = torch.rand(batch, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = [z]
    for _ in range(length - 1):
        z = torch.where(z < 0.5, 2 * z, 2 - 2 * z)
        out.append(z)
    return torch.stack(out, dim=1)


def tent_alpha_star(orbit_length: int = 200, estimator: str = "product_upper_bound") -> dict[str, float]:
    """Card check 2: the estimate G of `estimator` (a key of gtf_plrnn.ALPHA_ESTIMATORS) along a 200-step tent orbit
    and alpha* = 1 - 1/G: product upper bound 2, 0.5 (card); the parameter bound jacobian_upper_bound
    max|A| + ||W1|| ||W2|| = 2 + 4 = 6, 0.833."""
    from launch.errors import check_choice
    from lit_models.dynamics.gtf_plrnn import ALPHA_ESTIMATORS, alpha_star

    check_choice("args.estimator", "alpha estimator", estimator, ALPHA_ESTIMATORS)  # a one-line error in zoo check
    bound = ALPHA_ESTIMATORS[estimator](tent_model(2.0), tent_sequences(1, orbit_length)[0])
    return {"bound": bound, "alpha_star": alpha_star(bound)}


def tent_map_gradient_norm(alpha: float | str, length: int = 40, batch: int = 64, a: float = 1.99,
                           estimator: str = "product_upper_bound") -> dict[str, float]:
    """Card check 1: ||grad of the GTF loss|| on the tent-map shPLRNN perturbed to A = `a`, over `batch` true orbits of
    `length` steps. `alpha="estimated"` uses alpha* from `tent_alpha_star` with `estimator` (card: product upper
    bound, 0.5)."""
    from lit_models.dynamics.gtf_plrnn import gtf_loss

    if alpha == "estimated":
        alpha = tent_alpha_star(estimator=estimator)["alpha_star"]
    model = tent_model(a)
    loss = gtf_loss(model, tent_sequences(batch, length), float(alpha))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return {"grad_norm": float(torch.sqrt(sum((g**2).sum() for g in grads))), "alpha": float(alpha)}


# ------------------------------------------------------------------------------------------------
# iTransformer: permutation equivariance over variates
# ------------------------------------------------------------------------------------------------


def variate_permutation_error(model: str = "itransformer", n_variates: int = 8, seq_len: int = 96,
                              pred_len: int = 24, use_attention: bool = True, seed: int = 0) -> dict[str, float]:
    """Card check 2: max |f(x)[..., perm] - f(x[..., perm])| for a random permutation of the variates. iTransformer
    (variates as tokens, no variate-ID embedding) is equivariant up to float error; the temporal-token Transformer
    (`model="temporal"`, all variates of a time step embedded into one token) is not."""
    from lit_models.dynamics.itransformer import ITransformer
    from lit_models.dynamics.temporal_transformer import TemporalTransformer

    torch.manual_seed(seed)
    sizes = dict(seq_len=seq_len, pred_len=pred_len, d_model=64, n_heads=4, e_layers=2, d_ff=128)
    if model == "itransformer":
        net = ITransformer(use_attention=use_attention, **sizes)
    elif model == "temporal":
        net = TemporalTransformer(num_variates=n_variates, **sizes)
    else:
        raise ValueError(f"model must be 'itransformer' or 'temporal', got {model!r}")
    net.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, seq_len, n_variates, generator=g)
    perm = torch.randperm(n_variates, generator=g)
    with torch.no_grad():
        return {"max_abs_diff": float((net(x)[..., perm] - net(x[..., perm])).abs().max())}


# ------------------------------------------------------------------------------------------------
# dysts benchmark: timescale alignment and determinism
# ------------------------------------------------------------------------------------------------


def peak_period_samples(x: np.ndarray) -> float:
    """Period, in samples, of the periodogram's largest non-zero-frequency peak."""
    from scipy.signal import periodogram

    freqs, power = periodogram(x - x.mean())
    k = int(np.argmax(power[1:])) + 1
    return float(1.0 / freqs[k])


def timescale_alignment(system: str = "Rossler", pts_per_period: int = 50, n_points: int = 3000,
                        resample: bool = True) -> dict[str, float]:
    """Card check 1: relative gap |peak period in samples - pts_per_period| / pts_per_period of coordinate 0
    (card: 29.7 / 49.2 / 78.9 for 30 / 50 / 80). `resample=False` integrates at the stored dt instead (no
    timescale alignment: the card's failing variant)."""
    if resample:
        from datamodules.dysts_windows import load_series

        x = load_series(system, n_points, pts_per_period)
    else:
        import dysts.flows

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flow = getattr(dysts.flows, system)()
            x = flow.make_trajectory(n_points, resample=False, method="RK45", rtol=1e-9, atol=1e-9)[:, 0]
    peak = peak_period_samples(x)
    return {"peak_samples": peak, "relative_gap": abs(peak - pts_per_period) / pts_per_period}


def trajectory_determinism(system: str = "Rossler", n_points: int = 600, pts_per_period: int = 50,
                           ic_perturbation: float = 0.0) -> dict[str, float]:
    """Card check 3: max |a - b| of two trajectories integrated by two fresh instances of the system (not the
    datamodules' per-process cache) with the benchmark's integrator settings (card: 0.0). `ic_perturbation` shifts
    the second instance's initial condition by that much, as a generator that is not reproducible would: the
    check must see it."""
    import dysts.flows

    runs = []
    for shift in (0.0, ic_perturbation):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flow = getattr(dysts.flows, system)()
            flow.ic = np.asarray(flow.ic, dtype=np.float64) + shift
            runs.append(flow.make_trajectory(n_points, pts_per_period=pts_per_period, resample=True, method="RK45",
                                             rtol=1e-9, atol=1e-9))
    return {"max_abs_diff": float(np.abs(runs[0] - runs[1]).max())}


# ------------------------------------------------------------------------------------------------
# PROSE: tokenizer round trip
# ------------------------------------------------------------------------------------------------


def tokenizer_round_trip(n_expressions: int = 1000, seed: int = 0, skeleton: bool = False,
                         float_precision: int = 3) -> dict[str, float]:
    """Card check 3: fraction of random expressions with constants for which decode(encode(e)) has e's terms and
    every constant within 3 significant digits of e's (relative error <= 5e-3, the card's configured precision) and
    equals e rounded by the tokenizer. `skeleton=True` encodes without constants (the skeleton tokens) and a coarser
    `float_precision` of the tokenizer loses digits: both must fail it."""
    from lit_models.dynamics.prose_symbolic import SymbolicTokenizer, random_expression

    tok = SymbolicTokenizer(max_dim=3, float_precision=float_precision)
    rng = np.random.default_rng(seed)
    exact = 0
    for _ in range(n_expressions):
        expr = random_expression(rng)
        back = tok.decode(tok.encode(expr, skeleton=skeleton))
        same_terms = back is not None and [[m for _, m in comp] for comp in back] == \
            [[m for _, m in comp] for comp in expr]
        close = same_terms and all(isinstance(c_back, float) and abs(c_back - c) <= 5e-3 * abs(c) + 1e-12
                                   for comp_back, comp in zip(back, expr) for (c_back, _), (c, _) in zip(comp_back, comp))
        exact += bool(close) and back == tok.round_expression(expr)
    return {"exact_fraction": exact / n_expressions}


# ------------------------------------------------------------------------------------------------
# MEDIDA: discovery from full observations (1-D KS)
# ------------------------------------------------------------------------------------------------


def full_observation_discovery(increment_sign: float = 1.0) -> dict[str, float]:
    """Card check 1: ARD on the exact spectral derivatives of the offline KS data (the missing -0.2 u_xx model error)
    returns coefficients c; metrics: u_xx's c, the largest |c| of the other terms and max |c - c_true|.
    `increment_sign=-1` flips the analysis increment (the card's failing variant)."""
    from datamodules.medida_data import MedidaDataModule
    from lit_models.dynamics.medida import build_library, discover

    dm = MedidaDataModule()
    dm.setup()
    coef = discover(build_library(dm.data["derivs"]), increment_sign * dm.data["increment"])
    truth = np.zeros_like(coef)
    truth[2] = -0.2
    return {"uxx": float(coef[2]), "max_other": float(np.abs(np.delete(coef, 2)).max()),
            "max_coef_error": float(np.abs(coef - truth).max())}
