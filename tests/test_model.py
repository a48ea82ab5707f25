"""The MLP API: construction, fit/evaluate, freeze, save/load, and every bad-input error."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tinynet as tn


def _blobs(n=300, seed=0):
    """Three separable Gaussian blobs in 4-D: labels and inputs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], float)
    return centers[labels] + 0.3 * rng.normal(size=(n, 4)), labels


def test_dense_follows_nn_linear_conventions():
    layer = tn.Dense(3, 5, activation="relu", seed=0)
    W, b = layer.get_weights()
    assert W.shape == (5, 3) and b.shape == (5,) and W.dtype == np.float32
    assert np.all(b == 0)
    assert tn.Dense(3, 5, dtype="float64").get_weights()[0].dtype == np.float64
    no_bias = tn.Dense(3, 2, bias=False)
    no_bias.set_weights(np.ones((2, 3)), None)
    W, b = no_bias.get_weights()
    assert b is None and W.tolist() == [[1, 1, 1], [1, 1, 1]]
    with pytest.raises(tn.ShapeError, match="bias=False"):
        no_bias.set_weights(np.ones((2, 3)), np.zeros(2))
    with pytest.raises(tn.ShapeError, match=r"\(2, 3\)"):
        no_bias.set_weights(np.ones((3, 2)), None)
    with pytest.raises(tn.ShapeError, match="has a bias"):
        tn.Dense(3, 2).set_weights(np.ones((2, 3)))


def test_set_weights_copies_the_callers_arrays(backend_name):
    W, b = np.full((2, 2), 0.5), np.zeros(2)  # float64, the layer's own dtype
    net = tn.MLP([tn.Dense(2, 2, "sigmoid", dtype="float64")])
    net.layers[0].set_weights(W, b)
    net.train_step(np.ones((1, 2)), np.array([[1.0, 0.0]]), tn.SquaredError(), tn.SGD(1.0))
    assert W.tolist() == [[0.5, 0.5], [0.5, 0.5]] and b.tolist() == [0.0, 0.0]
    assert not np.array_equal(net.layers[0].get_weights()[0], W)


@pytest.mark.parametrize(
    ("init", "bound"), [("glorot_uniform", (6 / 1100) ** 0.5), ("uniform", 1000**-0.5)]
)
def test_uniform_inits_stay_in_their_documented_bounds(init, bound):
    W, _ = tn.Dense(1000, 100, init=init, seed=0, dtype="float64").get_weights()
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.95 * bound


@pytest.mark.parametrize(
    ("init", "std"), [("he_normal", (2 / 1000) ** 0.5), ("normal", 1000**-0.5)]
)
def test_normal_inits_have_their_documented_spread(init, std):
    W, _ = tn.Dense(1000, 100, init=init, seed=0, dtype="float64").get_weights()
    assert W.std() == pytest.approx(std, rel=0.02)


def test_fit_learns_and_is_deterministic(backend_name):
    X, y = _blobs()
    histories, weights = [], []
    for _ in range(2):
        net = tn.MLP.from_sizes([4, 8, 3], "tanh", "softmax", seed=3)
        h = net.fit(
            X,
            y,
            tn.CrossEntropy(),
            tn.SGD(0.1, momentum=0.5),
            epochs=5,
            batch_size=16,
            seed=11,
            validation_data=(X, y),
        )
        histories.append(h)
        weights.append(net.get_weights()[0][0])
    assert histories[0]["loss"] == histories[1]["loss"]
    np.testing.assert_array_equal(weights[0], weights[1])
    assert histories[0]["loss"][-1] < histories[0]["loss"][0] / 2
    assert histories[0]["val_accuracy"][-1] > 0.95
    assert set(histories[0].history) == {
        "loss",
        "time",
        "samples_per_s",
        "lr",
        "val_loss",
        "val_accuracy",
    }
    scores = net.evaluate(X, y, tn.CrossEntropy())
    assert scores["accuracy"] == pytest.approx(histories[1]["val_accuracy"][-1])
    assert scores["loss"] == pytest.approx(histories[1]["val_loss"][-1], rel=1e-5)
    # accuracy by hand from the NumPy outputs
    assert scores["accuracy"] == pytest.approx(np.mean(net.predict(X).argmax(1) == y))


