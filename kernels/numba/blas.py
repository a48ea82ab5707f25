"""The BLAS epoch (larger batches): one compiled call per epoch that calls SciPy's BLAS gemm
for the products and compiled passes for everything else."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic

from tinynet.kernels.numba.collective import allreduce_sum
from tinynet.kernels.numba.compile import inner_jit, jit, typed
from tinynet.kernels.numba.elementwise import (
    act_grad,
    adam,
    batch_scale,
    bias_act,
    column_sums,
    gather_inputs,
    loss_delta_gathered,
    rule_at,
    sgd,
)


def gemm_address(dtype) -> int:
    """The address of SciPy's Fortran-convention sgemm or dgemm (scipy.linalg.cython_blas): the
    same OpenBLAS, and so the same thread pool, that scipy.linalg.blas and threadpoolctl see.
    Passed to the compiled epoch as an integer, so the kernel cache never holds an address."""
    name = {"float32": "sgemm", "float64": "dgemm"}[str(dtype)]
    return get_cython_function_address("scipy.linalg.cython_blas", name)


@intrinsic
def _call_gemm(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The Fortran gemm at ``address``: c <- alpha op(a) op(b) + beta c, column-major, with
    every argument passed by reference (trans_*: the character code, 'N' or 'T')."""
    signature = types.void(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        element = signature.args[7].dtype  # a's
        references = []  # Fortran: every argument by reference, arrays as their data
        for value, value_type in zip(args[1:], signature.args[1:], strict=True):
            if isinstance(value_type, types.Array):
                references.append(context.make_array(value_type)(context, builder, value).data)
                continue
            if isinstance(value_type, types.Float):
                value = context.cast(builder, value, value_type, element)
            else:  # the two characters, then the sizes and leading dimensions
                value = context.cast(builder, value, value_type, types.int32)
                if len(references) < 2:
                    value = builder.trunc(value, ir.IntType(8))
            references.append(cgutils.alloca_once_value(builder, value))
        fn_type = ir.FunctionType(ir.VoidType(), [ref.type for ref in references])
        builder.call(builder.inttoptr(args[0], fn_type.as_pointer()), references)
        return context.get_dummy_value()

    return signature, codegen


@inner_jit
def gemm(address, trans_a, trans_b, alpha, A, B, beta, C):
    """C <- alpha op(A) op(B) + beta C for C-ordered 2-D arrays or leading rows of them
    (op: transposed when trans_*). Row-major C is column-major C^T = op(B)^T op(A)^T, so the
    Fortran call takes B first; each leading dimension is a row's length (not strides[0]:
    NumPy may give a one-row array any stride there)."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    _call_gemm(
        address,
        84 if trans_b else 78,  # 'T', 'N'
        84 if trans_a else 78,
        n,
        m,
        k,
        alpha,
        B,
        max(1, B.shape[1]),
        A,
        max(1, A.shape[1]),
        beta,
        C,
        max(1, C.shape[1]),
    )


# The forward product Z = A W^T of up to this many rows (float32, float64) runs as Z^T = W A^T
# into scratch memory, then a transposing copy: OpenBLAS computes that orientation faster for
# such batches (it packs W untransposed), with the same sums bit for bit. For more rows the
# whole epoch gained nothing measurable (float32) or the product itself got slower (float64):
# benchmarks/results/forward-orientation.md.
TRANSPOSED_FORWARD_ROWS = (64, 32)


@inner_jit
def _transpose_into(Zt, Z):
    """Z <- Zt^T (Zt: (n, rows), Z: (rows, n)), row by row of Z."""
    for i in range(Z.shape[0]):
        for j in range(Z.shape[1]):
            Z[i, j] = Zt[j, i]


@jit
def product_into(address, trans_a, trans_b, A, B, C):
    """C = op(A) op(B) on the BLAS at ``address``, for Python callers (gemm's arrays)."""
    one = typed(C, 1.0)
    gemm(address, trans_a, trans_b, one, A, B, one - one, C)


def _row_major(x: np.ndarray, trans: bool, dtype) -> tuple[np.ndarray, bool]:
    """x as a C-ordered array of ``dtype`` and whether gemm transposes it: a transposed view of
    a C-ordered array is its C-ordered base, transposed by gemm, not copied."""
    if x.flags.f_contiguous and not x.flags.c_contiguous and x.dtype == dtype:
        return x.T, not trans
    return np.ascontiguousarray(x, dtype), trans


def product(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False):
    """op(a) op(b) for 2-D arrays, on the BLAS the training epochs use (SciPy's): tinynet's
    products all run in one BLAS thread pool, since an OpenBLAS pool's threads spin for a while
    after each call and slow another pool's (NumPy's) threads by half. Other dtypes and shapes
    go to np.dot, with NumPy's type promotion, and so do matrix-vector products (one row or
    column out), for which SciPy's gemm took 5 times as long as NumPy's gemv (design.md)."""
    dtype = np.result_type(a, b)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    if a.ndim != 2 or b.ndim != 2 or dtype not in (np.float32, np.float64):
        return np.dot(op_a, op_b)
    if op_a.shape[1] != op_b.shape[0] or 1 in (op_a.shape[0], op_b.shape[1]):
        return np.dot(op_a, op_b)  # NumPy's error, or its gemv
    out = np.empty((op_a.shape[0], op_b.shape[1]), dtype)
    a, trans_a = _row_major(a, trans_a, dtype)
    b, trans_b = _row_major(b, trans_b, dtype)
    product_into(gemm_address(dtype), trans_a, trans_b, a, b, out)
    return out


@inner_jit
def _forward_and_loss(address, data, net, rule, A, D, rows, batch_rows):
    """The forward pass of X[rows] (A[l + 1] = f(A[l] W^T + b)) and the output layer's delta,
    scaled for a batch of ``batch_rows`` rows (which may be more than these: a shard of it);
    the sum of these rows' losses."""
    X, T, in_scale, in_offset = data.X, data.T, data.in_scale, data.in_offset
    Ws, bs, acts, alphas = net.Ws, net.bs, net.acts, net.alphas
    last = len(Ws) - 1
    one = typed(A[0], 1.0)
    nb = rows.shape[0]
    transposed_rows = TRANSPOSED_FORWARD_ROWS[0 if A[0].itemsize == 4 else 1]
    gather_inputs(X, rows, in_scale, in_offset, A[0][:nb])
    for layer in range(last + 1):
        Z = A[layer + 1][:nb]
        if nb <= transposed_rows:  # Z^T = W A^T, then Z: see TRANSPOSED_FORWARD_ROWS
            Zt = D[layer][:nb].reshape((Z.shape[1], nb))  # scratch: the deltas come later
            gemm(address, False, True, one, Ws[layer], A[layer][:nb], one - one, Zt)
            _transpose_into(Zt, Z)
        else:
            gemm(address, False, True, one, A[layer][:nb], Ws[layer], one - one, Z)
        bias_act(Z, bs[layer], acts[layer], alphas[layer])
    inv_n = batch_scale(A[0], batch_rows, rule.mean)
    Y, d = A[last + 1][:nb], D[last][:nb]
    return loss_delta_gathered(
        Y, T, rows, rule.kind, rule.scale, inv_n, acts[last], alphas[last], d
    )


@inner_jit
def _delta_below(address, net, layer, d, a_in, below):
    """The delta of the layer below, d W * f'(its output), from W before its update."""
    one = typed(d, 1.0)
    gemm(address, False, False, one, d, net.Ws[layer], one - one, below)
    act_grad(a_in, below, net.acts[layer - 1], net.alphas[layer - 1])


@jit
def blas_epoch(address, data, net, rule, A, D, grads_W, grad_b, batch, other_rules):
    """Mini-batch SGD over X[order] in steps of ``batch``; the sum of the per-sample losses.

    The products run on BLAS (gemm at ``address``, see gemm_address), everything else in
    compiled passes over rows: inputs gathered and scaled from uint8, bias + activation in
    place, loss and delta in one pass. SGD's update: the part linear in the weight gradient
    d^T a goes into its GEMM, as elementwise.sgd_step explains: plain SGD adds -lr d^T a
    straight into W; momentum's GEMM forms v <- m v + d^T a in place, then a pass
    w <- w - lr v. Adam's: the GEMM writes d^T a into grads_W[l], then a pass of
    elementwise.adam_step. Nothing is allocated per batch (grad_b: the bias gradients), and no
    Python runs between batches. other_rules: None for plain or momentum SGD, so that only
    their code compiles; True for Adam and SGD with Nesterov or weight decay.
    """
    order = data.order
    Ws, bs, train_w, train_b, vWs, vbs, sWs, sbs = (
        net.Ws, net.bs, net.train_w, net.train_b, net.vWs, net.vbs, net.sWs, net.sbs
    )  # fmt: skip
    lr, momentum = rule.lr, rule.momentum
    last = len(Ws) - 1
    one = typed(A[0], 1.0)
    zero = one - one
    no_velocity = vbs[0][:0]
    total = 0.0
    for start in range(0, order.shape[0], batch):
        nb = min(batch, order.shape[0] - start)
        rows = order[start : start + nb]
        constants = rule_at(rule, rule.step + start // batch + 1, A[0]).constants  # Adam's, now
        total += _forward_and_loss(address, data, net, rule, A, D, rows, nb)
        for layer in range(last, -1, -1):
            W, d, a_in = Ws[layer], D[layer][:nb], A[layer][:nb]
            if layer > 0:
                _delta_below(address, net, layer, d, a_in, D[layer - 1][:nb])
            if other_rules is not None and rule.adam:  # g = d^T a into a buffer, then the rule
                if train_w[layer]:
                    G = grads_W[layer]
                    gemm(address, True, False, one, d, a_in, zero, G)
                    m, v = vWs[layer].reshape(-1), sWs[layer].reshape(-1)
                    adam(W.reshape(-1), G.reshape(-1), m, v, constants)
                if train_b[layer]:
                    column_sums(d, grad_b[layer])
                    adam(bs[layer], grad_b[layer], vbs[layer], sbs[layer], constants)
                continue
            if other_rules is not None and (rule.nesterov or rule.weight_decay != zero):
                nesterov, decay = rule.nesterov, rule.weight_decay
                if train_w[layer]:
                    G = grads_W[layer]
                    gemm(address, True, False, one, d, a_in, zero, G)
                    v = vWs[layer].reshape(-1)
                    sgd(W.reshape(-1), G.reshape(-1), lr, v, momentum, nesterov, decay)
                if train_b[layer]:
                    column_sums(d, grad_b[layer])
                    sgd(bs[layer], grad_b[layer], lr, vbs[layer], momentum, nesterov, decay)
                continue
            if train_w[layer] and momentum != zero:  # v <- m v + d^T a in the GEMM, then
                V = vWs[layer]  # w <- w - lr v: sgd_step with v as the gradient, no velocity
                gemm(address, True, False, one, d, a_in, momentum, V)
                sgd(W.reshape(-1), V.reshape(-1), lr, no_velocity, zero, False, zero)
            elif train_w[layer]:  # W <- W - lr d^T a, in the GEMM
                gemm(address, True, False, -lr, d, a_in, one, W)
            if train_b[layer]:
                column_sums(d, grad_b[layer])
                sgd(bs[layer], grad_b[layer], lr, vbs[layer], momentum, False, zero)
    return total


@jit
def blas_epoch_allreduce(address, data, net, rule, A, D, grads, sums, batch, shard, handles):
    """blas_epoch's steps as one rank of a data-parallel run: each global batch of ``batch``
    rows of X[order] is split into ``shard = (rank, ranks)`` contiguous parts; this rank takes
    its part forward and back, every gradient (scaled for the whole batch) goes into one flat
    buffer, one MPI allreduce (collective.allreduce_sum) sums the buffers of all ranks, and each
    rank applies the rule to the sums, so all ranks stay equal. grads and sums: (flat buffer,
    per-layer weight-gradient views of it, per-layer bias-gradient views). The sum of this
    rank's rows' losses. The MPI error code of a failed allreduce stops the epoch (RuntimeError).
    """
    order = data.order
    Ws, bs, train_w, train_b, vWs, vbs, sWs, sbs = (
        net.Ws, net.bs, net.train_w, net.train_b, net.vWs, net.vbs, net.sWs, net.sbs
    )  # fmt: skip
    sent, gW, gb = grads
    summed, sum_W, sum_b = sums
    rank, ranks = shard
    last = len(Ws) - 1
    one = typed(A[0], 1.0)
    total = 0.0
    for start in range(0, order.shape[0], batch):
        nb = min(batch, order.shape[0] - start)
        lo, hi = start + nb * rank // ranks, start + nb * (rank + 1) // ranks
        rows, m = order[lo:hi], hi - lo
        now = rule_at(rule, rule.step + start // batch + 1, A[0])
        total += _forward_and_loss(address, data, net, rule, A, D, rows, nb)
        for layer in range(last, -1, -1):
            d, a_in = D[layer][:m], A[layer][:m]
            if layer > 0:
                _delta_below(address, net, layer, d, a_in, D[layer - 1][:m])
            if train_w[layer]:
                gemm(address, True, False, one, d, a_in, one - one, gW[layer])
            if train_b[layer]:
                column_sums(d, gb[layer])
        if allreduce_sum(handles, sent, summed) != 0:
            raise RuntimeError("MPI_Allreduce failed in the distributed BLAS epoch")
        for layer in range(last + 1):
            if train_w[layer]:
                W, G = Ws[layer].reshape(-1), sum_W[layer].reshape(-1)
                if rule.adam:
                    adam(W, G, vWs[layer].reshape(-1), sWs[layer].reshape(-1), now.constants)
                else:
                    v = vWs[layer].reshape(-1)
                    sgd(W, G, now.lr, v, now.momentum, now.nesterov, now.constants[5])
            if train_b[layer]:
                if rule.adam:
                    adam(bs[layer], sum_b[layer], vbs[layer], sbs[layer], now.constants)
                else:
                    sgd(bs[layer], sum_b[layer], now.lr, vbs[layer], now.momentum, now.nesterov,
                        now.constants[5])  # fmt: skip
    return total
