"""Layers: ``Dense`` (fully connected, the seeds' W·X) and ``Rescaling`` (uint8 pixels in).

A layer keeps its parameters on the backend that was active when it was created and calls
kernels only through that backend. Shapes are batch-first: x (batch, in) -> y (batch, out).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinynet.backend import ACTIVATIONS, Backend, get_backend, to_numpy
from tinynet.errors import InvalidInputError, ShapeError, checked_seed, positive_int
from tinynet.system import physical_memory

_ALIASES = {None: "identity", "linear": "identity", "none": "identity", "logistic": "sigmoid"}
INITS = ("auto", "glorot_uniform", "he_normal", "normal", "uniform", "zeros")
DTYPES = ("float32", "float64")

SeedLike = int | np.random.Generator | None


def activation_name(activation: str | None) -> str:
    """Canonical activation name; InvalidInputError naming the valid ones otherwise."""
    key = activation.lower() if isinstance(activation, str) else activation
    name = _ALIASES.get(key, key)
    if name not in ACTIVATIONS:
        raise InvalidInputError(
            f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}"
        )
    return name


# The activations with a parameter, and its default: leaky_relu's slope for z <= 0 (PyTorch's).
PARAMETRIZED = {"leaky_relu": 0.01}


def activation_alpha(activation: str, alpha: float | None) -> float:
    """The parameter of ``activation``: ``alpha`` checked, or its default; 0.0 for the
    activations without one. InvalidInputError for an alpha they cannot take."""
    if activation not in PARAMETRIZED:
        if alpha is not None:
            raise InvalidInputError(
                f"alpha is the parameter of {', '.join(PARAMETRIZED)}; "
                f"activation {activation!r} takes none"
            )
        return 0.0
    if alpha is None:
        return PARAMETRIZED[activation]
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float | np.floating | np.integer)
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        # alpha >= 0 keeps the sign of z in y = f(z), which the gradient is computed from
        raise InvalidInputError(f"{activation} needs a finite alpha >= 0, got {alpha!r}")
    return float(alpha)


def dtype_of(dtype: Any) -> np.dtype:
    """float32 or float64 as a NumPy dtype; InvalidInputError otherwise."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidInputError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}") from exc
    if dt.name not in DTYPES:
        raise InvalidInputError(f"unsupported dtype {dt.name!r}; valid: {', '.join(DTYPES)}")
    return dt


def check_weights_fit(shapes: list[tuple[int, int]], dtype: np.dtype) -> None:
    """InvalidInputError before anything is allocated when the weights of layers of these
    (out, in) shapes could not be trained in this machine's memory: training keeps each weight
    at least twice (the weight and its gradient)."""
    memory = physical_memory()
    needed = 2 * sum(out * n_in for out, n_in in shapes) * dtype.itemsize
    if memory is not None and needed > memory:
        sizes = ", ".join(f"{out}x{n_in}" for out, n_in in shapes)
        raise InvalidInputError(
            f"weights of {sizes} in {dtype.name} need {needed / 2**30:,.1f} GiB to train (the "
            f"weights and their gradients), more than this machine's "
            f"{memory / 2**30:,.1f} GiB: choose smaller layers"
        )


def init_weights(
    init: str, out_features: int, in_features: int, activation: str, rng: np.random.Generator
) -> np.ndarray:
    """Initial W (out, in) in float64 on the host.

    ``glorot_uniform``: U(-a, a), a = sqrt(6 / (in + out)) (Keras' default);
    ``he_normal``: N(0, 2 / in), for ReLU;
    ``normal``: N(0, 1 / in), the tutorials' ``numpy.random.normal(0.0, pow(in, -0.5))``;
    ``uniform``: U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's ``nn.Linear`` default);
    ``zeros``; ``auto``: ``he_normal`` for ReLU and leaky ReLU, else ``glorot_uniform``.
    """
    if init == "auto":
        init = "he_normal" if activation in ("relu", "leaky_relu") else "glorot_uniform"
    shape = (out_features, in_features)
    if init == "glorot_uniform":
        a = math.sqrt(6.0 / (in_features + out_features))
        return rng.uniform(-a, a, shape)
    if init == "he_normal":
        return rng.normal(0.0, math.sqrt(2.0 / in_features), shape)
    if init == "normal":
        return rng.normal(0.0, in_features**-0.5, shape)
    if init == "uniform":
        a = 1.0 / math.sqrt(in_features)
        return rng.uniform(-a, a, shape)
    if init == "zeros":
        return np.zeros(shape)
    raise InvalidInputError(f"unknown init {init!r}; valid: {', '.join(INITS)}")


