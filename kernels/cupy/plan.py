"""A model's prepared training plan on the GPU: preallocated buffers, the fused kernels, cuBLAS
GEMMs and (in graph mode) captured CUDA graphs of whole steps."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from tinynet.backend import EpochSpec, adam_scalars
from tinynet.kernels.cupy.sources import (
    ACT,
    ADAM_FROM_DEVICE,
    ADAM_STEP,
    ROW_KERNELS,
    SGD_DECAY_FROM_DEVICE,
    SGD_FROM_DEVICE,
    SGD_STEP,
)

if TYPE_CHECKING:
    from tinynet.kernels.cupy.backend import CupyBackend
    from tinynet.kernels.cupy.cublas import Cublas


class PlanKernels:
    """The fused epoch's kernels for one dtype, built once (compiled by CuPy on first launch)."""

    def __init__(self, cp: Any, dtype: np.dtype) -> None:
        ctype = "float" if dtype == np.float32 else "double"
        module = cp.RawModule(code=f"typedef {ctype} T;\n" + ROW_KERNELS)
        self.softmax_ce = module.get_function("tinynet_softmax_ce")
        self.squared_error = module.get_function("tinynet_squared_error")
        self.softmax_rows = module.get_function("tinynet_softmax_rows")
        self.next_step = module.get_function("tinynet_next_step")
        self.adam_scalars = module.get_function("tinynet_adam_scalars")
        self.gather = cp.ElementwiseKernel(
            "raw X x, raw int64 order, raw int64 step, int64 batch, int64 width, T scale, T offset",
            "T y",
            "long long r = i / width;"
            "y = (T)x[order[step[0] * batch + r] * width + (i - r * width)] * scale + offset",
            "tinynet_gather",
        )
        # every rule but plain SGD: the gradient by a GEMM, then the rule
        self.sgd = cp.ElementwiseKernel(
            "T g, raw T lr_m, bool nesterov, T wd",
            "T w, T v",
            SGD_DECAY_FROM_DEVICE,
            SGD_FROM_DEVICE,
            "tinynet_plan_sgd",
            preamble=SGD_STEP,
        )
        self.sgd_decay = cp.ElementwiseKernel(
            "T g, raw T lr_m, T wd",
            "T w",
            SGD_DECAY_FROM_DEVICE,
            "tinynet_plan_sgd_decay",
            preamble=SGD_STEP,
        )
        self.adam = cp.ElementwiseKernel(
            "T g, raw T h",
            "T w, T m, T v",
            ADAM_FROM_DEVICE,
            "tinynet_plan_adam",
            preamble=ADAM_STEP,
        )


