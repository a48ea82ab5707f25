"""The CUDA sources of the cupy backend run on the host, for machines without a GPU.

* ``elementwise_function`` / ``program``: an elementwise kernel of ``sources.ELEMENTWISE``
  framed as CuPy frames it (inputs as const locals, outputs as references, raw parameters as
  pointers, the body closed by ``;``), one thread per element under nvcc, a loop under g++.
* ``install_host_cupy()``: a ``cupy`` module for this process whose arrays are NumPy arrays
  and whose ``ElementwiseKernel`` and ``RawModule`` compile tinynet's CUDA sources with g++
  and run them. cuBLAS is tests/fake_cublas.cpp, built by g++ and loaded by the backend's own
  kernels/cupy/cublas.py: it computes the GEMMs and checks the handle's invariants. Enough of
  CuPy for the backend, its fused epoch and the trainer, so their Python runs end to end here.
  A stream capture records the launches (their scalar arguments fixed, their arrays read when
  run) and the graph replays them, as CUDA graphs do.
  What it cannot show: the GPU itself (concurrency, timing, NCCL, the rounding of the
  device's math library), and whether an operation would be refused during a capture.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tinynet.kernels.cupy import sources

GXX = shutil.which("g++")

# One thread per element on the GPU, a loop on the host; the per-row kernels' thread indices as
# globals the host sets before each call (tinynet_host_thread).
PRELUDE = """
#ifdef __CUDACC__
#define EACH_ELEMENT if (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n)
#else
#include <cmath>
#include <cstdio>
#include <initializer_list>
using std::exp; using std::log; using std::pow; using std::sqrt; using std::tanh;
#define __device__
#define __global__
#define EACH_ELEMENT for (long long i = 0; i < n; ++i)
struct Dim { unsigned x; };
static Dim blockDim = {1}, blockIdx = {0}, threadIdx = {0};
extern "C" void tinynet_host_thread(unsigned block, unsigned thread, unsigned threads) {
  blockIdx.x = block; threadIdx.x = thread; blockDim.x = threads;
}
#endif
"""
C_TYPES = {"T": "T", "X": "X", "int32": "int", "int64": "long long", "bool": "bool"}
NUMPY_C_TYPES = {"float32": "float", "float64": "double", "uint8": "unsigned char",
                 "int64": "long long", "int32": "int"}  # fmt: skip


def parameters(text: str) -> list[tuple[bool, str, str]]:
    """(raw, kind, name) of each parameter of an ElementwiseKernel's list; kind as written."""
    out = []
    for part in text.split(","):
        *raw, kind, name = part.split()
        out.append((raw == ["raw"], kind, name))
    return out


def elementwise_function(spec: sources.Elementwise, scalars: frozenset = frozenset()) -> str:
    """``spec``'s kernel as CuPy shapes it (without its preamble): for element i, each input
    a const local (``scalars``: passed by value; raw ones: pointers the body indexes), each
    output a reference to its element, and the body closed by a ";" (as CuPy closes it); the
    arguments in the kernel's order, then n."""
    arguments, locals_ = [], []
    for raw, kind, name in parameters(spec.in_params):
        ctype = C_TYPES[kind]
        if raw:
            arguments.append(f"const {ctype}* {name}")
        elif name in scalars:
            arguments.append(f"const {ctype} {name}")
        else:
            arguments.append(f"const {ctype}* {name}_")
            locals_.append(f"const {ctype} {name} = {name}_[i];")
    for _, kind, name in parameters(spec.out_params):
        ctype = C_TYPES[kind]
        arguments.append(f"{ctype}* {name}_")
        locals_.append(f"{ctype}& {name} = {name}_[i];")
    return (
        f'extern "C" __global__ void {spec.name}({", ".join(arguments)}, long long n) {{\n'
        f"  EACH_ELEMENT {{\n    {' '.join(locals_)}\n    {spec.operation};\n  }}\n}}\n"
    )


def program(
    ctype: str,
    specs: list[sources.Elementwise],
    scalars: frozenset = frozenset(),
    rows: bool = False,
    xtype: str = "unsigned char",
) -> str:
    """The prelude, T and X, each preamble once, the ``specs``' kernels, and ROW_KERNELS if
    ``rows``."""
    preambles = "".join(dict.fromkeys(spec.preamble for spec in specs))
    kernels = "".join(elementwise_function(spec, scalars) for spec in specs)
    rows_code = sources.ROW_KERNELS if rows else ""
    return PRELUDE + f"typedef {ctype} T;\ntypedef {xtype} X;\n" + preambles + kernels + rows_code


