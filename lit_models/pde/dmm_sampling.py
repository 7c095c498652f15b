"""Monitor evaluation and collocation sampling of the data-free mesh mover (paper Sec. 3.1; official
`mesh/dmm_utils.py` of Peiyannn/MM-PDE): the monitor m at moved points (bilinear or the official softmax kernel), the
official pulled-back monitor 1 + |J^T grad u| / (scale alpha), interior points drawn ~ m (grid nodes with a jitter, or
the official candidates), and boundary points on the unit square's edges."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_monitor(monitor: Tensor, x: Tensor) -> Tensor:
    """Bilinear interpolation of node values monitor (B, R, R) ([j, i] = (y_j, x_i)) at points x (B, P, 2)."""
    grid = (2 * x - 1)[:, None].to(monitor.dtype)  # (B, 1, P, 2), [..., 0] = x -> width
    return F.grid_sample(monitor[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0, 0]


def kernel_interpolate(field: Tensor, x: Tensor) -> Tensor:
    """The official dmm_utils `interpolate`: values of node fields (B, C, R, R) ([j, i] = (y_j, x_i), nodes on
    linspace(0, 1, R)) at points x (B, P, 2) as softmax(-R |node - x|)-weighted sums over all R^2 nodes, (B, P, C);
    differentiable in x (the map's gradient flows through the weights)."""
    B, C, R, _ = field.shape
    s = torch.linspace(0.0, 1.0, R, dtype=x.dtype, device=x.device)
    nodes = torch.stack(torch.meshgrid(s, s, indexing="xy"), -1).reshape(1, 1, R * R, 2)  # node j R + i = (x_i, y_j)
    weight = torch.softmax(-R * torch.linalg.vector_norm(nodes - x[:, :, None], dim=-1), dim=-1)  # (B, P, R^2)
    return torch.einsum("bpn,bcn->bpc", weight, field.reshape(B, C, R * R).to(x.dtype))


def pulled_back_monitor(grad: Tensor, norm: Tensor, x: Tensor, hess: Tensor, interp: str = "kernel") -> Tensor:
    """The official DMM loss's monitor (dmm_utils `train_MA_res` / `random_feature_torch`): the gradient of u
    (B, 2, R, R) interpolated at the moved points x (B, P, 2), pulled back to xi by the map's Jacobian,
    grad_xi u = J^T grad_x u with J = I + hess (u_xi_x = u_x (1 + phi_xx) + u_y phi_yx, ...), and
    m = 1 + |grad_xi u| / norm (norm (B,) = monitor_scale x alpha of the field's monitor). (B, P)."""
    g = kernel_interpolate(grad, x) if interp == "kernel" else torch.stack(
        [sample_monitor(grad[:, c], x) for c in range(grad.shape[1])], -1)
    jac = torch.eye(2, dtype=hess.dtype, device=hess.device) + hess
    g_xi = torch.einsum("zpij,zpi->zpj", jac, g.to(hess.dtype))
    return 1.0 + torch.linalg.vector_norm(g_xi, dim=-1) / norm[:, None].to(hess.dtype)


def importance_points(monitor: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, n, 2) points with density proportional to m: a grid node drawn with probability m / sum m, then a uniform
    jitter of +- half a cell (clamped to the square)."""
    B, R, _ = monitor.shape
    idx = torch.multinomial(monitor.reshape(B, -1).double(), n, replacement=True, generator=generator)
    j, i = idx // R, idx % R
    p = torch.stack([i, j], -1).to(monitor.dtype) / (R - 1)
    jitter = (torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device) - 0.5) / (R - 1)
    return (p + jitter.to(p.device)).clamp(0.0, 1.0)


def candidate_points(monitor: Tensor, n: int, per_point: int = 40, interp: str = "kernel",
                     generator: torch.Generator | None = None) -> Tensor:
    """The official collocation (dmm_utils `sample_train_data`): per_point x n candidates uniform in the square, n of
    them drawn without replacement with probability proportional to m there (m interpolated by the softmax kernel, or
    bilinearly). (B, n, 2); a few fields at a time, so the kernel's (fields, candidates, R^2) weights stay small."""
    B, R, _ = monitor.shape
    cand = torch.rand(B, per_point * n, 2, generator=generator, dtype=monitor.dtype, device=monitor.device)
    with torch.no_grad():
        chunk = max(1, int(2e7 // (per_point * n * R * R)))
        m = torch.cat([kernel_interpolate(monitor[i:i + chunk, None], cand[i:i + chunk])[..., 0] if interp == "kernel"
                       else sample_monitor(monitor[i:i + chunk], cand[i:i + chunk]) for i in range(0, B, chunk)])
        idx = torch.multinomial(m.double(), n, replacement=False, generator=generator)
    return torch.gather(cand, 1, idx[..., None].expand(-1, -1, 2))


def boundary_points(batch: int, n_per_edge: int, device, dtype, generator: torch.Generator | None = None):
    """(B, 4 n, 2) points on the four edges and a (4 n,) index of the normal coordinate (0 on x = 0/1, 1 on y = 0/1)."""
    s = torch.rand(batch, n_per_edge, generator=generator, dtype=dtype).to(device)
    zero, one = torch.zeros_like(s), torch.ones_like(s)
    pts = torch.cat([torch.stack(a, -1) for a in ((zero, s), (one, s), (s, zero), (s, one))], 1)
    normal = torch.tensor([0] * (2 * n_per_edge) + [1] * (2 * n_per_edge), device=device)
    return pts, normal
