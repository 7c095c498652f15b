"""Issue 4, "Precision": the PINN and mesh papers run in 64 bit (`trainer.precision=64-true`) and keep their derivative
code out of autocast.

- Every PDE paper trains a few steps at 64-true: a finite float64 loss, float64 parameters, float64 outputs of
  every submodule in the test loop and finite test metrics (no hard-coded float32 casts left in training or
  evaluation).
- Under CPU bf16-mixed autocast the derivative code of PIG (Laplacian / residual), INSR (the advection residual)
  and the data-free mesh mover (the Hessian of phi and the MA residual) returns the same full-precision numbers as
  without autocast.
"""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from launch import config as zconfig
from launch import train
from tests.papers.contract import FAST

# the small settings of each paper's fast contract test (tests/papers/test_<slug>.py)
CASES = {
    "causal_pinn": ["data.steps_per_epoch=3"],
    "lagrangian_pinn": ["data.n_x=16", "data.n_t=6", "data.eval_n_x=20", "data.eval_n_t=5", "data.steps_per_epoch=3"],
    "pde_barron": ["data.dims=[2,16]", "data.seeds=[0]", "data.batch_size=64", "data.n_test=128"],
    "insr": ["model.ic_max_iters=2", "model.max_iters=1", "data.n_steps=2", "data.n_samples=200"],
    "pig": ["data.n_collocation=64", "data.n_boundary=8", "data.eval_grid=16", "model.num_gaussians=16"],
    "mgno": ["data.resolution=16", "data.n_train=8", "data.n_test=4", "data.batch_size=4", "data.eval_batch_size=4",
             "model.levels=[10,10,10]", "model.num_channel_u=4"],
    "data_free_mesh_mover": ["data.n_train=16", "data.n_test=2", "data.n_test_aligned=2", "data.batch_size=2",
                             "data.grid=16", "data.steps_per_epoch=3", "model.n_points=32", "model.n_eval_points=64",
                             "model.n_interp_points=500"],
    "um2n": ["data.n_train=6", "data.train_sizes=[5,6]", "data.test_size=8", "data.n_test_fronts=1",
             "data.n_test_bumps=1", "data.bump_test_size=6", "model.n_interp_points=500"],
}
NEEDS_TMP_CACHE = {"mgno"}  # writes its generated data set to data.cache_dir


class DtypeProbe(L.Callback):
    """Records the dtype and value of every training loss, and the dtypes of the floating tensors that the
    module's submodules output during the test loop (forward hooks)."""

    def __init__(self) -> None:
        self.losses: list[tuple[torch.dtype, float]] = []
        self.test_output_dtypes: set[torch.dtype] = set()
        self._hooks: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append((loss.dtype, float(loss.detach())))

    def _record(self, module, inputs, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.test_output_dtypes.add(t.dtype)

    def on_test_start(self, trainer, pl_module) -> None:
        self._hooks = [m.register_forward_hook(self._record) for m in pl_module.modules() if m is not pl_module]

    def on_test_end(self, trainer, pl_module) -> None:
        for h in self._hooks:
            h.remove()


def run_64(slug: str, *overrides: str, steps: int = 4) -> tuple[L.LightningModule, DtypeProbe, dict[str, float]]:
    """A few training steps + the test loop of `experiment=slug` at trainer.precision=64-true."""
    cfg = zconfig.compose([f"experiment={slug}", *FAST, f"trainer.max_steps={steps}",
                           f"trainer.limit_train_batches={steps}", "trainer.precision=64-true", *overrides])
    probe, captured = DtypeProbe(), {}

    class Capture(L.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            captured["model"] = pl_module

    metrics = train.run(cfg, make_run_dir=False, extra_callbacks=[probe, Capture()])
    return captured["model"], probe, metrics


@pytest.mark.parametrize("slug", list(CASES))
def test_trains_in_float64(slug, tmp_path):
    extra = [f"data.cache_dir={tmp_path}"] if slug in NEEDS_TMP_CACHE else []
    model, probe, metrics = run_64(slug, *CASES[slug], *extra)
    assert probe.losses, "no training step ran"
    for dtype, value in probe.losses:
        assert dtype == torch.float64, f"{slug}: loss is {dtype}"
        assert math.isfinite(value), f"{slug}: loss {value}"
    not64 = [n for n, p in model.named_parameters() if p.dtype != torch.float64]
    assert not not64, f"{slug}: parameters not float64: {not64}"
    assert probe.test_output_dtypes == {torch.float64}, f"{slug}: test-time outputs {probe.test_output_dtypes}"
    tests = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert tests and all(math.isfinite(v) for v in tests.values()), tests


# ------------------------------------------------------------------------------------ derivative code under autocast
def _same_under_bf16_autocast(fn):
    """fn() without autocast and inside a CPU bf16 autocast region: every returned tensor keeps float32 and the
    same values (autocast would round the Linear layers' products to bf16, ~3 significant digits)."""
    plain = fn()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fn()
    for a, b in zip(plain, mixed):
        assert b.dtype == torch.float32, b.dtype
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("laplacian", ["autograd", "analytic"])
def test_pig_residual_ignores_autocast(laplacian):
    """PIG (Eq. 3-4): the Laplacian of u = MLP(FE(x)) and the Helmholtz loss terms stay float32 under autocast."""
    from datamodules.pig_data import PigDataModule
    from lit_models.pde.pig import PIGModule

    torch.manual_seed(0)
    model = PIGModule(num_gaussians=16, laplacian=laplacian)
    batch = PigDataModule(n_collocation=32, n_boundary=4).sample()

    def run():
        out = model.losses(batch)
        return (*model.value_and_laplacian(batch["x"]), out["residual"], out["boundary"])

    _same_under_bf16_autocast(run)


@pytest.mark.parametrize("integrator", ["midpoint", "explicit_euler"])
def test_insr_residual_ignores_autocast(integrator):
    """INSR advection step (Eq. 4-5 with the midpoint / explicit Euler flux): the loss with ∂x u_θ, ∂x u_prev."""
    from lit_models.pde.insr import InsrModule

    torch.manual_seed(0)
    model = InsrModule(hidden_features=16, num_hidden_layers=2, integrator=integrator)
    model.step_index = 1  # the first time step (stage "advect"), previous = a copy of the field
    with torch.no_grad():  # a field that differs from the frozen previous one
        model.field.net[-1].bias.add_(0.1)
    batch = {"x": torch.rand(64, 1) * 4 - 2, "x_boundary": torch.tensor([[-2.0], [2.0]])}
    _same_under_bf16_autocast(lambda: model._residual_loss(batch))


@pytest.mark.parametrize("mover", ["dmm", "direct"])
def test_mesh_mover_hessian_and_ma_residual_ignore_autocast(mover):
    """Data-free mesh mover (Sec. 3.1, Eq. 3): the Hessian of phi (double autograd) and m(x) det(I + H) / c - 1."""
    from lit_models.pde.data_free_mesh_mover import DataFreeMeshMoverModule

    torch.manual_seed(0)
    model = DataFreeMeshMoverModule(branch_channels=[4, 8, 4, 1], branch_fc=[16], grid=12, trunk_layers=[2, 8, 8],
                                    head_layers=[16, 8, 1], mover=mover)
    batch = {"u": torch.randn(2, 1, 12, 12), "monitor": 1 + torch.rand(2, 12, 12), "c": torch.tensor([1.5, 1.4])}
    xi = torch.rand(2, 20, 2)
    _same_under_bf16_autocast(lambda: model.residual(batch, xi))
