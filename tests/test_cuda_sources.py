"""The CUDA sources of the cupy backend, checked without a GPU: generated from the one
activation table, and compiled by nvcc to PTX for the H100/H200 architecture where nvcc is
installed (the GPU run itself is in tests/test_gpu.py)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from tinynet.backend import ACTIVATION_CODE, ACTIVATIONS
from tinynet.kernels.cupy import sources

NVCC = shutil.which("nvcc")


def test_every_elementwise_activation_has_cuda_and_the_shared_code():
    assert set(sources.ACTIVATION_CUDA) == set(ACTIVATIONS) - {"softmax"}  # softmax: per row
    for name, code in ACTIVATION_CODE.items():
        if name != "softmax":
            assert (
                f"if (act == {code}) return {sources.ACTIVATION_CUDA[name][0]}".replace(
                    "(T)", "(F)"
                )
                in sources.ACTIVATION_FUNCTIONS
            )
    assert f"#define SOFTMAX {ACTIVATION_CODE['softmax']}" in sources.ROW_KERNELS


def _elementwise_harness(ctype: str) -> str:
    """The elementwise bodies inside kernels shaped as CuPy generates them: the preamble first,
    then one thread per element with the parameters as local names (outputs as references)."""
    return (
        sources.ACTIVATION_FUNCTIONS
        + f"typedef {ctype} T;\n"
        + 'extern "C" __global__ void bias_act(const T* zp, const T* bp, int act, T alpha,\n'
        + "                                    T* yp, int n) {\n"
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + f"  const T z = zp[i]; const T b = bp[i]; T y;\n  {sources.BIAS_ACT}\n  yp[i] = y;\n}}\n"
        + 'extern "C" __global__ void grad(const T* yp, const T* dyp, int act, T alpha, T* dzp,\n'
        + "                                int n) {\n"
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + f"  const T y = yp[i]; const T dy = dyp[i]; T dz;\n  {sources.ACT_GRAD}\n"
        + "  dzp[i] = dz;\n}\n"
        + sources.SGD_STEP
        + 'extern "C" __global__ void sgd(const T* gp, T lr, T wd, T* wp, int n) {\n'
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + f"  const T g = gp[i]; T& w = wp[i];\n  {sources.SGD}\n}}\n"
        + 'extern "C" __global__ void momentum(const T* gp, T lr, T m, bool nesterov, T wd,\n'
        + "                                    T* wp, T* vp, int n) {\n"
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + f"  const T g = gp[i]; T& w = wp[i]; T& v = vp[i];\n  {sources.MOMENTUM}\n}}\n"
        + 'extern "C" __global__ void plan_sgd(const T* gp, const T* lr_m, bool nesterov, T wd,\n'
        + "                                    T* wp, T* vp, int n) {\n"
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + "  const T g = gp[i]; T& w = wp[i]; T& v = vp[i];\n"
        + f"  {sources.SGD_FROM_DEVICE}\n}}\n"
        + 'extern "C" __global__ void plan_sgd_decay(const T* gp, const T* lr_m, T wd, T* wp,\n'
        + "                                          int n) {\n"
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + "  const T g = gp[i]; T& w = wp[i];\n"
        + f"  {sources.SGD_DECAY_FROM_DEVICE}\n}}\n"
        + sources.ADAM_STEP
        + 'extern "C" __global__ void adam(const T* gp, T b1, T b2, T step_size, T bias_root,\n'
        + "                                T eps, T wd, T shrink, T* wp, T* mp, T* vp, int n) {\n"
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + "  const T g = gp[i]; T& w = wp[i]; T& m = mp[i]; T& v = vp[i];\n"
        + f"  {sources.ADAM}\n}}\n"
        + 'extern "C" __global__ void plan_adam(const T* gp, const T* h, T* wp, T* mp, T* vp,\n'
        + "                                     int n) {\n"
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + "  const T g = gp[i]; T& w = wp[i]; T& m = mp[i]; T& v = vp[i];\n"
        + f"  {sources.ADAM_FROM_DEVICE}\n}}\n"
    )


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("ctype", ["float", "double"])
@pytest.mark.parametrize("which", ["row_kernels", "elementwise"])
def test_the_cuda_sources_compile(tmp_path, ctype, which):
    code = (
        f"typedef {ctype} T;\n" + sources.ROW_KERNELS
        if which == "row_kernels"
        else _elementwise_harness(ctype)
    )
    source = tmp_path / "kernels.cu"
    source.write_text(code)
    done = subprocess.run(
        [NVCC, "-ptx", "-arch=sm_90", str(source), "-o", str(tmp_path / "kernels.ptx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


GXX = shutil.which("g++")


def _c_array(values: np.ndarray) -> str:
    return ", ".join(repr(float(v)) for v in values)  # repr of a float: exact, and valid C


def _host_columns(tmp_path, name: str, program: str) -> np.ndarray:
    """Build ``program`` (C++ printing rows of numbers) with g++, run it, and return the
    columns it printed."""
    source, binary = tmp_path / f"{name}.cpp", tmp_path / name
    source.write_text(program)
    build = subprocess.run(
        [GXX, "-O1", str(source), "-o", str(binary)], capture_output=True, text=True, timeout=120
    )
    assert build.returncode == 0, build.stderr
    out = subprocess.run([binary], capture_output=True, text=True, timeout=60).stdout
    return np.array([line.split() for line in out.splitlines()], float).T


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
@pytest.mark.parametrize("name", sorted(set(ACTIVATIONS) - {"softmax"}))
def test_the_cuda_activation_formulas_match_the_reference(tmp_path, name):
    """The generated device functions, built for the host with g++ (``__device__`` defined away)
    and run on a grid of inputs, against the NumPy reference's activate / activation_backward."""
    from tinynet.kernels.numpy_backend import NumpyBackend

    z = np.array([-1000.0, -3.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2.0, 30.0, 1000.0])
    alpha = 0.3 if name == "leaky_relu" else 0.0  # not 0.01: a slope a default cannot hide
    y = NumpyBackend().activate(z.reshape(1, -1).copy(), name, alpha).ravel()
    dy = np.linspace(-2.0, 2.0, z.size)
    program = (
        "#include <cmath>\n#include <cstdio>\nusing std::exp; using std::tanh;\n"
        "#define __device__\n"
        + sources.ACTIVATION_FUNCTIONS
        + "int main() {\n"
        + f"  const double z[] = {{{_c_array(z)}}};\n"
        + f"  const double y[] = {{{_c_array(y)}}};\n"
        + f"  const double dy[] = {{{_c_array(dy)}}};\n"
        + f"  for (int i = 0; i < {z.size}; ++i)\n"
        + f'    printf("%.17g %.17g\\n", act_value(z[i], {ACTIVATION_CODE[name]}, {alpha!r}),\n'
        + f"           act_grad(y[i], dy[i], {ACTIVATION_CODE[name]}, {alpha!r}));\n"
        + "}\n"
    )
    value, grad = _host_columns(tmp_path, "act", program)
    np.testing.assert_allclose(value, y, rtol=1e-15, atol=1e-300)
    expected_grad = NumpyBackend().activation_backward(name, y[None], dy[None], alpha).ravel()
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-15, atol=1e-300)


