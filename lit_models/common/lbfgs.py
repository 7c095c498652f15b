"""An L-BFGS phase after first-order training, as PINN papers run it (e.g. the Lagrangian PINN: Adam, then 100
L-BFGS steps), inside Lightning's automatic optimisation.

`LBFGSPhase` is a LightningModule mix-in: the run uses the optimiser of `configure_optimizers` for the first
`trainer.max_steps - lbfgs_steps` steps and `torch.optim.LBFGS` for the last `lbfgs_steps` (all of them when max_steps <= lbfgs_steps, e.g. a debug run of a paper-scale config; each one
`LBFGS.step(closure)`: Lightning's closure re-runs `training_step` and backward for every inner evaluation). The
switch also happens when a run resumes from a checkpoint taken during the L-BFGS phase, before its optimiser state
is restored, so resumed runs continue with L-BFGS.
"""
from __future__ import annotations

from typing import Any

import torch


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
            raise ValueError("an L-BFGS phase needs trainer.max_steps (it runs the last lbfgs_steps of them)")
        # a short (debug) run of a paper config: every step is an L-BFGS step
        return global_step >= max(0, max_steps - self.lbfgs_steps)

    def make_lbfgs(self) -> torch.optim.LBFGS:
        return torch.optim.LBFGS(self.parameters(), **(self.lbfgs_options or {}))

    def lbfgs_or(self, config: Any) -> Any:
        """What `configure_optimizers` returns: L-BFGS once its phase has begun, else the given config."""
        return self.make_lbfgs() if self._lbfgs_active else config

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._lbfgs_active or not self._lbfgs_due(self.trainer.global_step):
            return
        self._lbfgs_active = True
        strategy = self.trainer.strategy
        strategy.optimizers = [self.make_lbfgs()]  # also re-wraps the LightningOptimizer
        strategy.lr_scheduler_configs = []

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # called before configure_optimizers and before the optimiser state is restored
        if self._trainer is not None and self._lbfgs_due(int(checkpoint.get("global_step", 0))):
            self._lbfgs_active = True

    @property
    def optimizer_phase(self) -> str:
        return "lbfgs" if self._lbfgs_active else "first-order"
