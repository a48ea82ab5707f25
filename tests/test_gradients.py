"""Backprop against central finite differences in float64, for every activation x loss."""

from __future__ import annotations

import numpy as np
import pytest

import tinynet as tn

HIDDEN = ["identity", "sigmoid", "tanh", "relu", "step"]
OUTPUT_LOSSES = [
    ("identity", tn.SquaredError(scale=1.0, reduction="mean")),
    ("sigmoid", tn.SquaredError(scale=0.5, reduction="sum")),
    ("tanh", tn.SquaredError(scale=2.0, reduction="mean")),
    ("relu", tn.SquaredError(scale=1.0, reduction="sum")),
    ("softmax", tn.SquaredError(scale=0.5, reduction="mean")),
    ("softmax", tn.CrossEntropy(reduction="mean")),
    ("softmax", tn.CrossEntropy(reduction="sum")),
]


def _loss_of(net: tn.MLP, loss: tn.Loss, x: np.ndarray, t: np.ndarray) -> float:
    return loss(net.predict(x), t)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSSES, ids=lambda v: repr(v))
def test_backprop_matches_finite_differences(backend_name, hidden, output, loss):
    rng = np.random.default_rng(7)
    net = tn.MLP(
        [
            tn.Dense(5, 4, hidden, dtype="float64", seed=1),
            tn.Dense(4, 3, output, dtype="float64", seed=2),
        ]
    )
    for layer in net.layers:  # non-zero biases, so their gradients are exercised too
        W, _ = layer.get_weights()
        layer.set_weights(W, rng.normal(0, 0.5, layer.out_features))
    x = rng.normal(size=(6, 5))
    t = rng.dirichlet(np.ones(3), size=6)  # rows sum to 1, as CrossEntropy requires

    value, delta = loss.value_and_delta(net.backend, net.forward(x), net.backend.asarray(t), output)
    net.backward(delta)
    assert float(value) == pytest.approx(_loss_of(net, loss, x, t), rel=1e-12)

    eps = 1e-6
    for layer in net.layers:
        for p in layer.parameters():
            analytic = tn.to_numpy(p.grad)
            base = tn.to_numpy(p.data).copy()
            numeric = np.zeros_like(base)
            for idx in np.ndindex(base.shape):
                for sign in (1, -1):
                    shifted = base.copy()
                    shifted[idx] += sign * eps
                    p.data = net.backend.asarray(shifted)
                    numeric[idx] += sign * _loss_of(net, loss, x, t) / (2 * eps)
            p.data = net.backend.asarray(base)
            np.testing.assert_allclose(
                analytic, numeric, rtol=1e-5, atol=1e-8, err_msg=f"{p.name} of {layer!r}"
            )
