"""The Numba CPU backend: the reference's kernels compiled and fused, whole epochs in one call.

Choices, each measured on the 2-core Zen 4 machine (benchmarks/results/):

* GEMMs go to NumPy's BLAS (``matmul`` is inherited). Compiled row-by-dot-product loops lost to
  OpenBLAS (2 threads) at every shape the networks use, float32: 7.0 vs 6.8 us at 1x784x128,
  57 vs 32 us at 1x784x1024, 19 vs 9 us at 4x784x128, 186 vs 77 us at 32x784x128.
* Every elementwise step is one pass: bias + activation in place over z; activation gradient
  times delta; loss value and gradient; the SGD (or momentum) update.
* ``train_epoch`` runs per-sample SGD (the tutorials' way) over a stretch of an epoch in one
  compiled call, reading the uint8 images directly, with matrix-vector loops and no BLAS. The
  first layer's update and the next sample's forward pass share one pass over its weights, the
  bound of a per-sample step. Mini-batches stay on the kernel path: a compiled mini-batch epoch
  calling BLAS through ``np.dot`` inside Numba (SciPy's second OpenBLAS) measured 0.40 s/epoch
  against 0.26 s on the kernel path at batch 512 (784-128-10), and the same at batch 32.
* float32 stays float32: Numba widens ``float32 op <Python float>`` to float64, so constants come
  from ``one = np.ones(1, dtype)[0]`` and scalar arguments are cast before the call.
* fastmath is limited to {reassoc, contract, nsz, arcp} (vectorised sums, FMAs): never nnan/ninf,
  so NaN and inf behave as in NumPy, e.g. sigmoid(-1000) = 1/(1+inf) = 0 exactly.
* Threads: compiled code here runs on one thread; BLAS uses its own pool, so the two never
  compete for the cores. Splitting the first layer's rows over two cores with ``prange`` in the
  per-sample loop measured within noise of one thread (0.77 vs 0.79 s/epoch), so it stays serial.
* All kernels live in this one file with ``cache=True``: Numba's on-disk cache is keyed per source
  file, so kernels that call each other stay consistent when any of them changes.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import njit

from tinynet.backend import EpochSpec
from tinynet.kernels.numpy_backend import NumpyBackend

FAST = {"reassoc", "contract", "nsz", "arcp"}
ACT = {"identity": 0, "step": 1, "sigmoid": 2, "tanh": 3, "relu": 4, "softmax": 5}
IDENTITY, STEP, SIGMOID, TANH, RELU, SOFTMAX = range(6)
SQUARED_ERROR, CROSS_ENTROPY = 0, 1

jit = njit(cache=True, fastmath=FAST, nogil=True)


# -- elementwise building blocks (one row at a time, so rows stay in L1) -------------------------
@jit
def _bias_act_row(row, b, act):
    """row <- f(row + b) in place."""
    one = np.ones(1, row.dtype)[0]
    zero = one - one
    n = row.shape[0]
    if act == SIGMOID:
        for j in range(n):
            row[j] = one / (one + np.exp(-(row[j] + b[j])))
    elif act == TANH:
        for j in range(n):
            row[j] = np.tanh(row[j] + b[j])
    elif act == RELU:
        for j in range(n):
            v = row[j] + b[j]
            row[j] = zero if v < zero else v  # NaN stays NaN, as np.maximum
    elif act == STEP:
        for j in range(n):
            row[j] = one if row[j] + b[j] >= zero else zero
    elif act == SOFTMAX:
        m = row[0] + b[0]
        for j in range(n):
            row[j] += b[j]
            m = max(m, row[j])
        s = zero
        for j in range(n):
            e = np.exp(row[j] - m)
            row[j] = e
            s += e
        inv = one / s
        for j in range(n):
            row[j] *= inv
    else:
        for j in range(n):
            row[j] += b[j]


@jit
def _act_grad_row(y, dy, act, out):
    """out <- dy * f'(z), from the saved output y; ``out`` may be ``dy``."""
    one = np.ones(1, y.dtype)[0]
    zero = one - one
    n = y.shape[0]
    if act == SIGMOID:
        for j in range(n):
            out[j] = dy[j] * y[j] * (one - y[j])
    elif act == TANH:
        for j in range(n):
            out[j] = dy[j] * (one - y[j] * y[j])
    elif act == RELU:
        for j in range(n):
            out[j] = dy[j] if y[j] > zero else zero
    elif act == STEP:
        for j in range(n):
            out[j] = zero
    elif act == SOFTMAX:
        s = zero
        for j in range(n):
            s += dy[j] * y[j]
        for j in range(n):
            out[j] = y[j] * (dy[j] - s)
    else:
        for j in range(n):
            out[j] = dy[j]


