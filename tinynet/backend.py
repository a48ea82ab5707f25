"""Backend selection: which array module and which kernels run the math.

A backend is an array module (``xp``) plus the fixed set of named kernels that the abstract
class :class:`Backend` declares. Layers, losses, optimizers and the trainer call kernels only
through the active backend, so a new backend is one new module in ``kernels/`` and one line in
``_REGISTRY`` below.

Which backend is active, highest precedence first:

1. an explicit choice in code: ``set_backend("numpy")`` or ``with use_backend("numpy"): ...``;
2. a non-empty ``TINYNET_BACKEND`` environment variable;
3. the default, ``"auto"``: the fastest backend that works on this machine.

Backends are imported lazily, so ``import tinynet`` never imports Numba or CuPy.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tinynet.errors import BackendError

log = logging.getLogger("tinynet")

ENV_VAR = "TINYNET_BACKEND"
DEFAULT = "auto"

# name -> (module, class). The modules live in the top-level kernels/ folder.
_REGISTRY: dict[str, tuple[str, str]] = {
    "numpy": ("tinynet.kernels.numpy_backend", "NumpyBackend"),
    "numba": ("tinynet.kernels.numba.backend", "NumbaBackend"),
    "cupy": ("tinynet.kernels.cupy.backend", "CupyBackend"),
}
# `auto` tries these in order and takes the first that is registered and usable.
_AUTO_PREFERENCE = ("cupy", "numba", "numpy")
# The library each backend needs: `auto` passes over a backend whose library is absent quietly,
# but warns when it is installed and still cannot run (a broken setting, a missing driver).
_LIBRARY = {"numba": "numba", "cupy": "cupy"}

# The activations every backend implements, and the integer code compiled kernels know each by
# (one table: the Numba and CUDA kernels take their codes from it). An activation with a
# parameter takes it as ``alpha`` (leaky_relu: the slope for z <= 0); the others ignore it.
ACTIVATIONS = ("identity", "step", "sigmoid", "tanh", "relu", "softmax", "leaky_relu")
ACTIVATION_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}

_instances: dict[str, Backend] = {}
_explicit: str | None = None


class Collective(Protocol):
    """What a backend may ask of the ranks of a data-parallel run, and all it may ask:
    tinynet.distributed.MPI implements it; tests/collective_fake.py fakes it with threads.

    Every rank holds the same model and calls the same collectives in the same order."""

    rank: int  # this process's place among the ranks, 0..size-1
    size: int  # how many ranks
    device_collective: str  # how allreduce_on_device sums: "nccl" (in a CUDA graph) or "mpi"

    def shard(self, first: int, last: int) -> tuple[int, int]:
        """This rank's contiguous rows of the global batch [first, last)."""
        ...

    def allreduce(self, buffer: np.ndarray, what: str) -> None:
        """buffer (host, 1-D) <- its sum over the ranks, in place; ``what`` names the wait in
        the error that a rank which never answers causes."""
        ...

    def allreduce_on_device(self, buffer: Any) -> None:
        """buffer (a 1-D device array) <- its sum over the ranks, in place, on the current
        stream."""
        ...

    def compiled_allreduce(self, dtype: Any) -> tuple | None:
        """What compiled code calls to sum a flat buffer of ``dtype``: (address of a C function
        with MPI_Allreduce's signature, communicator, datatype, sum-operation handles, as
        integers of one width); None where there is none (the backend then runs kernel by
        kernel)."""
        ...


