"""Small LightningModule mix-ins shared by several papers."""
from __future__ import annotations

from typing import Any


class EvaluateOnValAndTest:
    """validation_step and test_step both run the module's `_evaluate(batch, split)` with split "val" / "test"
    (the papers whose evaluation is one routine: metrics on the whole evaluation batch)."""

    def validation_step(self, batch: Any, batch_idx: int = 0) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int = 0) -> None:
        self._evaluate(batch, "test")
