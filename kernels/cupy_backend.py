"""The CuPy GPU backend: the reference's kernels on CUDA arrays, the elementwise steps fused.

* Arrays are ``cupy.ndarray``; ``asarray`` uploads, ``to_numpy`` downloads. ``fit`` uploads the
  training set once (uint8 stays uint8) and gathers and rescales each batch on the device.
* GEMMs: ``cupy.dot`` hands cuBLAS the transposed views (``W.T``) as transpose flags, not copies.
* Fused ``ElementwiseKernel``s, built once when the backend is created and compiled by CuPy on
  first use per dtype (then cached on disk): bias + activation, activation gradient times delta,
  SGD and momentum updates, uint8 -> float rescaling, the squared-error gradient. Softmax and the
  losses' sums use the reference code on CuPy arrays (a reduction each).
* ``train_epoch`` (``_Epoch``) runs built-in models without the per-kernel Python: every array
  preallocated per batch size, each batch gathered from the uint8 images by index on the device,
  the batch counter and learning rate in device memory, GEMMs through cuBLAS on a handle of our
  own, the output layer's softmax, cross-entropy and gradient in one kernel, plain SGD folded
  into the gradient GEMMs (W <- W - lr d^T a with beta = 1; a bias's sum over the batch is the
  GEMM d^T 1), losses summed on the device with atomics: no host <-> device transfer and no sync
  inside an epoch. With ``graphs=True`` (or ``TINYNET_CUDA_GRAPHS=1``) up to
  16 steps are captured as one CUDA graph and replayed for the full batches (the partial batch at
  the end of an epoch runs eagerly).
* FP32 by default. CuPy uses TF32 tensor cores only when ``CUPY_TF32=1`` is set: opt in there
  (the fused epoch's cuBLAS handle follows the same variable).
* Nothing here imports CuPy at module import time; ``CupyBackend()`` raises BackendError saying
  why the GPU cannot be used (package missing, no driver, no device) and how to fix it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings
import weakref
from typing import Any

import numpy as np

from tinynet.backend import Backend, EpochSpec
from tinynet.errors import BackendError
from tinynet.kernels.numpy_backend import NumpyBackend
from tinynet.system import install_hint

ACT = {"identity": 0, "step": 1, "sigmoid": 2, "tanh": 3, "relu": 4}  # softmax: reference code
ROW_ACT = {**ACT, "softmax": 5}  # the per-row kernels of the fused epoch

_BIAS_ACT = """
    T v = z + b;
    if (act == 2) y = (T)1 / ((T)1 + exp(-v));
    else if (act == 3) y = tanh(v);
    else if (act == 4) y = v < (T)0 ? (T)0 : v;
    else if (act == 1) y = v >= (T)0 ? (T)1 : (T)0;
    else y = v;
"""
_ACT_GRAD = """
    if (act == 2) dz = dy * y * ((T)1 - y);
    else if (act == 3) dz = dy * ((T)1 - y * y);
    else if (act == 4) dz = y > (T)0 ? dy : (T)0;
    else if (act == 1) dz = (T)0;
    else dz = dy;
