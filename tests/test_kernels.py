"""Kernels against formulas written out independently (float64 NumPy, elementwise Python)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinynet as tn

ACTS = {
    "identity": lambda z: z,
    "sigmoid": lambda z: 1 / (1 + math.exp(-z)) if z > -700 else 0.0,
    "tanh": math.tanh,
    "relu": lambda z: max(z, 0.0),
    "step": lambda z: 1.0 if z >= 0 else 0.0,
    "leaky_relu": lambda z: z if z > 0 else 0.2 * z,  # alpha 0.2, passed below
}
ALPHA = {"leaky_relu": 0.2}


def _naive_dense(x, W, b, activation):
    z = [
        [
            sum(x[i][k] * W[j][k] for k in range(len(W[0]))) + (b[j] if b is not None else 0.0)
            for j in range(len(W))
        ]
        for i in range(len(x))
    ]
    if activation == "softmax":
        out = []
        for row in z:
            m = max(row)
            e = [math.exp(v - m) for v in row]
            out.append([v / sum(e) for v in e])
        return np.array(out)
    return np.array([[ACTS[activation](v) for v in row] for row in z])


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 7),
    n_in=st.integers(1, 9),
    n_out=st.integers(1, 6),
    activation=st.sampled_from([*ACTS, "softmax"]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dense_forward_matches_the_formula(batch, n_in, n_out, activation, bias, seed):
    rng = np.random.default_rng(seed)
    x, W, b = rng.normal(size=(batch, n_in)), rng.normal(size=(n_out, n_in)), rng.normal(size=n_out)
    B = tn.get_backend()
    y = B.dense_forward(
        B.asarray(x),
        B.asarray(W),
        B.asarray(b) if bias else None,
        activation,
        ALPHA.get(activation, 0.0),
    )
    assert y.shape == (batch, n_out)
    expected = _naive_dense(x.tolist(), W.tolist(), b.tolist() if bias else None, activation)
    np.testing.assert_allclose(tn.to_numpy(y), expected, rtol=1e-12, atol=1e-12)


def test_sigmoid_and_softmax_are_exact_and_quiet_at_the_limits(backend_name):
    B = tn.get_backend()
    for dtype in (np.float32, np.float64):
        z = np.array([[1000.0, -1000.0, 0.0]], dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise"):
                x, eye = B.asarray(z), B.asarray(np.eye(3, dtype=dtype))  # x I^T = z exactly
                s = tn.to_numpy(B.dense_forward(x, eye, None, "sigmoid"))
                p = tn.to_numpy(B.dense_forward(x, eye, None, "softmax"))
        assert s.tolist() == [[1.0, 0.0, 0.5]]
        assert p.tolist() == [[1.0, 0.0, 0.0]]
        assert s.dtype == dtype and p.dtype == dtype


def test_activation_gradients_from_saved_outputs(backend_name):
    B = tn.get_backend()
    y = np.array([[0.2, 0.7, 0.0, 0.9]])
    dy = np.array([[1.0, -2.0, 3.0, 0.5]])
    cases = {
        "identity": dy,
        "sigmoid": dy * y * (1 - y),
        "tanh": dy * (1 - y**2),
        "relu": dy * np.array([[1, 1, 0, 1]]),
        "step": np.zeros_like(dy),
        "leaky_relu": dy * np.array([[1, 1, 0.2, 1]]),  # alpha 0.2 where y <= 0, as PyTorch
    }
    for name, expected in cases.items():
        got = B.activation_backward(name, B.asarray(y), B.asarray(dy), ALPHA.get(name, 0.0))
        np.testing.assert_allclose(tn.to_numpy(got), expected, rtol=1e-15, err_msg=name)
    # softmax: the Jacobian diag(p) - p p^T applied to dy, built explicitly.
    p = np.array([[0.1, 0.2, 0.3, 0.4]])
    jac = np.diag(p[0]) - np.outer(p[0], p[0])
    got = B.activation_backward("softmax", B.asarray(p), B.asarray(dy))
    np.testing.assert_allclose(tn.to_numpy(got)[0], jac @ dy[0], rtol=1e-14)


def test_losses_and_their_gradients(backend_name):
    B = tn.get_backend()
    y = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    t = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    per_sample = [0.2**2 + 0.2**2, 0.4**2 + 0.4**2, 0.5**2 + 0.5**2]
    loss, dy = B.squared_error(B.asarray(y), B.asarray(t), 0.5, "mean")
    assert float(loss) == pytest.approx(0.5 * sum(per_sample) / 3, rel=1e-14)
    np.testing.assert_allclose(tn.to_numpy(dy), -(t - y) / 3, rtol=1e-14)
    loss, dy = B.squared_error(B.asarray(y), B.asarray(t), 1.0, "sum")
    assert float(loss) == pytest.approx(sum(per_sample), rel=1e-14)
    np.testing.assert_allclose(tn.to_numpy(dy), -2 * (t - y), rtol=1e-14)

    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.5))
    loss, dz = B.softmax_cross_entropy(B.asarray(y), B.asarray(t), "mean")
    assert float(loss) == pytest.approx(ce / 3, rel=1e-14)
    np.testing.assert_allclose(tn.to_numpy(dz), (y - t) / 3, rtol=1e-14)
    loss, dz = B.softmax_cross_entropy(B.asarray(y), B.asarray(t), "sum")
    assert float(loss) == pytest.approx(ce, rel=1e-14)
    # A probability that underflowed to 0 gives a large finite loss, not inf or NaN.
    loss, _ = B.softmax_cross_entropy(
        B.asarray(np.array([[0.0, 1.0]], np.float32)),
        B.asarray(np.array([[1.0, 0.0]], np.float32)),
        "mean",
    )
    assert math.isfinite(float(loss)) and float(loss) > 80

    # sigmoid outputs, each a yes/no: by hand, -[t log p + (1 - t) log(1 - p)] per output
    bce = -sum(
        math.log(p) if target else math.log(1 - p)
        for row_p, row_t in zip(y, t, strict=True)
        for p, target in zip(row_p, row_t, strict=True)
    )
    loss, dz = B.sigmoid_cross_entropy(B.asarray(y), B.asarray(t), "mean")
    assert float(loss) == pytest.approx(bce / 3, rel=1e-14)
    np.testing.assert_allclose(tn.to_numpy(dz), (y - t) / 3, rtol=1e-14)
    soft = np.array([[0.25]])  # a soft target: -(0.25 log 0.2 + 0.75 log 0.8)
    loss, dz = B.sigmoid_cross_entropy(B.asarray(np.array([[0.2]])), B.asarray(soft), "sum")
    assert float(loss) == pytest.approx(-(0.25 * math.log(0.2) + 0.75 * math.log(0.8)), rel=1e-14)
    np.testing.assert_allclose(tn.to_numpy(dz), [[0.2 - 0.25]], rtol=1e-14)
    # probabilities rounded to 0 and to 1 give large finite losses
    loss, _ = B.sigmoid_cross_entropy(
        B.asarray(np.array([[0.0, 1.0]], np.float32)),
        B.asarray(np.array([[1.0, 0.0]], np.float32)),
        "mean",
    )
    assert math.isfinite(float(loss)) and float(loss) > 160


def test_weight_and_bias_gradients_and_sgd(backend_name):
    B = tn.get_backend()
    rng = np.random.default_rng(0)
    dz, x = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    dW = tn.to_numpy(B.weight_grad(B.asarray(dz), B.asarray(x)))
    expected = sum(np.outer(dz[i], x[i]) for i in range(4))  # sum of per-sample delta x^T
    np.testing.assert_allclose(dW, expected, rtol=1e-12)
    np.testing.assert_allclose(tn.to_numpy(B.bias_grad(B.asarray(dz))), dz.sum(0), rtol=1e-14)

    w, g = B.asarray(np.array([1.0, 2.0])), B.asarray(np.array([0.5, -1.0]))
    v = B.asarray(np.zeros(2))
    B.sgd_update(w, g, 0.1, v, 0.9)
    B.sgd_update(w, g, 0.1, v, 0.9)  # v = g, then 0.9 g + g = 1.9 g
    np.testing.assert_allclose(tn.to_numpy(w), [1 - 0.1 * 2.9 * 0.5, 2 + 0.1 * 2.9], rtol=1e-14)
    w = B.asarray(np.array([1.0, 2.0]))
    B.sgd_update(w, g, 0.1)
    np.testing.assert_allclose(tn.to_numpy(w), [0.95, 2.1], rtol=1e-14)


def test_rescale_maps_pixels(backend_name):
    B = tn.get_backend()
    x = np.array([[0, 255, 51]], dtype=np.uint8)
    y = tn.to_numpy(B.rescale(B.asarray(x), 0.99 / 255, 0.01, np.float32))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.01, 1.0, 0.01 + 0.99 * 0.2]], rtol=1e-6)
