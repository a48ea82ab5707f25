"""The per-sample epoch (the tutorials' SGD, one sample at a time), in one compiled call."""

from __future__ import annotations

import numpy as np

from tinynet.kernels.numba.compile import SQUARED_ERROR, inner_jit, jit, typed
from tinynet.kernels.numba.elementwise import (
    act_grad_row,
    adam_step_with,
    bias_act_row,
    load_input,
    loss_delta_row,
    out_of_line_biases,
    rule_at,
    sgd_step,
    sgd_step_with,
    update_bias,
)
from tinynet.kernels.numba.team import publish, wait_for_team

# PLAIN_SGD: plain SGD's step lr (d_i x_j) is linear, so lr is folded into the delta once per
# row, s_i = lr d_i, and sgd_step runs with gradient s_i x_j and lr 1 (1 v folds away): one
# multiply-add per weight, and the rounding these epochs always had.


# -- whole epochs -------------------------------------------------------------------------------
@inner_jit
def _matvec(W, x, z):
    zero = typed(z, 0.0)
    for i in range(W.shape[0]):
        acc = zero
        for j in range(W.shape[1]):
            acc += W[i, j] * x[j]
        z[i] = acc


@inner_jit
def _out_of_line_row(W, i, di, x, x_next, m, v, rule_now, g):
    """Row i of W by an out-of-line rule (RuleNow.out_of_line: adam_step, or sgd_step with
    Nesterov or weight decay; m: Adam's first moments or the velocities, v: Adam's second) with
    gradient di x; with x_next, returns that row's W_new x_next (the next sample's forward),
    with g, adds di W_old to it (the delta below). Out of line: Adam's code inlined into the SGD
    passes made them 10-40% slower. One loop per rule: a branch inside one kept it scalar."""
    acc = typed(W, 0.0)
    zero = acc
    if g is not None:  # a pass of its own: the row is in L1 for the next
        for j in range(W.shape[1]):
            g[j] += di * W[i, j]
    if rule_now.adam:
        constants = rule_now.constants
        for j in range(W.shape[1]):
            w, m[i, j], v[i, j] = adam_step_with(W[i, j], di * x[j], m[i, j], v[i, j], constants)
            W[i, j] = w
            if x_next is not None:
                acc += w * x_next[j]
    elif m.shape[0]:
        for j in range(W.shape[1]):
            w, m[i, j] = sgd_step_with(W[i, j], di * x[j], m[i, j], rule_now)
            W[i, j] = w
            if x_next is not None:
                acc += w * x_next[j]
    else:
        for j in range(W.shape[1]):
            w, _ = sgd_step_with(W[i, j], di * x[j], zero, rule_now)
            W[i, j] = w
            if x_next is not None:
                acc += w * x_next[j]
    return acc


@inner_jit
def _backward_update(W, b, d, a_in, g, train_w, train_b, rule_now, vW, vb, sW, sb, other_rules):
    """Update a layer from its delta d, and g = W^T d (old W) for the layer below; one pass.
    rule_now: elementwise.rule_at's; vW, vb, sW, sb: the optimizer's state (or empty);
    other_rules: see epoch_per_sample."""
    one = typed(W, 1.0)
    zero = one - one
    lr, momentum = rule_now.lr, rule_now.momentum
    for j in range(g.shape[0]):
        g[j] = zero
    for i in range(W.shape[0]):
        di = d[i]
        if other_rules is not None and train_w and rule_now.out_of_line:  # _out_of_line_row
            _out_of_line_row(W, i, di, a_in, None, vW, sW, rule_now, g)
        elif train_w and momentum != zero:
            for j in range(W.shape[1]):
                w = W[i, j]
                g[j] += di * w
                W[i, j], vW[i, j] = sgd_step(w, di * a_in[j], vW[i, j], lr, momentum, False, zero)
        elif train_w:
            step = lr * di  # see PLAIN_SGD
            for j in range(W.shape[1]):
                w = W[i, j]
                g[j] += di * w
                W[i, j], _ = sgd_step(w, step * a_in[j], zero, one, zero, False, zero)
        else:
            for j in range(W.shape[1]):
                g[j] += di * W[i, j]
    if train_b:
        _update_biases(b, d, 0, W.shape[0], rule_now, vb, sb, other_rules)


