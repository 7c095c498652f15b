"""GPU paths, skipped without CUDA (run by scripts/gpu_check.sh on a lent GPU machine): training in each precision,
DDP on a CUDA device, and PINN derivatives kept in float32 when the trainer autocasts to bf16."""
from __future__ import annotations

import math

import pytest
import torch

from launch import config as zconfig
from launch import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# the tiny LightGCN run of tests/test_train.py, on the GPU
TINY = ["experiment=lightgcn", "data=synthetic_graph", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
        "data.batch_size=256", "trainer=gpu", "logger=csv", "progress_bar=false"]


def _finite(metrics: dict[str, float]) -> None:
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true", "auto"])
def test_trains_on_gpu_in_each_precision(precision, tmp_path):
    cfg = zconfig.compose([*TINY, f"trainer.precision={precision}", f"runs_root={tmp_path}"])
    metrics = train.run(cfg)
    _finite(metrics)
    assert metrics["global_step"] > 0 and 0.0 <= metrics["test/recall@20"] <= 1.0


def test_ddp_strategy_on_a_cuda_device(tmp_path):
    """`trainer.strategy=ddp` on one GPU: NCCL process group, DDP-wrapped model, rank-0 run directory."""
    cfg = zconfig.compose([*TINY, "trainer.strategy=ddp", "trainer.devices=1", f"runs_root={tmp_path}"])
    metrics = train.run(cfg)
    _finite(metrics)
    assert (tmp_path / "lightgcn").exists()


def test_pinn_residuals_stay_float32_under_bf16_autocast():
    """The causal PINN's residual (nested autograd) is computed with autocast off: equal to the float32 value when
    called inside a bf16 autocast region."""
    from tests.papers.contract import fast_run

    run = fast_run("causal_pinn", "trainer=gpu", "trainer.precision=bf16-mixed")
    run.assert_contract()
    model = run.model.cuda().float()
    t = torch.linspace(0, 1, 8, device="cuda")
    x = torch.linspace(-1, 1, 16, device="cuda")
    reference = model.slice_losses(t, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        under_autocast = model.slice_losses(t, x)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=1e-5, atol=1e-7)
