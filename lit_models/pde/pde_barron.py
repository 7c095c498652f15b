"""Neural Network Approximations of PDEs Beyond Linearity: A Representational Perspective
(Marwah, Lipton, Lu, Risteski; arXiv 2210.12101).

A theory paper: the solution of a nonlinear variational elliptic PDE -div(d_p L) + d_u L = f is approximated by a
network of small Barron norm because the preconditioned gradient descent in H^1 (the paper's "neural simulation")
    u_{t+1} = u_t - eta (I - Delta)^{-1} DE(u_t),   DE(u) = -div d_p L(x, u, grad u) + d_u L(x, u, grad u) - f,
(i) converges exponentially at a rate set by lambda / Lambda, independent of the dimension, and (ii) multiplies the
Barron norm by a bounded factor per step ((I - Delta)^{-1} never increases it; the nonlinearity raises it to a
power p). We simulate that construction exactly (card experiment, not from the paper): on the torus T^d with
L = 1/2 |grad u|^2 + 1/2 u^2 + gamma/4 u^4 (p = 3, lambda = 1), DE(u) = (I - Delta) u + gamma u^3 - f, every
iterate is an explicit sparse Fourier sum = a finite-width 2-layer cosine network (`datamodules.barron_data`):
- `pgd`: u <- u - eta (I - Delta)^{-1} DE(u) (eta = 1, or smaller for large u*: `pgd_step`), products pruned at tau
  after every product, <= max_pairs;
- `gd` (baseline): plain L2 gradient descent u <- u - eta DE(u) with its largest stable step
  eta = 1 / (1 + max |k|^2) over the support of f.
Barron norm convention: sum_k (1 + |k|) |c_k| over the complex exponentials (both ±k).

`PdeBarronModule` is the LightningModule wrapper the framework needs: at the start of fit/test it runs the chosen
simulator on every problem of the datamodule and logs the summary as test/ metrics; its trainable part is the
"neural simulation -> network" bridge: a Deep Ritz 2-layer cosine network u(x) = sum_j a_j cos(k_j.x + phi_j) with
integer frequencies k_j (periodicity) taken from the simulator's final support, trained on the Monte-Carlo Ritz
energy E(u) = mean[1/2 |grad u|^2 + 1/2 u^2 + gamma/4 u^4 - f u] on uniform torus samples.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from datamodules.barron_data import BarronProblem, SparseFourier, relative_l2_error
from launch.errors import check_min, check_positive
from lit_models.common.pde import RelativeL2, no_autocast
from lit_models.common.steps import EvaluateOnValAndTest

METHODS = ("pgd", "gd")


@dataclass
class SimulationTrace:
    """Per-iteration relative L2 error (index 0 = initial guess u_0 = 0), width and Barron norm of the iterates."""

    errors: list[float] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    barron: list[float] = field(default_factory=list)
    eta: float = 1.0
    final: SparseFourier | None = None

    @property
    def mean_contraction(self) -> float:
        """Geometric-mean error reduction per iteration, (e_0 / e_T)^(1/T)."""
        t = len(self.errors) - 1
        return float((self.errors[0] / max(self.errors[-1], 1e-300)) ** (1.0 / max(t, 1)))


def residual(u: SparseFourier, problem: BarronProblem, tau: float, max_pairs: int | None) -> SparseFourier:
    """DE(u) = (I - Delta) u + gamma u^3 - f, the products pruned after each multiplication."""
    cube = u.multiply(u, tau, max_pairs).multiply(u, tau, max_pairs)
    return u.helmholtz() + cube.scale(problem.gamma) - problem.f


def pgd_step(problem: BarronProblem) -> float:
    """PGD's default eta: 1 where 3 gamma A^2 < 1, A = sum |c_k| of u* (>= ||u*||_inf: the cubic term's derivative
    3 gamma u^2 stays below 1 near u*, so the step eta = 1 contracts); else the card's 1 / (1 + 3 gamma A^2) (with
    eta = 1 the iteration diverged at A = 3, d = 2)."""
    bound = 3.0 * problem.gamma * float(np.abs(problem.u_star.coefs).sum()) ** 2
    return 1.0 if bound < 1.0 else 1.0 / (1.0 + bound)


def simulate(problem: BarronProblem, method: str = "pgd", iterations: int = 10, eta: float | None = None,
             tau: float = 1e-6, max_pairs: int = 600) -> SimulationTrace:
    """Run `iterations` steps of PGD (preconditioned by (I - Delta)^{-1}) or plain GD from u_0 = 0."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if eta is None:
        eta = pgd_step(problem) if method == "pgd" else 1.0 / (1.0 + float(problem.f.k2().max()))
    u = SparseFourier.zeros(problem.d)
    trace = SimulationTrace(eta=eta)

    def record(v: SparseFourier) -> None:
        trace.errors.append(relative_l2_error(v, problem.u_star))
        trace.widths.append(v.width)
        trace.barron.append(v.barron_norm())

    record(u)
    for _ in range(iterations):
        g = residual(u, problem, tau, max_pairs)
        step = g.helmholtz_inverse() if method == "pgd" else g
        u = (u - step.scale(eta)).pruned(tau, max_pairs)
        record(u)
    trace.final = u
    return trace


