"""cuBLAS called directly on a handle of tinynet's own (CuPy refuses cuBLAS calls during stream
capture, and a GEMM in a CUDA graph must not allocate)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import weakref
from typing import Any

import numpy as np

from tinynet.errors import BackendError


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


def load_cublas(cp: Any) -> ctypes.CDLL:
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


class Cublas:
    """cuBLAS called directly on a handle of tinynet's own, with its workspace set and bound to
    the stream in use. CuPy refuses cuBLAS calls during stream capture, and a GEMM in a CUDA graph
    must not allocate; calling the library ourselves allows both. Arrays are C-ordered. alpha and
    beta are read from device memory when the GEMM runs (pointer mode DEVICE), so a captured
    update follows a learning rate changed after the capture."""

    WORKSPACE_BYTES = 32 << 20  # NVIDIA's suggestion for Hopper

    def __init__(self, cp: Any) -> None:
        lib = self._lib = load_cublas(cp)
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