@inner_jit
def _update_biases(b, d, r0, r1, rule_now, vb, sb, other_rules):
    """b[r0:r1] by the rule with gradients d[r0:r1]: plain or momentum SGD inline, the other
    rules in one out-of-line pass (elementwise.out_of_line_biases)."""
    if other_rules is not None and rule_now.out_of_line:
        out_of_line_biases(b, d, r0, r1, rule_now, vb, sb)
        return
    for i in range(r0, r1):
        update_bias(b, i, d[i], rule_now, vb)


@inner_jit
def _plain_sgd_by_four_rows(W, d, x, x_next, h_next, r0, r1, lr):
    """Plain SGD on rows r0.. of W, four at a time, with h_next[i] = W_new[i] x_next (before
    bias and activation); returns the first row left for the caller (fewer than four).

    Each load of x[j] and x_next[j] serves four weights: the pass is bound by loads, not
    arithmetic (four rows beat two and one: design.md). The steps fold lr into the delta (see
    PLAIN_SGD)."""
    one = typed(W, 1.0)
    zero = one - one
    i = r0
    while i + 3 < r1:
        w0, w1, w2, w3 = W[i], W[i + 1], W[i + 2], W[i + 3]
        s0, s1, s2, s3 = lr * d[i], lr * d[i + 1], lr * d[i + 2], lr * d[i + 3]
        acc0 = acc1 = acc2 = acc3 = zero
        for j in range(W.shape[1]):
            xj, xnj = x[j], x_next[j]
            a0, _ = sgd_step(w0[j], s0 * xj, zero, one, zero, False, zero)
            a1, _ = sgd_step(w1[j], s1 * xj, zero, one, zero, False, zero)
            a2, _ = sgd_step(w2[j], s2 * xj, zero, one, zero, False, zero)
            a3, _ = sgd_step(w3[j], s3 * xj, zero, one, zero, False, zero)
            w0[j] = a0
            w1[j] = a1
            w2[j] = a2
            w3[j] = a3
            acc0 += a0 * xnj
            acc1 += a1 * xnj
            acc2 += a2 * xnj
            acc3 += a3 * xnj
        h_next[i], h_next[i + 1], h_next[i + 2], h_next[i + 3] = acc0, acc1, acc2, acc3
        i += 4
    return i


@inner_jit
def _first_layer_update_and_next_forward(layer, train, sample, rows, rule_now, other_rules):
    """Rows r0..r1 (``rows``) of the first layer: update them with this sample's delta and
    input and, in the same pass over W, h_next[r0:r1] = f(W_new x_next + b_new) for the next
    sample. layer: (W, b, act, alpha, and the optimizer's state vW, vb, sW, sb); train:
    (train_w, train_b); sample: (d, x, x_next, h_next).

    A per-sample step is bound by streaming the first layer's weights through the cache; this
    reads and writes each weight once per sample instead of twice. With train_w and train_b
    False it is the plain forward pass of those rows.
    """
    W, b, act, alpha, vW, vb, sW, sb = layer
    train_w, train_b = train
    d, x, x_next, h_next = sample
    r0, r1 = rows
    one = typed(W, 1.0)
    zero = one - one
    lr, momentum = rule_now.lr, rule_now.momentum
    rest = r0
    if train_w and momentum == zero and not rule_now.out_of_line:
        rest = _plain_sgd_by_four_rows(W, d, x, x_next, h_next, r0, r1, lr)
    for i in range(rest, r1):  # the rest, and every row with momentum, another rule or frozen
        di = d[i]
        acc = zero
        if other_rules is not None and train_w and rule_now.out_of_line:  # _out_of_line_row
            acc = _out_of_line_row(W, i, di, x, x_next, vW, sW, rule_now, None)
        elif train_w and momentum != zero:
            for j in range(W.shape[1]):
                w, vW[i, j] = sgd_step(W[i, j], di * x[j], vW[i, j], lr, momentum, False, zero)
                W[i, j] = w
                acc += w * x_next[j]
        elif train_w:
            step = lr * di  # see PLAIN_SGD
            for j in range(W.shape[1]):
                w, _ = sgd_step(W[i, j], step * x[j], zero, one, zero, False, zero)
                W[i, j] = w
                acc += w * x_next[j]
        else:
            for j in range(W.shape[1]):
                acc += W[i, j] * x_next[j]
        h_next[i] = acc
    if train_b:
        _update_biases(b, d, r0, r1, rule_now, vb, sb, other_rules)
    bias_act_row(h_next[r0:r1], b[r0:r1], act, alpha)


