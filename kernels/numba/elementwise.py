"""Elementwise passes, one row at a time so rows stay in L1: bias + activation, activation
gradient, loss and delta, the SGD/momentum update rule, uint8 rows in."""

from __future__ import annotations

import numpy as np

from tinynet.kernels.numba.compile import (
    BINARY_CROSS_ENTROPY,
    CROSS_ENTROPY,
    FAST,
    LEAKY_RELU,
    RELU,
    SIGMOID,
    SOFTMAX,
    SQUARED_ERROR,
    STEP,
    TANH,
    RuleNow,
    inlined_jit,
    inner_jit,
    is_float32,
    jit,
    smallest_normal,
    typed,
)

# exp for float32 in plain arithmetic, so that LLVM vectorises it (Numba has no vector exp
# without Intel's SVML; a libm call per element is far slower): exp(x) = 2^k exp(r) with
# k = round(x / ln 2), r = x - k ln 2 in two parts (Cody and Waite; k * LN2_HI is exact), exp(r)
# by its Taylor series to r^7 (|r| <= ln2 / 2: truncation error below 1e-8), and 2^k added to
# the exponent bits. Outside [-86, 88] it squares exp(x / 2), which also gives inf, subnormals
# and 0 where libm does. Against float64 exp: within 0.62 eps (relative) on [-86, 88], 1.4 eps
# outside (tests/test_numba_exp.py).
LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125
LN2_LO = 1.4286068203094172e-06


@jit(fastmath=FAST - {"reassoc"})  # see LN2_LO
def exp_row(row):
    """row <- exp(row) in place."""
    if not is_float32(row):
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
def bias_act_row(row, b, act, alpha):
    """row <- f(row + b) in place; alpha: the activation's parameter (leaky_relu's slope)."""
    one = typed(row, 1.0)
    zero = one - one
    n = row.shape[0]
    if act == SIGMOID:
        for j in range(n):
            row[j] = -(row[j] + b[j])
        exp_row(row)
        for j in range(n):
            row[j] = one / (one + row[j])
    elif act == TANH:
        for j in range(n):
            row[j] = np.tanh(row[j] + b[j])
    elif act == RELU:
        for j in range(n):
            v = row[j] + b[j]
            row[j] = zero if v < zero else v  # NaN stays NaN, as np.maximum
    elif act == LEAKY_RELU:
        for j in range(n):
            v = row[j] + b[j]
            row[j] = v if v > zero else alpha * v
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
        exp_row(row)
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
def act_grad_row(y, g, act, alpha):
    """g <- g * f'(z) in place, from the saved output y. In place and through one array only:
    with a separate output that may alias g, LLVM's overlap check fails at run time and the
    scalar fallback runs (for ReLU's branch on random signs, many times slower)."""
    one = typed(y, 1.0)
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
    elif act == LEAKY_RELU:
        for j in range(n):
            g[j] *= one if y[j] > zero else alpha
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
def bias_act(z, b, act, alpha):
    """z <- f(z + b) for a C-ordered batch. Sigmoid runs as three passes over the whole batch
    rather than row by row: each pass pays its loop overhead once. ``alpha``: a Python float
    (converting it to z's type before the call costs more than the call of a small kernel)."""
    alpha = typed(z, alpha)
    if act != SIGMOID:
        for i in range(z.shape[0]):
            bias_act_row(z[i], b, act, alpha)
        return
    one = typed(z, 1.0)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[i, j] = -(z[i, j] + b[j])
    flat = z.reshape(z.size)
    exp_row(flat)
    for k in range(flat.shape[0]):
        flat[k] = one / (one + flat[k])


@jit
def act_grad(y, g, act, alpha):
    """g <- g * f'(z) for a batch, from the saved outputs y; ``alpha`` as in bias_act."""
    alpha = typed(g, alpha)
    for i in range(y.shape[0]):
        act_grad_row(y[i], g[i], act, alpha)


@inner_jit
def loss_delta_row(y, t, kind, scale, inv_n, delta):
    """Per-sample loss (float64) and delta = dE/dy (squared error) or p - t (softmax CE; binary
    CE after sigmoids), / n."""
    one = typed(y, 1.0)
    loss = 0.0
    if kind == CROSS_ENTROPY:
        tiny = smallest_normal(y)
        for k in range(y.shape[0]):
            loss -= t[k] * np.log(max(y[k], tiny))
            delta[k] = (y[k] - t[k]) * inv_n
    elif kind == BINARY_CROSS_ENTROPY:
        tiny = smallest_normal(y)
        for k in range(y.shape[0]):
            p = y[k]
            loss -= t[k] * np.log(max(p, tiny)) + (one - t[k]) * np.log(max(one - p, tiny))
            delta[k] = (p - t[k]) * inv_n
    else:
        two_scale = (one + one) * scale * inv_n
        for k in range(y.shape[0]):
            diff = y[k] - t[k]
            loss += diff * diff
            delta[k] = two_scale * diff
        loss *= scale
    return loss


