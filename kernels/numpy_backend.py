"""The NumPy reference backend: every kernel in plain, idiomatic NumPy.

The kernels are written against ``self.xp`` rather than ``numpy`` so a backend whose arrays follow
the NumPy API can inherit them and override only what it fuses. They are also the fair baseline
of the benchmarks, so they avoid needless temporaries: ``np.dot`` (which hands every 2-D product,
including the batch-1 outer product of ``weight_grad``, to BLAS; ``np.matmul`` does not) and
in-place ufuncs.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from tinynet.backend import Backend
from tinynet.kernels.threads import BlasThreads

Array = Any


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def __init__(self) -> None:
        self._blas = BlasThreads()  # its pools sized per kind of stretch of steps

    def step_threads(self, key: Any, samples: int) -> contextlib.AbstractContextManager:
        return self._blas.sized(("steps", key), samples)

    def info(self) -> dict[str, str]:
        from tinynet.system import blas_info

        return {"backend": self.name, "numpy": np.__version__, "device": "cpu", **blas_info()}

    # -- arrays ---------------------------------------------------------------------------------
    def asarray(self, x: Any, dtype: Any = None) -> Array:
        """``x`` as an array of this backend (no copy when it already is one of that dtype)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def _quiet_limits(self) -> contextlib.AbstractContextManager:
        # exp(1000) = inf and exp(-1000) = 0 are the right intermediates at the limits
        # (sigmoid(-1000) = 1/(1+inf) = 0), so they must not warn, even under np.errstate(all=...).
        return np.errstate(over="ignore", under="ignore")

    # -- forward --------------------------------------------------------------------------------
    def matmul(self, a: Array, b: Array) -> Array:
        """(m, k) @ (k, n) -> (m, n)."""
        return self.xp.dot(a, b)

    def dense_forward(
        self, x: Array, W: Array, b: Array | None, activation: str, alpha: float = 0.0
    ) -> Array:
        """y = f(x W^T + b): x (batch, in), W (out, in), b (out,) or None -> y (batch, out)."""
        z = self.xp.dot(x, W.T)
        if b is not None:
            z += b
        return self.activate(z, activation, alpha)

    def activate(self, z: Array, activation: str, alpha: float = 0.0) -> Array:
        """f(z), computed in place in ``z`` (which is returned)."""
        xp = self.xp
        if activation == "identity":
            return z
        if activation == "sigmoid":
            # 1 / (1 + e^-z): exact limits 1 and 0 at z = +-1000 and no cancellation for z < 0.
            with self._quiet_limits():
                xp.negative(z, out=z)
                xp.exp(z, out=z)
                z += 1
                return xp.reciprocal(z, out=z)
        if activation == "tanh":
            return xp.tanh(z, out=z)
        if activation == "relu":
            return xp.maximum(z, 0, out=z)
        if activation == "leaky_relu":
            # z for z > 0, alpha z otherwise (alpha >= 0, so y has the sign of z)
            one, slope = z.dtype.type(1), z.dtype.type(alpha)
            return xp.multiply(z, xp.where(z > 0, one, slope), out=z)
        if activation == "step":
            # The seeds' threshold unit: 1 for z >= 0, else 0.
            return xp.greater_equal(z, 0, out=z, casting="unsafe")
        if activation == "softmax":
            # Shift by the row maximum so exp never overflows; exp(0) = 1 keeps the sum >= 1.
            z -= z.max(axis=1, keepdims=True)
            with self._quiet_limits():
                xp.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            return z
        raise ValueError(f"unknown activation {activation!r}")

    # -- backward -------------------------------------------------------------------------------
    def activation_backward(
        self, activation: str, y: Array, dy: Array, alpha: float = 0.0
    ) -> Array:
        """dz = dy * f'(z), with f' written in terms of the saved output y = f(z).

        identity: 1; step: 0 (almost everywhere); sigmoid: y(1 - y); tanh: 1 - y^2;
        relu: [y > 0]; leaky_relu: 1 where y > 0, else alpha (PyTorch's choice at z = 0);
        softmax (full Jacobian): y * (dy - sum_k dy_k y_k).
        """
        xp = self.xp
        if activation == "identity":
            return dy
        if activation == "sigmoid":
            return dy * y * (1 - y)
        if activation == "tanh":
            return dy * (1 - y * y)
        if activation == "relu":
            return dy * (y > 0)
        if activation == "leaky_relu":
            return dy * xp.where(y > 0, y.dtype.type(1), y.dtype.type(alpha))
        if activation == "step":
            return xp.zeros_like(dy)
        if activation == "softmax":
            return y * (dy - (dy * y).sum(axis=1, keepdims=True))
        raise ValueError(f"unknown activation {activation!r}")

    def weight_grad(self, dz: Array, x: Array) -> Array:
        """dE/dW = dz^T x: dz (batch, out), x (batch, in) -> (out, in)."""
        return self.xp.dot(dz.T, x)

    def bias_grad(self, dz: Array) -> Array:
        """dE/db = sum of dz over the batch: (batch, out) -> (out,)."""
        return dz.sum(axis=0)

    # -- losses ---------------------------------------------------------------------------------
    def squared_error(
        self, y: Array, t: Array, scale: float, reduction: str, grad: bool = True
    ) -> tuple[Array, Array | None]:
        """E = scale * sum_k (t_k - y_k)^2 per sample, averaged ("mean") or added ("sum").

        Returns (E as a 0-d array, dE/dy = -2 scale (t - y) / n or None), n = batch for "mean".
        """
        diff = y - t
        n = y.shape[0] if reduction == "mean" else 1
        loss = (diff * diff).sum() * (scale / n)
        if not grad:
            return loss, None
        diff *= 2 * scale / n
        return loss, diff

    def softmax_cross_entropy(
        self, p: Array, t: Array, reduction: str, grad: bool = True
    ) -> tuple[Array, Array | None]:
        """E = -sum_k t_k log p_k per sample for softmax outputs p; dE/dz = p - t (fused).

        p is clamped at the smallest normal float so a probability that underflowed to 0 gives a
        large finite loss instead of inf or NaN.
        """
        xp = self.xp
        n = p.shape[0] if reduction == "mean" else 1
        tiny = xp.finfo(p.dtype).tiny
        loss = -(t * xp.log(xp.maximum(p, tiny))).sum() / n
        return loss, (_probability_delta(p, t, n) if grad else None)

    def sigmoid_cross_entropy(
        self, p: Array, t: Array, reduction: str, grad: bool = True
    ) -> tuple[Array, Array | None]:
        """E = -sum_k [t_k log p_k + (1 - t_k) log(1 - p_k)] per sample for sigmoid outputs p;
        dE/dz = p - t (fused). p and 1 - p are clamped at the smallest normal float, as in
        softmax_cross_entropy."""
        xp = self.xp
        n = p.shape[0] if reduction == "mean" else 1
        tiny = xp.finfo(p.dtype).tiny
        one = p.dtype.type(1)
        loss = -(t * xp.log(xp.maximum(p, tiny)) + (one - t) * xp.log(xp.maximum(one - p, tiny)))
        loss = loss.sum() / n
        return loss, (_probability_delta(p, t, n) if grad else None)

    # -- update ---------------------------------------------------------------------------------
    def sgd_update(
        self,
        w: Array,
        g: Array,
        lr: float,
        velocity: Array | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        """In place, torch.optim.SGD's step (dampening 0): g <- g + weight_decay w; with a
        velocity, v <- momentum v + g and d = g + momentum v (nesterov) or v, else d = g;
        w <- w - lr d."""
        if weight_decay:
            g = g + weight_decay * w
        if velocity is not None:
            velocity *= momentum
            velocity += g
            g = g + momentum * velocity if nesterov else velocity
        w -= lr * g

    def adam_update(
        self,
        w: Array,
        g: Array,
        m: Array,
        v: Array,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        step: int,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        """In place, torch.optim.Adam's update number ``step`` (from 1), or AdamW's with
        ``decoupled``: w <- w (1 - lr weight_decay) (AdamW) or g <- g + weight_decay w (Adam);
        m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
        w <- w - lr / (1 - b1^step) m / (sqrt(v) / sqrt(1 - b2^step) + eps)."""
        b1, b2 = betas
        if decoupled:
            w *= 1 - lr * weight_decay
        elif weight_decay:
            g = g + weight_decay * w
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        denominator = self.xp.sqrt(v)
        denominator /= math.sqrt(1 - b2**step)
        denominator += eps
        w -= (lr / (1 - b1**step)) * m / denominator

    # -- data -----------------------------------------------------------------------------------
    def rescale(self, x: Array, scale: float, offset: float, dtype: Any) -> Array:
        """x * scale + offset as ``dtype``: turns a uint8 batch into network inputs."""
        out = x.astype(dtype)
        out *= scale
        if offset:
            out += offset
        return out


def _probability_delta(p: Array, t: Array, n: int) -> Array:
    """dE/dz = (p - t) / n: a cross-entropy's delta after its own output activation (softmax,
    or sigmoids), where the activation's derivative cancels the loss's."""
    dz = p - t
    if n != 1:
        dz /= n
    return dz
