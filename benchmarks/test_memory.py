"""Peak memory of training, per contender, each in a fresh process (Linux's /proc).

The child loads MNIST, imports its library and trains a first batch, then resets the kernel's
peak-RSS mark and trains one round of a case: it reports that peak (data, libraries and the
training's own arrays) and how much of it came during the round. Numba's kernels come from its
on-disk cache (the training benchmarks filled it), so compilation is not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.conftest import THREADS, contender_params
from benchmarks.contenders import DEFAULT_RECIPE

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import gc, json, sys
import tinynet as tn
from benchmarks.contenders import NETWORKS, TinynetContender, TorchContender, initial_weights

name, network, inputs = sys.argv[1], sys.argv[2], sys.argv[5]
batch, samples = int(sys.argv[3]), int(sys.argv[4])
try:
    x, y = tn.datasets.mnist("train", download=False)
except tn.DataFileError:
    x, y = tn.datasets.mnist_sample("train")
x = x.astype(inputs)  # uint8 as loaded, or float32 as many users hold their data
net = NETWORKS[network]
t = tn.one_hot(y, 10, dtype="float32")
weights = initial_weights(net)
if name == "pytorch":
    model = TorchContender(net, "float32", weights)
else:
    model = TinynetContender(name, net, "float32", weights)
model.train(x[:batch], t[:batch], batch)  # first call: imports, compiled code from the cache


def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size: loading is not counted
before = status_mb("VmRSS:")
model.train(x[:samples], t[:samples], batch)
peak = status_mb("VmHWM:")
print(json.dumps({"peak_mb": peak, "training_mb": peak - before}))
"""

CASES = [  # network, batch, samples per round, the dtype the inputs are handed over in
    ("784-128-10 sigmoid/SE", 1, 4096, "uint8"),
    ("784-128-10 sigmoid/SE", 512, 16384, "uint8"),
    ("784-1024-1024-10 relu/CE", 512, 8192, "uint8"),
    (DEFAULT_RECIPE, 64, 60000, "uint8"),  # a whole epoch
    (DEFAULT_RECIPE, 64, 60000, "float32"),
]


def _child(contender: str, network: str, batch: int, samples: int, inputs: str) -> dict:
    threads = str(THREADS)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    env["NUMBA_NUM_THREADS"] = threads
    out = subprocess.run(
        [sys.executable, "-c", CHILD, contender, network, str(batch), str(samples), inputs],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status (Linux)")
@pytest.mark.parametrize(
    "contender", [p for p in contender_params(modes=False) if p.id in ("numpy", "numba", "pytorch")]
)
@pytest.mark.parametrize(
    ("network", "batch", "samples", "inputs"),
    [pytest.param(*case, id=f"{case[0].split()[0]}-b{case[1]}-{case[3]}") for case in CASES],
)
def test_peak_memory(benchmark, contender, network, batch, samples, inputs):
    result = benchmark.pedantic(
        _child, args=(contender, network, batch, samples, inputs), rounds=1, iterations=1
    )
    benchmark.group = f"memory {network} batch {batch} {inputs}"
    benchmark.extra_info.update(
        kind="memory", contender=contender, network=network, batch=batch, inputs=inputs, **result
    )
