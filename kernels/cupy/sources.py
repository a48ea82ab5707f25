"""The CUDA sources of the CuPy backend: elementwise bodies and the per-row kernels of the
fused epoch. ``T`` is the float type each is compiled for."""

from __future__ import annotations

ACT = {"identity": 0, "step": 1, "sigmoid": 2, "tanh": 3, "relu": 4}  # softmax: reference code
ROW_ACT = {**ACT, "softmax": 5}  # the per-row kernels of the fused epoch

BIAS_ACT = """
    T v = z + b;
    if (act == 2) y = (T)1 / ((T)1 + exp(-v));
    else if (act == 3) y = tanh(v);
    else if (act == 4) y = v < (T)0 ? (T)0 : v;
    else if (act == 1) y = v >= (T)0 ? (T)1 : (T)0;
    else y = v;
"""
ACT_GRAD = """
    if (act == 2) dz = dy * y * ((T)1 - y);
    else if (act == 3) dz = dy * ((T)1 - y * y);
    else if (act == 4) dz = y > (T)0 ? dy : (T)0;
    else if (act == 1) dz = (T)0;
    else dz = dy;
"""


# Per-row kernels (one thread per sample) for the output layer. T is the float type.
ROW_KERNELS = r"""
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
    long long batch, int rows, int classes, T inv_n, T tiny, T* delta, double* loss_sum) {
  // z <- softmax(z + bias) in place; loss_sum += -sum_k t_k log max(p_k, tiny);
  // delta = (p - t) * inv_n, the gradient of the loss with respect to z + bias.
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  T* zr = z + (long long)r * classes;
  T* dr = delta + (long long)r * classes;
  const T* tr = targets + order[step[0] * batch + r] * classes;
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
    long long batch, int rows, int classes, int act, T scale, T coef, T* delta,
    double* loss_sum) {
  // loss_sum += scale * sum_k (y_k - t_k)^2; delta = coef (y - t) * f'(z), coef = 2 scale / n,
  // with f' from the saved output y (act: 0 identity, 1 step, 2 sigmoid, 3 tanh, 4 relu,
  // 5 softmax, whose Jacobian couples the row).
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  const T* yr = y + (long long)r * classes;
  T* dr = delta + (long long)r * classes;
  const T* tr = targets + order[step[0] * batch + r] * classes;
  double loss = 0;
  T dot = 0;
  for (int k = 0; k < classes; ++k) {
    T v = yr[k], diff = v - tr[k], g = coef * diff;
    loss += (double)diff * diff;
    if (act == 1) g = 0;
    else if (act == 2) g *= v * (1 - v);
    else if (act == 3) g *= 1 - v * v;
    else if (act == 4) g *= v > 0 ? 1 : 0;
    dr[k] = g;
    dot += g * v;
  }
  if (act == 5)
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
