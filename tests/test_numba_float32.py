"""The Numba update rules keep float32 in float32: a float64 constant slipped into a float32
step widens every operation after it (Numba promotes float32 op float64), which costs twice the
vector width and, for Adam's sqrt and division, twice the time, with no test of values noticing
(float64 arithmetic rounded back to float32 is only more accurate)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from numba import njit

from tinynet import backend as backend_module

if backend_module.backend_status()["numba"] is not None:
    pytest.skip(backend_module.backend_status()["numba"], allow_module_level=True)

from tinynet.kernels.numba import elementwise
from tinynet.kernels.numba.compile import FAST

WIDENED = re.compile(r"\bfpext\b|\b(fadd|fsub|fmul|fdiv)( \w+)* double\b|llvm\.sqrt\.f64")


def _float32_ir(kernel, *args) -> str:
    """The LLVM IR of a fresh, uncached compile of ``kernel`` for these float32 arguments."""
    fresh = njit(fastmath=FAST, error_model="numpy")(kernel.py_func)
    fresh(*args)
    (ir,) = fresh.inspect_llvm().values()
    return ir


def _arrays(n=64):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(np.float32) for _ in range(4)]


def test_the_adam_pass_computes_in_float32():
    w, g, m, v = _arrays()
    v = np.abs(v)
    constants = tuple(np.float32(c) for c in (0.9, 0.999, 1e-3, 0.5, 1e-8, 1e-2, 1.0))
    ir = _float32_ir(elementwise.adam, w, g, m, v, constants)
    assert "<16 x float>" in ir or "<8 x float>" in ir  # vectorised, so the check saw the loop
    assert not WIDENED.search(ir), WIDENED.search(ir).group(0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_sgd_pass_computes_in_float32(momentum):
    w, g, v, _ = _arrays()
    f = np.float32
    ir = _float32_ir(elementwise.sgd, w, g, f(0.1), v, f(momentum), True, f(1e-2))
    assert not WIDENED.search(ir), WIDENED.search(ir).group(0)


def test_adam_flushes_subnormal_moments_to_zero():
    """Moments below the smallest normal number become 0 (x86 divides subnormals slowly);
    normal ones follow Adam's rule. Expected values: adam_step's formulas in float64."""
    f = np.float32
    tiny = float(np.finfo(f).tiny)
    m0 = np.array([tiny * 0.5, tiny * 4, 1e-3, -tiny * 0.5], f)  # b1 m: below, above, normal
    v0 = np.array([tiny * 0.5, tiny * 4, 1e-6, 1e-6], f)
    w, g = np.ones(4, f), np.zeros(4, f)
    b1, b2 = 0.9, 0.999
    constants = tuple(f(c) for c in (b1, b2, 1e-3, 0.5, 1e-8, 0.0, 1.0))
    m, v = m0.copy(), v0.copy()
    elementwise.adam(w, g, m, v, constants)
    m_exact, v_exact = b1 * m0.astype(np.float64), b2 * v0.astype(np.float64)
    np.testing.assert_array_equal(m[[0, 3]], 0.0)
    np.testing.assert_allclose(m[[1, 2]], m_exact[[1, 2]], rtol=1e-6)
    assert v[0] == 0.0
    np.testing.assert_allclose(v[1:], v_exact[1:], rtol=1e-6)
    step = 1e-3 * m_exact / (np.sqrt(np.where(v_exact >= tiny, v_exact, 0)) / 0.5 + 1e-8)
    np.testing.assert_allclose(w, 1 - step, rtol=1e-6)
