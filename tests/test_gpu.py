"""The CuPy backend: a clear error where it cannot run; GPU-only checks where it can.

Parity with the reference (every kernel, whole training runs, the API snippet, the seeds) is in
the backend-parametrized tests, which include cupy wherever it is usable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import numpy as np
import pytest

import tinynet as tn
from tests.tolerance import assert_float32_close, assert_weights_close
from tinynet import backend as backend_module

WHY_NOT = backend_module.backend_status()["cupy"]
GPU = WHY_NOT is None

needs_gpu = pytest.mark.skipif(not GPU, reason=f"no usable GPU here: {WHY_NOT}")
# TINYNET_HOST_CUPY=1 (tests/test_cupy_on_host.py): the cupy backend on the host stand-in,
# which runs the tests above but has no cupyx, memory hooks or CuPy cuBLAS loader
ON_HOST = os.environ.get("TINYNET_HOST_CUPY") == "1"
needs_real_gpu = pytest.mark.skipif(
    not GPU or ON_HOST, reason=f"needs CuPy on a GPU: {WHY_NOT or 'the host stand-in'}"
)


@pytest.mark.skipif(GPU, reason="a GPU is usable here, so choosing cupy succeeds")
def test_choosing_cupy_without_a_gpu_says_why_and_how_to_fix_it(monkeypatch):
    with pytest.raises(tn.BackendError, match="'cupy' cannot be used") as info:
        tn.set_backend("cupy")
    message = str(info.value)
    assert (
        "pip install 'tinynet-mlp[gpu-cuda12]'" in message
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


@needs_real_gpu
def test_training_steps_stay_on_the_device():
    import cupyx

    (x, y) = tn.datasets.mnist_sample("train")
    with tn.use_backend("cupy") as B:
        net = tn.MLP.from_sizes([784, 64, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
        X, T = net.as_inputs(x), net.as_targets(y, len(x))  # uploaded once, uint8 stays uint8
        assert isinstance(X, B.xp.ndarray) and X.dtype == np.uint8
        order = B.asarray(np.random.default_rng(0).permutation(len(x)))
        loss, opt = tn.CrossEntropy(), tn.SGD(0.1, momentum=0.9)
        total = B.xp.zeros(())
        # any device -> host copy or synchronisation inside the loop raises here
        with cupyx.allow_synchronize(False):
            for start in range(0, 2048, 64):
                idx = order[start : start + 64]
                total += net.step(X[idx], T[idx], loss, opt)
        assert float(total) > 0


@needs_gpu
def test_tf32_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert backend_module._resolve("cupy").info()["tf32"] == "off"


@contextlib.contextmanager
def _cupy_graphs(on: bool):
    """The cupy backend in eager or CUDA-graph mode for the block."""
    B = backend_module._resolve("cupy")
    before, B.graphs = B.graphs, on
    try:
        yield B
    finally:
        B.graphs = before


@contextlib.contextmanager
def _counting_fused_epochs(B):
    """The block's calls of B.train_batches, counted: [count]."""
    calls, train_batches = [0], B.train_batches

    def counted(*args, **kwargs):
        calls[0] += 1
        return train_batches(*args, **kwargs)

    B.train_batches = counted
    try:
        yield calls
    finally:
        del B.train_batches  # the class's method again


def _fit_both(
    graphs, sizes, hidden, output, loss, momentum, dtype, batch, freeze, bias, between, fused=True
):
    """The same training on numpy and on cupy, and in float32 NumPy's float64 twin of it:
    (reference, got, twin), each (losses, weights, accuracy); twin None in float64. With
    ``fused``, cupy must have trained in its fused epochs: a fault that sent it kernel by kernel
    would otherwise pass as parity (the reference's own kernels on CuPy arrays)."""
    (x, y), (xt, yt) = tn.datasets.mnist_sample("train"), tn.datasets.mnist_sample("test")
    runs = [("numpy", dtype), ("cupy", dtype)]
    if dtype == "float32":  # the twin that float32's tolerance comes from (tests/tolerance.py)
        runs.append(("numpy", "float64"))
    results = []
    for name, run_dtype in runs:
        with tn.use_backend(name) as B, _cupy_graphs(graphs), _counting_fused_epochs(B) as calls:
            net = tn.MLP.from_sizes(
                sizes, hidden, output, seed=0, dtype=run_dtype, bias=bias, rescale=(1 / 255, 0.0)
            )
            if freeze:
                net.layers[1].freeze(freeze)
            # "sum" adds the batch's gradients: lr / batch keeps the step size
            opt = tn.SGD(0.05 / batch if loss.reduction == "sum" else 0.05, momentum=momentum)
            losses = net.fit(x[:2000], y[:2000], loss, opt, epochs=2, batch_size=batch, seed=1)
            losses = losses["loss"]
            if between:  # e.g. new weight arrays or learning rate after the graphs are captured
                between(net, opt)
                losses += net.fit(x[:2000], y[:2000], loss, opt, batch_size=batch, seed=2)["loss"]
            results.append((losses, net.get_weights(), net.evaluate(xt, yt)["accuracy"]))
        if name == "cupy":
            assert (calls[0] > 0) == fused, f"fused epochs: {calls[0]}, expected {fused}"
    reference, got, *twin = results
    return reference, got, (twin[0] if twin else None)


