"""Every training path against an independent oracle: a float64 loop written here from the
tutorials' formulas, sharing no code with tinynet.

Paths (the Numba backend picks them by batch size; the others run kernel by kernel): per-sample
(batch 1), compiled small batches (8), BLAS batches (64, beyond the compiled loop's 16, or 32
with momentum). Each is checked with momentum on and off and with biases on, off and frozen,
for cross-entropy after softmax and for squared error, over two epochs that end in a partial
batch. In float64 the tolerance (1e-9 relative) is some six orders of magnitude below what
dropping one sample or one bias update changes, and a test below shows that it does.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tinynet as tn

SIZES = (6, 5, 4, 3)
HIDDEN = ("tanh", "sigmoid")
ALPHA = 0.2  # leaky_relu's slope where a run uses it (not the default 0.01)
TOL = dict(rtol=1e-9, atol=1e-12)
# Per-sample steps with momentum at 0.3 grow weights past 40 and amplify rounding (any two
# float64 implementations then differ by 1e-5): a smaller step keeps the comparison exact.
LR = {1: 0.05, 8: 0.3, 64: 0.3}


# -- the oracle -------------------------------------------------------------------------------
def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "leaky_relu":
        return np.where(z > 0, z, ALPHA * z)
    e = np.exp(z - z.max(axis=1, keepdims=True))  # softmax
    return e / e.sum(axis=1, keepdims=True)


def _act_grad(name: str, y: np.ndarray) -> np.ndarray:
    """f'(z) from the output y = f(z)."""
    if name == "leaky_relu":
        return np.where(y > 0, 1.0, ALPHA)
    return 1.0 - y**2 if name == "tanh" else y * (1.0 - y)


def oracle(
    Ws,
    bs,
    X,
    T,
    *,
    loss,
    batch,
    lr,
    momentum,
    bias,
    epochs,
    out_act,
    scale=1.0,
    offset=0.0,
    hidden=HIDDEN,
):
    """Mini-batch SGD as the tutorials derive it, in float64; ``bias``: "on", "off", "frozen".
    Returns the weights and biases after ``epochs`` passes over the rows in order."""
    Ws = [W.astype(np.float64).copy() for W in Ws]
    bs = [
        np.zeros(W.shape[0]) if b is None else b.astype(np.float64).copy()
        for W, b in zip(Ws, bs, strict=True)
    ]
    vW = [np.zeros_like(W) for W in Ws]
    vb = [np.zeros_like(b) for b in bs]
    acts = [*hidden, out_act]
    for _ in range(epochs):
        for start in range(0, len(X), batch):
            x = X[start : start + batch].astype(np.float64) * scale + offset
            t = T[start : start + batch]
            nb = len(x)
            a = [x]
            for W, b, f in zip(Ws, bs, acts, strict=True):
                a.append(_act(f, a[-1] @ W.T + (b if bias != "off" else 0.0)))
            y = a[-1]
            if loss == "cross_entropy":  # E = -sum t log p, after softmax: dE/dz = p - t
                d = (y - t) / nb
            else:  # E = 0.5 sum (t - y)^2: dE/dz = (y - t) f'(z), sigmoid: (y - t) y (1 - y)
                d = 0.5 * 2.0 * (y - t) * _act_grad(out_act, y) / nb
            for layer in range(len(Ws) - 1, -1, -1):
                gW, gb = d.T @ a[layer], d.sum(axis=0)
                if layer > 0:
                    d = (d @ Ws[layer]) * _act_grad(acts[layer - 1], a[layer])
                if momentum:
                    vW[layer] = momentum * vW[layer] + gW
                    gW = vW[layer]
                Ws[layer] -= lr * gW
                if bias == "on":
                    if momentum:
                        vb[layer] = momentum * vb[layer] + gb
                        gb = vb[layer]
                    bs[layer] -= lr * gb
    return Ws, (bs if bias != "off" else [None] * len(bs))