class Parameter:
    """A trainable array on the backend, its gradient, and whether the optimizer may change it."""

    def __init__(self, data: Any, name: str):
        self.data = data
        self.grad: Any = None
        self.name = name
        self.frozen = False

    def __repr__(self) -> str:
        state = ", frozen" if self.frozen else ""
        return f"Parameter({self.name}, shape={tuple(self.data.shape)}{state})"


class Layer:
    """What the MLP needs from a layer. ``forward`` keeps what ``backward`` needs."""

    backend: Backend
    dtype: np.dtype
    in_features: int | None = None
    out_features: int | None = None

    def forward(self, x: Any, keep: bool = True) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        raise NotImplementedError

    def parameters(self) -> list[Parameter]:
        return []

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def freeze(self, what: str = "all") -> None:
        for p in self._select(what):
            p.frozen = True

    def unfreeze(self, what: str = "all") -> None:
        for p in self._select(what):
            p.frozen = False

    def _select(self, what: str) -> list[Parameter]:
        params = {p.name: p for p in self.parameters()}
        if what == "all":
            return list(params.values())
        key = {"weights": "weight", "weight": "weight", "bias": "bias", "biases": "bias"}.get(what)
        if key is None:
            raise InvalidInputError(f"freeze what={what!r}; valid: 'all', 'weights', 'bias'")
        return [params[key]] if key in params else []


