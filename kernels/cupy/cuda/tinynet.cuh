// The rules every CUDA kernel of the cupy backend applies, each once: the activations and their
// gradients, SGD's step and Adam's. Device functions over the float type F.
//
// The activation codes TINYNET_ACT_<NAME> come from tinynet.backend.ACTIVATION_CODE: the
// backend defines them before this file (sources.defines()), and so do the tests that compile
// it with nvcc and g++.
#ifndef TINYNET_CUH
#define TINYNET_CUH

#ifndef TINYNET_ACT_SOFTMAX
#error "define the activation codes first: kernels/cupy/sources.py, defines()"
#endif

// f(v) for v = z + b. alpha is the activation's parameter (leaky_relu's slope), ignored by the
// others. Softmax couples a row: the per-row kernels (rows.cu) handle it.
template <typename F>
__device__ F act_value(F v, int act, F alpha) {
  if (act == TINYNET_ACT_STEP) return v >= (F)0 ? (F)1 : (F)0;
  if (act == TINYNET_ACT_SIGMOID) return (F)1 / ((F)1 + exp(-v));
  if (act == TINYNET_ACT_TANH) return tanh(v);
  if (act == TINYNET_ACT_RELU) return v < (F)0 ? (F)0 : v;
  if (act == TINYNET_ACT_LEAKY_RELU) return v > (F)0 ? v : alpha * v;
  return v;  // identity
}

// dz = dy f'(z), from the saved output y = f(z), so that a NaN dy stays NaN where the
// reference's does, and step's gradient is exactly 0.
template <typename F>
__device__ F act_grad(F y, F dy, int act, F alpha) {
  if (act == TINYNET_ACT_STEP) return (F)0;
  if (act == TINYNET_ACT_SIGMOID) return dy * y * ((F)1 - y);
  if (act == TINYNET_ACT_TANH) return dy * ((F)1 - y * y);
  if (act == TINYNET_ACT_RELU) return dy * (y > (F)0 ? (F)1 : (F)0);
  if (act == TINYNET_ACT_LEAKY_RELU) return dy * (y > (F)0 ? (F)1 : alpha);
  return dy;  // identity
}

// torch.optim.SGD (dampening 0): g <- g + weight_decay w; v <- momentum v + g;
// w <- w - lr d, d = g + momentum v (nesterov) or v. Plain SGD is momentum 0 with v 0. Where
// plain SGD's gradient is a GEMM's sum, the GEMM adds it into w with alpha = -lr instead
// (plan.py): the step is linear in g, and no pass over w is needed.
template <typename F>
__device__ void sgd_step(F& w, F g, F& v, F lr, F momentum, bool nesterov, F weight_decay) {
  if (weight_decay != (F)0) g += weight_decay * w;
  v = momentum * v + g;
  w -= lr * (nesterov ? g + momentum * v : v);
}

// torch.optim.Adam's step, and AdamW's: w <- w shrink (AdamW: 1 - lr weight_decay), g <- g +
// weight_decay w (Adam); m, v the moments; step_size = lr / (1 - b1^t), bias_root =
// sqrt(1 - b2^t) at update t (kernels/numba/elementwise.py's adam_step is the Numba twin).
template <typename F>
__device__ void adam_step(F& w, F g, F& m, F& v, F b1, F b2, F step_size, F bias_root, F eps,
                          F weight_decay, F shrink) {
  if (weight_decay != (F)0) g += weight_decay * w;
  m = b1 * m + ((F)1 - b1) * g;
  v = b2 * v + ((F)1 - b2) * g * g;
  w = w * shrink - step_size * m / (sqrt(v) / bias_root + eps);
}

#endif  // TINYNET_CUH