@jit
def _bias_act(z, b, act):
    for i in range(z.shape[0]):
        _bias_act_row(z[i], b, act)


@jit
def _act_grad(y, dy, act, out):
    for i in range(y.shape[0]):
        _act_grad_row(y[i], dy[i], act, out[i])


@jit
def _loss_delta_row(y, t, kind, scale, inv_n, delta):
    """Per-sample loss (float64) and delta = dE/dy (squared error) or p - t (softmax CE), / n."""
    one = np.ones(1, y.dtype)[0]
    loss = 0.0
    if kind == CROSS_ENTROPY:
        tiny = np.finfo(y.dtype).tiny
        for k in range(y.shape[0]):
            loss -= t[k] * np.log(max(y[k], tiny))
            delta[k] = (y[k] - t[k]) * inv_n
    else:
        two_scale = (one + one) * scale * inv_n
        for k in range(y.shape[0]):
            diff = y[k] - t[k]
            loss += diff * diff
            delta[k] = two_scale * diff
        loss *= scale
    return loss


@jit
def _loss_delta(y, t, kind, scale, inv_n, delta):
    total = 0.0
    for i in range(y.shape[0]):
        total += _loss_delta_row(y[i], t[i], kind, scale, inv_n, delta[i])
    return total


@jit
def _sgd(w, g, lr, v, momentum):
    """w <- w - lr g, or v <- momentum v + g; w <- w - lr v. Flat, contiguous arrays."""
    if v.shape[0]:
        for j in range(w.shape[0]):
            v[j] = momentum * v[j] + g[j]
            w[j] -= lr * v[j]
    else:
        for j in range(w.shape[0]):
            w[j] -= lr * g[j]


@jit
def _column_sums(dz, out):
    out[:] = 0
    for i in range(dz.shape[0]):
        for j in range(dz.shape[1]):
            out[j] += dz[i, j]


@jit
def _rescale(x, scale, offset, out):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * scale + offset


# -- whole epochs -------------------------------------------------------------------------------
@jit
def _load_input(X, idx, in_scale, in_offset, x):
    for j in range(x.shape[0]):
        x[j] = X[idx, j] * in_scale + in_offset


@jit
def _matvec(W, x, z):
    zero = np.zeros(1, z.dtype)[0]
    for i in range(W.shape[0]):
        acc = zero
        for j in range(W.shape[1]):
            acc += W[i, j] * x[j]
        z[i] = acc


@jit
def _update_bias(b, i, di, lr, momentum, vb):
    if vb.shape[0]:
        vb[i] = momentum * vb[i] + di
        b[i] -= lr * vb[i]
    else:
        b[i] -= lr * di


@jit
def _backward_update(W, b, d, a_in, g, train_w, train_b, lr, momentum, vW, vb):
    """Update a layer from its delta d, and g = W^T d (old W) for the layer below; one pass."""
    zero = np.zeros(1, W.dtype)[0]
    g[:] = zero
    for i in range(W.shape[0]):
        di = d[i]
        if train_w and momentum != zero:
            for j in range(W.shape[1]):
                w = W[i, j]
                g[j] += di * w
                vW[i, j] = momentum * vW[i, j] + di * a_in[j]
                W[i, j] = w - lr * vW[i, j]
        elif train_w:
            step = lr * di
            for j in range(W.shape[1]):
                w = W[i, j]
                g[j] += di * w
                W[i, j] = w - step * a_in[j]
        else:
            for j in range(W.shape[1]):
                g[j] += di * W[i, j]
        if train_b:
            _update_bias(b, i, di, lr, momentum, vb)


