"""Rosenblatt's single-layer perceptron (seed 004, section 3.2).

The bias is folded in as weight w_0 on a constant input +1: x = [+1, x_1, ..., x_N],
w = [b, w_1, ..., w_N], y = step(w·x) (1 for w·x >= 0, else 0), and each sample updates
w <- w + lr (d - y) x. That is an SGD step with "gradient" (y - d) x, so it runs through the
backend's ``weight_grad`` and ``sgd_update`` kernels like everything else.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinynet.backend import get_backend
from tinynet.errors import InvalidInputError, ShapeError, checked_seed


class Perceptron:
    """Binary classifier with labels in {0, 1}, trained one sample at a time.

    Training stops at the first of: an epoch with no errors ("converged"); weight changes below
    ``tol`` (max-norm) for ``patience`` epochs in a row ("stalled"); ``max_epochs``.
    """

    def __init__(
        self,
        n_inputs: int,
        lr: float = 0.1,
        max_epochs: int = 100,
        tol: float = 1e-9,
        patience: int = 5,
        seed: int | None = None,
        dtype: Any = "float64",
    ):
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise InvalidInputError(f"learning rate must be a positive number, got {lr!r}")
        self.n_inputs = int(n_inputs)
        self.lr = float(lr)
        self.max_epochs = int(max_epochs)
        self.tol = float(tol)
        self.patience = int(patience)
        self.backend = get_backend()
        self.dtype = np.dtype(dtype)
        # Zeros by default (the seed allows "random or all-zero"); a seed draws small weights.
        w = np.zeros((1, self.n_inputs + 1))
        if checked_seed(seed) is not None:
            w = np.random.default_rng(seed).normal(0.0, 0.1, w.shape)
        self.w = self.backend.asarray(w, self.dtype)
        self.errors_per_epoch: list[int] = []
        self.stop_reason: str | None = None

    @property
    def weights(self) -> np.ndarray:
        """[b, w_1, ..., w_N] as NumPy."""
        return np.array(self.backend.to_numpy(self.w)[0])

    def _augment(self, X: Any) -> Any:
        X = np.asarray(X, dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise ShapeError(f"expected input of shape (n, {self.n_inputs}), got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise InvalidInputError("input contains NaN or inf")
        return self.backend.asarray(np.hstack([np.ones((len(X), 1), self.dtype), X]))

    def predict(self, X: Any) -> np.ndarray:
        """0/1 outputs, shape (n,)."""
        y = self.backend.dense_forward(self._augment(X), self.w, None, "step")
        return self.backend.to_numpy(y)[:, 0].astype(np.int64)

    def fit(self, X: Any, d: Any) -> Perceptron:
        B = self.backend
        Xa = self._augment(X)
        d = np.asarray(d)
        if d.shape != (Xa.shape[0],) or not np.isin(d, (0, 1)).all():
            raise ShapeError(f"labels must be {Xa.shape[0]} values in {{0, 1}}, got {d!r}")
        D = B.asarray(d.reshape(-1, 1), self.dtype)
        quiet_epochs = 0
        self.errors_per_epoch, self.stop_reason = [], "max_epochs"
        for _ in range(self.max_epochs):
            before = B.xp.array(self.w, copy=True)
            errors = 0
            for i in range(Xa.shape[0]):
                x = Xa[i : i + 1]
                y = B.dense_forward(x, self.w, None, "step")
                miss = y - D[i : i + 1]  # (1, 1): y - d
                errors += int(miss[0, 0] != 0)
                B.sgd_update(self.w, B.weight_grad(miss, x), self.lr)
            self.errors_per_epoch.append(errors)
            if errors == 0:
                self.stop_reason = "converged"
                break
            change = float(B.xp.abs(self.w - before).max())
            quiet_epochs = quiet_epochs + 1 if change < self.tol else 0
            if quiet_epochs >= self.patience:
                self.stop_reason = "stalled"
                break
        return self
