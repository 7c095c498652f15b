"""An L-BFGS phase after first-order training, as PINN papers run it (e.g. the Lagrangian PINN: Adam, then 100
L-BFGS steps), inside Lightning's automatic optimisation.

`LBFGSPhase` is a LightningModule mix-in: the run uses the optimiser of `configure_optimizers` for the first
`trainer.max_steps - lbfgs_steps` steps and `torch.optim.LBFGS` for the last `lbfgs_steps` (all of them when max_steps <= lbfgs_steps, e.g. a debug run of a paper-scale config; each one
`LBFGS.step(closure)`: Lightning's closure re-runs `training_step` and backward for every inner evaluation). A
resumed run restores the optimiser its checkpoint holds: a checkpoint taken during the L-BFGS phase continues with
L-BFGS (also when the budget was extended since: its first-order state is gone), one taken before switches when its
phase is due (also when that is the first step after the checkpoint, e.g. a preemption at the epoch where a paper
config's L-BFGS phase begins).
"""
from __future__ import annotations

from typing import Any

import torch

from launch.errors import UserError


class LBFGSPhase:
    """Mix-in (list it before `L.LightningModule`). The module sets `self.lbfgs_steps` (0: no L-BFGS phase) and
    `self.lbfgs_options` (keyword arguments of `torch.optim.LBFGS`) and ends its `configure_optimizers` with
    `return self.lbfgs_or(<its usual optimiser config>)`. Schedulers stop with the switch."""

    lbfgs_steps: int = 0
    lbfgs_options: dict[str, Any] | None = None
    _lbfgs_active: bool = False

    def _lbfgs_due(self, global_step: int) -> bool:
        max_steps = getattr(self.trainer, "max_steps", -1) if self._trainer is not None else -1
        if not self.lbfgs_steps:
            return False
        if max_steps is None or max_steps < 0:
            raise UserError("an L-BFGS phase needs trainer.max_steps (it runs the last lbfgs_steps of them)")
        # a short (debug) run of a paper config: every step is an L-BFGS step
        return global_step >= max(0, max_steps - self.lbfgs_steps)

    def make_lbfgs(self) -> torch.optim.LBFGS:
        return torch.optim.LBFGS(self.parameters(), **(self.lbfgs_options or {}))

    def lbfgs_or(self, config: Any) -> Any:
        """What `configure_optimizers` returns: L-BFGS once its phase has begun, else the given config."""
        if self._trainer is not None:
            self._lbfgs_due(0)  # a phase without trainer.max_steps is a one-line error before training
        return self.make_lbfgs() if self._lbfgs_active else config

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._lbfgs_active or not self._lbfgs_due(self.trainer.global_step):
            return
        self._lbfgs_active = True
        strategy = self.trainer.strategy
        strategy.optimizers = [self.make_lbfgs()]  # also re-wraps the LightningOptimizer
        strategy.lr_scheduler_configs = []

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # called before configure_optimizers and before the optimiser state is restored: build the optimiser whose
        # state the checkpoint holds (deciding by its step and the current max_steps fails on a changed budget, and
        # at the step where the phase begins, whose checkpoint still holds the first-order state)
        states = checkpoint.get("optimizer_states") or []
        groups = states[0].get("param_groups", []) if states and isinstance(states[0], dict) else []
        self._lbfgs_active = bool(groups) and "history_size" in groups[0]

    @property
    def optimizer_phase(self) -> str:
        return "lbfgs" if self._lbfgs_active else "first-order"
