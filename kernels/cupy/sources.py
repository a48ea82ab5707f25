"""The CUDA sources of the CuPy backend: elementwise bodies and the per-row kernels of the
fused epoch. ``T`` is the float type each is compiled for."""

from __future__ import annotations

from typing import Any, NamedTuple

from tinynet.backend import ACTIVATION_CODE

ACT = ACTIVATION_CODE  # activation name -> the ``act`` argument of the kernels below

# Each activation once, as CUDA expressions: the value from v = z + b, and dz from the saved
# output y and dy (so a NaN dy stays NaN where the reference's would, and step's is exactly 0);
# alpha is the activation's parameter (leaky_relu's slope), ignored by the others.
# Softmax couples a row: the per-row kernels below handle it, the reference code elsewhere.
ACTIVATION_CUDA = {
    "identity": ("v", "dy"),
    "step": ("v >= (T)0 ? (T)1 : (T)0", "(T)0"),
    "sigmoid": ("(T)1 / ((T)1 + exp(-v))", "dy * y * ((T)1 - y)"),
    "tanh": ("tanh(v)", "dy * ((T)1 - y * y)"),
    "relu": ("v < (T)0 ? (T)0 : v", "dy * (y > (T)0 ? (T)1 : (T)0)"),
    "leaky_relu": ("v > (T)0 ? v : alpha * v", "dy * (y > (T)0 ? (T)1 : alpha)"),
}


def _device_function(name: str, args: str, part: int) -> str:
    """A function template over the float type F, one branch per activation of the table."""
    cases = "\n".join(
        f"  if (act == {ACT[act]}) return {exprs[part]};".replace("(T)", "(F)")
        for act, exprs in ACTIVATION_CUDA.items()
    )
    head = f"template <typename F>\n__device__ F {name}({args}, int act, F alpha) {{"
    return f"{head}\n{cases}\n  return {args.split()[-1]};\n}}\n"


# act_value(v, act, alpha) = f(v); act_grad(y, dy, act, alpha) = dy * f'(z) from y = f(z); for
# both the elementwise kernels (as their preamble) and the per-row kernels.
ACTIVATION_FUNCTIONS = _device_function("act_value", "F v", 0) + _device_function(
    "act_grad", "F y, F dy", 1
)
BIAS_ACT = "y = act_value(z + b, act, alpha);"  # inputs z, b, act, alpha; output y
ACT_GRAD = "dz = act_grad(y, dy, act, alpha);"  # inputs y, dy, act, alpha; output dz

# The update rule once, for every elementwise kernel that applies it (CuPy passes an output
# parameter of an elementwise kernel as a reference to the array element). Plain SGD is
# momentum 0 with v 0. Where plain SGD's gradient is a GEMM's sum, the GEMM adds it into w
# with alpha = -lr instead (plan.py): the step is linear in g, and no pass over w is needed.
SGD_STEP = r"""
template <typename F>
__device__ void sgd_step(F& w, F g, F& v, F lr, F momentum, bool nesterov, F weight_decay) {
  // torch.optim.SGD (dampening 0): g <- g + weight_decay w; v <- momentum v + g;
  // w <- w - lr d, d = g + momentum v (nesterov) or v
  if (weight_decay != (F)0) g += weight_decay * w;
  v = momentum * v + g;
  w -= lr * (nesterov ? g + momentum * v : v);
}
"""
# inputs g, lr, wd; output w
SGD = "T v = 0; sgd_step(w, g, v, lr, (T)0, false, wd);"
# inputs g, lr, m, nesterov, wd; outputs w, v
MOMENTUM = "sgd_step(w, g, v, lr, m, nesterov, wd);"
# the fused epoch's (plan.py): lr and momentum read from device memory (raw lr_m), so a
# captured CUDA graph keeps serving when a schedule changes the learning rate; inputs g, lr_m,
# nesterov, wd; outputs w, v. Without momentum (weight decay only): inputs g, lr_m, wd; output w
SGD_FROM_DEVICE = "sgd_step(w, g, v, lr_m[0], lr_m[1], nesterov, wd);"
SGD_DECAY_FROM_DEVICE = "T v = 0; sgd_step(w, g, v, lr_m[0], (T)0, false, wd);"

