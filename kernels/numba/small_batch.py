"""The compiled mini-batch epoch (batches up to 16, or 32 with momentum; small weight
matrices): register tiles that add the weight gradient straight into the weights."""

from __future__ import annotations

import numpy as np

from tinynet.kernels.numba.compile import SOFTMAX, inner_jit, jit, typed
from tinynet.kernels.numba.elementwise import (
    act_grad_row,
    adam_step_with,
    batch_scale,
    bias_act_row,
    gather_inputs,
    loss_delta_gathered,
    out_of_line_bias,
    rule_at,
    sgd_step,
    sgd_step_with,
    update_bias,
)
from tinynet.kernels.numba.team import meet


@inner_jit
def _dot_block(W, A, Z, i0, r0):
    """Z[r0:r0+4, i0:i0+4] = A[r0:r0+4] @ W[i0:i0+4].T: 16 sums in registers, so every load
    of a weight or an input feeds 4 multiply-adds."""
    zero = typed(Z, 0.0)
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
    zero = typed(Z, 0.0)
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
def _add_outer_rows(target, t0, D, A, i0, i1, coef):
    """target[t0 + i - i0] += coef * sum_r D[r, i] * A[r] for rows i0 <= i < i1 (at most 4),
    four samples at a time so each stored weight carries 4 multiply-adds."""
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
                target[t0, j] += s00 * x0 + s01 * x1 + s02 * x2 + s03 * x3
                target[t0 + 1, j] += s10 * x0 + s11 * x1 + s12 * x2 + s13 * x3
                target[t0 + 2, j] += s20 * x0 + s21 * x1 + s22 * x2 + s23 * x3
                target[t0 + 3, j] += s30 * x0 + s31 * x1 + s32 * x2 + s33 * x3
            r += 4
    for rr in range(r, n_rows):
        for i in range(i0, i1):
            si = coef * D[rr, i]
            for j in range(n_in):
                target[t0 + i - i0, j] += si * A[rr, j]


@inner_jit
def _out_of_line_rows(W, G, m, v, i0, i1, rule_now):
    """Rows i0..i1 of W by an out-of-line rule (RuleNow.out_of_line: adam_step, or sgd_step with
    Nesterov or weight decay; m: Adam's first moments or the velocities, v: Adam's second) with
    gradients G[0 : i1 - i0]; out of line as per_sample._out_of_line_row."""
    zero = typed(W, 0.0)
    for i in range(i0, i1):
        if rule_now.adam:
            for j in range(W.shape[1]):
                W[i, j], m[i, j], v[i, j] = adam_step_with(
                    W[i, j], G[i - i0, j], m[i, j], v[i, j], rule_now.constants
                )
        elif m.shape[0]:
            for j in range(W.shape[1]):
                W[i, j], m[i, j] = sgd_step_with(W[i, j], G[i - i0, j], m[i, j], rule_now)
        else:
            for j in range(W.shape[1]):
                W[i, j], _ = sgd_step_with(W[i, j], G[i - i0, j], zero, rule_now)


@inner_jit
def _update_block(W, b, D, A, blk, train_w, train_b, rule_now, vW, vb, sW, sb, G, other_rules):
    """Rows 4 blk .. 4 blk + 3 of W and b by the rule (rule_now: elementwise.rule_at's) with
    gradients D^T A and sum_r D[r]. With momentum or an out-of-line rule the weight gradient is
    summed in G (4, in) first; plain SGD adds -lr D^T A straight into the weights
    (elementwise.sgd_step says why). other_rules: see epoch_small_batch."""
    one = typed(W, 1.0)
    zero = one - one
    lr, momentum = rule_now.lr, rule_now.momentum
    n_out, n_in = W.shape
    i0 = blk * 4
    i1 = min(i0 + 4, n_out)
    if train_w and (rule_now.out_of_line or momentum != zero):
        for k in range(i1 - i0):
            for j in range(n_in):
                G[k, j] = zero
        _add_outer_rows(G, np.int64(0), D, A, i0, i1, one)
        if other_rules is not None and rule_now.out_of_line:
            _out_of_line_rows(W, G, vW, sW, i0, i1, rule_now)
        else:
            for i in range(i0, i1):
                for j in range(n_in):
                    g = G[i - i0, j]
                    W[i, j], vW[i, j] = sgd_step(W[i, j], g, vW[i, j], lr, momentum, False, zero)
    elif train_w:
        _add_outer_rows(W, i0, D, A, i0, i1, -lr)
    if train_b:
        for i in range(i0, i1):
            g = zero
            for r in range(D.shape[0]):
                g += D[r, i]
            if other_rules is not None and rule_now.out_of_line:
                out_of_line_bias(b, i, g, rule_now, vb, sb)
            else:
                update_bias(b, i, g, rule_now, vb)


