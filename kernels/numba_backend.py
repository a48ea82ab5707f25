"""The Numba CPU backend: the reference's kernels compiled and fused, whole epochs in one call.

Choices, each measured on the 2-core Zen 4 machine (benchmarks/results/):

* ``train_epoch`` takes every batch size (``fuses``), in three ways:
  - per-sample SGD (the tutorials' way): one compiled call per stretch of the epoch, reading
    the uint8 images directly. Matrix-vector loops in which the first layer's update and the
    next sample's forward pass share one pass over its weights, the bound of a per-sample step;
  - batches up to 32 with every weight matrix at most 512 KiB: one compiled call too, with
    4 x 4 register tiles that add the weight gradient straight into the weights;
  - larger batches (``_blas_epoch``): GEMMs on BLAS, the weight gradient accumulated into W by
    gemm itself (beta = 1), compiled elementwise passes, no array allocated per batch.
  The per-kernel methods (``dense_forward``, ...) serve models the epochs cannot express; their
  GEMMs are NumPy's: compiled dot-product loops lost to OpenBLAS at every shape the networks use,
  float32: 7.0 vs 6.8 us at 1x784x128, 57 vs 32 us at 1x784x1024, 186 vs 77 us at 32x784x128.
* Threads: the compiled epochs run as a team of nogil calls, one per thread (``_run_team``),
  meeting through atomic counters (``_meet``) rather than ``prange``: a parallel region per
  sample cost about as much as it saved (8.5 vs 10.2 us a step at 784x128), and the
  ``parallel=True`` mini-batch epoch took 7.3 s to compile against 6.2 s for the team's. Per
  sample, each thread owns a slice of the first layer's rows and repeats the small later
  layers, so the team meets once per sample (784-128-10: 0.75 -> 0.41 s/epoch on two cores).
  The team never runs while BLAS does; its size is Numba's thread count (``NUMBA_NUM_THREADS``),
  at most the cores we may use.
* Every elementwise step is one pass: bias + activation in place; activation gradient times
  delta in place (through one array, so LLVM vectorises it); loss value and gradient; the SGD
  or momentum update. float32 exp is plain arithmetic that vectorises (``_exp_row``).
* float32 stays float32: Numba widens ``float32 op <Python float>`` to float64, so constants come
  from ``_typed(array, 1.0)`` and scalar arguments are cast before the call.
* fastmath is limited to {reassoc, contract, nsz, arcp} (vectorised sums, FMAs): never nnan/ninf,
  so NaN and inf behave as in NumPy, e.g. sigmoid(-1000) = 1/(1+inf) = 0 exactly.
* Compile time: no slice assignments (``a[:] = b`` compiled for about 3 s), no literal
  arguments (each compiles another copy of the callee), no ``np.ones`` & co. for constants.
* All kernels live in this one file, cached on disk by ``numba_cache`` in a folder named by the
  hash of this file (``~/.cache/tinynet/numba/<hash>``): kernels that call each other are always
  loaded from the same version of the source. (During development a cache left by earlier
  versions of this file, kept in ``__pycache__`` and trusted by its timestamp, crashed a
  process; a new hash cannot go stale.) Damaged or unwritable caches: see numba_cache.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tinynet.system import check_numba_threads_variable, cpu_count

check_numba_threads_variable()  # before Numba reads it: its own error names no variable

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from tinynet.backend import Backend, EpochSpec  # noqa: E402
from tinynet.kernels import numba_cache  # noqa: E402
from tinynet.kernels.numpy_backend import NumpyBackend  # noqa: E402

# The kernels' on-disk cache: a folder per version of this file and of the cache's own format.
CACHE = numba_cache.configure([os.path.abspath(__file__), os.path.abspath(numba_cache.__file__)])

FAST = {"reassoc", "contract", "nsz", "arcp"}
ACT = {"identity": 0, "step": 1, "sigmoid": 2, "tanh": 3, "relu": 4, "softmax": 5}
IDENTITY, STEP, SIGMOID, TANH, RELU, SOFTMAX = range(6)
SQUARED_ERROR, CROSS_ENTROPY = 0, 1


def jit(fn=None, *, fastmath=FAST, **options):
    """``njit`` with tinynet's kernel cache (see kernels/numba_cache.py) and these defaults."""
    # error_model="numpy": float division by zero gives inf or NaN, as in NumPy, instead of
    # raising ZeroDivisionError; the check Numba adds otherwise keeps loops with a division from
    # vectorising (sigmoid over 512 x 128, all passes: 83 -> 31 us).
    if fn is None:
        return lambda f: jit(f, fastmath=fastmath, **options)
    compiled = njit(fastmath=fastmath, nogil=True, error_model="numpy", **options)(fn)
    return numba_cache.cached(compiled)


def inner_jit(fn):
    """A helper only compiled code calls: without the wrappers that let Python call a function,
    each compiles faster (the wrappers took about 0.07 s per function)."""
    return jit(fn, no_cpython_wrapper=True, no_cfunc_wrapper=True)


