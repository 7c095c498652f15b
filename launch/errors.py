"""User-facing errors: bad config, data or checkpoint. The CLI prints them as one line and exits 2."""
from collections.abc import Mapping, Sequence


class UserError(Exception):
    """An error caused by input the user controls (config, data, checkpoint, resources)."""

    exit_code = 2


def check_choice(field: str, noun: str, value, known, *, list_known: bool = True) -> None:
    """Raise a one-line UserError, with the closest valid name, when `value` is not one of `known`."""
    import difflib

    known = [str(k) for k in known]
    if str(value) in known:
        return
    close = difflib.get_close_matches(str(value), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = f"; known: {', '.join(known)}" if list_known else ""
    raise UserError(f"{field}: unknown {noun} {value!r}{hint}{listing}")


def check_min(prefix: str, low: float = 1, **values) -> None:
    """Raise a one-line UserError unless every given value is >= `low`; None (an optional or "off" setting) passes.
    `prefix` names the config group: `check_min("data", batch_size=-1)` -> "data.batch_size must be >= 1, got -1"."""
    for key, value in values.items():
        _check_number(prefix, key, value)
        if value is not None and not value >= low:
            raise UserError(f"{prefix}.{key} must be >= {low}, got {value!r}")


def _check_number(prefix: str, key: str, value) -> None:
    """A value given on the command line as text (`model.dim_emb=abc`) or a list is not a number: say so."""
    if isinstance(value, (bool, str, bytes, Mapping, Sequence)):  # OmegaConf's list / dict configs included
        raise UserError(f"{prefix}.{key} must be a number, got {value!r}")


def check_positive(prefix: str, **values) -> None:
    """Like `check_min`, for values that must be > 0 (lengths, time steps, ranges); None passes."""
    for key, value in values.items():
        _check_number(prefix, key, value)
        if value is not None and not value > 0:
            raise UserError(f"{prefix}.{key} must be > 0, got {value!r}")


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """An exception's text on one line (whitespace runs collapsed), at most `limit` characters, for a UserError."""
    return " ".join(str(err).split())[:limit]


def is_sigterm(err: BaseException) -> bool:
    """Lightning's SIGTERMException (a SystemExit whose code is None), recognised by name: the modules that ask
    (`zoo`'s exit status, the W&B exit code, a SLURM rank's one line) need not import Lightning for it."""
    return type(err).__name__ == "SIGTERMException"


def merge_options(prefix: str, given, defaults: dict) -> dict:
    """`defaults` updated by `given` (a dict or an OmegaConf mapping, resolved); a one-line UserError naming `prefix`
    for anything else and for keys that `defaults` does not have."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(given, DictConfig):
        given = OmegaConf.to_container(given, resolve=True)
    if not isinstance(given, dict):
        raise UserError(f"{prefix} must be null or a mapping of {', '.join(defaults)}, got {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(f"{prefix}: unknown keys {unknown}; available: {', '.join(defaults)}")
    return {**defaults, **given}
