"""UM2N: "Towards Universal Mesh Movement Networks" (Zhang, Wang, Kramer, Wallwork, Li, Liu, Chen, Piggott;
NeurIPS 2024, arXiv 2407.00382; official code mesh-adaptation/UM2N, `UM2N/model/MRT.py`, `deformer.py`).

r-adaptation by a graph network trained on Monge-Ampere (MA) meshes and applied zero-shot (paper Sec. 3):
- inputs per vertex: reference coordinates, boundary mask and the monitor value (normalised by its maximum);
  the PDE solution itself is never an input ("PDE-agnostic");
- encoder: a Graph Transformer over all vertices of a mesh (`MRTransformer`: linear embedding to 64, 4 heads,
  1 layer, 16 output channels) on all 4 inputs (the card's "3-4 features"; the released MRT configs feed it 3,
  `mesh_feat: [coord, monitor_val]`, the mask entering only below: measured with 3 at seed 0, interpolation ratio
  0.329 and node RMSE 2.80 cells against 0.342 / 2.90 here, but the raw-coordinate decoder then no longer tangles at
  seed 0, 0 inverted, and the no_tangling claim loses its failing baseline), attention masked per graph; then
  [boundary mask, features] -> Linear -> SELU gives the deformer's hidden state;
- decoder: the recurrent GAT deformer (from M2N, paper Eq. for x_i'): GATv2 attention alpha_ij over the mesh
  neighbours j of i (self loop included), computed from [current coordinates, hidden state]; the new position is
  the attention-weighted average x_i' = sum_j alpha_ij x_j (a convex combination, which discourages tangling), the
  hidden state is the GAT output (SELU). Boundary nodes keep their normal coordinate (corners fixed, edge nodes
  slide along the edge). Applied `num_loop` times with shared weights.
- loss: coordinate loss to the MA mesh (`coord_loss`: "l1", the released code's torch.nn.L1Loss, or "mse", the
  card's; weight `coord_weight`, official 1000 on l1) + element-volume loss, the L1 difference of predicted and
  target signed cell areas summed over a mesh's cells, divided by the domain's area and averaged over the meshes
  (weight `area_weight`; official `get_area_loss` with scaler 300 = weight 300 on unit-square domains).
- optimiser (paper scale): the released run_train.py's torch.optim.Adam with (coupled, L2) weight decay 0.1; with
  coupled weight decay the loss scale matters, hence the official weights above.
`decoder="coord"` is the released code's variant (a linear head on the GAT hidden state outputs raw coordinates,
no neighbour averaging); `use_monitor=False` feeds a zero monitor (a model that ignores the monitor);
`architecture="m2n_t"` builds the network of the released checkpoint instead (`um2n_m2n_t.M2NT`: pretrain_model/
config.yaml trains M2N_T, with edge-MLP local features and 4 stacked DeformGAT layers, and adds `chamfer_weight` x
the Chamfer distance to its loss; `chamfer_distance` here);
`mover="identity"` is the fixed-mesh baseline; `project_boundary=False` (ablation) drops the boundary projection,
the failing variant of the card's boundary criterion. The meshes may be structured or unstructured (Delaunay):
nothing here depends on the connectivity beyond the graph's edges and faces.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from launch.errors import UserError, check_min
from lit_models.common import mesh as M
from lit_models.common.checks import whole_list
from lit_models.common.ddp_eval import eval_set_replicated, gather_lists
from lit_models.common.pde import no_autocast
from lit_models.common.steps import computed_once


def batch_of(data, device) -> Tensor:
    """The graph index of every node (zeros for a single graph)."""
    batch = getattr(data, "batch", None)
    return batch if batch is not None else torch.zeros(data.num_nodes, dtype=torch.long, device=device)


def boundary_masks(data, project_boundary: bool) -> tuple[Tensor, Tensor]:
    """(x_fixed, y_fixed): which coordinate of a node stays at its reference value (none without the projection)."""
    if not project_boundary:
        return torch.zeros_like(data.x_fixed), torch.zeros_like(data.y_fixed)
    return data.x_fixed, data.y_fixed


def project_to_boundary(new: Tensor, ref: Tensor, x_fixed: Tensor, y_fixed: Tensor) -> Tensor:
    """Boundary nodes keep their normal coordinate: the fixed coordinates of `new` (V, 2) reset to `ref`'s."""
    return torch.stack([torch.where(x_fixed, ref[:, 0], new[:, 0]), torch.where(y_fixed, ref[:, 1], new[:, 1])], -1)


class GraphTransformerEncoder(nn.Module):
    """Per-vertex features from a transformer over all vertices of each graph, attention masked per graph.
    `layout="official"`: the released code's TransformerModel (`um2n_transformer`: GELU MLPs in and out, ParT-style
    blocks with per-head scales, residual weights and dropout 0.1); `layout="torch"`: Linear(in, embed) ->
    `num_layers` x torch TransformerEncoderLayer(embed, heads, post-norm, ReLU, no dropout) -> Linear(embed, out)."""

    def __init__(self, in_dim: int = 4, embed_dim: int = 64, out_dim: int = 16, num_heads: int = 4,
                 num_layers: int = 1, layout: str = "torch") -> None:
        super().__init__()
        if layout not in ("official", "torch"):
            raise ValueError(f"model.encoder_layout must be 'official' or 'torch', got {layout!r}")
        self.layout = layout
        if layout == "official":
            from lit_models.pde.um2n_transformer import TransformerModel

            self.model = TransformerModel(in_dim, embed_dim, out_dim, num_heads, num_layers)
            return
        self.embed = nn.Linear(in_dim, embed_dim)
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=embed_dim * 4, dropout=0.0,
                                           batch_first=True)
        # num_layers 0: no transformer layer (torch's TransformerEncoder of 0 layers fails in forward)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        self.out = nn.Linear(embed_dim, out_dim)

    def forward(self, x: Tensor, batch: Tensor) -> Tensor:
        from torch_geometric.utils import to_dense_batch

        if self.layout == "official":
            dense, mask = to_dense_batch(x, batch)
            return self.model(dense, ~mask)[mask]
        dense, mask = to_dense_batch(self.embed(x), batch)
        h = self.encoder(dense, src_key_padding_mask=~mask) if self.encoder is not None else dense
        return self.out(h[mask])


