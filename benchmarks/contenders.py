"""The things being timed: tinynet on each backend, and PyTorch eager, set up identically.

Every contender of a case gets the same network, initial weights (drawn once by tinynet), dtype,
data in the same order, learning rate and thread count, and trains through its public API:
``MLP.fit`` for tinynet, the usual autograd loop for PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import tinynet as tn


@dataclass(frozen=True)
class Network:
    name: str
    sizes: tuple[int, ...]
    hidden: str
    output: str
    loss: str  # "squared_error" (0.5 * sum (t - o)^2) or "cross_entropy"
    lr: float
    samples_per_round: int  # samples trained per timed round at batch >= 32
    samples_per_round_b1: int  # ... at batch 1 (per-sample SGD)
    batches: tuple[int, ...] | None = None  # the batch sizes benchmarked; None: all
    momentum: float = 0.0  # SGD's: v <- m v + g; w <- w - lr v (PyTorch's convention)
    optimizer: str = "sgd"  # or "adam" (PyTorch's Adam at its default betas and eps)
    baseline: str | None = None  # the SGD network an Adam network's cost is compared with

    def tinynet_loss(self) -> tn.Loss:
        if self.loss == "squared_error":
            return tn.SquaredError(scale=0.5)
        return tn.CrossEntropy()


# The tutorials' network: sigmoid, 0.5 * squared error, SGD lr 0.1.
TUTORIAL = Network(
    "784-128-10 sigmoid/SE", (784, 128, 10), "sigmoid", "sigmoid", "squared_error", 0.1, 16384, 4096
)
DEFAULT_RECIPE = "784-256-128-10 relu/CE momentum (default recipe)"
NETWORKS = {
    net.name: net
    for net in (
        TUTORIAL,
        # The first tutorial's width, trained per sample as it does.
        replace(TUTORIAL, name="784-200-10 sigmoid/SE", sizes=(784, 200, 10), batches=(1,)),
        # `tinynet train`'s default recipe (its first epoch's learning rate).
        Network(
            DEFAULT_RECIPE,
            (784, 256, 128, 10),
            "relu",
            "softmax",
            "cross_entropy",
            0.05,
            16384,
            4096,
            batches=(1, 64),
            momentum=0.9,
        ),
        # The default recipe's network with Adam: its cost against SGD with momentum.
        Network(
            "784-256-128-10 relu/CE Adam",
            (784, 256, 128, 10),
            "relu",
            "softmax",
            "cross_entropy",
            1e-3,
            16384,
            1024,  # per sample: PyTorch's Adam runs ~6 ms a step here
            batches=(1, 64),
            optimizer="adam",
            baseline=DEFAULT_RECIPE,
        ),
        # A GEMM-bound network: ReLU, softmax + cross-entropy.
        Network(
            "784-1024-1024-10 relu/CE",
            (784, 1024, 1024, 10),
            "relu",
            "softmax",
            "cross_entropy",
            0.05,
            4096,
            256,
        ),
    )
}
INPUT_SCALE = 1 / 255


def initial_weights(net: Network, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """float64 (W, b) per layer, drawn once so every contender starts from the same point."""
    with tn.use_backend("numpy"):
        model = tn.MLP.from_sizes(
            list(net.sizes), net.hidden, net.output, dtype="float64", seed=seed
        )
    rng = np.random.default_rng(seed + 1)
    return [(W, rng.normal(0, 0.01, W.shape[0])) for W, _ in model.get_weights()]


class TinynetContender:
    def __init__(
        self, backend: str, net: Network, dtype: str, weights: list, graphs: bool = False
    ) -> None:
        self.name = backend + ("-graph" if graphs else "")
        self.graphs = graphs  # cupy: replay each step as a CUDA graph
        self.net = net
        with tn.use_backend(backend):
            self.model = tn.MLP.from_sizes(
                list(net.sizes), net.hidden, net.output, dtype=dtype, rescale=(INPUT_SCALE, 0.0)
            )
        for layer, (W, b) in zip(self.model.layers[1:], weights, strict=True):
            layer.set_weights(W, b)
        self.loss = net.tinynet_loss()
        if net.optimizer == "adam":
            self.optimizer: tn.Optimizer = tn.Adam(net.lr)
        else:
            self.optimizer = tn.SGD(net.lr, net.momentum)

    def train(self, x: np.ndarray, t: np.ndarray, batch: int) -> None:
        B = self.model.backend
        before = getattr(B, "graphs", False)
        if self.graphs:
            B.graphs = True
        try:
            self.model.fit(
                x, t, self.loss, self.optimizer, epochs=1, batch_size=batch, shuffle=False
            )
        finally:
            if self.graphs:
                B.graphs = before

    def mean_loss(self, x: np.ndarray, t: np.ndarray) -> float:
        return self.model.evaluate(x, t, self.loss)["loss"]


class TorchContender:
    """PyTorch eager with autograd: what a user would otherwise write. On "cuda" the round's
    data are uploaded once (as tinynet's fit does) and the round ends with a synchronize."""

    def __init__(self, net: Network, dtype: str, weights: list, device: str = "cpu") -> None:
        import torch

        self.name = "pytorch" if device == "cpu" else f"pytorch-{device}"
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.net = net
        layers: list[Any] = []
        for i, (W, b) in enumerate(weights):
            linear = torch.nn.Linear(W.shape[1], W.shape[0], dtype=self.dtype)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(W))
                linear.bias.copy_(torch.from_numpy(b))
            layers.append(linear)
            last = i == len(weights) - 1
            act = net.output if last else net.hidden
            if act == "sigmoid":
                layers.append(torch.nn.Sigmoid())
            elif act == "relu":
                layers.append(torch.nn.ReLU())
            # softmax is fused into cross_entropy below, as PyTorch users write it
        self.model = torch.nn.Sequential(*layers).to(self.device)
        params = self.model.parameters()
        if net.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=net.lr)
        else:
            self.optimizer = torch.optim.SGD(params, lr=net.lr, momentum=net.momentum)

    def _loss(self, out: Any, t: Any) -> Any:
        F = self.torch.nn.functional
        if self.net.loss == "squared_error":
            return 0.5 * ((out - t) ** 2).sum(dim=1).mean()
        return F.cross_entropy(out, t)  # t: probability rows (one-hot)

    def _upload(self, x: np.ndarray, t: np.ndarray) -> tuple[Any, Any]:
        torch = self.torch
        return torch.from_numpy(x).to(self.device), torch.from_numpy(t).to(self.device)

    def _batch(self, x: Any, t: Any) -> tuple[Any, Any]:
        return x.to(self.dtype).mul_(INPUT_SCALE), t

    def train(self, x: np.ndarray, t: np.ndarray, batch: int) -> None:
        x, t = self._upload(x, t)
        for start in range(0, len(x), batch):
            xb, tb = self._batch(x[start : start + batch], t[start : start + batch])
            loss = self._loss(self.model(xb), tb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def mean_loss(self, x: np.ndarray, t: np.ndarray) -> float:
        with self.torch.no_grad():
            xb, tb = self._batch(*self._upload(x, t))
            return float(self._loss(self.model(xb), tb))


class PlainNumpyContender:
    """The same training as a hand-written NumPy loop, as fast as idiomatic NumPy allows
    (``np.dot``, in-place ufuncs, no framework): the honest NumPy reference ("numpy-plain")."""

    def __init__(self, net: Network, dtype: str, weights: list) -> None:
        self.name = "numpy-plain"
        self.net = net
        self.dtype = np.dtype(dtype)
        self.Ws = [np.array(W, self.dtype) for W, _ in weights]
        self.bs = [np.array(b, self.dtype) for _, b in weights]
        self.vWs = [np.zeros_like(W) for W in self.Ws]  # momentum velocities
        self.vbs = [np.zeros_like(b) for b in self.bs]
        self.acts = [net.hidden] * (len(weights) - 1) + [net.output]

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        a = x.astype(self.dtype)
        a *= self.dtype.type(INPUT_SCALE)
        outputs = [a]
        for W, b, act in zip(self.Ws, self.bs, self.acts, strict=True):
            z = np.dot(a, W.T)
            z += b
            if act == "sigmoid":
                np.negative(z, out=z)
                np.exp(z, out=z)
                z += 1
                np.reciprocal(z, out=z)
            elif act == "relu":
                np.maximum(z, 0, out=z)
            elif act == "softmax":
                z -= z.max(axis=1, keepdims=True)
                np.exp(z, out=z)
                z /= z.sum(axis=1, keepdims=True)
            outputs.append(z)
            a = z
        return outputs

    def train(self, x: np.ndarray, t: np.ndarray, batch: int) -> None:
        lr, m = self.dtype.type(self.net.lr), self.dtype.type(self.net.momentum)
        for start in range(0, len(x), batch):
            a = self._forward(x[start : start + batch])
            y, tb = a[-1], t[start : start + batch]
            d = y - tb  # cross-entropy after softmax: dE/dz = p - t
            if self.net.loss == "squared_error":  # 0.5 sum (t - y)^2 through a sigmoid
                d *= y * (1 - y)
            d /= len(y)
            for i in range(len(self.Ws) - 1, -1, -1):
                W = self.Ws[i]
                grad_W = np.dot(d.T, a[i])
                grad_b = d.sum(axis=0)
                if i > 0:  # the delta below, from W before its update
                    d = np.dot(d, W)
                    below = a[i]
                    if self.acts[i - 1] == "sigmoid":
                        d *= below * (1 - below)
                    elif self.acts[i - 1] == "relu":
                        d *= below > 0
                if m:  # v <- m v + g; the step is lr v
                    self.vWs[i] *= m
                    self.vWs[i] += grad_W
                    self.vbs[i] *= m
                    self.vbs[i] += grad_b
                    grad_W, grad_b = self.vWs[i] * lr, self.vbs[i] * lr
                else:
                    grad_W *= lr
                    grad_b *= lr
                W -= grad_W
                self.bs[i] -= grad_b

    def mean_loss(self, x: np.ndarray, t: np.ndarray) -> float:
        y = self._forward(x)[-1]
        if self.net.loss == "squared_error":
            return float(0.5 * ((y - t) ** 2).sum(axis=1).mean())
        return float(-(t * np.log(np.maximum(y, np.finfo(y.dtype).tiny))).sum(axis=1).mean())


class JaxContender:
    """JAX on the CPU in its strongest forms: ``jax`` jits one SGD step with the parameters
    donated (a Python loop over the batches); ``jax-scan`` jits a whole round of full batches
    as one ``lax.scan`` (the remainder, if any, by the step). The round's data go to the device
    once, as tinynet's ``fit`` does."""

    def __init__(self, net: Network, dtype: str, weights: list, scan: bool = False) -> None:
        import jax
        import jax.numpy as jnp

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        self.name = "jax-scan" if scan else "jax"
        self.jax, self.jnp, self.scan = jax, jnp, scan
        self.net = net
        self.dtype = jnp.dtype(dtype)
        params = [(jnp.asarray(W, self.dtype), jnp.asarray(b, self.dtype)) for W, b in weights]
        # the state: parameters and their momentum velocities
        self.state = (params, jax.tree_util.tree_map(jnp.zeros_like, params))
        acts = [net.hidden] * (len(weights) - 1) + [net.output]
        lr, m = net.lr, net.momentum
        scale, squared = INPUT_SCALE, net.loss == "squared_error"

        def loss_fn(params, x, t):
            a = x.astype(self.dtype) * scale
            for (W, b), act in zip(params, acts, strict=True):
                z = a @ W.T + b
                if act == "sigmoid":
                    a = jax.nn.sigmoid(z)
                elif act == "relu":
                    a = jax.nn.relu(z)
                else:  # softmax: kept as logits for the cross-entropy below
                    a = z
            if squared:
                return 0.5 * jnp.mean(jnp.sum((a - t) ** 2, axis=1))
            return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(a), axis=1))

        def step(state, x, t):
            params, velocity = state
            grads = jax.grad(loss_fn)(params, x, t)
            if m:
                velocity = jax.tree_util.tree_map(lambda v, g: m * v + g, velocity, grads)
                grads = velocity
            return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), velocity

        def epoch(state, xs, ts):
            def body(s, batch):
                return step(s, *batch), None

            return jax.lax.scan(body, state, (xs, ts))[0]

        self._loss = jax.jit(loss_fn)
        self._step = jax.jit(step, donate_argnums=0)
        self._epoch = jax.jit(epoch, donate_argnums=0)

    def train(self, x: np.ndarray, t: np.ndarray, batch: int) -> None:
        jnp = self.jnp
        xd, td = jnp.asarray(x), jnp.asarray(t, self.dtype)
        full = len(x) // batch * batch
        if self.scan and full:
            shape = (full // batch, batch)
            self.state = self._epoch(
                self.state, xd[:full].reshape(*shape, -1), td[:full].reshape(*shape, -1)
            )
            start = full
        else:
            start = 0
        for s in range(start, len(x), batch):
            self.state = self._step(self.state, xd[s : s + batch], td[s : s + batch])
        self.jax.block_until_ready(self.state)

    def mean_loss(self, x: np.ndarray, t: np.ndarray) -> float:
        x, t = self.jnp.asarray(x), self.jnp.asarray(t, self.dtype)
        return float(self._loss(self.state[0], x, t))
