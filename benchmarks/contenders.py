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

    def tinynet_loss(self) -> tn.Loss:
        if self.loss == "squared_error":
            return tn.SquaredError(scale=0.5)
        return tn.CrossEntropy()


# The tutorials' network: sigmoid, 0.5 * squared error, SGD lr 0.1.
TUTORIAL = Network(
    "784-128-10 sigmoid/SE", (784, 128, 10), "sigmoid", "sigmoid", "squared_error", 0.1, 16384, 4096
)
NETWORKS = {
    net.name: net
    for net in (
        TUTORIAL,
        # The first tutorial's width, trained per sample as it does.
        replace(TUTORIAL, name="784-200-10 sigmoid/SE", sizes=(784, 200, 10), batches=(1,)),
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
        self.optimizer = tn.SGD(net.lr)

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
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=net.lr)

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
