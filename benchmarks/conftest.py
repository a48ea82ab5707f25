"""Benchmark fixtures: thread limits, MNIST batches, the contenders usable on this machine."""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import tinynet as tn
from benchmarks.contenders import (
    NETWORKS,
    JaxContender,
    Network,
    PlainNumpyContender,
    TinynetContender,
    TorchContender,
)
from tinynet import backend as backend_module
from tinynet.system import cpu_count, machine_info

# One thread count for everyone: BLAS (NumPy), Numba and PyTorch. Default: the cores we may use.
THREADS = int(os.environ.get("TINYNET_BENCH_THREADS") or cpu_count())
# JAX (XLA) reads its thread settings when it starts: the same count as everyone else.
os.environ.setdefault(
    "XLA_FLAGS",
    f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}",
)


def tinynet_backends() -> list[str]:
    return [name for name, why in backend_module.backend_status().items() if why is None]


def _torch_cuda() -> bool:
    """Whether PyTorch sees a CUDA device (imports torch: asked only where cupy runs)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _peer_param(name: str, module: str, install: str) -> Any:
    """A peer's contender, skipped with the reason where its library is missing."""
    missing = importlib.util.find_spec(module) is None
    mark = pytest.mark.skip(reason=f"{module} not installed ({install})") if missing else ()
    return pytest.param(name, id=name, marks=mark)


def contender_params(modes: bool = True, training_peers: bool = True) -> list:
    """The tinynet backends usable here, PyTorch eager (skipped with the reason when missing),
    and on a GPU PyTorch CUDA; with ``modes``, also cupy's CUDA-graph mode ("cupy-graph");
    with ``training_peers``, the whole-training-loop peers: NumPy (plain) and JAX's two forms."""
    names = tinynet_backends()
    params = [pytest.param(name, id=name) for name in names]
    if modes and "cupy" in names:
        params.append(pytest.param("cupy-graph", id="cupy-graph"))
    params.append(_peer_param("pytorch", "torch", "pip install torch"))
    if training_peers:  # whole training loops only: no kernels of their own
        params.append(pytest.param("numpy-plain", id="numpy-plain"))
        params.append(_peer_param("jax", "jax", "pip install jax"))
        params.append(_peer_param("jax-scan", "jax", "pip install jax"))
    if "cupy" in names and _torch_cuda():
        params.append(pytest.param("pytorch-cuda", id="pytorch-cuda"))
    return params


def make_contender(name: str, net: Network, dtype: str, weights: list):
    if name == "numpy-plain":
        return PlainNumpyContender(net, dtype, weights)
    if name in ("jax", "jax-scan"):
        return JaxContender(net, dtype, weights, scan=name == "jax-scan")
    if name in ("pytorch", "pytorch-cuda"):
        return TorchContender(net, dtype, weights, "cuda" if name == "pytorch-cuda" else "cpu")
    if name == "cupy-graph":
        return TinynetContender("cupy", net, dtype, weights, graphs=True)
    return TinynetContender(name, net, dtype, weights)


def thread_settings() -> dict[str, int]:
    """Apply THREADS to every library that has a pool; returns what was set."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=THREADS)  # OpenBLAS/MKL/OpenMP pools loaded so far
    settings = {"blas": THREADS}
    if "numba" in tinynet_backends():
        import numba

        # tinynet's compiled epochs run a team of this many threads, never next to BLAS.
        numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
        settings["numba"] = numba.get_num_threads()
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(THREADS)
        threadpool_limits(limits=THREADS)  # and the pools torch brought in
        settings["pytorch"] = torch.get_num_threads()
    return settings


@pytest.fixture(scope="session", autouse=True)
def threads() -> dict[str, int]:
    return thread_settings()


@dataclass
class TrainingData:
    x: np.ndarray  # uint8 (n, 784), in a fixed shuffled order
    labels: np.ndarray
    source: str  # "MNIST", or the sample's label when full MNIST is absent

    def targets(self, dtype: str) -> np.ndarray:
        """One-hot rows (n, 10), made once per dtype."""
        if dtype not in self._targets:
            self._targets[dtype] = tn.one_hot(self.labels, 10, dtype=dtype)
        return self._targets[dtype]

    def __post_init__(self) -> None:
        self._targets: dict[str, np.ndarray] = {}


@pytest.fixture(scope="session")
def mnist_train() -> TrainingData:
    try:
        x, y = tn.datasets.mnist("train", download=False)
        source = "MNIST"
    except tn.DataFileError:
        x, y = tn.datasets.mnist_sample("train")
        source = tn.datasets.mnist_loader.SAMPLE_NAME
    order = np.random.default_rng(0).permutation(len(x))
    return TrainingData(x[order], y[order], source)


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    info = machine_info_for_report()
    machine_info["tinynet"] = info


def machine_info_for_report() -> dict[str, str]:
    info = machine_info()
    info["threads"] = ", ".join(f"{k} {v}" for k, v in thread_settings().items())
    for module, label in (("torch", "pytorch"), ("jax", "jax"), ("sklearn", "scikit-learn")):
        if importlib.util.find_spec(module) is not None:
            info[label] = importlib.import_module(module).__version__
    if "jax" in info:
        info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return info


__all__ = ["NETWORKS", "TrainingData", "contender_params", "make_contender"]
