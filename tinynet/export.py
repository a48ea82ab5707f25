"""Models out of tinynet and in: ONNX export (``onnx``), PyTorch weights both ways (``torch``).

Each needs its optional extra (``pip install "tinynet-mlp[onnx]"`` or ``[torch]``) and imports
it only when called; ``import tinynet`` imports neither.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tinynet.errors import InvalidInputError
from tinynet.layers import Dense, Rescaling
from tinynet.model_file import write_atomically
from tinynet.system import install_hint

DEFAULT_OPSET = 17
OLDEST_OPSET = 13  # Softmax over one axis (opset 13's semantics), GreaterOrEqual (12)


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"this needs the {module!r} package: {install_hint(extra)}") from exc


def to_onnx(
    net: Any, path: str | os.PathLike, opset: int = DEFAULT_OPSET, input_type: str = "float32"
) -> None:
    """Write ``net`` (an MLP) as an ONNX model: input "input" (batch, in_features), output
    "output" (batch, out_features), the batch dimension dynamic. Dense layers are Gemm (MatMul
    without a bias) with float32 weights, each activation its ONNX operator (step:
    GreaterOrEqual, then Cast), a Rescaling layer Mul and Add. ``input_type="uint8"`` (models
    with a Rescaling layer first) takes the raw bytes and casts them to float32 inside the
    graph."""
    onnx = _require("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not OLDEST_OPSET <= opset <= newest:
        raise InvalidInputError(
            f"opset must be an integer from {OLDEST_OPSET} to {newest} (this onnx), got {opset!r}"
        )
    if input_type not in ("float32", "uint8"):
        raise InvalidInputError(f"input_type must be 'float32' or 'uint8', got {input_type!r}")
    if input_type == "uint8" and not isinstance(net.layers[0], Rescaling):
        raise InvalidInputError(
            "input_type='uint8' needs a model whose first layer is a Rescaling layer "
            "(MLP.from_sizes(..., rescale=(scale, offset)))"
        )
    nodes: list[Any] = []
    weights: list[Any] = []
    value = "input"

    def constant(name: str, array: np.ndarray) -> str:
        with np.errstate(over="ignore"):  # an overflow is the error below, not a warning
            as_float32 = np.asarray(array, np.float32)
        if not np.isfinite(as_float32).all():  # ONNX holds float32: a float64 model may not fit
            raise InvalidInputError(
                f"cannot export {name}: it holds values beyond float32's range (largest "
                f"{np.finfo(np.float32).max:.3g}), which ONNX's float32 weights would make inf"
            )
        weights.append(numpy_helper.from_array(as_float32, name))
        return name

    def node(op: str, inputs: list[str], name: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    if input_type == "uint8":
        value = node("Cast", [value], "input_float", to=TensorProto.FLOAT)
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Rescaling):
            scale, offset = np.float32(layer.scale), np.float32(layer.offset)
            value = node("Mul", [value, constant(f"scale{i}", scale)], f"mul{i}")
            value = node("Add", [value, constant(f"offset{i}", offset)], f"add{i}")
            continue
        if not isinstance(layer, Dense):
            raise InvalidInputError(f"ONNX export has no operator for layer {layer!r}")
        W, b = layer.get_weights()
        if b is None:
            value = node("MatMul", [value, constant(f"W{i}_t", W.T)], f"dense{i}")
        else:
            W_name, b_name = constant(f"W{i}", W), constant(f"b{i}", b)
            value = node("Gemm", [value, W_name, b_name], f"dense{i}", transB=1)
        act = layer.activation
        if act in ("sigmoid", "tanh", "relu"):
            value = node({"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}[act], [value],
                         f"{act}{i}")  # fmt: skip
        elif act == "leaky_relu":
            value = node("LeakyRelu", [value], f"leaky_relu{i}", alpha=float(layer.alpha))
        elif act == "softmax":
            value = node("Softmax", [value], f"softmax{i}", axis=1)
        elif act == "step":  # 1 where z >= 0, else 0
            zero = constant(f"zero{i}", np.float32(0))
            value = node("GreaterOrEqual", [value, zero], f"step{i}")
            value = node("Cast", [value], f"step{i}_float", to=TensorProto.FLOAT)
    nodes.append(helper.make_node("Identity", [value], ["output"], name="output"))
    in_type = TensorProto.UINT8 if input_type == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tinynet_mlp",
        [helper.make_tensor_value_info("input", in_type, ["batch", net.in_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", net.out_features])],
        initializer=weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tinynet"
    )
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    write_atomically(path, lambda f: f.write(data), what="the ONNX model")


# PyTorch activations tinynet has, by module class name
TORCH_ACTIVATIONS = {
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "ReLU": "relu",
    "LeakyReLU": "leaky_relu",
    "Softmax": "softmax",
    "Identity": "identity",
}


def torch_layers(module: Any, dtype: Any = "float32") -> list[Dense]:
    """Dense layers with the weights of a ``torch.nn.Sequential`` of Linear layers, each
    optionally followed by one activation (Sigmoid, Tanh, ReLU, LeakyReLU, Softmax(dim=1 or
    -1), Identity), for ``MLP.from_torch``. Any other module is an InvalidInputError naming
    it."""
    torch = _require("torch", "torch")

    modules = list(module) if isinstance(module, torch.nn.Sequential) else [module]
    layers: list[Dense] = []
    for index, m in enumerate(modules):
        kind = type(m).__name__
        if isinstance(m, torch.nn.Linear):
            dense = Dense(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
            W = m.weight.detach().cpu().numpy()
            b = None if m.bias is None else m.bias.detach().cpu().numpy()
            dense.set_weights(W, b)
            layers.append(dense)
            continue
        if kind not in TORCH_ACTIVATIONS:
            raise InvalidInputError(
                f"module {index} ({kind}) has no tinynet equivalent; supported: Linear, "
                + ", ".join(TORCH_ACTIVATIONS)
            )
        if not layers or layers[-1].activation != "identity":
            raise InvalidInputError(
                f"module {index} ({kind}) does not follow a Linear layer: tinynet applies one "
                "activation per Dense layer"
            )
        if kind == "Softmax" and m.dim not in (1, -1):
            raise InvalidInputError(f"module {index} (Softmax over dim {m.dim}): only dim 1 or -1")
        name = TORCH_ACTIVATIONS[kind]
        alpha = float(m.negative_slope) if kind == "LeakyReLU" else None
        last = layers[-1]
        W, b = last.get_weights()
        replaced = Dense(last.in_features, last.out_features, name, bias=b is not None,
                         dtype=dtype, alpha=alpha)  # fmt: skip
        replaced.set_weights(W, b)
        layers[-1] = replaced
    if not layers:
        raise InvalidInputError("the module has no Linear layer")
    return layers


def to_torch(net: Any) -> Any:
    """``net`` (an MLP) as a ``torch.nn.Sequential``: Linear layers with its weights (its
    dtype), each followed by its activation (none for identity); a Rescaling layer is an
    InvalidInputError (PyTorch has no such layer: scale the inputs instead)."""
    torch = _require("torch", "torch")
    modules: list[Any] = []
    for layer in net.layers:
        if not isinstance(layer, Dense):
            raise InvalidInputError(
                f"{layer!r} has no torch.nn equivalent: build the model without it and scale "
                "the inputs before they reach it"
            )
        W, b = layer.get_weights()
        dtype = getattr(torch, str(W.dtype))
        linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=b is not None,
                                 dtype=dtype)  # fmt: skip
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
            if b is not None:
                linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        act = layer.activation
        if act == "step":
            raise InvalidInputError("the step activation has no torch.nn module")
        if act == "leaky_relu":
            modules.append(torch.nn.LeakyReLU(layer.alpha))
        elif act == "softmax":
            modules.append(torch.nn.Softmax(dim=1))
        elif act != "identity":
            modules.append({"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
                            "relu": torch.nn.ReLU}[act]())  # fmt: skip
    return torch.nn.Sequential(*modules)
