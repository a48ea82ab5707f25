"""``MLP``: a stack of layers trained by backpropagation, and its ``save``/``load``.

Forward: x -> layer 1 -> ... -> y, each layer keeping its input and output.
Backward (the seeds' recursion): delta_out = dE/dy * f'(z) comes from the loss, and each Dense
layer turns delta into dE/dW = delta^T x, dE/db = sum delta and dE/dx = delta W, which the layer
below multiplies by its own f'(z) to get its delta.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from tinynet import training
from tinynet.backend import EpochSpec, LayerSpec, to_numpy
from tinynet.errors import (
    InvalidInputError,
    ModelFileError,
    ShapeError,
    TinynetError,
    checked_seed,
    positive_int,
)
from tinynet.layers import (
    INITS,
    PARAMETRIZED,
    Dense,
    Layer,
    Parameter,
    Rescaling,
    SeedLike,
    activation_alpha,
    activation_name,
    check_weights_fit,
    dtype_of,
)
from tinynet.losses import BinaryCrossEntropy, CrossEntropy, Loss, SquaredError
from tinynet.model_file import ModelArchive, parse_config, write_atomically
from tinynet.optim import SGD, Adam, Optimizer

FORMAT = "tinynet-mlp-v1"


class MLP:
    """A feed-forward network: ``layers`` applied in order. The last layer must be Dense."""

    def __init__(self, layers: Sequence[Layer]):
        layers = list(layers)
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise InvalidInputError("MLP needs a non-empty list of layers (Dense, Rescaling)")
        dense = [layer for layer in layers if isinstance(layer, Dense)]
        if not isinstance(layers[-1], Dense):
            raise InvalidInputError("the last layer of an MLP must be Dense")
        for a, b in itertools.pairwise(dense):
            if a.out_features != b.in_features:
                raise ShapeError(
                    f"layer sizes do not chain: {a!r} gives {a.out_features} features but "
                    f"{b!r} takes {b.in_features}"
                )
        if len({layer.dtype for layer in layers}) != 1:
            raise InvalidInputError("all layers of an MLP must have the same dtype")
        if len({id(layer.backend) for layer in layers}) != 1:
            raise InvalidInputError("all layers of an MLP must be created on the same backend")
        self.layers = layers
        self.backend = layers[0].backend
        self.dtype = layers[0].dtype
        self.in_features: int = dense[0].in_features
        self.out_features: int = dense[-1].out_features
        first = next(i for i, layer in enumerate(layers) if layer.parameters())
        self._first_trainable = first

    @classmethod
    def from_sizes(
        cls,
        sizes: Sequence[int],
        activation: str = "relu",
        output_activation: str | None = "softmax",
        *,
        bias: bool = True,
        init: str = "auto",
        dtype: Any = "float32",
        seed: SeedLike = None,
        rescale: tuple[float, float] | None = None,
        alpha: float | None = None,
    ) -> MLP:
        """``MLP.from_sizes([784, 128, 10])``: Dense layers between consecutive sizes.

        Hidden layers use ``activation``, the last ``output_activation``. ``rescale=(scale,
        offset)`` puts a Rescaling layer first so uint8 inputs can be fed directly. ``alpha``:
        the parameter of the layers whose activation takes one (leaky_relu's slope).
        """
        acts = [activation_name(a) for a in (activation, output_activation)]
        if alpha is not None and not any(a in PARAMETRIZED for a in acts):
            activation_alpha(acts[0], alpha)  # the error saying which activations take one
        if len(sizes) < 2:
            raise InvalidInputError(f"need at least an input and an output size, got {sizes!r}")
        seed = checked_seed(seed)
        sizes = [positive_int(f"sizes[{i}]", size) for i, size in enumerate(sizes)]
        check_weights_fit(
            [(n_out, n_in) for n_in, n_out in itertools.pairwise(sizes)], dtype_of(dtype)
        )
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        layers: list[Layer] = []
        if rescale is not None:
            layers.append(Rescaling(*rescale, dtype=dtype))
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            last = i == len(sizes) - 2
            act = activation_name(output_activation if last else activation)
            alpha_l = alpha if act in PARAMETRIZED else None
            layers.append(
                Dense(n_in, n_out, act, bias=bias, init=init, dtype=dtype, seed=rng, alpha=alpha_l)
            )
        return cls(layers)

    # -- parameters -----------------------------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def get_weights(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(W, b) of every Dense layer as NumPy arrays."""
        return [layer.get_weights() for layer in self.layers if isinstance(layer, Dense)]

    def freeze(self, what: str = "all") -> None:
        """Stop training ``what`` ("all", "weights" or "bias") in every layer."""
        for layer in self.layers:
            layer.freeze(what)

    def unfreeze(self, what: str = "all") -> None:
        for layer in self.layers:
            layer.unfreeze(what)

    # -- input checks ---------------------------------------------------------------------------
    def as_inputs(self, x: Any, check_finite: bool = True) -> Any:
        """x as a checked backend array (batch, in_features); clear errors otherwise, and a
        warning for raw uint8 pixels without a Rescaling layer."""
        xp = self.backend.xp
        if not isinstance(x, np.ndarray | xp.ndarray):
            x = _as_array(x, "input")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ShapeError(
                f"expected input of shape (batch, {self.in_features}), got {tuple(x.shape)}"
                + (f"; for one sample use x.reshape(1, {self.in_features})" if x.ndim == 1 else "")
            )
        if x.dtype.kind not in "fiub":
            raise InvalidInputError(f"input must be numeric, got dtype {x.dtype}")
        if check_finite and not _all_finite(xp, x):
            raise InvalidInputError("input contains NaN or inf")
        # A Rescaling layer converts uint8 batches itself; anything else becomes our dtype.
        keep_dtype = isinstance(self.layers[0], Rescaling)
        if x.dtype == np.uint8 and not keep_dtype and x.size and int(x.max()) > 1:
            # 0..255 straight into a Dense layer saturates it: training stalls near chance
            warnings.warn(
                "the inputs look like raw pixels (uint8 up to 255) and the model has no "
                "Rescaling layer: pass rescale=(1 / 255, 0.0) to MLP.from_sizes, or put "
                "tn.Rescaling(1 / 255) first",
                RuntimeWarning,
                stacklevel=3,
            )
        first = self.layers[0]
        small_scale = keep_dtype and abs(first.scale) <= 1 / 128
        if small_scale and x.dtype.kind == "f" and x.size and _largest(x) <= 1.0:
            # already scaled: 1/255 again leaves inputs of at most 0.004, which train to ~16%
            warnings.warn(
                f"the inputs are floats within [-1, 1], and the model's first layer "
                f"multiplies them by {first.scale:.3g} ({first!r}): that is for raw uint8 "
                "pixels. Pass the raw pixels, or build the model without rescale",
                RuntimeWarning,
                stacklevel=3,
            )
        return self._converted(x, None if keep_dtype else self.dtype, "input holds", check_finite)

    def as_targets(self, t: Any, n: int, check_finite: bool = True) -> Any:
        """Targets as a checked backend array (n, out_features); integer labels become one-hot
        rows."""
        xp = self.backend.xp
        if not isinstance(t, np.ndarray | xp.ndarray):
            t = _as_array(t, "targets")
        if t.ndim == 1 and self.out_features > 1 and t.dtype.kind not in "iu":
            raise InvalidInputError(
                f"1-D targets must be integer class labels in [0, {self.out_features}), got "
                f"dtype {t.dtype}; convert with labels.astype(int), or pass one-hot rows of "
                f"shape ({n}, {self.out_features})"
            )
        if t.ndim == 1 and self.out_features > 1:
            t = one_hot(t, self.out_features, dtype=self.dtype)
        elif t.ndim == 1 and self.out_features == 1:
            t = t.reshape(-1, 1)
        if t.ndim != 2 or t.shape != (n, self.out_features):
            raise ShapeError(
                f"targets must have shape ({n}, {self.out_features}) or be {n} integer labels "
                f"in [0, {self.out_features}), got shape {tuple(t.shape)}"
            )
        if t.dtype.kind not in "fiub":
            raise InvalidInputError(f"targets must be numeric, got dtype {t.dtype}")
        if check_finite and not _all_finite(xp, t):
            raise InvalidInputError("targets contain NaN or inf")
        return self._converted(t, self.dtype, "targets hold", check_finite)

    def _converted(self, a: Any, dtype: Any, says: str, check_finite: bool) -> Any:
        """``a`` as a backend array of ``dtype`` (None: its own); checked again after a cast
        to a narrower float, where finite float64 values beyond float32's range turn inf."""
        with np.errstate(over="ignore"):  # an overflow is the error below, not a warning
            converted = self.backend.asarray(a, dtype)
        if check_finite and _narrowed(a, converted) and not _all_finite(self.backend.xp, converted):
            raise InvalidInputError(
                f"{says} values beyond {converted.dtype}'s range (largest "
                f"{np.finfo(converted.dtype).max:.3g}): they would be inf in this model"
            )
        return converted

    def check_loss(self, loss: Loss) -> None:
        """InvalidInputError unless ``loss`` is a tinynet loss that suits the last activation."""
        if not isinstance(loss, Loss):
            raise InvalidInputError(f"loss must be a tinynet loss, got {loss!r}")
        loss.check_activation(self.layers[-1].activation)

    # -- forward / backward ---------------------------------------------------------------------
    def forward(self, x: Any, keep: bool = True) -> Any:
        """Outputs (batch, out_features) as a backend array; ``keep`` saves what backward needs."""
        x = self.as_inputs(x)
        for layer in self.layers:
            x = layer.forward(x, keep)
        return x

    def outputs(self, x: Any) -> Any:
        """Outputs for a checked backend batch (``as_inputs``), nothing kept for backward."""
        for layer in self.layers:
            x = layer.forward(x, keep=False)
        return x

    def backward(self, delta_out: Any) -> None:
        """Backpropagate delta_out = dE/dz of the last layer (``loss.value_and_delta`` gives it),
        leaving dE/dW and dE/db in each parameter's ``grad``."""
        g = delta_out
        for i in range(len(self.layers) - 1, self._first_trainable - 1, -1):
            layer, need_dx = self.layers[i], i > self._first_trainable
            if i == len(self.layers) - 1:
                g = layer.backward_delta(g, need_dx)
            else:
                g = layer.backward(g, need_dx)

    def predict(self, x: Any, batch_size: int = 4096, check_finite: bool = True) -> np.ndarray:
        """Outputs for ``x`` (batch, in_features) as a NumPy array, computed in chunks of
        ``batch_size`` rows. ``check_finite=False`` skips the NaN/inf scan of ``x``, for
        callers that made it already (the scikit-learn estimators' validate_data)."""
        batch_size = positive_int("batch_size", batch_size)
        x = self.as_inputs(x, check_finite=check_finite)
        chunks = [np.empty((0, self.out_features), self.dtype)]
        for start in range(0, x.shape[0], batch_size):
            chunks.append(self.backend.to_numpy(self.outputs(x[start : start + batch_size])))
        return np.concatenate(chunks)

    def gradients(self, x: Any, t: Any, loss: Loss) -> Any:
        """Forward and backward on checked backend arrays: every parameter's ``grad`` set, no
        update; the loss, 0-d."""
        y = x
        for layer in self.layers:
            y = layer.forward(y)
        last = self.layers[-1]
        value, delta = loss.value_and_delta(self.backend, y, t, last.activation, last.alpha)
        self.backward(delta)
        return value

    def step(self, x: Any, t: Any, loss: Loss, optimizer: Optimizer) -> Any:
        """One training step on checked backend arrays; the loss before the update, 0-d."""
        value = self.gradients(x, t, loss)
        optimizer.step(self.parameters(), self.backend)
        return value

    def epoch_spec(self, loss: Loss, optimizer: Optimizer) -> EpochSpec | None:
        """This model, loss and optimizer as arrays for a backend's ``train_batches``; None when
        the model is not [Rescaling] + Dense layers or the loss/optimizer are not the built-in
        ones (then the trainer runs its kernel-by-kernel loop)."""
        layers = self.layers
        scale, offset = 1.0, 0.0
        if isinstance(layers[0], Rescaling):
            scale, offset, layers = layers[0].scale, layers[0].offset, layers[1:]
        if not all(isinstance(layer, Dense) for layer in layers):
            return None
        adam = isinstance(optimizer, Adam)
        if not (adam or type(optimizer) is SGD):
            return None
        names = {SquaredError: "squared_error", CrossEntropy: "cross_entropy",
                 BinaryCrossEntropy: "binary_cross_entropy"}  # fmt: skip
        if type(loss) not in names:
            return None
        B = self.backend
        trained = [p for p in self.parameters() if not p.frozen]
        steps = {optimizer.state(p, B)["step"] for p in trained}
        if len(steps) > 1:  # one step count for the whole epoch (Adam's bias correction)
            return None

        def buffer(p: Parameter | None, i: int) -> Any:
            """p's optimizer buffer i (momentum's velocity or Adam's m; Adam's v), or None."""
            buffers = optimizer.buffers(p, B) if p is not None else []
            return buffers[i] if i < len(buffers) else None

        specs = []
        for layer in layers:
            b = layer.bias
            specs.append(
                LayerSpec(
                    W=layer.weight.data,
                    b=None if b is None else b.data,
                    activation=layer.activation,
                    train_W=not layer.weight.frozen,
                    train_b=b is not None and not b.frozen,
                    vW=buffer(layer.weight, 0),
                    vb=buffer(b, 0),
                    alpha=layer.alpha,
                    sW=buffer(layer.weight, 1),
                    sb=buffer(b, 1),
                )
            )
        return EpochSpec(
            specs,
            scale,
            offset,
            names[type(loss)],
            loss.scale if isinstance(loss, SquaredError) else 1.0,
            loss.reduction,
            optimizer.lr,
            0.0 if adam else optimizer.momentum,
            nesterov=not adam and optimizer.nesterov,
            weight_decay=0.0 if adam else optimizer.weight_decay,
            adam=(*optimizer.betas, optimizer.eps, optimizer.weight_decay, optimizer.DECOUPLED)
            if adam
            else None,
            step=steps.pop() if steps else 0,
        )

    def train_step(self, x: Any, t: Any, loss: Loss, optimizer: Optimizer) -> float:
        """Forward, backpropagate and update once on (x, t); returns the loss before the update."""
        self.check_loss(loss)
        x = self.as_inputs(x)
        return float(self.step(x, self.as_targets(t, x.shape[0]), loss, optimizer))

    # The trainer's functions as methods (net.fit(...), net.evaluate(...)): one signature, in
    # tinynet/training.py, which knows the model only through the interface above.
    fit = training.fit
    evaluate = training.evaluate

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (.npz); see ``model_file.write_atomically``: atomic, a
        symlink written through, permissions kept, ModelFileError on any I/O fault. A model
        with NaN or inf weights is refused (InvalidInputError) and the file left as it was."""
        arrays: dict[str, np.ndarray] = {
            "__format__": np.array(FORMAT),
            "__config__": np.array(json.dumps([layer.config() for layer in self.layers])),
        }
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                data = self.backend.to_numpy(p.data)
                if not np.isfinite(data).all():
                    raise InvalidInputError(
                        f"layer {i} ({layer!r}) has NaN or inf in its {p.name}; not saved, "
                        f"{os.fspath(path)} is unchanged"
                    )
                arrays[f"{i}.{p.name}"] = data
        write_atomically(path, lambda f: np.savez(f, **arrays))

    # -- other frameworks (tinynet/export.py; each imports its package only when called) ------
    def to_onnx(
        self, path: str | os.PathLike, opset: int = 17, input_type: str = "float32"
    ) -> None:
        """Write the model as ONNX (input "input", output "output", dynamic batch); see
        export.to_onnx. Needs ``pip install "tinynet-mlp[onnx]"``."""
        from tinynet.export import to_onnx

        to_onnx(self, path, opset, input_type)

    def to_torch(self) -> Any:
        """The model as a ``torch.nn.Sequential`` with its weights (export.to_torch)."""
        from tinynet.export import to_torch

        return to_torch(self)

    @classmethod
    def from_torch(cls, module: Any, dtype: Any = "float32") -> MLP:
        """An MLP with the weights of a ``torch.nn.Sequential`` of Linear layers and
        activations (export.torch_layers), on the active backend."""
        from tinynet.export import torch_layers

        return cls(torch_layers(module, dtype))

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"MLP([\n  {inner}\n])"


# What a model file's config may hold for each layer type, and the Python type of each value.
_CONFIG_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "Dense": {
        "in_features": (int,),
        "out_features": (int,),
        "activation": (str,),
        "bias": (bool,),
        "init": (str,),
        "dtype": (str,),
    },
    "Rescaling": {"scale": (int, float), "offset": (int, float), "dtype": (str,)},
}
# Keys a layer's config holds only sometimes: a Dense layer's alpha, with leaky_relu.
_OPTIONAL_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "Dense": {"alpha": (int, float)},
    "Rescaling": {},
}


def _checked_config(config: Any, archive: ModelArchive) -> list[dict[str, Any]]:
    """The layer configs, each with exactly its type's keys and value types."""
    if not isinstance(config, list) or not config:
        raise archive.error("its config is not a list of layers")
    for i, cfg in enumerate(config):
        kind = cfg.get("type") if isinstance(cfg, dict) else None
        keys = _CONFIG_KEYS.get(kind) if isinstance(kind, str) else None
        if keys is None:
            raise archive.error(f"layer {i} of its config is not a Dense or Rescaling layer")
        given, optional = set(cfg) - {"type"}, _OPTIONAL_KEYS[kind]
        if not set(keys) <= given <= set(keys) | set(optional):
            expected = sorted(keys) + [f"{key} (optional)" for key in optional]
            raise archive.error(f"layer {i} ({kind}) has keys {sorted(given)}, expected {expected}")
        for key, types in {**keys, **optional}.items():
            if key not in cfg:
                continue
            value = cfg[key]
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                raise archive.error(f"layer {i} ({kind}): {key} = {value!r} has the wrong type")
        if kind == "Dense" and cfg["init"] not in INITS:
            raise archive.error(f"layer {i} (Dense): unknown init {cfg['init']!r}")
    return config


def load(path: str | os.PathLike) -> MLP:
    """Read a model written by ``MLP.save`` onto the active backend.

    Raises ModelFileError naming the file for anything that is not such a model: a missing file,
    another format (a plain .npy, a zip), a damaged or inconsistent config, arrays whose shapes
    or sizes disagree with it. Sizes are checked before anything is allocated, and only the
    members the model needs are read.
    """
    with ModelArchive(path) as archive:
        found = archive.text("__format__") if archive.has("__format__") else None
        if found is not None and found.startswith("tinynet-mlp-") and found != FORMAT:
            raise ModelFileError(
                f"{archive.path} is a tinynet model file of format {found}; this tinynet "
                f"reads {FORMAT}: load it with the tinynet that wrote it"
            )
        if found != FORMAT:
            raise ModelFileError(f"not a tinynet model file: {archive.path}")
        config = _checked_config(parse_config(archive.text("__config__"), archive.path), archive)
        layers: list[Layer] = []
        try:
            for i, cfg in enumerate(config):
                args = {k: v for k, v in cfg.items() if k != "type"}
                if cfg["type"] == "Rescaling":
                    layers.append(Rescaling(**args))
                    continue
                shape = (args["out_features"], args["in_features"])
                W = archive.array(f"{i}.weight", shape)  # checked against the file first
                b = archive.array(f"{i}.bias", shape[:1]) if args["bias"] else None
                layer = Dense(**{**args, "init": "zeros"})  # no random init to throw away
                layer.init = args["init"]
                layer.set_weights(W, b)
                layers.append(layer)
            return MLP(layers)
        except ModelFileError:
            raise
        except TinynetError as exc:
            raise archive.error(str(exc)) from exc


def _all_finite(xp: Any, a: Any) -> bool:
    """Whether a holds no NaN or inf, without a temporary as large as a (for MNIST in float32,
    47 MB): min and max carry any NaN, and an inf is always one of them."""
    if a.dtype.kind != "f" or a.size == 0:
        return True
    return bool(xp.isfinite(a.min())) and bool(xp.isfinite(a.max()))


def _largest(a: Any) -> float:
    """max |a| without a temporary as large as a."""
    return float(max(-a.min(), a.max()))


def _narrowed(before: Any, after: Any) -> bool:
    """Whether a cast from ``before``'s float type to ``after``'s could overflow (float64 to
    float32): finite values beyond the narrower range become inf."""
    return (
        before.dtype.kind == "f"
        and after.dtype.kind == "f"
        and (after.dtype.itemsize < before.dtype.itemsize)
    )


def _as_array(data: Any, what: str) -> np.ndarray:
    """np.asarray(data), with a clear error for ragged nested lists."""
    try:
        return np.asarray(data)
    except ValueError as exc:  # "inhomogeneous shape": rows of different lengths
        raise ShapeError(
            f"{what} must be a rectangular array; the rows of this {type(data).__name__} have "
            "different lengths"
        ) from exc


def one_hot(
    labels: Any, num_classes: int, on: float = 1.0, off: float = 0.0, dtype: Any = "float32"
) -> np.ndarray:
    """Integer labels (n,) -> rows (n, num_classes) with ``on`` at the label and ``off`` elsewhere.

    ``one_hot(y, 10, on=0.99, off=0.01)`` gives the seeds' targets for sigmoid outputs.
    """
    labels = to_numpy(labels)  # CuPy labels too: np.asarray refuses them
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ShapeError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidInputError(
            f"labels must lie in [0, {num_classes}), got values from {labels.min()} "
            f"to {labels.max()}"
        )
    out = np.full((labels.size, num_classes), off, dtype=dtype)
    out[np.arange(labels.size), labels] = on
    return out
