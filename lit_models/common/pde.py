"""Shared pieces of the PDE family (physics-informed training, neural operators, mesh movers).

- `grad(y, x)`: dy/dx through autograd with the graph kept (for residuals and higher derivatives).
- `partial(u, x, *orders)`: mixed partial derivatives of a scalar field u(x) w.r.t. columns of x, e.g.
  `partial(u, xt, 0, 0)` = u_xx when x = xt[:, 0].
- `relative_l2(pred, target)`: ||pred - target||_2 / ||target||_2 per sample (over all but the batch dimension);
  pass flattened (1-D) tensors for one pooled error over a whole field or space-time grid.
- `RelativeL2`: that error as a torchmetrics Metric, averaged over samples, correct under DDP (sum + count states).
- `uniform_collocation(n, low, high, generator)`: uniform points in a box.
- `no_autocast(device_type)`: a context that turns mixed precision off where derivatives must stay exact.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def grad(y: Tensor, x: Tensor) -> Tensor:
    """dy/dx for a field y (any shape, summed: pointwise fields give pointwise derivatives), graph kept."""
    (g,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), create_graph=True)
    return g


def partial(u: Tensor, x: Tensor, *orders: int) -> Tensor:
    """Mixed partial derivative of a pointwise scalar field u (shape N or N x 1) w.r.t. columns `orders` of x (N x d):
    partial(u, x, 0) = du/dx_0, partial(u, x, 0, 0) = d2u/dx_0^2, partial(u, x, 0, 1) = d2u/dx_0 dx_1."""
    out = u
    for column in orders:
        out = grad(out, x)[..., column]
    return out


def relative_l2(pred: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """||pred - target||_2 / ||target||_2 per sample (norms over all but the first dimension), shape (B,).

    1-D inputs (and scalars) count as one sample, shape (1,): flatten a field to get the pooled error
    ||pred - target|| / ||target|| over all its points. Shapes must match exactly (no broadcasting: ValueError).
    A zero target norm is clamped to `eps`, so an all-zero target gives ||pred - target|| / eps (0 when pred is zero
    too), never NaN or inf."""
    if pred.shape != target.shape:
        raise ValueError(f"relative_l2: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() <= 1:
        pred, target = pred.reshape(1, -1), target.reshape(1, -1)  # one sample (0-d too)
    diff = (pred - target).flatten(1).norm(dim=1)
    return diff / target.flatten(1).norm(dim=1).clamp_min(eps)


class RelativeL2(Metric):
    """Mean over samples of the relative L2 error; sums and counts are reduced across DDP ranks."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        err = relative_l2(pred.detach().double(), target.detach().double())
        self.total += err.sum()
        self.count += err.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


def uniform_collocation(n: int, low: Sequence[float], high: Sequence[float],
                        generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """n points uniform in the box [low, high] (one column per coordinate)."""
    low_t = torch.as_tensor(low, dtype=dtype)
    high_t = torch.as_tensor(high, dtype=dtype)
    return low_t + (high_t - low_t) * torch.rand(n, len(low_t), generator=generator, dtype=dtype)


def no_autocast(device_type: str = "cpu"):
    """Disable autocast inside (PINN residuals and mesh Jacobians stay in full precision)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # pragma: no cover - device types without autocast support
        return contextlib.nullcontext()


def check_problem_matches_data(module, problem: str, strip_suffix: str = "") -> None:
    """In a module's `setup`: its `model.problem` must be the problem of the attached datamodule's `data.name` (minus
    `strip_suffix`, e.g. a paper file `ks_mat` holds problem `ks`). Overriding one without the other would train one
    problem's residual on another's data (a shape error mid-training, or silently wrong numbers)."""
    from launch.errors import UserError
    from lit_models.common.steps import attached_datamodule

    name = getattr(attached_datamodule(module), "name", None)
    if not isinstance(name, str):
        return
    data_problem = name[:-len(strip_suffix)] if strip_suffix and name.endswith(strip_suffix) else name
    if data_problem != problem:
        raise UserError(f"model.problem={problem} but data.name={name}: set both to the same problem (e.g. "
                        f"model.problem={data_problem} data.name={name})")
