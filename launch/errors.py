"""User-facing errors: bad config, data or checkpoint. The CLI prints them as one line and exits 2."""


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