"""


def graphs_from_env() -> bool:
    """TINYNET_CUDA_GRAPHS: "1" turns the CUDA-graph mode on, "0" or unset leaves it off."""
    value = os.environ.get("TINYNET_CUDA_GRAPHS", "").strip()
    if value not in ("", "0", "1"):
        raise BackendError(f"TINYNET_CUDA_GRAPHS must be 0 or 1, got {value!r}")
    return value == "1"


def _import_cupy() -> Any:
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

    def __init__(self) -> None:
        cp = self.xp = _import_cupy()
        self._bias_act = cp.ElementwiseKernel(
            "T z, T b, int32 act", "T y", _BIAS_ACT, "tinynet_bias_act"
        )
        self._act_grad = cp.ElementwiseKernel(
            "T y, T dy, int32 act", "T dz", _ACT_GRAD, "tinynet_act_grad"
        )
        self._sgd = cp.ElementwiseKernel("T g, T lr", "T w", "w -= lr * g", "tinynet_sgd")
        self._momentum = cp.ElementwiseKernel(
            "T g, T lr, T m", "T w, T v", "v = m * v + g; w -= lr * v", "tinynet_momentum"
        )
        self._rescale = cp.ElementwiseKernel(
            "X x, T scale, T offset", "T y", "y = (T)x * scale + offset", "tinynet_rescale"
        )
        self._se_grad = cp.ElementwiseKernel(
            "T y, T t, T c", "T dy", "dy = c * (y - t)", "tinynet_se_grad"
        )
        # train_epoch: CUDA-graph mode, the cuBLAS handle, kernels per dtype, and the
        # preallocated state of the last model trained (see _Epoch)
        self.graphs = graphs_from_env()
        # cuBLAS handles are tied to the device current when they are made: one per device
        self._blas: dict[int, _Cublas] = {}
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
    def activate(self, z: Any, activation: str) -> Any:
        if activation == "softmax":
            return NumpyBackend.activate(self, z, activation)
        return self._bias_act(z, z.dtype.type(0), ACT[activation], z)

    def dense_forward(self, x: Any, W: Any, b: Any, activation: str) -> Any:
        z = self.xp.dot(x, W.T)
        if activation == "softmax":
            if b is not None:
                z += b
            return NumpyBackend.activate(self, z, activation)
        bias = b if b is not None else z.dtype.type(0)
        return self._bias_act(z, bias, ACT[activation], z)

    # -- backward ---------------------------------------------------------------------------
    def activation_backward(self, activation: str, y: Any, dy: Any) -> Any:
        if activation == "softmax":
            return NumpyBackend.activation_backward(self, activation, y, dy)
        return self._act_grad(y, dy, ACT[activation])

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
        self, w: Any, g: Any, lr: float, velocity: Any = None, momentum: float = 0.0
    ) -> None:
        dt = w.dtype.type
        if velocity is None:
            self._sgd(g, dt(lr), w)
        else:
            self._momentum(g, dt(lr), dt(momentum), w, velocity)

    def rescale(self, x: Any, scale: float, offset: float, dtype: Any) -> Any:
        dt = np.dtype(dtype).type
        return self._rescale(x, dt(scale), dt(offset), self.xp.empty(x.shape, dtype))

    # -- whole epochs -----------------------------------------------------------------------
    def fuses(self, spec: EpochSpec, batch_size: int) -> bool:
        # a softmax before the last layer couples a row's units: the kernel-by-kernel path
        if any(layer.activation == "softmax" for layer in spec.layers[:-1]):
            return False
        return self._cublas() is not None

    def _cublas(self) -> _Cublas | None:
        """tinynet's own cuBLAS handle, made on first use. Where it cannot be made (cuBLAS not
        found, or too old to have a function it needs), training runs kernel by kernel through
        CuPy's cuBLAS instead: the same results, slower, and a warning that says why."""
        device = self.xp.cuda.Device().id
        with self._epoch_lock:
            if device not in self._blas and self._blas_error is None:
                try:
                    self._blas[device] = _Cublas(self.xp)
                except (BackendError, OSError, AttributeError, RuntimeError) as exc:
                    self._blas_error = exc
                    warnings.warn(
                        f"tinynet's cupy backend cannot drive cuBLAS itself ({exc}): whole "
                        "epochs and CUDA graphs are off, training runs kernel by kernel",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        return self._blas.get(device)

    def train_epoch(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int) -> Any:
        """SGD on X[order] in steps of batch_size; the sum of the per-sample losses as a 0-d
        device array (read by the trainer once per epoch)."""
        if self._cublas() is None:
            raise BackendError(f"backend 'cupy': no fused epochs here ({self._blas_error})")
        key = _Epoch.key(spec, X, T, batch_size)
        with self._epoch_lock:
            epoch = self._epochs.get(key)
            if epoch is None:
                self._epochs.clear()  # buffers of other models and batch sizes: freed
                epoch = self._epochs[key] = _Epoch(self, spec, X, T, batch_size)
            return epoch.run(spec, order, self.graphs)


# -- the fused epoch ---------------------------------------------------------------------------
def cublas_candidates(runtime_version: int, pathfinder_path: str | None = None) -> list[str]:
    """Where to look for cuBLAS, best first: the major version of CuPy's CUDA runtime
    (``runtimeGetVersion()``, e.g. 12080 -> libcublas.so.12), then what CuPy's own library
    finder reports, then the unversioned name. Never another major version: its GEMMs could
    run against a runtime they were not built for."""
    major = runtime_version // 1000
    names = [f"libcublas.so.{major}"]
    if pathfinder_path:
        names.append(pathfinder_path)
    return [*names, "libcublas.so"]


def _load_cublas(cp: Any) -> ctypes.CDLL:
    """The cuBLAS library CuPy uses; BackendError saying why when it cannot be loaded."""
    try:
        import cupy.cublas  # noqa: F401  (loads CuPy's cuBLAS into the process)
    except ImportError as exc:  # CuPy installed without its cuBLAS
        raise BackendError(f"backend 'cupy': CuPy cannot load cuBLAS ({exc})") from exc
    found = None
    with contextlib.suppress(Exception):  # CuPy >= 14 finds its libraries with cuda.pathfinder
        from cuda.pathfinder import load_nvidia_dynamic_lib

        found = load_nvidia_dynamic_lib("cublas").abs_path
    paths = cublas_candidates(cp.cuda.runtime.runtimeGetVersion(), found)
    for path in paths:
        with contextlib.suppress(OSError):
            return ctypes.CDLL(path)
    raise BackendError(f"backend 'cupy': cannot load cuBLAS (tried {', '.join(paths)})")


class _Cublas:
    """cuBLAS called directly on a handle of tinynet's own, with its workspace set and bound to
    the stream in use. CuPy refuses cuBLAS calls during stream capture, and a GEMM in a CUDA graph
    must not allocate; calling the library ourselves allows both. Arrays are C-ordered. alpha and
    beta are read from device memory when the GEMM runs (pointer mode DEVICE), so a captured
    update follows a learning rate changed after the capture."""

    WORKSPACE_BYTES = 32 << 20  # NVIDIA's suggestion for Hopper

    def __init__(self, cp: Any) -> None:
        lib = self._lib = _load_cublas(cp)
        vp, i = ctypes.c_void_p, ctypes.c_int
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
        lib.cublasDestroy_v2.argtypes = [vp]
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
        lib.cublasSetMathMode.argtypes = [vp, i]
        lib.cublasSetPointerMode_v2.argtypes = [vp, i]
        for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
            getattr(lib, name).argtypes = [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i]
        self.handle = vp()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetPointerMode_v2(self.handle, 1), "cublasSetPointerMode")  # DEVICE
        # destroyed with this object (or at exit), on the device it was made on
        self._finalizer = weakref.finalize(self, lib.cublasDestroy_v2, self.handle)
        self.workspace = cp.empty(self.WORKSPACE_BYTES, dtype=cp.uint8)
        self._set_workspace()
        tf32 = os.environ.get("CUPY_TF32") == "1"
        self._check(lib.cublasSetMathMode(self.handle, 3 if tf32 else 0), "cublasSetMathMode")
        self._stream = -1

    def _set_workspace(self) -> None:
        self._check(
            self._lib.cublasSetWorkspace_v2(
                self.handle, self.workspace.data.ptr, self.WORKSPACE_BYTES
            ),
            "cublasSetWorkspace",
        )

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def bind(self, stream_ptr: int) -> None:
        if stream_ptr != self._stream:
            self._check(self._lib.cublasSetStream_v2(self.handle, stream_ptr), "cublasSetStream")
            # cublasSetStream resets the workspace to cuBLAS's own pool (cuBLAS docs,
            # cublasSetStream), after which GEMMs allocate, captured ones included: set ours again
            self._set_workspace()
            self._stream = stream_ptr

    def gemm(
        self,
        c: Any,
        a: Any,
        b: Any,
        alpha: int,
        beta: int,
        trans_a: bool = False,
        trans_b: bool = False,
    ) -> None:
        """c <- alpha op(a) op(b) + beta c, all C-ordered, op(x) = x^T where asked. alpha and
        beta: device addresses of scalars of c's dtype. cuBLAS is column-major, where a C-ordered
        matrix is its transpose: so it computes c^T = op(b)^T op(a)^T."""
        if not (c.flags.c_contiguous and a.flags.c_contiguous and b.flags.c_contiguous):
            # cuBLAS would read the wrong elements: never a silent wrong answer
            raise BackendError("cuBLAS gemm needs C-contiguous arrays (a tinynet bug: report it)")
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        fn = self._lib.cublasSgemm_v2 if c.dtype == np.float32 else self._lib.cublasDgemm_v2
        status = fn(
            self.handle, int(trans_b), int(trans_a), n, m, k, alpha, b.data.ptr, b.shape[1],
            a.data.ptr, a.shape[1], beta, c.data.ptr, n,
        )  # fmt: skip
        self._check(status, "cublas gemm")