@jit
def epoch_per_sample(thread, data, net, rule, A, D, x_spare, H, other_rules):
    """Per-sample SGD over X[order] as thread ``rank`` of a team; the sum of the per-sample losses.

    The thread owns rows r0..r1 = bounds[0, rank]..bounds[0, rank + 1] of the first layer (W, b,
    their velocities) and writes those rows of H[s % 2], the first layer's output for sample s.
    Every later layer is the thread's own copy (rank 0's are the model's arrays), updated
    identically by every thread from the same inputs, so the team meets once per sample.
    A[0] is the input (x_spare takes the next sample's), A[l] the input of layer l, D[l] the
    delta of layer l. Frozen weights/biases have train_w/train_b False; bias-free layers carry a
    zero bias that is never trained. vWs/vbs hold momentum's velocities or Adam's first moments,
    sWs/sbs Adam's second moments (else empty); sample s is update rule.step + s + 1.
    other_rules: None for plain or momentum SGD, so that only their code compiles (Adam's and
    the other SGD rules' out-of-line passes doubled the first compile); True for any other rule.
    """
    rank, progress, bounds = thread
    X, order, T, in_scale, in_offset = data
    Ws, bs, acts, alphas, train_w, train_b, vWs, vbs, sWs, sbs = net
    kind, scale = rule.kind, rule.scale
    n_layers = len(Ws)
    last = n_layers - 1
    one = typed(A[0], 1.0)
    n = order.shape[0]
    r0, r1 = bounds[0, rank], bounds[0, rank + 1]
    total = 0.0
    if n == 0:
        return total
    x, x_next = A[0], x_spare
    load_input(X, order[0], in_scale, in_offset, x)
    # the first sample's forward pass is the update pass with nothing to update; literal
    # constants as arguments would compile a second copy of a helper, hence the runtime values
    nothing, first = n < 0, np.int64(1)
    rule_now = rule_at(rule, rule.step + 1, x)
    first_layer = (Ws[0], bs[0], acts[0], alphas[0], vWs[0], vbs[0], sWs[0], sbs[0])
    train_first = (train_w[0], train_b[0])
    rows = (r0, r1)
    sample = (D[0], x, x, H[0])
    _first_layer_update_and_next_forward(
        first_layer, (nothing, nothing), sample, rows, rule_now, other_rules
    )
    publish(progress, rank, first)
    for s in range(n):
        rule_now = rule_at(rule, rule.step + s + 1, x)  # sample s is update step + s + 1
        wait_for_team(progress, s + 1)
        h, a = H[s % 2], A[1]
        for j in range(a.shape[0]):  # a loop: Numba compiles a slice assignment for seconds
            a[j] = h[j]
        for layer in range(1, n_layers):
            _matvec(Ws[layer], A[layer], A[layer + 1])
            bias_act_row(A[layer + 1], bs[layer], acts[layer], alphas[layer])
        total += loss_delta_row(A[n_layers], T[order[s]], kind, scale, one, D[last])
        if kind == SQUARED_ERROR:  # the cross-entropies' delta is p - t, w.r.t. z already
            act_grad_row(A[n_layers], D[last], acts[last], alphas[last])
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
                rule_now,
                vWs[layer],
                vbs[layer],
                sWs[layer],
                sbs[layer],
                other_rules,
            )
            act_grad_row(A[layer], g, acts[layer - 1], alphas[layer - 1])
        # the last sample's "next" input is its own: a harmless extra forward
        load_input(X, order[min(s + 1, n - 1)], in_scale, in_offset, x_next)
        sample = (D[0], x, x_next, H[(s + 1) % 2])
        _first_layer_update_and_next_forward(
            first_layer, train_first, sample, rows, rule_now, other_rules
        )
        publish(progress, rank, s + 2)
        x, x_next = x_next, x
    return total
