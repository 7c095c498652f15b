"""The released UM2N network (M2N_T, `model.architecture=m2n_t`) and the released training's Chamfer loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.meshes import separable_graph
from launch.errors import UserError
from lit_models.common import mesh as M
from lit_models.pde.um2n import UM2NModule, chamfer_distance
from lit_models.pde.um2n_m2n_t import DeformGATLayer, LocalFeatureExtractor, StackedGATDeformer
from tests.papers.contract import fast_run

SMALL = ["data.n_train=4", "data.train_sizes=[6]", "data.test_size=7", "data.n_test_fronts=1", "data.n_test_bumps=1",
         "data.batch_size=2", "model.architecture=m2n_t", "model.deformer_lin=14", "model.deformer_widths=[16,8,8,4]",
         "model.gat_heads=2", "model.embed_dim=8", "model.num_heads=2", "model.transformer_out=4",
         "model.chamfer_weight=100.0"]


def test_fast_contract():
    run = fast_run("um2n", *SMALL)
    run.assert_contract()
    assert run.metrics["test/boundary_violation"] < 1e-6
    for key in ("test/interp_ratio", "test/inverted", "test/node_rmse_cells"):
        assert np.isfinite(run.metrics[key]), key


def test_layer_widths_are_the_released_ones():
    """NetGATDeform: Linear(3 + 16 + 16 -> 254); DeformGAT inputs 256 / 512 / 256 / 128 (earlier coordinates + the
    previous features), outputs 508 / 250 / 120 / 20 per head, 6 heads."""
    deformer = StackedGATDeformer(35)
    assert (deformer.lin.in_features, deformer.lin.out_features) == (35, 254)
    assert [layer.lin.in_features for layer in deformer.layers] == [256, 512, 256, 128]
    assert [layer.lin.out_features for layer in deformer.layers] == [6 * 508, 6 * 250, 6 * 120, 6 * 20]


def test_a_node_moves_to_an_average_of_its_neighbours_without_itself():
    """No self loop: a node with one neighbour lands on it; a node whose neighbours coincide lands on that point; a
    node with several neighbours lands inside their convex hull."""
    torch.manual_seed(0)
    layer = DeformGATLayer(5, 4, heads=3)
    coord = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.2, 0.9], [0.5, 0.5]])
    edges = torch.tensor([[1, 0, 0, 1], [0, 1, 2, 2]])  # 1 -> 0, 0 -> 1, 0 -> 2, 1 -> 2 (source -> target)
    with torch.no_grad():
        new, feat = layer(coord, torch.randn(4, 5), edges)
    torch.testing.assert_close(new[0], coord[1])
    torch.testing.assert_close(new[1], coord[0])
    assert 0 < float(new[2, 0]) < 1 and float(new[2, 1]) == pytest.approx(0.0, abs=1e-7)  # on the segment 0-1
    torch.testing.assert_close(new[3], torch.zeros(2))  # no incoming edge: an empty average
    assert feat.shape == (4, 4)


def test_local_features_end_with_the_summed_edge_lengths():
    feat = torch.tensor([[0.0, 0.0, 0.1], [3.0, 4.0, 0.5], [0.0, 1.0, 0.9]])
    edges = torch.tensor([[1, 2, 0], [0, 0, 1]])
    out = LocalFeatureExtractor(out_dim=6)(feat, edges)
    torch.testing.assert_close(out[:, -1], torch.tensor([6.0, 5.0, 0.0]))
    assert out.shape == (3, 6) and torch.all(out[2] == 0)


def test_boundary_nodes_stay_on_their_sides_and_the_monitor_matters():
    torch.manual_seed(0)
    module = UM2NModule(architecture="m2n_t", deformer_lin=14, deformer_widths=(16, 8, 8, 4), gat_heads=2)
    g = separable_graph(9, np.random.default_rng(0))
    with torch.no_grad():
        out = module(g).double().numpy()
        g2 = g.clone()
        g2.x = g.x.clone()
        g2.x[:, 3] = torch.linspace(0.1, 1.0, len(g.x))
        out2 = module(g2).double().numpy()
    ref = g.pos.double().numpy()
    assert M.boundary_violation(out, ref) < 1e-6
    assert np.abs(out - out2).max() > 1e-6


def test_chamfer_distance_is_per_mesh_and_order_free():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    batch = torch.zeros(3, dtype=torch.long)
    assert float(chamfer_distance(a, a[[2, 0, 1]], batch)) == 0.0
    shifted = a + torch.tensor([0.1, 0.0])
    assert float(chamfer_distance(shifted, a, batch)) == pytest.approx(2 * 0.01)
    # two meshes: each mesh's nodes only match its own targets
    both, two = torch.cat([a, a + 10.0]), torch.cat([batch, batch + 1])
    assert float(chamfer_distance(both, torch.cat([a + 10.0, a]), two)) > 50.0


def test_bad_m2n_t_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="architecture"):
        UM2NModule(architecture="m2n")
    with pytest.raises(ValueError, match="decoder"):
        UM2NModule(architecture="m2n_t", decoder="coord")
    with pytest.raises(UserError, match="deformer_widths"):
        UM2NModule(architecture="m2n_t", deformer_widths=("a", 2))
    with pytest.raises(UserError, match="deformer_widths must be >= 1"):
        UM2NModule(architecture="m2n_t", deformer_widths=(8, 0))
    with pytest.raises(ValueError, match="loss weights"):
        UM2NModule(chamfer_weight=-1.0)