def built_library(code: str, directory: Path, optimize: str = "-O1") -> Path:
    """``code`` built by g++ into a shared library in ``directory``, once per source text."""
    digest = hashlib.sha256(code.encode()).hexdigest()[:16]
    library = directory / f"k{digest}.so"
    if not library.exists():
        source = directory / f"k{digest}.cpp"
        source.write_text(code)
        build = subprocess.run(
            [GXX, optimize, "-shared", "-fPIC", str(source), "-o", str(library)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if build.returncode != 0:
            raise RuntimeError(f"g++ failed on {source}:\n{build.stderr}")
    return library


def shared_library(code: str, directory: Path) -> ctypes.CDLL:
    """``code`` built by g++ (``built_library``) and loaded."""
    return ctypes.CDLL(str(built_library(code, directory)))


# -- a cupy module on the host --------------------------------------------------------------------
class HostArray(np.ndarray):
    """A NumPy array with the bits of cupy.ndarray's API the backend uses: ``data.ptr``, and
    ``get`` / ``set`` for host copies."""

    @property
    def data(self) -> Any:  # type: ignore[override]
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """NumPy's ufuncs on the plain arrays, without floating-point warnings: a GPU raises
        none (CupyBackend relies on that), and a result stays a HostArray."""
        inputs = tuple(_plain(x) for x in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(_plain(x) for x in kwargs["out"])
        with np.errstate(all="ignore"):
            result = getattr(ufunc, method)(*inputs, **kwargs)
        if isinstance(result, tuple):
            return tuple(_host(r) if isinstance(r, np.ndarray) else r for r in result)
        return _host(result) if isinstance(result, np.ndarray) else result

    def get(self, stream: Any = None, order: str = "C", out: np.ndarray | None = None) -> Any:
        if out is None:
            return np.array(self.view(np.ndarray))
        out[...] = self  # as CuPy: into ``out``, which must match
        return out

    def set(self, array: np.ndarray, stream: Any = None) -> None:
        self[...] = array


def _plain(a: Any) -> Any:
    return a.view(np.ndarray) if isinstance(a, HostArray) else a


def _host(a: Any) -> HostArray:
    return np.asarray(a).view(HostArray)


def _c_value(value: Any) -> Any:
    """An argument of a kernel call as ctypes passes it: arrays by address, scalars typed."""
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise TypeError("host kernel: a raw or per-row argument must be C-contiguous")
        return ctypes.c_void_p(value.ctypes.data)
    kind = {np.float32: ctypes.c_float, np.float64: ctypes.c_double, np.int32: ctypes.c_int,
            np.int64: ctypes.c_longlong, np.bool_: ctypes.c_bool}  # fmt: skip
    for numpy_type, c_type in kind.items():
        if isinstance(value, numpy_type):
            return c_type(value)
    raise TypeError(f"host kernel: pass numpy scalars to raw kernels, got {type(value)}")


class HostElementwiseKernel:
    """cupy.ElementwiseKernel run on the host: T and X bound by the array arguments (arrays
    that bind T must agree, as CuPy requires), scalars cast, inputs broadcast to the output
    shape, outputs written in place or made."""

    def __init__(
        self,
        in_params,
        out_params,
        operation,
        name="kernel",
        reduce_dims=True,
        preamble="",
        **_: Any,
    ) -> None:  # CuPy's order of parameters
        self.spec = sources.Elementwise(in_params, out_params, operation, name, preamble)
        self.ins, self.outs = parameters(in_params), parameters(out_params)
        self.nin, self.nout = len(self.ins), len(self.outs)

    def __call__(self, *args: Any) -> Any:
        if len(args) not in (self.nin, self.nin + self.nout):
            raise TypeError(f"{self.spec.name}: {len(args)} arguments for {self.nin} inputs")
        bound: dict[str, np.dtype] = {}
        for (_, kind, name), value in zip(self.ins + self.outs, args, strict=False):
            if kind in ("T", "X") and isinstance(value, np.ndarray):
                if kind in bound and bound[kind] != value.dtype:
                    raise TypeError(f"{self.spec.name}: {name} is {value.dtype}, {kind} is "
                                    f"{bound[kind]}")  # fmt: skip
                bound.setdefault(kind, value.dtype)
        if "T" not in bound:
            raise TypeError(f"{self.spec.name}: no array argument binds T")
        bound.setdefault("X", bound["T"])
        dtype_of = {"T": bound["T"], "X": bound["X"], "int32": np.dtype(np.int32),
                    "int64": np.dtype(np.int64), "bool": np.dtype(np.bool_)}  # fmt: skip
        arrays = [np.asarray(v) for (raw, _, _), v in zip(self.ins, args, strict=False)
                  if not raw and isinstance(v, np.ndarray)]  # fmt: skip
        outputs = list(args[self.nin :])
        shape = np.broadcast_shapes(*(a.shape for a in arrays + outputs))
        if not outputs:
            outputs = [_host(np.empty(shape, dtype_of[kind])) for _, kind, _ in self.outs]
        for out in outputs:
            if out.shape != shape:
                raise ValueError(f"{self.spec.name}: output {out.shape}, elements {shape}")
        function = _library(self.spec, dtype_of["T"], dtype_of["X"])
        # scalars are fixed at the call (a captured launch keeps its arguments); arrays are read
        # when the kernel runs
        ins = [(raw, value if isinstance(value, np.ndarray) else np.asarray(value, dtype_of[kind]))
               for (raw, kind, _), value in zip(self.ins, args, strict=False)]  # fmt: skip
        kinds = [dtype_of[kind] for _, kind, _ in self.ins]

        def run() -> None:
            c_args, alive = [], []
            for (raw, value), dtype in zip(ins, kinds, strict=True):
                if raw:
                    c_args.append(_c_value(value))
                else:  # each element its own input: broadcast, cast, contiguous
                    full = np.ascontiguousarray(np.broadcast_to(value.astype(dtype), shape))
                    alive.append(full)
                    c_args.append(ctypes.c_void_p(full.ctypes.data))
            targets = [out if out.flags.c_contiguous else np.ascontiguousarray(out)
                       for out in outputs]  # fmt: skip
            c_args += [ctypes.c_void_p(target.ctypes.data) for target in targets]
            c_args.append(ctypes.c_longlong(int(np.prod(shape))))
            function(*c_args)
            for out, target in zip(outputs, targets, strict=True):
                if target is not out:
                    out[...] = target

        _launch(run)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


# -- streams and CUDA graphs: a capture records the launches, a graph replays them -------------
_capture: list | None = None  # the launches recorded by the capture under way
_streams: list = []  # the streams of the `with stream:` blocks entered, innermost last


def _launch(run: Any) -> None:
    """Run a kernel now, or record it into the capture under way."""
    if _capture is not None:
        _capture.append(run)
    else:
        run()


class _Graph:
    def __init__(self, launches: list) -> None:
        self.launches = launches

    def launch(self, stream: Any = None) -> None:
        for run in self.launches:
            run()


_BUILD_DIR = Path(tempfile.mkdtemp(prefix="tinynet-host-cuda-"))


def _library(spec: sources.Elementwise, T: np.dtype, X: np.dtype) -> Any:
    code = program(NUMPY_C_TYPES[T.name], [spec], xtype=NUMPY_C_TYPES[X.name])
    return getattr(shared_library(code, _BUILD_DIR), spec.name)


def kernel_signatures(code: str) -> dict[str, list[str]]:
    """Each ``__global__`` kernel of ``code`` (a template or not) -> its parameters as written."""
    found = re.findall(r"__global__ void (\w+)\(([^)]*)\)", code)
    return {name: [" ".join(p.split()) for p in params.split(",")] for name, params in found}


def host_entry_points(code: str, name_expressions: list[str]) -> tuple[str, dict]:
    """An ``extern "C"`` function per name expression (``tinynet_softmax_ce<float>``, or a plain
    kernel's name) that calls that kernel, for ctypes; and each one's parameters with the
    template's T made the expression's type."""
    signatures = kernel_signatures(code)
    wrappers, entries = [], {}
    for expression in name_expressions:
        name, _, ctype = expression.partition("<")
        ctype = ctype.rstrip(">")
        params = [re.sub(r"\bT\b", ctype, p) if ctype else p for p in signatures[name]]
        arguments = ", ".join(p.split()[-1].lstrip("*") for p in params)
        entry = f"host_{name}_{ctype or 'plain'}"
        wrappers.append(
            f'extern "C" void {entry}({", ".join(params)}) {{ {expression}({arguments}); }}'
        )
        entries[expression] = (entry, params)
    return "\n".join(wrappers) + "\n", entries


class HostRawModule:
    """cupy.RawModule run on the host: each kernel called once per (block, thread) of its
    launch, with the thread indices set first. The templates are instantiated for the
    ``name_expressions`` as NVRTC instantiates them, and ``get_function`` takes the same names.
    The arguments must match the kernel's C parameters exactly, as on the GPU, where CuPy
    passes each scalar at its own width: an array for a pointer, np.int32 for int, np.int64 for
    long long, the float type's NumPy type for float or double."""

    def __init__(self, code: str, name_expressions: list[str] = (), **_: Any) -> None:
        entry_code, self.entries = host_entry_points(code, list(name_expressions))
        self.library = shared_library(PRELUDE + code + entry_code, _BUILD_DIR)

    def get_function(self, name: str) -> Any:
        if name not in self.entries:
            raise KeyError(f"{name}: not among the module's name_expressions")
        entry, signature = self.entries[name]
        kernel, place = getattr(self.library, entry), self.library.tinynet_host_thread

        def launch(grid: tuple, block: tuple, args: tuple) -> None:
            if len(args) != len(signature):
                raise TypeError(f"{name}: {len(args)} arguments for {len(signature)} parameters")
            for parameter, value in zip(signature, args, strict=True):
                self._check(name, parameter, value)
            c_args = [_c_value(a) for a in args]  # scalars fixed now, arrays read when run

            def run() -> None:
                for b in range(grid[0]):
                    for t in range(block[0]):
                        place(b, t, block[0])
                        kernel(*c_args)

            _launch(run)

        return launch

    @staticmethod
    def _check(name: str, parameter: str, value: Any) -> None:
        kind = parameter.rsplit(None, 1)[0].replace("const ", "").strip()
        if kind.endswith("*"):
            ok = isinstance(value, np.ndarray)
        else:
            want = {"int": np.int32, "long long": np.int64, "float": np.float32,
                    "double": np.float64}[kind]  # fmt: skip
            ok = type(value) is want
        if not ok:
            raise TypeError(f"{name}: {type(value).__name__} passed for '{parameter}'")


FAKE_CUBLAS = Path(__file__).with_name("fake_cublas.cpp")
# the stand-in's CUDA version: a major no real cuBLAS has, so that load_cublas's first choice
# (libcublas.so.<major>) never finds a real library, and takes the fake from cuda.pathfinder
HOST_CUDA_VERSION = 90000


def fake_cublas_path() -> str:
    """tests/fake_cublas.cpp built by g++ (once per text): the stand-in's libcublas."""
    return str(built_library(FAKE_CUBLAS.read_text(), _BUILD_DIR, "-O2"))


def fake_cublas_record(lib: Any) -> dict[str, Any]:
    """What the fake counted: GEMMs run, stream changes, workspaces set, live handles,
    broken invariants, and the last one's reason."""
    counts = (ctypes.c_longlong * 5)()
    lib.fake_cublas_counts(counts)
    lib.fake_cublas_last_violation.restype = ctypes.c_char_p
    names = ("gemms", "stream_changes", "workspaces_set", "handles", "violations")
    return {**dict(zip(names, counts, strict=True)), "why": lib.fake_cublas_last_violation()}


class _CapturedGemm:
    """One of cuBLAS's GEMM functions as a stream capture sees it: run now, or, while a capture
    is under way, checked against the handle's state now (what cuBLAS bakes into the graph)
    and recorded to run when the graph is replayed."""

    def __init__(self, function: Any, check: Any) -> None:
        self.function, self.check = function, check

    @property
    def argtypes(self) -> Any:
        return self.function.argtypes

    @argtypes.setter
    def argtypes(self, value: Any) -> None:
        self.function.argtypes = value

    def __call__(self, handle: Any, *args: Any) -> int:
        if _capture is None:
            return self.function(handle, *args)
        status = self.check(handle)
        if status == 0:

            def replay() -> None:
                replayed = self.function(handle, *args)
                if replayed != 0:
                    raise RuntimeError(f"a replayed cuBLAS GEMM failed with status {replayed}")

            _capture.append(replay)
        return status


class _CapturedLibrary:
    """The loaded cuBLAS with its GEMMs captured as the stand-in's kernel launches are."""

    GEMMS = ("cublasSgemm_v2", "cublasDgemm_v2")

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    def __getattr__(self, name: str) -> Any:
        function = getattr(self.lib, name)
        return (
            _CapturedGemm(function, self.lib.fake_cublas_check) if name in self.GEMMS else function
        )


class _Stream:
    """A stream: ``with stream:`` makes it current; a capture on it records the launches. Each
    has an address of its own (the null stream's is 0), as cuBLAS's SetStream sees them."""

    done = True  # every launch ran when it was made
    _made: ClassVar[list[int]] = [0]

    def __init__(self, non_blocking: bool = False, null: bool = False) -> None:
        self.capturing = False
        if not null:
            self._made[0] += 1
        self.ptr = 0 if null else 0x5000 + self._made[0]

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> _Stream:
        _streams.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _streams.pop()

    def begin_capture(self, mode: Any = None) -> None:
        global _capture
        if _capture is not None:
            raise RuntimeError("a capture is already under way")
        _capture, self.capturing = [], True

    def end_capture(self) -> _Graph:
        global _capture
        if not self.capturing:
            raise RuntimeError("no capture under way on this stream")
        launches, _capture, self.capturing = _capture, None, False
        return _Graph(launches)

    def is_capturing(self) -> bool:
        return self.capturing


_NULL_STREAM = _Stream(null=True)


_current_device = [0]  # the device ``use`` made current (the stand-in's devices share the host)


class _Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = _current_device[0] if device is None else int(device)

    def use(self) -> None:
        _current_device[0] = self.id


def install_host_cupy() -> types.ModuleType:
    """Make ``import cupy`` in this process give the host stand-in, and tinynet's cupy backend
    use HostCublas; before the backend is first made."""
    cp = types.ModuleType("cupy")
    cuda = types.ModuleType("cupy.cuda")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)  # importlib.util.find_spec
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        runtimeGetVersion=lambda: HOST_CUDA_VERSION,
        getDeviceProperties=lambda device: {"name": b"host stand-in"},
        deviceGetPCIBusId=lambda device: "0000:00:00.0",
    )
    cuda.runtime, cuda.Device, cuda.Stream = runtime, _Device, _Stream
    cuda.get_current_stream = lambda: _streams[-1] if _streams else _NULL_STREAM
    cp.cuda, cp.__version__, cp.ndarray = cuda, "host", HostArray
    cp.ElementwiseKernel, cp.RawModule = HostElementwiseKernel, HostRawModule
    cp.asnumpy = lambda a: np.array(np.asarray(a).view(np.ndarray))

    def wrap(function: Any) -> Any:
        return lambda *args, **kwargs: _host(function(*args, **kwargs))

    for name in ("asarray", "ascontiguousarray", "zeros", "ones", "empty", "empty_like",
                 "zeros_like", "arange", "array", "dot"):  # fmt: skip
        setattr(cp, name, wrap(getattr(np, name)))
    cp.__getattr__ = lambda name: getattr(np, name)  # ufuncs, finfo, dtypes: NumPy's
    sys.modules["cupy"], sys.modules["cupy.cuda"] = cp, cuda

    # CuPy's cuBLAS: the fake (tests/fake_cublas.cpp), found as CuPy >= 14 finds its libraries,
    # and loaded by the real kernels/cupy/cublas.py, whose GEMMs a capture records
    sys.modules["cupy.cublas"] = types.ModuleType("cupy.cublas")
    library = fake_cublas_path()
    pathfinder = types.ModuleType("cuda.pathfinder")
    pathfinder.load_nvidia_dynamic_lib = lambda name: types.SimpleNamespace(
        abs_path=library if name == "cublas" else None
    )
    sys.modules.setdefault("cuda", types.ModuleType("cuda"))
    sys.modules["cuda"].pathfinder = pathfinder
    sys.modules["cuda.pathfinder"] = pathfinder
    import tinynet.kernels.cupy.cublas as cublas

    load = cublas.load_cublas
    cublas.load_cublas = lambda cp: _CapturedLibrary(load(cp))
    return cp