@jit
def loss_delta(y, t, kind, scale, inv_n, delta):
    total = 0.0
    for i in range(y.shape[0]):
        total += loss_delta_row(y[i], t[i], kind, scale, inv_n, delta[i])
    return total


# -- the update rule: defined here once; every compiled path applies it through sgd_step -------
@inlined_jit
def sgd_step(w, g, v, lr, momentum, nesterov, weight_decay):
    """One parameter's step of torch.optim.SGD (dampening 0): g <- g + weight_decay w;
    v <- momentum v + g; w <- w - lr d with d = g + momentum v (nesterov) or v. Returns
    (new w, new v). Plain SGD is momentum 0 with v 0 (the compiler folds 0 v + g to g):
    w - lr g. The compiled loops' inline passes (per sample, tiles) run it without Nesterov or
    weight decay, passing False and 0, which fold away; with either, they call it out of line
    (RuleNow.out_of_line), like Adam's step, so the common passes stay free of their branches.

    The one exception: what is linear in g. Where g is a sum over a batch that a GEMM or a
    register tile forms, plain SGD's sum goes straight into w with coefficient -lr
    (small_batch._update_block, blas.blas_epoch), and the BLAS epoch's GEMM forms momentum's
    v <- m v + g in place (beta = m) before a pass of this step with v as g and no velocity.
    A separate pass or buffer would cost more than the GEMM there; any other rule
    accumulates g apart and comes through here."""
    if weight_decay != 0:
        g = g + weight_decay * w
    v = momentum * v + g
    d = g + momentum * v if nesterov else v
    return w - lr * d, v


@jit
def sgd(w, g, lr, v, momentum, nesterov, weight_decay):
    """sgd_step over flat, contiguous arrays: v holds the velocities, or is empty (no
    momentum)."""
    if v.shape[0]:
        for j in range(w.shape[0]):
            w[j], v[j] = sgd_step(w[j], g[j], v[j], lr, momentum, nesterov, weight_decay)
    else:
        zero = typed(w, 0.0)
        for j in range(w.shape[0]):
            w[j], _ = sgd_step(w[j], g[j], zero, lr, zero, False, weight_decay)


@inlined_jit
def adam_step(w, g, m, v, b1, b2, step_size, bias_root, eps, weight_decay, shrink):
    """One parameter's step of torch.optim.Adam, or AdamW's: w <- w shrink (AdamW:
    1 - lr weight_decay; Adam: 1) and g <- g + weight_decay w (Adam; AdamW passes 0);
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    w <- w - step_size m / (sqrt(v) / bias_root + eps), where at update t step_size is
    lr / (1 - b1^t) and bias_root sqrt(1 - b2^t). Returns (new w, new m, new v).

    Subnormal numbers are kept out, since x86 computes with them several times slower
    (per-sample Adam ran 2 to 3 times slower on MNIST): moments that decay below the smallest
    normal number (a weight whose gradient stays 0, as for MNIST's blank border pixels or a
    dead ReLU unit) are flushed to 0, and so is a gradient too small for (1 - b2) g^2 to be
    normal (a saturated softmax's). What either changes in w is below 1e-38 of a step."""
    if weight_decay != 0:
        g = g + weight_decay * w
    one = typed(w, 1.0)  # b1 - b1 + 1 would be float64, and so would the whole step
    zero = one - one
    tiny = smallest_normal(w)
    g_floor = np.sqrt(tiny / (one - b2))  # loop-invariant: hoisted out of the callers' loops
    g_kept = g if abs(g) >= g_floor else zero  # selects, so the loops stay vectorised
    m = b1 * m + (one - b1) * g
    v = b2 * v + (one - b2) * g_kept * g_kept
    m = m if abs(m) >= tiny else zero
    v = v if v >= tiny else zero
    return w * shrink - step_size * m / (np.sqrt(v) / bias_root + eps), m, v


@jit
def adam(w, g, m, v, constants):
    """adam_step over flat, contiguous arrays; constants: its (b1, b2, step_size, bias_root,
    eps, weight_decay, shrink)."""
    b1, b2, step_size, bias_root, eps, weight_decay, shrink = constants
    for j in range(w.shape[0]):
        w[j], m[j], v[j] = adam_step(
            w[j], g[j], m[j], v[j], b1, b2, step_size, bias_root, eps, weight_decay, shrink
        )


@jit
def column_sums(dz, out):
    for j in range(out.shape[0]):
        out[j] = 0
    for i in range(dz.shape[0]):
        for j in range(dz.shape[1]):
            out[j] += dz[i, j]


@jit
def rescale(x, scale, offset, out):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * scale + offset


@jit
def gather_inputs(X, order, in_scale, in_offset, out):
    """out[r] = X[order[r]] * in_scale + in_offset: a batch gathered from the uint8 images."""
    for r in range(order.shape[0]):
        load_input(X, order[r], in_scale, in_offset, out[r])


