"""Implicit Neural Spatial Representations for time-dependent PDEs (Chen, Wu, Grinspun, Zheng, Chen; ICML 2023,
arXiv 2210.00124; official code honglin-c/INSR-PDE).

The field u^n(x) is stored in the weights θ^n of a SIREN f_θ(x); time stays classical. One time step is an
optimisation over the weights, warm-started from θ^n, on fresh random spatial samples (paper Eq. 4-5):

    θ^{n+1} = argmin_θ  mean_x || (f_θ(x) - f_{θ^n}(x)) / Δt - F(f_θ, f_{θ^n})(x) ||²

with f_{θ^n} a frozen copy of the network (requires_grad False, loaded with load_state_dict before the step).

- `equation="advection"` (1D, Sec. 5.1): u_t + a u_x = 0, integrator `midpoint` (official code):
  loss = mean[((u_θ - u_prev)/Δt + a (∂x u_θ + ∂x u_prev)/2)²] + boundary_weight · mean[u_θ(±L/2)²];
  `explicit_euler` uses a ∂x u_prev, `implicit_euler` a ∂x u_θ (advection only).
- `equation="fluid"` (2D inviscid Euler, Sec. 5.2, operator splitting, three optimisations per step):
  (1) advection by semi-Lagrangian backtracking, fit u_θ(x) ≈ u_prev(clamp(x - Δt u_prev(x)));
  (2) pressure: a second SIREN p solves Δp = ∇·u with the Neumann condition ∂n p = 0 (soft);
  (3) projection: u_prev ← u, fit u_θ(x) ≈ u_prev(x) - ∇p(x).
  Zero normal velocity on the walls is a soft loss in (1) and (3).
- Before step 1 the network is fitted to the initial condition by regression (stage "init").

Each stage runs up to `max_iters` Adam iterations with a fresh optimiser (Adam moments reset, the learning rate
restored) and the official ReduceLROnPlateau(factor 0.1, patience 500, min_lr 1e-8); with `early_stop` a stage
ends once the learning rate reached min_lr and the loss has not improved for `early_stop_plateau` iterations.

Lightning mapping: manual optimisation; every training batch is one inner iteration on fresh samples; the module
keeps the stage/step counters and the frozen copy and advances the time step itself; when the last step is done
it sets `trainer.should_stop`. `global_step` counts inner iterations.

Baselines the card names (each must fail the claims): `warm_start=false` (weights re-initialised every step),
`freeze_previous=false` (the previous network is optimised together with the current one and its gradient is not
detached), `dt_in_residual=false` (Δt dropped from the residual), a flipped `velocity`.
Derivatives are taken with autocast off, in the networks' dtype: float32, or float64 with
trainer.precision=64-true (batches are cast to the weights' dtype).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from launch.errors import UserError, check_min, check_positive
from lit_models.common.pde import grad, no_autocast, relative_l2
from lit_models.common.plotting import reference_colours
from lit_models.common.steps import EvaluateOnValAndTest, attached_datamodule, same_on_every_rank

EQUATIONS = ("advection", "fluid")
INTEGRATORS = ("midpoint", "explicit_euler", "implicit_euler")


class Sine(nn.Module):
    """sin(w0 z), w0 = 30 (SIREN)."""

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, z: Tensor) -> Tensor:
        return torch.sin(self.w0 * z)


class Siren(nn.Module):
    """SIREN as in the official `base/networks.py`: Linear(in, h) + sine, `num_hidden_layers` x (Linear(h, h) + sine),
    linear output. Weights: first layer U(-1/fan_in, 1/fan_in), the others U(±sqrt(6/fan_in)/30); biases keep
    PyTorch's default. 2 hidden layers of 20 in 1D = 901 parameters."""

    def __init__(self, in_features: int = 1, out_features: int = 1, hidden_features: int = 64,
                 num_hidden_layers: int = 3) -> None:
        super().__init__()
        dims = [in_features] + [hidden_features] * (num_hidden_layers + 1)
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers += [nn.Linear(dims[i], dims[i + 1]), Sine()]
        layers.append(nn.Linear(hidden_features, out_features))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for i, lin in enumerate(linears):
                lin.reset_parameters()  # PyTorch default for the bias
                fan_in = lin.weight.shape[1]
                bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / 30.0
                lin.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def divergence(u: Tensor, x: Tensor) -> Tensor:
    """∇·u for a pointwise vector field u (N, d) of x (N, d), graph kept."""
    return sum(grad(u[:, i], x)[:, i] for i in range(u.shape[1]))


