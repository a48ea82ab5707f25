"""The CUDA sources of the cupy backend, checked without a GPU: generated from the one
activation table, and compiled by nvcc to PTX for the H100/H200 architecture where nvcc is
installed (the GPU run itself is in tests/test_gpu.py)."""

from __future__ import annotations

import shutil
import subprocess

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
    """The two elementwise bodies inside kernels shaped as CuPy generates them: the preamble
    first, then one thread per element with the parameters as local names."""
    return (
        sources.ACTIVATION_FUNCTIONS
        + f"typedef {ctype} T;\n"
        + 'extern "C" __global__ void bias_act(const T* zp, const T* bp, int act, T* yp, int n) {\n'
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + f"  const T z = zp[i]; const T b = bp[i]; T y;\n  {sources.BIAS_ACT}\n  yp[i] = y;\n}}\n"
        + 'extern "C" __global__ void grad(const T* yp, const T* dyp, int act, T* dzp, int n) {\n'
        + "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
        + f"  const T y = yp[i]; const T dy = dyp[i]; T dz;\n  {sources.ACT_GRAD}\n"
        + "  dzp[i] = dz;\n}\n"
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
