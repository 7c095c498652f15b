"""Run directories and run ids: `runs/<experiment>/<run_id>/`, fixed once when a run is created."""
from __future__ import annotations

import errno
import glob
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from launch.config import GROUPS
from launch.errors import UserError, one_line

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

    @classmethod
    def at(cls, run_dir: Path) -> Run:
        """The run whose directory is `run_dir` (<root>/<experiment>/<run_id>)."""
        return cls(run_dir.parent.name, run_dir.name, run_dir.parent.parent)

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


def dirs_with_id(runs_root: str | Path, run_id: str) -> list[Path]:
    """The run directories `<runs_root>/<experiment>/<run_id>/` (with a config.yaml) of every experiment, sorted; the
    id is taken literally, not as a pattern ('a[2]' is not a2)."""
    return sorted(path.parent for path in Path(runs_root).glob(f"*/{glob.escape(run_id)}/config.yaml"))


def same_id_elsewhere(run: Run) -> list[Path]:
    """Run directories of other experiments under the same runs root that have this run's id."""
    return [path for path in dirs_with_id(run.root, run.run_id) if path.parent.name != run.experiment]


def experiment_option(experiment_name: str) -> str:
    """The `experiment=` value of a runs/<experiment_name> folder (a variant's slug-variant is slug/variant)."""
    return experiment_name.replace("-", "/", 1)


RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


