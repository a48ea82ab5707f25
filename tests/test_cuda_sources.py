"""The CUDA sources of the cupy backend (kernels/cupy/cuda/), checked without a GPU: compiled
by nvcc to PTX for the H100/H200 architecture where nvcc is installed, and built by g++ for
the host and run against the NumPy reference (the GPU run itself is in tests/test_gpu.py)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from tests.host_cuda import GXX, parameters, program
from tinynet.backend import ACTIVATION_CODE, ACTIVATIONS
from tinynet.kernels.cupy import sources

NVCC = shutil.which("nvcc")


def test_every_activation_has_its_code_and_a_branch_in_the_header():
    """The codes come from ACTIVATION_CODE; each activation but identity (the functions' last
    return) and softmax (per row, rows.cu) has a branch in act_value and one in act_grad."""
    for name, code in ACTIVATION_CODE.items():
        assert f"#define TINYNET_ACT_{name.upper()} {code}\n" in sources.defines()
    header = (sources.CUDA_DIR / sources.HEADER_NAME).read_text()
    for name in set(ACTIVATIONS) - {"identity", "softmax"}:
        assert header.count(f"act == TINYNET_ACT_{name.upper()})") == 2, name
    assert sources.ROW_KERNELS.count("TINYNET_ACT_SOFTMAX") >= 3  # defined, and used twice


def test_the_kernels_read_the_files_the_compilers_and_editors_read():
    """rows.cu with the header's text in place of its #include, after the codes; nothing of
    the CUDA left as Python strings but the elementwise kernels' one-line bodies."""
    header = (sources.CUDA_DIR / "tinynet.cuh").read_text()
    rows = (sources.CUDA_DIR / "rows.cu").read_text()
    assert '#include "tinynet.cuh"' in rows
    expected_rows = sources.defines() + rows.replace('#include "tinynet.cuh"', header)
    assert expected_rows == sources.ROW_KERNELS
    assert sources.defines() + header == sources.HEADER
    for spec in sources.ELEMENTWISE.values():
        assert spec.operation.count(";") <= 2 and "\n" not in spec.operation, spec.name
        assert spec.preamble in ("", sources.HEADER), spec.name


def test_every_kernel_the_backend_builds_is_in_the_table():
    """backend.py and plan.py build their elementwise kernels from sources.ELEMENTWISE only: a
    kernel written out in place would escape the compile and rule tests below."""
    from pathlib import Path

    import tinynet.kernels.cupy as package

    texts = {path.name: path.read_text() for path in Path(package.__file__).parent.glob("*.py")}
    made = {name: text.count("ElementwiseKernel(") for name, text in texts.items()}
    assert made == {**dict.fromkeys(texts, 0), "sources.py": 1}  # Elementwise.build alone