# -- a team of threads in one compiled loop ---------------------------------------------------
# A compiled epoch split over cores runs as one nogil call per thread (see ``_run_team``), each
# thread owning a slice of the first layer's rows. They meet once per step: thread t publishes
# "I have written my part of step s" by storing s into progress[t * FLAG_STRIDE] (release), and
# waits until every thread's counter reaches s (acquire). Numba has no atomics on the CPU, so the
# two accesses are LLVM atomic instructions; a plain load could be hoisted out of the wait loop.
FLAG_STRIDE = 16  # int64 counters 128 bytes apart: no two threads' counters share a cache line


def _flag_pointer(context, builder, signature, args):
    flags_type, index_type = signature.args[0], signature.args[1]
    flags = context.make_array(flags_type)(context, builder, args[0])
    index = context.cast(builder, args[1], index_type, types.intp)
    return cgutils.get_item_pointer(context, builder, flags_type, flags, [index])


@intrinsic
def _load_acquire(typingctx, flags, index):
    """flags[index], an int64 another thread stores with ``_store_release``."""

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_flag_pointer(context, builder, signature, args), "acquire", 8)

    return types.int64(flags, index), codegen


@intrinsic
def _store_release(typingctx, flags, index, value):
    """flags[index] = value, after (as other threads see it) every write this thread made."""

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, _flag_pointer(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()

    return types.void(flags, index, value), codegen


@inner_jit
def _publish(progress, rank, step):
    _store_release(progress, rank * FLAG_STRIDE, step)


@inner_jit
def _wait_for_team(progress, step):
    """Spin until every thread has published ``step``; the team never outnumbers the cores."""
    for t in range(progress.shape[0] // FLAG_STRIDE):
        while _load_acquire(progress, t * FLAG_STRIDE) < step:
            pass


@intrinsic
def _typed(typingctx, like, value):
    """``value`` as the element type of the array ``like``, so float32 arithmetic stays float32
    (Numba widens ``float32 op <Python float>`` to float64). An intrinsic, because the obvious
    ``_typed(like, 1.0)`` costs about 0.3 s of compiling per process and dtype."""

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], signature.return_type)

    return like.dtype(like, types.unliteral(value)), codegen


@intrinsic
def _tiny(typingctx, like):
    """The smallest positive normal number of ``like``'s element type (np.finfo(...).tiny)."""
    tiny = float(np.finfo(np.dtype(str(like.dtype))).tiny)

    def codegen(context, builder, signature, args):
        return context.get_constant(signature.return_type, tiny)

    return like.dtype(like), codegen


@intrinsic
def _is_float32(typingctx, like):
    """Whether ``like`` holds float32, as a constant the compiler folds (a dtype switch)."""
    is_float32 = like.dtype == types.float32

    def codegen(context, builder, signature, args):
        return context.get_constant(types.boolean, is_float32)

    return types.boolean(like), codegen


# exp for float32 in plain arithmetic, so that LLVM vectorises it (Numba has no vector exp
# without Intel's SVML; a libm call per element is 50x slower): exp(x) = 2^k exp(r) with
# k = round(x / ln 2), r = x - k ln 2 in two parts (Cody and Waite; k * LN2_HI is exact), exp(r)
# by its Taylor series to r^7 (|r| <= ln2 / 2: truncation error below 1e-8), and 2^k added to
# the exponent bits. Outside [-86, 88] it squares exp(x / 2), which also gives inf, subnormals
# and 0 where libm does. Against float64 exp: within 0.62 eps (relative) on [-86, 88], 1.4 eps
# outside (tests/test_numba_exp.py).
LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125
LN2_LO = 1.4286068203094172e-06


@jit(fastmath=FAST - {"reassoc"})  # see LN2_LO
def _exp_row(row):
    """row <- exp(row) in place."""
    if not _is_float32(row):
        for j in range(row.shape[0]):
            row[j] = np.exp(row[j])
        return
    f = np.float32
    bits = row.view(np.int32)
    for j in range(row.shape[0]):
        x = row[j]
        half = x > f(88.0) or x < f(-86.0)
        y = min(max(x * f(0.5) if half else x, f(-86.0)), f(88.0))
        k = np.floor(y * f(LOG2E) + f(0.5))
        r = (y - k * f(LN2_HI)) - k * f(LN2_LO)
        p = r * (f(1 / 120) + r * (f(1 / 720) + r * f(1 / 5040)))
        p = f(1.0) + r * (f(1.0) + r * (f(1 / 2) + r * (f(1 / 6) + r * (f(1 / 24) + p))))
        row[j] = p
        bits[j] += np.int32(k) << 23
        e = row[j] * row[j] if half else row[j]
        row[j] = x if x != x else e  # NaN stays NaN


# -- elementwise building blocks (one row at a time, so rows stay in L1) -------------------------
@inner_jit
def _bias_act_row(row, b, act):
    """row <- f(row + b) in place."""
    one = _typed(row, 1.0)
    zero = one - one
    n = row.shape[0]
    if act == SIGMOID:
        for j in range(n):
            row[j] = -(row[j] + b[j])
        _exp_row(row)
        for j in range(n):
            row[j] = one / (one + row[j])
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
        for j in range(n):
            row[j] -= m
        _exp_row(row)
        s = zero
        for j in range(n):
            s += row[j]
        inv = one / s
        for j in range(n):
            row[j] *= inv
    else:
        for j in range(n):
            row[j] += b[j]


