"""Benchmark fixtures: thread limits, MNIST batches, the contenders usable on this machine."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import pytest

import tinynet as tn
from benchmarks.contenders import NETWORKS, Network, TinynetContender, TorchContender
from tinynet import backend as backend_module
from tinynet.system import cpu_count, machine_info

# One thread count for everyone: BLAS (NumPy), Numba and PyTorch. Default: the cores we may use.
THREADS = int(os.environ.get("TINYNET_BENCH_THREADS") or cpu_count())


def tinynet_backends() -> list[str]:
    return [name for name, why in backend_module.backend_status().items() if why is None]


def _torch_cuda() -> bool:
    """Whether PyTorch sees a CUDA device (imports torch: asked only where cupy runs)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def contender_params(modes: bool = True) -> list:
    """The tinynet backends usable here, PyTorch eager (skipped with the reason when missing),
    and on a GPU PyTorch CUDA; with ``modes``, also cupy's CUDA-graph mode ("cupy-graph")."""
    names = tinynet_backends()
    params = [pytest.param(name, id=name) for name in names]
    if modes and "cupy" in names:
        params.append(pytest.param("cupy-graph", id="cupy-graph"))
    torch_missing = importlib.util.find_spec("torch") is None
    mark = (
        pytest.mark.skip(reason="PyTorch not installed (pip install torch)")
        if torch_missing
        else ()
    )
    params.append(pytest.param("pytorch", id="pytorch", marks=mark))
    if "cupy" in names and _torch_cuda():
        params.append(pytest.param("pytorch-cuda", id="pytorch-cuda"))
    return params


def make_contender(name: str, net: Network, dtype: str, weights: list):
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
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["pytorch"] = torch.__version__
    return info


__all__ = ["NETWORKS", "TrainingData", "contender_params", "make_contender"]
