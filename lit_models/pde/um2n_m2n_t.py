"""The released UM2N network, `M2N_T` (mesh-adaptation/UM2N `pretrain_model/config.yaml`: model_used M2N_T, the
model behind the published checkpoint `model_999.pth`; `warpmesh/model/M2N_T.py`, `extractor.py`, `gatdeformer.py`).

Where `UM2N` (um2n.py) follows the MRTransformer of the card (one GAT deformer applied `num_loop` times with shared
weights), the released model differs in three places:
- global features: the graph transformer on [x, y, m] (3 features, no boundary mask), 16 outputs, then SELU;
- local features (`LocalFeatureExtractor`): for every mesh edge j -> i an MLP of [x_j - x_i, |x_j - x_i|, m_i, m_j]
  (64, 64, out - 1 channels, SELU after each), its output and |x_j - x_i| summed over the incoming edges of i;
- deformer (`StackedGATDeformer`): [x, y, boundary mask, local, global] -> Linear(254) -> SELU, then 4 *separate*
  `DeformGATLayer`s (widths 508 / 250 / 120 / 20, 6 heads) that each see every earlier layer's coordinates beside
  the previous features. Each layer moves a node to an attention-weighted average of its neighbours' positions
  (no self loop: a node's own position is not in the average), with logits SELU(a_l . W h_j + a_r . W h_i)
  scaled by 0.2 for the coordinates, softmax over the incoming edges, heads averaged; the feature output is the
  same average of W h_j (unscaled logits), heads averaged, SELU. Boundary nodes keep their normal coordinate after
  every layer (as `UM2N`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_models.pde.um2n import GraphTransformerEncoder, batch_of, boundary_masks, project_to_boundary


def edge_softmax(logits: Tensor, dst: Tensor, n_nodes: int) -> Tensor:
    """Softmax of edge logits (E, H) over the incoming edges of each target node (torch_geometric's softmax)."""
    from torch_geometric.utils import softmax

    return softmax(logits, dst, num_nodes=n_nodes)


class LocalFeatureExtractor(nn.Module):
    """Edge MLP summed at the target node (official `LocalFeatExtractor`, aggr "add"); inputs per node: (x, y, m)."""

    def __init__(self, out_dim: int = 16, width: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5, width), nn.SELU(), nn.Linear(width, width), nn.SELU(),
                                 nn.Linear(width, out_dim - 1), nn.SELU())

    def forward(self, feat: Tensor, edge_index: Tensor) -> Tensor:
        src, dst = edge_index
        diff = feat[src, :2] - feat[dst, :2]
        dist = diff.norm(dim=1, keepdim=True)
        msg = torch.cat([self.mlp(torch.cat([diff, dist, feat[dst, 2:], feat[src, 2:]], 1)), dist], 1)
        return torch.zeros(len(feat), msg.shape[1], dtype=msg.dtype, device=msg.device).index_add_(0, dst, msg)


class DeformGATLayer(nn.Module):
    """One deformer layer of M2N_T (official `DeformGAT`, heads averaged, no self loops)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int = 6) -> None:
        super().__init__()
        self.heads, self.out_dim = heads, out_dim
        self.lin = nn.Linear(in_dim, heads * out_dim)
        self.att_l = nn.Parameter(torch.empty(1, heads, out_dim))
        self.att_r = nn.Parameter(torch.empty(1, heads, out_dim))
        for w in (self.lin.weight, self.att_l, self.att_r):  # glorot, as torch_geometric.nn.inits.glorot
            nn.init.xavier_uniform_(w.view(-1, w.shape[-1]) if w.dim() == 3 else w)

    def forward(self, coord: Tensor, feat: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        h = self.lin(feat).view(-1, self.heads, self.out_dim)
        a_l, a_r = (h * self.att_l).sum(-1), (h * self.att_r).sum(-1)  # (V, H)
        logits = a_l[src] + a_r[dst]  # (E, H): source j, target i
        w_coord = edge_softmax(F.selu(0.2 * logits), dst, len(coord))
        w_feat = edge_softmax(F.selu(logits), dst, len(coord))
        new = torch.zeros(len(coord), self.heads, 2, dtype=coord.dtype, device=coord.device)
        new = new.index_add_(0, dst, w_coord[..., None] * coord[src][:, None, :]).mean(1)
        out = torch.zeros(len(coord), self.heads, self.out_dim, dtype=h.dtype, device=h.device)
        out = out.index_add_(0, dst, w_feat[..., None] * h[src]).mean(1)
        return new, F.selu(out)


class StackedGATDeformer(nn.Module):
    """M2N_T's deformer (official `NetGATDeform`): Linear -> SELU, then len(widths) DeformGAT layers; layer k reads
    [coordinates after layers k-1, ..., 0, features of layer k-1]."""

    def __init__(self, in_dim: int, lin_width: int = 254, widths: tuple[int, ...] = (508, 250, 120, 20),
                 heads: int = 6) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, lin_width)
        dims = [lin_width, *widths[:-1]]
        self.layers = nn.ModuleList(DeformGATLayer(2 * (k + 1) + dims[k], widths[k], heads)
                                    for k in range(len(widths)))

    def forward(self, x: Tensor, edge_index: Tensor, ref: Tensor, x_fixed: Tensor, y_fixed: Tensor) -> Tensor:
        coords = [ref]
        feat = F.selu(self.lin(x))
        for layer in self.layers:
            new, feat = layer(coords[-1], torch.cat([*coords[::-1], feat], 1), edge_index)
            coords.append(project_to_boundary(new, ref, x_fixed, y_fixed))
        return coords[-1]


class M2NT(nn.Module):
    """The released UM2N model: global (transformer) + local (edge MLP) features -> stacked GAT deformer."""

    def __init__(self, embed_dim: int = 64, transformer_out: int = 16, num_heads: int = 4, num_layers: int = 1,
                 local_out: int = 16, lin_width: int = 254, widths: tuple[int, ...] = (508, 250, 120, 20),
                 gat_heads: int = 6, use_monitor: bool = True, encoder_layout: str = "torch") -> None:
        super().__init__()
        self.encoder = GraphTransformerEncoder(3, embed_dim, transformer_out, num_heads, num_layers, encoder_layout)
        self.local = LocalFeatureExtractor(local_out)
        self.deformer = StackedGATDeformer(3 + local_out + transformer_out, lin_width, tuple(widths), gat_heads)
        self.use_monitor = use_monitor

    @property
    def dtype(self) -> torch.dtype:
        return self.deformer.lin.weight.dtype

    def forward(self, data, project_boundary: bool = True) -> Tensor:
        x = data.x.to(self.dtype)  # [x, y, boundary mask, m / max m]
        monitor = x[:, 3:4] if self.use_monitor else torch.zeros_like(x[:, 3:4])
        mesh_feat = torch.cat([x[:, :2], monitor], 1)
        global_feat = F.selu(self.encoder(mesh_feat, batch_of(data, x.device)))
        local_feat = self.local(mesh_feat, data.edge_index)
        ref = data.pos.to(self.dtype)
        x_fixed, y_fixed = boundary_masks(data, project_boundary)
        return self.deformer(torch.cat([x[:, :3], local_feat, global_feat], 1), data.edge_index, ref, x_fixed,
                             y_fixed)
