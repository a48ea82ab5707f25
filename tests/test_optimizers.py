"""The optimizers against references written here from their formulas (float64), and against
torch.optim when PyTorch is installed: 200 steps of a small network on every backend and path.

The references follow PyTorch's documented algorithms (torch.optim.SGD with dampening 0, Adam,
AdamW), written independently of tinynet's kernels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import tinynet as tn

SIZES = (6, 5, 3)
STEPS = 200
TOL = dict(rtol=1e-10, atol=1e-10)  # weights are of order 1


class ReferenceSGD:
    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr, self.m, self.nesterov, self.wd = lr, momentum, nesterov, weight_decay
        self.v = {}

    def update(self, key, w, g):
        g = g + self.wd * w
        if self.m:
            v = self.v[key] = self.m * self.v.get(key, 0.0) + g
            g = g + self.m * v if self.nesterov else v
        return w - self.lr * g


class ReferenceAdam:
    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.wd, self.decoupled = weight_decay, decoupled
        self.state = {}

    def update(self, key, w, g):
        m, v, t = self.state.get(key, (0.0, 0.0, 0))
        t += 1
        if self.decoupled:
            w = w * (1 - self.lr * self.wd)
        else:
            g = g + self.wd * w
        m = self.b1 * m + (1 - self.b1) * g
        v = self.b2 * v + (1 - self.b2) * g * g
        self.state[key] = (m, v, t)
        m_hat, v_hat = m / (1 - self.b1**t), v / (1 - self.b2**t)
        return w - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


# name: (tinynet optimizer, reference), hyperparameters away from the defaults where they exist
OPTIMIZERS = {
    "sgd": (lambda: tn.SGD(0.2), lambda: ReferenceSGD(0.2)),
    "sgd-momentum": (lambda: tn.SGD(0.1, 0.9), lambda: ReferenceSGD(0.1, 0.9)),
    "sgd-decay": (
        lambda: tn.SGD(0.2, weight_decay=0.05),
        lambda: ReferenceSGD(0.2, 0, False, 0.05),
    ),
    "sgd-nesterov-decay": (
        lambda: tn.SGD(0.1, 0.8, nesterov=True, weight_decay=0.01),
        lambda: ReferenceSGD(0.1, 0.8, True, 0.01),
    ),
    "adam": (lambda: tn.Adam(0.01), lambda: ReferenceAdam(0.01)),
    "adam-decay": (
        lambda: tn.Adam(0.02, (0.8, 0.99), 1e-6, weight_decay=0.05),
        lambda: ReferenceAdam(0.02, (0.8, 0.99), 1e-6, 0.05),
    ),
    "adamw": (
        lambda: tn.AdamW(0.02, weight_decay=0.1),
        lambda: ReferenceAdam(0.02, weight_decay=0.1, decoupled=True),
    ),
}


def _problem(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    labels = rng.integers(0, SIZES[-1], n)
    Ws = [rng.normal(0, 0.6, (o, i)) for i, o in itertools.pairwise(SIZES)]
    bs = [rng.normal(0, 0.3, o) for o in SIZES[1:]]
    return X, labels, Ws, bs


def reference_run(X, labels, Ws, bs, optimizer, batch: int, frozen_steps: int = 0, steps=STEPS):
    """STEPS mini-batch steps (rows in order, wrapping around) of a tanh hidden layer and a
    softmax output under cross-entropy, in float64, each parameter updated by ``optimizer``;
    the first layer's weights frozen for the first ``frozen_steps`` (no update, so no step
    counted: torch.optim skips a parameter without a gradient)."""
    Ws, bs = [W.copy() for W in Ws], [b.copy() for b in bs]
    T = np.eye(SIZES[-1])[labels]
    batches = itertools.cycle(range(0, len(X), batch))
    for step in range(steps):
        start = next(batches)
        x, t = X[start : start + batch], T[start : start + batch]
        h = np.tanh(x @ Ws[0].T + bs[0])
        z = h @ Ws[1].T + bs[1]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d2 = (p - t) / len(x)  # mean cross-entropy after softmax: dE/dz = (p - t) / n
        d1 = (d2 @ Ws[1]) * (1 - h**2)
        grads = [(d1.T @ x, d1.sum(axis=0)), (d2.T @ h, d2.sum(axis=0))]
        for i, (gW, gb) in enumerate(grads):
            if i > 0 or step >= frozen_steps:
                Ws[i] = optimizer.update(("W", i), Ws[i], gW)
            bs[i] = optimizer.update(("b", i), bs[i], gb)
    return Ws, bs


def tinynet_run(X, labels, Ws, bs, optimizer, batch: int):
    net = tn.MLP.from_sizes(list(SIZES), "tanh", "softmax", dtype="float64")
    for layer, W, b in zip(net.layers, Ws, bs, strict=True):
        layer.set_weights(W, b)
    epochs, rest = divmod(STEPS * batch, len(X))
    assert rest == 0 and len(X) % batch == 0, "whole epochs of whole batches"
    net.fit(X, labels, tn.CrossEntropy(), optimizer, epochs=epochs, batch_size=batch, shuffle=False)
    return [layer.get_weights() for layer in net.layers]


# batch 1 and 8: numba's compiled loops (per sample, tiles); 20 and 40 its BLAS epoch (with
# momentum or Adam), with two batches and one per call
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("batch", [1, 8, 20, 40])
def test_every_optimizer_matches_its_reference(backend_name, name, batch):
    X, labels, Ws, bs = _problem()
    make, make_reference = OPTIMIZERS[name]
    ref_W, ref_b = reference_run(X, labels, Ws, bs, make_reference(), batch)
    got = tinynet_run(X, labels, Ws, bs, make(), batch)
    for (W, b), W_ref, b_ref in zip(got, ref_W, ref_b, strict=True):
        np.testing.assert_allclose(W, W_ref, **TOL)
        np.testing.assert_allclose(b, b_ref, **TOL)
    moved = sum(float(np.abs(W - W0).max()) for (W, _), W0 in zip(got, Ws, strict=True))
    assert moved > 1e-3  # the run trained


@pytest.mark.parametrize("resumed", [False, True], ids=["straight", "resumed"])
@pytest.mark.parametrize("batch", [1, 8, 20])
def test_a_frozen_then_unfrozen_layer_starts_its_adam_steps_at_one(
    backend_name, batch, resumed, tmp_path
):
    """The first layer's weights frozen for half the steps, then trained: their Adam step
    count starts then (bias correction 1 - beta^t from t = 1), on every path; and the same
    when the second half is a resumed run whose checkpoint holds their count of 0."""
    X, labels, Ws, bs = _problem()
    epochs = STEPS * batch // len(X)
    frozen_steps = epochs // 2 * len(X) // batch
    ref_W, ref_b = reference_run(X, labels, Ws, bs, ReferenceAdam(0.01), batch, frozen_steps)
    net = tn.MLP.from_sizes(list(SIZES), "tanh", "softmax", dtype="float64")
    for layer, W, b in zip(net.layers, Ws, bs, strict=True):
        layer.set_weights(W, b)
    settings = dict(batch_size=batch, shuffle=False)
    net.layers[0].freeze("weights")
    ckpt = tmp_path / "half.ckpt"
    optimizer = tn.Adam(0.01)
    net.fit(X, labels, tn.CrossEntropy(), optimizer, epochs // 2, checkpoint=ckpt, **settings)
    np.testing.assert_array_equal(net.layers[0].get_weights()[0], Ws[0])  # it stayed frozen
    if resumed:  # a fresh model and optimizer go on from the checkpoint
        net = tn.MLP.from_sizes(list(SIZES), "tanh", "softmax", dtype="float64", seed=9)
        optimizer = tn.Adam(0.01)
        settings["resume"] = ckpt
    net.layers[0].unfreeze()
    more = epochs if resumed else epochs - epochs // 2  # resume's epochs count those done
    net.fit(X, labels, tn.CrossEntropy(), optimizer, more, **settings)
    for layer, W_ref, b_ref in zip(net.layers, ref_W, ref_b, strict=True):
        W, b = layer.get_weights()
        np.testing.assert_allclose(W, W_ref, **TOL)
        np.testing.assert_allclose(b, b_ref, **TOL)


@pytest.mark.parametrize("batch", [8, 20])
def test_a_partial_last_batch_is_an_update_of_its_own(backend_name, batch):
    """45 rows in batches of 8 or 20: each epoch ends with a batch of 5 rows, an update that
    Adam's step count (its bias correction) must count on every path, across 6 epochs."""
    X, labels, Ws, bs = _problem(n=45)
    epochs, per_epoch = 6, -(-45 // batch)
    ref_W, ref_b = reference_run(X, labels, Ws, bs, ReferenceAdam(0.01), batch,
                                 steps=epochs * per_epoch)  # fmt: skip
    net = tn.MLP.from_sizes(list(SIZES), "tanh", "softmax", dtype="float64")
    for layer, W, b in zip(net.layers, Ws, bs, strict=True):
        layer.set_weights(W, b)
    net.fit(X, labels, tn.CrossEntropy(), tn.Adam(0.01), epochs, batch, shuffle=False)
    for layer, W_ref, b_ref in zip(net.layers, ref_W, ref_b, strict=True):
        W, b = layer.get_weights()
        np.testing.assert_allclose(W, W_ref, **TOL)
        np.testing.assert_allclose(b, b_ref, **TOL)


def test_every_optimizer_matches_torch_optim():
    torch = pytest.importorskip("torch")
    X, labels, Ws, bs = _problem()
    batch = 8
    for name, (make, _) in OPTIMIZERS.items():
        layers = [torch.nn.Linear(i, o, dtype=torch.float64) for i, o in itertools.pairwise(SIZES)]
        with torch.no_grad():
            for layer, W, b in zip(layers, Ws, bs, strict=True):
                layer.weight.copy_(torch.from_numpy(W))
                layer.bias.copy_(torch.from_numpy(b))
        params = [p for layer in layers for p in layer.parameters()]
        ours = make()
        torch_opt = _torch_optimizer(torch, ours, params)
        batches = itertools.cycle(range(0, len(X), batch))
        for _ in range(STEPS):
            start = next(batches)
            x = torch.from_numpy(X[start : start + batch])
            y = torch.from_numpy(labels[start : start + batch])
            torch_opt.zero_grad()
            z = layers[1](torch.tanh(layers[0](x)))
            torch.nn.functional.cross_entropy(z, y).backward()
            torch_opt.step()
        got = tinynet_run(X, labels, Ws, bs, make(), batch)
        with tn.use_backend("numpy"):
            for (W, b), layer in zip(got, layers, strict=True):
                np.testing.assert_allclose(W, layer.weight.detach().numpy(), **TOL, err_msg=name)
                np.testing.assert_allclose(b, layer.bias.detach().numpy(), **TOL, err_msg=name)


def _torch_optimizer(torch, ours, params):
    if isinstance(ours, tn.AdamW):
        return torch.optim.AdamW(params, ours.lr, ours.betas, ours.eps, ours.weight_decay)
    if isinstance(ours, tn.Adam):
        return torch.optim.Adam(params, ours.lr, ours.betas, ours.eps, ours.weight_decay)
    return torch.optim.SGD(
        params, ours.lr, ours.momentum, nesterov=ours.nesterov, weight_decay=ours.weight_decay
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tn.Adam(lr=0), "learning rate"),
        (lambda: tn.Adam(betas=(0.9, 1.0)), "betas"),
        (lambda: tn.Adam(betas=0.9), "betas"),
        (lambda: tn.Adam(eps=0), "eps"),
        (lambda: tn.AdamW(weight_decay=-1), "weight_decay"),
        (lambda: tn.SGD(0.1, nesterov=True), "nesterov needs a momentum"),
        (lambda: tn.SGD(0.1, 0.9, nesterov="yes"), "nesterov must be"),
        (lambda: tn.SGD(0.1, weight_decay=math.nan), "weight_decay"),
        (lambda: tn.SGD(0.1, momentum=True), "momentum"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(make, message):
    with pytest.raises(tn.InvalidInputError, match=message):
        make()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_numba_backend_fuses_every_optimizer_on_every_path(name):
    with tn.use_backend("numba") as B:
        net = tn.MLP.from_sizes(list(SIZES), "tanh", "softmax", dtype="float64")
        spec = net.epoch_spec(tn.CrossEntropy(), OPTIMIZERS[name][0]())
        assert spec is not None
        paths = {batch: B._compiled_loop(spec, batch) for batch in (1, 8, 40)}
        assert paths == {1: True, 8: True, 40: False}  # per sample, tiles, BLAS
        assert all(B.can_train_batches(spec, batch) for batch in paths)