def test_sum_and_mean_reduction_give_the_same_step_for_one_sample():
    x, t = np.array([[0.3, -0.2]]), np.array([[1.0, 0.0]])
    results = []
    for reduction in ("mean", "sum"):
        net = tn.MLP.from_sizes([2, 3, 2], "sigmoid", "sigmoid", seed=0, dtype="float64")
        net.train_step(x, t, tn.SquaredError(reduction=reduction), tn.SGD(0.5))
        results.append(net.get_weights()[0][0])
    np.testing.assert_array_equal(*results)


def test_mean_reduction_averages_the_batch():
    x = np.array([[0.3, -0.2], [0.1, 0.9]])
    t = np.array([[1.0, 0.0], [0.0, 1.0]])
    net = tn.MLP.from_sizes([2, 2], output_activation="sigmoid", seed=0, dtype="float64")
    per_sample = [
        tn.SquaredError(reduction="sum")(net.predict(x[i : i + 1]), t[i : i + 1]) for i in range(2)
    ]
    assert tn.SquaredError(reduction="mean")(net.predict(x), t) == pytest.approx(
        np.mean(per_sample)
    )
    assert tn.SquaredError(reduction="sum")(net.predict(x), t) == pytest.approx(sum(per_sample))


def test_momentum_changes_the_second_step():
    x, t = np.array([[0.5, 0.5]]), np.array([[1.0]])
    out = []
    for momentum in (0.0, 0.9):
        net = tn.MLP([tn.Dense(2, 1, dtype="float64", init="zeros")])
        opt = tn.SGD(0.1, momentum=momentum)
        net.train_step(x, t, tn.SquaredError(), opt)
        net.train_step(x, t, tn.SquaredError(), opt)
        out.append(net.get_weights()[0][0][0])
    # By hand: E = (t - w.x - b)^2; step 1 from w=b=0: g_w = -2*1*0.5 = -1, w = 0.1, b = 0.2.
    # step 2: o = 0.1*0.5*2 + 0.2 = 0.3, g_w = -2*0.7*0.5 = -0.7.
    np.testing.assert_allclose(out[0], [0.1 + 0.07, 0.1 + 0.07])
    np.testing.assert_allclose(out[1], [0.1 + 0.1 * (0.9 * 1 + 0.7)] * 2)


def test_freeze_and_unfreeze():
    x, t = np.array([[0.5, -0.5]]), np.array([[1.0, 0.0]])
    net = tn.MLP.from_sizes([2, 3, 2], "sigmoid", "sigmoid", seed=0)
    before = net.get_weights()
    net.freeze("bias")
    net.train_step(x, t, tn.SquaredError(), tn.SGD(1.0))
    after = net.get_weights()
    for (W0, b0), (W1, b1) in zip(before, after, strict=True):
        assert not np.array_equal(W0, W1)
        np.testing.assert_array_equal(b0, b1)
    net.unfreeze()
    net.layers[0].freeze("weights")
    net.train_step(x, t, tn.SquaredError(), tn.SGD(1.0))
    again = net.get_weights()
    np.testing.assert_array_equal(again[0][0], after[0][0])
    assert not np.array_equal(again[0][1], after[0][1])
    assert not np.array_equal(again[1][0], after[1][0])
    with pytest.raises(tn.InvalidInputError, match="valid"):
        net.freeze("gamma")


def test_uint8_inputs_go_through_rescaling():
    X = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    net = tn.MLP([tn.Rescaling(1 / 255), tn.Dense(2, 2, "softmax", seed=0)])
    reference = tn.MLP([tn.Dense(2, 2, "softmax")])
    reference.layers[0].set_weights(*net.layers[1].get_weights())
    np.testing.assert_allclose(net.predict(X), reference.predict(X / 255.0), rtol=1e-6)
    net.fit(X, np.array([0, 1]), tn.CrossEntropy(), tn.SGD(0.5), epochs=3, batch_size=1)


