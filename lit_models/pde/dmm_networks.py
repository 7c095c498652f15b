"""The DMM network phi(u, xi) of "Better Neural PDE Solvers Through Data-Free Mesh Movers" (ICLR 2024; official
`mesh/dmm_model.py` of Peiyannn/MM-PDE, paper Sec. 3.1): a DeepONet-like operator whose branch reads the solution
(`BranchCNN` on a grid, `BranchGNN` on the nodes of a fixed mesh), whose trunk reads the reference point xi, and whose
head gives the scalar potential phi (the mesh map is x = xi + grad_xi phi). Trained by
`lit_models.pde.data_free_mesh_mover`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_models.common import mesh as M


def _mlp(sizes: list[int], act: type[nn.Module] = nn.Tanh, last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            layers.append(act())
    return nn.Sequential(*layers)


def _conv_out(n: int, stride: int) -> int:
    return (n - 1) // stride + 1  # 5 x 5 kernel, padding 2


class BranchCNN(nn.Module):
    """CNN branch on u (B, 1, G, G), as `ConvNet` in dmm_model.py (its `branch_layers=7` variant): tanh conv layers
    with 5 x 5 kernels and `channels` outputs (official: 8, 16, 8, 1), stride 2 on the first and the last; a residual
    link adds the first layer's (activated) output to the second-to-last layer's pre-activation; the full feature
    map is flattened (no pooling: the front position must reach phi) and passed through tanh fully connected layers
    `fc` (official: 1024) to a linear output of size `out_dim` (official: 512)."""

    def __init__(self, channels: list[int], out_dim: int, grid: int, fc: list[int] = (1024,)) -> None:
        super().__init__()
        if len(channels) < 3 or channels[0] != channels[-2]:
            raise ValueError(f"branch_channels needs >= 3 conv layers and channels[0] == channels[-2] for the "
                             f"residual link, got {list(channels)}")
        n = len(channels)
        self.convs = nn.ModuleList()
        cin, side = 1, grid
        for i, c in enumerate(channels):
            stride = 2 if i in (0, n - 1) else 1
            self.convs.append(nn.Conv2d(cin, c, 5, stride=stride, padding=2))
            cin, side = c, _conv_out(side, stride)
        self.fc = _mlp([cin * side * side, *fc, out_dim])

    def forward(self, u: Tensor) -> Tensor:
        n = len(self.convs)
        x = first = torch.tanh(self.convs[0](u))
        for i in range(1, n):
            z = self.convs[i](x)
            x = torch.tanh(first + z if i == n - 2 else z)
        return self.fc(x.flatten(1))


class GNNLayer(nn.Module):
    """One message-passing layer of the official graph branch (`GNN_Layer_FS_2D` in dmm_model.py, width h): the
    message from neighbour j to node i is tanh(W2 tanh(W1 [h_i, h_j, u_i - u_j, x_i - x_j, y_i - y_j])), messages
    are averaged over the node's neighbours, the update is h_i + tanh(W4 tanh(W3 [h_i, mean message])), then
    BatchNorm over all nodes of the batch."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.message_net = nn.Sequential(nn.Linear(2 * hidden + 3, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                         nn.Tanh())
        self.update_net = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.norm = nn.BatchNorm1d(hidden)

    def forward(self, h: Tensor, u: Tensor, pos: Tensor, nbr: Tensor) -> Tensor:
        """h (B, V, H), u (B, V, 1), pos (B, V, 2), nbr (V, k) the k neighbours (sources) of each node."""
        k = nbr.shape[1]
        hi, hj = h[:, :, None].expand(-1, -1, k, -1), h[:, nbr]
        du = u[:, :, None] - u[:, nbr]
        dp = pos[:, :, None] - pos[:, nbr]
        msg = self.message_net(torch.cat([hi, hj, du, dp], -1)).mean(2)  # every node has exactly k neighbours
        out = h + self.update_net(torch.cat([h, msg], -1))
        return self.norm(out.reshape(-1, out.shape[-1])).reshape(out.shape)