# -- the same run through tinynet ----------------------------------------------------------------
def _problem(seed: int = 0, n: int = 2 * 64 + 3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    labels = rng.integers(0, SIZES[-1], n)
    Ws = [rng.normal(0, 0.6, (o, i)) for i, o in itertools.pairwise(SIZES)]
    bs = [rng.normal(0, 0.3, o) for o in SIZES[1:]]
    return X, labels, Ws, bs


def _tinynet_run(
    X, T, Ws, bs, *, loss, batch, lr, momentum, bias, epochs, out_act, rescale=None, hidden=HIDDEN
):
    acts = [*hidden, out_act]
    layers = [tn.Rescaling(*rescale, dtype="float64")] if rescale else []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        alpha = ALPHA if acts[i] == "leaky_relu" else None
        layers.append(
            tn.Dense(n_in, n_out, acts[i], bias=bias != "off", dtype="float64", alpha=alpha)
        )
        layers[-1].set_weights(Ws[i], bs[i] if bias != "off" else None)
    net = tn.MLP(layers)
    dense = [layer for layer in net.layers if isinstance(layer, tn.Dense)]
    if bias == "frozen":
        net.freeze("bias")
    fn = tn.CrossEntropy() if loss == "cross_entropy" else tn.SquaredError(scale=0.5)
    net.fit(X, T, fn, tn.SGD(lr, momentum), epochs=epochs, batch_size=batch, shuffle=False)
    return [layer.get_weights() for layer in dense]


CASES = [
    pytest.param(batch, momentum, bias, id=f"{path}-m{momentum}-bias_{bias}")
    for batch, path in ((1, "per_sample"), (8, "small_batch"), (64, "blas"))
    for momentum in (0.0, 0.9)
    for bias in ("on", "off", "frozen")
]


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
@pytest.mark.parametrize(("batch", "momentum", "bias"), CASES)
def test_every_path_matches_the_oracle(backend_name, batch, momentum, bias, loss):
    X, labels, Ws, bs = _problem()
    out_act = "softmax" if loss == "cross_entropy" else "sigmoid"
    T = np.eye(SIZES[-1])[labels]
    if loss == "squared_error":
        T = T * 0.98 + 0.01  # the tutorials' targets
    settings = dict(loss=loss, batch=batch, lr=LR[batch], momentum=momentum, bias=bias, epochs=2)
    got = _tinynet_run(X, T, Ws, bs, out_act=out_act, **settings)
    want_W, want_b = oracle(Ws, bs, X, T, out_act=out_act, **settings)
    for (W, b), eW, eb in zip(got, want_W, want_b, strict=True):
        np.testing.assert_allclose(W, eW, **TOL)
        if eb is None:
            assert b is None
        else:
            np.testing.assert_allclose(b, eb, **TOL)
    if bias == "frozen":
        for (_, b), b0 in zip(got, bs, strict=True):
            np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize(("batch", "path"), [(1, "per_sample"), (8, "small_batch"), (64, "blas")])
@pytest.mark.parametrize("out_act", ["softmax", "leaky_relu"])
def test_leaky_relu_on_every_path_matches_the_oracle(backend_name, batch, path, momentum, out_act):
    """leaky_relu with alpha 0.2 in both hidden layers, and as the output under squared error
    (its gradient then taken where the loss's delta is formed)."""
    X, labels, Ws, bs = _problem()
    T = np.eye(SIZES[-1])[labels]
    loss = "cross_entropy" if out_act == "softmax" else "squared_error"
    settings = dict(loss=loss, batch=batch, lr=LR[batch], momentum=momentum, bias="on", epochs=2)
    hidden = ("leaky_relu", "leaky_relu")
    got = _tinynet_run(X, T, Ws, bs, out_act=out_act, hidden=hidden, **settings)
    want_W, want_b = oracle(Ws, bs, X, T, out_act=out_act, hidden=hidden, **settings)
    for (W, b), eW, eb in zip(got, want_W, want_b, strict=True):
        np.testing.assert_allclose(W, eW, **TOL)
        np.testing.assert_allclose(b, eb, **TOL)


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_uint8_inputs_through_rescaling_match_the_oracle(backend_name, batch):
    # the default recipe's way in: uint8 rows, scaled per batch by the backend
    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, (131, SIZES[0])).astype(np.uint8)
    labels = rng.integers(0, SIZES[-1], 131)
    _, _, Ws, bs = _problem()
    T = np.eye(SIZES[-1])[labels]
    settings = dict(loss="cross_entropy", batch=batch, lr=0.3, momentum=0.9, bias="on", epochs=2)
    got = _tinynet_run(X, T, Ws, bs, out_act="softmax", rescale=(1 / 255, 0.01), **settings)
    want_W, want_b = oracle(Ws, bs, X, T, out_act="softmax", scale=1 / 255, offset=0.01, **settings)
    for (W, b), eW, eb in zip(got, want_W, want_b, strict=True):
        np.testing.assert_allclose(W, eW, **TOL)
        np.testing.assert_allclose(b, eb, **TOL)


def test_the_tolerance_catches_one_dropped_sample_or_one_missing_bias_update():
    """The faults the issue names move the result by far more than TOL allows."""
    X, labels, Ws, bs = _problem()
    T = np.eye(SIZES[-1])[labels]
    for batch in (1, 8, 64):
        settings = dict(loss="cross_entropy", lr=LR[batch], epochs=2, out_act="softmax")
        ref_W, ref_b = oracle(Ws, bs, X, T, batch=batch, momentum=0.9, bias="on", **settings)
        dropped_W, _ = oracle(
            Ws, bs, X[:-1], T[:-1], batch=batch, momentum=0.9, bias="on", **settings
        )
        gap = np.abs(dropped_W[0] - ref_W[0]).max() / np.abs(ref_W[0]).max()
        assert gap > 1e4 * TOL["rtol"], gap
        no_bias_momentum_b = oracle(Ws, bs, X, T, batch=batch, momentum=0.0, bias="on", **settings)[
            1
        ]
        gap = np.abs(no_bias_momentum_b[0] - ref_b[0]).max() / np.abs(ref_b[0]).max()
        assert gap > 1e4 * TOL["rtol"], gap