@inner_jit
def batch_scale(like, nb, mean):
    """1/nb ("mean") or 1, in the dtype of ``like``, so float32 stays float32."""
    one = typed(like, 1.0)
    return one / typed(like, nb) if mean else one


@jit
def loss_delta_gathered(Y, T, order, kind, scale, inv_n, act, alpha, D):
    """Sum of the losses of the rows of Y against T[order], and D = dE/dz of the output layer
    (act, alpha: its activation)."""
    total = 0.0
    for r in range(Y.shape[0]):
        total += loss_delta_row(Y[r], T[order[r]], kind, scale, inv_n, D[r])
        if kind == SQUARED_ERROR:  # the cross-entropies' delta is p - t, w.r.t. z already
            act_grad_row(Y[r], D[r], act, alpha)
    return total


@inner_jit
def rule_at(rule, t, like):
    """The update rule of the compiled epochs (compile.Rule) for update number t, as a
    compile.RuleNow; its constants: adam_step's b1, b2, step_size, bias_root, eps,
    weight_decay, shrink, in ``like``'s dtype (for SGD, placeholders but weight_decay)."""
    one = typed(like, 1.0)
    step_size = bias_root = one
    if rule.adam:
        step_size = typed(like, np.float64(rule.lr) / (1.0 - np.float64(rule.b1) ** t))
        bias_root = typed(like, np.sqrt(1.0 - np.float64(rule.b2) ** t))
    constants = (rule.b1, rule.b2, step_size, bias_root, rule.eps, rule.weight_decay, rule.shrink)
    out_of_line = rule.adam or rule.nesterov or rule.weight_decay != one - one
    return RuleNow(rule.lr, rule.momentum, out_of_line, rule.adam, rule.nesterov, constants)


@inlined_jit
def adam_step_with(w, g, m, v, constants):
    """adam_step with rule_at's constants for this update. Callers branch on the rule before
    the loop over a row and call this or sgd_step inside it: a branch on the rule inside the
    loop kept LLVM from vectorising the SGD paths (per-sample epochs ran 40% slower)."""
    c = constants
    return adam_step(w, g, m, v, c[0], c[1], c[2], c[3], c[4], c[5], c[6])


@inner_jit
def load_input(X, idx, in_scale, in_offset, x):
    for j in range(x.shape[0]):
        x[j] = X[idx, j] * in_scale + in_offset


@inner_jit
def out_of_line_bias(b, i, di, rule_now, vb, sb):
    """b[i] by adam_step or by sgd_step with Nesterov or weight decay, out of line: inlined
    into the tile loops' SGD paths, Adam's code made plain-SGD small batches 10% slower."""
    if rule_now.adam:
        b[i], vb[i], sb[i] = adam_step_with(b[i], di, vb[i], sb[i], rule_now.constants)
    elif vb.shape[0]:
        b[i], vb[i] = sgd_step_with(b[i], di, vb[i], rule_now)
    else:
        b[i], _ = sgd_step_with(b[i], di, b[i] - b[i], rule_now)


@inlined_jit
def sgd_step_with(w, g, v, rule_now):
    """sgd_step with all of rule_now's SGD settings (v: 0 without momentum)."""
    r = rule_now
    return sgd_step(w, g, v, r.lr, r.momentum, r.nesterov, r.constants[5])


@inner_jit
def out_of_line_biases(b, d, r0, r1, rule_now, vb, sb):
    """b[r0:r1] by adam_step or by sgd_step with Nesterov or weight decay, gradients
    d[r0:r1]: one pass, the rule's branch outside the loop (a call per bias cost the
    per-sample Adam epoch a fifth of its time)."""
    if rule_now.adam:
        for i in range(r0, r1):
            b[i], vb[i], sb[i] = adam_step_with(b[i], d[i], vb[i], sb[i], rule_now.constants)
    elif vb.shape[0]:
        for i in range(r0, r1):
            b[i], vb[i] = sgd_step_with(b[i], d[i], vb[i], rule_now)
    else:
        for i in range(r0, r1):
            b[i], _ = sgd_step_with(b[i], d[i], b[i] - b[i], rule_now)


@inlined_jit
def update_bias(b, i, di, rule_now, vb):
    """b[i] by plain or momentum SGD (sgd_step; vb its velocities, or empty: no momentum)
    with gradient di. The other rules' biases: _out_of_line_biases, _out_of_line_bias, which
    the callers gate behind their ``other_rules`` argument."""
    zero = typed(b, 0.0)
    lr, momentum = rule_now.lr, rule_now.momentum
    if vb.shape[0]:
        b[i], vb[i] = sgd_step(b[i], di, vb[i], lr, momentum, False, zero)
    else:
        b[i], _ = sgd_step(b[i], di, zero, lr, zero, False, zero)
