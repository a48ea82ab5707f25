"""The CuPy backend: a clear error where it cannot run; GPU-only checks where it can.

Parity with the reference (every kernel, whole training runs, the API snippet, the seeds) is in
the backend-parametrized tests, which include cupy wherever it is usable.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinynet as tn
from tinynet import backend as backend_module

WHY_NOT = backend_module.backend_status()["cupy"]
GPU = WHY_NOT is None

needs_gpu = pytest.mark.skipif(not GPU, reason=f"no usable GPU here: {WHY_NOT}")


@pytest.mark.skipif(GPU, reason="a GPU is usable here, so choosing cupy succeeds")
def test_choosing_cupy_without_a_gpu_says_why_and_how_to_fix_it(monkeypatch):
    with pytest.raises(tn.BackendError, match="'cupy' cannot be used") as info:
        tn.set_backend("cupy")
    message = str(info.value)
    assert (
        "pip install 'tinynet[gpu-cuda12]'" in message
        or "driver" in message
        or ("device" in message)
    )
    assert info.value.__cause__ is not None or "no CUDA device" in message
    assert backend_module._explicit is None  # nothing changed, no silent fallback
    monkeypatch.setenv("TINYNET_BACKEND", "cupy")
    with pytest.raises(tn.BackendError, match="'cupy' cannot be used"):
        tn.Dense(2, 2)
    monkeypatch.setenv("TINYNET_BACKEND", "auto")  # auto skips it and takes a CPU backend
    assert tn.get_backend().name in ("numba", "numpy")


@needs_gpu
def test_training_steps_stay_on_the_device():
    import cupyx

    (x, y) = tn.datasets.mnist_sample("train")
    with tn.use_backend("cupy") as B:
        net = tn.MLP.from_sizes([784, 64, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
        X, T = net._input(x), net._targets(y, len(x))  # uploaded once, uint8 stays uint8
        assert isinstance(X, B.xp.ndarray) and X.dtype == np.uint8
        order = B.asarray(np.random.default_rng(0).permutation(len(x)))
        loss, opt = tn.CrossEntropy(), tn.SGD(0.1, momentum=0.9)
        total = B.xp.zeros(())
        # any device -> host copy or synchronisation inside the loop raises here
        with cupyx.allow_synchronize(False):
            for start in range(0, 2048, 64):
                idx = order[start : start + 64]
                total += net._step(X[idx], T[idx], loss, opt)
        assert float(total) > 0


@needs_gpu
def test_tf32_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert backend_module._resolve("cupy").info()["tf32"] == "off"
