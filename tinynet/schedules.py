"""Learning-rate schedules: objects that set the optimizer's learning rate between epochs.

``fit(..., schedule=...)`` calls ``start(optimizer)`` once, then ``after_epoch(epoch, record)``
after each epoch (``epoch`` counted from 1, ``record`` that epoch's History values). The rate
lives on the optimizer (``optimizer.lr``), which every training path reads at the start of an
epoch, so a change takes effect without recompiling anything. The closed forms follow
torch.optim.lr_scheduler (StepLR, ExponentialLR, CosineAnnealingLR, ReduceLROnPlateau).
"""

from __future__ import annotations

import math
from typing import Any

from tinynet.errors import InvalidInputError, checked_number


def _count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class Schedule:
    """The rate as a function of the epochs done: subclasses give ``rate(epochs_done)``."""

    def start(self, optimizer: Any) -> None:
        """Remember the optimizer and its rate as the base rate (a resumed run then restores
        the base rate it began with: load_state)."""
        self.optimizer = optimizer
        self.base_lr = optimizer.lr

    def after_epoch(self, epoch: int, record: dict[str, float]) -> None:
        self.optimizer.lr = self.rate(epoch)

    def rate(self, epochs_done: int) -> float:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps to continue the schedule exactly (its type: a checkpoint
        holds the state of one kind of schedule)."""
        return {"type": type(self).__name__, "base_lr": getattr(self, "base_lr", None)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.base_lr = state["base_lr"]


class StepLR(Schedule):
    """lr = base_lr * gamma ** (epochs_done // step_size)."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _count("step_size", step_size)
        self.gamma = checked_number("gamma", gamma, 0.0, low_open=True)

    def rate(self, epochs_done: int) -> float:
        return self.base_lr * self.gamma ** (epochs_done // self.step_size)


class ExponentialLR(Schedule):
    """lr = base_lr * gamma ** epochs_done."""

    def __init__(self, gamma: float) -> None:
        self.gamma = checked_number("gamma", gamma, 0.0, low_open=True)

    def rate(self, epochs_done: int) -> float:
        return self.base_lr * self.gamma**epochs_done


class CosineLR(Schedule):
    """lr = min_lr + (base_lr - min_lr) (1 + cos(pi min(epochs_done, t_max) / t_max)) / 2:
    from base_lr down to min_lr over t_max epochs, then held."""

    def __init__(self, t_max: int, min_lr: float = 0.0) -> None:
        self.t_max = _count("t_max", t_max)
        self.min_lr = checked_number("min_lr", min_lr, 0.0)

    def rate(self, epochs_done: int) -> float:
        progress = min(epochs_done, self.t_max) / self.t_max
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2


class ReduceLROnPlateau(Schedule):
    """lr <- max(lr * factor, min_lr) once ``monitor`` (a History key, lower is better) has
    not improved on its best by the relative ``threshold`` for more than ``patience`` epochs."""

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        min_lr: float = 0.0,
        threshold: float = 1e-4,
    ) -> None:
        if not isinstance(monitor, str):
            raise InvalidInputError(f"monitor must be a History key, got {monitor!r}")
        self.monitor = monitor
        self.factor = checked_number("factor", factor, 0.0, 1.0, low_open=True)
        self.patience = _count("patience", patience, 0)
        self.min_lr = checked_number("min_lr", min_lr, 0.0)
        self.threshold = checked_number("threshold", threshold, 0.0)
        self.best = math.inf
        self.bad_epochs = 0

    def after_epoch(self, epoch: int, record: dict[str, float]) -> None:
        if self.monitor not in record:
            raise InvalidInputError(
                f"ReduceLROnPlateau watches {self.monitor!r}, which this run does not record "
                f"(it records {', '.join(sorted(record))}): pass validation data for val_*"
            )
        value = record[self.monitor]
        if value < self.best * (1 - self.threshold):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
            self.bad_epochs = 0

    def state(self) -> dict[str, Any]:
        return {**super().state(), "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
