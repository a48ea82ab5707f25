"""Shared fixtures: the backends usable here, the full MNIST folder, a clean backend choice."""

from __future__ import annotations

import os
from pathlib import Path

# SciPy reads this once, on import: with it, scikit-learn's estimator checks include their
# array API check (tests/test_sklearn.py) instead of skipping it
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest

# TINYNET_HOST_CUPY=1: the cupy backend on the host stand-in (tests/host_cuda.py), for the
# cupy-parametrized tests on a machine without a GPU (tests/test_cupy_on_host.py runs them)
if os.environ.get("TINYNET_HOST_CUPY") == "1":
    from tests.host_cuda import install_host_cupy

    install_host_cupy()

import tinynet as tn
from tests.backends import backend_params
from tinynet import backend as backend_module

# The fast tier (`pytest -m "not slow"`) leaves out whole files of child processes, and every
# test that reads full MNIST; others carry @pytest.mark.slow themselves.
SLOW_FILES = {
    "test_cupy_on_host.py",  # the whole cupy suite again in a child pytest, on the stand-in
    "test_distributed.py",  # mpiexec jobs
    "test_numba_cache.py",  # child processes compiling into empty caches
    "test_readme.py",  # the README's snippets, each in a fresh process
    "test_docs.py",  # the docs' snippets, each in a fresh process
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or "mnist_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        # a module's XFAIL table (test id -> reason): tests/test_sklearn_own_tests.py's
        reason = getattr(getattr(item, "module", None), "XFAIL", {}).get(item.name)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(params=backend_params())
def backend_name(request) -> str:
    """Runs the test once per backend, with that backend active."""
    with tn.use_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _clean_backend_choice(monkeypatch):
    """Each test starts with no explicit choice and no TINYNET_BACKEND."""
    monkeypatch.delenv("TINYNET_BACKEND", raising=False)
    saved = backend_module._explicit
    backend_module._explicit = None
    yield
    backend_module._explicit = saved


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder with the full MNIST files, from TINYNET_DATA_DIR; skips when it is absent."""
    folder = os.environ.get("TINYNET_DATA_DIR")
    if not folder or (
        not (Path(folder) / "train-images-idx3-ubyte.gz").exists()
        and not (Path(folder) / "train-images-idx3-ubyte").exists()
    ):
        pytest.skip("full MNIST not found: set TINYNET_DATA_DIR to a folder with the IDX files")
    return Path(folder)