@jit
def _first_layer_update_and_next_forward(
    W, b, d, x, x_next, z_next, train_w, train_b, lr, momentum, vW, vb
):
    """Update the first layer with (d, x) and, in the same pass over W, z_next = W_new x_next.

    A per-sample step is bound by streaming the first layer's weights through the cache; this
    reads and writes each weight once per sample instead of twice.
    """
    zero = np.zeros(1, W.dtype)[0]
    for i in range(W.shape[0]):
        di = d[i]
        acc = zero
        if train_w and momentum != zero:
            for j in range(W.shape[1]):
                vW[i, j] = momentum * vW[i, j] + di * x[j]
                w = W[i, j] - lr * vW[i, j]
                W[i, j] = w
                acc += w * x_next[j]
        elif train_w:
            step = lr * di
            for j in range(W.shape[1]):
                w = W[i, j] - step * x[j]
                W[i, j] = w
                acc += w * x_next[j]
        else:
            for j in range(W.shape[1]):
                acc += W[i, j] * x_next[j]
        z_next[i] = acc
        if train_b:
            _update_bias(b, i, di, lr, momentum, vb)


@jit
def _epoch_per_sample(
    X,
    order,
    T,
    in_scale,
    in_offset,
    Ws,
    bs,
    acts,
    train_w,
    train_b,
    kind,
    scale,
    lr,
    momentum,
    vWs,
    vbs,
    A,
    D,
    x_spare,
):
    """Per-sample SGD over X[order]; returns the sum of the per-sample losses.

    A[0] is the input buffer (x_spare takes the next sample's input), A[l + 1] the output of
    layer l, D[l] its delta. Frozen weights/biases have train_w/train_b False; bias-free layers
    carry a zero bias that is never trained. With momentum, vWs/vbs hold the velocities.
    """
    n_layers = len(Ws)
    last = n_layers - 1
    one = np.ones(1, A[0].dtype)[0]
    total = 0.0
    n = order.shape[0]
    x, x_next = A[0], x_spare
    if n:
        _load_input(X, order[0], in_scale, in_offset, x)
        _matvec(Ws[0], x, A[1])  # later samples get this from the previous update pass
    for s in range(n):
        _bias_act_row(A[1], bs[0], acts[0])
        for layer in range(1, n_layers):
            _matvec(Ws[layer], A[layer], A[layer + 1])
            _bias_act_row(A[layer + 1], bs[layer], acts[layer])
        total += _loss_delta_row(A[n_layers], T[order[s]], kind, scale, one, D[last])
        if kind != CROSS_ENTROPY:
            _act_grad_row(A[n_layers], D[last], acts[last], D[last])
        for layer in range(last, 0, -1):
            g = D[layer - 1]
            _backward_update(
                Ws[layer],
                bs[layer],
                D[layer],
                A[layer],
                g,
                train_w[layer],
                train_b[layer],
                lr,
                momentum,
                vWs[layer],
                vbs[layer],
            )
            _act_grad_row(A[layer], g, acts[layer - 1], g)
        # the last sample's "next" input is its own: a harmless extra forward
        _load_input(X, order[min(s + 1, n - 1)], in_scale, in_offset, x_next)
        _first_layer_update_and_next_forward(
            Ws[0],
            bs[0],
            D[0],
            x,
            x_next,
            A[1],
            train_w[0],
            train_b[0],
            lr,
            momentum,
            vWs[0],
            vbs[0],
        )
        x, x_next = x_next, x
    return total


