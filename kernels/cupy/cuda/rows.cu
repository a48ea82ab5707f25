// The fused epoch's kernels that are not elementwise (plan.py): the output layer's loss and
// delta, one thread per sample of a step, and the one-thread bookkeeping kernels. T is the
// float type; each template is compiled for float and double (sources.ROW_KERNEL_NAMES).
//
// A step's rows are order[first + step * batch + r]: first is the row of the batch where this
// rank's shard starts (0 in one process). Each row writes its loss to row_loss[r], and
// tinynet_add_losses adds them up in row order: atomicAdd's order would change from run to run,
// and so would the epoch's loss.
#include "tinynet.cuh"

template <typename T>
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

template <typename T>
__global__ void tinynet_softmax_ce(T* z, const T* bias, const T* targets, const long long* order,
                                   const long long* step, long long first, long long batch,
                                   int rows, int classes, T inv_n, T tiny, T* delta,
                                   double* row_loss) {
  // z <- softmax(z + bias) in place; row_loss[r] = -sum_k t_k log max(p_k, tiny);
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
  row_loss[r] = loss;
}

template <typename T>
__global__ void tinynet_squared_error(const T* y, const T* targets, const long long* order,
                                      const long long* step, long long first, long long batch,
                                      int rows, int classes, int act, T alpha, T scale, T coef,
                                      T* delta, double* row_loss) {
  // row_loss[r] = scale * sum_k (y_k - t_k)^2; delta = coef (y - t) * f'(z), coef = 2 scale / n,
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
    if (act != TINYNET_ACT_SOFTMAX) g = act_grad(v, g, act, alpha);
    dr[k] = g;
    dot += g * v;
  }
  if (act == TINYNET_ACT_SOFTMAX)
    for (int k = 0; k < classes; ++k) dr[k] = yr[k] * (dr[k] - dot);
  row_loss[r] = loss * (double)scale;
}

template <typename T>
__global__ void tinynet_sigmoid_ce(const T* y, const T* targets, const long long* order,
                                   const long long* step, long long first, long long batch,
                                   int rows, int classes, T inv_n, T tiny, T* delta,
                                   double* row_loss) {
  // sigmoid outputs y, each a yes/no: row_loss[r] = -sum_k [t_k log p_k + (1 - t_k)
  // log(1 - p_k)], p and 1 - p clamped at tiny; delta = (p - t) * inv_n, w.r.t. z + bias.
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  const T* yr = y + (long long)r * classes;
  T* dr = delta + (long long)r * classes;
  const T* tr = targets + order[first + step[0] * batch + r] * classes;
  double loss = 0;
  for (int k = 0; k < classes; ++k) {
    T p = yr[k], q = (T)1 - p;
    loss -= (double)tr[k] * log((double)(p > tiny ? p : tiny)) +
            (1.0 - (double)tr[k]) * log((double)(q > tiny ? q : tiny));
    dr[k] = (p - tr[k]) * inv_n;
  }
  row_loss[r] = loss;
}

template <typename T>
__global__ void tinynet_softmax_rows(T* z, const T* bias, int rows, int classes) {
  // z <- softmax(z + bias), row by row, in place
  int r = blockDim.x * blockIdx.x + threadIdx.x;
  if (r >= rows) return;
  softmax_row(z + (long long)r * classes, bias, classes);
}

__global__ void tinynet_add_losses(const double* row_loss, int rows, double* loss_sum) {
  // one thread: loss_sum += the rows' losses, in row order (the same sum on every run)
  double s = 0;
  for (int r = 0; r < rows; ++r) s += row_loss[r];
  loss_sum[0] += s;
}

__global__ void tinynet_next_step(long long* step) { step[0] += 1; }

template <typename T>
__global__ void tinynet_adam_scalars(const long long* step, const long long* base, T* h) {
  // h: lr, b1, b2, eps, l2 (Adam's weight decay), shrink (AdamW's 1 - lr weight_decay), set per
  // call, then step_size and bias_root, which this one-thread kernel writes before each step
  // for update t = base + step + 1 (backend.adam_scalars' formulas, in double, as Numba's)
  double t = (double)(base[0] + step[0] + 1);
  h[6] = (T)((double)h[0] / (1.0 - pow((double)h[1], t)));
  h[7] = (T)sqrt(1.0 - pow((double)h[2], t));
}