@inner_jit
def _act_grad_row(y, g, act):
    """g <- g * f'(z) in place, from the saved output y. In place and through one array only:
    with a separate output that may alias g, LLVM's overlap check fails at run time and the
    scalar fallback runs (ReLU's branch on random signs: 30x slower)."""
    one = _typed(y, 1.0)
    zero = one - one
    n = y.shape[0]
    if act == SIGMOID:
        for j in range(n):
            g[j] *= y[j] * (one - y[j])
    elif act == TANH:
        for j in range(n):
            g[j] *= one - y[j] * y[j]
    elif act == RELU:
        for j in range(n):
            g[j] *= one if y[j] > zero else zero  # a select, not a branch; NaN g stays NaN
    elif act == STEP:
        for j in range(n):
            g[j] = zero
    elif act == SOFTMAX:
        s = zero
        for j in range(n):
            s += g[j] * y[j]
        for j in range(n):
            g[j] = y[j] * (g[j] - s)


@jit
def _bias_act(z, b, act):
    """z <- f(z + b) for a C-ordered batch. Sigmoid runs as three passes over the whole batch
    rather than row by row: each pass pays its loop overhead once (512 x 10: 21 -> 7 us)."""
    if act != SIGMOID:
        for i in range(z.shape[0]):
            _bias_act_row(z[i], b, act)
        return
    one = _typed(z, 1.0)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[i, j] = -(z[i, j] + b[j])
    flat = z.reshape(z.size)
    _exp_row(flat)
    for k in range(flat.shape[0]):
        flat[k] = one / (one + flat[k])


@jit
def _act_grad(y, g, act):
    for i in range(y.shape[0]):
        _act_grad_row(y[i], g[i], act)


@inner_jit
def _loss_delta_row(y, t, kind, scale, inv_n, delta):
    """Per-sample loss (float64) and delta = dE/dy (squared error) or p - t (softmax CE), / n."""
    one = _typed(y, 1.0)
    loss = 0.0
    if kind == CROSS_ENTROPY:
        tiny = _tiny(y)
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
    for j in range(out.shape[0]):
        out[j] = 0
    for i in range(dz.shape[0]):
        for j in range(dz.shape[1]):
            out[j] += dz[i, j]


@jit
def _rescale(x, scale, offset, out):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * scale + offset


@jit
def _gather_inputs(X, order, in_scale, in_offset, out):
    """out[r] = X[order[r]] * in_scale + in_offset: a batch gathered from the uint8 images."""
    for r in range(order.shape[0]):
        _load_input(X, order[r], in_scale, in_offset, out[r])


@jit
def _loss_delta_gathered(Y, T, order, kind, scale, inv_n, act, D):
    """Sum of the losses of the rows of Y against T[order], and D = dE/dz of the output layer."""
    total = 0.0
    for r in range(Y.shape[0]):
        total += _loss_delta_row(Y[r], T[order[r]], kind, scale, inv_n, D[r])
        if kind != CROSS_ENTROPY:
            _act_grad_row(Y[r], D[r], act)
    return total


# -- whole epochs -------------------------------------------------------------------------------
@inner_jit
def _load_input(X, idx, in_scale, in_offset, x):
    for j in range(x.shape[0]):
        x[j] = X[idx, j] * in_scale + in_offset


@inner_jit
def _matvec(W, x, z):
    zero = _typed(z, 0.0)
    for i in range(W.shape[0]):
        acc = zero
        for j in range(W.shape[1]):
            acc += W[i, j] * x[j]
        z[i] = acc


@inner_jit
def _update_bias(b, i, di, lr, momentum, vb):
    if vb.shape[0]:
        vb[i] = momentum * vb[i] + di
        b[i] -= lr * vb[i]
    else:
        b[i] -= lr * di


@inner_jit
def _backward_update(W, b, d, a_in, g, train_w, train_b, lr, momentum, vW, vb):
    """Update a layer from its delta d, and g = W^T d (old W) for the layer below; one pass."""
    zero = _typed(W, 0.0)
    for j in range(g.shape[0]):
        g[j] = zero
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


@inner_jit
def _first_layer_update_and_next_forward(
    W, b, act, d, x, x_next, h_next, r0, r1, train_w, train_b, lr, momentum, vW, vb
):
    """Rows r0..r1 of the first layer: update them with (d, x) and, in the same pass over W,
    h_next[r0:r1] = f(W_new x_next + b_new) for the next sample.

    A per-sample step is bound by streaming the first layer's weights through the cache; this
    reads and writes each weight once per sample instead of twice. With train_w and train_b
    False it is the plain forward pass of those rows.
    """
    zero = _typed(W, 0.0)
    i = r0
    # Plain SGD four rows at a time: each load of x[j] and x_next[j] serves four weights. The
    # pass is bound by loads, not arithmetic: one row at a time did 6.5 weights/ns on one Zen 4
    # core, two 9.8, four 12.3 (200 x 784); a 784-200-10 step on two cores 13.7 -> 9.3 us.
    if train_w and momentum == zero:
        while i + 3 < r1:
            w0, w1, w2, w3 = W[i], W[i + 1], W[i + 2], W[i + 3]
            s0, s1, s2, s3 = lr * d[i], lr * d[i + 1], lr * d[i + 2], lr * d[i + 3]
            acc0 = acc1 = acc2 = acc3 = zero
            for j in range(W.shape[1]):
                xj, xnj = x[j], x_next[j]
                a0 = w0[j] - s0 * xj
                a1 = w1[j] - s1 * xj
                a2 = w2[j] - s2 * xj
                a3 = w3[j] - s3 * xj
                w0[j] = a0
                w1[j] = a1
                w2[j] = a2
                w3[j] = a3
                acc0 += a0 * xnj
                acc1 += a1 * xnj
                acc2 += a2 * xnj
                acc3 += a3 * xnj
            h_next[i], h_next[i + 1], h_next[i + 2], h_next[i + 3] = acc0, acc1, acc2, acc3
            if train_b:
                for r in range(i, i + 4):
                    _update_bias(b, r, d[r], lr, momentum, vb)
            i += 4
    for row in range(i, r1):  # the rest, and every row with momentum or frozen weights
        i = row
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
        h_next[i] = acc
        if train_b:
            _update_bias(b, i, di, lr, momentum, vb)
    _bias_act_row(h_next[r0:r1], b[r0:r1], act)


