"""The CuPy GPU backend: the reference's kernels on CUDA arrays, the elementwise steps fused.

* Arrays are ``cupy.ndarray``; ``asarray`` uploads, ``to_numpy`` downloads. ``fit`` uploads the
  training set once (uint8 stays uint8) and gathers and rescales each batch on the device.
* GEMMs: ``cupy.dot`` hands cuBLAS the transposed views (``W.T``) as transpose flags, not copies.
* Fused ``ElementwiseKernel``s, built once when the backend is created and compiled by CuPy on
  first use per dtype (then cached on disk): bias + activation, activation gradient times delta,
  SGD and momentum updates, uint8 -> float rescaling, the squared-error gradient. Softmax and the
  losses' sums use the reference code on CuPy arrays (a reduction each).
* FP32 by default. CuPy uses TF32 tensor cores only when ``CUPY_TF32=1`` is set: opt in there.
* Nothing here imports CuPy at module import time; ``CupyBackend()`` raises BackendError saying
  why the GPU cannot be used (package missing, no driver, no device) and how to fix it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from tinynet.errors import BackendError
from tinynet.kernels.numpy_backend import NumpyBackend

ACT = {"identity": 0, "step": 1, "sigmoid": 2, "tanh": 3, "relu": 4}  # softmax: reference code

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


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' cannot be used: CuPy is not installed; install the wheel for your "
            "CUDA: pip install 'tinynet[gpu-cuda12]' or 'tinynet[gpu-cuda13]'"
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


class CupyBackend(NumpyBackend):
    """CuPy arrays on the current CUDA device; inherits the reference for what it does not fuse."""

    name = "cupy"

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
        }

    def synchronize(self) -> None:
        self.xp.cuda.Stream.null.synchronize()

    # -- arrays -----------------------------------------------------------------------------
    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x)

    def _quiet_limits(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the GPU raises no floating-point warnings

    # -- forward ----------------------------------------------------------------------------
    def activate(self, z: Any, activation: str) -> Any:
        if activation == "softmax":
            return super().activate(z, activation)
        return self._bias_act(z, z.dtype.type(0), ACT[activation], z)

    def dense_forward(self, x: Any, W: Any, b: Any, activation: str) -> Any:
        z = self.xp.dot(x, W.T)
        if activation == "softmax":
            if b is not None:
                z += b
            return super().activate(z, activation)
        bias = b if b is not None else z.dtype.type(0)
        return self._bias_act(z, bias, ACT[activation], z)

    # -- backward ---------------------------------------------------------------------------
    def activation_backward(self, activation: str, y: Any, dy: Any) -> Any:
        if activation == "softmax":
            return super().activation_backward(activation, y, dy)
        return self._act_grad(y, dy, ACT[activation])

    # -- losses -----------------------------------------------------------------------------
    def squared_error(self, y: Any, t: Any, scale: float, reduction: str, grad: bool = True):
        loss, _ = super().squared_error(y, t, scale, reduction, grad=False)
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