def test_every_table_entry_is_a_well_formed_kernel():
    for key, spec in sources.ELEMENTWISE.items():
        assert spec.name.isidentifier() and spec.name.startswith("tinynet_"), key
        names = [name for _, _, name in parameters(spec.in_params + "," + spec.out_params)]
        assert len(set(names)) == len(names), key  # no parameter twice
    assert len({spec.name for spec in sources.ELEMENTWISE.values()}) == len(sources.ELEMENTWISE)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_nvcc_compiles_the_cuda_files(tmp_path, ctype):
    """nvcc compiles rows.cu, which includes tinynet.cuh, from their own files (the activation
    codes as -D flags), every kernel instantiated for ``ctype`` as CuPy's name_expressions
    instantiate them, to PTX for the H100/H200 architecture."""
    names = sources.row_kernel_names(ctype).values()
    instances = tmp_path / "instances.cu"
    instances.write_text(
        '#include "rows.cu"\n'
        + "".join(f"auto* kernel_{i} = &{name};\n" for i, name in enumerate(names))
    )
    codes = [f"-DTINYNET_ACT_{name.upper()}={code}" for name, code in ACTIVATION_CODE.items()]
    done = subprocess.run(
        [NVCC, "-ptx", "-arch=sm_90", f"-I{sources.CUDA_DIR}", *codes, str(instances),
         "-o", str(tmp_path / "rows.ptx")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ptx = (tmp_path / "rows.ptx").read_text()
    for name in names:
        assert name.partition("<")[0] in ptx, name  # each kernel's (mangled) entry


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_nvcc_compiles_every_elementwise_kernel(tmp_path, ctype):
    """Every elementwise kernel of the table as CuPy frames it, the header as its preamble."""
    source = tmp_path / "kernels.cu"
    source.write_text(program(ctype, list(sources.ELEMENTWISE.values())))
    done = subprocess.run(
        [NVCC, "-ptx", "-arch=sm_90", str(source), "-o", str(tmp_path / "kernels.ptx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


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
        + sources.HEADER
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
# each SGD kernel, called as backend.py and plan.py call it (the arguments in their order)
SGD_CALLS = {
    "sgd": "tinynet_sgd(gs[s], lr, wd, ws, 8)",
    "momentum": "tinynet_momentum(gs[s], lr, m, nesterov, wd, ws, vs, 8)",
    "plan_sgd": "tinynet_plan_sgd(gs[s], lr_m, nesterov, wd, ws, vs, 8)",
    "plan_sgd_decay": "tinynet_plan_sgd_decay(gs[s], lr_m, wd, ws, 8)",
}


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
@pytest.mark.parametrize(
    ("case", "kernel"),
    [(case, "momentum" if SGD_CASES[case][0] else "sgd") for case in SGD_CASES]
    + [(case, "plan_sgd" if SGD_CASES[case][0] else "plan_sgd_decay") for case in SGD_CASES],
)
def test_the_cuda_sgd_kernels_match_the_reference(tmp_path, case, kernel):
    """Each SGD kernel of the table (the per-call kernels', and the fused plan's with lr and
    momentum in device memory), built for the host with g++ as CuPy frames it, three steps on
    random parameters, against the NumPy reference's sgd_update in float64. The plan runs
    plain SGD through its decay kernel in a data-parallel run (weight decay 0)."""
    from tinynet.kernels.numpy_backend import NumpyBackend

    momentum, nesterov, wd = SGD_CASES[case]
    rng = np.random.default_rng(0)
    w0, v0 = rng.normal(size=8), rng.normal(size=8)
    grads = rng.normal(size=(3, 8))
    lr = 0.05
    w, v = w0.copy(), v0.copy()
    for g in grads:
        NumpyBackend().sgd_update(w, g, lr, v if momentum else None, momentum, nesterov, wd)
    code = program(
        "double", [sources.ELEMENTWISE[kernel]], frozenset({"lr", "m", "nesterov", "wd"})
    )
    code += (
        f"int main() {{\n  double ws[] = {{{_c_array(w0)}}};\n"
        + f"  double vs[] = {{{_c_array(v0)}}};\n"
        + f"  const double gs[3][8] = {{{', '.join('{' + _c_array(g) + '}' for g in grads)}}};\n"
        + f"  const T lr = {lr!r}, m = {momentum!r}, wd = {wd!r};\n"
        + f"  const bool nesterov = {str(nesterov).lower()};\n"
        + "  const T lr_m[2] = {lr, m};\n"
        + f"  for (int s = 0; s < 3; ++s) {SGD_CALLS[kernel]};\n"
        + '  for (int i = 0; i < 8; ++i) printf("%.17g %.17g\\n", ws[i], vs[i]);\n'
        + "}\n"
    )
    w_cuda, v_cuda = _host_columns(tmp_path, "rule", code)
    np.testing.assert_allclose(w_cuda, w, rtol=1e-15)
    if momentum:
        np.testing.assert_allclose(v_cuda, v, rtol=1e-15)


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("kernel", ["adam", "plan_adam"])
def test_the_cuda_adam_kernels_match_the_reference(tmp_path, kernel, decoupled):
    """Each Adam kernel, built for the host with g++ as CuPy frames it, five updates in two
    calls of 2 and 3, against the NumPy reference's adam_update in float64. The per-call
    kernel takes each update's step_size and bias_root from the host; the fused plan's from
    tinynet_adam_scalars, which writes them from the step counter and the updates before the
    call (base)."""
    from tinynet.backend import adam_scalars
    from tinynet.kernels.numpy_backend import NumpyBackend

    rng = np.random.default_rng(2)
    w0, grads = rng.normal(size=8), rng.normal(size=(5, 8))
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.99), 1e-6, 0.05
    w, m, v = w0.copy(), np.zeros(8), np.zeros(8)
    sizes, roots = [], []
    for step, g in enumerate(grads, start=1):
        NumpyBackend().adam_update(w, g, m, v, lr, (b1, b2), eps, step, wd, decoupled)
        sizes.append(lr / (1 - b1**step))  # by hand: Adam's bias corrections
        roots.append((1 - b2**step) ** 0.5)
    _, _, _, _, _, l2, shrink = adam_scalars(lr, (b1, b2), eps, 1, wd, decoupled)
    update = {
        "adam": "tinynet_adam(gs[done], h[1], h[2], sizes[done], roots[done], h[3], h[4], h[5], "
        "ws, ms, vs, 8);",
        "plan_adam": "tinynet_adam_scalars<double>(&step, &base, h); "
        "tinynet_plan_adam(gs[done], h, ws, ms, vs, 8);",
    }[kernel]
    scalars = frozenset({"b1", "b2", "step_size", "bias_root", "eps", "wd", "shrink"})
    code = program("double", [sources.ELEMENTWISE[kernel]], scalars, rows=True)
    code += (
        f"int main() {{\n  double ws[] = {{{_c_array(w0)}}};\n"
        + "  double ms[8] = {0}, vs[8] = {0};\n"
        + f"  const double gs[5][8] = {{{', '.join('{' + _c_array(g) + '}' for g in grads)}}};\n"
        + f"  const double sizes[5] = {{{_c_array(sizes)}}}, roots[5] = {{{_c_array(roots)}}};\n"
        + f"  T h[8] = {{{lr!r}, {b1!r}, {b2!r}, {eps!r}, {l2!r}, {shrink!r}, 0, 0}};\n"
        + "  long long done = 0;\n"
        + "  for (long long calls : {2, 3}) {\n"
        + "    const long long base = done;\n"
        + f"    for (long long step = 0; step < calls; ++step, ++done) {{ {update} }}\n"
        + "  }\n"
        + '  for (int i = 0; i < 8; ++i) printf("%.17g %.17g %.17g\\n", ws[i], ms[i], vs[i]);\n'
        + "}\n"
    )
    w_cuda, m_cuda, v_cuda = _host_columns(tmp_path, kernel, code)
    np.testing.assert_allclose(w_cuda, w, rtol=1e-14)
    np.testing.assert_allclose(m_cuda, m, rtol=1e-14)
    np.testing.assert_allclose(v_cuda, v, rtol=1e-14)


# One step of the fused epoch as one rank sees it: the global batch of 5 rows at step 1 of a
# permutation of 12 samples, and this rank's shard, rows 2..4 of the batch (first = 2).
STEP, BATCH, FIRST, ROWS = 1, 5, 2, 3


def _shard_rows(order: np.ndarray) -> np.ndarray:
    start = FIRST + STEP * BATCH
    return order[start : start + ROWS]


def _longs(values) -> str:
    return ", ".join(str(int(v)) for v in values)


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
def test_the_cuda_gather_takes_the_shards_rows(tmp_path):
    """plan_gather, built for the host as CuPy frames it: the shard's rows of uint8 pixels,
    scaled, against NumPy's fancy indexing."""
    rng = np.random.default_rng(3)
    X, order = rng.integers(0, 256, size=(12, 4)), rng.permutation(12)
    scale, offset = 1 / 255, -0.5
    want = X[_shard_rows(order)] * scale + offset
    scalars = frozenset({"first", "batch", "width", "scale", "offset"})
    code = program("double", [sources.ELEMENTWISE["plan_gather"]], scalars)
    code += (
        f"int main() {{\n  const X x[] = {{{_longs(X.ravel())}}};\n"
        + f"  const long long order[] = {{{_longs(order)}}}, step[] = {{{STEP}}};\n"
        + f"  T y[{ROWS * 4}];\n"
        + f"  tinynet_gather(x, order, step, {FIRST}, {BATCH}, 4, {scale!r}, {offset!r}, y, "
        + f"{ROWS * 4});\n"
        + f'  for (int i = 0; i < {ROWS}; ++i) printf("%.17g %.17g %.17g %.17g\\n", y[4 * i],'
        + " y[4 * i + 1], y[4 * i + 2], y[4 * i + 3]);\n}\n"
    )
    np.testing.assert_allclose(_host_columns(tmp_path, "gather", code).T, want, rtol=1e-15)


def _row_kernel_program(call: str, z: np.ndarray, T: np.ndarray, order: np.ndarray) -> str:
    """ROW_KERNELS for the host (one thread: blockIdx.x is the row) and a main that runs
    ``call`` for each row of the shard, then tinynet_add_losses on the rows' losses, and prints
    the outputs z, delta and the loss sum."""
    rows, classes = z.shape
    return program("double", [], rows=True) + (
        f"int main() {{\n  T z[] = {{{_c_array(z.ravel())}}}, delta[{z.size}];\n"
        + f"  double row_loss[{rows}];\n"
        + f"  const T bias[] = {{{_c_array(np.linspace(-0.3, 0.4, classes))}}};\n"
        + f"  const T targets[] = {{{_c_array(T.ravel())}}};\n"
        + f"  const long long order[] = {{{_longs(order)}}}, step[] = {{{STEP}}};\n"
        + "  double loss = 0.25;  // what earlier steps added: the kernel adds to it\n"
        + f"  for (unsigned r = 0; r < {rows}; ++r) {{ blockIdx.x = r; {call}; }}\n"
        + f"  tinynet_add_losses(row_loss, {rows}, &loss);\n"
        + f"  for (int i = 0; i < {z.size}; ++i)\n"
        + '    printf("%.17g %.17g %.17g\\n", z[i], delta[i], loss);\n}\n'
    )


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
def test_the_cuda_softmax_cross_entropy_kernel_on_a_shard(tmp_path):
    """tinynet_softmax_ce for the shard's rows: the softmax of z + b, the rows' cross-entropy
    summed, and the deltas (p - t) / 5 for the mean over the global batch of 5, computed
    here in float64 from the formulas."""
    rng = np.random.default_rng(4)
    z, order = rng.normal(size=(ROWS, 4)), rng.permutation(12)
    T = np.eye(4)[rng.integers(0, 4, 12)]
    v = z + np.linspace(-0.3, 0.4, 4)
    p = np.exp(v - v.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = T[_shard_rows(order)]
    call = (
        f"tinynet_softmax_ce<double>(z, bias, targets, order, step, {FIRST}, {BATCH}, {ROWS}, "
        f"4, {1 / BATCH!r}, 1e-300, delta, row_loss)"
    )
    got_p, got_delta, got_loss = _host_columns(
        tmp_path, "softmax_ce", _row_kernel_program(call, z, T, order)
    )
    np.testing.assert_allclose(got_p, p.ravel(), rtol=1e-14)
    np.testing.assert_allclose(got_delta, ((p - t) / BATCH).ravel(), rtol=1e-13, atol=1e-17)
    np.testing.assert_allclose(got_loss[0], 0.25 - (t * np.log(p)).sum(), rtol=1e-14)


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
def test_the_cuda_squared_error_kernel_on_a_shard(tmp_path):
    """tinynet_squared_error for the shard's sigmoid outputs: scale * (y - t)^2 summed, and the
    deltas coef (y - t) y (1 - y) with coef = 2 scale / 5 (the mean over the global batch),
    computed here in float64 from the formulas."""
    rng = np.random.default_rng(5)
    y, order = rng.uniform(0.05, 0.95, size=(ROWS, 4)), rng.permutation(12)
    T = rng.uniform(size=(12, 4))
    t, scale = T[_shard_rows(order)], 0.5
    coef = 2 * scale / BATCH
    call = (
        f"tinynet_squared_error<double>(z, targets, order, step, {FIRST}, {BATCH}, {ROWS}, 4, "
        f"{ACTIVATION_CODE['sigmoid']}, 0.0, {scale!r}, {coef!r}, delta, row_loss)"
    )
    _, got_delta, got_loss = _host_columns(
        tmp_path, "squared_error", _row_kernel_program(call, y, T, order)
    )
    np.testing.assert_allclose(got_delta, (coef * (y - t) * y * (1 - y)).ravel(), rtol=1e-14)
    np.testing.assert_allclose(got_loss[0], 0.25 + scale * ((y - t) ** 2).sum(), rtol=1e-14)


def test_the_package_data_carries_every_cuda_file():
    """An installed wheel reads the CUDA files at run time: pyproject's package-data must
    match each of them (a wheel built from it, `pip wheel .`, lists them)."""
    import fnmatch
    import sys

    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11's")
    import tomllib

    repo = sources.CUDA_DIR.parents[2]
    config = tomllib.loads((repo / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["tinynet.kernels.cupy"]
    files = [path.name for path in sources.CUDA_DIR.iterdir()]
    assert {"tinynet.cuh", "rows.cu"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(f"cuda/{name}", pattern) for pattern in patterns), name


@pytest.mark.skipif(GXX is None, reason="g++ not installed")
def test_the_cuda_sigmoid_cross_entropy_kernel_on_a_shard(tmp_path):
    """tinynet_sigmoid_ce for the shard's sigmoid outputs (one of them rounded to 1, clamped):
    -[t log p + (1 - t) log(1 - p)] summed, and the deltas (p - t) / 5 for the mean over the
    global batch of 5, computed here in float64 from the formulas."""
    rng = np.random.default_rng(6)
    p, order = rng.uniform(0.05, 0.95, size=(ROWS, 4)), rng.permutation(12)
    p[0, 0] = 1.0  # log(1 - p) would be -inf: the kernel clamps 1 - p at tiny
    T = rng.integers(0, 2, size=(12, 4)).astype(float)
    t = T[_shard_rows(order)]
    tiny = 1e-300
    call = (
        f"tinynet_sigmoid_ce<double>(z, targets, order, step, {FIRST}, {BATCH}, {ROWS}, 4, "
        f"{1 / BATCH!r}, {tiny!r}, delta, row_loss)"
    )
    _, got_delta, got_loss = _host_columns(
        tmp_path, "sigmoid_ce", _row_kernel_program(call, p, T, order)
    )
    want = -(t * np.log(p) + (1 - t) * np.log(np.maximum(1 - p, tiny))).sum()
    np.testing.assert_allclose(got_delta, ((p - t) / BATCH).ravel(), rtol=1e-14, atol=1e-17)
    np.testing.assert_allclose(got_loss[0], 0.25 + want, rtol=1e-14)