def knn_neighbours(pos: Tensor, k: int) -> Tensor:
    """(V, k) indices of each node's k nearest other nodes (torch_cluster.knn_graph(loop=False) of the official
    create_graph, flow source -> target: node i aggregates over them)."""
    return M.knn_index(pos[None], pos[None], min(k, pos.shape[0] - 1), exclude_self=True)[0]


class BranchGNN(nn.Module):
    """Graph branch on the solution at the nodes of a fixed mesh (official `DMM(mode='graph')` of dmm_model.py,
    `branch_layers=[hidden, n_layers]`, cylinder: [4, 3]): input (B, V, 3) = [u, x, y] per node; the kNN graph
    (k = 35, official create_graph) of the node positions (those of the first field: every field shares the mesh);
    node embedding Linear(3, h) - BatchNorm - tanh - Linear(h, h) - BatchNorm; `n_layers` `GNNLayer`s; a decoder
    h -> 128 -> 1 per node (tanh, linear last: DenseNet([h, 128, 1])); the V node scalars, in node order, go through
    Linear(V, 512) - tanh - Linear(512, 256) - tanh - Linear(256, out_dim) (official output_mlp, out_dim = the trunk
    width). The node-level part is permutation-equivariant; the read-out is not invariant (it reads nodes by index,
    as the official branch, so the node order of the mesh is part of the model)."""

    def __init__(self, n_nodes: int, out_dim: int, hidden: int = 4, n_layers: int = 3, knn: int = 35,
                 decoder: list[int] = (128,), readout: list[int] = (512, 256)) -> None:
        super().__init__()
        if n_nodes < 2 or hidden < 1 or n_layers < 0 or knn < 1:
            raise ValueError(f"graph branch: need n_nodes >= 2, hidden >= 1, n_layers >= 0, knn >= 1, got "
                             f"{n_nodes}, {hidden}, {n_layers}, {knn}")
        self.n_nodes, self.knn = n_nodes, knn
        self.embedding = nn.Sequential(nn.Linear(3, hidden), nn.BatchNorm1d(hidden), nn.Tanh(),
                                       nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden))
        self.layers = nn.ModuleList(GNNLayer(hidden) for _ in range(n_layers))
        self.decoder = _mlp([hidden, *decoder, 1])
        self.readout = _mlp([n_nodes, *readout, out_dim])

    def node_features(self, u: Tensor) -> Tensor:
        """(B, V, 3) -> the decoder's node scalars (B, V)."""
        if u.ndim != 3 or u.shape[-1] != 3:
            raise ValueError(f"the graph branch takes (B, V, 3) = [u, x, y] per node, got {tuple(u.shape)}")
        B, V, _ = u.shape
        pos, val = u[..., 1:], u[..., :1]
        nbr = knn_neighbours(pos[0].detach(), self.knn)
        h = self.embedding(u.reshape(B * V, 3)).reshape(B, V, -1)
        for layer in self.layers:
            h = layer(h, val, pos, nbr)
        return self.decoder(h)[..., 0]

    def forward(self, u: Tensor) -> Tensor:
        if u.shape[1] != self.n_nodes:
            raise ValueError(f"the graph branch was built for {self.n_nodes} nodes, got {u.shape[1]}")
        return self.readout(self.node_features(u))


