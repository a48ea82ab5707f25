"""Seed 004's perceptron: learns AND/OR, cannot learn XOR; an MLP learns XOR."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tinynet as tn

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
AND, OR, XOR = np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1]), np.array([0, 1, 1, 0])


@pytest.mark.parametrize(("name", "d"), [("AND", AND), ("OR", OR)])
def test_perceptron_learns_linearly_separable_gates(backend_name, name, d):
    p = tn.Perceptron(2, lr=0.1).fit(X, d)
    assert p.stop_reason == "converged"
    assert p.errors_per_epoch[-1] == 0
    np.testing.assert_array_equal(p.predict(X), d)


def test_perceptron_rule_by_hand():
    # One epoch of w <- w + lr (d - y) x from zero weights on AND, x = [+1, x1, x2]:
    # (0,0): y = step(0) = 1, d = 0 -> w = [-0.1, 0, 0]; (0,1): y = 0 = d; (1,0): y = 0 = d;
    # (1,1): y = step(-0.1) = 0, d = 1 -> w = [0, 0.1, 0.1].
    p = tn.Perceptron(2, lr=0.1, max_epochs=1).fit(X, AND)
    np.testing.assert_allclose(p.weights, [0.0, 0.1, 0.1], atol=1e-15)
    assert p.errors_per_epoch == [2] and p.stop_reason == "max_epochs"


def test_perceptron_cannot_learn_xor(backend_name):
    # No line separates XOR: w0 < 0 (0,0 -> 0), w0 + w1 >= 0, w0 + w2 >= 0 imply
    # w0 + w1 + w2 >= -w0 > 0, so (1,1) -> 1. Every run must end with an error left.
    for seed in (None, 0, 1, 2):
        p = tn.Perceptron(2, lr=0.1, max_epochs=200, seed=seed).fit(X, XOR)
        assert p.stop_reason in ("max_epochs", "stalled")
        assert min(p.errors_per_epoch) > 0
        assert (p.predict(X) != XOR).sum() >= 1
    # and no weights on a grid do better than 3 of 4
    grid = np.linspace(-2, 2, 21)
    best = max(
        ((np.c_[np.ones(4), X] @ np.array(w) >= 0).astype(int) == XOR).sum()
        for w in itertools.product(grid, repeat=3)
    )
    assert best == 3


def test_perceptron_stops_when_weights_stop_changing():
    # lr so small the updates fall under tol: the "weights stopped changing" criterion fires.
    p = tn.Perceptron(2, lr=1e-12, tol=1e-9, patience=3, max_epochs=100).fit(X, XOR)
    assert p.stop_reason == "stalled" and len(p.errors_per_epoch) == 3


def test_mlp_learns_xor(backend_name):
    net = tn.MLP.from_sizes([2, 4, 1], "tanh", "sigmoid", seed=0, dtype="float64")
    net.fit(X, XOR.astype(float), tn.SquaredError(), tn.SGD(0.5), epochs=2000, batch_size=4)
    np.testing.assert_array_equal((net.predict(X)[:, 0] > 0.5).astype(int), XOR)


def test_perceptron_bad_input():
    with pytest.raises(tn.ShapeError, match=r"\(n, 2\)"):
        tn.Perceptron(2).fit(np.zeros((4, 3)), AND)
    with pytest.raises(tn.ShapeError, match=r"\{0, 1\}"):
        tn.Perceptron(2).fit(X, np.array([0, 2, 1, 0]))
    with pytest.raises(tn.InvalidInputError, match="learning rate"):
        tn.Perceptron(2, lr=0)
    with pytest.raises(tn.InvalidInputError, match="NaN"):
        tn.Perceptron(2).fit(np.array([[0, np.nan]] * 4), AND)
