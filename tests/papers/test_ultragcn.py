"""UltraGCN (arXiv 2110.15114): the paper contract's fast test and the card's small-scale claim.
Unit checks of beta, omega, the losses and the neighbour graph are in test_ultragcn_units.py."""
from __future__ import annotations

import pytest
import torch

from launch.check import run_claim
from tests.papers.contract import fast_run


def test_fast_contract():
    run = fast_run("ultragcn", "data=synthetic_graph", "data.num_negatives=8")
    run.assert_contract()
    user, item = run.model.final_embeddings()
    assert user.shape == (200, 64)
    assert run.model.ii_neighbours.shape == (item.shape[0], 10)  # K item-item neighbours per item


def test_paper_scale_configs_follow_official_configs():
    from launch import config as zconfig

    expected = {"gowalla": (1500, 300, 1e-4, 512), "yelp2018": (800, 300, 1e-3, 1024),
                "amazon_book": (500, 500, 1e-3, 1024), "ml_1m": (200, 200, 1e-3, 1024)}
    for dataset, (negatives, negative_weight, lr, batch) in expected.items():
        cfg = zconfig.compose([f"experiment=ultragcn/{dataset}"])
        assert cfg.data.num_negatives == negatives and cfg.model.negative_weight == negative_weight
        assert cfg.model.optimizer.lr == pytest.approx(lr) and cfg.data.batch_size == batch
        assert cfg.data.exclude_positive_negatives is False
        # official protocol: the best evaluation is reported (early stopping on the evaluated split)
        assert cfg.checkpoint.monitor == "val/recall@20" and cfg.checkpoint.test_on == "best"


@pytest.mark.slow
def test_claim_beats_beta_free_baseline_and_fails_with_baseline():
    """Card: UltraGCN Recall@20 >= 0.29 and >= 0.012 above the same code without beta weights and L_I
    (w1=w3=1, w2=w4=0, lambda=0). Swapping UltraGCN for that baseline must fail (it equals the baseline)."""
    torch.set_num_threads(1)
    result = run_claim("ultragcn", "beats_beta_free")
    assert result.passed, result.report()
    swapped = run_claim("ultragcn", "beats_beta_free", swap_baseline=True)
    assert not swapped.passed, swapped.report()