@inner_jit
def _delta_below(D, W, Y, act, alpha, G, c0, c1):
    """G[:, c0:c1] = (D W)[:, c0:c1] * f'(Y[:, c0:c1]): columns c0..c1 of the delta of the layer
    below, from the weights before the update (a softmax below needs c0:c1 to be all columns)."""
    zero = typed(G, 0.0)
    for r in range(D.shape[0]):
        g = G[r, c0:c1]
        for j in range(g.shape[0]):
            g[j] = zero
        for i in range(W.shape[0]):
            di, w = D[r, i], W[i, c0:c1]
            for j in range(g.shape[0]):  # not W[i, c0 + j]: that loop ran far slower
                g[j] += di * w[j]
        act_grad_row(Y[r, c0:c1], g, act, alpha)


@jit
def epoch_small_batch(thread, data, net, rule, A, D, batch, other_rules):
    """Mini-batch SGD over X[order] in steps of ``batch``, as thread ``rank`` of a team; the sum
    of the per-sample losses of the samples this thread scored.

    Thread ``rank`` owns units bounds[l, rank]..bounds[l, rank + 1] of layer l: it computes
    those columns of A[l + 1] (the layer's output) and of D[l] (its delta), and updates those
    rows of W, b and the optimizer's state (momentum's velocities or Adam's moments). The delta
    for the layer below, D[l-1] = D[l] W (old W), is formed before any thread changes W.
    Inputs, losses and softmax rows are split by sample. The team meets between the steps that
    read what another thread wrote. other_rules: as in per_sample.epoch_per_sample.
    """
    rank, progress, bounds = thread
    X, order, T, in_scale, in_offset = data
    Ws, bs, acts, alphas, train_w, train_b, vWs, vbs, sWs, sbs = net
    kind, scale, mean = rule.kind, rule.scale, rule.mean
    n_layers = len(Ws)
    last = n_layers - 1
    team = bounds.shape[1] - 1
    n = order.shape[0]
    total = 0.0
    step = np.int64(1)  # see the literal constants in epoch_per_sample
    G = np.empty((4, max([W.shape[1] for W in Ws])), A[0].dtype)  # see _update_block
    for start in range(0, n, batch):
        nb = min(batch, n - start)
        inv_n = batch_scale(A[0], nb, mean)
        rule_now = rule_at(rule, rule.step + start // batch + 1, A[0])  # this update's rule
        r0, r1 = nb * rank // team, nb * (rank + 1) // team  # this thread's samples
        mine = order[start + r0 : start + r1]  # this thread's samples of the batch
        gather_inputs(X, mine, in_scale, in_offset, A[0][r0:r1])
        step = meet(progress, rank, step)
        for layer in range(n_layers):
            W, Z, A_in, b = Ws[layer], A[layer + 1][:nb], A[layer][:nb], bs[layer]
            act, alpha = acts[layer], alphas[layer]
            lo, hi = bounds[layer, rank], bounds[layer, rank + 1]
            for blk in range(lo // 4, (hi + 3) // 4):
                _forward_block(W, A_in, Z, blk)
            if act == SOFTMAX and team > 1:  # each row's softmax needs all its columns
                step = meet(progress, rank, step)
                for r in range(r0, r1):
                    bias_act_row(Z[r], b, act, alpha)
            else:
                for r in range(nb):
                    bias_act_row(Z[r, lo:hi], b[lo:hi], act, alpha)
            step = meet(progress, rank, step)
        y, d = A[n_layers][r0:r1], D[last][r0:r1]
        total += loss_delta_gathered(y, T, mine, kind, scale, inv_n, acts[last], alphas[last], d)
        step = meet(progress, rank, step)
        for layer in range(last, -1, -1):
            W, Dl, b, vW, vb = Ws[layer], D[layer][:nb], bs[layer], vWs[layer], vbs[layer]
            if layer > 0:
                c0, c1 = bounds[layer - 1, rank], bounds[layer - 1, rank + 1]
                below = D[layer - 1][:nb]
                act, alpha = acts[layer - 1], alphas[layer - 1]
                _delta_below(Dl, W, A[layer][:nb], act, alpha, below, c0, c1)
                step = meet(progress, rank, step)  # all of D[l-1] formed, W no longer read
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
                    rule_now,
                    vW,
                    vb,
                    sWs[layer],
                    sbs[layer],
                    G,
                    other_rules,
                )
        step = meet(progress, rank, step)  # A[0] is read by the updates until here
    return total