def summarise(problems: list[BarronProblem], traces: list[SimulationTrace]) -> dict[str, float]:
    """Claim metrics over all problems (worst case where a threshold applies)."""
    widths_star = [p.u_star.width for p in problems]
    return {
        "min_contraction": min(t.mean_contraction for t in traces),
        "max_final_rel_l2": max(t.errors[-1] for t in traces),
        "min_final_rel_l2": min(t.errors[-1] for t in traces),
        "max_first_rel_l2": max(t.errors[1] for t in traces),
        "max_peak_width": float(max(max(t.widths) for t in traces)),
        "width_mismatch": float(max(abs(t.widths[-1] - w) for t, w in zip(traces, widths_star))),
        "max_barron_rel_err": max(abs(t.barron[-1] - p.u_star.barron_norm()) / p.u_star.barron_norm()
                                  for t, p in zip(traces, problems)),
        "peak_width_growth": _peak_width_growth(problems, traces),
    }


def _peak_width_growth(problems: list[BarronProblem], traces: list[SimulationTrace]) -> float:
    """Peak width at the largest d minus peak width at the smallest d >= 16 (the card compares d >= 16, where
    frequency collisions are rare); 0 with a single such dimension."""
    dims = sorted({p.d for p in problems})
    ref = next((d for d in dims if d >= 16), dims[0])

    def peak(d: int) -> int:
        return max(max(t.widths) for t, p in zip(traces, problems) if p.d == d)

    return float(peak(dims[-1]) - peak(ref))


class CosineNetwork(nn.Module):
    """u(x) = sum_j a_j cos(k_j.x + phi_j) + b: a 2-layer network with cosine activation whose first-layer rows k_j
    are fixed integer vectors (a `frequencies` buffer), so u is periodic on the torus."""

    def __init__(self, frequencies: Tensor, amplitudes: Tensor | None = None, phases: Tensor | None = None) -> None:
        super().__init__()
        n = frequencies.shape[0]
        self.register_buffer("frequencies", frequencies.double())
        amplitudes = amplitudes if amplitudes is not None else 0.01 * torch.randn(n)
        self.amplitudes = nn.Parameter(amplitudes.double())
        self.phases = nn.Parameter(phases.double() if phases is not None else 2 * math.pi * torch.rand(n).double())
        self.offset = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        arg = x.double() @ self.frequencies.T + self.phases
        return torch.cos(arg) @ self.amplitudes + self.offset

    def value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """u(x) (N,) and grad u(x) (N, d) in closed form."""
        arg = x.double() @ self.frequencies.T + self.phases
        u = torch.cos(arg) @ self.amplitudes + self.offset
        grad = -(torch.sin(arg) * self.amplitudes) @ self.frequencies
        return u, grad


