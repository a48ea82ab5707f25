"""Tolerances for float32 training runs, taken from a float64 twin of the same run.

Training amplifies rounding: two float32 runs that only sum in another order (another BLAS
kernel, another thread split) drift apart over the steps, by an amount no fixed rtol bounds on
every machine (OpenBLAS's SkylakeX and Haswell kernels sum differently). So a float32 result is
judged against the float64 twin of the same run (the same seed, data and steps on the NumPy
reference in float64): the backend under test must be about as close to the twin as the float32
reference is. Both carry float32's rounding, amplified by the same steps; neither may be
``FACTOR`` times further off than the other one's drift, nor than a few units in the last place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Two float32 runs that sum in different orders drift from the float64 twin by different but
# comparable amounts: each is a sum of the same kind of rounding errors, amplified by the same
# steps. A wrong rule (a missing term, a wrong sign, an update skipped) moves weights by far more.
FACTOR = 4.0
ULPS = 8  # the floor, for runs short enough that the drift is a few roundings


def _flat(arrays) -> np.ndarray:
    """Every array of a result (weights: a list of (W, b) pairs; losses: a list) as float64."""
    if isinstance(arrays, np.ndarray) or np.isscalar(arrays):
        return np.ravel(np.asarray(arrays, dtype=np.float64))
    parts = [_flat(a) for a in arrays if a is not None]
    return np.concatenate(parts) if parts else np.zeros(0)


def float32_bound(reference, twin) -> float:
    """The largest distance from the twin a float32 run may show: ``FACTOR`` times the float32
    reference's own largest drift from it, and at least ``ULPS`` float32 units of the twin's
    largest value."""
    reference, twin = _flat(reference), _flat(twin)
    drift = float(np.max(np.abs(reference - twin), initial=0.0))
    unit = float(np.finfo(np.float32).eps * np.max(np.abs(twin), initial=0.0))
    return max(FACTOR * drift, ULPS * unit)


def assert_float32_close(got, reference, twin, what: str = "result") -> None:
    """``got`` (the backend under test, float32) within ``float32_bound`` of the float64 twin.

    ``got``, ``reference`` (the NumPy reference in float32) and ``twin`` (the NumPy reference in
    float64) are arrays, lists of losses, or lists of (W, b) pairs, all of the same structure.
    """
    flat_got, flat_twin = _flat(got), _flat(twin)
    assert flat_got.shape == flat_twin.shape, (flat_got.shape, flat_twin.shape)
    bound = float32_bound(reference, twin)
    error = np.abs(flat_got - flat_twin)
    worst = int(np.argmax(error)) if error.size else 0
    assert np.all(np.isfinite(flat_got)), f"{what}: not finite"
    assert error.size == 0 or error[worst] <= bound, (
        f"{what}: {error[worst]:.3g} from the float64 twin at element {worst} "
        f"(got {flat_got[worst]:.7g}, twin {flat_twin[worst]:.7g}); the float32 reference "
        f"is within {bound / FACTOR:.3g} of it, so the bound is {bound:.3g}"
    )


def assert_weights_close(
    got: Sequence, reference: Sequence, twin: Sequence | None, dtype: str, what: str = "weights"
) -> None:
    """Weights of a run against the reference's: float32 through the float64 twin, float64
    directly (rtol 1e-8: float64's rounding, amplified by short runs, stays far below it)."""
    if dtype == "float32":
        assert twin is not None, "a float32 comparison needs the float64 twin"
        assert_float32_close(got, reference, twin, what)
    else:
        np.testing.assert_allclose(_flat(got), _flat(reference), rtol=1e-8, atol=1e-10)
