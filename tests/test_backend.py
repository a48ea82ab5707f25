"""Backend selection: precedence, clear errors, lazy imports."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

import tinynet as tn
from tinynet import backend as backend_module


def test_default_is_auto_and_says_which(caplog):
    with caplog.at_level(logging.DEBUG, logger="tinynet"):
        chosen = tn.get_backend()
    assert chosen.name in tn.available_backends()
    assert f"selected {chosen.name!r}" in caplog.text


def test_unknown_name_lists_the_valid_ones(monkeypatch):
    with pytest.raises(tn.BackendError, match=r"unknown backend 'tensorflow'; valid names: auto"):
        tn.set_backend("tensorflow")
    monkeypatch.setenv("TINYNET_BACKEND", "jax")
    with pytest.raises(tn.BackendError, match="'jax'.*numpy"):
        tn.get_backend()


def test_precedence_explicit_then_env_then_default(monkeypatch):
    monkeypatch.setenv("TINYNET_BACKEND", "bogus")
    with pytest.raises(tn.BackendError):
        tn.Dense(2, 2)
    tn.set_backend("numpy")  # an explicit choice beats the environment
    assert tn.get_backend().name == "numpy"
    assert tn.Dense(2, 2).backend.name == "numpy"
    monkeypatch.setenv("TINYNET_BACKEND", "")  # empty means unset
    backend_module._explicit = None
    assert tn.get_backend() is backend_module._resolve("auto")
    monkeypatch.setenv("TINYNET_BACKEND", " NumPy ")
    assert tn.get_backend().name == "numpy"


def test_use_backend_restores_the_previous_choice(monkeypatch):
    monkeypatch.setenv("TINYNET_BACKEND", "bogus")
    with tn.use_backend("numpy") as b:
        assert b.name == "numpy" and tn.get_backend() is b
    with pytest.raises(tn.BackendError):
        tn.get_backend()
    with pytest.raises(tn.BackendError, match="unknown"), tn.use_backend("nope"):
        pass


def test_a_known_backend_that_cannot_load_says_why(monkeypatch):
    # A registered backend whose library is missing, as CuPy is on a machine without it.
    monkeypatch.setitem(
        backend_module._REGISTRY, "ghost", ("tinynet_no_such_module.backend", "GhostBackend")
    )
    with pytest.raises(tn.BackendError, match="'ghost' cannot be used.*No module") as info:
        tn.set_backend("ghost")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert backend_module._explicit is None  # a failed choice changes nothing
    # auto skips it and says so, instead of failing or silently picking it
    monkeypatch.setattr(backend_module, "_AUTO_PREFERENCE", ("ghost", "numpy"))
    assert backend_module._resolve("auto").name == "numpy"


def test_import_does_not_import_numba_or_cupy():
    code = (
        "import sys, tinynet as tn; tn.MLP.from_sizes([3, 2]); "
        "print(sorted(m for m in ('numba', 'cupy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"TINYNET_BACKEND": "numpy", "PATH": ""},
    )
    assert out.stdout.strip() == "[]"


def test_to_numpy_returns_numpy(backend_name):
    B = tn.get_backend()
    arr = B.asarray(np.arange(3.0))
    out = tn.to_numpy(arr)
    assert isinstance(out, np.ndarray) and out.tolist() == [0.0, 1.0, 2.0]


def _backend_classes() -> list:
    """Every registered backend class, imported even where it cannot run (the cupy module
    imports CuPy only when its backend is made)."""
    import importlib

    return [
        pytest.param(getattr(importlib.import_module(module), cls), id=name)
        for name, (module, cls) in backend_module._REGISTRY.items()
        if name != "numba" or backend_module.backend_status()["numba"] is None
    ]


@pytest.mark.parametrize("cls", _backend_classes())
def test_every_registered_backend_implements_the_whole_contract(cls):
    import inspect

    assert issubclass(cls, backend_module.Backend)
    missing = sorted(cls.__abstractmethods__)
    assert missing == [], f"{cls.__name__} lacks {missing}"
    for name in backend_module.Backend.__abstractmethods__:
        contract = inspect.signature(getattr(backend_module.Backend, name))
        implemented = inspect.signature(getattr(cls, name))
        assert list(implemented.parameters) == list(contract.parameters), (cls.__name__, name)


def test_a_backend_that_forgets_a_kernel_cannot_be_made():
    from tinynet.kernels.numpy_backend import NumpyBackend

    namespace = {
        name: getattr(NumpyBackend, name)
        for name in backend_module.Backend.__abstractmethods__
        if name != "rescale"
    }
    Forgetful = type("Forgetful", (backend_module.Backend,), namespace)
    with pytest.raises(TypeError, match="rescale"):
        Forgetful()
