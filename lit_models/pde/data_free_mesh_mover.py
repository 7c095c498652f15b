"""Data-free Mesh Mover (DMM) of "Better Neural PDE Solvers Through Data-Free Mesh Movers" (Hu, Wang, Ma;
ICLR 2024, openreview hj9ZuNimRl; official code Peiyannn/MM-PDE, `mesh/dmm.py`, `mesh/dmm_model.py`).

An operator u -> mesh map x(xi) on [0, 1]^2 trained only with the Monge-Ampere (MA) equidistribution equation, never
with optimal meshes (paper Sec. 3.1):
    x(xi) = xi + grad_xi phi(u, xi)                        (gradient of the convex potential |xi|^2/2 + phi)
    m(x(xi)) det(I + Hess_xi phi) = c,   c = int_[0,1]^2 m  (MA equation, Eq. 3)
    loss = w_in  mean_xi (m(x) det(I + H) / c - 1)^2       (interior residual at importance-sampled xi ~ m)
         + w_bd  mean_edges (d phi / d n)^2                (zero normal displacement: phi_x = 0 on x = 0, 1 ...)
         + w_cvx mean (min(0, 1 + phi_xx)^2 + min(0, 1 + phi_yy)^2)   (convexity relaxation against folding)
with weights 1 / 1000 / 1 (dmm.py). The Hessian comes from double autograd (tanh networks; ReLU has none); m is
evaluated at the *moved* point by bilinear interpolation of the monitor grid (`monitor_gradient="physical"`, the
default: the classical MA / equidistribution form, whose exact 1-D solutions are the card's evaluation targets).
`monitor_gradient="pulled_back"` is the official dmm_utils.py loss: the monitor of the pulled-back gradient, m = 1 +
|J^T grad u(x(xi))| / (monitor_scale alpha), so m depends on the map's Jacobian, with grad u interpolated at x(xi) by
the official softmax kernel (`gradient_interp="kernel"`) or bilinearly (needs data.with_gradient). One difference
kept on purpose: the official Burgers code's `diff_x` differences along the grid's y axis (its own `interpolate`
puts x on the last axis) and pairs it with phi_xx, i.e. it uses J^T (u_y, u_x); this module pairs the axes
consistently, J^T (u_x, u_y) (the card's u_xi = J^T grad u). They agree on axis-aligned fronts; on an x-front under
a map compressing x (phi_xx = -0.7) the official pairing gives a ~3x larger m. Collocation: grid
nodes drawn ~ m with replacement plus a half-cell jitter (`collocation="jitter"`), or the official 40 n uniform
candidates of which n are drawn ~ m without replacement (`"candidates"`; both in `lit_models.pde.dmm_sampling`).
The network (`lit_models.pde.dmm_networks`) is DeepONet-like (`DMM` in dmm_model.py): a tanh CNN branch (5 x 5
kernels, a residual link, full flatten, fully connected layers) on the (sub-sampled) solution grid, a tanh MLP trunk
on xi and a tanh MLP head on their concatenation giving phi, trunk and head ending in linear layers. `boundary="hard"`
multiplies the head by b(xi) = x^2 y^2 (x-1)^2 (y-1)^2 (the code's hard constraint; the boundary loss is then dropped
to avoid double counting). `mover="identity"` is the fixed-mesh baseline x
= xi; `mover="direct"` is the card's "outputs x directly" baseline: the same network with a 2-vector head gives the
displacement d(u, xi), x = xi + d, trained with the same losses on its Jacobian I + grad d (no potential, so no
symmetric Hessian and no Brenier convexity structure; the convexity term then acts on the Jacobian's diagonal). The
MM-PDE solver that consumes the moved mesh (paper Sec. 3.2) is `lit_models.pde.mm_pde`.

Random-feature method (`rf_*`; official `dmm.py` arguments `rf`, `rf_opt_alg='BFGS'`, `epochs_rf=5`, `max_iter=300`,
`batch_size_u_rf=20`, `batch_size_x_rf=16`, `convex_rel=0`, run by `dmm_utils.train_MA_res` after the Adam epochs):
the hidden layers are frozen and their last activations f(u, xi) (the input of the head's bias-free last linear
layer) become fixed random features, so phi = w . f and grad phi, Hess phi are linear in w with the features'
xi-derivatives as coefficients (computed once per epoch, here by forward-mode autodiff); each epoch draws a fresh
sample (rf_fields fields x rf_points points ~ m, rf_points / 4 boundary points per edge) and minimises the same loss
(w_in MA residual + w_bd boundary + w_cvx convexity, + rf_convex_rel |w|^4) over w alone with BFGS (strong-Wolfe
line search, up to rf_max_iter iterations), starting from the Adam weights. Here the epochs are the last `rf_epochs`
optimisation steps of the run (`lit_models.common.lbfgs.LBFGSPhase`), each one `torch.optim.LBFGS.step` over the
last layer's weight with a history as long as the iteration budget (L-BFGS with full memory is BFGS up to the scaling
of the initial inverse Hessian) and restarted every epoch, as the official `torchmin.minimize(method='bfgs')` call.

Cylinder case (official `dmm.py --experiment cy`, `DMM(mode='graph')`; data `datamodules.cylinder_flow`):
`branch="gnn"` replaces the CNN by the official graph branch (`BranchGNN`: kNN message passing over the nodes of
the fixed triangular mesh, a per-node decoder and an MLP over all V node scalars), u is then (B, V, 3) = [u, x, y]
per node and `grid` = V. Everything else is the grid procedure, as in the official code, which treats the unit
square as the domain and ignores the hole: the monitor lives on a uniform grid over the whole square (from the
official softmax-kernel interpolant of the node values, hole included), collocation points are drawn ~ m over the
whole square, and the boundary loss acts on the square's four sides only; nothing keeps the nodes on the cylinder
on the cylinder (the evaluation reports how far they move: `hole_disp`; measured: they collapse into the hole).
`w_hole > 0` (not in the official code; 0 by default) adds w_hole mean (d phi / d n)^2 at the hole's rim nodes
(batch "rim_pos", "rim_normal"), the soft boundary condition of the square's sides applied to the hole (graph
branch with soft boundary only). Test metrics on the moved data mesh (`_mesh_metrics`) replace the `eval_nodes`
square-mesh metrics.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from launch.errors import UserError, check_min
from lit_models.common import mesh as M
from lit_models.common.checks import check_scheduler, whole_list
from lit_models.common.ddp_eval import combine, eval_set_replicated, gather_lists
from lit_models.common.lbfgs import LBFGSPhase
from lit_models.common.pde import no_autocast
from lit_models.common.plotting import view_limits
from lit_models.common.steps import attached_datamodule
from lit_models.pde.dmm_networks import DMMNet
from lit_models.pde.dmm_sampling import (
    boundary_points,
    candidate_points,
    importance_points,
    pulled_back_monitor,
    sample_monitor,
)

PER_FIELD_KEYS = ("u", "monitor", "c", "grad", "monitor_norm")  # a batch's tensors with one row per field
DEFAULT_OPTIMIZER = functools.partial(torch.optim.Adam, lr=2e-4, weight_decay=1e-5)  # dmm.py
DEFAULT_SCHEDULER = functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[100, 150], gamma=0.2)


class DataFreeMeshMoverModule(LBFGSPhase, L.LightningModule):
    """Trains the DMM with the MA residual + boundary + convexity losses (Sec. 3.1); evaluates the moved meshes.

    Metrics (test/, val/ only the first): `ma_residual` (per field, median |m(x) det(J)/c - 1| over `n_eval_points`
    held-out points drawn with density ~ m, averaged over fields), `min_det` (min det J over a 100 x 100 grid, all
    fields), `boundary_disp` (largest normal displacement on the edges), `inverted` (tangled triangles of the moved
    `eval_nodes` mesh, summed over fields), and on fields with an exact MA target (axis-aligned fronts, separable
    monitor): `interp_ratio` (RMS P1 interpolation error of u on the moved / uniform mesh, 20,000 random points) and
    `node_rmse_cells` (node RMSE to the exact mesh / cell width). Batches with a data mesh ("tri": the cylinder
    case) get `inverted`, `min_det_fluid`, `hole_disp`, `equi_cv`, `equi_ratio` and `interp_ratio` of the moved
    data mesh instead (`_mesh_metrics`).

    Random-feature method (official `rf`, on with the paper's values: `rf_epochs=5`): the last `rf_epochs` steps of
    the run (trainer.max_steps, or max_epochs x the epoch length) are BFGS epochs over the head's last-layer weight
    only (see the module docstring); each takes its first `rf_fields` fields of the training batch. Logged:
    `train/rf_loss_start` (the loss on the epoch's sample before BFGS) and `train/loss` (the same loss, last
    evaluation of the solve). Nothing to refine for `mover="identity"` (the phase is skipped).

    Evaluation memory: the test and validation loaders give the whole test set as one batch, and the derivative graph
    of the Hessian on the 100 x 100 grid takes ~0.22 GB a field at the paper's network size (measured on CPU);
    `eval_chunk_fields` fields at a time (null: all at once) go through the map (`_eval_map`, `forward`,
    `_eval_residual`). Every metric is a per-field value computed as before, so chunks change nothing beyond float
    rounding (the default, 32, is above the CPU-scale test sets: their results are bit-for-bit those of one pass).
    """

    def __init__(self, branch_channels: list[int] = (8, 16, 8, 1), branch_fc: list[int] = (1024,), grid: int = 48,
                 trunk_layers: list[int] = (2, 32, 512), head_layers: list[int] = (1024, 512, 1),
                 boundary: str = "soft", mover: str = "dmm", trunk_init_scale: float | None = None,
                 n_points: int = 120, n_boundary: int = 30,
                 w_interior: float = 1.0, w_boundary: float = 1000.0, w_convex: float = 1.0, det_term: bool = True,
                 n_eval_points: int = 2000, eval_nodes: int = 20, n_interp_points: int = 20000,
                 rf_epochs: int = 5, rf_max_iter: int = 300, rf_fields: int = 20, rf_points: int = 16,
                 rf_convex_rel: float = 0.0, branch: str = "cnn", gnn_hidden: int = 4, gnn_layers: int = 3,
                 gnn_knn: int = 35, gnn_decoder: list[int] = (128,), gnn_readout: list[int] = (512, 256),
                 w_hole: float = 0.0, ma_reference: bool = False, monitor_gradient: str = "physical",
                 gradient_interp: str = "kernel", collocation: str = "jitter", candidates_per_point: int = 40,
                 eval_chunk_fields: int | None = 32,
                 optimizer: Callable[..., torch.optim.Optimizer] = DEFAULT_OPTIMIZER,
                 scheduler: Callable[..., Any] | None = DEFAULT_SCHEDULER) -> None:
        super().__init__()
        if rf_epochs < 0 or rf_max_iter < 1 or rf_fields < 1 or rf_points < 1 or rf_convex_rel < 0:
            raise ValueError(f"random-feature method: need rf_epochs >= 0, rf_max_iter >= 1, rf_fields >= 1, "
                             f"rf_points >= 1 and rf_convex_rel >= 0, got {rf_epochs}, {rf_max_iter}, {rf_fields}, "
                             f"{rf_points}, {rf_convex_rel}")
        if mover not in ("dmm", "identity", "direct"):
            raise ValueError(f"mover must be 'dmm', 'identity' or 'direct', got {mover!r}")
        if mover == "direct" and boundary != "soft":
            raise ValueError("mover='direct' (the displacement baseline) supports boundary='soft' only")
        if boundary not in ("soft", "hard"):
            raise ValueError(f"boundary must be 'soft' or 'hard', got {boundary!r}")
        if monitor_gradient not in ("physical", "pulled_back"):
            raise ValueError(f"monitor_gradient must be 'physical' (m(x(xi))) or 'pulled_back' (official "
                             f"m(J^T grad u)), got {monitor_gradient!r}")
        if collocation not in ("jitter", "candidates"):
            raise ValueError(f"collocation must be 'jitter' (grid nodes ~ m + jitter) or 'candidates' (official), got "
                             f"{collocation!r}")
        check_min("model", 1, candidates_per_point=candidates_per_point, eval_chunk_fields=eval_chunk_fields)
        if gradient_interp not in ("kernel", "bilinear"):
            raise ValueError(f"gradient_interp must be 'kernel' (official softmax kernel) or 'bilinear', got "
                             f"{gradient_interp!r}")
        if n_points < 1 or n_boundary < 1:
            raise ValueError("n_points and n_boundary must be >= 1")
        if trunk_init_scale is not None and trunk_init_scale <= 0:
            raise ValueError(f"trunk_init_scale must be > 0 or None, got {trunk_init_scale}")
        check_min("model", 1, n_eval_points=n_eval_points, n_interp_points=n_interp_points, gnn_hidden=gnn_hidden,
                  gnn_knn=gnn_knn)
        check_min("model", 2, eval_nodes=eval_nodes)
        check_min("model", 0, gnn_layers=gnn_layers, w_interior=w_interior, w_boundary=w_boundary,
                  w_convex=w_convex, w_hole=w_hole)
        layers = {key: whole_list(f"model.{key}", value, min_len=need) for key, value, need in (
            ("branch_channels", branch_channels, 1), ("branch_fc", branch_fc, 0), ("trunk_layers", trunk_layers, 2),
            ("head_layers", head_layers, 2), ("gnn_decoder", gnn_decoder, 0), ("gnn_readout", gnn_readout, 0))}
        check_scheduler(scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        if grid < 4:
            raise ValueError(f"grid (branch input side) must be >= 4, got {grid}")
        self.net = DMMNet(layers["branch_channels"], layers["trunk_layers"], layers["head_layers"], boundary,
                          trunk_init_scale, grid, layers["branch_fc"], out_dim=2 if mover == "direct" else 1,
                          branch=branch, gnn_hidden=gnn_hidden, gnn_layers=gnn_layers, gnn_knn=gnn_knn,
                          gnn_decoder=layers["gnn_decoder"], gnn_readout=layers["gnn_readout"])
        self._last: dict[str, Any] | None = None
        self._test_rows: list[tuple[str, float, float, str]] = []  # (metric, value, weight, reduction) per batch
        # the random-feature BFGS epochs: LBFGSPhase switches to `make_lbfgs` for the last rf_epochs steps
        self.lbfgs_steps = rf_epochs if mover != "identity" else 0
        self.lbfgs_options = {"lr": 1.0, "max_iter": rf_max_iter, "max_eval": 26 * rf_max_iter,
                              "history_size": rf_max_iter, "line_search_fn": "strong_wolfe",
                              # torchmin.minimize(tol=0): gtol 0; its default xtol / gtd_tol 1e-9
                              "tolerance_grad": 0.0, "tolerance_change": 1e-9}
        self._rf_cache: dict[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        """The random-feature epochs take `rf_fields` fields of a training batch: a smaller data.batch_size is a
        one-line error before training, not after all the Adam steps."""
        batch_size = getattr(attached_datamodule(self), "batch_size", None)
        if stage == "fit" and self.lbfgs_steps and isinstance(batch_size, int) and batch_size < self.hparams.rf_fields:
            raise UserError(f"model.rf_fields={self.hparams.rf_fields} but data.batch_size={batch_size}: the "
                            f"random-feature BFGS epochs take rf_fields fields of a training batch (lower "
                            f"model.rf_fields, raise data.batch_size or set model.rf_epochs=0)")

    # ------------------------------------------------------------------------------------------ the mesh map
    @property
    def net_dtype(self) -> torch.dtype:
        """The dtype of the network's weights: float32, or float64 under trainer.precision=64-true."""
        return next(self.net.parameters()).dtype

    def _cast(self, t: Tensor) -> Tensor:
        """A batch tensor in the network's dtype (inputs of the derivative code never follow autocast)."""
        return t.to(self.net_dtype)

    def mesh_map(self, u: Tensor, xi: Tensor, create_graph: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, P, 2) = xi + grad phi, the Hessian of phi (B, P, 2, 2) and grad phi (B, P, 2); in the
        network's dtype (float32, or float64 under 64-true), autocast off.
        For mover="direct": x = xi + d, the Jacobian of d (rows: components) and d."""
        if self.hparams.mover == "identity":
            z = torch.zeros(*xi.shape, 2, dtype=xi.dtype, device=xi.device)
            return xi, z, torch.zeros_like(xi)
        # Lightning evaluates under inference_mode: leave it (and clone its tensors) to differentiate
        with no_autocast(xi.device.type), torch.inference_mode(False), torch.enable_grad():
            xi = self._cast(xi.detach()).clone().requires_grad_(True)
            out = self.net(self._cast(u).clone(), xi)
            if self.hparams.mover == "direct":
                g = out
            else:
                (g,) = torch.autograd.grad(out.sum(), xi, create_graph=True)
            h0 = torch.autograd.grad(g[..., 0].sum(), xi, create_graph=create_graph, retain_graph=True)[0]
            h1 = torch.autograd.grad(g[..., 1].sum(), xi, create_graph=create_graph)[0]
        return xi + g, torch.stack([h0, h1], -2), g

    def collocation_points(self, monitor: Tensor, n: int) -> Tensor:
        """Training points ~ m: grid nodes drawn with replacement + jitter (`collocation="jitter"`), or the official
        candidates drawn without replacement (`"candidates"`, m interpolated as `gradient_interp`)."""
        hp = self.hparams
        if hp.collocation == "candidates":
            return candidate_points(monitor, n, hp.candidates_per_point, hp.gradient_interp)
        return importance_points(monitor, n)

    def forward(self, u: Tensor, xi: Tensor) -> Tensor:
        """Moved points x(xi) (B, P, 2), `eval_chunk_fields` fields at a time (`_eval_map`)."""
        return self._eval_map(u, xi)[0]

    @staticmethod
    def det(hess: Tensor) -> Tensor:
        return (1 + hess[..., 0, 0]) * (1 + hess[..., 1, 1]) - hess[..., 0, 1] * hess[..., 1, 0]

    def residual(self, batch: dict[str, Tensor], xi: Tensor, create_graph: bool = True,
                 with_det: bool = True) -> tuple[Tensor, Tensor]:
        """r = m(x(xi)) det(I + H) / c - 1 (B, P) and the Hessian (with_det=False: the card's ablation without the
        det term, r = m(x(xi)) / c - 1; training only). The MA residual of Eq. 3, autocast off, in the network's
        dtype."""
        x, hess, _ = self.mesh_map(batch["u"], xi, create_graph)
        return self._residual_at(batch, x, hess, with_det), hess

    def _residual_at(self, batch: dict[str, Tensor], x: Tensor, hess: Tensor, with_det: bool = True) -> Tensor:
        with torch.inference_mode(False), no_autocast(x.device.type):
            if self.hparams.monitor_gradient == "pulled_back":
                if "grad" not in batch:
                    raise UserError("model.monitor_gradient=pulled_back needs the fields' gradients: set "
                                    "data.with_gradient=true (fronts, Burgers and cylinder fields)")
                m = pulled_back_monitor(self._cast(batch["grad"]).clone(), self._cast(batch["monitor_norm"]).clone(),
                                        x, hess, self.hparams.gradient_interp)
            else:
                m = sample_monitor(self._cast(batch["monitor"]).clone(), x)
            det = self.det(hess) if with_det else 1.0
            return m * det / self._cast(batch["c"]).clone()[:, None] - 1.0

    # ------------------------------------------------------------------------------------------------ training
    def _loss(self, r: Tensor, hess: Tensor, gn: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """w_in mean r^2 + w_cvx convexity (+ w_bd mean gn^2, gn the boundary normal displacements, soft boundary)."""
        hp = self.hparams
        parts = {"loss_interior": torch.mean(r**2),
                 "loss_convex": torch.mean(F.relu(-(1 + hess[..., 0, 0])) ** 2 + F.relu(-(1 + hess[..., 1, 1])) ** 2)}
        loss = hp.w_interior * parts["loss_interior"] + hp.w_convex * parts["loss_convex"]
        if gn is not None:
            parts["loss_boundary"] = torch.mean(gn**2)
            loss = loss + hp.w_boundary * parts["loss_boundary"]
        return loss, parts

    @staticmethod
    def _normal(g: Tensor, normal: Tensor) -> Tensor:
        return torch.gather(g, -1, normal[None, :, None].expand(g.shape[0], -1, 1))[..., 0]

    def _log_train(self, loss: Tensor, parts: dict[str, Tensor], batch_size: int, synced: bool = False) -> None:
        """The step's losses, averaged over the DDP ranks in one collective (`synced`: they already are, the L-BFGS
        steps'). Not `sync_dist`: one all-reduce per value, and the L-BFGS closure logs at every evaluation, where
        Lightning refuses a key logged with `sync_dist` in one step and without it in another."""
        values = torch.stack([loss.detach(), *(v.detach() for v in parts.values())])
        if not synced and self._trainer is not None and self.trainer.world_size > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        self.log("train/loss", values[0], on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        for k, v in zip(parts, values[1:]):
            self.log(f"train/{k}", v, on_step=True, on_epoch=False, batch_size=batch_size)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        hp = self.hparams
        if hp.mover == "identity":  # nothing to learn: a zero loss keeps the step count
            return sum(p.sum() for p in self.parameters()) * 0.0
        if self._lbfgs_active:
            return self._rf_training_step(batch)
        with no_autocast(self.device.type):
            xi = self.collocation_points(self._cast(batch["monitor"]), hp.n_points)
            if hp.boundary == "hard":
                r, hess = self.residual(batch, xi, with_det=hp.det_term)
                loss, parts = self._loss(r, hess, None)
            else:  # one pass of the branch and one derivative graph for the interior and the boundary points
                pb, normal = boundary_points(xi.shape[0], hp.n_boundary, xi.device, xi.dtype)
                P, Q = xi.shape[1], xi.shape[1] + pb.shape[1]
                hole = hp.w_hole > 0 and "rim_pos" in batch
                pts = [xi, pb, self._cast(batch["rim_pos"])] if hole else [xi, pb]
                x, hess, g = self.mesh_map(batch["u"], torch.cat(pts, 1))
                r = self._residual_at(batch, x[:, :P], hess[:, :P], with_det=hp.det_term)
                loss, parts = self._loss(r, hess[:, :P], self._normal(g[:, P:Q], normal))
                if hole:  # not in the official code: zero normal displacement of the hole's rim nodes
                    parts["loss_hole"] = torch.mean((g[:, Q:] * self._cast(batch["rim_normal"])).sum(-1) ** 2)
                    loss = loss + hp.w_hole * parts["loss_hole"]
        self._log_train(loss, parts, xi.shape[0])
        return loss

    # ------------------------------------------------------------------------- random-feature (BFGS) epochs
    def random_features(self, u: Tensor, xi: Tensor, second: bool = True) -> tuple[Tensor, Tensor | None]:
        """The frozen network's random features at xi (B, P, 2), as coefficients of the last-layer weight rows:
        (map (B, P, 2, H), jac (B, P, 2, 2, H) or None) with map[..., i, :] . W_i = the map's i-th displacement and
        jac[..., i, j, :] . W_i = its derivative d/d xi_j, W_i the weight row of output i (the single row w for the
        potential: grad phi and Hess phi; the two rows for mover="direct": d and its Jacobian). Forward-mode
        derivatives of `DMMNet.point_features`, no graph to the network's parameters."""
        net = self.net
        B, P, _ = xi.shape
        with no_autocast(xi.device.type), torch.inference_mode(False), torch.no_grad():
            b = net.branch(self._cast(u).clone())
            bf = b[:, None].expand(-1, P, -1).reshape(B * P, -1)
            xf = self._cast(xi).clone().reshape(B * P, 2)
            f = net.point_features
            d1 = torch.func.vmap(torch.func.jacfwd(f, argnums=1))(bf, xf)  # (N, H, 2)
            H = d1.shape[1]
            if self.hparams.mover == "direct":
                d0 = torch.func.vmap(f)(bf, xf)  # (N, H)
                mp = d0[:, None].expand(-1, 2, -1)
                jac = d1.transpose(1, 2)[:, None].expand(-1, 2, -1, -1) if second else None
            else:
                mp = d1.transpose(1, 2)
                jac = None
                if second:
                    d2 = torch.func.vmap(torch.func.jacfwd(torch.func.jacfwd(f, argnums=1), argnums=1))(bf, xf)
                    jac = d2.permute(0, 2, 3, 1)  # (N, 2, 2, H)
        mp = mp.reshape(B, P, 2, H)
        return mp, (jac.reshape(B, P, 2, 2, H) if jac is not None else None)

    def _rf_weight_rows(self) -> Tensor:
        w = self.net.head[-1].weight  # (out_dim, H): the only parameter of the random-feature method
        return w.expand(2, -1) if w.shape[0] == 1 else w

    def rf_sample(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """One random-feature epoch's sample (official: batch_size_u_rf fields x batch_size_x_rf points ~ m,
        batch_size_x_rf / 4 points per edge) with the frozen features at its points."""
        hp = self.hparams
        B = batch["u"].shape[0]
        if B < hp.rf_fields:
            raise ValueError(f"the random-feature BFGS epochs take rf_fields={hp.rf_fields} fields from the training "
                             f"batch, which has {B}: lower model.rf_fields or raise data.batch_size")
        sub = {k: batch[k][: hp.rf_fields] for k in PER_FIELD_KEYS if k in batch}
        xi = self.collocation_points(self._cast(sub["monitor"]), hp.rf_points)
        mp, jac = self.random_features(sub["u"], xi)
        cache = {"batch": sub, "xi": self._cast(xi), "map": mp, "jac": jac}
        if hp.boundary == "soft":
            pb, normal = boundary_points(hp.rf_fields, max(1, hp.rf_points // 4), xi.device, self.net_dtype)
            cache |= {"xi_boundary": pb, "normal": normal,
                      "map_boundary": self.random_features(sub["u"], pb, second=False)[0]}
        return cache

    def rf_objective(self, cache: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The random-feature loss on a sample: the training loss with the map linear in the last-layer weight,
        + rf_convex_rel |w|^4 (official convex_rel, 0 by default)."""
        hp = self.hparams
        wr = self._rf_weight_rows()
        with no_autocast(wr.device.type):
            g = torch.einsum("bpik,ik->bpi", cache["map"], wr)
            hess = torch.einsum("bpijk,ik->bpij", cache["jac"], wr)
            r = self._residual_at(cache["batch"], cache["xi"] + g, hess, with_det=hp.det_term)
            gn = None
            if "map_boundary" in cache:
                gn = self._normal(torch.einsum("bpik,ik->bpi", cache["map_boundary"], wr), cache["normal"])
            loss, parts = self._loss(r, hess, gn)
            if hp.rf_convex_rel:
                loss = loss + hp.rf_convex_rel * self.net.head[-1].weight.pow(2).sum() ** 2
        return loss, parts

    def network_objective(self, cache: dict[str, Any]) -> Tensor:
        """The training loss of the full network at a random-feature sample's points (equals `rf_objective` up to
        rounding and the |w|^4 term; a check of the features' derivatives)."""
        r, hess = self.residual(cache["batch"], cache["xi"], with_det=self.hparams.det_term)
        gn = None
        if "xi_boundary" in cache:
            gn = self._normal(self.mesh_map(cache["batch"]["u"], cache["xi_boundary"])[2], cache["normal"])
        return self._loss(r, hess, gn)[0]

    def _rf_training_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One BFGS epoch = one step: the L-BFGS closure calls this for every evaluation; the sample and its
        features are drawn on the first call (`on_train_batch_start` clears them)."""
        if self._rf_cache is None:
            self._rf_cache = self.rf_sample(batch)
        cache = self._rf_cache
        loss, parts = self.rf_objective(cache)
        n = cache["xi"].shape[0]
        # the logged values: the ranks' means, from the one gather the line search needs anyway (this runs at every
        # closure evaluation of the L-BFGS step: no further collective here)
        logged = torch.stack([loss.detach(), *(v.detach() for v in parts.values())])
        log_start = "start_loss" not in cache
        if log_start:  # this rank's sample's loss before the solve
            cache["start_loss"] = loss.detach()
        if self.trainer.world_size > 1:
            logged = self.all_gather(logged).mean(0)
            # every rank's line search sees the same (global mean) value; DDP averages the local gradients, and
            # needs a gradient for every parameter
            loss = loss + (logged[0] - loss.detach())
            loss = loss + 0.0 * sum(p.sum() for p in self.parameters())
        if log_start:
            self.log("train/rf_loss_start", logged[0], on_step=True, on_epoch=False, batch_size=n)
        self._log_train(logged[0], dict(zip(parts, logged[1:])), n, synced=True)
        return loss

    def make_lbfgs(self) -> torch.optim.LBFGS:
        return torch.optim.LBFGS([self.net.head[-1].weight], **self.lbfgs_options)

    def _lbfgs_due(self, global_step: int) -> bool:
        """The random-feature epochs are the last rf_epochs steps of the run (max_steps or max_epochs x epoch)."""
        if not self.lbfgs_steps:
            return False
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise UserError("the random-feature BFGS epochs need a finite run length (trainer.max_steps or "
                             "max_epochs with a sized train loader): they are its last rf_epochs steps")
        return global_step >= max(0, int(total) - self.lbfgs_steps)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self._lbfgs_active:
            # each epoch a fresh sample and a fresh BFGS (official: one torchmin.minimize call per epoch)
            self._rf_cache = None
            for opt in self.trainer.optimizers:
                opt.state.clear()

    # --------------------------------------------------------------------------------------------- evaluation
    @staticmethod
    def _sample_generators(batch: dict[str, Tensor], seed: int) -> list[torch.Generator]:
        """One generator per test field, seeded by (seed, the field's index in its dataset): a field's evaluation
        points do not depend on the batch it comes in (a batch of its own, or a DDP rank's share of the set)."""
        index = batch["index"].tolist() if "index" in batch else range(batch["u"].shape[0])
        return [torch.Generator().manual_seed(seed + 100_003 * int(i)) for i in index]

    def _eval_chunks(self, n_fields: int) -> list[slice]:
        """The fields of an evaluation batch in chunks of `eval_chunk_fields` (null: one chunk)."""
        size = self.hparams.eval_chunk_fields or n_fields
        return [slice(i, i + size) for i in range(0, n_fields, size)]

    def _eval_map(self, u: Tensor, xi: Tensor) -> tuple[Tensor, ...]:
        """`mesh_map(u, xi, create_graph=False)`, detached, one chunk of fields at a time (`eval_chunk_fields`): only
        one chunk's derivative graph is alive at once."""
        parts = [[t.detach() for t in self.mesh_map(u[s], xi[s], create_graph=False)]
                 for s in self._eval_chunks(len(u))]
        return tuple(torch.cat(p) for p in zip(*parts))

    def _eval_residual(self, batch: dict[str, Tensor]) -> Tensor:
        """Per field: the median |MA residual| at its `n_eval_points` held-out points ~ m (chunks of fields)."""
        monitor = self._cast(batch["monitor"]).cpu()
        xi = torch.cat([importance_points(monitor[b:b + 1], self.hparams.n_eval_points, g)
                        for b, g in enumerate(self._sample_generators(batch, 12345))]).to(self.device)
        B, out = len(xi), []
        for s in self._eval_chunks(B):
            sub = {k: batch[k][s] for k in PER_FIELD_KEYS if k in batch}
            out.append(self.residual(sub, xi[s], create_graph=False)[0].detach().abs().median(dim=1).values)
        return torch.cat(out)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        self.log("val/ma_residual", self._eval_residual(batch).mean(), batch_size=batch["u"].shape[0],
                 sync_dist=True, prog_bar=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> None:
        hp = self.hparams
        B = batch["u"].shape[0]
        res = self._eval_residual(batch)
        s = torch.linspace(0, 1, 100, device=self.device, dtype=self.net_dtype)
        grid = torch.stack(torch.meshgrid(s, s, indexing="xy"), -1).reshape(1, -1, 2).expand(B, -1, -1)
        dets = self.det(self._eval_map(batch["u"], grid)[1])
        min_det = dets.min()
        edges = [boundary_points(1, 100, self.device, self.net_dtype, g) for g in self._sample_generators(batch, 1)]
        pb, normal = torch.cat([p for p, _ in edges]), edges[0][1]
        gb = self._eval_map(batch["u"], pb)[2]
        bdisp = torch.gather(gb, -1, normal[None, :, None].expand(B, -1, 1)).abs().max()
        if "tri" in batch:  # solutions on a mesh with a hole (the cylinder case)
            mesh_metrics, counts = self._mesh_metrics(batch, grid[0], dets)
            self._last["residual"] = res.cpu().numpy()
            metrics = {"ma_residual": float(res.mean()), "min_det": float(min_det), "boundary_disp": float(bdisp),
                       **mesh_metrics}
            self._log_test(metrics, B, counts)
            return
        ref, tri = M.unit_square_mesh(hp.eval_nodes)
        ref_t = torch.tensor(ref, dtype=self.net_dtype, device=self.device)[None].expand(B, -1, -1)
        moved = self.forward(batch["u"], ref_t).double().cpu().numpy()
        inverted = sum(M.count_inverted(moved[b], tri) for b in range(B))
        metrics = {"ma_residual": float(res.mean()), "min_det": float(min_det), "boundary_disp": float(bdisp),
                   "inverted": float(inverted)}
        ratios, rmses = [], []
        if "target" in batch:
            pts = M.random_points(hp.n_interp_points, 0)
            h = M.cell_size(hp.eval_nodes)
            for b in range(B):
                tgt = batch["target"][b].cpu().numpy()
                if not np.all(np.isfinite(tgt)):
                    continue
                k, c, ang, amp = batch["params"][b].cpu().numpy()
                f = functools.partial(M.front_field, k=k, c=c, angle=ang, amp=amp)
                ratios.append(M.interpolation_error(moved[b], tri, f, pts) / M.interpolation_error(ref, tri, f, pts))
                rmses.append(float(np.sqrt(np.mean(np.sum((moved[b] - tgt) ** 2, 1)))) / h)
        if ratios:
            metrics |= {"interp_ratio": float(np.mean(ratios)), "node_rmse_cells": float(np.mean(rmses))}
        self._log_test(metrics, B, {"interp_ratio": len(ratios), "node_rmse_cells": len(rmses)})
        self._last = {"moved": moved, "tri": tri, "monitor": batch["monitor"].cpu().numpy(),
                      "target": batch["target"].cpu().numpy() if "target" in batch else None,
                      "residual": res.cpu().numpy()}
        if "aligned" in batch:  # front fields: figures() shows oblique fronts (no exact MA mesh) beside aligned ones
            self._last |= {"aligned": batch["aligned"].cpu().numpy(), "params": batch["params"].cpu().numpy()}

    # how a test metric combines over batches and DDP ranks: counts add up, a minimum stays the minimum (the mean of
    # per-rank minima would pass min det J > 0 where one rank's mesh folds), a largest displacement the largest
    TEST_REDUCE = {"inverted": "sum", "ma_inverted": "sum", "min_det": "min", "min_det_fluid": "min",
                   "boundary_disp": "max", "hole_disp": "max", "ma_residual_fem": "max"}

    def _log_test(self, metrics: dict[str, float], batch_size: int, counts: dict[str, int] | None = None) -> None:
        """Keep the batch's test metrics for the epoch's end (`on_test_epoch_end`); a mean over the fields that have
        a reference (`counts`: how many) is weighted by that number, so a batch or DDP rank with more such fields
        counts for more."""
        for k, v in metrics.items():
            self._test_rows.append((k, v, (counts or {}).get(k, batch_size), self.TEST_REDUCE.get(k, "mean")))

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        """The test metrics of the whole set, from every rank's batches (`common.ddp_eval`): the same keys and values
        on every rank, whatever share of the fields (and of those with a reference) each rank held."""
        rows = gather_lists({"rows": self._test_rows}, eval_set_replicated(self)).get("rows", [])
        for k, v in combine(rows).items():
            self.log(f"test/{k}", v, sync_dist=True)

    def _mesh_metrics(self, batch: dict[str, Tensor], grid: Tensor, dets: Tensor
                      ) -> tuple[dict[str, float], dict[str, int]]:
        """Metrics of the moved data mesh (batch "u" (B, V, 3) = [u, x, y] at the nodes, "tri" (B, T, 3) its fluid
        triangles, "flow" (B, 7) the exact flow or NaN; `datamodules.cylinder_flow`): `inverted` (tangled moved
        triangles, summed over fields), `min_det_fluid` (min det J over the 100 x 100 grid points inside the fluid
        mesh), `hole_disp` (largest distance of a moved hole-rim node from the original rim: the official code puts
        no constraint at the hole), `equi_cv` (coefficient of variation over the triangles of m(centroid) x area,
        the official evaluate_tri's equidistribution measure made scale-free, mean over fields) and `equi_ratio`
        (moved / original mesh), and, where the exact flow is known, `interp_ratio` (RMS P1 interpolation error of
        the exact field on the moved / original mesh at `n_interp_points` random fluid points; for solver data with
        a reference, batch "ref_pos" / "ref_tri" / "ref_val", the reference P1 field replaces the exact one). With
        `ma_reference`: the converged MA meshes of the same monitors (`_ma_reference`) give `ma_interp_ratio`,
        `ma_equi_ratio`, `ma_inverted`, `ma_residual_fem` (largest equidistribution residual of the FEM solves) and
        `node_rmse_to_ma_edges` (RMS distance of the DMM's nodes from the MA mesh's, in mean edge lengths)."""
        import matplotlib.tri as mtri

        from datamodules.cylinder_flow import hole_boundary_edges, potential_flow

        hp = self.hparams
        B = batch["u"].shape[0]
        nodes = batch["u"][0, :, 1:3].double().cpu().numpy()
        tri = batch["tri"][0].cpu().numpy()
        moved_t = self.forward(batch["u"], self._cast(batch["u"][..., 1:3]))
        moved = moved_t.double().cpu().numpy()
        finder = mtri.Triangulation(nodes[:, 0], nodes[:, 1], tri).get_trifinder()
        g = grid.double().cpu().numpy()
        fluid = torch.as_tensor(finder(g[:, 0], g[:, 1]) >= 0, device=dets.device)
        rim = hole_boundary_edges(nodes, tri)
        a, b = nodes[rim[:, 0]], nodes[rim[:, 1]]
        hole = 0.0
        for q in (moved[i][np.unique(rim)] for i in range(B)):
            if not len(rim):
                break
            ab = b - a
            t = np.clip(np.einsum("qek,ek->qe", q[:, None] - a[None], ab) / np.sum(ab**2, 1)[None], 0.0, 1.0)
            d = np.linalg.norm(q[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1).min(1)
            hole = max(hole, float(d.max()))

        def equi_cv(pos: Tensor) -> Tensor:
            cen = pos[:, tri].mean(2)
            area = M.signed_areas(pos, tri).abs()
            mc = sample_monitor(self._cast(batch["monitor"]), cen.to(self.net_dtype)) * area
            return mc.std(1) / mc.mean(1)

        cv = equi_cv(moved_t.double())
        cv0 = equi_cv(batch["u"][..., 1:3].double().to(self.device))
        out = {"inverted": float(sum(M.count_inverted(moved[i], tri) for i in range(B))),
               "min_det_fluid": float(dets[:, fluid].min()), "hole_disp": hole,
               "equi_cv": float(cv.mean()), "equi_ratio": float((cv / cv0).mean())}
        flows = batch["flow"].double().cpu().numpy()
        ratios, ma = [], self._ma_reference(batch, nodes, tri, rim) if hp.ma_reference else None
        pts = M.random_points(hp.n_interp_points, 0)
        fluid_pts = pts[finder(pts[:, 0], pts[:, 1]) >= 0] if "ref_val" in batch else None  # one mesh for all fields
        for i in range(B):
            if fluid_pts is not None:  # a solver-made field: its fine P1 reference over the whole square
                q = fluid_pts
                f = functools.partial(M.interpolate_p1, batch["ref_pos"][i].double().cpu().numpy(),
                                      batch["ref_tri"][i].cpu().numpy(), batch["ref_val"][i].double().cpu().numpy())
            elif not np.all(np.isfinite(flows[i])):
                continue
            else:
                x0, y0, R = flows[i, 3:6]
                q = pts[np.hypot(pts[:, 0] - x0, pts[:, 1] - y0) > R]
                f = functools.partial(lambda p, fl, col: potential_flow(p, fl)[..., col], fl=flows[i, :6],
                                      col=int(flows[i, 6]))
            err_fixed = M.interpolation_error(nodes, tri, f, q)
            ratios.append(M.interpolation_error(moved[i], tri, f, q) / err_fixed)
            if ma is not None:
                ma["ratio"].append(M.interpolation_error(ma["pos"][i], tri, f, q) / err_fixed)
        if ratios:
            out["interp_ratio"] = float(np.mean(ratios))
        if ma is not None:
            edges = M.mesh_edges(tri)
            h = float(np.linalg.norm(nodes[edges[:, 0]] - nodes[edges[:, 1]], axis=1).mean())
            ma_cv = equi_cv(torch.as_tensor(np.stack(ma["pos"]), device=self.device))
            out |= {"ma_inverted": float(sum(M.count_inverted(p, tri) for p in ma["pos"])),
                    "ma_equi_ratio": float((ma_cv / cv0).mean()),
                    "ma_residual_fem": float(max(ma["residual"])),
                    "node_rmse_to_ma_edges": float(np.mean([np.sqrt(np.mean(np.sum((moved[i] - ma["pos"][i]) ** 2, 1)))
                                                            for i in range(B)])) / h}
            if ma["ratio"]:
                out["ma_interp_ratio"] = float(np.mean(ma["ratio"]))
        self._last = {"moved": moved, "tri": tri, "monitor": batch["monitor"].cpu().numpy(),
                      "target": None if ma is None else np.stack(ma["pos"]),  # figures() draws the MA meshes dashed
                      "rim": np.stack([a, b], 1)}  # the hole's edges before moving: figures() draws the cylinder
        return out, {"interp_ratio": len(ratios), "ma_interp_ratio": len(ma["ratio"]) if ma is not None else 0}

    def _ma_reference(self, batch: dict[str, Tensor], nodes: np.ndarray, tri: np.ndarray, rim: np.ndarray
                      ) -> dict[str, list]:
        """Converged Monge-Ampere meshes of each field's monitor on the data mesh (`monge_ampere_fem.FEMMongeAmpere`:
        the classical mesher the DMM replaces; square sides slide, the rim nodes slide along the rim's circle, which
        the official DMM leaves free), warm-started field to field: {"pos": [(V, 2)], "residual": [max |m det /
        theta - 1|], "ratio": []} (ratios are filled by the caller)."""
        from lit_models.common.monge_ampere_fem import FEMMongeAmpere

        ring = np.zeros(len(nodes), bool)
        ring[np.unique(rim)] = True
        circle = None
        if ring.any():
            centre = nodes[ring].mean(0)
            circle = (ring, tuple(centre), float(np.linalg.norm(nodes[ring] - centre, axis=1).mean()))
        solver = FEMMongeAmpere.unit_square(nodes, tri, circle=circle)
        monitors = self._cast(batch["monitor"]).double().cpu()
        out: dict[str, list] = {"pos": [], "residual": [], "ratio": []}
        phi = None
        for i in range(len(monitors)):
            def monitor(p: np.ndarray, i: int = i) -> np.ndarray:
                return sample_monitor(monitors[i:i + 1], torch.from_numpy(p)[None]).numpy()[0]

            result, phi = solver.solve(monitor, phi)
            out["pos"].append(result.pos)
            out["residual"].append(result.residual)
        return out

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return self.lbfgs_or(opt)
        return self.lbfgs_or({"optimizer": opt,
                              "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"}})

    @staticmethod
    def _figure_fields(d: dict[str, Any], n: int = 4) -> list[int]:
        """The fields figures() shows: on front fields up to two axis-aligned ones (which have an exact MA mesh; the
        fronts nearest to either side), then oblique ones (which have none), those whose front crosses the square first,
        the most oblique first; otherwise the first n."""
        everything = list(range(len(d["moved"])))
        if d.get("params") is None:
            return everything[:n]
        _, c, angle, _ = d["params"].T
        proj = np.stack([np.cos(angle), np.sin(angle)], 1) @ np.array([[0, 1, 0, 1], [0, 0, 1, 1]])  # n . corners
        crossing = (proj.min(1) < c) & (c < proj.max(1))
        aligned = np.flatnonzero(d["aligned"]).tolist()
        oblique = sorted(np.flatnonzero(~d["aligned"] & np.isfinite(angle)).tolist(),
                         key=lambda i: (not crossing[i], -abs(np.sin(2 * angle[i]))))
        rest = [i for i in everything if i not in aligned and i not in oblique]
        if len(aligned) > 2:  # the two most distant front positions (the first two were often near-duplicates)
            by_c = sorted(aligned, key=lambda i: c[i])
            aligned = [by_c[0], by_c[-1], *by_c[1:-1]]
        return [*aligned[:2], *oblique[:2], *aligned[2:], *oblique[2:], *rest][:n]

    def figures(self) -> dict[str, Any]:
        """{"moved_meshes": the moved eval meshes of test fields over their monitor, white, with inverted triangles
        filled red, the unit square outlined and the view widened to nodes moved outside it (on a grey ground); on
        front fields two axis-aligned fronts and two oblique ones (`_figure_fields`), each titled with its kind, its
        MA residual and its counts of inverted triangles and of nodes outside the square. Where a shown field has an
        exact MA mesh (on cylinder meshes with `ma_reference`, the converged FEM MA mesh), a second row draws it the
        same way (overlaid, the two meshes could not be told apart: figures audit, stop 42)}."""
        if self._last is None:
            return {}
        import matplotlib.pyplot as plt

        d = self._last
        fields = self._figure_fields(d)
        res, aligned, params = d.get("residual"), d.get("aligned"), d.get("params")
        targets = [d["target"][b] if d["target"] is not None and np.all(np.isfinite(d["target"][b])) else None
                   for b in fields]
        shown = np.concatenate([d["moved"][b] for b in fields] + [t for t in targets if t is not None])
        lo, hi = view_limits(shown, (0.0, 0.0), (1.0, 1.0), pad=0.03)  # the square and every node moved out of it
        rows = 2 if any(t is not None for t in targets) else 1
        fig, axes = plt.subplots(rows, len(fields), figsize=(3.2 * len(fields), 3.5 * rows), squeeze=False)
        ma_name = ("exact" if params is not None else "FEM") + " MA mesh"
        for col, (b, target) in enumerate(zip(fields, targets)):
            kind = f"field {b}"
            if aligned is not None and aligned[b]:
                kind = f"field {b}: axis-aligned front"
            elif params is not None and np.isfinite(params[b, 2]):
                kind = f"field {b}: oblique front ({np.degrees(params[b, 2]):.0f} deg), no exact MA mesh"
            notes = [self.hparams.mover] + ([f"MA residual {res[b]:.3f}"] if res is not None else [])
            self._draw_mesh(axes[0, col], d, b, d["moved"][b], kind + "\n" + ", ".join(notes), lo, hi)
            if rows == 2 and target is not None:
                self._draw_mesh(axes[1, col], d, b, target, f"{ma_name} of field {b}", lo, hi)
            elif rows == 2:
                axes[1, col].set_axis_off()
                axes[1, col].set_title(f"field {b}: no {ma_name}", fontsize=7)
        if res is not None:
            fig.suptitle(f"test set, {self.hparams.mover} mover: moved meshes over the monitor (inverted triangles "
                         f"red)\nMA residual {res.mean():.3f} (mean of {len(res)} fields)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.9 if rows == 1 else 0.94))
        return {"moved_meshes": fig}

    @staticmethod
    def _draw_mesh(ax, d: dict[str, Any], b: int, pos: np.ndarray, title: str, lo: np.ndarray,
                   hi: np.ndarray) -> None:
        """One mesh of figures(): field b's monitor on [0, 1]^2, the mesh `pos` in white, its inverted (or
        degenerate) triangles filled red, the square outlined in black, the cylinder's rim (when there is one) in
        black; the title gets the counts of inverted triangles and of nodes outside the square."""
        from matplotlib.collections import LineCollection, PolyCollection
        from matplotlib.patches import Rectangle

        tri = d["tri"]
        ax.set_facecolor("0.6")  # white mesh lines stay visible outside the monitor image
        monitor = d["monitor"][b]
        if d.get("rim") is not None and len(d["rim"]) > 0:  # no monitor inside the cylinder (its rim: a circle)
            points = d["rim"].reshape(-1, 2)
            centre = points.mean(0)
            radius = float(np.linalg.norm(points - centre, axis=1).mean())
            cy, cx = ((np.arange(n) + 0.5) / n for n in monitor.shape)
            inside = (cx[None, :] - centre[0]) ** 2 + (cy[:, None] - centre[1]) ** 2 < radius**2
            monitor = np.ma.masked_where(inside, monitor)
        ax.imshow(monitor, origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
        ax.triplot(pos[:, 0], pos[:, 1], tri, color="w", lw=0.5)
        inverted = M.signed_areas(pos, tri) <= 0
        if inverted.any():
            ax.add_collection(PolyCollection(pos[tri[inverted]], facecolors="r", edgecolors="r", lw=0.6, zorder=3))
        ax.add_patch(Rectangle((0, 0), 1, 1, fill=False, ec="k", lw=1.0, zorder=4))
        if d.get("rim") is not None and len(d["rim"]) > 0:  # the cylinder: nodes moved into it show
            ax.add_collection(LineCollection(d["rim"], colors="k", linewidths=1.2, zorder=4))
        outside = int(np.any((pos < -1e-9) | (pos > 1 + 1e-9), axis=1).sum())
        ax.set_title(f"{title}\n{int(inverted.sum())} inverted, {outside} nodes outside the square", fontsize=7)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
