"""The cupy backend's tests where no GPU is lent: every cupy-parametrized test (parity of each
kernel and whole training runs with the reference, every update path of the fused epoch, the
seeds' worked examples, faults), tests/test_gpu.py (the fused epoch in CUDA-graph mode, a
failed capture) and the training features (schedules, early stopping, checkpoints, export)
run again on the host stand-in of tests/host_cuda.py. The backend's Python,
its fused epoch, its graphs' replays and the CUDA sources run for real; the GPU does not. Where
a GPU is usable, the same tests run on it in the main pass instead."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host_cuda import GXX
from tinynet import backend as backend_module

REPO = Path(__file__).parents[1]
# the tests parametrized by backend, on cupy; tests/test_gpu.py; and the modules whose tests
# train on the default backend, which the stand-in makes cupy ("auto" takes a usable GPU)
DEFAULT_BACKEND_MODULES = "test_training_features or test_export or test_optimizers"
SELECTED = f"cupy or test_gpu or (({DEFAULT_BACKEND_MODULES}) and not numpy and not numba)"


@pytest.mark.skipif(GXX is None, reason="the host stand-in needs g++")
@pytest.mark.skipif(
    backend_module.backend_status()["cupy"] is None, reason="a GPU is usable: the tests run on it"
)
def test_the_cupy_backends_tests_pass_on_the_host_stand_in():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", SELECTED,
         "tests", "--ignore=tests/test_distributed.py",
         f"--ignore={Path(__file__).relative_to(REPO)}"],
        cwd=REPO, env={**os.environ, "TINYNET_HOST_CUPY": "1"}, capture_output=True, text=True,
        timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, summary
    assert int(re.search(r"(\d+) passed", summary).group(1)) >= 200, summary
    # skipped only: what needs CuPy itself on a GPU (cupyx, memory hooks), the no-GPU
    # checks a usable "GPU" turns off, and tests of the full MNIST without TINYNET_DATA_DIR
    allowed = ("needs CuPy on a GPU", "CuPy is installed here", "a GPU is usable here",
               "full MNIST not found")  # fmt: skip
    reasons = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", done.stdout, re.MULTILINE)
    assert all(reason.startswith(allowed) for reason in reasons), reasons
