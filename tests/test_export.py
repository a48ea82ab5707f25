"""Models out and in: ONNX export checked by onnx's checker and run by onnxruntime, PyTorch
weights both ways, and ``tinynet export`` on the command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import tinynet as tn

ACTIVATIONS = ["identity", "step", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"]


def _session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _net(activation, output="softmax", dtype="float32", rescale=None, bias=True):
    return tn.MLP.from_sizes([6, 5, 4], activation, output, dtype=dtype, seed=0,
                             rescale=rescale, bias=bias)  # fmt: skip


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_exports_and_runs_in_onnxruntime(tmp_path, activation):
    onnx = pytest.importorskip("onnx")
    net = _net(activation, output=activation)
    if activation == "leaky_relu":
        net = tn.MLP.from_sizes([6, 5, 4], activation, activation, seed=0, alpha=0.2)
    path = tmp_path / "net.onnx"
    net.to_onnx(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic
    x = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    (got,) = _session(path).run(["output"], {"input": x})
    np.testing.assert_allclose(got, net.predict(x), rtol=1e-5, atol=1e-6)


def test_the_step_activation_is_one_at_exactly_zero_in_onnx(tmp_path):
    """step(z) = 1 for z >= 0 (the perceptron's rule in the seeds): rows whose products are
    exactly 0 must give 1 in onnxruntime as in predict; random inputs never hit z = 0."""
    net = tn.MLP([tn.Dense(2, 3, activation="step")])
    W = np.array([[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]])
    net.layers[0].set_weights(W, np.zeros(3))
    x = np.array([[2.0, 2.0], [1.0, 3.0], [-1.0, 0.5]], np.float32)  # z: 0 0 0 / -2 0 2 / ...
    expected = (x @ W.T >= 0).astype(np.float32)  # by hand from the definition
    assert (x @ W.T == 0).sum() >= 4
    net.to_onnx(tmp_path / "step.onnx")
    (got,) = _session(tmp_path / "step.onnx").run(None, {"input": x})
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(net.predict(x), expected)


def test_bias_free_layers_and_float64_models_export(tmp_path):
    net = _net("tanh", dtype="float64", bias=False)
    net.to_onnx(tmp_path / "net.onnx")
    x = np.random.default_rng(2).normal(size=(3, 6))
    (got,) = _session(tmp_path / "net.onnx").run(None, {"input": x.astype(np.float32)})
    np.testing.assert_allclose(got, net.predict(x), rtol=1e-5, atol=1e-6)


def test_onnxruntime_matches_predict_on_the_mnist_test_set(tmp_path, mnist_dir):
    """A trained MNIST model, uint8 and float32 inputs: within 1e-5 on all 10,000 images."""
    x, y = tn.datasets.mnist("test", data_dir=mnist_dir, download=False)
    net = tn.MLP.from_sizes([784, 64, 10], "relu", "softmax", rescale=(1 / 255, 0.0), seed=0)
    net.fit(x[:2000], y[:2000], tn.CrossEntropy(), tn.SGD(0.1), epochs=1, batch_size=32)
    expected = net.predict(x)
    net.to_onnx(tmp_path / "u8.onnx", input_type="uint8")
    (got,) = _session(tmp_path / "u8.onnx").run(None, {"input": x})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    net.to_onnx(tmp_path / "f32.onnx")
    (got,) = _session(tmp_path / "f32.onnx").run(None, {"input": x.astype(np.float32)})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(opset=5), "opset"),
        (dict(opset="17"), "opset"),
        (dict(input_type="float16"), "input_type"),
        (dict(input_type="uint8"), "Rescaling"),
    ],
)
def test_bad_export_settings_are_clear_errors(tmp_path, kwargs, message):
    pytest.importorskip("onnx")
    with pytest.raises(tn.InvalidInputError, match=message):
        _net("relu").to_onnx(tmp_path / "net.onnx", **kwargs)
    assert not (tmp_path / "net.onnx").exists()


def test_tinynet_export_on_the_command_line(tmp_path):
    pytest.importorskip("onnx")
    net = _net("sigmoid", rescale=(0.5, 0.1))
    net.save(tmp_path / "model.npz")
    done = subprocess.run(
        [sys.executable, "-m", "tinynet.cli", "export", str(tmp_path / "model.npz"),
         str(tmp_path / "model.onnx"), "--input-type", "uint8"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    x = np.arange(12, dtype=np.uint8).reshape(2, 6)
    (got,) = _session(tmp_path / "model.onnx").run(None, {"input": x})
    np.testing.assert_allclose(got, net.predict(x), rtol=1e-5, atol=1e-6)
    missing = subprocess.run(
        [sys.executable, "-m", "tinynet.cli", "export", str(tmp_path / "none.npz"),
         str(tmp_path / "x.onnx")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr and "none.npz" in missing.stderr


# -- PyTorch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_weights_round_trip_exactly_and_predictions_agree(dtype):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 8, dtype=tdtype), torch.nn.Tanh(),
        torch.nn.Linear(8, 5, dtype=tdtype), torch.nn.LeakyReLU(0.3),
        torch.nn.Linear(5, 3, bias=False, dtype=tdtype), torch.nn.Softmax(dim=1),
    )  # fmt: skip
    net = tn.MLP.from_torch(module, dtype=dtype)
    assert [layer.activation for layer in net.layers] == ["tanh", "leaky_relu", "softmax"]
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.predict(x), expected, **tol)
    back = net.to_torch()
    for theirs, ours in zip(module.parameters(), back.parameters(), strict=True):
        assert theirs.dtype == ours.dtype
        assert torch.equal(theirs, ours)  # bit for bit
    assert [type(m).__name__ for m in back] == [type(m).__name__ for m in module]
    assert back[3].negative_slope == 0.3


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda t: t.nn.Sequential(t.nn.Linear(3, 2), t.nn.Dropout()), "Dropout"),
        (lambda t: t.nn.Sequential(t.nn.ReLU(), t.nn.Linear(3, 2)), "does not follow"),
        (lambda t: t.nn.Sequential(t.nn.Linear(3, 2), t.nn.ReLU(), t.nn.Tanh()), "follow"),
        (lambda t: t.nn.Sequential(t.nn.Conv1d(1, 1, 1)), "Conv1d"),
        (lambda t: t.nn.Sequential(t.nn.Linear(3, 2), t.nn.Softmax(dim=0)), "dim 0"),
        (lambda t: t.nn.Sequential(), "no Linear layer"),
    ],
)
def test_unsupported_torch_modules_are_clear_errors(build, message):
    torch = pytest.importorskip("torch")
    with pytest.raises(tn.InvalidInputError, match=message):
        tn.MLP.from_torch(build(torch))


def test_to_torch_refuses_what_torch_lacks():
    pytest.importorskip("torch")
    with pytest.raises(tn.InvalidInputError, match="Rescaling"):
        _net("relu", rescale=(0.5, 0.0)).to_torch()
    with pytest.raises(tn.InvalidInputError, match="step"):
        _net("step").to_torch()
