"""A model's prepared training plan on the GPU: preallocated buffers, the fused kernels, cuBLAS
GEMMs and (in graph mode) captured CUDA graphs of whole steps."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from tinynet.backend import Collective, EpochSpec, adam_scalars
from tinynet.kernels.cupy.sources import ACT, ELEMENTWISE, ROW_KERNELS, row_kernel_names

if TYPE_CHECKING:
    from tinynet.kernels.cupy.backend import CupyBackend
    from tinynet.kernels.cupy.cublas import Cublas


class PlanKernels:
    """The fused epoch's kernels for one dtype, built once (compiled by CuPy on first launch)."""

    def __init__(self, cp: Any, dtype: np.dtype) -> None:
        names = row_kernel_names("float" if dtype == np.float32 else "double")
        module = cp.RawModule(code=ROW_KERNELS, name_expressions=list(names.values()))
        self.softmax_ce, self.squared_error, self.softmax_rows, self.adam_scalars = (
            module.get_function(names[name])
            for name in ("tinynet_softmax_ce", "tinynet_squared_error", "tinynet_softmax_rows",
                         "tinynet_adam_scalars")
        )  # fmt: skip
        self.sigmoid_ce = module.get_function(names["tinynet_sigmoid_ce"])
        self.add_losses = module.get_function(names["tinynet_add_losses"])
        self.next_step = module.get_function(names["tinynet_next_step"])
        # the elementwise kernels of the plan: gather the batch's rows, and the rules other than
        # plain SGD (the gradient by a GEMM, then the rule)
        self.gather, self.sgd, self.sgd_decay, self.adam = (
            ELEMENTWISE[name].build(cp)
            for name in ("plan_gather", "plan_sgd", "plan_sgd_decay", "plan_adam")
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
        self,
        backend: CupyBackend,
        blas: Cublas,
        spec: EpochSpec,
        X: Any,
        T: Any,
        batch: int,
        distributed: Collective | None = None,
    ) -> None:
        """``distributed``: the run's Collective when this process is one rank of a
        data-parallel run. A step then takes this rank's shard of the batch, and one allreduce
        of one flat buffer sums the gradients of all ranks before any update."""
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
        self.distributed = distributed
        # the rows of a step: the batch, or this rank's largest shard of it
        rows = batch if distributed is None else -(-batch // distributed.size)
        widths = [spec.layers[0].W.shape[1]] + [layer.W.shape[0] for layer in spec.layers]
        self.A = [cp.zeros((rows, w), dtype) for w in widths]  # activations, A[0] the input
        self.D = [cp.zeros((rows, w), dtype) for w in widths[1:]]  # deltas dE/dz
        self.zero_bias = [cp.zeros(layer.W.shape[0], dtype) for layer in spec.layers]
        # what each layer's step updates: (parameter, velocity or Adam's first moments, Adam's
        # second moments, is_bias, gradient buffer); the gradient is d^T a for W and d^T 1 for
        # a bias, taken as a column (out, 1). Plain SGD in one process has no buffer: its GEMM
        # adds -lr d^T a into the parameter (cuda/tinynet.cuh, sgd_step). In a data-parallel run the
        # buffers are views of one flat buffer, which one allreduce a step sums over the ranks.
        self.adam, self.nesterov = spec.adam is not None, spec.nesterov
        self.weight_decay = dt(spec.weight_decay)
        plain = not self.adam and spec.momentum == 0 and spec.weight_decay == 0

        def column(a: Any) -> Any:
            return None if a is None else a.reshape(-1, 1)

        params_of = []
        for layer in spec.layers:
            params = [(layer.W, layer.vW, layer.sW, False)] if layer.train_W else []
            if layer.train_b:
                params.append((column(layer.b), column(layer.vb), column(layer.sb), True))
            params_of.append(params)
        sizes = [param[0].size for params in params_of for param in params]
        self.flat_grads = cp.zeros(sum(sizes), dtype) if distributed is not None else None
        self.updates, offset = [], 0
        for params in params_of:
            with_grads = []
            for param in params:
                if self.flat_grads is not None:
                    grad = self.flat_grads[offset : offset + param[0].size].reshape(param[0].shape)
                    offset += param[0].size
                else:
                    grad = None if plain else cp.empty_like(param[0])
                with_grads.append((*param, grad))
            self.updates.append(with_grads)
        self.ones = cp.ones((rows, 1), dtype)
        self.order = cp.zeros(X.shape[0], np.int64)
        self.step = cp.zeros(1, np.int64)
        self.loss = cp.zeros((), np.float64)
        self.row_loss = cp.zeros(rows, np.float64)  # each row's loss, added up in row order
        # the GEMMs' alpha and beta, read on the device: 1, 0, -lr; then lr and momentum for
        # the SGD rule kernels (the learning rates set per run)
        self.scalars = cp.asarray(np.array([1, 0, 0, 0, spec.momentum], dtype))
        # Adam's scalars (cuda/rows.cu, tinynet_adam_scalars) and the updates before this call
        self.hyper = cp.zeros(8, dtype)
        self.base = cp.zeros(1, np.int64)
        self.one, self.zero, self.alpha_lr = (
            self.scalars.data.ptr + i * dtype.itemsize for i in range(3)
        )
        self.neg_lr, self.lr_m, self.lr = self.scalars[2:3], self.scalars[3:5], self.scalars[3:4]
        self.in_scale, self.in_offset = dt(spec.in_scale), dt(spec.in_offset)
        self.ce, self.bce = spec.loss == "cross_entropy", spec.loss == "binary_cross_entropy"
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
        """Forward, loss and delta, backward and update for the next ``nb`` samples of order
        (in a data-parallel run: this rank's shard of them, then the allreduce)."""
        first, rows = 0, nb
        if self.distributed is not None:
            first, last = self.distributed.shard(0, nb)
            rows = last - first
        if rows:  # a rank's shard of the last, short batch may be empty
            self._forward_and_loss(nb, first, rows)
        if self.adam:  # this update's step_size and bias_root
            self.k.adam_scalars((1,), (1,), (self.step, self.base, self.hyper))
        if self.distributed is None:
            self._backward(rows, update=True)
        else:
            if rows:
                self._backward(rows, update=False)
            else:
                self.flat_grads.fill(0)
            # on the current stream: NCCL's allreduce is captured into the CUDA graph with the
            # kernels around it
            self.distributed.allreduce_on_device(self.flat_grads)
            for updates in self.updates:
                for param, moment, second, _, grad in updates:
                    self._rule(param, moment, second, grad)
        self.k.next_step((1,), (1,), (self.step,))

    def _forward_and_loss(self, nb: int, first: int, rows: int) -> None:
        """Rows first..first + rows of the step's ``nb``-sample batch forward; their losses
        added to ``loss`` and the deltas of the output layer (for the mean over all ``nb``)."""
        k, blas, layers, A = self.k, self.blas, self.layers, self.A
        last = len(layers) - 1
        dt = self.dtype.type
        inv_n = dt(1 / nb) if self.mean else dt(1)
        x0 = A[0][:rows]
        k.gather(self.X, self.order, self.step, first, self.batch, x0.shape[1], self.in_scale,
                 self.in_offset, x0)  # fmt: skip
        for i, layer in enumerate(layers):
            z = A[i + 1][:rows]
            blas.gemm(z, A[i][:rows], layer.W, self.one, self.zero, trans_b=True)  # z = a W^T
            b = layer.b if layer.b is not None else self.zero_bias[i]
            if i == last and self.ce:  # bias and softmax in the loss kernel below
                continue
            if layer.activation == "softmax":  # the last layer, before a squared error
                grid = ((rows + 127) // 128,)
                k.softmax_rows(grid, (128,), (z, b, np.int32(rows), np.int32(z.shape[1])))
            else:
                self.bias_act(z, b, ACT[layer.activation], dt(layer.alpha), z)
        y, d = A[-1][:rows], self.D[-1][:rows]
        classes = y.shape[1]
        grid, block = ((rows + 127) // 128,), (128,)
        where = (self.order, self.step, np.int64(first), np.int64(self.batch), np.int32(rows),
                 np.int32(classes))  # fmt: skip
        if self.ce:
            b = layers[-1].b if layers[-1].b is not None else self.zero_bias[-1]
            k.softmax_ce(grid, block, (y, b, self.T, *where, inv_n, self.tiny, d, self.row_loss))
        elif self.bce:  # y: the sigmoids, applied with the bias above
            k.sigmoid_ce(grid, block, (y, self.T, *where, inv_n, self.tiny, d, self.row_loss))
        else:
            act, alpha = np.int32(ACT[layers[-1].activation]), dt(layers[-1].alpha)
            coef = dt(2) * self.loss_scale * inv_n
            k.squared_error(grid, block, (y, self.T, *where, act, alpha, self.loss_scale, coef, d,
                                          self.row_loss))  # fmt: skip
        k.add_losses((1,), (1,), (self.row_loss, np.int32(rows), self.loss))

    def _delta_below(self, i: int, rows: int) -> None:
        """The delta of layer i - 1 from layer i's, through W_i before its update."""
        d, a_in, below = self.D[i][:rows], self.A[i][:rows], self.D[i - 1][:rows]
        self.blas.gemm(below, d, self.layers[i].W, self.one, self.zero)
        below_layer = self.layers[i - 1]
        act, alpha = ACT[below_layer.activation], self.dtype.type(below_layer.alpha)
        self.act_grad(a_in, below, act, alpha, below)

    def _backward(self, rows: int, update: bool) -> None:
        """Layer by layer from the top: the delta below, then this layer's gradients, each
        parameter updated right after its gradient when ``update`` (one process); else the
        gradients only, into their views of the flat buffer (a data-parallel step sums them
        over the ranks before any update)."""
        for i in range(len(self.layers) - 1, -1, -1):
            d, a_in = self.D[i][:rows], self.A[i][:rows]
            if i > 0:
                self._delta_below(i, rows)
            for param, moment, second, is_bias, grad in self.updates[i]:
                x = self.ones[:rows] if is_bias else a_in
                if grad is None:  # plain SGD: p <- p - lr d^T x, one GEMM (tinynet.cuh, sgd_step)
                    self.blas.gemm(param, d, x, self.alpha_lr, self.one, trans_a=True)
                    continue
                self.blas.gemm(grad, d, x, self.one, self.zero, trans_a=True)  # g = d^T x
                if update:
                    self._rule(param, moment, second, grad)

    def _rule(self, param: Any, moment: Any, second: Any, grad: Any) -> None:
        """The optimizer's update of one parameter from its gradient."""
        k = self.k
        if self.adam:
            k.adam(grad, self.hyper, param, moment, second)
        elif moment is None:  # no momentum: weight decay, or plain SGD in a data-parallel run
            k.sgd_decay(grad, self.lr_m, self.weight_decay, param)
        else:
            k.sgd(grad, self.lr_m, self.nesterov, self.weight_decay, param, moment)
