"""Every backend against the NumPy reference: each kernel, and whole training runs.

Tolerances: one kernel call, float32 rtol 1e-4, atol 1e-5; float64 rtol 1e-10. Whole runs with
the same seed end with the same test accuracy within 0.2 percentage points, and losses and
weights as close as float64's rounding allows (float64) or as close to the float64 twin of the
run as the float32 reference is (float32: tests/tolerance.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinynet as tn
from tests.backends import backend_params
from tests.tolerance import assert_float32_close, assert_weights_close
from tinynet import backend as backend_module

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}
ACTIVATIONS = ["identity", "step", "sigmoid", "tanh", "relu", "softmax", "leaky_relu"]
ALPHA = {"leaky_relu": 0.2}  # the parameter each takes (not the default 0.01); 0 otherwise
SIZES = [1, 7, 784, 1030]


@pytest.fixture(params=backend_params(exclude=("numpy",)))
def other(request):
    return backend_module._resolve(request.param)


REF = backend_module._resolve("numpy")


def _close(got, expected, dtype):
    got = tn.to_numpy(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    np.testing.assert_allclose(got, expected, **TOL[dtype])


def _both(B, *arrays):
    return [B.asarray(a) for a in arrays]


def _data(rng, batch, n_in, n_out, dtype):
    x = rng.normal(size=(batch, n_in)).astype(dtype)
    W = (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
    b = rng.normal(size=n_out).astype(dtype)
    return x, W, b


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", SIZES)
@pytest.mark.parametrize("width", [1, 7, 784, 1030])
def test_matmul_and_gradients(other, dtype, batch, width):
    rng = np.random.default_rng(batch * 7919 + width)
    x, W, _ = _data(rng, batch, width, 13, dtype)
    dz = rng.normal(size=(batch, 13)).astype(dtype)
    _close(other.matmul(*_both(other, x, W.T)), REF.matmul(x, W.T), dtype)
    _close(other.matmul(*_both(other, dz, W)), REF.matmul(dz, W), dtype)
    _close(other.weight_grad(*_both(other, dz, x)), REF.weight_grad(dz, x), dtype)
    _close(other.bias_grad(other.asarray(dz)), REF.bias_grad(dz), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward_and_activation_backward(other, dtype, activation, bias):
    rng = np.random.default_rng(1)
    for batch, n_in, n_out in [(1, 784, 128), (7, 13, 1030), (33, 1030, 10)]:
        x, W, b = _data(rng, batch, n_in, n_out, dtype)
        b = b if bias else None
        alpha = ALPHA.get(activation, 0.0)
        y_ref = REF.dense_forward(x, W, b, activation, alpha)
        y = other.dense_forward(
            *_both(other, x, W), None if b is None else other.asarray(b), activation, alpha
        )
        _close(y, y_ref, dtype)
        dy = rng.normal(size=y_ref.shape).astype(dtype)
        _close(
            other.activation_backward(activation, *_both(other, y_ref, dy), alpha),
            REF.activation_backward(activation, y_ref, dy, alpha),
            dtype,
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_losses(other, dtype, reduction):
    rng = np.random.default_rng(2)
    for batch in SIZES:
        z = rng.normal(size=(batch, 10)).astype(dtype)
        p = REF.activate(z.copy(), "softmax")
        t = tn.one_hot(rng.integers(0, 10, batch), 10, dtype=dtype)
        for (loss_ref, g_ref), (loss, g) in [
            (
                REF.squared_error(p, t, 0.5, reduction),
                other.squared_error(*_both(other, p, t), 0.5, reduction),
            ),
            (
                REF.softmax_cross_entropy(p, t, reduction),
                other.softmax_cross_entropy(*_both(other, p, t), reduction),
            ),
            (
                REF.sigmoid_cross_entropy(p, t, reduction),
                other.sigmoid_cross_entropy(*_both(other, p, t), reduction),
            ),
        ]:
            _close(loss, loss_ref, dtype)
            _close(g, g_ref, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update_and_rescale(other, dtype, momentum):
    rng = np.random.default_rng(3)
    for shape in [(1,), (7, 13), (1030, 784)]:
        w, g = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
        v = rng.normal(size=shape).astype(dtype)
        w_ref, v_ref = w.copy(), v.copy()
        REF.sgd_update(w_ref, g, 0.1, v_ref if momentum else None, momentum)
        w_o, g_o, v_o = _both(other, w, g, v)
        other.sgd_update(w_o, g_o, 0.1, v_o if momentum else None, momentum)
        _close(w_o, w_ref, dtype)
    pixels = rng.integers(0, 256, (7, 784)).astype(np.uint8)
    _close(
        other.rescale(other.asarray(pixels), 0.99 / 255, 0.01, np.dtype(dtype)),
        REF.rescale(pixels, 0.99 / 255, 0.01, np.dtype(dtype)),
        dtype,
    )


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 40),
    n_in=st.integers(1, 70),
    n_out=st.integers(1, 40),
    activation=st.sampled_from(ACTIVATIONS),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_dense_layer_parity_any_shape(batch, n_in, n_out, activation, dtype):
    rng = np.random.default_rng(batch * 10_000 + n_in * 100 + n_out)
    x, W, b = _data(rng, batch, n_in, n_out, dtype)
    for name, why in backend_module.backend_status().items():
        if name == "numpy" or why:
            continue
        B = backend_module._resolve(name)
        alpha = ALPHA.get(activation, 0.0)
        y = B.dense_forward(*_both(B, x, W), B.asarray(b), activation, alpha)
        _close(y, REF.dense_forward(x, W, b, activation, alpha), dtype)
        dz = rng.normal(size=(batch, n_out)).astype(dtype)
        _close(B.weight_grad(*_both(B, dz, x)), REF.weight_grad(dz, x), dtype)


def _train(
    backend: str,
    batch: int,
    momentum: float,
    dtype: str,
    loss: tn.Loss,
    hidden: str,
    output: str,
    bias: bool = True,
    freeze: str | None = None,
):
    (x, y), (xt, yt) = tn.datasets.mnist_sample("train"), tn.datasets.mnist_sample("test")
    n = 2000 if batch > 1 else 600
    with tn.use_backend(backend):
        net = tn.MLP.from_sizes(
            [784, 32, 16, 10],
            hidden,
            output,
            seed=0,
            dtype=dtype,
            bias=bias,
            rescale=(1 / 255, 0.0),
        )
        if freeze:
            net.layers[1].freeze(freeze)
        # "sum" adds the batch's gradients: divide lr by the batch to keep the same step size
        lr = 0.05 / batch if loss.reduction == "sum" else 0.05
        history = net.fit(
            x[:n], y[:n], loss, tn.SGD(lr, momentum=momentum), epochs=2, batch_size=batch, seed=1
        )
        accuracy = net.evaluate(xt, yt)["accuracy"]
    return history["loss"], accuracy, net.get_weights()


@pytest.mark.parametrize(
    ("batch", "momentum", "dtype", "loss", "hidden", "output", "bias", "freeze"),
    [
        (1, 0.0, "float32", tn.SquaredError(0.5), "sigmoid", "sigmoid", False, None),
        (1, 0.9, "float64", tn.CrossEntropy(), "relu", "softmax", True, "bias"),
        (1, 0.0, "float32", tn.SquaredError(1.0, "sum"), "tanh", "softmax", True, "weights"),
        (32, 0.0, "float32", tn.CrossEntropy(), "relu", "softmax", True, None),
        (7, 0.9, "float32", tn.CrossEntropy(), "relu", "softmax", True, "weights"),
        (5, 0.0, "float64", tn.SquaredError(0.5, "sum"), "tanh", "sigmoid", False, None),
        (32, 0.9, "float64", tn.SquaredError(0.5), "sigmoid", "sigmoid", True, None),
        (100, 0.5, "float32", tn.CrossEntropy("sum"), "tanh", "softmax", False, None),
        (512, 0.0, "float32", tn.SquaredError(0.5, "sum"), "relu", "identity", True, "bias"),
        (1, 0.9, "float32", tn.BinaryCrossEntropy(), "tanh", "sigmoid", True, None),
        (16, 0.0, "float64", tn.BinaryCrossEntropy("sum"), "relu", "sigmoid", True, "bias"),
        (128, 0.9, "float32", tn.BinaryCrossEntropy(), "relu", "sigmoid", True, None),
    ],
)
def test_whole_training_runs_match_the_reference(
    other, batch, momentum, dtype, loss, hidden, output, bias, freeze
):
    args = (batch, momentum, dtype, loss, hidden, output, bias, freeze)
    loss_ref, acc_ref, weights_ref = _train("numpy", *args)
    losses, acc, weights = _train(other.name, *args)
    assert abs(acc - acc_ref) <= 0.002
    twin = None
    if dtype == "float32":  # float32's tolerance: how far the reference drifts from float64
        loss_twin, _, twin = _train("numpy", batch, momentum, "float64", *args[3:])
        assert_float32_close(losses, loss_ref, loss_twin, "losses")
    else:
        np.testing.assert_allclose(losses, loss_ref, rtol=1e-9)
    assert_weights_close(weights, weights_ref, twin, dtype)
    if freeze == "bias":  # the frozen first layer's biases never moved from their zeros
        assert not weights[0][1].any() and not weights_ref[0][1].any()


@pytest.mark.parametrize("batch", [1, 16])
def test_learning_rate_changed_between_epochs_applies_on_every_path(other, batch):
    (x, y) = tn.datasets.mnist_sample("train")
    results = []
    for name in ("numpy", other.name):
        with tn.use_backend(name):
            net = tn.MLP.from_sizes(
                [784, 16, 10], "tanh", "softmax", seed=0, dtype="float64", rescale=(1 / 255, 0.0)
            )
            opt = tn.SGD(0.05)

            def halve(epoch, record, opt=opt):
                opt.lr /= 2

            history = net.fit(
                x[:300],
                y[:300],
                tn.CrossEntropy(),
                opt,
                epochs=3,
                batch_size=batch,
                seed=0,
                on_epoch_end=halve,
            )
            results.append((history["loss"], net.get_weights()[0][0]))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-9)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-8, atol=1e-12)
    # and the halving mattered: a constant lr gives different weights
    with tn.use_backend(other.name):
        net = tn.MLP.from_sizes(
            [784, 16, 10], "tanh", "softmax", seed=0, dtype="float64", rescale=(1 / 255, 0.0)
        )
        net.fit(
            x[:300], y[:300], tn.CrossEntropy(), tn.SGD(0.05), epochs=3, batch_size=batch, seed=0
        )
    assert not np.allclose(net.get_weights()[0][0], results[1][1])