def check_run_id(run_id) -> None:
    """A run id names one directory under runs/<experiment>/: letters, digits and . _ = + - (not leading), so that
    `run_id=../x` or `run_id=a/b` cannot put a run outside the runs root."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise UserError(f"run_id must be one directory name (letters, digits, '.', '_', '=', '+', '-', not starting "
                        f"with a dot or a dash), got {run_id!r}")


def assign_run_id(cfg: DictConfig) -> DictConfig:
    """Give the config its run id (kept if set; inherited by Lightning's DDP child processes) and an
    absolute runs root, so that every rank and every requeue resolves the same directory."""
    with open_dict(cfg):
        cfg.run_id = str(cfg.run_id or os.environ.get(RUN_ID_ENV) or new_run_id())
        check_run_id(cfg.run_id)
        cfg.runs_root = str(Path(cfg.runs_root).expanduser().absolute())
    os.environ[RUN_ID_ENV] = cfg.run_id
    return cfg


def saved_config(run: Run) -> DictConfig | None:
    if run.config_file.exists():
        try:
            saved = OmegaConf.load(run.config_file)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{run.config_file} is not a readable config: {one_line(err, 200)}") from None
        _check_run_config(saved, run.config_file)
        return saved
    return None


RUN_CONFIG_SECTIONS = ("model", "data", "trainer", "checkpoint")  # mappings every saved run config has


def _check_run_config(saved, path) -> None:
    """A saved config that parses but is not a run's (a list, a scalar, sections missing or not mappings) is a
    one-line error, not a KeyError deep in the code that reads it."""
    if not OmegaConf.is_dict(saved):
        raise UserError(f"{path} is not a run config (its top level is not a mapping)")
    bad = [key for key in RUN_CONFIG_SECTIONS if not OmegaConf.is_dict(saved.get(key))]
    bad += [key for key in ("experiment_name", "run_id") if not isinstance(saved.get(key), str)]
    if bad:
        raise UserError(f"{path} is not a run config: {', '.join(bad)} missing or of the wrong kind (repair it, or "
                        "move the run directory away)")


_ABSENT = object()  # a key the saved config does not have

# What a resumed run may change: how and how long it trains, where and how it logs, not what it trains.
RESUMABLE_KEYS = ("trainer", "launcher", "logger", "progress_bar", "threads", "matmul_precision", "checkpoint",
                  "early_stopping", "stage", "run_id", "runs_root")
# ... except these trainer settings, which change the optimisation itself
FIXED_TRAINER_KEYS = ("trainer.gradient_clip_val", "trainer.gradient_clip_algorithm",
                      "trainer.accumulate_grad_batches", "trainer.deterministic")


def override_key(override: str) -> str:
    """`+trainer.max_steps=9` -> `trainer.max_steps`; `trainer=gpu` -> `trainer` (a config group)."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def leaves(node, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf of a config node, under `prefix` (`leaves(cfg)`: all keys of a config)."""
    if OmegaConf.is_dict(node):
        return [leaf for k in node for leaf in leaves(node[k], f"{prefix}.{k}" if prefix else str(k))]
    return [prefix]


def apply_resume_overrides(saved: DictConfig, cfg: DictConfig, overrides: list[str],
                           group_keys: dict[str, list[str]] | None = None) -> list[str]:
    """Resuming a run keeps its saved config; the command line's overrides of how it trains (`RESUMABLE_KEYS`, e.g.
    `trainer.max_steps=...` to train on, `trainer=gpu`, `launcher.*`) are applied to it, and one that would change
    what it trains (model, data, seed, gradient clipping, ...) to a value other than the saved one is a one-line
    UserError (start a new run instead). A group choice (`trainer=gpu`) changes the keys its option's file sets
    (`group_keys[group]`, `config.option_keys`), not every key of the group back to a default (the run's own
    `trainer.max_epochs=800`); `launcher=<the saved launcher>` changes nothing, another launcher replaces the saved
    one. Returns the changes made, as "key: old -> new"."""
    changes, refused = [], []
    for key in dict.fromkeys(override_key(o) for o in overrides):
        if key == "experiment":  # the run directory is found under the experiment's name: always the same
            continue
        node = OmegaConf.select(cfg, key, default=None)
        if node is None and key in GROUPS:  # a group whose options set keys all over the config (debug: no node)
            refused.append(f"{key} (a config group that sets keys across the config; give those keys instead)")
            continue
        own = (group_keys or {}).get(key)
        if key == "launcher" and own is not None:
            if cfg.launcher.name != saved.launcher.get("name"):  # another launcher: its settings, not the old ones
                changes.append(f"launcher: {saved.launcher.get('name')!r} -> {cfg.launcher.name!r}")
                saved.launcher = OmegaConf.create(OmegaConf.to_container(cfg.launcher, resolve=True))
            continue
        group_leaves = own if own is not None else leaves(node, key) if node is not None else [key]
        for leaf in group_leaves:
            new, old = OmegaConf.select(cfg, leaf, default=None), OmegaConf.select(saved, leaf, default=_ABSENT)
            absent = old is _ABSENT  # e.g. logger.wandb.entity under a csv run's `logger.wandb: null`
            old = None if absent else old
            if OmegaConf.is_config(new):
                new = OmegaConf.to_container(new, resolve=True)
            if OmegaConf.is_config(old):
                old = OmegaConf.to_container(old, resolve=True)
            resumable = leaf.split(".", 1)[0] in RESUMABLE_KEYS and not leaf.startswith(FIXED_TRAINER_KEYS)
            if new == old and not (absent and resumable):
                continue
            if resumable:
                OmegaConf.update(saved, leaf, new, force_add=True)  # a null leaf too: the code reads every key
                if new != old:
                    changes.append(f"{leaf}: {old!r} -> {new!r}")
            else:
                refused.append(f"{leaf} (saved {old!r}, given {new!r})")
    if refused:
        raise UserError(f"run {cfg.run_id} resumes with its saved config: {', '.join(refused[:3])}"
                        f"{' ...' if len(refused) > 3 else ''} cannot change on resume (omit run_id for a new run; "
                        f"a resumed run may change only {', '.join(RESUMABLE_KEYS[:5])}, ...)")
    return changes


def save_resumed_config(run: Run, cfg: DictConfig, stage: str | None = None) -> None:
    """The saved config of a resumed run, with the changes its resume applied (rank zero, atomically); `stage` (the
    saved one) is written back, as a stage given on resume (stage=test) is for that call only."""
    if global_rank() == 0:
        to_save = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        if stage is not None:
            to_save.stage = stage
        write_atomic(run.config_file, OmegaConf.to_yaml(to_save, resolve=True))


def create(cfg: DictConfig) -> Run:
    """Write the resolved config and provenance (rank zero only); idempotent on requeue/resume."""
    run = run_of(cfg)
    if global_rank() == 0:
        try:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
            run.figures.mkdir(exist_ok=True)
            if not os.access(run.dir, os.W_OK):  # an existing run directory on a read-only mount, or not ours
                raise PermissionError(errno.EROFS, "not writable", str(run.dir))
            if not run.config_file.exists():
                write_atomic(run.config_file, OmegaConf.to_yaml(cfg, resolve=True))
                write_atomic(run.dir / "meta.json", json.dumps(provenance(), indent=2))
        except OSError as err:  # runs_root not writable, a file in the way, a full disk
            raise UserError(f"cannot write the run directory {run.dir} (runs_root={run.root}): "
                            f"{err.strerror or one_line(err)}{f' ({err.filename})' if err.filename else ''}") from None
    return run


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary name beside `path`, then rename: readers never see half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")  # writers never share one
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_unstarted(run: Run) -> None:
    """Remove a run directory that a failed start left without a checkpoint (and its experiment's folder when that
    was its only run); a directory with a checkpoint is kept."""
    import shutil

    if any(run.checkpoints.glob("*.ckpt")):
        return
    shutil.rmtree(run.dir, ignore_errors=True)
    if run.dir.parent.is_dir() and not any(run.dir.parent.iterdir()):
        run.dir.parent.rmdir()


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
    matches = dirs_with_id(runs_root, run)
    if not matches:
        raise UserError(f"no run '{run}' (looked for {path}/config.yaml and {runs_root}/*/{run}/config.yaml)")
    if len(matches) > 1:
        raise UserError(f"run id '{run}' is ambiguous: {', '.join(map(str, matches))}")
    return matches[0].absolute()
