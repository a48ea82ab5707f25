"""Losses: a value for reporting and the delta dE/dz that starts backpropagation.

``delta`` is the seeds' delta_out = dE/do * f'(z) for the last layer; CrossEntropy after a
softmax fuses the two factors into p - t.
"""

from __future__ import annotations

from typing import Any

from tinynet.backend import Backend, get_backend
from tinynet.errors import InvalidInputError, ShapeError

REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise InvalidInputError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    return reduction


class Loss:
    """Base class. ``reduction``: "mean" averages per-sample losses over the batch, "sum" adds."""

    reduction: str

    def check_activation(self, activation: str) -> None:
        """Raise if this loss cannot follow a last layer with ``activation``."""

    def value(self, backend: Backend, y: Any, t: Any) -> Any:
        """The loss as a 0-d backend array."""
        raise NotImplementedError

    def value_and_delta(
        self, backend: Backend, y: Any, t: Any, activation: str, alpha: float = 0.0
    ) -> Any:
        """(loss as a 0-d array, delta = dE/dz of the last layer, shape of y); ``alpha``: the
        last activation's parameter."""
        raise NotImplementedError

    def __call__(self, y: Any, t: Any) -> float:
        """The loss of outputs y against targets t, both (batch, outputs), as a float."""
        B = get_backend()
        y, t = B.asarray(y), B.asarray(t)
        if y.shape != t.shape:
            raise ShapeError(f"outputs have shape {y.shape} but targets have shape {t.shape}")
        return float(self.value(B, y, t))


class SquaredError(Loss):
    """E = scale * sum_k (t_k - o_k)^2 per sample (scale 1: seed 000; scale 0.5: seed 004)."""

    def __init__(self, scale: float = 1.0, reduction: str = "mean"):
        if not scale > 0:
            raise InvalidInputError(f"SquaredError scale must be positive, got {scale!r}")
        self.scale = float(scale)
        self.reduction = _check_reduction(reduction)

    def value(self, backend: Backend, y: Any, t: Any) -> Any:
        return backend.squared_error(y, t, self.scale, self.reduction, grad=False)[0]

    def value_and_delta(
        self, backend: Backend, y: Any, t: Any, activation: str, alpha: float = 0.0
    ) -> Any:
        loss, dy = backend.squared_error(y, t, self.scale, self.reduction)
        return loss, backend.activation_backward(activation, y, dy, alpha)

    def __repr__(self) -> str:
        return f"SquaredError(scale={self.scale:g}, reduction={self.reduction!r})"


class CrossEntropy(Loss):
    """E = -sum_k t_k log p_k per sample, for a last layer with ``activation="softmax"``.

    Targets are probability rows (one-hot, or rows summing to 1): then dE/dz = p - t exactly.
    """

    def __init__(self, reduction: str = "mean"):
        self.reduction = _check_reduction(reduction)

    def check_activation(self, activation: str) -> None:
        if activation != "softmax":
            raise InvalidInputError(
                f"CrossEntropy needs a last layer with activation='softmax', got {activation!r}"
            )

    def value(self, backend: Backend, y: Any, t: Any) -> Any:
        return backend.softmax_cross_entropy(y, t, self.reduction, grad=False)[0]

    def value_and_delta(
        self, backend: Backend, y: Any, t: Any, activation: str, alpha: float = 0.0
    ) -> Any:
        self.check_activation(activation)
        return backend.softmax_cross_entropy(y, t, self.reduction)

    def __repr__(self) -> str:
        return f"CrossEntropy(reduction={self.reduction!r})"


class BinaryCrossEntropy(Loss):
    """E = -sum_k [t_k log p_k + (1 - t_k) log(1 - p_k)] per sample, for a last layer with
    ``activation="sigmoid"``: each output a yes/no probability (a binary problem's one unit, or
    one per label of a multilabel problem; PyTorch's BCELoss, summed over the outputs).

    Targets in [0, 1]: then dE/dz = p - t exactly.
    """

    def __init__(self, reduction: str = "mean"):
        self.reduction = _check_reduction(reduction)

    def check_activation(self, activation: str) -> None:
        if activation != "sigmoid":
            raise InvalidInputError(
                f"BinaryCrossEntropy needs a last layer with activation='sigmoid', got "
                f"{activation!r}"
            )

    def value(self, backend: Backend, y: Any, t: Any) -> Any:
        return backend.sigmoid_cross_entropy(y, t, self.reduction, grad=False)[0]

    def value_and_delta(
        self, backend: Backend, y: Any, t: Any, activation: str, alpha: float = 0.0
    ) -> Any:
        self.check_activation(activation)
        return backend.sigmoid_cross_entropy(y, t, self.reduction)

    def __repr__(self) -> str:
        return f"BinaryCrossEntropy(reduction={self.reduction!r})"


LOSSES = {
    "squared_error": SquaredError,
    "mse": SquaredError,
    "cross_entropy": CrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
}


def get_loss(name: str) -> Loss:
    """A loss by name ("squared_error"/"mse", "cross_entropy") with default settings."""
    if name not in LOSSES:
        raise InvalidInputError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name]()