@jit
def _epoch_per_sample(
    rank,
    progress,
    bounds,
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
    H,
):
    """Per-sample SGD over X[order] as thread ``rank`` of a team; the sum of the per-sample losses.

    The thread owns rows r0..r1 = bounds[0, rank]..bounds[0, rank + 1] of the first layer (W, b,
    their velocities) and writes those rows of H[s % 2], the first layer's output for sample s.
    Every later layer is the thread's own copy (rank 0's are the model's arrays), updated
    identically by every thread from the same inputs, so the team meets once per sample.
    A[0] is the input (x_spare takes the next sample's), A[l] the input of layer l, D[l] the
    delta of layer l. Frozen weights/biases have train_w/train_b False; bias-free layers carry a
    zero bias that is never trained. With momentum, vWs/vbs hold the velocities.
    """
    n_layers = len(Ws)
    last = n_layers - 1
    one = _typed(A[0], 1.0)
    n = order.shape[0]
    r0, r1 = bounds[0, rank], bounds[0, rank + 1]
    total = 0.0
    if n == 0:
        return total
    x, x_next = A[0], x_spare
    _load_input(X, order[0], in_scale, in_offset, x)
    # the first sample's forward pass is the update pass with nothing to update; literal
    # constants as arguments would compile a second copy of a helper, hence the runtime values
    nothing, first = n < 0, np.int64(1)
    _first_layer_update_and_next_forward(
        Ws[0],
        bs[0],
        acts[0],
        D[0],
        x,
        x,
        H[0],
        r0,
        r1,
        nothing,
        nothing,
        lr,
        momentum,
        vWs[0],
        vbs[0],
    )
    _publish(progress, rank, first)
    for s in range(n):
        _wait_for_team(progress, s + 1)
        h, a = H[s % 2], A[1]
        for j in range(a.shape[0]):  # a loop: Numba compiles a slice assignment for seconds
            a[j] = h[j]
        for layer in range(1, n_layers):
            _matvec(Ws[layer], A[layer], A[layer + 1])
            _bias_act_row(A[layer + 1], bs[layer], acts[layer])
        total += _loss_delta_row(A[n_layers], T[order[s]], kind, scale, one, D[last])
        if kind != CROSS_ENTROPY:
            _act_grad_row(A[n_layers], D[last], acts[last])
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
            _act_grad_row(A[layer], g, acts[layer - 1])
        # the last sample's "next" input is its own: a harmless extra forward
        _load_input(X, order[min(s + 1, n - 1)], in_scale, in_offset, x_next)
        _first_layer_update_and_next_forward(
            Ws[0],
            bs[0],
            acts[0],
            D[0],
            x,
            x_next,
            H[(s + 1) % 2],
            r0,
            r1,
            train_w[0],
            train_b[0],
            lr,
            momentum,
            vWs[0],
            vbs[0],
        )
        _publish(progress, rank, s + 2)
        x, x_next = x_next, x
    return total


@inner_jit
def _dot_block(W, A, Z, i0, r0):
    """Z[r0:r0+4, i0:i0+4] = A[r0:r0+4] @ W[i0:i0+4].T: 16 sums in registers, so every load
    of a weight or an input feeds 4 multiply-adds."""
    zero = _typed(Z, 0.0)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
    for j in range(W.shape[1]):
        w0, w1, w2, w3 = W[i0, j], W[i0 + 1, j], W[i0 + 2, j], W[i0 + 3, j]
        x0, x1, x2, x3 = A[r0, j], A[r0 + 1, j], A[r0 + 2, j], A[r0 + 3, j]
        a00 += w0 * x0
        a01 += w0 * x1
        a02 += w0 * x2
        a03 += w0 * x3
        a10 += w1 * x0
        a11 += w1 * x1
        a12 += w1 * x2
        a13 += w1 * x3
        a20 += w2 * x0
        a21 += w2 * x1
        a22 += w2 * x2
        a23 += w2 * x3
        a30 += w3 * x0
        a31 += w3 * x1
        a32 += w3 * x2
        a33 += w3 * x3
    Z[r0, i0], Z[r0 + 1, i0], Z[r0 + 2, i0], Z[r0 + 3, i0] = a00, a01, a02, a03
    Z[r0, i0 + 1], Z[r0 + 1, i0 + 1], Z[r0 + 2, i0 + 1], Z[r0 + 3, i0 + 1] = a10, a11, a12, a13
    Z[r0, i0 + 2], Z[r0 + 1, i0 + 2], Z[r0 + 2, i0 + 2], Z[r0 + 3, i0 + 2] = a20, a21, a22, a23
    Z[r0, i0 + 3], Z[r0 + 1, i0 + 3], Z[r0 + 2, i0 + 3], Z[r0 + 3, i0 + 3] = a30, a31, a32, a33