def laplacian(p: Tensor, x: Tensor) -> Tensor:
    """Δp for a pointwise scalar field p (N, 1) of x (N, d) by second-order autograd, graph kept."""
    g = grad(p, x)
    return sum(grad(g[:, i], x)[:, i] for i in range(x.shape[1]))


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=1e-4)  # config.py: Adam, lr 1e-4


class InsrModule(EvaluateOnValAndTest, L.LightningModule):
    """INSR time stepping (paper Sec. 3-5) as a LightningModule with manual optimisation.

    Metrics: `train/loss` (every inner iteration), `train/time_step`; val/test (against the exact field at the
    current step time t_n, test also at the final time): `rel_l2`, `peak` (max of u), `centre_error`
    (|argmax u - argmax u_exact|, 1D), `ic_mse` (fit of the initial condition), `steps_done`.
    """

    ddp_unused_parameters = True  # a stage trains part of the parameters: trainer=ddp finds the unused ones

    def __init__(self, equation: str = "advection", in_features: int = 1, out_features: int = 1,
                 hidden_features: int = 64, num_hidden_layers: int = 3, velocity: float = 0.25, dt: float = 0.05,
                 n_steps: int = 30, integrator: str = "midpoint", max_iters: int = 20000,
                 ic_max_iters: int | None = None, ic_lr: float | None = None, boundary_weight: float = 1.0,
                 plateau_factor: float = 0.1, plateau_patience: int = 500, min_lr: float = 1e-8,
                 early_stop: bool = True, early_stop_plateau: int = 500, warm_start: bool = True,
                 freeze_previous: bool = True, dt_in_residual: bool = True, snapshot_every: int = 1,
                 length: float = 4.0, snapshot_points: int = 401,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER) -> None:
        super().__init__()
        if equation not in EQUATIONS:
            raise ValueError(f"unknown INSR equation {equation!r}; choose from {', '.join(EQUATIONS)}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"unknown integrator {integrator!r}; choose from {', '.join(INTEGRATORS)}")
        if dt <= 0 or n_steps < 0 or max_iters < 1 or (ic_max_iters is not None and ic_max_iters < 1):
            raise ValueError(f"need dt > 0, n_steps >= 0, max_iters >= 1; got dt={dt}, n_steps={n_steps}, "
                             f"max_iters={max_iters}, ic_max_iters={ic_max_iters}")
        if equation == "fluid" and integrator != "midpoint":
            raise ValueError(f"integrator={integrator!r} applies to the advection equation; the fluid case splits each "
                             "step into advection, pressure and projection (Sec. 5.2) and takes no integrator")
        if equation == "fluid" and (in_features, out_features) != (2, 2):
            raise ValueError(f"fluid needs in_features = out_features = 2, got {in_features}, {out_features}")
        if equation == "advection" and out_features != 1:
            raise ValueError(f"advection needs out_features = 1, got {out_features}")
        check_min("model", 1, hidden_features=hidden_features, snapshot_every=snapshot_every,
                  snapshot_points=snapshot_points)
        check_min("model", 0, num_hidden_layers=num_hidden_layers, plateau_patience=plateau_patience,
                  early_stop_plateau=early_stop_plateau, boundary_weight=boundary_weight)
        check_positive("model", length=length, ic_lr=ic_lr)  # ic_lr null: the optimizer's lr
        check_min("model", 1, in_features=in_features, out_features=out_features)
        check_min("model", 0, min_lr=min_lr)
        check_positive("model", plateau_factor=plateau_factor)
        if not plateau_factor < 1:  # torch's ReduceLROnPlateau refused it once training had started
            raise UserError(f"model.plateau_factor multiplies the lr on a plateau: it must lie in (0, 1), got "
                            f"{plateau_factor!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.field = Siren(in_features, out_features, hidden_features, num_hidden_layers)
        self.previous = Siren(in_features, out_features, hidden_features, num_hidden_layers)
        self.previous.load_state_dict(self.field.state_dict())
        self.previous.requires_grad_(not freeze_previous)
        self.pressure = Siren(in_features, 1, hidden_features, num_hidden_layers) if equation == "fluid" else None
        self.stages = ("advect",) if equation == "advection" else ("advect", "pressure", "project")
        # time-stepping state (saved in checkpoints)
        self.step_index = 0        # 0: fitting the initial condition; n >= 1: computing u^n
        self.stage_index = 0
        self.inner_iter = 0
        self.best_loss = math.inf
        self.plateau_count = 0
        self.done = False
        self.ic_mse = math.nan
        self.snapshots: list[tuple[float, Tensor]] = []
        # the weights of the last completed field u^n (evaluation between two step ends scores them, not the field
        # that is being optimised towards u^{n+1}); saved in checkpoints
        self.completed_field: dict[str, Tensor] | None = None
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._last_eval: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ fields
    def forward(self, x: Tensor) -> Tensor:
        return self.field(x)

    @property
    def field_dtype(self) -> torch.dtype:
        """The dtype of the network's weights (float32, or float64 under trainer.precision=64-true)."""
        return self.field.net[0].weight.dtype

    def _cast(self, t: Tensor) -> Tensor:
        """A batch tensor in the networks' dtype (the data module yields float32 or float64)."""
        return t.to(self.field_dtype)

    @property
    def stage(self) -> str:
        return "init" if self.step_index == 0 else self.stages[self.stage_index]

    @property
    def time(self) -> float:
        """Time of the last completed field u^n."""
        return self.completed_steps * self.hparams.dt

    @property
    def completed_steps(self) -> int:
        return max(self.step_index - 1, 0)

    # ------------------------------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        params = list(self.field.parameters())
        if not self.hparams.freeze_previous:  # the bug the card names: the previous network is optimised too
            params += list(self.previous.parameters())
        optimizers = [self.optimizer_factory(params)]
        if self.pressure is not None:
            optimizers.append(self.optimizer_factory(self.pressure.parameters()))
        return optimizers

    def _stage_optimizer(self):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return opts[1] if self.stage == "pressure" else opts[0]

    def _begin_stage(self) -> None:
        """Fresh optimiser for the stage (Adam moments reset, initial lr), warm start or re-initialisation."""
        hp = self.hparams
        stage = self.stage
        if stage == "advect":
            self.previous.load_state_dict(self.field.state_dict())  # exact copy of θ^n
            if not hp.warm_start:
                self.field.reset_parameters()
                same_on_every_rank(self, self.field)  # each DDP rank draws from its own random stream
        elif stage == "project":
            self.previous.load_state_dict(self.field.state_dict())
        opt = self._stage_optimizer().optimizer
        opt.state.clear()
        base_lr = opt.defaults["lr"]
        lr = hp.ic_lr if (stage == "init" and hp.ic_lr is not None) else base_lr
        for group in opt.param_groups:
            group["lr"] = lr
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=hp.plateau_factor, patience=hp.plateau_patience, min_lr=hp.min_lr)
        self.best_loss, self.plateau_count = math.inf, 0

    def _end_stage(self) -> None:
        self.inner_iter = 0
        if self.step_index == 0:
            self.ic_mse = float(self.best_loss)
            self._record_snapshot()
            self.step_index = 1
            self._keep_completed_field()
        else:
            self.stage_index += 1
            if self.stage_index == len(self.stages):
                self.stage_index = 0
                self.step_index += 1
                n = self.step_index - 1
                if n % self.hparams.snapshot_every == 0 or n == self.hparams.n_steps:
                    self._record_snapshot()
                self._keep_completed_field()
        if self.step_index > self.hparams.n_steps:
            self.done = True
            if self._trainer is not None:
                self.trainer.should_stop = True

    def _keep_completed_field(self) -> None:
        self.completed_field = {k: v.detach().clone() for k, v in self.field.state_dict().items()}

    @property
    def between_step_ends(self) -> bool:
        """True while a time step (or the initial fit) is part-way: the field is then between u^n and u^{n+1}."""
        return self.inner_iter > 0 or self.stage_index > 0

    # ------------------------------------------------------------------------------------------ losses
    def _residual_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(main loss, boundary loss) of the current stage (paper Eq. 4-5), autocast off: the spatial derivatives
        (∂x u, ∇·u, Δp, ∇p) stay in the networks' dtype."""
        with no_autocast(self.device.type):
            return self._stage_loss(batch)

    def _stage_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        stage = self.stage
        x = self._cast(batch["x"])
        if stage == "init":
            return torch.mean((self.field(x) - self._cast(batch["u0"])) ** 2), x.new_zeros(())
        xb = self._cast(batch["x_boundary"])
        if hp.equation == "advection":
            x = x.detach().requires_grad_(True)
            u = self.field(x)
            u_x = grad(u, x)
            u_prev = self.previous(x)
            u_prev_x = grad(u_prev, x) if not hp.freeze_previous else \
                torch.autograd.grad(u_prev.sum(), x)[0].detach()
            if hp.freeze_previous:
                u_prev = u_prev.detach()
            flux = {"midpoint": (u_x + u_prev_x) / 2, "explicit_euler": u_prev_x,
                    "implicit_euler": u_x}[hp.integrator]
            dudt = (u - u_prev) / (hp.dt if hp.dt_in_residual else 1.0)
            main = torch.mean((dudt + hp.velocity * flux) ** 2)
            bc = torch.mean(self.field(xb) ** 2)
            return main, bc
        # fluid (operator splitting)
        axis = batch["normal_axis"]
        if stage == "advect":
            with torch.no_grad():
                u_prev = self.previous(x)
                back = torch.clamp(x - u_prev * hp.dt, -1.0, 1.0)
                target = self.previous(back)
            main = torch.mean((self.field(x) - target) ** 2)
        elif stage == "pressure":
            x = x.detach().requires_grad_(True)
            div_u = divergence(self.field(x), x).detach()
            main = torch.mean((div_u - laplacian(self.pressure(x), x)) ** 2)
            xb = xb.detach().requires_grad_(True)
            dp = grad(self.pressure(xb), xb)
            return main, torch.mean(dp.gather(1, axis[:, None]) ** 2) * 2  # mean over each wall pair, summed
        else:  # project
            xg = x.detach().requires_grad_(True)
            grad_p = grad(self.pressure(xg), xg).detach()
            with torch.no_grad():
                target = self.previous(x) - grad_p
            main = torch.mean((self.field(x) - target) ** 2)
        un = self.field(xb).gather(1, axis[:, None])
        return main, torch.mean(un**2) * 2

    def setup(self, stage: str | None = None) -> None:
        """The equation must be the data's (advection1d is the advection equation, taylor_green the fluid case), and
        the time steps too: the data's exact fields are at k data.dt for k <= data.n_steps."""
        dm = attached_datamodule(self)
        name = getattr(dm, "name", None)
        wanted = {"advection1d": "advection", "taylor_green": "fluid"}.get(name)
        if wanted is not None and wanted != self.hparams.equation:
            raise UserError(f"model.equation={self.hparams.equation} but data.name={name}: {name} needs "
                            f"model.equation={wanted} (experiment=insr/{name} sets both)")
        hp, data_dt, data_steps = self.hparams, getattr(dm, "dt", None), getattr(dm, "n_steps", None)
        if data_dt is not None and not math.isclose(hp.dt, data_dt, rel_tol=1e-9):
            raise UserError(f"model.dt={hp.dt} but data.dt={data_dt}: the fields would be scored at other times "
                            "(the model config takes data.dt)")
        if data_steps is not None and hp.n_steps > data_steps:
            raise UserError(f"model.n_steps={hp.n_steps} but the data's exact fields stop at data.n_steps="
                            f"{data_steps}")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor | None:
        if self.done:
            self.trainer.should_stop = True
            return None
        if self.inner_iter == 0:
            self._begin_stage()
        opt = self._stage_optimizer()
        with no_autocast(self.device.type):
            main, bc = self._residual_loss(batch)
            loss = main + self.hparams.boundary_weight * bc
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        # the plateau schedule and the stage's early stop follow the loss over every DDP rank: each rank's own loss
        # dropped the learning rate at different steps, and the ranks trained different models (DDP audit)
        value = main.detach()
        if self._trainer is not None:
            value = self.trainer.strategy.reduce(value, reduce_op="mean")
        value = float(value)
        self._plateau.step(value)
        if value < self.best_loss:
            self.best_loss, self.plateau_count = value, 0
        else:
            self.plateau_count += 1
        self.inner_iter += 1
        limit = self.hparams.ic_max_iters if (self.stage == "init" and self.hparams.ic_max_iters) \
            else self.hparams.max_iters
        lr = opt.optimizer.param_groups[0]["lr"]
        converged = (self.hparams.early_stop and lr <= self.hparams.min_lr
                     and self.plateau_count >= self.hparams.early_stop_plateau)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=1, sync_dist=True)
        # the time step follows the rank-reduced loss above: the same on every rank
        self.log("train/time_step", float(self.step_index), on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=1)
        if self.inner_iter >= limit or converged:
            self._end_stage()
        return loss.detach()

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _record_snapshot(self) -> None:
        hp = self.hparams
        if hp.in_features != 1:
            return
        x = torch.linspace(-hp.length / 2, hp.length / 2, hp.snapshot_points, device=self.device,
                           dtype=self.field_dtype)
        with no_autocast(self.device.type):  # recorded in the networks' dtype, not bf16 under a mixed-precision trainer
            u = self.field(x[:, None])[:, 0]
        self.snapshots.append((self.time if self.step_index > 0 else 0.0, u.cpu()))

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        x, exact_all = self._cast(batch["x"]), self._cast(batch["u"])
        n = min(self.completed_steps, exact_all.shape[0] - 1)
        exact = exact_all[n]
        with no_autocast(self.device.type):  # metrics of the field in its own dtype, also under bf16-mixed
            if self.between_step_ends and self.completed_field is not None and self.step_index >= 1:
                weights = {k: v.to(x.device) for k, v in self.completed_field.items()}
                pred = torch.func.functional_call(self.field, weights, (x,))  # u^n, scored at t_n
            else:  # a step end (or the initial fit, scored as it goes against u0)
                pred = self.field(x)
        rel = relative_l2(pred.reshape(-1), exact.reshape(-1))[0]  # pooled over all points (and components)
        metrics = {"rel_l2": float(rel), "steps_done": float(n)}
        ic_mse = self.ic_mse if math.isfinite(self.ic_mse) else self.best_loss  # best so far while still fitting
        if math.isfinite(ic_mse):
            metrics["ic_mse"] = float(ic_mse)
        if self.hparams.in_features == 1:
            metrics["peak"] = float(pred.max())
            metrics["centre_error"] = float((x[pred[:, 0].argmax(), 0] - x[exact[:, 0].argmax(), 0]).abs())
            metrics["centre"] = float(x[pred[:, 0].argmax(), 0])
        else:
            metrics["max_drift"] = float((pred - exact).norm(dim=1).max())
        for k, v in metrics.items():
            self.log(f"{split}/{k}", v, on_step=False, on_epoch=True, batch_size=1, sync_dist=True,
                     prog_bar=k == "rel_l2")
        self._last_eval = {"x": x.cpu(), "pred": pred.cpu(), "exact": exact.cpu(), "t": n * self.hparams.dt,
                           "split": split, "rel_l2": float(rel)}

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["insr_state"] = {"step_index": self.step_index, "stage_index": self.stage_index,
                                    "inner_iter": self.inner_iter, "best_loss": self.best_loss,
                                    "plateau_count": self.plateau_count, "done": self.done, "ic_mse": self.ic_mse,
                                    "snapshots": self.snapshots, "completed_field": self.completed_field,
                                    "plateau": self._plateau.state_dict() if self._plateau else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("insr_state")
        if not state:
            return
        for key in ("step_index", "stage_index", "inner_iter", "best_loss", "plateau_count", "done", "ic_mse",
                    "snapshots"):
            setattr(self, key, state[key])
        self.completed_field = state.get("completed_field")  # absent before stop 40: evaluation then takes the field
        self._pending_plateau = state.get("plateau")

    def on_train_start(self) -> None:
        pending = getattr(self, "_pending_plateau", None)
        if pending is not None and self.inner_iter > 0:  # resumed in the middle of a stage
            opt = self._stage_optimizer().optimizer
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            self._plateau.load_state_dict(pending)
        self._pending_plateau = None

    # ------------------------------------------------------------------------------------------ figures
    def figures(self) -> dict[str, Any]:
        """1D: {"pulse_profile": INSR vs exact pulse at the recorded step times, "field": INSR, exact and |error| side
        by side at the last evaluated step};
        2D: {"field": |u| of INSR vs exact side by side, with the error's magnitude |u - u*| (0 to its max)}; the
        field figure's title names the split, the time and the relative L2 error."""
        import matplotlib.pyplot as plt

        figs: dict[str, Any] = {}
        hp = self.hparams
        if hp.in_features == 1 and self.snapshots:
            fig, ax = plt.subplots(figsize=(8, 3.2))
            x = torch.linspace(-hp.length / 2, hp.length / 2, hp.snapshot_points)
            dm = self._trainer.datamodule if self._trainer is not None else None
            cmap = plt.get_cmap("viridis")
            shown = self.snapshots if len(self.snapshots) <= 8 else \
                [self.snapshots[i] for i in torch.linspace(0, len(self.snapshots) - 1, 8).round().long().tolist()]
            for i, (t, u) in enumerate(shown):
                color = cmap(i / max(len(shown) - 1, 1))
                ax.plot(x.numpy(), u.numpy(), color=color, lw=1.3, label=f"t={t:.2f}")
                if dm is not None and hasattr(dm, "exact"):
                    ax.plot(x.numpy(), dm.exact(x, t).numpy(), "k:", lw=0.8)
            ax.set_xlabel("x")
            ax.set_ylabel("u")
            ax.set_title("INSR pulse over time (dotted: exact)")
            ax.legend(fontsize=6, ncol=2)
            fig.tight_layout()
            figs["pulse_profile"] = fig
        if self._last_eval is not None:
            ev = self._last_eval
            if hp.in_features == 1:
                xs, exact, pred = ev["x"][:, 0].numpy(), ev["exact"][:, 0].numpy(), ev["pred"][:, 0].numpy()
                order = np.argsort(xs)  # evaluation points need not be sorted
                xs, exact, pred = xs[order], exact[order], pred[order]
                fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
                lo, hi = min(exact.min(), pred.min()), max(exact.max(), pred.max())
                pad = 0.05 * (hi - lo) if hi > lo else 1.0
                for ax, y, color, title in ((axes[0], pred, "C3", "INSR"), (axes[1], exact, "k", "exact")):
                    ax.plot(xs, y, color=color, lw=1.2)
                    ax.set_ylim(lo - pad, hi + pad)  # prediction and reference on the same scale
                    ax.set_title(f"u {title}, t={ev['t']:.2f}", fontsize=9)
                axes[2].plot(xs, np.abs(pred - exact), "C1", lw=1.2)
                axes[2].set_title(f"|error|, t={ev['t']:.2f}", fontsize=9)
                for ax, label in zip(axes, ("u", "u", "|u - u*|")):
                    ax.set_xlabel("x")
                    ax.set_ylabel(label)
            else:
                m = round(math.sqrt(ev["x"].shape[0]))
                mags = [ev["exact"].norm(dim=1).reshape(m, m).numpy(), ev["pred"].norm(dim=1).reshape(m, m).numpy()]
                err = (ev["pred"] - ev["exact"]).norm(dim=1).reshape(m, m).numpy()  # |u - u*|, not | |u| - |u*| |
                fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
                for ax, img, title in zip(axes, mags + [err], ("|u| exact", "|u| INSR", "|u - u*|")):
                    h = hp.length / 2
                    im = ax.imshow(img.T, origin="lower", extent=(-h, h, -h, h),
                                   **({"cmap": "viridis", "vmin": 0.0, "vmax": float(err.max()) or 1.0}
                                      if title == "|u - u*|" else reference_colours(mags[0])))
                    ax.set_title(f"{title}, t={ev['t']:.2f}", fontsize=9)
                    ax.set_xlabel("x")
                    ax.set_ylabel("y")
                    fig.colorbar(im, ax=ax, shrink=0.8)
            fig.suptitle(f"{ev['split']} set, t={ev['t']:.2f}: rel L2 {ev['rel_l2']:.3g}", fontsize=9)
            fig.tight_layout()
            figs["field"] = fig
        return figs
