"""Small helpers shared by the papers' `figures()`."""
from __future__ import annotations

from typing import Any

import numpy as np


def colorbar_extend(values: Any, vmin: float, vmax: float) -> str:
    """A colour bar's `extend` for `values` drawn on [vmin, vmax]: arrows on the side(s) where values fall outside, so
    that a prediction clipped to the reference's range (e.g. a diverged one) shows as such."""
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    below = bool(a.size) and float(a.min()) < vmin
    above = bool(a.size) and float(a.max()) > vmax
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get((below, above), "neither")


def logged_metric(module: Any, key: str) -> float | None:
    """The value of `key` (e.g. "test/mse") the module's trainer logged last, or None (no trainer, or not logged)."""
    trainer = getattr(module, "_trainer", None)
    value = getattr(trainer, "callback_metrics", {}).get(key) if trainer is not None else None
    return None if value is None else float(value)
