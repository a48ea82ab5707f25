"""The backends the tests run on: every registered one, skipping with the reason if unusable."""

from __future__ import annotations

import pytest

from tinynet import backend as backend_module


def backend_params(exclude: tuple[str, ...] = ()) -> list:
    """One pytest param per registered backend; those that cannot run here skip with the reason."""
    return [
        pytest.param(name, id=name, marks=pytest.mark.skip(reason=why) if why else ())
        for name, why in backend_module.backend_status().items()
        if name not in exclude
    ]