@inner_jit
def _forward_block(W, A, Z, blk):
    """Z[:, 4 blk : 4 blk + 4] = A @ W[4 blk : 4 blk + 4].T: 4 x 4 register tiles, plain dot
    products for the ragged edges."""
    zero = _typed(Z, 0.0)
    n_out, n_in = W.shape
    n_rows = Z.shape[0]
    i0 = blk * 4
    i1 = min(i0 + 4, n_out)
    tiled = n_rows // 4 * 4 if i1 - i0 == 4 else 0
    for r in range(0, tiled, 4):
        _dot_block(W, A, Z, i0, r)
    for rr in range(tiled, n_rows):
        for i in range(i0, i1):
            acc = zero
            for j in range(n_in):
                acc += W[i, j] * A[rr, j]
            Z[rr, i] = acc


@inner_jit
def _add_outer_rows(target, D, A, i0, i1, coef):
    """target[i] += coef * sum_r D[r, i] * A[r] for rows i0 <= i < i1 (at most 4), four
    samples at a time so each stored weight carries 4 multiply-adds."""
    n_in = target.shape[1]
    n_rows = D.shape[0]
    r = 0
    if i1 - i0 == 4:
        while r + 4 <= n_rows:
            s00, s01, s02, s03 = (
                coef * D[r, i0],
                coef * D[r + 1, i0],
                coef * D[r + 2, i0],
                coef * D[r + 3, i0],
            )
            s10, s11, s12, s13 = (
                coef * D[r, i0 + 1],
                coef * D[r + 1, i0 + 1],
                coef * D[r + 2, i0 + 1],
                coef * D[r + 3, i0 + 1],
            )
            s20, s21, s22, s23 = (
                coef * D[r, i0 + 2],
                coef * D[r + 1, i0 + 2],
                coef * D[r + 2, i0 + 2],
                coef * D[r + 3, i0 + 2],
            )
            s30, s31, s32, s33 = (
                coef * D[r, i0 + 3],
                coef * D[r + 1, i0 + 3],
                coef * D[r + 2, i0 + 3],
                coef * D[r + 3, i0 + 3],
            )
            for j in range(n_in):
                x0, x1, x2, x3 = A[r, j], A[r + 1, j], A[r + 2, j], A[r + 3, j]
                target[i0, j] += s00 * x0 + s01 * x1 + s02 * x2 + s03 * x3
                target[i0 + 1, j] += s10 * x0 + s11 * x1 + s12 * x2 + s13 * x3
                target[i0 + 2, j] += s20 * x0 + s21 * x1 + s22 * x2 + s23 * x3
                target[i0 + 3, j] += s30 * x0 + s31 * x1 + s32 * x2 + s33 * x3
            r += 4
    for rr in range(r, n_rows):
        for i in range(i0, i1):
            si = coef * D[rr, i]
            for j in range(n_in):
                target[i, j] += si * A[rr, j]


@inner_jit
def _update_block(W, b, D, A, blk, train_w, train_b, lr, momentum, vW, vb):
    """Rows 4 blk .. 4 blk + 3: W -= lr D^T A, b -= lr sum_r D[r] (with momentum: vW <- m vW +
    D^T A; W -= lr vW), added straight into the weights: no gradient array."""
    one = _typed(W, 1.0)
    zero = one - one
    n_out, n_in = W.shape
    i0 = blk * 4
    i1 = min(i0 + 4, n_out)
    if train_w and momentum != zero:
        for i in range(i0, i1):
            for j in range(n_in):
                vW[i, j] *= momentum
        _add_outer_rows(vW, D, A, i0, i1, one)
        for i in range(i0, i1):
            for j in range(n_in):
                W[i, j] -= lr * vW[i, j]
    elif train_w:
        _add_outer_rows(W, D, A, i0, i1, -lr)
    if train_b:
        for i in range(i0, i1):
            g = zero
            for r in range(D.shape[0]):
                g += D[r, i]
            _update_bias(b, i, g, lr, momentum, vb)


@inner_jit
def _batch_scale(like, nb, mean):
    """1/nb ("mean") or 1, in the dtype of ``like``, so float32 stays float32."""
    one = _typed(like, 1.0)
    return one / _typed(like, nb) if mean else one


