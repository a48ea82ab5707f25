"""The Numba backend's float32 exp (plain arithmetic, so it vectorises) against float64 libm."""

from __future__ import annotations

import numpy as np
import pytest

from tinynet import backend as backend_module

if backend_module.backend_status()["numba"] is not None:
    pytest.skip(backend_module.backend_status()["numba"], allow_module_level=True)

from tinynet.kernels.numba.elementwise import exp_row

FLOAT32_EPS = float(np.finfo(np.float32).eps)
SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def test_float32_exp_is_within_one_eps_and_two_at_the_ends():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.linspace(-110, 90, 400_001, dtype=np.float32),
            rng.uniform(-1, 1, 100_000).astype(np.float32),
            rng.normal(0, 1e-6, 1000).astype(np.float32),
            np.float32([0.0, -0.0, 88.0, 88.72283, 88.7229, -86.0, -87.33654, -103.9721]),
        ]
    )
    got = x.copy()
    exp_row(got)
    exact = np.exp(x.astype(np.float64))
    normal = (exact >= SMALLEST_NORMAL) & (exact <= np.finfo(np.float32).max)
    rel = np.abs(got[normal] - exact[normal]) / exact[normal]
    assert rel.max() <= 2 * FLOAT32_EPS
    middle = (x[normal] >= -86) & (x[normal] <= 88)  # the ends square exp(x / 2)
    assert rel[middle].max() <= FLOAT32_EPS
    # where float32 overflows, inf; in the subnormal range, off by at most one subnormal step
    with np.errstate(over="ignore"):
        assert np.array_equal(np.isinf(got), np.isinf(np.exp(x)))
    tiny = exact < SMALLEST_NORMAL
    assert np.abs(got[tiny] - exact[tiny]).max() <= 2.0**-149


def test_float32_exp_special_values():
    x = np.float32([np.nan, np.inf, -np.inf, -1000.0, 1000.0, 0.0])
    exp_row(x)
    assert np.isnan(x[0])
    assert x[1] == np.inf and x[2] == 0.0 and x[3] == 0.0 and x[4] == np.inf and x[5] == 1.0


def test_float64_exp_is_libm():
    x = np.linspace(-750, 710, 10_001)
    got = x.copy()
    exp_row(got)
    # libm's exp and NumPy's vectorised one may differ in the last bit
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(got, np.exp(x), rtol=3 * np.finfo(np.float64).eps, atol=0)
