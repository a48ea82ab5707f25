"""The BLAS epoch (larger batches): GEMMs on SciPy's BLAS, compiled elementwise passes."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinynet.backend import EpochSpec
from tinynet.kernels.numba.compile import ACT, CROSS_ENTROPY, SQUARED_ERROR
from tinynet.kernels.numba.elementwise import (
    act_grad,
    bias_act,
    column_sums,
    gather_inputs,
    loss_delta_gathered,
    sgd,
)


def gemm_into(gemm, alpha, a, b, c, trans_a=0, trans_b=0, beta=0.0) -> None:
    """c <- alpha op(a) op(b) + beta c with SciPy's BLAS gemm, in place. The arrays are the
    Fortran-ordered views (``.T``) of C-ordered ones, so nothing is copied; gemm would silently
    write into a copy if one were needed, so that is an error here."""
    out = gemm(alpha, a, b, beta=beta, c=c, trans_a=trans_a, trans_b=trans_b, overwrite_c=1)
    if out is not c:
        raise RuntimeError("gemm did not write in place (an array is not Fortran-ordered)")


def blas_epoch(
    spec: EpochSpec, X: Any, T: Any, order: Any, batch_size: int, A: tuple, D: tuple
) -> float:
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
    order = np.ascontiguousarray(order, np.int64)
    T = np.ascontiguousarray(T, dtype)
    in_scale, in_offset, lr, momentum = map(
        dt, (spec.in_scale, spec.in_offset, spec.lr, spec.momentum)
    )
    kind = CROSS_ENTROPY if spec.loss == "cross_entropy" else SQUARED_ERROR
    scale = dt(spec.loss_scale)
    acts = [ACT[layer.activation] for layer in layers]
    out_alpha = dt(layers[-1].alpha)
    biases = [
        layer.b if layer.b is not None else np.zeros(layer.W.shape[0], dtype) for layer in layers
    ]
    grad_b = [np.empty(layer.W.shape[0], dtype) for layer in layers]
    grads_W = [np.empty_like(layer.W) if layer.vW is not None else None for layer in layers]
    no_velocity = np.zeros(0, dtype)
    total = 0.0
    for start in range(0, order.shape[0], batch_size):
        idx = order[start : start + batch_size]
        nb = idx.shape[0]
        inv_n = dt(1 / nb) if spec.reduction == "mean" else dt(1)
        gather_inputs(X, idx, in_scale, in_offset, A[0][:nb])
        for i, layer in enumerate(layers):
            a_in, a_out = A[i][:nb], A[i + 1][:nb]
            gemm_into(gemm, 1.0, layer.W.T, a_in.T, a_out.T, trans_a=1)
            bias_act(a_out, biases[i], acts[i], layer.alpha)
        total += loss_delta_gathered(
            A[-1][:nb], T, idx, kind, scale, inv_n, acts[-1], out_alpha, D[-1][:nb]
        )
        for i in range(len(layers) - 1, -1, -1):
            layer, d, a_in = layers[i], D[i][:nb], A[i][:nb]
            if i > 0:  # the delta below, from W before its update
                below = D[i - 1][:nb]
                gemm_into(gemm, 1.0, layer.W.T, d.T, below.T)
                act_grad(a_in, below, acts[i - 1], layers[i - 1].alpha)
            if layer.train_W and layer.vW is not None:  # g = d^T a, then the rule
                grad_W = grads_W[i]
                gemm_into(gemm, 1.0, a_in.T, d.T, grad_W.T, trans_b=1)
                sgd(layer.W.reshape(-1), grad_W.reshape(-1), lr, layer.vW.reshape(-1), momentum)
            elif layer.train_W:  # W <- W - lr d^T a, in the GEMM (elementwise.sgd_step: why)
                gemm_into(gemm, -lr, a_in.T, d.T, layer.W.T, trans_b=1, beta=1.0)
            if layer.train_b:
                column_sums(d, grad_b[i])
                vb = layer.vb if layer.vb is not None else no_velocity
                sgd(layer.b, grad_b[i], lr, vb, momentum)
    return total
