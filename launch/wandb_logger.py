"""The run's W&B logger: Lightning's WandbLogger, with the run's resolved config as the W&B config (and nothing on top
of it), its metrics at the step of the weights they measure, and its end recorded as it happened."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

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

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)  # wandb warns on every run that it has no effect

    def log_hyperparams(self, params, *args, **kwargs) -> None:  # the config holds them (see above)
        return

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(*self._at_tested_step(metrics, step))


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
    elif type(err).__name__ == "SIGTERMException":
        code = 143
    elif isinstance(err, SystemExit):
        code = err.code if isinstance(err.code, int) else 0 if err.code is None else 1
    else:
        code = 1
    if code:
        wandb.finish(exit_code=code)
