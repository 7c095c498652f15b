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


def view_limits(points: Any, low: Any, high: Any, pad: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per coordinate of a view that holds the box [low, high] and every finite coordinate of `points`
    (N, D), each side widened by `pad` x the span, or by `pad` where the span is 0 (a point moved out of the domain
    stays in view; NaN sets no limit)."""
    pts = np.asarray(points, dtype=float).reshape(-1, len(low))
    lo, hi = np.array(low, dtype=float), np.array(high, dtype=float)
    for k in range(len(lo)):
        column = pts[:, k][np.isfinite(pts[:, k])]
        if column.size:
            lo[k], hi[k] = min(lo[k], float(column.min())), max(hi[k], float(column.max()))
    margin = pad * np.where(hi > lo, hi - lo, 1.0)
    return lo - margin, hi + margin


def logged_metric(module: Any, key: str) -> float | None:
    """The value of `key` (e.g. "test/mse") the module's trainer logged last, or None (no trainer, or not logged)."""
    trainer = getattr(module, "_trainer", None)
    value = getattr(trainer, "callback_metrics", {}).get(key) if trainer is not None else None
    return None if value is None else float(value)


def reference_colours(reference) -> dict[str, float]:
    """imshow's `vmin` / `vmax` of a field figure: the reference's range, for the reference and the prediction beside
    it alike, so that one colour is one value in both (each panel scaled itself: an untrained prediction near 0 showed
    in the colour of the reference's +1)."""
    values = np.asarray(reference, dtype=float)
    return {"vmin": float(np.nanmin(values)), "vmax": float(np.nanmax(values))}
