"""The Numba backend's epochs. Compiled epochs split over a team of threads give the same numbers
as one thread (bit for bit: each weight is computed by the same code from the same inputs) and
as the NumPy reference (within the parity tolerances); the BLAS epoch writes into the weights
in place or fails loudly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tinynet as tn
from tests.tolerance import assert_float32_close, assert_weights_close
from tinynet import backend as backend_module
from tinynet.system import cpu_count

numba = pytest.importorskip("numba")

if backend_module.backend_status()["numba"] is not None:
    pytest.skip(backend_module.backend_status()["numba"], allow_module_level=True)

TWO_THREADS = pytest.mark.skipif(
    min(cpu_count(), numba.config.NUMBA_NUM_THREADS) < 2,
    reason="a team needs two cores and NUMBA_NUM_THREADS >= 2",
)


def _optimizer(momentum):
    """SGD with this momentum, or ``"adam"``: Adam."""
    return tn.Adam(1e-3) if momentum == "adam" else tn.SGD(0.05, momentum=momentum)


def _train(
    backend: str, threads: int, sizes, hidden, output, loss, momentum, dtype, freeze, batch=1
):
    (x, y) = tn.datasets.mnist_sample("train")
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with tn.use_backend(backend):
            net = tn.MLP.from_sizes(
                sizes, hidden, output, seed=0, dtype=dtype, rescale=(1 / 255, 0.0)
            )
            if freeze:
                net.layers[1].freeze(freeze)
            spec = net.epoch_spec(loss, _optimizer(momentum))
            team = 0
            if backend == "numba":  # these cases are for the compiled loops, not BLAS
                assert net.backend._compiled_loop(spec, batch)
                team = net.backend.team_size(spec, batch)
            history = net.fit(
                x[:500],
                y[:500],
                loss,
                _optimizer(momentum),
                epochs=2,
                batch_size=batch,
                seed=1,
            )
    finally:
        numba.set_num_threads(before)
    return team, history["loss"], net.get_weights()


def _assert_team_matches_one_thread_and_the_reference(args, dtype, loss_rtol):
    """Train with one thread, two threads and NumPy: weights bit for bit equal between the
    teams, losses within ``loss_rtol``, and both within the parity tolerances of NumPy (float32:
    as close to NumPy's float64 twin of the run as NumPy's float32 run is)."""
    team1, losses1, weights1 = _train("numba", 1, *args)
    team2, losses2, weights2 = _train("numba", 2, *args)
    _, losses_ref, weights_ref = _train("numpy", 1, *args)
    twin = None
    if dtype == "float32":  # args: (sizes, hidden, output, loss, momentum, dtype, ...)
        _, losses_twin, twin = _train("numpy", 1, *args[:5], "float64", *args[6:])
        assert_float32_close(losses2, losses_ref, losses_twin, "losses")
    else:
        np.testing.assert_allclose(losses2, losses_ref, rtol=1e-9)
    assert (team1, team2) == (1, 2)
    if loss_rtol:
        np.testing.assert_allclose(losses2, losses1, rtol=loss_rtol)
    else:
        assert losses2 == losses1
    for (W2, b2), (W1, b1) in zip(weights2, weights1, strict=True):
        np.testing.assert_array_equal(W2, W1)
        np.testing.assert_array_equal(b2, b1)
    assert_weights_close(weights2, weights_ref, twin, dtype)


@TWO_THREADS
@pytest.mark.parametrize(
    ("sizes", "hidden", "output", "loss", "momentum", "dtype", "freeze"),
    [
        ([784, 100, 10], "sigmoid", "sigmoid", tn.SquaredError(0.5), 0.0, "float32", None),
        ([784, 128, 10], "relu", "softmax", tn.CrossEntropy(), 0.9, "float64", "bias"),
        ([784, 96, 16, 10], "tanh", "softmax", tn.CrossEntropy(), 0.0, "float32", "weights"),
        ([784, 64], "sigmoid", "identity", tn.SquaredError(0.5), 0.5, "float64", None),
        ([784, 128, 10], "relu", "softmax", tn.CrossEntropy(), "adam", "float64", "bias"),
        ([784, 96, 10], "tanh", "softmax", tn.CrossEntropy(), "adam", "float32", None),
    ],
)
def test_per_sample_team_matches_one_thread_and_the_reference(
    sizes, hidden, output, loss, momentum, dtype, freeze
):
    args = (sizes, hidden, output, loss, momentum, dtype, freeze)
    if len(sizes) == 2:  # one layer: the output layer is the first layer, split by rows
        args = (sizes, output, output, loss, momentum, dtype, None)
    # every thread scores every sample and rank 0 reports: the same losses, bit for bit
    _assert_team_matches_one_thread_and_the_reference(args, dtype, loss_rtol=0.0)


def test_team_size_follows_the_model_and_the_thread_setting():
    B = backend_module._resolve("numba")
    before = numba.get_num_threads()
    try:
        with tn.use_backend("numba"):
            spec = lambda sizes, output="sigmoid": tn.MLP.from_sizes(  # noqa: E731
                sizes, "sigmoid", output, seed=0
            ).epoch_spec(tn.SquaredError(0.5), tn.SGD(0.1))
            numba.set_num_threads(1)
            assert B.team_size(spec([784, 128, 10])) == 1
            if min(cpu_count(), numba.config.NUMBA_NUM_THREADS) >= 2:
                numba.set_num_threads(2)
                assert B.team_size(spec([784, 128, 10])) == 2
            # per sample: too few rows to split, a softmax first layer, or later layers that
            # outweigh it; mini-batches: a softmax before the last layer
            assert B.team_size(spec([784, 32, 10])) == 1
            assert B.team_size(spec([784, 128], "softmax")) == 1
            assert B.team_size(spec([64, 128, 1024, 10])) == 1
            assert B.team_size(spec([784, 128, 10], "softmax"), 32) == numba.get_num_threads()
            softmax_hidden = tn.MLP.from_sizes([784, 128, 10], "softmax", "sigmoid", seed=0)
            spec_hidden = softmax_hidden.epoch_spec(tn.SquaredError(0.5), tn.SGD(0.1))
            assert B.team_size(spec_hidden, 32) == 1
    finally:
        numba.set_num_threads(before)


def test_the_compiled_mini_batch_loop_is_chosen_by_batch_momentum_and_weight_size():
    B = backend_module._resolve("numba")
    with tn.use_backend("numba"):
        small, large = (
            tn.MLP.from_sizes(sizes, "relu", "softmax", seed=0)
            for sizes in ([784, 128, 10], [784, 256, 10])  # 392 KiB and 784 KiB of weights
        )
        for momentum, most in ((0.0, 16), (0.9, 32)):  # momentum: the tiles fuse its pass
            spec = small.epoch_spec(tn.CrossEntropy(), tn.SGD(0.1, momentum=momentum))
            assert B._compiled_loop(spec, most) and not B._compiled_loop(spec, most + 1)
            big = large.epoch_spec(tn.CrossEntropy(), tn.SGD(0.1, momentum=momentum))
            assert B._compiled_loop(big, 1) and not B._compiled_loop(big, 2)


@TWO_THREADS
@pytest.mark.parametrize(
    ("batch", "sizes", "hidden", "output", "loss", "momentum", "dtype", "freeze"),
    [
        (16, [784, 100, 10], "sigmoid", "sigmoid", tn.SquaredError(0.5), 0.0, "float32", None),
        (7, [784, 64, 30, 10], "relu", "softmax", tn.CrossEntropy(), 0.9, "float64", "bias"),
        (32, [784, 48, 10], "tanh", "softmax", tn.CrossEntropy("sum"), 0.9, "float32", "weights"),
        (8, [784, 64, 30, 10], "relu", "softmax", tn.CrossEntropy(), "adam", "float64", None),
        (32, [784, 48, 10], "tanh", "softmax", tn.CrossEntropy(), "adam", "float32", "weights"),
    ],
)
def test_mini_batch_team_matches_one_thread_and_the_reference(
    batch, sizes, hidden, output, loss, momentum, dtype, freeze
):
    args = (sizes, hidden, output, loss, momentum, dtype, freeze, batch)
    # each thread sums the losses of its share of every batch: only the order of the sum differs
    _assert_team_matches_one_thread_and_the_reference(args, dtype, loss_rtol=1e-12)


@pytest.fixture(scope="module")
def compiled_gemm():
    """blas.gemm called from compiled code, as the BLAS epoch calls it."""
    import numba

    from tinynet.kernels.numba.blas import gemm

    @numba.njit
    def call(address, trans_a, trans_b, alpha, A, B, beta, C, rows):
        gemm(address, trans_a, trans_b, alpha, A[:rows], B, beta, C[:rows])

    return call


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_the_compiled_gemm_call_is_the_row_major_product(compiled_gemm, dtype, trans_a, trans_b):
    from tinynet.kernels.numba.blas import gemm_address

    rng = np.random.default_rng(0)
    m, n, k, rows = 7, 5, 3, 4  # only the first `rows` rows of A (or A^T) and C take part
    A = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    B = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    C = rng.normal(size=(m, n)).astype(dtype)
    if trans_a:  # op(A) = A^T: C's rows come from A's columns, so take them all
        rows = m
    before = C.astype(np.float64)
    opA = (A.T if trans_a else A).astype(np.float64)
    opB = (B.T if trans_b else B).astype(np.float64)
    compiled_gemm(gemm_address(A.dtype), trans_a, trans_b, -0.5, A, B, 2.0, C, rows)
    expected = before.copy()
    expected[:rows] = -0.5 * opA[:rows] @ opB + 2.0 * before[:rows]
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(C, expected, rtol=tol, atol=tol)


FORK_CHILD = """
import os, sys
import numpy as np
import numba
import tinynet as tn

