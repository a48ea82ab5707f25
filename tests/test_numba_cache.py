"""Numba's compiled kernels are cached under a hash of their source, never in the package."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinynet import backend as backend_module

WHY_NOT = backend_module.backend_status()["numba"]
NUMBA = WHY_NOT is None


@pytest.mark.skipif(not NUMBA, reason=f"numba backend unavailable: {WHY_NOT}")
def test_kernel_cache_lives_under_the_source_hash(tmp_path):
    import tinynet.kernels.numba_backend as kernels

    source = Path(kernels.__file__).read_bytes()
    expected = tmp_path / "tinynet" / "numba" / hashlib.sha256(source).hexdigest()[:16]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "import numpy as np, tinynet as tn; tn.set_backend('numba');"
        "net = tn.MLP.from_sizes([3, 2], 'sigmoid', 'sigmoid', seed=0);"
        "net.fit(np.eye(3), np.eye(3)[:, :2], tn.SquaredError(), tn.SGD(0.1), batch_size=1)"
    )

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            check=True,
            timeout=300,
            capture_output=True,
            text=True,
        )
        return done.stderr

    assert "compiling Numba kernels on first use" in run()  # said while the cache is empty
    assert "compiling" not in run()
    cached = {p.suffix for p in expected.iterdir()}
    assert {".nbi", ".nbc"} <= cached
    assert [p.name for p in (tmp_path / "tinynet" / "numba").iterdir()] == [expected.name]