def ritz_energy(net: CosineNetwork, x: Tensor, f: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo mean of 1/2 |grad u|^2 + 1/2 u^2 + gamma/4 u^4 - f u (the energy divided by (2 pi)^d)."""
    u, g = net.value_and_grad(x)
    return (0.5 * (g**2).sum(1) + 0.5 * u**2 + 0.25 * gamma * u**4 - f.double() * u).mean()


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=1e-2)


class PdeBarronModule(EvaluateOnValAndTest, L.LightningModule):
    """Thin wrapper: simulator metrics (test/min_contraction, test/max_final_rel_l2, test/min_final_rel_l2,
    test/max_peak_width, test/width_mismatch, test/max_barron_rel_err, ...) plus the Deep Ritz cosine network on
    problem `ritz_problem` (train/loss = Ritz energy, test/ritz_rel_l2 on held-out torus samples).
    `method="gd"` swaps the preconditioned iteration for plain gradient descent (the baseline)."""

    def __init__(self, method: str = "pgd", iterations: int = 10, eta: float | None = None, tau: float = 1e-6,
                 max_pairs: int = 600, ritz_init: str = "simulator", ritz_width: int = 64,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if ritz_init not in ("simulator", "random"):
            raise ValueError(f"ritz_init must be 'simulator' or 'random', got {ritz_init!r}")
        check_min("model", 1, iterations=iterations, max_pairs=max_pairs)
        check_min("model", 0, tau=tau)  # NaN was taken silently (every comparison with it false)
        check_min("model", 1, ritz_width=ritz_width)
        check_positive("model", eta=eta)  # null: the method's default step
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.net: CosineNetwork | None = None
        self.gamma = 1.0
        self.sim_metrics: dict[str, float] = {}
        self.traces: list[SimulationTrace] = []
        self.problems: list[BarronProblem] = []
        self.ritz_problem: BarronProblem | None = None  # the Deep Ritz network's problem (for the figure)
        self.ritz_metric = RelativeL2()
        self._last: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ simulator + network construction
    def _datamodule(self):
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "problems"):
            raise ValueError("PdeBarronModule needs a BarronDataModule (datamodules.barron_data)")
        dm.setup("fit")
        return dm

    def run_simulation(self, problems: list[BarronProblem]) -> dict[str, float]:
        hp = self.hparams
        self.problems = problems
        self.traces = [simulate(p, hp.method, hp.iterations, hp.eta, hp.tau, hp.max_pairs) for p in problems]
        self.sim_metrics = summarise(problems, self.traces)
        return self.sim_metrics

    def build_network(self, problem: BarronProblem, trace: SimulationTrace) -> CosineNetwork:
        """One neuron per ±k pair of the simulator's final iterate (amplitudes and phases reset), or random integer
        frequencies (`ritz_init="random"`, |entries| <= 2 on 3 random coordinates)."""
        gen = torch.Generator().manual_seed(0)
        if self.hparams.ritz_init == "simulator":
            u = trace.final
            ids = u.pair_ids()
            _, first = np.unique(ids, return_index=True)
            freqs = torch.tensor(u.freqs[first], dtype=torch.float64)
        else:
            n, d = self.hparams.ritz_width, problem.d
            freqs = torch.zeros(n, d, dtype=torch.float64)
            for j in range(n):
                idx = torch.randperm(d, generator=gen)[: min(3, d)]
                freqs[j, idx] = torch.randint(-2, 3, (len(idx),), generator=gen).double()
        n = freqs.shape[0]
        return CosineNetwork(freqs, 0.01 * torch.randn(n, generator=gen).double(),
                             2 * math.pi * torch.rand(n, generator=gen).double())

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        dm = self._datamodule()
        self.gamma = float(dm.hparams.gamma)
        self.run_simulation(dm.problems)
        k = dm.hparams.ritz_problem
        self.ritz_problem = dm.problems[k]
        self.net = self.build_network(dm.problems[k], self.traces[k])

    # ------------------------------------------------------------------ Lightning hooks
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        with no_autocast(self.device.type):
            loss = ritz_energy(self.net, batch["x"], batch["f"], self.gamma)
        self.log("train/loss", loss.float(), on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["x"]),
                 sync_dist=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        with torch.no_grad(), no_autocast(self.device.type):
            u = self.net(batch["x"])
        self.ritz_metric.update(u, batch["u"].double())
        self.log(f"{split}/ritz_rel_l2", self.ritz_metric, on_step=False, on_epoch=True, batch_size=1)
        for key, value in self.sim_metrics.items():
            self.log(f"{split}/{key}", float(value), on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
        self._last = {"x": batch["x"].cpu().numpy(), "pred": u.cpu().numpy(), "true": batch["u"].cpu().numpy(),
                      "split": split}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def figures(self) -> dict[str, Any]:
        """{"convergence": rel. L2 error per iteration (log scale) for every problem, "width": iterate width and
        Barron norm per iteration, "ritz": Deep Ritz prediction | u* | |error| on the (x_1, x_2) torus (d > 2: the
        slice x_3 = ... = x_d = 0) and u vs u* at the held-out points, titled with d and the held-out rel. L2}."""
        if not self.traces:
            return {}
        import matplotlib.pyplot as plt

        figs = {}
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for p, t in zip(self.problems, self.traces):
            ax.semilogy(np.maximum(t.errors, 1e-17), marker="o", ms=3, label=f"d={p.d}, seed {p.seed}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("relative L2 error")
        ax.set_title(f"{self.hparams.method.upper()} (eta = {self.traces[0].eta:.3g} for d={self.problems[0].d})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs["convergence"] = fig
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for p, t in zip(self.problems, self.traces):
            axes[0].plot(t.widths, marker="o", ms=3, label=f"d={p.d}, seed {p.seed}")
            axes[1].plot(t.barron, marker="o", ms=3)
            axes[1].axhline(p.u_star.barron_norm(), color="k", lw=0.5, ls=":",
                            label="u* Barron norm" if p is self.problems[0] else None)
        axes[0].set_ylabel("width (±k pairs)")
        axes[1].set_ylabel("Barron norm  sum (1+|k|)|c_k|")
        for ax in axes:
            ax.set_xlabel("iteration")
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        figs["width"] = fig
        if self._last is not None:
            figs["ritz"] = self._ritz_figure()
        return figs

    def _ritz_figure(self):
        """Deep Ritz prediction | u* | |error| on a 128^2 grid of the first two torus coordinates (prediction and u*
        on one colour scale), then u vs u* at the held-out points."""
        import matplotlib.pyplot as plt

        from lit_models.common.plotting import colorbar_extend

        last = self._last
        d = last["x"].shape[1]
        g = np.linspace(0.0, 2 * math.pi, 128)
        grid = np.zeros((g.size**2, d))
        grid[:, 0] = np.repeat(g, g.size)  # rows x_1, columns x_2 (d = 1: constant along x_2)
        if d > 1:
            grid[:, 1] = np.tile(g, g.size)
        with torch.no_grad():
            weight = next(self.net.parameters())  # the figure is drawn after the test: the net may be on a GPU
            pred = self.net(torch.as_tensor(grid, dtype=weight.dtype, device=weight.device))
            pred = pred.double().cpu().numpy().reshape(g.size, g.size)
        problem = self.ritz_problem or next(p for p in self.problems if p.d == d)
        ref = problem.u_star(grid).reshape(g.size, g.size)
        lo, hi = float(ref.min()), float(ref.max())
        extent = (0.0, 2 * math.pi, 0.0, 2 * math.pi)
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
        for ax, img, title in ((axes[0], pred, "Deep Ritz u"), (axes[1], ref, "u*"), (axes[2], np.abs(pred - ref),
                                                                                   "|u - u*| (own scale)")):
            err = ax is axes[2]
            im = ax.imshow(img.T, origin="lower", extent=extent, cmap="magma" if err else "RdBu_r",
                           **({} if err else {"vmin": lo, "vmax": hi}))
            fig.colorbar(im, ax=ax, shrink=0.85, extend="neither" if err else colorbar_extend(img, lo, hi))
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("x_1")
            ax.set_ylabel("x_2")
        ax = axes[3]
        ax.scatter(last["true"], last["pred"], s=3, alpha=0.5)
        lim = float(np.abs(last["true"]).max())
        ax.plot([-lim, lim], [-lim, lim], "k", lw=0.5)
        ax.set_xlabel("u*(x)")
        ax.set_ylabel("Deep Ritz u(x)")
        ax.set_title(f"{len(last['true'])} held-out points", fontsize=9)
        rel = float(np.linalg.norm(last["pred"] - last["true"]) / max(np.linalg.norm(last["true"]), 1e-300))
        where = {1: " (maps: constant along x_2)", 2: "", 3: " (maps: slice x_3 = 0)"}.get(
            d, f" (maps: slice x_3 = ... = x_{d} = 0)")
        fig.suptitle(f"Deep Ritz on the torus, d={d}{where}: {last.get('split', 'test')} rel. L2 {rel:.3g}",
                     fontsize=10)
        fig.tight_layout()
        return fig
