"""The errors tinynet raises on bad input.

Each one also derives from the built-in exception a Python user would expect (``ValueError``,
``RuntimeError``, ``OSError``), so ``except ValueError`` keeps working. The command line turns any
``TinynetError`` into a one-line message and a non-zero exit code.
"""

from __future__ import annotations


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
