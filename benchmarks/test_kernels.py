"""Single kernels at the shapes the benchmark networks use, float32, per contender."""

from __future__ import annotations

import numpy as np
import pytest

import tinynet as tn
from benchmarks.conftest import THREADS, contender_params

SHAPES = {"784->128": (784, 128), "1024->1024": (1024, 1024)}
KERNELS = ("matmul", "dense_sigmoid", "sigmoid_grad", "weight_grad")
BATCHES = (1, 32, 128, 512)


def _arrays(n_in: int, n_out: int, batch: int):
    rng = np.random.default_rng(0)
    f = np.float32
    return dict(
        x=rng.random((batch, n_in), f),
        W=rng.normal(0, 0.05, (n_out, n_in)).astype(f),
        b=rng.normal(0, 0.1, n_out).astype(f),
        y=rng.random((batch, n_out), f),
        dy=rng.normal(size=(batch, n_out)).astype(f),
    )


def _tinynet_kernel(backend_name: str, kernel: str, a: dict):
    with tn.use_backend(backend_name) as B:
        x, W, b, y, dy = (B.asarray(a[k]) for k in ("x", "W", "b", "y", "dy"))
    run = {
        "matmul": lambda: B.matmul(x, W.T),
        "dense_sigmoid": lambda: B.dense_forward(x, W, b, "sigmoid"),
        "sigmoid_grad": lambda: B.activation_backward("sigmoid", y, dy),
        "weight_grad": lambda: B.weight_grad(dy, x),
    }[kernel]

    def timed():  # a GPU kernel is only done when the device says so
        out = run()
        B.synchronize()
        return out

    return timed


def _torch_kernel(kernel: str, a: dict, device: str):
    import torch

    x, W, b, y, dy = (torch.from_numpy(a[k]).to(device) for k in ("x", "W", "b", "y", "dy"))
    run = {
        "matmul": lambda: x @ W.T,
        "dense_sigmoid": lambda: torch.sigmoid(torch.addmm(b, x, W.T)),
        "sigmoid_grad": lambda: torch.ops.aten.sigmoid_backward(dy, y),
        "weight_grad": lambda: dy.T @ x,
    }[kernel]

    def timed():
        out = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return timed


def _expected(kernel: str, a: dict) -> np.ndarray:
    """What each kernel computes, in float64 from its formula: a reference that is not one of
    the contenders (the numpy contender is checked against it too)."""
    x, W, b, y, dy = (a[k].astype(np.float64) for k in ("x", "W", "b", "y", "dy"))
    return {
        "matmul": lambda: x @ W.T,
        "dense_sigmoid": lambda: 1.0 / (1.0 + np.exp(-(x @ W.T + b))),
        "sigmoid_grad": lambda: dy * y * (1.0 - y),
        "weight_grad": lambda: dy.T @ x,
    }[kernel]()


def _to_numpy(x) -> np.ndarray:
    return x.cpu().numpy() if hasattr(x, "cpu") else tn.to_numpy(x)  # a torch tensor, or ours


@pytest.mark.parametrize("contender", contender_params(modes=False, training_peers=False))
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel(benchmark, kernel, shape, batch, contender):
    a = _arrays(*SHAPES[shape], batch)
    fn = (
        _torch_kernel(kernel, a, "cuda" if contender == "pytorch-cuda" else "cpu")
        if contender.startswith("pytorch")
        else _tinynet_kernel(contender, kernel, a)
    )
    reference = _expected(kernel, a)
    # float32 sums over up to 1024 terms in another order: tolerance relative to the output scale
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(_to_numpy(fn()), reference, rtol=1e-4, atol=1e-5 * scale)
    benchmark.group = f"kernel {kernel} {shape} batch {batch}"
    benchmark.extra_info.update(
        kind="kernel",
        contender=contender,
        kernel=kernel,
        shape=shape,
        batch=batch,
        dtype="float32",
        threads=THREADS,
    )
    benchmark(fn)
