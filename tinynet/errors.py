"""The errors tinynet raises on bad input.

Each one also derives from the built-in exception a Python user would expect (``ValueError``,
``RuntimeError``, ``OSError``), so ``except ValueError`` keeps working. The command line turns any
``TinynetError`` into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


class TinynetError(Exception):
    """Base class of every error tinynet raises on purpose."""


class BackendError(TinynetError, RuntimeError):
    """A backend name is unknown, or the backend cannot run on this machine."""


class ShapeError(TinynetError, ValueError):
    """An array has the wrong shape for the layer, model or loss it is given to."""


class InvalidInputError(TinynetError, ValueError):
    """A value is out of its domain: NaN/inf data, non-positive learning rate, unknown name, ..."""


class DataFileError(TinynetError, OSError):
    """A data file is missing, truncated, corrupt or fails its checksum."""


class ModelFileError(TinynetError, OSError):
    """A model file is missing or is not a tinynet model."""


def checked_number(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = True,
) -> float:
    """``value`` as a float within [low, high) (the ends open or closed as asked); otherwise
    an InvalidInputError naming the setting and its range. NumPy's numbers count; booleans, NaN
    and inf are refused."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    above = value > low or (value == low and not low_open) if ok else False
    below = value < high or (value == high and not high_open) if ok else False
    if ok and above and below:
        return float(value)
    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise InvalidInputError(f"{name} must be in {span}, got {value!r}")


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (NumPy integers too); otherwise an InvalidInputError naming the
    setting. Booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def checked_seed(value: Any, name: str = "seed") -> Any:
    """``value`` if NumPy can seed a generator with it (None, an int >= 0 or a Generator);
    otherwise an InvalidInputError naming the setting."""
    if value is None or _is_generator(value):
        return value
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise InvalidInputError(
            f"{name} must be None or an integer >= 0 (NumPy's seeds), got {value!r}"
        )
    return int(value)


def _is_generator(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.random.Generator)
