"""Run directories and run ids: `runs/<experiment>/<run_id>/`, fixed once when a run is created."""
from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from launch.errors import UserError

RUN_ID_ENV = "PAPERZOO_RUN_ID"


def new_run_id() -> str:
    """Time-ordered and unique: `20261128-193012-a1b2`. Created once, in the submitting process."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def global_rank() -> int:
    """This process's rank, read from the environment before any Trainer exists."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


@dataclass(frozen=True)
class Run:
    experiment: str
    run_id: str
    root: Path

    @property
    def dir(self) -> Path:
        return self.root / self.experiment / self.run_id

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def figures(self) -> Path:
        return self.dir / "figures"

    @property
    def slurm(self) -> Path:
        return self.dir / "slurm"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"


def run_of(cfg: DictConfig) -> Run:
    return Run(cfg.experiment_name, cfg.run_id, Path(cfg.runs_root).expanduser().absolute())


def assign_run_id(cfg: DictConfig) -> DictConfig:
    """Give the config its run id (kept if set; inherited by Lightning's DDP child processes) and an
    absolute runs root, so that every rank and every requeue resolves the same directory."""
    with open_dict(cfg):
        cfg.run_id = cfg.run_id or os.environ.get(RUN_ID_ENV) or new_run_id()
        cfg.runs_root = str(Path(cfg.runs_root).expanduser().absolute())
    os.environ[RUN_ID_ENV] = cfg.run_id
    return cfg


def saved_config(run: Run) -> DictConfig | None:
    if run.config_file.exists():
        try:
            return OmegaConf.load(run.config_file)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{run.config_file} is not a readable config: {err}") from None
    return None


def create(cfg: DictConfig) -> Run:
    """Write the resolved config and provenance (rank zero only); idempotent on requeue/resume."""
    run = run_of(cfg)
    if global_rank() == 0:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run.figures.mkdir(exist_ok=True)
        if not run.config_file.exists():
            _write_atomic(run.config_file, OmegaConf.to_yaml(cfg, resolve=True))
            _write_atomic(run.dir / "meta.json", json.dumps(provenance(), indent=2))
    return run


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance() -> dict:
    versions = {}
    for dist in ("paperzoo", "torch", "lightning", "torchmetrics", "torch-geometric", "hydra-core", "submitit", "wandb",
                 "numpy", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "git_commit": git_commit(),
        "host": platform.node(),
        "python": platform.python_version(),
        "versions": versions,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def find(run: str, runs_root: str = "runs") -> Path:
    """A run directory from a path or a bare run id (searched under runs_root/*/)."""
    path = Path(run).expanduser()
    if (path / "config.yaml").exists():
        return path.absolute()
    matches = sorted(Path(runs_root).glob(f"*/{run}"))
    matches = [m for m in matches if (m / "config.yaml").exists()]
    if not matches:
        raise UserError(f"no run '{run}' (looked for {path}/config.yaml and {runs_root}/*/{run}/config.yaml)")
    if len(matches) > 1:
        raise UserError(f"run id '{run}' is ambiguous: {', '.join(map(str, matches))}")
    return matches[0].absolute()
