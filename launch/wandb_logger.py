"""The run's W&B logger: Lightning's WandbLogger, with the run's resolved config as the W&B config (and nothing on top
of it), its metrics at the step of the weights they measure, and its end recorded as it happened."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from launch.errors import is_sigterm

WANDB_KEYS = ("project", "entity", "mode", "tags", "group", "log_model")
MODES = ("auto", "online", "offline", "disabled")


class TestedAtStep:
    """A logger mixin: while `tested_at` = (global step, epoch) is set (a test of a checkpoint: `zoo train ...
    stage=test`), metrics are logged at that step and epoch. Lightning's test-only trainer is at step 0, which put a
    trained run's re-test at the start of its W&B history and metrics.csv."""

    tested_at: tuple[float, float] | None = None

    def _at_tested_step(self, metrics: dict, step: int | None) -> tuple[dict, int | None]:
        if self.tested_at is None:
            return metrics, step
        return {**metrics, "epoch": self.tested_at[1]}, int(self.tested_at[0])


class RunWandbLogger(TestedAtStep, WandbLogger):
    """W&B under the run id. The W&B config is the run's resolved config (model, data, trainer, seed, ...) with its
    provenance (`meta`: git commit, versions, host); Lightning's `log_hyperparams` is not added on top: it logged every
    module and datamodule hyperparameter again as a flat key, over the config's own keys (pig's `model` block became
    the string "pig"; a datamodule's `seed` replaced the run's)."""

    def __init__(self, resume_step: int | None = None, **kwargs) -> None:
        """`resume_step`: the global step of the checkpoint this start resumes from (None or 0: it trains from step 0,
        and every row it logs goes to W&B)."""
        # `mode` comes from `resolve_mode` (build_loggers): an explicit config mode before WANDB_MODE
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)  # wandb warns on every run that it has no effect
        self._logged_path = Path(self.save_dir or ".") / "wandb" / LOGGED_FILE
        # (step, keys at it) of what the run's earlier starts sent; only a start from a checkpoint logs steps again
        # that W&B has (a start from step 0 trains a new attempt: its rows are sent, as metrics.csv replaces its rows)
        self._logged_before = _read_logged(self._logged_path) if resume_step else None
        self._logged: tuple[int, set[str]] | None = None
        self._written_at = float("-inf")

    def log_hyperparams(self, params, *args, **kwargs) -> None:  # the config holds them (see above)
        return

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if self.tested_at is not None or step is None:  # a re-test's rows are new rows, at the tested step
            super().log_metrics(*self._at_tested_step(metrics, step))
            return
        metrics = self._not_logged_before(metrics, int(step))
        if metrics:
            super().log_metrics(metrics, step)
            if self._wandb_init.get("mode") != "disabled":
                self._record(metrics, int(step))

    def _not_logged_before(self, metrics: dict, step: int) -> dict:
        """A start that resumes from a checkpoint trains and logs again the steps its run had logged after that
        checkpoint (a preemption, a kill): W&B already has them (at the same `trainer/global_step`, a second row each,
        a chart that runs back). Rows at steps below the last step an earlier start logged are dropped; at that step,
        the keys it had not logged yet (a validation after the step's training row) still go."""
        if self._logged_before is None:
            return metrics
        last, keys = self._logged_before
        if step > last:
            self._logged_before = None  # past what W&B has: nothing more to compare
            return metrics
        if step < last:
            return {}
        new = {k: v for k, v in metrics.items() if k not in keys and k != "epoch"}
        return {**new, "epoch": metrics["epoch"]} if new and "epoch" in metrics else new

    def _record(self, metrics: dict, step: int) -> None:
        """The last step sent to W&B and its keys, kept for the next start of the run in `<run>/wandb/logged_step.json`:
        written at most every RECORD_EVERY_S seconds, at each checkpoint and when the run ends (a rename costs ~2 ms
        on a local disk, more on a network one). The file may lag what was sent, never lead it: a start after a kill
        sends a few rows again rather than dropping any."""
        keys = set(metrics)
        if self._logged is not None and self._logged[0] == step:
            keys |= self._logged[1]
        elif self._logged_before is not None and self._logged_before[0] == step:
            keys |= self._logged_before[1]
        self._logged = (step, keys)
        if time.monotonic() - self._written_at >= RECORD_EVERY_S:
            self._write_record()

    def _write_record(self) -> None:
        if self._logged is None:
            return
        step, keys = self._logged
        self._written_at = time.monotonic()
        try:
            self._logged_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._logged_path.with_name(f".{LOGGED_FILE}.tmp")
            tmp.write_text(json.dumps({"step": step, "keys": sorted(keys)}))
            os.replace(tmp, self._logged_path)
        except OSError:  # a full or read-only disk must not stop the training; a later start logs these steps again
            pass

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self._write_record()
        super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._write_record()
        super().finalize(status)


LOGGED_FILE = "logged_step.json"
RECORD_EVERY_S = 5.0
EXPLICIT_MODES = ("online", "offline", "disabled")


def _read_logged(path: Path) -> tuple[int, set[str]] | None:
    try:
        record = json.loads(path.read_text())
        return int(record["step"]), {str(k) for k in record["keys"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_mode(requested: str) -> str:
    """The W&B mode of a run: an explicit `logger.wandb.mode` (online, offline, disabled) wins, then an exported
    WANDB_MODE, then `auto`'s default: online when W&B credentials exist (`has_credentials`), otherwise offline."""
    if requested in EXPLICIT_MODES:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_credentials() else "offline"


def check_wandb_settings(wb) -> None:
    """`logger.wandb`: known keys only (a typo such as `log_modle` was ignored), a known mode, tags a list."""
    from launch.errors import UserError

    unknown = sorted(set(wb) - set(WANDB_KEYS))
    if unknown:
        raise UserError(f"logger.wandb has no key {', '.join(unknown)} (keys: {', '.join(WANDB_KEYS)})")
    if wb.get("mode") not in MODES:
        raise UserError(f"logger.wandb.mode must be one of {', '.join(MODES)}, got {wb.get('mode')!r}")
    if wb.get("log_model") not in (True, False, "all", None):
        raise UserError(f"logger.wandb.log_model must be true, false or all, got {wb.get('log_model')!r}")


def tags(value) -> list[str]:
    """`logger.wandb.tags=baseline` is one tag (a string was split into its letters), a list is several."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(tag) for tag in value]


def has_credentials() -> bool:
    """W&B credentials for `mode: auto`: an API key or an identity token in the environment, or a ~/.netrc entry for
    the W&B host (WANDB_BASE_URL's, api.wandb.ai by default: a self-hosted server counts too)."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.exists() and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def finish_failed(err: BaseException) -> None:
    """A run that ends with an error (a NaN loss, a bug), Ctrl-C (130), SIGTERM (143) or another non-zero exit (a
    preempted SLURM job) is recorded so in W&B: its exit code was 0, as if it had finished. Nothing where no W&B run
    is open, or for an exit with status 0."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    if isinstance(err, KeyboardInterrupt) or isinstance(err.__context__, KeyboardInterrupt):
        code = 130  # Lightning turns Ctrl-C into sys.exit(1)
    elif is_sigterm(err):
        code = 143
    elif isinstance(err, SystemExit):
        code = err.code if isinstance(err.code, int) else 0 if err.code is None else 1
    else:
        code = 1
    if code:
        wandb.finish(exit_code=code)