SGD_CASES = {  # name: (momentum, nesterov, weight_decay)
    "sgd": (0.0, False, 0.0),
    "sgd-decay": (0.0, False, 0.01),
    "momentum": (0.9, False, 0.0),
    "nesterov-decay": (0.9, True, 0.01),
}


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
@pytest.mark.parametrize(
    ("case", "from_device"),
    [(case, False) for case in SGD_CASES]
    + [(case, True) for case in SGD_CASES if case != "sgd"],  # the plan's plain SGD: a GEMM
    ids=lambda value: {False: "kernel", True: "plan"}.get(value, value),
)
def test_the_cuda_update_rule_matches_the_reference(tmp_path, case, from_device):
    """The SGD bodies the CUDA kernels run (the per-call kernels', and the fused plan's with lr
    and momentum in device memory), built for the host with g++, three steps on random
    parameters, against the NumPy reference's sgd_update in float64."""
    from tinynet.kernels.numpy_backend import NumpyBackend

    momentum, nesterov, wd = SGD_CASES[case]
    rng = np.random.default_rng(0)
    w0, v0 = rng.normal(size=8), rng.normal(size=8)
    grads = rng.normal(size=(3, 8))
    lr = 0.05
    w, v = w0.copy(), v0.copy()
    for g in grads:
        NumpyBackend().sgd_update(w, g, lr, v if momentum else None, momentum, nesterov, wd)
    if from_device:
        body = sources.SGD_FROM_DEVICE if momentum else sources.SGD_DECAY_FROM_DEVICE
    else:
        body = sources.MOMENTUM if momentum else sources.SGD
    program = (
        "#include <cstdio>\n#define __device__\ntypedef double T;\n"
        + sources.SGD_STEP
        + f"int main() {{\n  double ws[] = {{{_c_array(w0)}}};\n"
        + f"  double vs[] = {{{_c_array(v0)}}};\n"
        + f"  const double gs[3][8] = {{{', '.join('{' + _c_array(g) + '}' for g in grads)}}};\n"
        + f"  const T lr = {lr!r}, m = {momentum!r}, wd = {wd!r};\n"
        + f"  const bool nesterov = {str(nesterov).lower()};\n"
        + "  const T lr_m[2] = {lr, m};\n"
        + "  for (int s = 0; s < 3; ++s)\n"
        + "    for (int i = 0; i < 8; ++i) {\n"
        + "      const T g = gs[s][i]; T& w = ws[i];"
        + (" T& v = vs[i];\n" if momentum else "\n")
        + f"      {body}\n"
        + "    }\n"
        + '  for (int i = 0; i < 8; ++i) printf("%.17g %.17g\\n", ws[i], vs[i]);\n'
        + "}\n"
    )
    w_cuda, v_cuda = _host_columns(tmp_path, "rule", program)
    np.testing.assert_allclose(w_cuda, w, rtol=1e-15)
    if momentum:
        np.testing.assert_allclose(v_cuda, v, rtol=1e-15)


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_the_cuda_plan_adam_matches_the_reference(tmp_path, decoupled):
    """The fused plan's Adam, built for the host with g++: tinynet_adam_scalars writes each
    update's step_size and bias_root from the step counter and the updates before the call
    (base), then ADAM_FROM_DEVICE applies the rule; two calls, of 2 and 3 updates, against five
    updates of the NumPy reference's adam_update in float64."""
    from tinynet.backend import adam_scalars
    from tinynet.kernels.numpy_backend import NumpyBackend

    rng = np.random.default_rng(2)
    w0, grads = rng.normal(size=8), rng.normal(size=(5, 8))
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.99), 1e-6, 0.05
    w, m, v = w0.copy(), np.zeros(8), np.zeros(8)
    for step, g in enumerate(grads, start=1):
        NumpyBackend().adam_update(w, g, m, v, lr, (b1, b2), eps, step, wd, decoupled)
    _, _, _, _, _, l2, shrink = adam_scalars(lr, (b1, b2), eps, 1, wd, decoupled)
    program = (
        "#include <cmath>\n#include <cstdio>\n#include <initializer_list>\n"
        "using std::sqrt; using std::pow;\n"
        "#define __device__\n#define __global__\ntypedef double T;\n"
        + sources.ADAM_STEP
        + sources.ADAM_SCALARS
        + f"int main() {{\n  double ws[] = {{{_c_array(w0)}}};\n"
        + "  double ms[8] = {0}, vs[8] = {0};\n"
        + f"  const double gs[5][8] = {{{', '.join('{' + _c_array(g) + '}' for g in grads)}}};\n"
        + f"  T h[8] = {{{lr!r}, {b1!r}, {b2!r}, {eps!r}, {l2!r}, {shrink!r}, 0, 0}};\n"
        + "  long long done = 0;\n"
        + "  for (long long calls : {2, 3}) {\n"
        + "    const long long base = done;\n"
        + "    for (long long step = 0; step < calls; ++step) {\n"
        + "      tinynet_adam_scalars(&step, &base, h);\n"
        + "      for (int i = 0; i < 8; ++i) {\n"
        + "        const T g = gs[done][i]; T& w = ws[i]; T& m = ms[i]; T& v = vs[i];\n"
        + f"        {sources.ADAM_FROM_DEVICE}\n"
        + "      }\n"
        + "      ++done;\n"
        + "    }\n"
        + "  }\n"
        + '  for (int i = 0; i < 8; ++i) printf("%.17g %.17g %.17g\\n", ws[i], ms[i], vs[i]);\n'
        + "}\n"
    )
    w_cuda, m_cuda, v_cuda = _host_columns(tmp_path, "plan_adam", program)
    np.testing.assert_allclose(w_cuda, w, rtol=1e-14)
    np.testing.assert_allclose(m_cuda, m, rtol=1e-14)
    np.testing.assert_allclose(v_cuda, v, rtol=1e-14)


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_the_cuda_adam_rule_matches_the_reference(tmp_path, decoupled):
    """The Adam body the CUDA kernels run, built for the host with g++, three updates on random
    parameters, against the NumPy reference's adam_update in float64."""
    from tinynet.kernels.numpy_backend import NumpyBackend

    rng = np.random.default_rng(1)
    w0 = rng.normal(size=8)
    grads = rng.normal(size=(3, 8))
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.99), 1e-6, 0.05
    w, m, v = w0.copy(), np.zeros(8), np.zeros(8)
    constants = []
    for step, g in enumerate(grads, start=1):
        NumpyBackend().adam_update(w, g, m, v, lr, (b1, b2), eps, step, wd, decoupled)
        constants.append((lr / (1 - b1**step), (1 - b2**step) ** 0.5))
    shrink, l2 = (1 - lr * wd, 0.0) if decoupled else (1.0, wd)
    program = (
        "#include <cmath>\n#include <cstdio>\nusing std::sqrt;\n#define __device__\n"
        "typedef double T;\n"
        + sources.ADAM_STEP
        + f"int main() {{\n  double ws[] = {{{_c_array(w0)}}};\n"
        + "  double ms[8] = {0}, vs[8] = {0};\n"
        + f"  const double gs[3][8] = {{{', '.join('{' + _c_array(g) + '}' for g in grads)}}};\n"
        + f"  const double sizes[3] = {{{_c_array([c[0] for c in constants])}}};\n"
        + f"  const double roots[3] = {{{_c_array([c[1] for c in constants])}}};\n"
        + f"  const T b1 = {b1!r}, b2 = {b2!r}, eps = {eps!r}, wd = {l2!r}, shrink = {shrink!r};\n"
        + "  for (int s = 0; s < 3; ++s)\n"
        + "    for (int i = 0; i < 8; ++i) {\n"
        + "      const T g = gs[s][i]; T& w = ws[i]; T& m = ms[i]; T& v = vs[i];\n"
        + "      const T step_size = sizes[s], bias_root = roots[s];\n"
        + f"      {sources.ADAM}\n"
        + "    }\n"
        + '  for (int i = 0; i < 8; ++i) printf("%.17g %.17g %.17g\\n", ws[i], ms[i], vs[i]);\n'
        + "}\n"
    )
    w_cuda, m_cuda, v_cuda = _host_columns(tmp_path, "adam", program)
    np.testing.assert_allclose(w_cuda, w, rtol=1e-14)
    np.testing.assert_allclose(m_cuda, m, rtol=1e-14)
    np.testing.assert_allclose(v_cuda, v, rtol=1e-14)