def attention_neighbours(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """The GAT's receptive fields as a padded table: nbr (V, D) the sources j of each target i's incoming edges
    (edge_index[0] -> edge_index[1]) with i's self loop (existing self loops dropped, one added per node, as
    GATv2Conv's add_self_loops), D the largest in-degree; padding repeats i and is marked False in valid (V, D)."""
    src, dst = edge_index[0], edge_index[1]
    keep = src != dst
    nodes = torch.arange(num_nodes, device=edge_index.device)
    src, dst = torch.cat([src[keep], nodes]), torch.cat([dst[keep], nodes])
    order = torch.argsort(dst, stable=True)
    src, dst = src[order], dst[order]
    count = torch.bincount(dst, minlength=num_nodes)
    pos = torch.arange(len(dst), device=dst.device) - (torch.cumsum(count, 0) - count)[dst]
    width = int(count.max()) if num_nodes else 1
    nbr = nodes[:, None].repeat(1, width)
    nbr[dst, pos] = src
    valid = torch.zeros(num_nodes, width, dtype=torch.bool, device=dst.device)
    valid[dst, pos] = True
    return nbr, valid


def _chunks(n: int, width: int, channels: int) -> list[tuple[int, int]]:
    """Node ranges whose (nodes, D, heads, C) edge tensors take about 1.5 MB (cache-sized: the per-edge passes
    of `_GATv2Attention` then read and write cache, not memory)."""
    step = max(1, (3 << 17) // max(1, width * channels))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


class _GATv2Attention(torch.autograd.Function):
    """GATv2 attention and head-averaged aggregation over a padded neighbour table (`attention_neighbours`):
        e_ijh = att_h . leaky_relu(xr_ih + xl_jh),  alpha_ijh = softmax_j(e_ijh),  out_i = mean_h sum_j alpha_ijh xl_jh
    (torch_geometric's GATv2Conv with concat=False, before its bias). Computed in node chunks whose edge tensors
    stay in cache; the backward pass recomputes them from xl, xr instead of keeping (E, heads, C) tensors. Returns
    out (V, C) and alpha (V, D, heads) (0 at padding)."""

    @staticmethod
    def forward(ctx, xl: Tensor, xr: Tensor, att: Tensor, nbr: Tensor, valid: Tensor, slope: float):
        ctx.set_materialize_grads(False)
        V, H, C = xl.shape
        D = nbr.shape[1]
        out = xl.new_empty(V, C)
        alpha = xl.new_empty(V, D, H)
        pad = ~valid[..., None]
        for a, b in _chunks(V, D, H * C):
            xj = xl.index_select(0, nbr[a:b].reshape(-1)).view(b - a, D, H, C)
            z = F.leaky_relu(xj + xr[a:b, None], slope, inplace=True)
            w = torch.softmax((z.mul_(att)).sum(-1).masked_fill_(pad[a:b], float("-inf")), 1)
            alpha[a:b] = w
            torch.bmm(w.view(b - a, 1, D * H), xj.view(b - a, D * H, C), out=out[a:b, None])
        out.div_(H)
        ctx.save_for_backward(xl, xr, att, nbr, alpha)
        ctx.slope = slope
        return out, alpha

    @staticmethod
    @torch.autograd.function.once_differentiable  # first order only (UM2N's loss): a clear error for a double backward
    def backward(ctx, g_out: Tensor | None, g_alpha: Tensor | None):
        xl, xr, att, nbr, alpha = ctx.saved_tensors
        V, H, C = xl.shape
        D, slope = nbr.shape[1], ctx.slope
        g_xl, g_xr, g_att = torch.zeros_like(xl), torch.empty_like(xr), torch.zeros_like(att)
        for a, b in _chunks(V, D, H * C):
            idx = nbr[a:b].reshape(-1)
            w = alpha[a:b]
            xj = xl.index_select(0, idx).view(b - a, D, H, C)
            g_o = None if g_out is None else (g_out[a:b] / H)[:, None, None]  # (n, 1, 1, C)
            g_w = xj.new_zeros(b - a, D, H) if g_o is None else (xj * g_o).sum(-1)
            if g_alpha is not None:
                g_w = g_w + g_alpha[a:b]
            g_e = w * (g_w - (w * g_w).sum(1, keepdim=True))  # softmax backward (0 at padding)
            s = F.leaky_relu(xj.add_(xr[a:b, None]), slope, inplace=True)  # recomputed
            g_att += (s * g_e[..., None]).sum((0, 1))
            g_z = torch.ops.aten.leaky_relu_backward(g_e[..., None] * att, s, slope, True)
            torch.sum(g_z, 1, out=g_xr[a:b])
            if g_o is not None:
                g_z.addcmul_(w[..., None], g_o)
            g_xl.index_add_(0, idx, g_z.view(-1, H, C))
        return g_xl, g_xr, g_att, None, None, None


def gatv2_attention(gat, x: Tensor, nbr: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """`gat(x, edge_index, return_attention_weights=True)` of a torch_geometric GATv2Conv (heads averaged, self
    loops, no edge features, no dropout) on the neighbour table of `attention_neighbours(edge_index)`: (out (V, C),
    alpha (V, D, heads), 0 at padding); the same values up to float rounding (`tests/test_mesh_speed_um2n.py`),
    about 3x faster on CPU (no (E, heads, C) tensors kept for the backward pass)."""
    H, C = gat.heads, gat.out_channels
    xl = gat.lin_l(x).view(-1, H, C)
    xr = gat.lin_r(x).view(-1, H, C)
    out, alpha = _GATv2Attention.apply(xl, xr, gat.att[0], nbr, valid, float(gat.negative_slope))
    return (out if gat.bias is None else out + gat.bias), alpha


class RecurrentGATDeformer(nn.Module):
    """One deformer step: GATv2 on [coordinates, hidden] -> attention alpha (E, heads) and the new hidden state;
    coordinates become sum_j mean_heads(alpha_ij) x_j (`decoder="average"`, the paper) or Linear(hidden)
    (`decoder="coord"`, the released code). Boundary projection afterwards. The GATv2Conv module holds the
    parameters; `gatv2_attention` computes it (the same layer; `forward_pyg` runs torch_geometric's own code)."""

    def __init__(self, hidden: int, heads: int = 6, decoder: str = "average", bias: bool = True) -> None:
        super().__init__()
        from torch_geometric.nn import GATv2Conv

        self.gat = GATv2Conv(2 + hidden, hidden, heads=heads, concat=False, add_self_loops=True, bias=bias)
        self.decoder = decoder
        self.to_coord = nn.Linear(hidden, 2) if decoder == "coord" else None

    def _fast_path(self, x: Tensor) -> bool:
        """`gatv2_attention` for the layer UM2N builds, on the CPU in float32 / float64 outside autocast (it was
        measured there: ~2x a training step); elsewhere, e.g. on a GPU, torch_geometric's own kernels."""
        g = self.gat
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu") and not g.concat and g.add_self_loops and g.lin_edge is None
                and g.res is None and not g.share_weights and (g.dropout == 0 or not g.training))

    def forward(self, coord: Tensor, hidden: Tensor, edge_index: Tensor, ref: Tensor, x_fixed: Tensor,
                y_fixed: Tensor, neighbours: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """`neighbours`: `attention_neighbours(edge_index, V)`, computed once for all loops (built here if None)."""
        if not self._fast_path(coord):
            return self.forward_pyg(coord, hidden, edge_index, ref, x_fixed, y_fixed)
        nbr, valid = neighbours if neighbours is not None else attention_neighbours(edge_index, coord.shape[0])
        out, alpha = gatv2_attention(self.gat, torch.cat([coord, hidden], -1), nbr, valid)
        return self._decode(out, lambda: torch.bmm(alpha.mean(-1)[:, None], coord[nbr])[:, 0], ref, x_fixed, y_fixed)

    def forward_pyg(self, coord: Tensor, hidden: Tensor, edge_index: Tensor, ref: Tensor, x_fixed: Tensor,
                    y_fixed: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` by torch_geometric's GATv2Conv (the reference of `gatv2_attention`)."""
        out, ((src, dst), alpha) = self.gat(torch.cat([coord, hidden], -1), edge_index, return_attention_weights=True)

        def neighbour_average() -> Tensor:
            return torch.zeros_like(coord).index_add_(0, dst, alpha.mean(-1)[:, None] * coord[src])

        return self._decode(out, neighbour_average, ref, x_fixed, y_fixed)

    def _decode(self, out: Tensor, neighbour_average: Callable[[], Tensor], ref: Tensor, x_fixed: Tensor,
                y_fixed: Tensor) -> tuple[Tensor, Tensor]:
        """(new coordinates after the boundary projection, new hidden state) from the GAT output `out`; with
        `decoder="average"` the coordinates are `neighbour_average()`, sum_j mean_heads(alpha_ij) x_j (the attention
        is a softmax over each node's neighbours, so its weights sum to 1)."""
        hidden = F.selu(out)
        new = neighbour_average() if self.decoder == "average" else self.to_coord(hidden)
        return project_to_boundary(new, ref, x_fixed, y_fixed), hidden


class UM2N(nn.Module):
    """Graph Transformer encoder + recurrent GAT deformer (MRTransformer)."""

    def __init__(self, in_dim: int = 4, embed_dim: int = 64, transformer_out: int = 16, num_heads: int = 4,
                 num_layers: int = 1, hidden: int = 512, gat_heads: int = 6, num_loop: int = 3,
                 decoder: str = "average", use_monitor: bool = True, encoder_layout: str = "torch") -> None:
        super().__init__()
        self.encoder = GraphTransformerEncoder(in_dim, embed_dim, transformer_out, num_heads, num_layers,
                                               encoder_layout)
        self.lin = nn.Linear(1 + transformer_out, hidden)
        # with one averaging loop the GAT output (hidden state) is never used again: its bias would get no gradient
        self.deformer = RecurrentGATDeformer(hidden, gat_heads, decoder, bias=num_loop > 1 or decoder == "coord")
        self.num_loop, self.use_monitor = num_loop, use_monitor

    def forward(self, data, project_boundary: bool = True) -> Tensor:
        """Moved node positions (V, 2) in the parameters' dtype (the graph's float32 tensors are cast, so a
        64-bit module runs in 64 bits); `project_boundary=False` drops the boundary treatment (Sec. 3 of the
        paper: boundary nodes keep their normal coordinate), an ablation only."""
        dtype = self.lin.weight.dtype
        x = data.x.to(dtype)
        if not self.use_monitor:
            x = torch.cat([x[:, :3], torch.zeros_like(x[:, 3:])], -1)
        feats = self.encoder(x, batch_of(data, x.device))
        hidden = F.selu(self.lin(torch.cat([x[:, 2:3], feats], -1)))
        ref = data.pos.to(dtype)
        x_fixed, y_fixed = boundary_masks(data, project_boundary)
        coord = ref
        # one table for all loops, where the deformer takes the CPU path (else torch_geometric's layer needs none)
        neighbours = attention_neighbours(data.edge_index, ref.shape[0]) if self.deformer._fast_path(ref) else None
        for _ in range(self.num_loop):
            coord, hidden = self.deformer(coord, hidden, data.edge_index, ref, x_fixed, y_fixed, neighbours)
        return coord


def chamfer_distance(pred: Tensor, target: Tensor, batch: Tensor) -> Tensor:
    """Symmetric Chamfer distance between moved and target node sets, per mesh: the mean over predicted nodes of the
    squared distance to the nearest target node, plus the same from the target side (pytorch3d's
    `chamfer_distance` defaults, which the released training calls), averaged over the meshes of the batch. The
    released code passes a whole batch as one point cloud (a node may match another mesh's target); here each mesh
    is its own cloud."""
    total, graphs = pred.new_zeros(()), torch.unique(batch)
    for g in graphs:
        d2 = torch.cdist(pred[batch == g], target[batch == g]).pow(2)
        total = total + d2.min(1).values.mean() + d2.min(0).values.mean()
    return total / len(graphs)


KIND_SWIRL = M.KIND_SWIRL  # graph kind of the swirl snapshots


@functools.lru_cache(maxsize=64)
def _swirl_reference(swirl: tuple[float, ...], n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(points, exact u(points, t)) for a swirl snapshot (t, x0, y0, r0, sigma, alpha, T): the characteristic trace of
    the random points is the costly part of the evaluation, shared by every evaluation of the same snapshot."""
    pts = M.random_points(n_points, 0)
    vals = M.swirl_solution(pts, swirl[0], **_swirl_kwargs(swirl))
    pts.flags.writeable = vals.flags.writeable = False
    return pts, vals


def _swirl_kwargs(swirl: tuple[float, ...]) -> dict:
    t, x0, y0, r0, sigma, alpha, T = swirl
    return {"centre": (x0, y0), "radius": r0, "sigma": sigma, "alpha": alpha, "T": T}


def swirl_interp_ratio(pred: np.ndarray, ref: np.ndarray, tri: np.ndarray, swirl: tuple[float, ...],
                       n_points: int) -> float:
    """RMS P1 interpolation error of the exact swirl solution at time swirl[0] on the moved mesh `pred` / the same on
    the reference (uniform) mesh `ref` (nodal values are the exact solution at each mesh's own nodes)."""
    pts, exact = _swirl_reference(tuple(swirl), int(n_points))
    kw = _swirl_kwargs(swirl)
    errs = []
    for nodes in (pred, ref):
        approx = M.interpolate_p1(nodes, tri, M.swirl_solution(nodes, swirl[0], **kw), pts)
        errs.append(float(np.sqrt(np.mean((exact - approx) ** 2))))
    return errs[0] / errs[1]


KIND_CYLINDER = M.KIND_CYLINDER  # graph kind of the cylinder-flow test meshes


def cylinder_fluid_points(ref: np.ndarray, tri: np.ndarray, n_points: int, seed: int = 0) -> np.ndarray:
    """`n_points` uniform random points of the unit square covered by the reference mesh (the fluid: outside the
    hole's rim polygon), deterministic by seed."""
    import matplotlib.tri as mtri

    finder = mtri.Triangulation(ref[:, 0], ref[:, 1], tri).get_trifinder()
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    have = 0
    while have < n_points:
        p = rng.random((max(2 * (n_points - have), 64), 2))
        p = p[finder(p[:, 0], p[:, 1]) >= 0]
        out.append(p)
        have += len(p)
    return np.concatenate(out)[:n_points]


def cylinder_interp_ratio(pred: np.ndarray, ref: np.ndarray, tri: np.ndarray, flow, n_points: int) -> float:
    """RMS P1 interpolation error of the exact potential-flow velocity (u, v) (`datamodules.cylinder_flow.
    potential_flow`, flow = (U, theta, Gamma, x0, y0, R)) on the moved mesh `pred` / the same on the reference mesh
    `ref`, at `n_points` random fluid points (inside the reference mesh; nodal values exact at each mesh's nodes)."""
    from datamodules.cylinder_flow import potential_flow

    return _velocity_interp_ratio(pred, ref, tri, lambda p: potential_flow(p, flow)[:, :2], n_points)


def cylinder_ns_interp_ratio(pred: np.ndarray, ref: np.ndarray, tri: np.ndarray, ref_pos: np.ndarray,
                             ref_tri: np.ndarray, ref_vel: np.ndarray, n_points: int) -> float:
    """`cylinder_interp_ratio` for a Navier-Stokes snapshot: the "exact" velocity is the solver's fine reference field
    (`datamodules.cylinder_ns.reference_mesh`: the P2 solution as P1 on the midpoint-refined mesh, the hole filled by
    the rim's rigid motion; ref_pos (P, 2), ref_tri, ref_vel (P, 2)), evaluated at the random fluid points and at
    both meshes' nodes (moved nodes anywhere in the square are covered). Assumed: the reference's own error (P1 on a
    twice finer mesh) is small against the test mesh's interpolation error (it is exact at the original nodes)."""
    def velocity(p: np.ndarray) -> np.ndarray:
        return np.stack([M.interpolate_p1(ref_pos, ref_tri, ref_vel[:, k], p) for k in range(2)], 1)

    return _velocity_interp_ratio(pred, ref, tri, velocity, n_points)


def _velocity_interp_ratio(pred: np.ndarray, ref: np.ndarray, tri: np.ndarray,
                           velocity: Callable[[np.ndarray], np.ndarray], n_points: int) -> float:
    """RMS over `n_points` random fluid points (`cylinder_fluid_points`) of |v - I_h v|, I_h the P1 interpolant of
    v's values at the nodes, on the moved mesh `pred` / the same on the reference mesh `ref`; velocity (P, 2)."""
    pts = cylinder_fluid_points(ref, tri, int(n_points))
    exact = velocity(pts)
    errs = []
    for nodes in (pred, ref):
        vals = velocity(nodes)
        approx = np.stack([M.interpolate_p1(nodes, tri, vals[:, k], pts) for k in range(2)], 1)
        errs.append(float(np.sqrt(np.mean(np.sum((exact - approx) ** 2, 1)))))
    return errs[0] / errs[1]


def _per_time_metrics(family: str, entries: list[tuple[float, float, int, float]]) -> dict[str, float]:
    """Metrics of a time-dependent test family from (t, interpolation ratio, inverted, boundary violation) per mesh:
    `interp_ratio_<family>` (mean), `inverted_<family>` (sum), `boundary_violation_<family>` (max), and the same per
    time with the suffix `_t<t>` (3 decimals)."""
    t, ratio, inv, bd = (np.array(v, np.float64) for v in zip(*entries))
    out = {f"interp_ratio_{family}": float(ratio.mean()), f"inverted_{family}": float(inv.sum()),
           f"boundary_violation_{family}": float(bd.max())}
    for tk in np.unique(t):
        sel = t == tk
        out |= {f"interp_ratio_{family}_t{tk:.3f}": float(ratio[sel].mean()),
                f"inverted_{family}_t{tk:.3f}": float(inv[sel].sum()),
                f"boundary_violation_{family}_t{tk:.3f}": float(bd[sel].max())}
    return out


DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=5e-5, weight_decay=0.1)  # run_train.py


def _checked_mapping(value, check: Callable) -> dict:
    """A coupled-run option (dict or OmegaConf mapping) checked by `check` when the module is built (one-line
    UserErrors naming the key), as a plain dict for the hyperparameters."""
    check(value)
    if isinstance(value, dict):
        return value
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True)


class UM2NModule(L.LightningModule):
    """Supervised training on MA meshes (coordinate + element-area losses); zero-shot evaluation.

    Metrics (test/, val/ the same): `interp_ratio` (front-field meshes: RMS P1 interpolation error of u on the moved /
    uniform mesh, 20,000 random points; mean), `inverted` (tangled triangles summed over all test meshes),
    `boundary_violation` (largest normal displacement of a boundary node), `node_rmse_cells` (node RMSE to the exact
    MA mesh / cell width, mean over all test meshes; `_fronts`, `_bumps` and `_dataset` (targets read from
    dataset files, e.g. the Helmholtz sets) per family; only logged when some test mesh has a target).
    Swirl snapshots (graph kind 3, `data.test_family=swirl`; no MA target, so no node RMSE): `interp_ratio_swirl`
    (RMS P1 interpolation error of the exact swirl solution u(., t_k) on the moved / uniform mesh, `n_interp_points`
    random points, mean over snapshots), `inverted_swirl` (sum), `boundary_violation_swirl` (max), and per snapshot
    `interp_ratio_swirl_t<t_k>`, `inverted_swirl_t<t_k>`, `boundary_violation_swirl_t<t_k>` (t_k with 3 decimals);
    `inverted` and `boundary_violation` include the swirl meshes.
    Cylinder meshes (graph kind 4, `data.test_family=cylinder`; no MA target): `interp_ratio_cylinder` (RMS P1
    interpolation error of the exact potential-flow velocity (u, v) on the moved / original mesh at
    `n_interp_points` random points of the fluid, mean over times; for Navier-Stokes snapshots,
    `data.cylinder.field=navier_stokes`, of the solver's reference velocity: `cylinder_ns_interp_ratio`),
    `inverted_cylinder` (sum),
    `boundary_violation_cylinder` (max over meshes of the largest normal displacement of a square-side node and the
    largest displacement of a rim node), per time `..._t<t_k>`; `inverted` and `boundary_violation` include them.
    Coupled swirl solve (`coupled_swirl`: null = off, or a mapping of `um2n_coupled.COUPLED_DEFAULTS` keys; run once
    at the end of the test epoch with this module as the mover, `um2n_coupled.coupled_swirl`): `swirl_pde_error_uniform`
    / `swirl_pde_error_moved` (L2 error of the DG solution against the exact one on the uniform / UM2N-moved mesh,
    mean over the recorded times), `swirl_pde_error_reduction` ((uniform - moved) / uniform of those means, the
    official summary), the same at the final time (`..._final`), `swirl_coupled_inverted` (inverted triangles summed
    over all moved meshes), `swirl_coupled_tangled_meshes`, `swirl_coupled_seconds_per_step`.
    Coupled cylinder run (`coupled_cylinder`: null = off, or a mapping of
    `um2n_coupled_ns.COUPLED_CYLINDER_DEFAULTS` keys; mesh_seed null: the cylinder test mesh's; run once at the end of
    the test epoch with this module as the mover, `um2n_coupled_ns.coupled_cylinder`): Navier-Stokes on the fixed and
    the UM2N-moved cylinder test mesh and on a finer reference mesh; `cylinder_coupled_<q>_<run>` for q in cd_mean
    (mean C_D), cl_amp (C_L amplitude), st (Strouhal number) and run in fixed, moved, ref; `..._<q>_error_<run>`
    (relative to ref), `..._<q>_reduction`, `cylinder_coupled_error_fixed` / `_moved` (sums of the three),
    `cylinder_coupled_error_reduction`, `cylinder_coupled_inverted` (inverted triangles of the rejected moves),
    `cylinder_coupled_rejected_moves`, `cylinder_coupled_moves`, `cylinder_coupled_diverged`,
    `cylinder_coupled_seconds_per_step_fixed` / `_moved` (/ `_ref` when the reference was computed, not cached).
    """

    def __init__(self, embed_dim: int = 64, transformer_out: int = 16, num_heads: int = 4, num_layers: int = 1,
                 hidden: int = 512, gat_heads: int = 6, num_loop: int = 1, decoder: str = "average",
                 use_monitor: bool = True, mover: str = "um2n", coord_loss: str = "l1", coord_weight: float = 0.0,
                 area_weight: float = 300.0, chamfer_weight: float = 0.0, architecture: str = "mrt",
                 deformer_lin: int = 254, deformer_widths: tuple[int, ...] = (508, 250, 120, 20),
                 encoder_layout: str = "torch",
                 n_interp_points: int = 20000, project_boundary: bool = True, coupled_swirl: dict | None = None,
                 coupled_cylinder: dict | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER) -> None:
        super().__init__()
        if decoder not in ("average", "coord"):
            raise ValueError(f"decoder must be 'average' (paper) or 'coord' (raw coordinates), got {decoder!r}")
        if mover not in ("um2n", "identity"):
            raise ValueError(f"mover must be 'um2n' or 'identity', got {mover!r}")
        if num_loop < 1:
            raise ValueError(f"num_loop must be >= 1, got {num_loop}")
        if coord_loss not in ("l1", "mse"):
            raise ValueError(f"coord_loss must be 'l1' (released code) or 'mse' (card), got {coord_loss!r}")
        weights = (coord_weight, area_weight, chamfer_weight)
        if not all(w >= 0 for w in weights) or sum(weights) == 0:  # NaN too (a NaN loss at the first step)
            raise ValueError(f"loss weights model.coord_weight, model.area_weight, model.chamfer_weight must be >= 0 "
                             f"and not all 0, got {coord_weight}, {area_weight}, {chamfer_weight}")
        if architecture not in ("mrt", "m2n_t"):
            raise ValueError(f"architecture must be 'mrt' (MRTransformer, the card's) or 'm2n_t' (the released "
                             f"checkpoint's), got {architecture!r}")
        if architecture == "m2n_t" and decoder != "average":
            raise ValueError("architecture=m2n_t averages neighbour positions: decoder must be 'average'")
        deformer_widths = tuple(whole_list("model.deformer_widths", deformer_widths, low=None))  # >= 1: below
        check_min("model", 1, deformer_lin=deformer_lin, deformer_widths=min(deformer_widths))
        check_min("model", 1, embed_dim=embed_dim, transformer_out=transformer_out, num_heads=num_heads, hidden=hidden,
                  gat_heads=gat_heads, n_interp_points=n_interp_points)
        check_min("model", 0, num_layers=num_layers)  # 0: no transformer layer
        if embed_dim % num_heads:
            raise UserError(f"model.embed_dim ({embed_dim}) must be divisible by model.num_heads ({num_heads})")
        if coupled_swirl is not None:
            from lit_models.pde.um2n_coupled import coupled_config

            coupled_swirl = _checked_mapping(coupled_swirl, coupled_config)
        if coupled_cylinder is not None:
            from lit_models.pde.um2n_coupled_ns import coupled_cylinder_config

            coupled_cylinder = _checked_mapping(coupled_cylinder, coupled_cylinder_config)
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        if architecture == "m2n_t":
            from lit_models.pde.um2n_m2n_t import M2NT

            self.net = M2NT(embed_dim, transformer_out, num_heads, num_layers, 16, deformer_lin, deformer_widths,
                            gat_heads, use_monitor, encoder_layout)
        else:
            self.net = UM2N(4, embed_dim, transformer_out, num_heads, num_layers, hidden, gat_heads, num_loop,
                            decoder, use_monitor, encoder_layout)
        self._eval: dict[str, list] = {}
        self._last: list[dict[str, Any]] = []
        self._coupled = None  # the last coupled swirl solve (um2n_coupled.CoupledSwirlResult)
        self._coupled_cylinder = None  # the last coupled cylinder run (um2n_coupled_ns.CoupledCylinderResult)

    def forward(self, data) -> Tensor:
        """Moved nodes in the module's dtype (float32, or float64 under `trainer.precision=64-true`: Lightning does
        not convert a torch_geometric batch, so its float32 tensors are cast here)."""
        if self.hparams.mover == "identity":
            return data.pos.to(self.dtype)
        with no_autocast(data.pos.device.type):
            return self.net(data, project_boundary=self.hparams.project_boundary)

    def loss(self, data, pred: Tensor) -> tuple[Tensor, Tensor]:
        """(coordinate loss, element-volume loss) of a batch, unweighted (see the module docstring)."""
        tri = data.face.T
        target, ref = data.y.to(pred.dtype), data.pos.to(pred.dtype)
        a_pred, a_true = M.signed_areas(pred, tri), M.signed_areas(target, tri)
        a_ref = M.signed_areas(ref, tri).abs().mean()  # mean |a| = sum |a| / n cells: the batch's domain area / n
        coord = F.l1_loss(pred, target) if self.hparams.coord_loss == "l1" else F.mse_loss(pred, target)
        return coord, torch.mean(torch.abs(a_pred - a_true)) / a_ref

    def training_step(self, data, batch_idx: int = 0) -> Tensor:
        hp = self.hparams
        if hp.mover == "identity":
            return sum(p.sum() for p in self.parameters()) * 0.0
        pred = self(data)
        coord_loss, area_loss = self.loss(data, pred)
        loss = hp.coord_weight * coord_loss + hp.area_weight * area_loss
        n = int(data.num_graphs)
        if hp.chamfer_weight:
            chamfer = chamfer_distance(pred, data.y.to(pred.dtype), batch_of(data, pred.device))
            loss = loss + hp.chamfer_weight * chamfer
            self.log("train/chamfer_loss", chamfer, on_step=True, on_epoch=False, batch_size=n, sync_dist=True)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train/coord_loss", coord_loss, on_step=True, on_epoch=False, batch_size=n, sync_dist=True)
        self.log("train/area_loss", area_loss, on_step=True, on_epoch=False, batch_size=n, sync_dist=True)
        return loss

    # --------------------------------------------------------------------------------------------- evaluation
    def _start(self) -> None:
        self._eval = {"ratio": [], "inverted": [], "bd": [], "rmse_f": [], "rmse_b": [], "rmse_d": [], "swirl": [],
                      "cylinder": []}
        self._last = []

    def on_validation_epoch_start(self) -> None:
        self._start()

    def on_test_epoch_start(self) -> None:
        self._start()
        self._coupled = None
        self._coupled_cylinder = None

    def _evaluate(self, data) -> None:
        pred = self(data).detach().double().cpu().numpy()
        ref = data.pos.double().cpu().numpy()
        tri = data.face.T.cpu().numpy()
        tgt = data.y.double().cpu().numpy()
        n_side = int(data.n_side.reshape(-1)[0])
        h = M.cell_size(n_side)
        inverted, bd = M.count_inverted(pred, tri), M.boundary_violation(pred, ref)
        kind = int(data.kind.reshape(-1)[0])
        if kind == KIND_CYLINDER:  # the hole's rim nodes are boundary nodes too: their displacement counts
            rim = data.rim.cpu().numpy().astype(bool)
            if rim.any():
                bd = max(bd, float(np.linalg.norm(pred[rim] - ref[rim], axis=1).max()))
        self._eval["inverted"].append(inverted)
        self._eval["bd"].append(bd)
        rmse = float(np.sqrt(np.mean(np.sum((pred - tgt) ** 2, 1)))) / h
        if kind == KIND_CYLINDER:  # no target: interpolation error of the exact flow, tangling, boundary
            cy = tuple(float(v) for v in data.cylinder.reshape(-1).cpu().numpy())
            if getattr(data, "ns_ref_val", None) is not None:  # Navier-Stokes snapshot: the solver's reference field
                ratio = cylinder_ns_interp_ratio(pred, ref, tri, data.ns_ref_pos.double().cpu().numpy(),
                                                 data.ns_ref_tri.cpu().numpy(), data.ns_ref_val.double().cpu().numpy(),
                                                 self.hparams.n_interp_points)
            else:
                ratio = cylinder_interp_ratio(pred, ref, tri, cy[1:], self.hparams.n_interp_points)
            self._eval["cylinder"].append((cy[0], ratio, inverted, bd))
        elif kind == KIND_SWIRL:  # no target: interpolation error of the exact solution, tangling, boundary
            sw = tuple(float(v) for v in data.swirl.reshape(-1).cpu().numpy())
            ratio = swirl_interp_ratio(pred, ref, tri, sw, self.hparams.n_interp_points)
            self._eval["swirl"].append((sw[0], ratio, inverted, bd))
        elif kind == 1:
            k, c, ang, amp = data.params.reshape(-1).cpu().numpy()
            f = functools.partial(M.front_field, k=k, c=c, angle=ang, amp=amp)
            pts = M.random_points(self.hparams.n_interp_points, 0)
            err_moved, err_fixed = M.interpolation_error(pred, tri, f, pts), M.interpolation_error(ref, tri, f, pts)
            self._eval["ratio"].append(err_moved / err_fixed)
            self._eval["rmse_f"].append(rmse)
        else:  # kind 0: separable bumps; kind 2: a target mesh read from a dataset file (UM2N Helmholtz)
            self._eval["rmse_b" if kind == 0 else "rmse_d"].append(rmse)
        if len(self._last) < 6 and sum(d["kind"] == kind for d in self._last) < 2:  # two of each test family
            t = data.swirl if kind == KIND_SWIRL else data.cylinder if kind == KIND_CYLINDER else None  # (t, ...)
            self._last.append({"pred": pred, "tri": tri, "target": tgt, "monitor": data.x[:, 3].cpu().numpy(),
                               "ref": ref, "kind": kind, "rmse_cells": rmse,
                               "t": None if t is None else float(t.reshape(-1)[0])})

    def validation_step(self, data, batch_idx: int = 0) -> None:
        self._evaluate(data)

    def test_step(self, data, batch_idx: int = 0) -> None:
        self._evaluate(data)

    def _log_eval(self, split: str) -> None:
        """The epoch's metrics from every rank's meshes (`common.ddp_eval.gather_lists`): the same keys and values on
        every rank, whatever test families and times each rank held."""
        e = {key: [] for key in self._eval} | gather_lists(self._eval, eval_set_replicated(self))
        if not e["inverted"]:
            return
        rm = e["rmse_f"] + e["rmse_b"] + e["rmse_d"]
        metrics = {"inverted": float(np.sum(e["inverted"])), "boundary_violation": float(np.max(e["bd"]))}
        if rm:
            metrics["node_rmse_cells"] = float(np.mean(rm))
        if e["ratio"]:
            metrics |= {"interp_ratio": float(np.mean(e["ratio"])),
                        "node_rmse_cells_fronts": float(np.mean(e["rmse_f"]))}
        if e["rmse_b"]:
            metrics["node_rmse_cells_bumps"] = float(np.mean(e["rmse_b"]))
        if e["rmse_d"]:
            metrics["node_rmse_cells_dataset"] = float(np.mean(e["rmse_d"]))
        for family in ("swirl", "cylinder"):
            if e[family]:
                metrics |= _per_time_metrics(family, e[family])
        for k, v in metrics.items():
            self.log(f"{split}/{k}", v, sync_dist=True, batch_size=1, prog_bar=k == "interp_ratio")

    def on_validation_epoch_end(self) -> None:
        if self._eval:
            self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        if self._eval:
            self._log_eval("test")
        if self.hparams.get("coupled_swirl") is not None:
            self._run_coupled_swirl()
        if self.hparams.get("coupled_cylinder") is not None:
            self._run_coupled_cylinder()

    def _run_coupled_swirl(self) -> None:
        """The coupled swirl solve with this module as the mover (`um2n_coupled.coupled_swirl`; on rank 0 only under
        DDP, the result sent to every rank); logs its metrics."""
        from lit_models.pde.um2n_coupled import coupled_config, coupled_swirl

        cfg = coupled_config(self.hparams.coupled_swirl)
        self._coupled = computed_once(self, lambda: coupled_swirl(lambda g: self(g.to(self.device)).detach(), **cfg))
        for k, v in self._coupled.metrics().items():
            self.log(f"test/{k}", v, sync_dist=True, batch_size=1)

    def _run_coupled_cylinder(self) -> None:
        """The coupled cylinder run with this module as the mover (`um2n_coupled_ns.coupled_cylinder`; mesh_seed null:
        the datamodule's cylinder test mesh; on rank 0 only under DDP, the result sent to every rank); logs its
        metrics."""
        from lit_models.pde.um2n_coupled_ns import coupled_cylinder, coupled_cylinder_config

        cfg = coupled_cylinder_config(self.hparams.coupled_cylinder)
        if cfg["mesh_seed"] is None:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            cfg["mesh_seed"] = dm.cylinder_mesh_seed() if hasattr(dm, "cylinder_mesh_seed") else 0

        def mover(g):
            with torch.no_grad():
                return self(g.to(self.device)).detach()

        self._coupled_cylinder = computed_once(self, lambda: coupled_cylinder(mover, **cfg))
        for k, v in self._coupled_cylinder.metrics().items():
            self.log(f"test/{k}", v, sync_dist=True, batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def figures(self) -> dict[str, Any]:
        """{"moved_meshes": moved test meshes (white) over their monitor, the exact MA meshes in a second row when
        any test mesh has one (swirl and cylinder snapshots have none: one row, titled with the snapshot time)} and,
        after a coupled swirl solve, `um2n_coupled.coupled_figures` (error over time, final solutions), after a coupled
        cylinder run `um2n_coupled_ns.coupled_cylinder_figures` (C_D, C_L over time, the final moved mesh)."""
        figs: dict[str, Any] = {}
        if self._coupled is not None:
            from lit_models.pde.um2n_coupled import coupled_figures

            figs |= coupled_figures(self._coupled)
        if self._coupled_cylinder is not None:
            from lit_models.pde.um2n_coupled_ns import coupled_cylinder_figures

            figs |= coupled_cylinder_figures(self._coupled_cylinder)
        if not self._last:
            return figs
        import matplotlib.pyplot as plt

        n = len(self._last)
        targets = [bool(np.all(np.isfinite(d["target"]))) for d in self._last]  # swirl, cylinder: no target mesh
        rows = 2 if any(targets) else 1
        # the UM2N mesh above, the exact MA mesh below (overlaid, the two were unreadable on a 35 x 35 mesh)
        fig, axes = plt.subplots(rows, n, figsize=(3.2 * n, 3.1 * rows + 0.1), squeeze=False)
        for k, (d, has_target) in enumerate(zip(self._last, targets)):
            rmse = f", node RMSE {d['rmse_cells']:.2f} cells" if has_target else ""
            when = f", t = {d['t']:.3g}" if d.get("t") is not None else ""
            for row, (mesh, name) in enumerate(((d["pred"], f"UM2N{when}{rmse}"),
                                                (d["target"], "exact MA mesh"))[:rows]):
                ax = axes[row, k]
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 1 and not has_target:
                    ax.set_axis_off()
                    ax.set_title("no exact MA mesh", fontsize=7)
                    continue
                ax.tripcolor(d["ref"][:, 0], d["ref"][:, 1], d["tri"], d["monitor"], shading="gouraud",
                             cmap="viridis")
                ax.triplot(mesh[:, 0], mesh[:, 1], d["tri"], color="w", lw=0.4)
                ax.set_title(f"test mesh {k}: {name}", fontsize=7)
        fig.suptitle("moved test meshes over their monitor (up to two per test family)", fontsize=8)
        fig.tight_layout()
        return figs | {"moved_meshes": fig}
