"""User-facing errors: bad config, data or checkpoint. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """An error caused by input the user controls (config, data, checkpoint, resources)."""

    exit_code = 2