class EpochPlan:
    """Preallocated buffers, kernels and (in graph mode) the captured steps of one model, dataset
    and batch size. A step reads its batch's indices from ``order`` at ``step * batch`` and
    moves ``step`` on, both in device memory, so one captured run of steps serves them all."""

    STEPS_PER_GRAPH = 16

    @staticmethod
    def key(spec: EpochSpec, X: Any, T: Any, batch_size: int) -> tuple:
        """What the captured pointers and constants depend on: a change means a new EpochPlan."""
        arrays = [X, T]
        for layer in spec.layers:
            arrays += [layer.W, layer.b, layer.vW, layer.vb, layer.sW, layer.sb]
        pointers = tuple(None if a is None else (a.data.ptr, a.shape, a.dtype.str) for a in arrays)
        settings = tuple(
            (layer.activation, layer.alpha, layer.train_W, layer.train_b) for layer in spec.layers
        )
        return (pointers, settings, batch_size, spec.in_scale, spec.in_offset, spec.loss,
                spec.loss_scale, spec.reduction, spec.momentum, spec.nesterov,
                spec.weight_decay, spec.adam)  # fmt: skip

    def __init__(
        self, backend: CupyBackend, blas: Cublas, spec: EpochSpec, X: Any, T: Any, batch: int
    ) -> None:
        cp = self.cp = backend.xp
        self.blas = blas  # the current device's handle
        self.layers = spec.layers
        dtype = self.dtype = np.dtype(spec.layers[0].W.dtype)
        dt = dtype.type
        if dtype not in backend._epoch_kernels:
            backend._epoch_kernels[dtype] = PlanKernels(cp, dtype)
        self.k = backend._epoch_kernels[dtype]
        self.bias_act, self.act_grad = backend._bias_act, backend._act_grad
        self.X, self.T, self.batch = X, cp.ascontiguousarray(T, dtype), batch
        widths = [spec.layers[0].W.shape[1]] + [layer.W.shape[0] for layer in spec.layers]
        self.A = [cp.zeros((batch, w), dtype) for w in widths]  # activations, A[0] the input
        self.D = [cp.zeros((batch, w), dtype) for w in widths[1:]]  # deltas dE/dz
        self.zero_bias = [cp.zeros(layer.W.shape[0], dtype) for layer in spec.layers]
        # what each layer's step updates: (parameter, velocity or Adam's first moments, Adam's
        # second moments, is_bias, gradient buffer); the gradient is d^T a for W and d^T 1 for
        # a bias, taken as a column (out, 1). Plain SGD has no buffer: its GEMM adds -lr d^T a
        # into the parameter (sources.SGD_STEP).
        self.adam, self.nesterov = spec.adam is not None, spec.nesterov
        self.weight_decay = dt(spec.weight_decay)
        plain = not self.adam and spec.momentum == 0 and spec.weight_decay == 0

        def column(a: Any) -> Any:
            return None if a is None else a.reshape(-1, 1)

        self.updates = []
        for layer in spec.layers:
            params = [(layer.W, layer.vW, layer.sW, False)] if layer.train_W else []
            if layer.train_b:
                params.append((column(layer.b), column(layer.vb), column(layer.sb), True))
            self.updates.append(
                [(*param, None if plain else cp.empty_like(param[0])) for param in params]
            )
        self.ones = cp.ones((batch, 1), dtype)
        self.order = cp.zeros(X.shape[0], np.int64)
        self.step = cp.zeros(1, np.int64)
        self.loss = cp.zeros((), np.float64)
        # the GEMMs' alpha and beta, read on the device: 1, 0, -lr; then lr and momentum for
        # the SGD rule kernels (the learning rates set per run)
        self.scalars = cp.asarray(np.array([1, 0, 0, 0, spec.momentum], dtype))
        # Adam's scalars (sources.ADAM_SCALARS) and the updates before this call
        self.hyper = cp.zeros(8, dtype)
        self.base = cp.zeros(1, np.int64)
        self.one, self.zero, self.alpha_lr = (
            self.scalars.data.ptr + i * dtype.itemsize for i in range(3)
        )
        self.neg_lr, self.lr_m, self.lr = self.scalars[2:3], self.scalars[3:5], self.scalars[3:4]
        self.in_scale, self.in_offset = dt(spec.in_scale), dt(spec.in_offset)
        self.ce = spec.loss == "cross_entropy"
        self.loss_scale, self.mean = dt(spec.loss_scale), spec.reduction == "mean"
        self.tiny = dt(np.finfo(dtype).tiny)
        self.captured: dict[int, Any] = {}  # steps -> CUDA graph
        self.capture_error: Exception | None = None  # set once a capture failed: eager from then
        self.warm = False  # a full step has run: its kernels are compiled and loaded

    def run(self, spec: EpochSpec, order: Any, graphs: bool) -> Any:
        cp = self.cp
        n = order.shape[0]
        self.order[:n] = order
        self.step.fill(0)
        self.neg_lr.fill(-spec.lr)  # the learning rate may change between epochs
        self.lr.fill(spec.lr)
        if spec.adam is not None:
            b1, b2, eps, weight_decay, decoupled = spec.adam
            scalars = adam_scalars(spec.lr, (b1, b2), eps, 1, weight_decay, decoupled)
            _, _, _, _, eps, l2, shrink = scalars
            self.hyper[:6] = cp.asarray(np.array([spec.lr, b1, b2, eps, l2, shrink], self.dtype))
            self.base.fill(spec.step)
        stream = cp.cuda.get_current_stream()
        self.blas.bind(stream.ptr)
        full, rest = divmod(n, self.batch)
        done = 0
        if graphs and full and not self.warm:  # one eager step before any capture: every
            self._step(self.batch)  # kernel compiled and loaded for these shapes
            done, self.warm = 1, True
        while graphs and done < full and self.capture_error is None:
            steps = min(full - done, self.STEPS_PER_GRAPH)
            try:
                graph = self._graph(steps, stream)
            except Exception as exc:  # nothing of a failed capture ran: go on eagerly
                self.capture_error = exc
                warnings.warn(
                    f"tinynet's cupy backend could not capture a CUDA graph "
                    f"({type(exc).__name__}: {exc}); this model trains without graphs",
                    RuntimeWarning,
                    stacklevel=4,
                )
                break
            graph.launch(stream)
            done += steps
        for _ in range(done, full):
            self._step(self.batch)
            self.warm = True
        if rest:
            self._step(rest)
        total = self.loss.copy()
        self.loss.fill(0)
        return total

    def _graph(self, steps: int, stream: Any) -> Any:
        """``steps`` full steps as one CUDA graph, captured on first use. A call replays the
        STEPS_PER_GRAPH graph and one graph for what is left: a call of 4 batches (1024-sample
        batches in the trainer's 4096-sample calls) is one graph of 4 steps."""
        graph = self.captured.get(steps)
        if graph is None:
            capture = self.cp.cuda.Stream(non_blocking=True)
            try:
                with capture:
                    self.blas.bind(capture.ptr)
                    capture.begin_capture()
                    try:
                        for _ in range(steps):
                            self._step(self.batch)
                    except BaseException:
                        # end the broken capture (its own error would hide the real one)
                        with contextlib.suppress(Exception):
                            capture.end_capture()
                        raise
                    graph = capture.end_capture()
            finally:
                self.blas.bind(stream.ptr)  # never left bound to the capture stream
            self.captured[steps] = graph
        return graph

    def _step(self, nb: int) -> None:
        """Forward, loss and delta, backward and update for the next ``nb`` samples of order."""
        k, blas, layers, A, D = self.k, self.blas, self.layers, self.A, self.D
        last = len(layers) - 1
        dt = self.dtype.type
        inv_n = dt(1 / nb) if self.mean else dt(1)
        x0 = A[0][:nb]
        k.gather(self.X, self.order, self.step, self.batch, x0.shape[1], self.in_scale,
                 self.in_offset, x0)  # fmt: skip
        for i, layer in enumerate(layers):
            z = A[i + 1][:nb]
            blas.gemm(z, A[i][:nb], layer.W, self.one, self.zero, trans_b=True)  # z = a W^T
            b = layer.b if layer.b is not None else self.zero_bias[i]
            if i == last and self.ce:  # bias and softmax in the loss kernel below
                continue
            if layer.activation == "softmax":  # the last layer, before a squared error
                grid = ((nb + 127) // 128,)
                k.softmax_rows(grid, (128,), (z, b, np.int32(nb), np.int32(z.shape[1])))
            else:
                self.bias_act(z, b, ACT[layer.activation], dt(layer.alpha), z)
        y, d = A[-1][:nb], D[-1][:nb]
        classes = y.shape[1]
        grid, block = ((nb + 127) // 128,), (128,)
        if self.ce:
            b = layers[-1].b if layers[-1].b is not None else self.zero_bias[-1]
            k.softmax_ce(grid, block, (y, b, self.T, self.order, self.step, np.int64(self.batch),
                                       np.int32(nb), np.int32(classes), inv_n, self.tiny, d,
                                       self.loss))  # fmt: skip
        else:
            act, alpha = np.int32(ACT[layers[-1].activation]), dt(layers[-1].alpha)
            coef = dt(2) * self.loss_scale * inv_n
            k.squared_error(grid, block, (y, self.T, self.order, self.step,
                                          np.int64(self.batch), np.int32(nb), np.int32(classes),
                                          act, alpha, self.loss_scale, coef, d,
                                          self.loss))  # fmt: skip
        if self.adam:  # this update's step_size and bias_root
            k.adam_scalars((1,), (1,), (self.step, self.base, self.hyper))
        for i in range(last, -1, -1):
            layer, d, a_in = layers[i], D[i][:nb], A[i][:nb]
            if i > 0:  # the delta below, from W before its update
                below = D[i - 1][:nb]
                blas.gemm(below, d, layer.W, self.one, self.zero)
                below_layer = layers[i - 1]
                act, alpha = ACT[below_layer.activation], dt(below_layer.alpha)
                self.act_grad(a_in, below, act, alpha, below)
            for param, first, second, is_bias, grad in self.updates[i]:
                x = self.ones[:nb] if is_bias else a_in
                if grad is None:  # plain SGD: p <- p - lr d^T x, one GEMM (sources.SGD_STEP)
                    blas.gemm(param, d, x, self.alpha_lr, self.one, trans_a=True)
                    continue
                blas.gemm(grad, d, x, self.one, self.zero, trans_a=True)  # g = d^T x
                if self.adam:
                    k.adam(grad, self.hyper, param, first, second)
                elif first is None:  # weight decay without momentum
                    k.sgd_decay(grad, self.lr_m, self.weight_decay, param)
                else:
                    k.sgd(grad, self.lr_m, self.nesterov, self.weight_decay, param, first)
        k.next_step((1,), (1,), (self.step,))