class NumbaBackend(NumpyBackend):
    """NumPy arrays, Numba-compiled kernels. Inherits the reference for what it does not fuse."""

    name = "numba"
    fused_max_batch = 1

    def __init__(self) -> None:
        self._buffers: dict = {}  # train_epoch's work arrays, per (dtype, layer widths)

    def info(self) -> dict[str, str]:
        info = super().info()
        info.update(
            backend=self.name, numba=numba.__version__, numba_threads=str(numba.get_num_threads())
        )
        return info

    # -- forward (GEMMs: the inherited np.dot) -----------------------------------------------
    def dense_forward(self, x: Any, W: Any, b: Any, activation: str) -> Any:
        z = np.dot(x, W.T)
        bias = b if b is not None else np.zeros(W.shape[0], z.dtype)
        _bias_act(z, bias, ACT[activation])
        return z

    def activate(self, z: Any, activation: str) -> Any:
        _bias_act(z, np.zeros(z.shape[1], z.dtype), ACT[activation])
        return z

    # -- backward ---------------------------------------------------------------------------
    def activation_backward(self, activation: str, y: Any, dy: Any) -> Any:
        out = np.empty_like(dy)
        _act_grad(y, dy, ACT[activation], out)
        return out

    def bias_grad(self, dz: Any) -> Any:
        out = np.empty(dz.shape[1], dz.dtype)
        _column_sums(dz, out)
        return out

    # -- losses -----------------------------------------------------------------------------
    def _loss(self, kind: int, y: Any, t: Any, scale: float, reduction: str, grad: bool):
        dtype = np.result_type(y, t)  # as NumPy: float32 outputs vs float64 targets -> float64
        y, t = np.ascontiguousarray(y, dtype), np.ascontiguousarray(t, dtype)
        dt = dtype.type
        inv_n = dt(1 / y.shape[0]) if reduction == "mean" else dt(1)
        delta = np.empty_like(y)
        total = _loss_delta(y, t, kind, dt(scale), inv_n, delta)
        loss = np.asarray(total * float(inv_n), dtype)
        return loss, (delta if grad else None)

    def squared_error(self, y: Any, t: Any, scale: float, reduction: str, grad: bool = True):
        return self._loss(SQUARED_ERROR, y, t, scale, reduction, grad)

    def softmax_cross_entropy(self, p: Any, t: Any, reduction: str, grad: bool = True):
        return self._loss(CROSS_ENTROPY, p, t, 1.0, reduction, grad)

    # -- update and data --------------------------------------------------------------------
    def sgd_update(
        self, w: Any, g: Any, lr: float, velocity: Any = None, momentum: float = 0.0
    ) -> None:
        dt = w.dtype.type
        v = velocity.reshape(-1) if velocity is not None else np.empty(0, w.dtype)
        _sgd(w.reshape(-1), np.ascontiguousarray(g, w.dtype).reshape(-1), dt(lr), v, dt(momentum))

    def rescale(self, x: Any, scale: float, offset: float, dtype: Any) -> Any:
        out = np.empty(x.shape, dtype)
        dt = out.dtype.type
        _rescale(np.ascontiguousarray(x), dt(scale), dt(offset), out)
        return out

    # -- whole epochs -----------------------------------------------------------------------
    def train_epoch(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int) -> float:
        """Per-sample SGD on X[order] in one compiled call; the sum of the per-sample losses."""
        if batch_size > self.fused_max_batch:
            raise ValueError(f"train_epoch runs batch_size 1, got {batch_size}")
        dtype = spec.layers[0].W.dtype
        dt = dtype.type
        widths = [spec.layers[0].W.shape[1]] + [layer.W.shape[0] for layer in spec.layers]
        key = (dtype, tuple(widths))
        if key not in self._buffers:  # activations A, deltas D, the next sample's input
            self._buffers[key] = (
                tuple([np.zeros(w, dtype) for w in widths]),
                tuple([np.zeros(w, dtype) for w in widths[1:]]),
                np.zeros(widths[0], dtype),
            )
        A, D, spare = self._buffers[key]
        no_velocity_W, no_velocity_b = np.zeros((0, 0), dtype), np.zeros(0, dtype)
        layers = spec.layers
        return _epoch_per_sample(
            X,
            np.ascontiguousarray(order, np.int64),
            np.ascontiguousarray(T, dtype),
            dt(spec.in_scale),
            dt(spec.in_offset),
            tuple([layer.W for layer in layers]),
            tuple(
                [
                    layer.b if layer.b is not None else np.zeros(layer.W.shape[0], dtype)
                    for layer in layers
                ]
            ),
            np.array([ACT[layer.activation] for layer in layers], np.int64),
            np.array([layer.train_W for layer in layers]),
            np.array([layer.train_b and layer.b is not None for layer in layers]),
            CROSS_ENTROPY if spec.loss == "cross_entropy" else SQUARED_ERROR,
            dt(spec.loss_scale),
            dt(spec.lr),
            dt(spec.momentum),
            tuple([layer.vW if layer.vW is not None else no_velocity_W for layer in layers]),
            tuple([layer.vb if layer.vb is not None else no_velocity_b for layer in layers]),
            A,
            D,
            spare,
        )
