"""The L-BFGS phase mix-in (`lit_models.common.lbfgs.LBFGSPhase`): Adam first, L-BFGS for the last steps, inside
Lightning's automatic optimisation, and resumable from a checkpoint taken during the L-BFGS phase."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from launch.errors import UserError
from lit_models.common.lbfgs import LBFGSPhase
from tests.papers.contract import fast_run


class LeastSquares(LBFGSPhase, L.LightningModule):
    """min_w ||X w - y||^2 on a fixed, ill-conditioned problem; records which optimiser ran each step."""

    def __init__(self, lbfgs_steps: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
        self.lbfgs_steps, self.lbfgs_options = lbfgs_steps, {"lr": 1.0, "max_iter": 20}
        self.used: list[str] = []
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.mean((x @ self.w - y) ** 2)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.used.append(type(self.trainer.optimizers[0]).__name__)
        self.losses.append(float(outputs["loss"]))

    def configure_optimizers(self):
        adam = torch.optim.Adam(self.parameters(), lr=1e-2)
        return self.lbfgs_or({"optimizer": adam,
                              "lr_scheduler": torch.optim.lr_scheduler.StepLR(adam, step_size=1, gamma=0.99)})


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64) * torch.logspace(0, 1.5, 8, dtype=torch.float64)
    y = x @ torch.randn(8, generator=g, dtype=torch.float64)
    return DataLoader(TensorDataset(x, y), batch_size=64)


def _trainer(tmp_path, max_steps, **kw):
    return L.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False, **kw)


def test_adam_then_lbfgs_for_the_last_steps(tmp_path):
    module = LeastSquares(lbfgs_steps=5)
    _trainer(tmp_path, 20).fit(module, _data())
    assert module.used == ["Adam"] * 15 + ["LBFGS"] * 5
    assert module.trainer.lr_scheduler_configs == []
    adam_only = LeastSquares(lbfgs_steps=0)
    _trainer(tmp_path, 20).fit(adam_only, _data())
    assert set(adam_only.used) == {"Adam"}
    # L-BFGS solves the quadratic; 20 Adam steps do not
    assert module.losses[-1] < 1e-6 * adam_only.losses[-1]


def test_resume_inside_the_lbfgs_phase_continues_with_lbfgs(tmp_path):
    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 17:
                trainer.should_stop = True

    first = LeastSquares(lbfgs_steps=5)
    trainer = _trainer(tmp_path, 20, callbacks=[StopAt()])
    trainer.fit(first, _data())
    assert first.used[-1] == "LBFGS" and trainer.global_step == 17
    ckpt = tmp_path / "mid_lbfgs.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = LeastSquares(lbfgs_steps=5)
    _trainer(tmp_path, 20).fit(resumed, _data(), ckpt_path=ckpt)
    assert resumed.used == ["LBFGS"] * 3


def test_lbfgs_phase_longer_than_the_run_uses_lbfgs_throughout(tmp_path):
    module = LeastSquares(lbfgs_steps=50)  # e.g. a 3-step debug run of a paper config with 100 L-BFGS steps
    _trainer(tmp_path, 4).fit(module, _data())
    assert module.used == ["LBFGS"] * 4


def _stopped_at(tmp_path, step: int, max_steps: int, name: str):
    """A run of `max_steps` stopped (as by a preemption) after `step` steps; its checkpoint."""
    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == step:
                trainer.should_stop = True

    module = LeastSquares(lbfgs_steps=5)
    trainer = _trainer(tmp_path, max_steps, callbacks=[StopAt()])
    trainer.fit(module, _data())
    ckpt = tmp_path / name
    trainer.save_checkpoint(ckpt)
    return module, ckpt


def test_resume_restores_the_optimiser_its_checkpoint_holds(tmp_path):
    """Stopped exactly where the L-BFGS phase begins (its checkpoint holds Adam's state: a paper config preempted in
    the epoch where L-BFGS starts), a resume at the same budget switches then; a checkpoint taken in the L-BFGS phase
    resumes with L-BFGS also when the budget is extended (its Adam state is gone), and an Adam checkpoint resumed onto
    a shorter budget switches at once. Deciding by the step and the new budget, as before, restored one optimiser's
    state into the other (KeyError) in all three cases."""
    first, ckpt = _stopped_at(tmp_path, 15, 20, "boundary.ckpt")
    assert first.used == ["Adam"] * 15
    resumed = LeastSquares(lbfgs_steps=5)
    _trainer(tmp_path, 20).fit(resumed, _data(), ckpt_path=ckpt)
    assert resumed.used == ["LBFGS"] * 5
    _, ckpt = _stopped_at(tmp_path, 17, 20, "lbfgs.ckpt")
    extended = LeastSquares(lbfgs_steps=5)
    _trainer(tmp_path, 30).fit(extended, _data(), ckpt_path=ckpt)
    assert extended.used == ["LBFGS"] * 13
    _, ckpt = _stopped_at(tmp_path, 10, 20, "adam.ckpt")
    shortened = LeastSquares(lbfgs_steps=5)
    _trainer(tmp_path, 12).fit(shortened, _data(), ckpt_path=ckpt)
    assert shortened.used == ["LBFGS"] * 2


def test_lbfgs_phase_needs_max_steps(tmp_path):
    """A one-line error (UserError) before training, not at the first step."""
    module = LeastSquares(lbfgs_steps=5)
    with pytest.raises(UserError, match="needs trainer.max_steps"):
        L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                  default_root_dir=tmp_path).fit(module, _data())
    assert module.used == []


def test_lagrangian_pinn_runs_its_lbfgs_phase():
    """The LPINN paper runs 100 L-BFGS steps after Adam; here the last 2 of 3 steps."""
    run = fast_run("lagrangian_pinn", "model.lbfgs_steps=2")
    run.assert_contract()
    assert type(run.model.trainer.optimizers[0]).__name__ == "LBFGS"
