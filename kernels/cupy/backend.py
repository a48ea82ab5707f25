"""``CupyBackend``: CuPy arrays on the current CUDA device, fused elementwise kernels and the
GPU training plan."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Any

import numpy as np

from tinynet.backend import Backend, Collective, EpochSpec, adam_scalars
from tinynet.distributed import launched_local_rank, use_node_gpu
from tinynet.errors import BackendError
from tinynet.kernels.cupy.cublas import Cublas
from tinynet.kernels.cupy.plan import EpochPlan
from tinynet.kernels.cupy.sources import ACT, ELEMENTWISE
from tinynet.kernels.numpy_backend import NumpyBackend
from tinynet.system import install_hint


def graphs_from_env() -> bool:
    """TINYNET_CUDA_GRAPHS: "1" turns the CUDA-graph mode on, "0" or unset leaves it off."""
    value = os.environ.get("TINYNET_CUDA_GRAPHS", "").strip()
    if value not in ("", "0", "1"):
        raise BackendError(f"TINYNET_CUDA_GRAPHS must be 0 or 1, got {value!r}")
    return value == "1"


def import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' cannot be used: CuPy is not installed; install the wheel for your "
            f"CUDA: {install_hint('gpu-cuda12', 'gpu-cuda13')}"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old, ...
        raise BackendError(
            f"backend 'cupy' cannot be used: no usable CUDA driver ({exc}); check nvidia-smi"
        ) from exc
    if count == 0:
        raise BackendError("backend 'cupy' cannot be used: no CUDA device found")
    return cupy


class CupyBackend(Backend):
    """CuPy arrays on the current CUDA device."""

    name = "cupy"
    # The reference's kernels are written against ``self.xp``; these run as they are on CuPy
    # arrays (cuBLAS GEMMs, CuPy reductions), taken on purpose, one by one.
    asarray = NumpyBackend.asarray
    matmul = NumpyBackend.matmul
    weight_grad = NumpyBackend.weight_grad
    bias_grad = NumpyBackend.bias_grad
    softmax_cross_entropy = NumpyBackend.softmax_cross_entropy
    sigmoid_cross_entropy = NumpyBackend.sigmoid_cross_entropy

    def __init__(self) -> None:
        cp = self.xp = import_cupy()
        # one rank of an MPI job: the node's GPUs in turn, before any array or handle exists
        # (MPI() does the same, but only when it is made after CuPy was imported)
        local_rank = launched_local_rank()
        if local_rank is not None:
            use_node_gpu(cp, local_rank)
        # the fused elementwise kernels (sources.ELEMENTWISE), compiled by CuPy on first launch
        names = ("bias_act", "act_grad", "sgd", "momentum", "adam", "rescale", "se_grad")
        (self._bias_act, self._act_grad, self._sgd, self._momentum, self._adam, self._rescale,
         self._se_grad) = (ELEMENTWISE[name].build(cp) for name in names)  # fmt: skip
        # train_batches: CUDA-graph mode, the cuBLAS handle, kernels per dtype, and the
        # preallocated state of the last model trained (see EpochPlan)
        self.graphs = graphs_from_env()
        # cuBLAS handles are tied to the device current when they are made: one per device
        self._blas: dict[int, Cublas] = {}
        self._blas_error: Exception | None = None  # why a handle could not be made
        self._epoch_kernels: dict = {}
        self._epochs: dict = {}
        # one epoch at a time: the buffers, the step counter and the cuBLAS handle are shared
        self._epoch_lock = threading.Lock()

    def info(self) -> dict[str, str]:
        cp = self.xp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return {
            "backend": self.name,
            "cupy": cp.__version__,
            "device": name,
            "cuda_runtime": str(cp.cuda.runtime.runtimeGetVersion()),
            "tf32": "on (CUPY_TF32=1)" if os.environ.get("CUPY_TF32") == "1" else "off",
            "cuda_graphs": "on" if self.graphs else "off (TINYNET_CUDA_GRAPHS=1 turns it on)",
        }

    def synchronize(self) -> None:
        # the stream work is queued on (a `with stream:` block's, not only the null stream)
        self.xp.cuda.get_current_stream().synchronize()

    # -- arrays -----------------------------------------------------------------------------
    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x)

    def _quiet_limits(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the GPU raises no floating-point warnings

    # -- forward ----------------------------------------------------------------------------
    def activate(self, z: Any, activation: str, alpha: float = 0.0) -> Any:
        if activation == "softmax":
            return NumpyBackend.activate(self, z, activation)
        dt = z.dtype.type
        return self._bias_act(z, dt(0), ACT[activation], dt(alpha), z)

    def dense_forward(self, x: Any, W: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
        z = self.xp.dot(x, W.T)
        if activation == "softmax":
            if b is not None:
                z += b
            return NumpyBackend.activate(self, z, activation)
        dt = z.dtype.type
        bias = b if b is not None else dt(0)
        return self._bias_act(z, bias, ACT[activation], dt(alpha), z)

    # -- backward ---------------------------------------------------------------------------
    def activation_backward(self, activation: str, y: Any, dy: Any, alpha: float = 0.0) -> Any:
        if activation == "softmax":
            return NumpyBackend.activation_backward(self, activation, y, dy)
        return self._act_grad(y, dy, ACT[activation], y.dtype.type(alpha))

    # -- losses -----------------------------------------------------------------------------
    def squared_error(self, y: Any, t: Any, scale: float, reduction: str, grad: bool = True):
        loss, _ = NumpyBackend.squared_error(self, y, t, scale, reduction, grad=False)
        if not grad:
            return loss, None
        n = y.shape[0] if reduction == "mean" else 1
        dtype = np.result_type(y, t)
        return loss, self._se_grad(y, t, dtype.type(2 * scale / n))

    # -- update and data --------------------------------------------------------------------
    def sgd_update(
        self,
        w: Any,
        g: Any,
        lr: float,
        velocity: Any = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        dt = w.dtype.type
        if velocity is None:
            self._sgd(g, dt(lr), dt(weight_decay), w)
        else:
            self._momentum(g, dt(lr), dt(momentum), bool(nesterov), dt(weight_decay), w, velocity)

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
        dt = w.dtype.type
        scalars = map(dt, adam_scalars(lr, betas, eps, step, weight_decay, decoupled))
        self._adam(g, *scalars, w, m, v)

    def rescale(self, x: Any, scale: float, offset: float, dtype: Any) -> Any:
        dt = np.dtype(dtype).type
        return self._rescale(x, dt(scale), dt(offset), self.xp.empty(x.shape, dtype))

    # -- whole epochs -----------------------------------------------------------------------
    def can_train_batches(self, spec: EpochSpec, batch_size: int) -> bool:
        # a softmax before the last layer couples a row's units: the kernel-by-kernel path
        if any(layer.activation == "softmax" for layer in spec.layers[:-1]):
            return False
        return self._cublas() is not None

    def _cublas(self) -> Cublas | None:
        """tinynet's own cuBLAS handle, made on first use. Where it cannot be made (cuBLAS not
        found, or too old to have a function it needs), training runs kernel by kernel through
        CuPy's cuBLAS instead: the same results, slower, and a warning that says why."""
        device = self.xp.cuda.Device().id
        with self._epoch_lock:
            if device not in self._blas and self._blas_error is None:
                try:
                    self._blas[device] = Cublas(self.xp)
                except (BackendError, OSError, AttributeError, RuntimeError) as exc:
                    self._blas_error = exc
                    warnings.warn(
                        f"tinynet's cupy backend cannot drive cuBLAS itself ({exc}): whole "
                        "epochs and CUDA graphs are off, training runs kernel by kernel",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        return self._blas.get(device)

    def train_batches(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int) -> Any:
        """SGD on X[order] in steps of batch_size; the sum of the per-sample losses as a 0-d
        device array (read by the trainer once per epoch)."""
        return self._run_plan(spec, X, T, order, batch_size, None)

    def can_train_batches_distributed(self, spec: EpochSpec, distributed: Collective) -> bool:
        return self.can_train_batches(spec, 0)

    def train_batches_distributed(
        self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int, distributed: Collective
    ) -> Any:
        """train_batches as one rank of ``distributed``: the gradients summed over the ranks
        in every step, by NCCL on the device (captured into the CUDA graphs with the kernels
        around it), or by MPI through host memory where ranks share a GPU (no graphs then:
        the host copy waits for the step)."""
        return self._run_plan(spec, X, T, order, batch_size, distributed)

    def _run_plan(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch: int, distributed):
        blas = self._cublas()  # takes the lock itself: before the block below, not inside it
        if blas is None:
            raise BackendError(f"backend 'cupy': no fused epochs here ({self._blas_error})")
        ranks = None if distributed is None else (id(distributed), distributed.rank)
        key = (self.xp.cuda.Device().id, *EpochPlan.key(spec, X, T, batch), ranks)
        graphs = self.graphs and (distributed is None or distributed.device_collective == "nccl")
        with self._epoch_lock:
            epoch = self._epochs.get(key)
            if epoch is None:
                self._epochs.clear()  # buffers of other models and batch sizes: freed
                epoch = self._epochs[key] = EpochPlan(self, blas, spec, X, T, batch, distributed)
            return epoch.run(spec, order, graphs)
