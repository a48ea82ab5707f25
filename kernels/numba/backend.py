"""``NumbaBackend``: NumPy arrays, the compiled kernels of this sub-package."""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

from tinynet.backend import Backend, Collective, EpochSpec, adam_scalars
from tinynet.errors import BackendError
from tinynet.kernels.numba import cache, elementwise
from tinynet.kernels.numba.blas import blas_epoch, blas_epoch_allreduce, gemm_address, product
from tinynet.kernels.numba.compile import (
    ACT,
    BINARY_CROSS_ENTROPY,
    CACHE,
    CROSS_ENTROPY,
    LOSS_KINDS,
    SQUARED_ERROR,
    Data,
    Net,
    Rule,
    Thread,
    cache_probe,
)
from tinynet.kernels.numba.per_sample import epoch_per_sample
from tinynet.kernels.numba.small_batch import epoch_small_batch
from tinynet.kernels.numba.team import FLAG_STRIDE, run_team, split_rows
from tinynet.kernels.numpy_backend import NumpyBackend
from tinynet.kernels.threads import BlasThreads
from tinynet.system import cpu_count


class NumbaBackend(Backend):
    """NumPy arrays, Numba-compiled kernels."""

    name = "numba"
    xp = np
    # Taken from the reference on purpose: the same arrays. The products are OpenBLAS's, which
    # runs them faster than compiled loops at every shape the networks use (design.md), but
    # SciPy's copy of it, as in the epochs: see blas.product.
    asarray = NumpyBackend.asarray
    to_numpy = NumpyBackend.to_numpy
    # The compiled mini-batch epoch: for batches up to 16 (32 with momentum) while every weight
    # matrix has at most 512 KiB; beyond that BLAS's blocking wins. Momentum moves the limit:
    # the BLAS epoch then needs a pass over the weights per batch, which the compiled tiles fuse
    # into the update (the measurements: benchmarks/results/design.md).
    FUSED_MAX_BATCH = 16
    FUSED_MAX_BATCH_MOMENTUM = 32
    FUSED_MAX_WEIGHT_BYTES = 512 << 10

    def __init__(self) -> None:
        if numba.config.DISABLE_JIT:
            raise BackendError(
                "NUMBA_DISABLE_JIT is set, which turns Numba's compiler off: its kernels would "
                "run as plain Python, thousands of times slower; unset it, or use the numpy "
                "backend"
            )
        cache.check_active(cache_probe)
        self._local = threading.local()  # train_batches's work arrays, per calling thread
        self._compiled: set = set()  # kernels and argument kinds run by a team, see team.run_team
        # threads per kind of call (compiled teams and BLAS pools), from the rates measured
        self._blas = BlasThreads()
        self._sizer = self._blas.sizer
        self.adaptive_threads = self._blas.adaptive

    def info(self) -> dict[str, str]:
        info = NumpyBackend.info(self)
        info.update(
            backend=self.name,
            numba=numba.__version__,
            numba_threads=str(numba.get_num_threads()),
            kernel_cache=CACHE,
            adaptive_threads="on" if self.adaptive_threads else "off (TINYNET_ADAPTIVE_THREADS=0)",
        )
        return info

    # -- products and forward ---------------------------------------------------------------
    def matmul(self, a: Any, b: Any) -> Any:
        return product(a, b)

    def weight_grad(self, dz: Any, x: Any) -> Any:
        return product(dz, x, trans_a=True)

    def dense_forward(self, x: Any, W: Any, b: Any, activation: str, alpha: float = 0.0) -> Any:
        z = product(x, W, trans_b=True)
        bias = b if b is not None else np.zeros(W.shape[0], z.dtype)
        elementwise.bias_act(z, bias, ACT[activation], float(alpha))
        return z

    # -- backward ---------------------------------------------------------------------------
    def activation_backward(self, activation: str, y: Any, dy: Any, alpha: float = 0.0) -> Any:
        out = np.array(dy, order="C")  # a copy, multiplied in place
        elementwise.act_grad(y, out, ACT[activation], float(alpha))
        return out

    def bias_grad(self, dz: Any) -> Any:
        out = np.empty(dz.shape[1], dz.dtype)
        elementwise.column_sums(dz, out)
        return out

    # -- losses -----------------------------------------------------------------------------
    def _loss(self, kind: int, y: Any, t: Any, scale: float, reduction: str, grad: bool):
        dtype = np.result_type(y, t)  # as NumPy: float32 outputs vs float64 targets -> float64
        y, t = np.ascontiguousarray(y, dtype), np.ascontiguousarray(t, dtype)
        dt = dtype.type
        inv_n = dt(1 / y.shape[0]) if reduction == "mean" else dt(1)
        delta = np.empty_like(y)
        total = elementwise.loss_delta(y, t, kind, dt(scale), inv_n, delta)
        loss = np.asarray(total * float(inv_n), dtype)
        return loss, (delta if grad else None)

    def squared_error(self, y: Any, t: Any, scale: float, reduction: str, grad: bool = True):
        return self._loss(SQUARED_ERROR, y, t, scale, reduction, grad)

    def softmax_cross_entropy(self, p: Any, t: Any, reduction: str, grad: bool = True):
        return self._loss(CROSS_ENTROPY, p, t, 1.0, reduction, grad)

    def sigmoid_cross_entropy(self, p: Any, t: Any, reduction: str, grad: bool = True):
        return self._loss(BINARY_CROSS_ENTROPY, p, t, 1.0, reduction, grad)

    # -- update and data --------------------------------------------------------------------
    def sgd_update(
        self,
        w: Any,
        g: Any,
        lr: float,
        velocity: Any = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        dt = w.dtype.type
        v = velocity.reshape(-1) if velocity is not None else np.empty(0, w.dtype)
        g = np.ascontiguousarray(g, w.dtype).reshape(-1)
        elementwise.sgd(w.reshape(-1), g, dt(lr), v, dt(momentum), bool(nesterov), dt(weight_decay))

    def adam_update(
        self,
        w: Any,
        g: Any,
        m: Any,
        v: Any,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        step: int,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        dt = w.dtype.type
        constants = tuple(map(dt, adam_scalars(lr, betas, eps, step, weight_decay, decoupled)))
        g = np.ascontiguousarray(g, w.dtype).reshape(-1)
        elementwise.adam(w.reshape(-1), g, m.reshape(-1), v.reshape(-1), constants)

    def rescale(self, x: Any, scale: float, offset: float, dtype: Any) -> Any:
        out = np.empty(x.shape, dtype)
        dt = out.dtype.type
        elementwise.rescale(np.ascontiguousarray(x), dt(scale), dt(offset), out)
        return out

    # -- whole epochs -----------------------------------------------------------------------
    def can_train_batches(self, spec: EpochSpec, batch_size: int) -> bool:
        return True  # every rule on every path: the compiled loops or the BLAS epoch

    def _compiled_loop(self, spec: EpochSpec, batch_size: int) -> bool:
        """Whether this batch size runs in one compiled call (else: the BLAS epoch)."""
        if batch_size == 1:
            return True
        largest = max(layer.W.nbytes for layer in spec.layers)
        with_state = spec.momentum or spec.adam is not None  # a pass the tiles fuse
        most = self.FUSED_MAX_BATCH_MOMENTUM if with_state else self.FUSED_MAX_BATCH
        return batch_size <= most and largest <= self.FUSED_MAX_WEIGHT_BYTES

    def train_batches(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int) -> float:
        """SGD on X[order] in steps of batch_size; the sum of the per-sample losses. Per-sample
        steps and small batches run in one compiled call each, larger ones in blas.blas_epoch.
        The threads each call runs on: see threads.TeamSizer."""
        compiled = self._compiled_loop(spec, batch_size)
        widths = tuple([spec.layers[0].W.shape[1]] + [layer.W.shape[0] for layer in spec.layers])
        key = (compiled, spec.layers[0].W.dtype, widths, batch_size)
        if compiled:
            most = self.team_size(spec, batch_size)
            with self._sizer.sized(key, most, len(order), self.adaptive_threads) as size:
                return self._compiled_batches(spec, X, T, order, batch_size, size)
        with self._blas.sized(key, len(order)):
            return self._blas_batches(spec, X, T, order, batch_size)

    def can_train_batches_distributed(self, spec: EpochSpec, distributed: Collective) -> bool:
        return distributed.compiled_allreduce(spec.layers[0].W.dtype) is not None

    def train_batches_distributed(
        self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int, distributed: Collective
    ) -> float:
        """blas.blas_epoch_allreduce for every batch size: the shards of small global batches
        are smaller still, and a step needs the summed gradients before any update."""
        dtype = spec.layers[0].W.dtype
        data, net, rule = self._epoch_arguments(spec, X, T, order)
        A, D, _ = self._work_arrays(dtype, spec.layers, batch_size)
        grads, sums = self._flat_gradients(spec), self._flat_gradients(spec, "sums")
        shard = (np.int64(distributed.rank), np.int64(distributed.size))
        handles = distributed.compiled_allreduce(dtype)
        with self._blas.sized(("distributed", dtype, batch_size), len(order)):
            return blas_epoch_allreduce(
                gemm_address(dtype), data, net, rule, A, D, grads, sums, batch_size, shard,
                handles,
            )  # fmt: skip

    def _flat_gradients(self, spec: EpochSpec, name: str = "grads") -> tuple:
        """(one flat buffer, per-layer weight-gradient views of it, per-layer bias-gradient
        views): what one allreduce a step sums. Zeros, kept like _work_arrays."""
        dtype = spec.layers[0].W.dtype
        shapes = tuple([layer.W.shape for layer in spec.layers])
        key = ("flat", name, dtype, shapes)
        buffers = self._local.__dict__.setdefault("buffers", {})
        if key not in buffers:
            sizes = [r * c for r, c in shapes] + [r for r, _ in shapes]
            flat = np.zeros(sum(sizes), dtype)
            views, offset = [], 0
            for size in sizes:
                views.append(flat[offset : offset + size])
                offset += size
            n = len(shapes)
            W_views = tuple([v.reshape(shape) for v, shape in zip(views[:n], shapes, strict=True)])
            buffers[key] = (flat, W_views, tuple(views[n:]))
        return buffers[key]

    def _blas_batches(self, spec, X, T, order, batch_size: int) -> float:
        dtype = spec.layers[0].W.dtype
        data, net, rule = self._epoch_arguments(spec, X, T, order)
        A, D, _ = self._work_arrays(dtype, spec.layers, batch_size)
        grads_W, grad_b = self._gradients(spec)
        address = gemm_address(dtype)
        other = _other_rules(spec)
        return blas_epoch(address, data, net, rule, A, D, grads_W, grad_b, batch_size, other)

    @staticmethod
    def _epoch_arguments(spec: EpochSpec, X: Any, T: Any, order: Any) -> tuple:
        """The compiled epochs' Data, Net and Rule (compile.py) for this spec."""
        dtype = spec.layers[0].W.dtype
        dt = dtype.type
        layers = spec.layers
        no_velocity_W, no_velocity_b = np.zeros((0, 0), dtype), np.zeros(0, dtype)
        data = Data(
            X,
            np.ascontiguousarray(order, np.int64),
            np.ascontiguousarray(T, dtype),
            dt(spec.in_scale),
            dt(spec.in_offset),
        )
        net = Net(
            Ws=tuple([layer.W for layer in layers]),
            bs=tuple(
                [
                    layer.b if layer.b is not None else np.zeros(layer.W.shape[0], dtype)
                    for layer in layers
                ]
            ),
            acts=np.array([ACT[layer.activation] for layer in layers], np.int64),
            alphas=np.array([layer.alpha for layer in layers], dtype),
            train_w=np.array([layer.train_W for layer in layers]),
            train_b=np.array([layer.train_b and layer.b is not None for layer in layers]),
            vWs=tuple([layer.vW if layer.vW is not None else no_velocity_W for layer in layers]),
            vbs=tuple([layer.vb if layer.vb is not None else no_velocity_b for layer in layers]),
            sWs=tuple([layer.sW if layer.sW is not None else no_velocity_W for layer in layers]),
            sbs=tuple([layer.sb if layer.sb is not None else no_velocity_b for layer in layers]),
        )
        # Adam's settings; step_size and bias_root, per update, come from elementwise.rule_at
        b1, b2, eps, decay, decoupled = spec.adam or (0.0, 0.0, 1.0, 0.0, False)
        b1, b2, _, _, eps, l2, shrink = adam_scalars(spec.lr, (b1, b2), eps, 1, decay, decoupled)
        rule = Rule(
            LOSS_KINDS[spec.loss],
            dt(spec.loss_scale),
            spec.reduction == "mean",
            dt(spec.lr),
            dt(spec.momentum),
            spec.nesterov,
            spec.adam is not None,
            dt(b1),
            dt(b2),
            dt(eps),
            dt(spec.weight_decay if spec.adam is None else l2),
            dt(shrink),
            np.int64(spec.step),
        )
        return data, net, rule

    def _compiled_batches(self, spec, X, T, order, batch_size: int, size: int) -> float:
        dtype = spec.layers[0].W.dtype
        layers = spec.layers
        data, net, rule = self._epoch_arguments(spec, X, T, order)
        progress = np.zeros(size * FLAG_STRIDE, np.int64)  # see team.meet
        if batch_size == 1:
            return self._per_sample_epoch(layers, size, progress, data, net, rule, spec)
        bounds = np.array([split_rows(layer.W.shape[0], size) for layer in layers], np.int64)
        A, D, _ = self._work_arrays(dtype, layers, batch_size)
        per_rank = [
            (Thread(rank, progress, bounds), data, net, rule, A, D, batch_size, _other_rules(spec))
            for rank in range(size)
        ]
        return sum(run_team(self._compiled, epoch_small_batch, per_rank))

    def team_size(self, spec: EpochSpec, batch_size: int = 1) -> int:
        """Threads for a compiled epoch: at most Numba's thread count (NUMBA_NUM_THREADS,
        ``numba.set_num_threads``) and the cores we may use, since they wait for each other by
        spinning. Mini-batches split every layer's units and need each hidden layer's units
        independent (no softmax). Per-sample steps split only the first layer's rows and each
        thread repeats the later layers, so only while the first layer holds most of the
        weights, has 32 rows a thread, and is not a softmax."""
        first, *rest = spec.layers
        threads = min(numba.get_num_threads(), cpu_count())
        if batch_size > 1:
            hidden_softmax = any(layer.activation == "softmax" for layer in spec.layers[:-1])
            return 1 if hidden_softmax else threads
        if first.activation == "softmax" or first.W.size < sum(layer.W.size for layer in rest):
            return 1
        return max(1, min(threads, first.W.shape[0] // 32))

    def _per_sample_epoch(self, layers, size, progress, data, net, rule, spec) -> float:
        dtype = layers[0].W.dtype
        bounds = np.array([split_rows(layers[0].W.shape[0], size)], np.int64)
        H = np.zeros((2, layers[0].W.shape[0]), dtype)

        def own(arrays):  # rank > 0: the first layer shared, the later layers copied
            return (arrays[0], *[a.copy() for a in arrays[1:]])

        per_rank = []
        for rank in range(size):
            A, D, spare = self._work_arrays(dtype, layers, 1, rank)
            mine = (
                net
                if rank == 0
                else net._replace(
                    Ws=own(net.Ws),
                    bs=own(net.bs),
                    vWs=own(net.vWs),
                    vbs=own(net.vbs),
                    sWs=own(net.sWs),
                    sbs=own(net.sbs),
                )
            )
            rows = (tuple([a[0] for a in A]), tuple([d[0] for d in D]))
            per_rank.append(
                (Thread(rank, progress, bounds), data, mine, rule, *rows, spare, H,
                 _other_rules(spec))
            )  # fmt: skip
        # every thread scores every sample: rank 0's sum
        return run_team(self._compiled, epoch_per_sample, per_rank)[0]

    def _work_arrays(self, dtype, layers, batch_size: int, rank: int = 0) -> tuple:
        """Activations A[l] (batch, width), deltas D[l] and the next sample's input, kept per
        dtype, layer widths, batch size and team rank, for the calling thread (two threads may
        train models of one shape at once)."""
        widths = [layers[0].W.shape[1]] + [layer.W.shape[0] for layer in layers]
        key = (dtype, tuple(widths), batch_size, rank)
        buffers = self._local.__dict__.setdefault("buffers", {})
        if key not in buffers:
            buffers[key] = (
                tuple([np.zeros((batch_size, w), dtype) for w in widths]),
                tuple([np.zeros((batch_size, w), dtype) for w in widths[1:]]),
                np.zeros(widths[0], dtype),
            )
        return buffers[key]

    def _gradients(self, spec: EpochSpec) -> tuple:
        """The BLAS epoch's gradient buffers, kept like _work_arrays: per layer the weight
        gradient (Adam's, and SGD's with Nesterov or decay; plain and momentum SGD need none:
        empty) and the bias gradient."""
        dtype = spec.layers[0].W.dtype
        shapes = tuple([layer.W.shape for layer in spec.layers])
        needed = spec.adam is not None or spec.nesterov or bool(spec.weight_decay)
        key = ("gradients", dtype, shapes, needed)
        buffers = self._local.__dict__.setdefault("buffers", {})
        if key not in buffers:
            buffers[key] = (
                tuple([np.zeros(shape if key[3] else (0, 0), dtype) for shape in shapes]),
                tuple([np.zeros(shape[0], dtype) for shape in shapes]),
            )
        return buffers[key]


def _other_rules(spec: EpochSpec) -> np.bool_ | None:
    """The compiled epochs' ``other_rules``: None for plain or momentum SGD, whose code is then
    all that compiles (the others' out-of-line passes doubled the first compile of the
    per-sample epoch); True for Adam and SGD with Nesterov or weight decay."""
    plain = spec.adam is None and not spec.nesterov and not spec.weight_decay
    return None if plain else np.True_