class Backend(abc.ABC):
    """The contract every backend implements: an array module ``xp`` and these kernels.

    Arrays are batch-first: ``x`` (batch, in), ``W`` (out, in) as in the seeds' X_hidden = W·X,
    ``b`` (out,), ``y``/``z``/``dz`` (batch, out). Floats are float32 or float64, and every
    kernel keeps the dtype of its inputs. The NumPy backend (kernels/numpy_backend.py) is the
    reference implementation; the others are tested against it. A class that leaves one of the
    abstract kernels out cannot be instantiated, so no kernel falls back to another backend's
    code without a word (tests/test_backend.py checks every registered backend).
    """

    name: str = "?"
    xp: Any = np

    # -- arrays -------------------------------------------------------------------------------
    @abc.abstractmethod
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """``x`` as an array of this backend (no copy when it already is one of that dtype)."""

    @abc.abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """A backend array as a NumPy array (a copy from the device for a GPU backend)."""

    # -- forward ------------------------------------------------------------------------------
    @abc.abstractmethod
    def matmul(self, a: Any, b: Any) -> Any:
        """a @ b: (m, k) @ (k, n) -> (m, n)."""

    @abc.abstractmethod
    def dense_forward(
        self, x: Any, W: Any, b: Any | None, activation: str, alpha: float = 0.0
    ) -> Any:
        """y = f(x W^T + b), bias and activation fused: x (batch, in), W (out, in), b (out,) or
        None -> y (batch, out). ``alpha``: the activation's parameter, if it has one."""

    # -- backward -----------------------------------------------------------------------------
    @abc.abstractmethod
    def activation_backward(self, activation: str, y: Any, dy: Any, alpha: float = 0.0) -> Any:
        """dz = dy * f'(z), from the saved output y = f(z) (sigmoid: y (1 - y)); (batch, out)."""

    @abc.abstractmethod
    def weight_grad(self, dz: Any, x: Any) -> Any:
        """dE/dW = dz^T x: dz (batch, out), x (batch, in) -> (out, in)."""

    @abc.abstractmethod
    def bias_grad(self, dz: Any) -> Any:
        """dE/db = the sum of dz over the batch: (batch, out) -> (out,)."""

    # -- losses -------------------------------------------------------------------------------
    @abc.abstractmethod
    def squared_error(
        self, y: Any, t: Any, scale: float, reduction: str, grad: bool = True
    ) -> tuple[Any, Any | None]:
        """E = scale * sum_k (t_k - y_k)^2 per sample, averaged over the batch ("mean") or added
        ("sum"): (E as a 0-d array, dE/dy (batch, out) or None)."""

    @abc.abstractmethod
    def softmax_cross_entropy(
        self, p: Any, t: Any, reduction: str, grad: bool = True
    ) -> tuple[Any, Any | None]:
        """E = -sum_k t_k log p_k per sample for softmax outputs p: (E as a 0-d array,
        dE/dz = p - t (batch, out) or None). The loss stays on the device: the trainer adds
        losses up without waiting for each."""

    @abc.abstractmethod
    def sigmoid_cross_entropy(
        self, p: Any, t: Any, reduction: str, grad: bool = True
    ) -> tuple[Any, Any | None]:
        """E = -sum_k [t_k log p_k + (1 - t_k) log(1 - p_k)] per sample for sigmoid outputs p
        (each output a yes/no): (E as a 0-d array, dE/dz = p - t or None)."""

    # -- update and data ----------------------------------------------------------------------
    @abc.abstractmethod
    def sgd_update(
        self,
        w: Any,
        g: Any,
        lr: float,
        velocity: Any | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        """In place, torch.optim.SGD's step (dampening 0): g <- g + weight_decay w; with a
        velocity, v <- momentum v + g and d = g + momentum v (nesterov) or v, else d = g;
        w <- w - lr d."""

    @abc.abstractmethod
    def adam_update(
        self,
        w: Any,
        g: Any,
        m: Any,
        v: Any,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        step: int,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        """In place, torch.optim.Adam's update number ``step`` (from 1), or AdamW's with
        ``decoupled``: w <- w (1 - lr weight_decay) (AdamW) or g <- g + weight_decay w (Adam);
        m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
        w <- w - lr / (1 - b1^step) m / (sqrt(v) / sqrt(1 - b2^step) + eps)."""

    @abc.abstractmethod
    def rescale(self, x: Any, scale: float, offset: float, dtype: Any) -> Any:
        """x * scale + offset as ``dtype``: a uint8 batch (batch, in) into network inputs."""

    # -- whole stretches of an epoch (optional) -----------------------------------------------
    def can_train_batches(self, spec: EpochSpec, batch_size: int) -> bool:
        """Whether the trainer should hand this model and batch size to ``train_batches``."""
        return False

    def train_batches(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int) -> Any:
        """Train on the rows ``X[order]`` in steps of ``batch_size`` as the kernel-by-kernel
        loop would (same batches, same updates), in place on the arrays of ``spec``; return the
        sum of the per-sample losses (a float, or a 0-d device array). X (n, in) and T (n, out)
        are backend arrays, ``order`` int64 indices. Called only where ``can_train_batches``
        said True."""
        raise NotImplementedError(f"backend {self.name!r} has no train_batches")

    def can_train_batches_distributed(self, spec: EpochSpec, distributed: Collective) -> bool:
        """Whether ``train_batches_distributed`` can run this model as a rank of
        ``distributed``; else the trainer's kernel-by-kernel loop averages the gradients
        between steps."""
        return False

    def train_batches_distributed(
        self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int, distributed: Collective
    ) -> Any:
        """``train_batches`` as one rank of a data-parallel run: each global batch of
        ``batch_size`` rows of X[order] split into the ranks' contiguous shards
        (``distributed.shard``), the gradients summed over the ranks each step; the sum of this
        rank's rows' losses. Called only where ``can_train_batches_distributed`` said True."""
        raise NotImplementedError(f"backend {self.name!r} has no train_batches_distributed")

    def step_threads(self, key: Any, samples: int) -> contextlib.AbstractContextManager:
        """A context the trainer runs a stretch of ``samples`` samples of kernel-by-kernel
        steps in, ``key`` naming its kind: where a CPU backend sizes its BLAS thread pools
        (kernels/threads.py). Nothing by default."""
        return contextlib.nullcontext()

    # -- the machine --------------------------------------------------------------------------
    def info(self) -> dict[str, str]:
        """Versions and device, for ``tinynet info`` and benchmark reports."""
        return {"backend": self.name}

    def synchronize(self) -> None:  # noqa: B027 - optional: the CPU backends need nothing
        """Wait until queued device work is done (timing); a no-op on the CPU."""

    def __repr__(self) -> str:
        return f"<tinynet backend {self.name!r}>"


def adam_scalars(
    lr: float,
    betas: tuple[float, float],
    eps: float,
    step: int,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> tuple[float, float, float, float, float, float, float]:
    """The scalars of Adam's update number ``step`` as the fused kernels take them (Numba's
    and CUDA's adam_step): (b1, b2, step_size = lr / (1 - b1^step), bias_root =
    sqrt(1 - b2^step), eps, l2 = Adam's weight_decay (0 for AdamW), shrink = AdamW's
    1 - lr weight_decay (1 for Adam)), in float64."""
    b1, b2 = betas
    return (
        b1,
        b2,
        lr / (1 - b1**step),
        math.sqrt(1 - b2**step),
        eps,
        0.0 if decoupled else weight_decay,
        1 - lr * weight_decay if decoupled else 1.0,
    )


@dataclass
class LayerSpec:
    """One Dense layer for ``train_batches``: its live arrays (updated in place) and settings."""

    W: Any  # (out, in)
    b: Any | None  # (out,), None without bias
    activation: str
    train_W: bool  # False when frozen
    train_b: bool
    vW: Any | None = None  # momentum velocities (SGD) or first moments (Adam), same shapes
    vb: Any | None = None
    alpha: float = 0.0  # the activation's parameter (leaky_relu's slope)
    sW: Any | None = None  # Adam's second moments, same shapes
    sb: Any | None = None


@dataclass
class EpochSpec:
    """Everything ``train_batches`` needs, as arrays and numbers (no tinynet objects)."""

    layers: list[LayerSpec]
    in_scale: float  # inputs are X * in_scale + in_offset (a Rescaling layer, or 1 and 0)
    in_offset: float
    loss: str  # "squared_error" or "cross_entropy" (after a softmax)
    loss_scale: float
    reduction: str  # "mean" or "sum" over each batch
    lr: float
    momentum: float
    nesterov: bool = False  # SGD's Nesterov momentum
    weight_decay: float = 0.0  # SGD's weight decay (g + weight_decay w)
    # Adam's (beta1, beta2, eps, weight_decay, decoupled) for Adam and AdamW; None: SGD
    adam: tuple[float, float, float, float, bool] | None = None
    step: int = 0  # the updates every trained parameter has had (Adam's bias correction)


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


_threads: int | None = None  # set_threads: a fixed count, or None to let each backend choose


def set_threads(threads: int | None) -> None:
    """Run every CPU call (Numba's teams, the BLAS pools) on ``threads`` threads, at most the
    cores this process may use; ``None`` (the default) lets the backends choose per kind of
    call from the machine's load and measured rates (kernels/threads.py). For users who know
    their machine: on one shared with other work, 1 is often fastest."""
    global _threads
    if threads is not None:
        from tinynet.errors import positive_int

        threads = positive_int("threads", threads)
    _threads = threads


def get_threads() -> int | None:
    """The count set_threads fixed, or None when the backends choose."""
    return _threads


@contextlib.contextmanager
def use_threads(threads: int | None) -> Iterator[None]:
    """``with use_threads(1):`` runs the block on that thread count, then restores it."""
    previous = _threads
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(previous)


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array (or anything array-like) as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)