class DMMNet(nn.Module):
    """phi(u, xi): branch(u) and trunk(xi) features concatenated, head MLP -> scalar (DeepONet-like, dmm_model.DMM).
    trunk_layers includes the input size 2; head_layers starts with branch_out + trunk_out and ends with 1. Trunk and
    head are tanh MLPs with a linear last layer (dmm_model.DenseNet).
    `trunk_init_scale` (None = PyTorch's default init, as the paper's code) re-draws the first trunk layer as
    W ~ N(0, s^2), b = -W p with p ~ U[0, 1]^2 (each tanh unit switches inside the square): a CPU-scale choice, since
    the MA map needs O(1) curvature of phi on length scales ~0.1-0.3 that a default-initialised tanh trunk (nearly
    linear in xi) only reaches after far more Adam steps than a CPU budget allows.
    `branch="gnn"`: the official graph branch (`BranchGNN`) for solutions on the nodes of a fixed mesh (the cylinder
    case); u is then (B, V, 3) = [u, x, y] per node and `grid` the node count V; branch_channels / branch_fc unused."""

    def __init__(self, branch_channels: list[int], trunk_layers: list[int], head_layers: list[int],
                 boundary: str = "soft", trunk_init_scale: float | None = None, grid: int = 48,
                 branch_fc: list[int] = (1024,), out_dim: int = 1, branch: str = "cnn", gnn_hidden: int = 4,
                 gnn_layers: int = 3, gnn_knn: int = 35, gnn_decoder: list[int] = (128,),
                 gnn_readout: list[int] = (512, 256)) -> None:
        super().__init__()
        if trunk_layers[0] != 2 or head_layers[-1] != 1:
            raise ValueError("trunk_layers must start with 2 (xi) and head_layers end with 1 (phi)")
        branch_out = head_layers[0] - trunk_layers[-1]
        if branch_out < 1:
            raise ValueError(f"head_layers[0] ({head_layers[0]}) must exceed the trunk width ({trunk_layers[-1]})")
        if branch == "cnn":
            self.branch = BranchCNN(list(branch_channels), branch_out, grid, list(branch_fc))
        elif branch == "gnn":
            self.branch = BranchGNN(grid, branch_out, gnn_hidden, gnn_layers, gnn_knn, list(gnn_decoder),
                                    list(gnn_readout))
        else:
            raise ValueError(f"branch must be 'cnn' or 'gnn', got {branch!r}")
        self.trunk = _mlp(list(trunk_layers))
        if trunk_init_scale is not None:
            first = self.trunk[0]
            with torch.no_grad():
                first.weight.normal_(0.0, float(trunk_init_scale))
                first.bias.copy_(-(first.weight * torch.rand(first.weight.shape[0], 2)).sum(1))
        self.head = _mlp([*head_layers[:-1], out_dim])  # out_dim 1: phi; 2: a displacement (the direct baseline)
        # a constant in phi moves nothing (only grad phi and Hess phi enter): no output bias
        last = self.head[-1]
        self.head[-1] = nn.Linear(last.in_features, last.out_features, bias=False)
        self.boundary = boundary

    @staticmethod
    def boundary_factor(xi: Tensor) -> Tensor:
        """b(xi) = x^2 y^2 (x - 1)^2 (y - 1)^2 of the hard boundary constraint."""
        x, y = xi[..., 0], xi[..., 1]
        return (x * y * (x - 1) * (y - 1)) ** 2

    def forward(self, u: Tensor, xi: Tensor) -> Tensor:
        """u (B, 1, G, G) (CNN branch) or (B, V, 3) (graph branch), xi (B, P, 2) -> phi (B, P) (out_dim 1) or a
        displacement (B, P, 2) (out_dim 2)."""
        b = self.branch(u)[:, None].expand(-1, xi.shape[1], -1)
        out = self.head(torch.cat([b, self.trunk(xi)], -1))
        if out.shape[-1] != 1:
            return out
        phi = out[..., 0]
        if self.boundary == "hard":
            phi = phi * self.boundary_factor(xi)
        return phi

    def point_features(self, b: Tensor, xi: Tensor) -> Tensor:
        """The random features of one point: branch output b (D,) and xi (2,) -> the head's last hidden activations
        (H,) (times b(xi) under the hard boundary), so that the network's output is head[-1].weight @ features."""
        f = self.head[:-1](torch.cat([b, self.trunk(xi)], -1))
        if self.boundary == "hard" and self.head[-1].out_features == 1:
            f = f * self.boundary_factor(xi)
        return f
