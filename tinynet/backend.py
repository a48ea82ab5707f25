"""Backend selection: which array module and which kernels run the math.

A backend is an array module (``xp``) plus the fixed set of named kernels that
:class:`Backend` declares. Layers, losses, optimizers and the trainer call kernels only through
the active backend, so a new backend is one new module in ``kernels/`` and one line in
``_REGISTRY`` below.

Which backend is active, highest precedence first:

1. an explicit choice in code: ``set_backend("numpy")`` or ``with use_backend("numpy"): ...``;
2. a non-empty ``TINYNET_BACKEND`` environment variable;
3. the default, ``"auto"``: the fastest backend that works on this machine.

Backends are imported lazily, so ``import tinynet`` never imports Numba or CuPy.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinynet.errors import BackendError

log = logging.getLogger("tinynet")

ENV_VAR = "TINYNET_BACKEND"
DEFAULT = "auto"

# name -> (module, class). The modules live in the top-level kernels/ folder.
_REGISTRY: dict[str, tuple[str, str]] = {
    "numpy": ("tinynet.kernels.numpy_backend", "NumpyBackend"),
    "numba": ("tinynet.kernels.numba_backend", "NumbaBackend"),
    "cupy": ("tinynet.kernels.cupy_backend", "CupyBackend"),
}
# `auto` tries these in order and takes the first that is registered and usable.
_AUTO_PREFERENCE = ("cupy", "numba", "numpy")
# The library each backend needs: `auto` passes over a backend whose library is absent quietly,
# but warns when it is installed and still cannot run (a broken setting, a missing driver).
_LIBRARY = {"numba": "numba", "cupy": "cupy"}

_instances: dict[str, Backend] = {}
_explicit: str | None = None


class Backend:
    """The contract every backend implements. Arrays are batch-first.

    Shapes: ``x`` (batch, in), ``W`` (out, in) as in the seeds' X_hidden = W·X, ``b`` (out,),
    ``y``/``z``/``dz`` (batch, out). ``dtype`` is float32 or float64; kernels keep the dtype of
    their inputs. Kernel names and meaning:

    =====================  ====================================================================
    ``matmul(a, b)``        a @ b, (m, k) @ (k, n) -> (m, n)
    ``dense_forward``       y = f(x W^T + b), bias and activation fused
    ``activation_backward`` dz = dy * f'(z), from the saved output y (sigmoid: y(1-y))
    ``weight_grad``         dW = dz^T x, (out, in)
    ``bias_grad``           db = sum over the batch of dz, (out,)
    ``squared_error``       loss and dE/dy of E = scale * sum_k (t_k - y_k)^2
    ``softmax_cross_entropy`` loss and dE/dz = p - t of E = -sum_k t_k log p_k
    ``sgd_update``          w <- w - lr * g (with momentum: v <- m v + g; w <- w - lr v), in place
    ``rescale``             x * scale + offset as floats (uint8 pixels -> inputs)
    =====================  ====================================================================

    ``squared_error`` and ``softmax_cross_entropy`` take ``reduction`` ("mean" or "sum" over the
    batch) and return the loss as a 0-d backend array, so the trainer can add losses up on the
    device without a sync per step.

    A backend whose ``fuses(spec, batch_size)`` says True also has ``train_epoch(spec, X, T,
    order, batch_size)``: train on the rows ``X[order]`` in steps of ``batch_size`` as the
    kernel-by-kernel loop would (same batches, same updates), in place on the arrays of the
    :class:`EpochSpec`, and return the sum of the per-sample losses (a float, or a 0-d array on
    the device). X, T and the int64 ``order`` are backend arrays.
    """

    name: str = "?"
    xp: Any = np

    def info(self) -> dict[str, str]:
        """Versions and device, for ``tinynet info`` and benchmark reports."""
        return {"backend": self.name}

    def fuses(self, spec: EpochSpec, batch_size: int) -> bool:
        """Whether ``train_epoch`` should run this model at this batch size (it is faster)."""
        return False

    def synchronize(self) -> None:
        """Wait until queued device work is done (timing); a no-op on the CPU."""

    def __repr__(self) -> str:
        return f"<tinynet backend {self.name!r}>"


@dataclass
class LayerSpec:
    """One Dense layer for ``train_epoch``: its live arrays (updated in place) and settings."""

    W: Any  # (out, in)
    b: Any | None  # (out,), None without bias
    activation: str
    train_W: bool  # False when frozen
    train_b: bool
    vW: Any | None = None  # momentum velocities, same shapes, when momentum > 0
    vb: Any | None = None


@dataclass
class EpochSpec:
    """Everything ``train_epoch`` needs, as arrays and numbers (no tinynet objects)."""

    layers: list[LayerSpec]
    in_scale: float  # inputs are X * in_scale + in_offset (a Rescaling layer, or 1 and 0)
    in_offset: float
    loss: str  # "squared_error" or "cross_entropy" (after a softmax)
    loss_scale: float
    reduction: str  # "mean" or "sum" over each batch
    lr: float
    momentum: float


def backend_status() -> dict[str, str | None]:
    """Every registered backend: None where it can run here, else the reason it cannot."""
    status: dict[str, str | None] = {}
    for name in _REGISTRY:
        try:
            _instantiate(name)
            status[name] = None
        except BackendError as exc:
            status[name] = str(exc)
    return status


def available_backends() -> list[str]:
    """Names that ``set_backend`` accepts, ``auto`` included."""
    return ["auto", *_REGISTRY]


def _instantiate(name: str) -> Backend:
    """Import and build a registered backend, or raise BackendError saying why it can't run."""
    if name in _instances:
        return _instances[name]
    module_name, class_name = _REGISTRY[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        backend = cls()
    except BackendError:
        raise
    except Exception as exc:  # the backend's library is missing or broken
        raise BackendError(f"backend {name!r} cannot be used: {exc}") from exc
    _instances[name] = backend
    return backend


def _resolve(name: str) -> Backend:
    name = name.strip().lower()
    if name == "auto":
        reasons = []
        for candidate in _AUTO_PREFERENCE:
            if candidate not in _REGISTRY:
                continue
            try:
                backend = _instantiate(candidate)
            except BackendError as exc:
                reasons.append(str(exc))
                library = _LIBRARY.get(candidate)
                if library and importlib.util.find_spec(library) is not None:
                    _warn_passed_over(candidate, str(exc))
                continue
            skipped = f" (skipped: {'; '.join(reasons)})" if reasons else ""
            log.debug("backend 'auto' selected %r%s", backend.name, skipped)
            return backend
        raise BackendError("no usable backend: " + "; ".join(reasons))
    if name not in _REGISTRY:
        valid = ", ".join(available_backends())
        raise BackendError(f"unknown backend {name!r}; valid names: {valid}")
    return _instantiate(name)


_warned_passed_over: set[str] = set()


def _warn_passed_over(name: str, reason: str) -> None:
    if name not in _warned_passed_over:
        _warned_passed_over.add(name)
        warnings.warn(f"backend 'auto' passed over {name!r}: {reason}", RuntimeWarning, 3)


def get_backend() -> Backend:
    """The active backend, chosen by precedence: explicit call, ``TINYNET_BACKEND``, default."""
    if _explicit is not None:
        return _resolve(_explicit)
    from_env = os.environ.get(ENV_VAR, "").strip()
    return _resolve(from_env or DEFAULT)


def set_backend(name: str) -> Backend:
    """Choose the backend for everything created from now on; returns it.

    Raises BackendError for an unknown name (listing the valid ones) or a backend that cannot run
    here (saying why). Never falls back to another backend.
    """
    global _explicit
    backend = _resolve(name)
    _explicit = name
    return backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """``with use_backend("numpy"):`` runs the block on that backend, then restores the choice."""
    global _explicit
    backend = _resolve(name)
    previous, _explicit = _explicit, name
    try:
        yield backend
    finally:
        _explicit = previous


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array (or anything array-like) as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)
