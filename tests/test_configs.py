"""Every experiment config (papers and their paper-scale variants) composes and instantiates."""
from __future__ import annotations

import pytest

from launch import config as zconfig
from launch import train


@pytest.mark.parametrize("experiment", zconfig.options("experiment"))
def test_experiment_composes_and_instantiates(experiment):
    cfg = zconfig.compose([f"experiment={experiment}"])
    assert cfg.paper.title and cfg.paper.arxiv and cfg.paper.domain
    datamodule, model = train.instantiate(cfg)
    assert datamodule is not None and model is not None
    if "/" not in experiment:
        assert cfg.claims, f"{experiment} has no claims"
        for name, claim in cfg.claims.items():
            assert claim.metric and claim.runs and claim.expect and claim.baseline, name


def test_configs_ship_as_package_data():
    """`zoo` must work after a plain (non-editable) install: the YAML files are package data."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "**/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["configs"]
    assert (zconfig.config_root() / "train.yaml").exists()