class Dense(Layer):
    """Fully connected layer: y = f(x W^T + b), the seeds' O = f(W·X + b) for a batch of rows.

    x: (batch, in_features), W: (out_features, in_features) as in PyTorch's ``nn.Linear``,
    b: (out_features,), y: (batch, out_features). Biases start at zero; weights per ``init``
    (see :func:`init_weights`). ``seed`` (an int or a ``numpy.random.Generator``) makes the
    initialisation reproducible. ``alpha``: leaky_relu's slope for z <= 0, f(z) = alpha z
    (default 0.01, PyTorch's ``negative_slope``); only leaky_relu takes it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = None,
        bias: bool = True,
        init: str = "auto",
        dtype: Any = "float32",
        seed: SeedLike = None,
        alpha: float | None = None,
    ):
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.activation = activation_name(activation)
        self.alpha = activation_alpha(self.activation, alpha)
        self.init = init
        self.dtype = dtype_of(dtype)
        check_weights_fit([(self.out_features, self.in_features)], self.dtype)
        self.backend = get_backend()
        seed = checked_seed(seed)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        W = init_weights(init, self.out_features, self.in_features, self.activation, rng)
        self.weight = Parameter(self.backend.asarray(W, self.dtype), "weight")
        self.bias = (
            Parameter(self.backend.asarray(np.zeros(self.out_features), self.dtype), "bias")
            if bias
            else None
        )
        self._x: Any = None
        self._y: Any = None

    def parameters(self) -> list[Parameter]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def forward(self, x: Any, keep: bool = True) -> Any:
        """y = f(x W^T + b); with ``keep`` the input and output are saved for ``backward``."""
        b = None if self.bias is None else self.bias.data
        y = self.backend.dense_forward(x, self.weight.data, b, self.activation, self.alpha)
        if keep:
            self._x, self._y = x, y
        return y

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        """From dE/dy: delta = dy * f'(z), then gradients and dE/dx (see ``backward_delta``)."""
        delta = self.backend.activation_backward(self.activation, self._y, dy, self.alpha)
        return self.backward_delta(delta, need_input_grad)

    def backward_delta(self, delta: Any, need_input_grad: bool = True) -> Any:
        """From delta = dE/dz (batch, out): dE/dW = delta^T x, dE/db = sum delta, dE/dx = delta W.

        Gradients of frozen parameters are not computed. Returns dE/dx or None.
        """
        if self._x is None:
            raise RuntimeError("backward() before forward(): nothing saved to differentiate")
        B = self.backend
        if not self.weight.frozen:
            self.weight.grad = B.weight_grad(delta, self._x)
        if self.bias is not None and not self.bias.frozen:
            self.bias.grad = B.bias_grad(delta)
        return B.matmul(delta, self.weight.data) if need_input_grad else None

    def get_weights(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(W, b) as NumPy copies; b is None for a layer built with ``bias=False``."""
        B = self.backend
        W = np.array(B.to_numpy(self.weight.data))
        return W, None if self.bias is None else np.array(B.to_numpy(self.bias.data))

    def set_weights(self, W: Any, b: Any = None) -> None:
        """Replace W (out, in) and b (out,); pass ``b=None`` only for a layer without bias."""
        W = to_numpy(W)  # a CuPy array refuses np.asarray: its .get()
        if W.shape != (self.out_features, self.in_features):
            raise ShapeError(
                f"weights of Dense({self.in_features}, {self.out_features}) must have shape "
                f"{(self.out_features, self.in_features)} (out_features, in_features), "
                f"got {W.shape}"
            )
        if self.bias is None and b is not None:
            raise ShapeError("this layer was built with bias=False; pass b=None")
        if self.bias is not None:
            if b is None:
                raise ShapeError("this layer has a bias; pass b of shape (out_features,)")
            b = to_numpy(b)
            if b.shape != (self.out_features,):
                raise ShapeError(f"bias must have shape ({self.out_features},), got {b.shape}")
        for name, arr in (("weights", W), ("bias", b)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise InvalidInputError(f"{name} contain NaN or inf")
        # Checked again after the cast: finite float64 values beyond float32's range turn inf.
        # Copies: training must never write into the caller's arrays.
        with np.errstate(over="ignore"):  # an overflow is the error below, not a warning
            W = np.array(W, dtype=self.dtype, order="C", copy=True)
            b = None if b is None else np.array(b, dtype=self.dtype, order="C", copy=True)
        for name, arr in (("weights", W), ("bias", b)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise InvalidInputError(
                    f"{name} hold values beyond {self.dtype.name}'s range (largest "
                    f"{np.finfo(self.dtype).max:.3g}): they would be inf in this layer"
                )
        self.weight.data = self.backend.asarray(W, self.dtype)
        if self.bias is not None:
            self.bias.data = self.backend.asarray(b, self.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "type": "Dense",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation,
            "bias": self.bias is not None,
            "init": self.init,
            "dtype": self.dtype.name,
            **({"alpha": self.alpha} if self.activation in PARAMETRIZED else {}),
        }

    def __repr__(self) -> str:
        bias = "" if self.bias is not None else ", bias=False"
        alpha = f", alpha={self.alpha:g}" if self.activation in PARAMETRIZED else ""
        return (
            f"Dense({self.in_features}, {self.out_features}, "
            f"activation={self.activation!r}{alpha}{bias}, dtype={self.dtype.name})"
        )


class Rescaling(Layer):
    """y = x * scale + offset, as floats: put first to feed uint8 images straight in.

    ``Rescaling(1/255)`` maps pixels to [0, 1]; ``Rescaling(0.99/255, 0.01)`` is the seeds'
    0.01..1.0. The data stays uint8 in memory and each batch is converted on its way in.
    """

    def __init__(self, scale: float, offset: float = 0.0, dtype: Any = "float32"):
        if not (math.isfinite(scale) and math.isfinite(offset)) or scale == 0:
            raise InvalidInputError(f"Rescaling needs a finite non-zero scale, got {scale!r}")
        self.scale = float(scale)
        self.offset = float(offset)
        self.dtype = dtype_of(dtype)
        self.backend = get_backend()

    def forward(self, x: Any, keep: bool = True) -> Any:
        return self.backend.rescale(x, self.scale, self.offset, self.dtype)

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        return dy * self.scale if need_input_grad else None

    def config(self) -> dict[str, Any]:
        return {
            "type": "Rescaling",
            "scale": self.scale,
            "offset": self.offset,
            "dtype": self.dtype.name,
        }

    def __repr__(self) -> str:
        return f"Rescaling(scale={self.scale:g}, offset={self.offset:g})"