# Per-row kernels (one thread per sample) for the output layer. T is the float type.
_ROW_KERNELS = r"""
__device__ void softmax_row(T* zr, const T* bias, int classes) {
  // zr <- softmax(zr + bias) in place, shifted by the row's maximum
  T m = zr[0] + bias[0];
  for (int k = 0; k < classes; ++k) {
    T v = zr[k] + bias[k];
    zr[k] = v;
    m = v > m ? v : m;
  }
  T s = 0;
  for (int k = 0; k < classes; ++k) {
    T e = exp(zr[k] - m);
    zr[k] = e;
    s += e;
  }
  for (int k = 0; k < classes; ++k) zr[k] /= s;
}

extern "C" __global__ void tinynet_softmax_ce(
    T* z, const T* bias, const T* targets, const long long* order, const long long* step,
    long long batch, int rows, int classes, T inv_n, T tiny, T* delta, double* loss_sum) {
  // z <- softmax(z + bias) in place; loss_sum += -sum_k t_k log max(p_k, tiny);
  // delta = (p - t) * inv_n, the gradient of the loss with respect to z + bias.
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  T* zr = z + (long long)r * classes;
  T* dr = delta + (long long)r * classes;
  const T* tr = targets + order[step[0] * batch + r] * classes;
  softmax_row(zr, bias, classes);
  double loss = 0;
  for (int k = 0; k < classes; ++k) {
    T p = zr[k];
    loss -= (double)tr[k] * log((double)(p > tiny ? p : tiny));
    dr[k] = (p - tr[k]) * inv_n;
  }
  atomicAdd(loss_sum, loss);
}

extern "C" __global__ void tinynet_squared_error(
    const T* y, const T* targets, const long long* order, const long long* step,
    long long batch, int rows, int classes, int act, T scale, T coef, T* delta,
    double* loss_sum) {
  // loss_sum += scale * sum_k (y_k - t_k)^2; delta = coef (y - t) * f'(z), coef = 2 scale / n,
  // with f' from the saved output y (act: 0 identity, 1 step, 2 sigmoid, 3 tanh, 4 relu,
  // 5 softmax, whose Jacobian couples the row).
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  const T* yr = y + (long long)r * classes;
  T* dr = delta + (long long)r * classes;
  const T* tr = targets + order[step[0] * batch + r] * classes;
  double loss = 0;
  T dot = 0;
  for (int k = 0; k < classes; ++k) {
    T v = yr[k], diff = v - tr[k], g = coef * diff;
    loss += (double)diff * diff;
    if (act == 1) g = 0;
    else if (act == 2) g *= v * (1 - v);
    else if (act == 3) g *= 1 - v * v;
    else if (act == 4) g *= v > 0 ? 1 : 0;
    dr[k] = g;
    dot += g * v;
  }
  if (act == 5)
    for (int k = 0; k < classes; ++k) dr[k] = yr[k] * (dr[k] - dot);
  atomicAdd(loss_sum, loss * (double)scale);
}

extern "C" __global__ void tinynet_softmax_rows(T* z, const T* bias, int rows, int classes) {
  // z <- softmax(z + bias), row by row, in place
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  softmax_row(z + (long long)r * classes, bias, classes);
}

extern "C" __global__ void tinynet_next_step(long long* step) { step[0] += 1; }
"""


