"""Stochastic gradient descent: w <- w - lr dE/dw, with optional (PyTorch-style) momentum."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from tinynet.errors import InvalidInputError
from tinynet.layers import Parameter


class SGD:
    """w <- w - lr g; with momentum m: v <- m v + g, w <- w - lr v (v starts at 0).

    Frozen parameters and parameters without a gradient are left alone.
    """

    def __init__(self, lr: float, momentum: float = 0.0):
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise InvalidInputError(f"learning rate must be a positive number, got {lr!r}")
        if not (isinstance(momentum, int | float) and 0.0 <= momentum < 1.0):
            raise InvalidInputError(f"momentum must be in [0, 1), got {momentum!r}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self._velocity: dict[Parameter, Any] = {}

    def velocity(self, p: Parameter, backend: Any) -> Any:
        """The momentum buffer of ``p`` (zeros at first), or None without momentum."""
        if not self.momentum:
            return None
        v = self._velocity.get(p)
        if v is None:
            v = self._velocity[p] = backend.xp.zeros_like(p.data)
        return v

    def step(self, params: Iterable[Parameter], backend: Any) -> None:
        for p in params:
            if p.frozen or p.grad is None:
                continue
            backend.sgd_update(p.data, p.grad, self.lr, self.velocity(p, backend), self.momentum)

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr:g}, momentum={self.momentum:g})"