# torch.optim.Adam's step, and AdamW's: w <- w shrink (AdamW: 1 - lr weight_decay), g <- g +
# weight_decay w (Adam); m, v the moments; step_size = lr / (1 - b1^t), bias_root =
# sqrt(1 - b2^t) at update t (elementwise.adam_step is the Numba twin).
ADAM_STEP = r"""
template <typename F>
__device__ void adam_step(F& w, F g, F& m, F& v, F b1, F b2, F step_size, F bias_root, F eps,
                          F weight_decay, F shrink) {
  if (weight_decay != (F)0) g += weight_decay * w;
  m = b1 * m + ((F)1 - b1) * g;
  v = b2 * v + ((F)1 - b2) * g * g;
  w = w * shrink - step_size * m / (sqrt(v) / bias_root + eps);
}
"""
# inputs g, b1, b2, step_size, bias_root, eps, wd, shrink; outputs w, m, v
ADAM = "adam_step(w, g, m, v, b1, b2, step_size, bias_root, eps, wd, shrink);"
# the fused epoch's: every scalar read from device memory (raw h, see ADAM_SCALARS), so a
# captured CUDA graph serves every update count and learning rate; inputs g, h; outputs w, m, v
ADAM_FROM_DEVICE = "adam_step(w, g, m, v, h[1], h[2], h[6], h[7], h[3], h[4], h[5]);"
# h: lr, b1, b2, eps, l2 (Adam's weight decay), shrink (AdamW's 1 - lr weight_decay), set per
# call, and step_size, bias_root, which this one-thread kernel writes before each step for
# update t = base + step + 1 (backend.adam_scalars' formulas, in double, as Numba's rule_at)
ADAM_SCALARS = r"""
extern "C" __global__ void tinynet_adam_scalars(const long long* step, const long long* base,
                                                T* h) {
  double t = (double)(base[0] + step[0] + 1);
  h[6] = (T)((double)h[0] / (1.0 - pow((double)h[1], t)));
  h[7] = (T)sqrt(1.0 - pow((double)h[2], t));
}
"""


# Per-row kernels (one thread per sample) for the output layer. T is the float type. A step's
# rows are order[first + step * batch + r]: first is the row of the batch where this rank's
# shard starts (0 in one process).
ROW_KERNELS = (
    f"#define SOFTMAX {ACT['softmax']}\n"
    + ACTIVATION_FUNCTIONS
    + r"""
__device__ void softmax_row(T* zr, const T* bias, int classes) {
  // zr <- softmax(zr + bias) in place, shifted by the row's maximum
  T m = zr[0] + bias[0];
  for (int k = 0; k < classes; ++k) {
    T v = zr[k] + bias[k];
    zr[k] = v;
    m = v > m ? v : m;
  }
  T s = 0;
  for (int k = 0; k < classes; ++k) {
    T e = exp(zr[k] - m);
    zr[k] = e;
    s += e;
  }
  for (int k = 0; k < classes; ++k) zr[k] /= s;
}

extern "C" __global__ void tinynet_softmax_ce(
    T* z, const T* bias, const T* targets, const long long* order, const long long* step,
    long long first, long long batch, int rows, int classes, T inv_n, T tiny, T* delta,
    double* loss_sum) {
  // z <- softmax(z + bias) in place; loss_sum += -sum_k t_k log max(p_k, tiny);
  // delta = (p - t) * inv_n, the gradient of the loss with respect to z + bias.
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  T* zr = z + (long long)r * classes;
  T* dr = delta + (long long)r * classes;
  const T* tr = targets + order[first + step[0] * batch + r] * classes;
  softmax_row(zr, bias, classes);
  double loss = 0;
  for (int k = 0; k < classes; ++k) {
    T p = zr[k];
    loss -= (double)tr[k] * log((double)(p > tiny ? p : tiny));
    dr[k] = (p - tr[k]) * inv_n;
  }
  atomicAdd(loss_sum, loss);
}

extern "C" __global__ void tinynet_squared_error(
    const T* y, const T* targets, const long long* order, const long long* step,
    long long first, long long batch, int rows, int classes, int act, T alpha, T scale, T coef,
    T* delta, double* loss_sum) {
  // loss_sum += scale * sum_k (y_k - t_k)^2; delta = coef (y - t) * f'(z), coef = 2 scale / n,
  // with f' from the saved output y (act_grad), or softmax's Jacobian, which couples the row.
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  const T* yr = y + (long long)r * classes;
  T* dr = delta + (long long)r * classes;
  const T* tr = targets + order[first + step[0] * batch + r] * classes;
  double loss = 0;
  T dot = 0;
  for (int k = 0; k < classes; ++k) {
    T v = yr[k], diff = v - tr[k], g = coef * diff;
    loss += (double)diff * diff;
    if (act != SOFTMAX) g = act_grad(v, g, act, alpha);
    dr[k] = g;
    dot += g * v;
  }
  if (act == SOFTMAX)
    for (int k = 0; k < classes; ++k) dr[k] = yr[k] * (dr[k] - dot);
  atomicAdd(loss_sum, loss * (double)scale);
}

extern "C" __global__ void tinynet_softmax_rows(T* z, const T* bias, int rows, int classes) {
  // z <- softmax(z + bias), row by row, in place
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  softmax_row(z + (long long)r * classes, bias, classes);
}

extern "C" __global__ void tinynet_next_step(long long* step) { step[0] += 1; }
"""
    + ADAM_SCALARS
)