class _Kernels:
    """The fused epoch's kernels for one dtype, built once (compiled by CuPy on first launch)."""

    def __init__(self, cp: Any, dtype: np.dtype) -> None:
        ctype = "float" if dtype == np.float32 else "double"
        module = cp.RawModule(code=f"typedef {ctype} T;\n" + _ROW_KERNELS)
        self.softmax_ce = module.get_function("tinynet_softmax_ce")
        self.squared_error = module.get_function("tinynet_squared_error")
        self.softmax_rows = module.get_function("tinynet_softmax_rows")
        self.next_step = module.get_function("tinynet_next_step")
        self.gather = cp.ElementwiseKernel(
            "raw X x, raw int64 order, raw int64 step, int64 batch, int64 width, T scale, T offset",
            "T y",
            "long long r = i / width;"
            "y = (T)x[order[step[0] * batch + r] * width + (i - r * width)] * scale + offset",
            "tinynet_gather",
        )
        # momentum: v <- m v + grad is a GEMM (beta = m), then w <- w - lr v; -lr in device memory
        self.momentum_step = cp.ElementwiseKernel(
            "T v, raw T neg_lr", "T w", "w += neg_lr[0] * v", "tinynet_momentum_step"
        )


class _Epoch:
    """Preallocated buffers, kernels and (in graph mode) the captured steps of one model, dataset
    and batch size. A step reads its batch's indices from ``order`` at ``step * batch`` and
    moves ``step`` on, both in device memory, so one captured run of steps serves them all."""

    STEPS_PER_GRAPH = 16

    @staticmethod
    def key(spec: EpochSpec, X: Any, T: Any, batch_size: int) -> tuple:
        """What the captured pointers and constants depend on: a change means a new _Epoch."""
        arrays = [X, T]
        for layer in spec.layers:
            arrays += [layer.W, layer.b, layer.vW, layer.vb]
        pointers = tuple(None if a is None else (a.data.ptr, a.shape, a.dtype.str) for a in arrays)
        settings = tuple((layer.activation, layer.train_W, layer.train_b) for layer in spec.layers)
        return (pointers, settings, batch_size, spec.in_scale, spec.in_offset, spec.loss,
                spec.loss_scale, spec.reduction, spec.momentum)  # fmt: skip

    def __init__(self, backend: CupyBackend, spec: EpochSpec, X: Any, T: Any, batch: int) -> None:
        cp = self.cp = backend.xp
        self.blas = backend._cublas()  # this device's handle
        self.layers = spec.layers
        dtype = self.dtype = np.dtype(spec.layers[0].W.dtype)
        dt = dtype.type
        if dtype not in backend._epoch_kernels:
            backend._epoch_kernels[dtype] = _Kernels(cp, dtype)
        self.k = backend._epoch_kernels[dtype]
        self.bias_act, self.act_grad = backend._bias_act, backend._act_grad
        self.X, self.T, self.batch = X, cp.ascontiguousarray(T, dtype), batch
        widths = [spec.layers[0].W.shape[1]] + [layer.W.shape[0] for layer in spec.layers]
        self.A = [cp.zeros((batch, w), dtype) for w in widths]  # activations, A[0] the input
        self.D = [cp.zeros((batch, w), dtype) for w in widths[1:]]  # deltas dE/dz
        self.zero_bias = [cp.zeros(layer.W.shape[0], dtype) for layer in spec.layers]
        # what each layer's step updates: (parameter, velocity or None, is_bias); the gradient
        # is d^T a for W and d^T 1 for a bias, taken as a column (out, 1)
        self.updates = []
        for layer in spec.layers:
            updates = [(layer.W, layer.vW, False)] if layer.train_W else []
            if layer.train_b:
                vb = None if layer.vb is None else layer.vb.reshape(-1, 1)
                updates.append((layer.b.reshape(-1, 1), vb, True))
            self.updates.append(updates)
        self.ones = cp.ones((batch, 1), dtype)
        self.order = cp.zeros(X.shape[0], np.int64)
        self.step = cp.zeros(1, np.int64)
        self.loss = cp.zeros((), np.float64)
        # the GEMMs' alpha and beta, read on the device: 1, 0, momentum, -lr (set per run)
        self.scalars = cp.asarray(np.array([1, 0, spec.momentum, 0], dtype))
        self.one, self.zero, self.beta_m, self.alpha_lr = (
            self.scalars.data.ptr + i * dtype.itemsize for i in range(4)
        )
        self.neg_lr = self.scalars[3:]
        self.in_scale, self.in_offset = dt(spec.in_scale), dt(spec.in_offset)
        self.ce = spec.loss == "cross_entropy"
        self.loss_scale, self.mean = dt(spec.loss_scale), spec.reduction == "mean"
        self.tiny = dt(np.finfo(dtype).tiny)
        self.captured: dict[int, Any] = {}  # steps -> CUDA graph
        self.capture_error: Exception | None = None  # set once a capture failed: eager from then
        self.warm = False  # a full step has run: its kernels are compiled and loaded

    def run(self, spec: EpochSpec, order: Any, graphs: bool) -> Any:
        cp = self.cp
        n = order.shape[0]
        self.order[:n] = order
        self.step.fill(0)
        self.neg_lr.fill(-spec.lr)  # the learning rate may change between epochs
        stream = cp.cuda.get_current_stream()
        self.blas.bind(stream.ptr)
        full, rest = divmod(n, self.batch)
        done = 0
        if graphs and full and not self.warm:  # one eager step before any capture: every
            self._step(self.batch)  # kernel compiled and loaded for these shapes
            done, self.warm = 1, True
        while graphs and done < full and self.capture_error is None:
            steps = min(full - done, self.STEPS_PER_GRAPH)
            try:
                graph = self._graph(steps, stream)
            except Exception as exc:  # nothing of a failed capture ran: go on eagerly
                self.capture_error = exc
                warnings.warn(
                    f"tinynet's cupy backend could not capture a CUDA graph "
                    f"({type(exc).__name__}: {exc}); this model trains without graphs",
                    RuntimeWarning,
                    stacklevel=4,
                )
                break
            graph.launch(stream)
            done += steps
        for _ in range(done, full):
            self._step(self.batch)
            self.warm = True
        if rest:
            self._step(rest)
        total = self.loss.copy()
        self.loss.fill(0)
        return total

    def _graph(self, steps: int, stream: Any) -> Any:
        """``steps`` full steps as one CUDA graph, captured on first use. A call replays the
        STEPS_PER_GRAPH graph and one graph for what is left: a call of 4 batches (1024-sample
        batches in the trainer's 4096-sample calls) is one graph of 4 steps."""
        graph = self.captured.get(steps)
        if graph is None:
            capture = self.cp.cuda.Stream(non_blocking=True)
            try:
                with capture:
                    self.blas.bind(capture.ptr)
                    capture.begin_capture()
                    try:
                        for _ in range(steps):
                            self._step(self.batch)
                    except BaseException:
                        # end the broken capture (its own error would hide the real one)
                        with contextlib.suppress(Exception):
                            capture.end_capture()
                        raise
                    graph = capture.end_capture()
            finally:
                self.blas.bind(stream.ptr)  # never left bound to the capture stream
            self.captured[steps] = graph
        return graph

    def _step(self, nb: int) -> None:
        """Forward, loss and delta, backward and update for the next ``nb`` samples of order."""
        k, blas, layers, A, D = self.k, self.blas, self.layers, self.A, self.D
        last = len(layers) - 1
        dt = self.dtype.type
        inv_n = dt(1 / nb) if self.mean else dt(1)
        x0 = A[0][:nb]
        k.gather(self.X, self.order, self.step, self.batch, x0.shape[1], self.in_scale,
                 self.in_offset, x0)  # fmt: skip
        for i, layer in enumerate(layers):
            z = A[i + 1][:nb]
            blas.gemm(z, A[i][:nb], layer.W, self.one, self.zero, trans_b=True)  # z = a W^T
            b = layer.b if layer.b is not None else self.zero_bias[i]
            if i == last and self.ce:  # bias and softmax in the loss kernel below
                continue
            if layer.activation == "softmax":  # the last layer, before a squared error
                grid = ((nb + 127) // 128,)
                k.softmax_rows(grid, (128,), (z, b, np.int32(nb), np.int32(z.shape[1])))
            else:
                self.bias_act(z, b, ACT[layer.activation], z)
        y, d = A[-1][:nb], D[-1][:nb]
        classes = y.shape[1]
        grid, block = ((nb + 127) // 128,), (128,)
        if self.ce:
            b = layers[-1].b if layers[-1].b is not None else self.zero_bias[-1]
            k.softmax_ce(grid, block, (y, b, self.T, self.order, self.step, np.int64(self.batch),
                                       np.int32(nb), np.int32(classes), inv_n, self.tiny, d,
                                       self.loss))  # fmt: skip
        else:
            act = np.int32(ROW_ACT[layers[-1].activation])
            coef = dt(2) * self.loss_scale * inv_n
            k.squared_error(grid, block, (y, self.T, self.order, self.step,
                                          np.int64(self.batch), np.int32(nb), np.int32(classes),
                                          act, self.loss_scale, coef, d, self.loss))  # fmt: skip
        for i in range(last, -1, -1):
            layer, d, a_in = layers[i], D[i][:nb], A[i][:nb]
            if i > 0:  # the delta below, from W before its update
                below = D[i - 1][:nb]
                blas.gemm(below, d, layer.W, self.one, self.zero)
                self.act_grad(a_in, below, ACT[layers[i - 1].activation], below)
            for param, velocity, is_bias in self.updates[i]:
                x = self.ones[:nb] if is_bias else a_in
                if velocity is None:  # SGD: p <- p - lr d^T x, one GEMM
                    blas.gemm(param, d, x, self.alpha_lr, self.one, trans_a=True)
                else:  # momentum: v <- m v + d^T x; p <- p - lr v
                    blas.gemm(velocity, d, x, self.one, self.beta_m, trans_a=True)
                    k.momentum_step(velocity, self.neg_lr, param)
        k.next_step((1,), (1,), (self.step,))