numba.set_num_threads(2)
x, y = tn.datasets.mnist_sample("train")
tn.set_backend("numba")
net = tn.MLP.from_sizes([784, 128, 10], "sigmoid", "sigmoid", seed=0, rescale=(1 / 255, 0))
assert net.backend.team_size(net.epoch_spec(tn.SquaredError(0.5), tn.SGD(0.1))) == 2
net.fit(x[:300], y[:300], tn.SquaredError(0.5), tn.SGD(0.1), batch_size=1)  # the pool exists
pid = os.fork()
if pid == 0:  # the child trains with a team of its own
    net.fit(x[:300], y[:300], tn.SquaredError(0.5), tn.SGD(0.1), batch_size=1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@TWO_THREADS
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_trains_with_a_team_of_its_own():
    # before the fix the child waited forever for the parent's pool threads: hence the timeout
    done = subprocess.run([sys.executable, "-c", FORK_CHILD], timeout=300, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.parametrize("batch", [1, 16])
def test_two_threads_can_train_models_of_one_shape_at_once(batch):
    from concurrent.futures import ThreadPoolExecutor

    (x, y) = tn.datasets.mnist_sample("train")

    def train(seed):
        with tn.use_backend("numba"):
            net = tn.MLP.from_sizes(
                [784, 64, 10], "sigmoid", "sigmoid", seed=seed, rescale=(1 / 255, 0.0)
            )
            loss, opt = tn.SquaredError(0.5), tn.SGD(0.1)
            net.fit(x[:400], y[:400], loss, opt, batch_size=batch, seed=seed)
            return net.get_weights()[0][0]

    alone = [train(seed) for seed in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(train, (1, 2)))
    for W, W_alone in zip(together, alone, strict=True):
        np.testing.assert_array_equal(W, W_alone)


def test_product_handles_any_2d_input_as_numpy_does():
    from tinynet.kernels.numba.blas import product

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    for dtype in ("float32", "float64"):
        got = product(a.astype(dtype), b.astype(dtype), trans_b=True)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, a @ b.T, rtol=1e-5 if dtype == "float32" else 1e-13)
    np.testing.assert_allclose(product(a, a, trans_a=True), a.T @ a, rtol=1e-13)
    # a one-row array may carry any stride for its single row: the BLAS must not see it
    row = np.lib.stride_tricks.as_strided(a[0].copy(), shape=(1, 3), strides=(0, 8))
    column = a[:, :1].copy()
    np.testing.assert_allclose(product(column, row), column @ a[:1], rtol=1e-13)
    np.testing.assert_allclose(product(row, b, trans_b=True), a[:1] @ b.T, rtol=1e-13)
    # transposed views (gemm transposes them, nothing copied), non-contiguous views, mixed
    # float types, integers: NumPy's promotion and result
    np.testing.assert_allclose(product(a, b.T), a @ b.T, rtol=1e-13)
    np.testing.assert_allclose(product(a.T, b.T, trans_a=True), a @ b.T, rtol=1e-13)
    np.testing.assert_allclose(product(a.T.astype(np.float32), b.T, True), a @ b.T, rtol=1e-6)
    view = a[::2]
    np.testing.assert_allclose(product(view, b, trans_b=True), view @ b.T, rtol=1e-13)
    mixed = product(a.astype(np.float32), b.T)
    assert mixed.dtype == np.float64
    assert product(np.ones((2, 3), int), np.ones((3, 2), int)).dtype.kind == "i"
    with pytest.raises(ValueError):
        product(a, b)  # (5, 3) @ (4, 3)


def test_the_numba_backend_runs_its_products_on_one_blas(monkeypatch):
    # NumPy's OpenBLAS and SciPy's are two thread pools whose idle threads spin against each
    # other's: every float product of the numba backend goes to SciPy's (blas.product)
    (x, y) = tn.datasets.mnist_sample("train")
    with tn.use_backend("numba"):
        net = tn.MLP.from_sizes([784, 32, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
        net.fit(x[:200], y[:200], tn.CrossEntropy(), tn.SGD(0.1), batch_size=64)

        def no_numpy_products(*args, **kwargs):
            raise AssertionError("a product on NumPy's BLAS")

        monkeypatch.setattr(np, "dot", no_numpy_products)
        net.fit(x[:200], y[:200], tn.CrossEntropy(), tn.SGD(0.1), batch_size=64)
        net.train_step(x[:64], y[:64], tn.CrossEntropy(), tn.SGD(0.1))
        net.predict(x[:100])