class Elementwise(NamedTuple):
    """The arguments of one ``cupy.ElementwiseKernel``, kept as data: the backend builds its
    kernels from these, and tests/test_cuda_sources.py builds the same parameters and bodies
    for the host (g++) and for PTX (nvcc) without a GPU."""

    in_params: str
    out_params: str
    operation: str
    name: str
    preamble: str = ""

    def build(self, cp: Any) -> Any:
        return cp.ElementwiseKernel(
            self.in_params, self.out_params, self.operation, self.name, preamble=self.preamble
        )


# Every elementwise kernel of the backend (backend.py) and of the fused epoch (plan.py, the
# "plan_" ones), by name; the order of the parameters is the order of the call's arguments.
ELEMENTWISE = {
    "bias_act": Elementwise(
        "T z, T b, int32 act, T alpha",
        "T y",
        BIAS_ACT,
        "tinynet_bias_act",
        ACTIVATION_FUNCTIONS,
    ),
    "act_grad": Elementwise(
        "T y, T dy, int32 act, T alpha",
        "T dz",
        ACT_GRAD,
        "tinynet_act_grad",
        ACTIVATION_FUNCTIONS,
    ),
    "sgd": Elementwise("T g, T lr, T wd", "T w", SGD, "tinynet_sgd", SGD_STEP),
    "momentum": Elementwise(
        "T g, T lr, T m, bool nesterov, T wd", "T w, T v", MOMENTUM, "tinynet_momentum", SGD_STEP
    ),
    "adam": Elementwise(
        "T g, T b1, T b2, T step_size, T bias_root, T eps, T wd, T shrink",
        "T w, T m, T v",
        ADAM,
        "tinynet_adam",
        ADAM_STEP,
    ),
    "rescale": Elementwise(
        "X x, T scale, T offset", "T y", "y = (T)x * scale + offset", "tinynet_rescale"
    ),
    "se_grad": Elementwise("T y, T t, T c", "T dy", "dy = c * (y - t)", "tinynet_se_grad"),
    # the fused epoch's input rows, scaled: y[r, c] = x[order[first + step * batch + r], c];
    # first: the row of the batch this rank's shard starts at (0 in one process)
    "plan_gather": Elementwise(
        "raw X x, raw int64 order, raw int64 step, int64 first, int64 batch, int64 width, "
        "T scale, T offset",
        "T y",
        "long long r = i / width;"
        "y = (T)x[order[first + step[0] * batch + r] * width + (i - r * width)] * scale + offset",
        "tinynet_gather",
    ),
    # every rule of the fused epoch but plain SGD's GEMM: the gradient by a GEMM, then the rule
    "plan_sgd": Elementwise(
        "T g, raw T lr_m, bool nesterov, T wd",
        "T w, T v",
        SGD_FROM_DEVICE,
        "tinynet_plan_sgd",
        SGD_STEP,
    ),
    "plan_sgd_decay": Elementwise(
        "T g, raw T lr_m, T wd", "T w", SGD_DECAY_FROM_DEVICE, "tinynet_plan_sgd_decay", SGD_STEP
    ),
    "plan_adam": Elementwise(
        "T g, raw T h", "T w, T m, T v", ADAM_FROM_DEVICE, "tinynet_plan_adam", ADAM_STEP
    ),
}
