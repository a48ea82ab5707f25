"""First-call (compile) time and warm start from Numba's on-disk cache, in fresh processes.

The child imports tinynet, picks the backend and times the first per-sample and mini-batch
training calls and a prediction, which touch every kernel a training run uses. "cold" runs with
an empty NUMBA_CACHE_DIR; "warm" runs again with the cache the cold run wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.conftest import contender_params

CHILD = """
import json, time, numpy as np
start = time.perf_counter()
import tinynet as tn
tn.set_backend({backend!r})
imported = time.perf_counter()
x = np.random.default_rng(0).integers(0, 256, (64, 784), dtype=np.uint8)
y = np.arange(64) % 10
net = tn.MLP.from_sizes([784, 128, 10], "sigmoid", "sigmoid", seed=0, rescale=(1 / 255, 0))
net.fit(x, y, tn.SquaredError(0.5), tn.SGD(0.1), batch_size=1)
net.fit(x, y, tn.SquaredError(0.5), tn.SGD(0.1, momentum=0.9), batch_size=32)
net.predict(x)
print(json.dumps({{"import_s": imported - start, "first_calls_s": time.perf_counter() - imported}}))
"""


def _run(backend: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(backend=backend)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "contender",
    [p for p in contender_params(modes=False, training_peers=False) if p.id != "pytorch"],
)
def test_startup(benchmark, contender, tmp_path):
    cold = _run(contender, str(tmp_path))
    warm = benchmark.pedantic(_run, args=(contender, str(tmp_path)), rounds=3, iterations=1)
    benchmark.group = "startup"
    benchmark.extra_info.update(
        kind="startup",
        contender=contender,
        cold_first_calls_s=cold["first_calls_s"],
        warm_first_calls_s=warm["first_calls_s"],
        import_s=warm["import_s"],
    )