def test_save_and_load_round_trip(tmp_path, backend_name):
    net = tn.MLP.from_sizes(
        [4, 6, 3], "relu", "softmax", seed=1, rescale=(0.5, 0.1), dtype="float64"
    )
    net.layers[2].freeze("bias")
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = tn.load(path)
    x = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    assert repr(loaded) == repr(net)
    assert os.listdir(tmp_path) == ["model.npz"]  # no temp file left behind


def test_a_leaky_relu_model_keeps_its_alpha_through_a_file(tmp_path, backend_name):
    net = tn.MLP.from_sizes([4, 6, 3], "leaky_relu", "softmax", seed=1, alpha=0.25)
    assert [layer.alpha for layer in net.layers] == [0.25, 0.0]
    net.save(tmp_path / "model.npz")
    loaded = tn.load(tmp_path / "model.npz")
    assert loaded.layers[0].alpha == 0.25
    x = np.random.default_rng(0).normal(size=(64, 4))  # negative pre-activations among them
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    assert "alpha=0.25" in repr(loaded)


def test_leaky_relu_alpha_defaults_to_pytorchs_and_is_checked():
    assert tn.Dense(2, 2, "leaky_relu").alpha == 0.01
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(tn.InvalidInputError, match="finite alpha >= 0"):
            tn.Dense(2, 2, "leaky_relu", alpha=bad)
    with pytest.raises(tn.InvalidInputError, match="activation 'relu' takes none"):
        tn.Dense(2, 2, "relu", alpha=0.1)
    with pytest.raises(tn.InvalidInputError, match="activation 'relu' takes none"):
        tn.MLP.from_sizes([2, 3, 2], "relu", alpha=0.1)


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    net = tn.MLP.from_sizes([2, 2], seed=0)
    path = tmp_path / "model.npz"
    net.save(path)
    original = path.read_bytes()

    def dies_halfway(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        tn.MLP.from_sizes([2, 2], seed=1).save(path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.npz"]


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(tn.ModelFileError, match="not found"):
        tn.load(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(tn.ModelFileError, match="not a tinynet model"):
        tn.load(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(tn.ModelFileError, match="not a tinynet model"):
        tn.load(tmp_path / "other.npz")


# -- bad input gets a clear error ------------------------------------------------------------
def test_wrong_input_width_names_both_shapes():
    net = tn.MLP.from_sizes([2, 3, 2])
    with pytest.raises(tn.ShapeError, match=r"\(batch, 2\).*\(1, 3\)"):
        net.predict(np.zeros((1, 3)))
    with pytest.raises(tn.ShapeError, match=r"reshape\(1, 2\)"):
        net.predict(np.zeros(2))


def test_targets_that_do_not_match_the_output_layer():
    net = tn.MLP.from_sizes([2, 3, 2])
    x = np.zeros((4, 2))
    loss, opt = tn.CrossEntropy(), tn.SGD(0.1)
    with pytest.raises(tn.ShapeError, match=r"\(4, 2\).*\(4, 3\)"):
        net.fit(x, np.zeros((4, 3)), loss, opt)
    with pytest.raises(tn.ShapeError, match=r"\(4, 2\)"):
        net.fit(x, np.array([0, 1, 1]), loss, opt)
    with pytest.raises(tn.InvalidInputError, match=r"\[0, 2\)"):
        net.fit(x, np.array([0, 1, 2, 1]), loss, opt)
    with pytest.raises(tn.ShapeError):
        net.train_step(x, np.zeros((3, 2)), loss, opt)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_training_data(bad):
    net = tn.MLP.from_sizes([2, 3, 2])
    x, t = np.zeros((4, 2)), np.eye(2)[[0, 1, 0, 1]]
    x_bad = x.copy()
    x_bad[2, 1] = bad
    t_bad = t.copy()
    t_bad[1, 0] = bad
    with pytest.raises(tn.InvalidInputError, match="NaN or inf"):
        net.fit(x_bad, t, tn.SquaredError(), tn.SGD(0.1))
    with pytest.raises(tn.InvalidInputError, match="NaN or inf"):
        net.fit(x, t_bad, tn.SquaredError(), tn.SGD(0.1))
    with pytest.raises(tn.InvalidInputError, match="NaN or inf"):
        net.train_step(x_bad, t, tn.SquaredError(), tn.SGD(0.1))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_diverging_training_stops_with_an_error():
    x = np.array([[1e3, -1e3], [2e3, 1e3]])
    net = tn.MLP.from_sizes([2, 8, 1], "relu", None, seed=0)
    with pytest.raises(tn.InvalidInputError, match="diverged.*learning rate"):
        net.fit(x, np.array([1e3, -1e3]), tn.SquaredError(), tn.SGD(10.0), epochs=20)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf")])
def test_non_positive_learning_rate(lr):
    with pytest.raises(tn.InvalidInputError, match="learning rate"):
        tn.SGD(lr)


@pytest.mark.parametrize(
    ("field", "value"), [("batch_size", 0), ("batch_size", -3), ("epochs", 0), ("batch_size", 2.5)]
)
def test_non_positive_batch_size_or_epochs(field, value):
    net = tn.MLP.from_sizes([2, 2])
    with pytest.raises(tn.InvalidInputError, match=field):
        net.fit(
            np.zeros((2, 2)), np.array([0, 1]), tn.CrossEntropy(), tn.SGD(0.1), **{field: value}
        )


def test_unknown_names():
    with pytest.raises(tn.InvalidInputError, match="unknown activation 'swish'.*relu"):
        tn.Dense(2, 2, activation="swish")
    with pytest.raises(tn.InvalidInputError, match="unknown loss 'hinge'.*cross_entropy"):
        tn.losses.get_loss("hinge")
    with pytest.raises(tn.InvalidInputError, match="unknown init"):
        tn.Dense(2, 2, init="orthogonal")
    with pytest.raises(tn.InvalidInputError, match="reduction"):
        tn.CrossEntropy(reduction="max")
    with pytest.raises(tn.InvalidInputError, match="dtype"):
        tn.Dense(2, 2, dtype="float16")


def test_cross_entropy_needs_a_softmax_output():
    net = tn.MLP.from_sizes([2, 2], output_activation="sigmoid")
    with pytest.raises(tn.InvalidInputError, match="softmax"):
        net.fit(np.zeros((2, 2)), np.array([0, 1]), tn.CrossEntropy(), tn.SGD(0.1))


def test_layers_that_do_not_chain():
    with pytest.raises(tn.ShapeError, match="do not chain"):
        tn.MLP([tn.Dense(2, 3), tn.Dense(4, 2)])
    with pytest.raises(tn.InvalidInputError, match="same dtype"):
        tn.MLP([tn.Dense(2, 3), tn.Dense(3, 2, dtype="float64")])


@pytest.mark.parametrize(
    ("loss", "output", "needs"),
    [
        (tn.CrossEntropy(), "sigmoid", "softmax"),
        (tn.BinaryCrossEntropy(), "softmax", "sigmoid"),
        (tn.BinaryCrossEntropy(), "identity", "sigmoid"),
    ],
)
def test_a_cross_entropy_after_the_wrong_output_layer_is_refused(backend_name, loss, output, needs):
    """Before any step, on every path (the fused epochs never call value_and_delta): a
    cross-entropy's delta p - t holds only after its own output activation."""
    net = tn.MLP.from_sizes([4, 3, 2], "tanh", output, seed=0)
    x, y = np.random.default_rng(0).normal(size=(8, 4)), np.arange(8) % 2
    before = [w.copy() for pair in net.get_weights() for w in pair]
    for batch in (1, 8):
        with pytest.raises(tn.InvalidInputError, match=f"activation='{needs}'"):
            net.fit(x, y, loss, tn.SGD(0.1), epochs=1, batch_size=batch)
    after = [w for pair in net.get_weights() for w in pair]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