@inner_jit
def _delta_below(D, W, Y, act, G, c0, c1):
    """G[:, c0:c1] = (D W)[:, c0:c1] * f'(Y[:, c0:c1]): columns c0..c1 of the delta of the layer
    below, from the weights before the update (a softmax below needs c0:c1 to be all columns)."""
    zero = _typed(G, 0.0)
    for r in range(D.shape[0]):
        g = G[r, c0:c1]
        for j in range(g.shape[0]):
            g[j] = zero
        for i in range(W.shape[0]):
            di, w = D[r, i], W[i, c0:c1]
            for j in range(g.shape[0]):  # not W[i, c0 + j]: that loop ran 6x slower
                g[j] += di * w[j]
        _act_grad_row(Y[r, c0:c1], g, act)


@inner_jit
def _meet(progress, rank, step):
    """Publish ``step`` and wait for the team to reach it; the next step's number."""
    _publish(progress, rank, step)
    _wait_for_team(progress, step)
    return step + 1


@jit
def _epoch_small_batch(
    rank,
    progress,
    bounds,
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
    mean,
    lr,
    momentum,
    vWs,
    vbs,
    A,
    D,
    batch,
):
    """Mini-batch SGD over X[order] in steps of ``batch``, as thread ``rank`` of a team; the sum
    of the per-sample losses of the samples this thread scored.

    Thread ``rank`` owns units bounds[l, rank]..bounds[l, rank + 1] of layer l: it computes
    those columns of A[l + 1] (the layer's output) and of D[l] (its delta), and updates those
    rows of W, b and their velocities. The delta for the layer below, D[l-1] = D[l] W (old W),
    is formed before any thread changes W. Inputs, losses and softmax rows are split by sample.
    The team meets between the steps that read what another thread wrote.
    """
    n_layers = len(Ws)
    last = n_layers - 1
    team = bounds.shape[1] - 1
    n = order.shape[0]
    total = 0.0
    step = np.int64(1)  # see the literal constants in _epoch_per_sample
    for start in range(0, n, batch):
        nb = min(batch, n - start)
        inv_n = _batch_scale(A[0], nb, mean)
        r0, r1 = nb * rank // team, nb * (rank + 1) // team  # this thread's samples
        mine = order[start + r0 : start + r1]  # this thread's samples of the batch
        _gather_inputs(X, mine, in_scale, in_offset, A[0][r0:r1])
        step = _meet(progress, rank, step)
        for layer in range(n_layers):
            W, Z, A_in, b, act = Ws[layer], A[layer + 1][:nb], A[layer][:nb], bs[layer], acts[layer]
            lo, hi = bounds[layer, rank], bounds[layer, rank + 1]
            for blk in range(lo // 4, (hi + 3) // 4):
                _forward_block(W, A_in, Z, blk)
            if act == SOFTMAX and team > 1:  # each row's softmax needs all its columns
                step = _meet(progress, rank, step)
                for r in range(r0, r1):
                    _bias_act_row(Z[r], b, act)
            else:
                for r in range(nb):
                    _bias_act_row(Z[r, lo:hi], b[lo:hi], act)
            step = _meet(progress, rank, step)
        y, d = A[n_layers][r0:r1], D[last][r0:r1]
        total += _loss_delta_gathered(y, T, mine, kind, scale, inv_n, acts[last], d)
        step = _meet(progress, rank, step)
        for layer in range(last, -1, -1):
            W, Dl, b, vW, vb = Ws[layer], D[layer][:nb], bs[layer], vWs[layer], vbs[layer]
            if layer > 0:
                c0, c1 = bounds[layer - 1, rank], bounds[layer - 1, rank + 1]
                _delta_below(Dl, W, A[layer][:nb], acts[layer - 1], D[layer - 1][:nb], c0, c1)
                step = _meet(progress, rank, step)  # all of D[l-1] formed, W no longer read
            lo, hi = bounds[layer, rank], bounds[layer, rank + 1]
            for blk in range(lo // 4, (hi + 3) // 4):
                _update_block(
                    W,
                    b,
                    Dl,
                    A[layer][:nb],
                    blk,
                    train_w[layer],
                    train_b[layer],
                    lr,
                    momentum,
                    vW,
                    vb,
                )
        step = _meet(progress, rank, step)  # A[0] is read by the updates until here
    return total


@jit
def _cache_probe():
    """Nothing: called once so that numba_cache can check that Numba consults its cache."""
    return 0


_TEAM_POOL: ThreadPoolExecutor | None = None


def _forget_team_pool() -> None:
    """In a forked child the pool's threads are gone, and a team waiting for them would spin
    forever: the child starts a pool of its own."""
    global _TEAM_POOL
    _TEAM_POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_team_pool)


def _argument_kind(value: Any) -> Any:
    """What of an argument Numba's dispatch depends on: an array's dtype and dimensions, a
    tuple's length and first element, a scalar's type."""
    if isinstance(value, np.ndarray):
        return value.dtype, value.ndim
    if isinstance(value, tuple):
        return len(value), _argument_kind(value[0]) if value else None
    return type(value)


def _split_rows(rows: int, parts: int) -> list[int]:
    """Bounds of ``parts`` near-equal row ranges, cut at multiples of 16 rows (no two threads
    write into one cache line of a float32 row), or of 4 (the register tiles) for small layers."""
    align = 16 if rows >= 32 * parts else 4
    cuts = [min(rows, round(rows * k / parts / align) * align) for k in range(1, parts)]
    return [0, *cuts, rows]


def _gemm_into(gemm, alpha, a, b, c, trans_a=0, trans_b=0, beta=0.0) -> None:
    """c <- alpha op(a) op(b) + beta c with SciPy's BLAS gemm, in place. The arrays are the
    Fortran-ordered views (``.T``) of C-ordered ones, so nothing is copied; gemm would silently
    write into a copy if one were needed, so that is an error here."""
    out = gemm(alpha, a, b, beta=beta, c=c, trans_a=trans_a, trans_b=trans_b, overwrite_c=1)
    if out is not c:
        raise RuntimeError("gemm did not write in place (an array is not Fortran-ordered)")


class NumbaBackend(Backend):
    """NumPy arrays, Numba-compiled kernels."""

    name = "numba"
    xp = np
    # Taken from the reference on purpose: the same arrays, and GEMMs that OpenBLAS runs faster
    # than compiled loops at every shape the networks use (float32: 57 vs 32 us at 1x784x1024).
    asarray = NumpyBackend.asarray
    to_numpy = NumpyBackend.to_numpy
    matmul = NumpyBackend.matmul
    weight_grad = NumpyBackend.weight_grad
    # The compiled mini-batch epoch: for batches up to 32 while every weight matrix has at most
    # 512 KiB; beyond that BLAS's blocking wins. Measured, s/epoch, compiled vs _blas_epoch,
    # medians of 3 alternating runs, two sessions of runs: 784-128-10 sigmoid batch 16 0.39 vs
    # 0.47, batch 32 0.34 vs 0.28 and 0.34 vs 0.37, batch 64 0.31 vs 0.24; 784-256-128-10 ReLU
    # (784 x 256: 784 KiB) batch 16 0.83 vs 0.81, batch 32 0.70 vs 0.61 and 0.77 vs 0.67;
    # 784-1024-1024-10 batch 32 23.2 vs 5.5.
    FUSED_MAX_BATCH = 32
    FUSED_MAX_WEIGHT_BYTES = 512 << 10

    def __init__(self) -> None:
        numba_cache.check_active(_cache_probe)
        self._local = threading.local()  # train_epoch's work arrays, per calling thread
        self._compiled: set = set()  # kernels and argument kinds run by a team, see _run_team

    def info(self) -> dict[str, str]:
        info = NumpyBackend.info(self)
        info.update(
            backend=self.name,
            numba=numba.__version__,
            numba_threads=str(numba.get_num_threads()),
            kernel_cache=CACHE,
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
        out = np.array(dy, order="C")  # a copy, multiplied in place
        _act_grad(y, out, ACT[activation])
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
    def fuses(self, spec: EpochSpec, batch_size: int) -> bool:
        return True  # every batch size has a path in train_epoch

    def _compiled_loop(self, spec: EpochSpec, batch_size: int) -> bool:
        """Whether this batch size runs in one compiled call (else: the BLAS epoch)."""
        if batch_size == 1:
            return True
        largest = max(layer.W.nbytes for layer in spec.layers)
        return batch_size <= self.FUSED_MAX_BATCH and largest <= self.FUSED_MAX_WEIGHT_BYTES

    def train_epoch(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int) -> float:
        """SGD on X[order] in steps of batch_size; the sum of the per-sample losses. Per-sample
        steps and small batches run in one compiled call each, larger ones in _blas_epoch."""
        if not self._compiled_loop(spec, batch_size):
            return self._blas_epoch(spec, X, T, order, batch_size)
        dtype = spec.layers[0].W.dtype
        dt = dtype.type
        layers = spec.layers
        no_velocity_W, no_velocity_b = np.zeros((0, 0), dtype), np.zeros(0, dtype)
        args = (
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
        )
        velocities = (
            tuple([layer.vW if layer.vW is not None else no_velocity_W for layer in layers]),
            tuple([layer.vb if layer.vb is not None else no_velocity_b for layer in layers]),
        )
        lr, momentum = dt(spec.lr), dt(spec.momentum)
        size = self.team_size(spec, batch_size)
        progress = np.zeros(size * FLAG_STRIDE, np.int64)  # see _meet
        if batch_size == 1:
            return self._per_sample_epoch(spec, size, progress, args, lr, momentum, velocities)
        bounds = np.array([_split_rows(layer.W.shape[0], size) for layer in layers], np.int64)
        A, D, _ = self._work_arrays(dtype, layers, batch_size)
        settings = (spec.reduction == "mean", lr, momentum, *velocities, A, D, batch_size)
        per_rank = [(rank, progress, bounds, *args, *settings) for rank in range(size)]
        return sum(self._run_team(_epoch_small_batch, per_rank))

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

    def _run_team(self, kernel, per_rank: list[tuple]) -> list[float]:
        """kernel(*per_rank[t]) for every rank t at once, rank 0 on this thread and the others on
        a pool kept for the process; their results. Every kernel takes (rank, progress, bounds,
        X, order, ...)."""
        global _TEAM_POOL
        if len(per_rank) == 1:
            return [kernel(*per_rank[0])]
        key = (kernel, *map(_argument_kind, per_rank[0]))  # what Numba compiles a version for
        if key not in self._compiled:
            # compile on this thread first, with no samples: a thread of the team that failed
            # to compile would leave the others waiting for it forever
            rank, progress, bounds, X, order, *rest = per_rank[0]
            kernel(rank, progress, bounds, X, order[:0], *rest)
            self._compiled.add(key)
        if _TEAM_POOL is None or _TEAM_POOL._max_workers < len(per_rank) - 1:
            _TEAM_POOL = ThreadPoolExecutor(len(per_rank) - 1, thread_name_prefix="tinynet")
        others = [_TEAM_POOL.submit(kernel, *args) for args in per_rank[1:]]
        results = [kernel(*per_rank[0])]
        return results + [future.result() for future in others]

    def _per_sample_epoch(self, spec, size, progress, args, lr, momentum, velocities) -> float:
        layers = spec.layers
        dtype = layers[0].W.dtype
        bounds = np.array([_split_rows(layers[0].W.shape[0], size)], np.int64)
        H = np.zeros((2, layers[0].W.shape[0]), dtype)
        *data, Ws, bs, acts, train_w, train_b, kind, scale = args  # data: X, order, T, scaling
        vWs, vbs = velocities
        settings = (acts, train_w, train_b, kind, scale, lr, momentum)

        def own(arrays):  # rank > 0: the first layer shared, the later layers copied
            return (arrays[0], *[a.copy() for a in arrays[1:]])

        per_rank = []
        for rank in range(size):
            A, D, spare = self._work_arrays(dtype, layers, 1, rank)
            W, b, vW, vb = (Ws, bs, vWs, vbs) if rank == 0 else map(own, (Ws, bs, vWs, vbs))
            work = (tuple([a[0] for a in A]), tuple([d[0] for d in D]), spare, H)
            per_rank.append((rank, progress, bounds, *data, W, b, *settings, vW, vb, *work))
        # every thread scores every sample: rank 0's sum
        return self._run_team(_epoch_per_sample, per_rank)[0]

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

    def _blas_epoch(self, spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int) -> float:
        """Mini-batch SGD with the GEMMs on BLAS and everything else in compiled passes: inputs
        gathered and scaled from uint8, bias + activation in place, loss and delta in one pass,
        the weight gradient added straight into W by gemm (beta = 1), no array allocated per
        batch. SciPy's gemm, because NumPy's matmul cannot accumulate into its output; all
        GEMMs go through it so that only one BLAS thread pool is ever busy."""
        from scipy.linalg.blas import get_blas_funcs

        layers = spec.layers
        dtype = layers[0].W.dtype
        dt = dtype.type
        gemm = get_blas_funcs("gemm", dtype=dtype)
        A, D, _ = self._work_arrays(dtype, layers, batch_size)
        order = np.ascontiguousarray(order, np.int64)
        T = np.ascontiguousarray(T, dtype)
        in_scale, in_offset, lr, momentum = map(
            dt, (spec.in_scale, spec.in_offset, spec.lr, spec.momentum)
        )
        kind = CROSS_ENTROPY if spec.loss == "cross_entropy" else SQUARED_ERROR
        scale = dt(spec.loss_scale)
        acts = [ACT[layer.activation] for layer in layers]
        biases = [
            layer.b if layer.b is not None else np.zeros(layer.W.shape[0], dtype)
            for layer in layers
        ]
        grad_b = [np.empty(layer.W.shape[0], dtype) for layer in layers]
        no_velocity = np.zeros(0, dtype)
        total = 0.0
        for start in range(0, order.shape[0], batch_size):
            idx = order[start : start + batch_size]
            nb = idx.shape[0]
            inv_n = dt(1 / nb) if spec.reduction == "mean" else dt(1)
            _gather_inputs(X, idx, in_scale, in_offset, A[0][:nb])
            for layer, a_in, a_out, b, act in zip(layers, A[:-1], A[1:], biases, acts, strict=True):
                _gemm_into(gemm, 1.0, layer.W.T, a_in[:nb].T, a_out[:nb].T, trans_a=1)
                _bias_act(a_out[:nb], b, act)
            total += _loss_delta_gathered(
                A[-1][:nb], T, idx, kind, scale, inv_n, acts[-1], D[-1][:nb]
            )
            for i in range(len(layers) - 1, -1, -1):
                layer, d, a_in = layers[i], D[i][:nb], A[i][:nb]
                if i > 0:  # the delta below, from W before its update
                    below = D[i - 1][:nb]
                    _gemm_into(gemm, 1.0, layer.W.T, d.T, below.T)
                    _act_grad(a_in, below, acts[i - 1])
                if layer.train_W and layer.vW is not None:  # v <- m v + g; W <- W - lr v
                    _gemm_into(gemm, 1.0, a_in.T, d.T, layer.vW.T, trans_b=1, beta=momentum)
                    _sgd(layer.W.reshape(-1), layer.vW.reshape(-1), lr, no_velocity, momentum)
                elif layer.train_W:  # W <- W - lr d^T a, in the GEMM
                    _gemm_into(gemm, -lr, a_in.T, d.T, layer.W.T, trans_b=1, beta=1.0)
                if layer.train_b:
                    _column_sums(d, grad_b[i])
                    vb = layer.vb if layer.vb is not None else no_velocity
                    _sgd(layer.b, grad_b[i], lr, vb, momentum)
        return total
