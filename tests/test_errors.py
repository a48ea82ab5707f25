"""The remaining bad inputs: each one gets its clear error (the common ones are in test_model)."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest

import tinynet as tn
from tinynet import backend as backend_module


def test_model_construction_errors():
    with pytest.raises(tn.InvalidInputError, match="non-empty list of layers"):
        tn.MLP([])
    with pytest.raises(tn.InvalidInputError, match="non-empty list of layers"):
        tn.MLP(["not a layer"])
    with pytest.raises(tn.InvalidInputError, match="last layer of an MLP must be Dense"):
        tn.MLP([tn.Dense(2, 2), tn.Rescaling(0.5)])
    with pytest.raises(tn.InvalidInputError, match="at least an input and an output"):
        tn.MLP.from_sizes([784])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(tn.InvalidInputError, match="in_features must be a positive integer"):
            tn.Dense(bad, 2)
    with pytest.raises(tn.InvalidInputError, match="unknown dtype 'banana'"):
        tn.Dense(2, 2, dtype="banana")
    with pytest.raises(tn.InvalidInputError, match="non-zero scale"):
        tn.Rescaling(0.0)
    with pytest.raises(tn.InvalidInputError, match="non-zero scale"):
        tn.Rescaling(float("nan"))


def test_layers_from_different_backends_do_not_mix(monkeypatch):
    with tn.use_backend("numpy"):
        first = tn.Dense(2, 3)
    other = type(first.backend)()  # a second backend instance, as after switching backends
    monkeypatch.setattr("tinynet.layers.get_backend", lambda: other)
    second = tn.Dense(3, 2)
    with pytest.raises(tn.InvalidInputError, match="same backend"):
        tn.MLP([first, second])


def test_set_weights_errors():
    layer = tn.Dense(3, 2)
    with pytest.raises(tn.ShapeError, match=r"bias must have shape \(2,\)"):
        layer.set_weights(np.ones((2, 3)), np.ones(3))
    with pytest.raises(tn.InvalidInputError, match="weights contain NaN or inf"):
        layer.set_weights(np.full((2, 3), np.nan), np.zeros(2))
    with pytest.raises(tn.InvalidInputError, match="bias contain NaN or inf"):
        layer.set_weights(np.ones((2, 3)), np.array([0.0, np.inf]))


def test_input_and_target_dtypes_and_empty_data():
    net = tn.MLP.from_sizes([2, 2])
    loss, opt = tn.CrossEntropy(), tn.SGD(0.1)
    with pytest.raises(tn.InvalidInputError, match="input must be numeric, got dtype <U1"):
        net.predict(np.array([["a", "b"]]))
    with pytest.raises(tn.InvalidInputError, match="targets must be numeric"):
        net.fit(np.zeros((1, 2)), np.array([["x", "y"]]), loss, opt)
    with pytest.raises(tn.ShapeError, match="no training samples"):
        net.fit(np.zeros((0, 2)), np.zeros((0, 2)), loss, opt)
    with pytest.raises(tn.InvalidInputError, match="must be a tinynet loss"):
        net.train_step(np.zeros((1, 2)), np.array([0]), "cross_entropy", opt)
    with pytest.raises(tn.ShapeError, match="1-D integer array"):
        tn.one_hot(np.array([[0, 1]]), 2)
    with pytest.raises(tn.ShapeError, match="1-D integer array"):
        tn.one_hot(np.array([0.5]), 2)


def test_loss_and_optimizer_settings():
    with pytest.raises(tn.ShapeError, match=r"outputs have shape \(1, 2\) but targets .*\(1, 3\)"):
        tn.SquaredError()(np.zeros((1, 2)), np.zeros((1, 3)))
    for scale in (0, -1.0):
        with pytest.raises(tn.InvalidInputError, match="scale must be positive"):
            tn.SquaredError(scale=scale)
    for momentum in (-0.1, 1.0, 2):
        with pytest.raises(tn.InvalidInputError, match=r"momentum must be in \[0, 1\)"):
            tn.SGD(0.1, momentum=momentum)


def test_images_and_labels_of_different_lengths(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYNET_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from tinynet.datasets import mnist_loader

    def idx(code, dims, body):
        return bytes([0, 0, code, len(dims)]) + np.array(dims, ">u4").tobytes() + body

    images, labels = idx(8, (3, 2, 2), bytes(12)), idx(8, (2,), bytes(2))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    for name, payload in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        monkeypatch.setitem(mnist_loader.SHA256, name, hashlib.sha256(payload).hexdigest())
    with pytest.raises(tn.DataFileError, match="3 images but 2 labels"):
        tn.datasets.mnist("test", data_dir=tmp_path, download=False)


def test_a_damaged_model_file(tmp_path):
    path = tmp_path / "m.npz"
    tn.MLP.from_sizes([2, 3, 2], seed=0).save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "1.weight"}  # a weight gone missing
    np.savez(path, **arrays)
    with pytest.raises(tn.ModelFileError, match="damaged"):
        tn.load(path)
    arrays["__config__"] = np.array(json.dumps([{"type": "Dense", "in_featurez": 2}]))
    np.savez(path, **arrays)
    with pytest.raises(tn.ModelFileError, match="damaged"):
        tn.load(path)


def test_auto_with_no_usable_backend_says_why(monkeypatch):
    monkeypatch.setattr(backend_module, "_REGISTRY", {"ghost": ("no_such_module_x", "X")})
    monkeypatch.setattr(backend_module, "_AUTO_PREFERENCE", ("ghost",))
    with pytest.raises(tn.BackendError, match="no usable backend: backend 'ghost' cannot be used"):
        tn.set_backend("auto")
