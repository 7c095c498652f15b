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


def test_override_order_root_then_experiment_then_debug_then_command_line():
    """Root defaults (train.yaml) < experiment < debug < command line: an experiment's `threads`, `early_stopping`
    and `checkpoint.monitor` take effect, `debug=fast` shortens any experiment, the command line wins."""
    cfg = zconfig.compose(["experiment=itransformer"])
    assert cfg.threads == 1
    cfg = zconfig.compose(["experiment=lightgcn/gowalla"])
    assert cfg.early_stopping.monitor == "val/recall@20" and cfg.checkpoint.monitor == "val/recall@20"
    assert cfg.checkpoint.every_n_epochs == 1  # root values the experiment does not set survive
    cfg = zconfig.compose(["experiment=lightgcn", "debug=fast"])
    assert cfg.trainer.max_epochs == 1 and cfg.claims
    cfg = zconfig.compose(["experiment=lightgcn", "debug=fast", "trainer.max_epochs=2", "threads=2"])
    assert cfg.trainer.max_epochs == 2 and cfg.threads == 2


def test_configs_ship_as_package_data():
    """`zoo` must work after a plain (non-editable) install: the YAML files are package data."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "**/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["configs"]
    assert (zconfig.config_root() / "train.yaml").exists()


def test_plain_wheel_install_runs_zoo(tmp_path):
    """Build the wheel and run `zoo list` from it, away from the checkout: configs travel as package data."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("paperzoo-*.whl")
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    code = ("import launch, sys; from launch.cli import main; "
            "assert launch.__file__.startswith(sys.argv[1]), launch.__file__; sys.exit(main(['list']))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lightgcn" in proc.stdout and "ultragcn" in proc.stdout