def _assert_parity(reference, got, twin):
    (loss_ref, weights_ref, acc_ref), (losses, weights, acc) = reference, got
    assert abs(acc - acc_ref) <= 0.002
    if twin is None:  # float64
        np.testing.assert_allclose(losses, loss_ref, rtol=1e-9)
        assert_weights_close(weights, weights_ref, None, "float64")
    else:
        assert_float32_close(losses, loss_ref, twin[0], "losses")
        assert_weights_close(weights, weights_ref, twin[1], "float32")


@needs_gpu
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize(
    ("sizes", "hidden", "output", "loss", "momentum", "dtype", "batch", "freeze", "bias"),
    [
        ([784, 64, 10], "sigmoid", "sigmoid", tn.SquaredError(0.5), 0.0, "float32", 32, None, True),
        ([784, 64, 32, 10], "relu", "softmax", tn.CrossEntropy(), 0.9, "float32", 64, "bias", True),
        (
            [784, 32, 10],
            "tanh",
            "softmax",
            tn.SquaredError(1.0, "sum"),
            0.0,
            "float64",
            50,
            "weights",
            False,
        ),
        ([784, 16, 10], "relu", "softmax", tn.CrossEntropy(), 0.0, "float32", 1, None, True),
        ([784, 32, 10], "relu", "sigmoid", tn.BinaryCrossEntropy(), 0.9, "float32", 64, None, True),
    ],
)
def test_fused_epoch_matches_the_reference(
    graphs, sizes, hidden, output, loss, momentum, dtype, batch, freeze, bias
):
    # 2000 samples, one train_batches call per epoch. Batch 32: 62 full batches and 16 samples
    # left, run as one eager step, 16-step graphs and a 13-step graph in the first epoch (a
    # 14-step one in the second), then the partial batch eagerly
    args = (sizes, hidden, output, loss, momentum, dtype, batch, freeze, bias, None)
    _assert_parity(*_fit_both(graphs, *args))


@needs_gpu
def test_captured_step_follows_new_weight_arrays():
    rng = np.random.default_rng(5)
    W, b = rng.normal(0, 0.05, (32, 784)), rng.normal(0, 0.05, 32)

    def replace_first_layer(net, opt):  # a captured graph must not write into the old arrays
        net.layers[1].set_weights(W, b)

    args = ([784, 32, 10], "relu", "softmax", tn.CrossEntropy(), 0.0, "float32", 64, None, True)
    _assert_parity(*_fit_both(True, *args, replace_first_layer))


@needs_gpu
def test_captured_steps_follow_a_new_learning_rate():
    def lower_learning_rate(net, opt):  # read from device memory by the captured GEMMs
        opt.lr *= 0.25

    args = ([784, 32, 10], "relu", "softmax", tn.CrossEntropy(), 0.9, "float32", 64, None, True)
    _assert_parity(*_fit_both(True, *args, lower_learning_rate))


@needs_real_gpu
def test_without_its_own_cublas_handle_training_runs_kernel_by_kernel(monkeypatch):
    from tinynet.kernels.cupy import cublas

    def cannot_load(cp):
        raise tn.BackendError("backend 'cupy': cannot load cuBLAS (tried libcublas.so.99)")

    B = backend_module._resolve("cupy")
    monkeypatch.setattr(cublas, "load_cublas", cannot_load)
    for name, value in (("_blas", {}), ("_blas_error", None), ("_epochs", {})):
        monkeypatch.setattr(B, name, value)  # as if no epoch had run in this process
    args = ([784, 32, 10], "relu", "softmax", tn.CrossEntropy(), 0.9, "float32", 64, None, True)
    with pytest.warns(RuntimeWarning, match=r"libcublas.so.99.*kernel by kernel"):
        runs = _fit_both(False, *args, None, fused=False)
    _assert_parity(*runs)
    assert B._epochs == {}  # no fused epoch ran
    with pytest.raises(tn.BackendError, match="no fused epochs here"):
        B.train_batches(None, None, None, None, 64)


