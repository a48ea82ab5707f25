"""Early stopping for ``fit``: stop when a monitored History value stops improving."""

from __future__ import annotations

import math
from typing import Any

from tinynet.errors import InvalidInputError, checked_number


class EarlyStopping:
    """Stop training once ``monitor`` (a History key such as "val_loss") has not improved by
    more than ``min_delta`` for ``patience`` epochs. Lower is better, except for keys ending in
    "accuracy" (``mode="auto"``; or "min", "max"). With ``restore_best`` the model ends with the
    parameters of its best epoch, whether training stopped early or ran all its epochs.
    After ``fit``, ``best_epoch`` and ``stopped_epoch`` (None if it ran all epochs) say what
    happened."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best: bool = True,
        mode: str = "auto",
    ) -> None:
        if not isinstance(monitor, str):
            raise InvalidInputError(f"monitor must be a History key, got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise InvalidInputError(f"patience must be an integer >= 1, got {patience!r}")
        if mode not in ("auto", "min", "max"):
            raise InvalidInputError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience = monitor, patience
        self.min_delta = checked_number("min_delta", min_delta, 0.0)
        self.restore_best = bool(restore_best)
        self.maximize = mode == "max" or (mode == "auto" and monitor.endswith("accuracy"))
        self.start()

    def start(self) -> None:
        self.best = -math.inf if self.maximize else math.inf
        self.wait = 0
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.best_params: list[Any] | None = None

    def after_epoch(self, epoch: int, record: dict[str, float], params: list, xp: Any) -> bool:
        """Whether to stop after this epoch; keeps a copy of the best epoch's parameters."""
        if self.monitor not in record:
            raise InvalidInputError(
                f"EarlyStopping watches {self.monitor!r}, which this run does not record (it "
                f"records {', '.join(sorted(record))}): pass validation data for val_*"
            )
        value = record[self.monitor]
        gain = value - self.best if self.maximize else self.best - value
        if gain > self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_params = [xp.array(p.data, copy=True) for p in params]
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def restore(self, params: list) -> None:
        """Put the best epoch's parameters back (with ``restore_best``)."""
        if self.restore_best and self.best_params is not None:
            for p, best in zip(params, self.best_params, strict=True):
                p.data[...] = best

    def state(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "wait": self.wait,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state(self, state: dict[str, Any], best_params: list | None) -> None:
        self.best, self.wait = float(state["best"]), int(state["wait"])
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
        self.best_params = best_params