def _second_epoch_call(graphs: bool, around: contextlib.AbstractContextManager):
    """A 784-64-10 model's fused epoch on 1280 samples (kernels compiled, buffers allocated,
    graphs captured), then on the next 2048 inside ``around``; that second call's loss."""
    (x, y) = tn.datasets.mnist_sample("train")
    with tn.use_backend("cupy") as B, _cupy_graphs(graphs):
        net = tn.MLP.from_sizes([784, 64, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
        X, T = net.as_inputs(x), net.as_targets(y, len(x))
        spec = net.epoch_spec(tn.CrossEntropy(), tn.SGD(0.05, momentum=0.9))
        order = B.asarray(np.random.default_rng(0).permutation(len(x)))
        B.train_batches(spec, X, T, order[:1280], 64)
        with around:
            total = B.train_batches(spec, X, T, order[1280:3328], 64)
        assert isinstance(total, B.xp.ndarray) and float(total) > 0
        return total


@needs_real_gpu
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph"])
def test_fused_epoch_never_waits_for_the_host(graphs):
    import cupyx

    # any device -> host copy or synchronisation inside the call raises here
    _second_epoch_call(graphs, cupyx.allow_synchronize(False))


@needs_real_gpu
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph"])
def test_fused_epoch_allocates_only_its_result(graphs):
    """The second call takes one array from CuPy's pool (the 0-d loss it returns), nothing per
    batch; and no call takes one while a CUDA graph is being captured, the first call's
    captures included (an allocation inside a capture is baked into the graph)."""
    import cupy

    class CountAllocations(cupy.cuda.MemoryHook):
        def __init__(self, name, only_in_capture):
            self.name, self.only_in_capture, self.count = name, only_in_capture, 0

        def malloc_preprocess(self, **kwargs):  # every array taken from CuPy's pool
            if not self.only_in_capture or cupy.cuda.get_current_stream().is_capturing():
                self.count += 1

    in_capture = CountAllocations("count_allocations_in_capture", True)
    second_call = CountAllocations("count_allocations", False)
    with in_capture:
        _second_epoch_call(graphs, second_call)
    assert second_call.count == 1
    assert in_capture.count == 0


def test_cuda_graphs_setting_is_0_or_1(monkeypatch):
    from tinynet.kernels.cupy.backend import graphs_from_env

    for value, expected in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("TINYNET_CUDA_GRAPHS", value)
        assert graphs_from_env() is expected
    monkeypatch.delenv("TINYNET_CUDA_GRAPHS")
    assert graphs_from_env() is False
    monkeypatch.setenv("TINYNET_CUDA_GRAPHS", "yes")  # not silently off
    with pytest.raises(tn.BackendError, match="TINYNET_CUDA_GRAPHS must be 0 or 1, got 'yes'"):
        graphs_from_env()


@needs_gpu
def test_a_failed_capture_reports_its_error_and_trains_eagerly(monkeypatch):
    """An exception inside stream capture: the real error in a warning (not end_capture's),
    the handle back on the training stream, and the same results as eager steps."""
    from tinynet.kernels.cupy import plan

    real_step = plan.EpochPlan._step

    def step_failing_in_capture(self, nb):
        if self.cp.cuda.get_current_stream().is_capturing():
            raise RuntimeError("injected fault during capture")
        return real_step(self, nb)

    monkeypatch.setattr(plan.EpochPlan, "_step", step_failing_in_capture)
    B = backend_module._resolve("cupy")
    monkeypatch.setattr(B, "_epochs", {})
    args = ([784, 32, 10], "relu", "softmax", tn.CrossEntropy(), 0.9, "float32", 64, None, True)
    with pytest.warns(RuntimeWarning, match="could not capture.*injected fault during capture"):
        runs = _fit_both(True, *args, None)
    _assert_parity(*runs)


@needs_gpu
def test_synchronize_waits_for_the_current_stream():
    import cupy

    B = backend_module._resolve("cupy")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x = cupy.ones((4096, 4096), cupy.float32)
        for _ in range(20):
            x = x @ x * 1e-4
        B.synchronize()
        assert stream.done


def test_cublas_is_looked_for_at_cupys_cuda_major_version_first():
    from tinynet.kernels.cupy.cublas import cublas_candidates

    assert cublas_candidates(12080)[0] == "libcublas.so.12"
    assert cublas_candidates(13000, "/opt/x/libcublas.so.13")[:2] == [
        "libcublas.so.13",
        "/opt/x/libcublas.so.13",
    ]
    assert "libcublas.so.13" not in cublas_candidates(12080)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_without_cupys_cublas_loading_is_a_backend_error_not_an_import_error():
    from tinynet.kernels.cupy.cublas import load_cublas

    with pytest.raises(tn.BackendError, match="cuBLAS"):
        load_cublas(None)


@needs_gpu
@pytest.mark.parametrize(("local_rank", "devices"), [(1, 2), (3, 2), (0, 2)])
def test_a_rank_takes_its_gpu_when_the_backend_is_made_before_mpi(monkeypatch, local_rank, devices):
    """Under mpiexec, the cupy backend made before tinynet.distributed.MPI() (or with no MPI()
    at all) puts the rank on the node's GPUs in turn, from the launcher's local rank. The host
    stand-in's count is faked (its devices are all the host); a GPU machine needs 2 GPUs."""
    from tinynet.kernels.cupy.backend import CupyBackend, import_cupy

    cp = import_cupy()
    if ON_HOST:
        monkeypatch.setattr(cp.cuda.runtime, "getDeviceCount", lambda: devices)
    elif cp.cuda.runtime.getDeviceCount() < devices:
        pytest.skip(f"needs {devices} GPUs")
    before = cp.cuda.Device().id
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("MPI_LOCALRANKID", str(local_rank))
    try:
        CupyBackend()
        assert cp.cuda.Device().id == local_rank % devices
    finally:
        cp.cuda.Device(before).use()
    monkeypatch.delenv("PMI_SIZE")  # one process: the backend leaves the device alone
    cp.cuda.Device(before).use()
    CupyBackend()
    assert cp.cuda.Device().id == before


needs_host_stand_in = pytest.mark.skipif(not ON_HOST, reason="the fake cuBLAS of the host stand-in")


def _fake_cublas_record():
    from tests.host_cuda import fake_cublas_record

    B = backend_module._resolve("cupy")
    return fake_cublas_record(B._cublas()._lib.lib)


@needs_host_stand_in
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph"])
def test_the_cublas_wrapper_keeps_the_invariants_cublas_needs(graphs):
    """kernels/cupy/cublas.py itself, on tests/fake_cublas.cpp: every GEMM of a fused epoch
    (in graph mode, recorded in captures and replayed) finds pointer mode DEVICE and tinynet's
    workspace set after the last stream change."""
    before = _fake_cublas_record()
    _second_epoch_call(graphs, contextlib.nullcontext())
    after = _fake_cublas_record()
    assert after["violations"] == before["violations"], after["why"]
    assert after["gemms"] - before["gemms"] >= 2 * 52  # 52 steps of 64 samples, >= 2 GEMMs each
    changes = after["stream_changes"] - before["stream_changes"]
    assert after["workspaces_set"] - before["workspaces_set"] >= changes
    if graphs:
        assert changes >= 2  # bound to a capture's stream and back


@needs_host_stand_in
@pytest.mark.filterwarnings("ignore:tinynet's cupy backend could not capture a CUDA graph")
def test_a_gemm_after_a_stream_change_without_the_workspace_fails(monkeypatch):
    """The fake catches the fault its invariant guards: a wrapper that binds a stream without
    setting its workspace again (cuBLAS would then allocate inside a captured graph)."""
    from tinynet.kernels.cupy.cublas import Cublas

    def bind_forgetting_the_workspace(self, stream_ptr):
        if stream_ptr != self._stream:
            self._check(self._lib.cublasSetStream_v2(self.handle, stream_ptr), "cublasSetStream")
            self._stream = stream_ptr

    before = _fake_cublas_record()
    B = backend_module._resolve("cupy")
    for name, value in (("_blas", {}), ("_epochs", {})):
        monkeypatch.setattr(B, name, value)  # a handle of its own, dropped after the test
    monkeypatch.setattr(Cublas, "bind", bind_forgetting_the_workspace)
    with pytest.raises(RuntimeError, match="cuBLAS status 77|status 77"):
        _second_epoch_call(True, contextlib.nullcontext())
    after = _fake_cublas_record()
    assert after["violations"] > before["violations"]
    assert after["why"] == b"no workspace set since the stream changed"
