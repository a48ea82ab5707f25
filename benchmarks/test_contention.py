"""Training beside busy processes: how much slower each path gets when other processes keep
one core or both cores busy, as on a laptop or a shared server.

Each case trains the same rounds as the throughput benchmark, alternating conditions: on a
quiet machine; beside one single-threaded busy loop; beside two (a fair share of the 2 cores
then leaves training one core, so two-busy / quiet = 2.0 is the floor); and beside two with
the thread count fixed by the user (``tn.use_threads``) at 1 and at 2, the references the
default's own choice must come close to. The busy loops are processes this module starts and
stops, each bounded to BUSY_LIMIT_S. The report gives each condition / quiet and, under two
busy processes, the default against the best fixed count.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import tinynet as tn
from benchmarks.conftest import NETWORKS, THREADS, make_contender, tinynet_backends
from benchmarks.contenders import TUTORIAL, initial_weights
from tinynet.kernels.threads import MachineLoad

BUSY_LIMIT_S = 300  # each busy loop ends by itself after this, even if the benchmark is killed
BUSY = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"
ROUNDS = 3
REPEATS = 2
# (contender, batch, the path it takes): numba's per-sample, compiled mini-batch and BLAS
# epochs, and the NumPy reference, on the tutorials' 784-128-10 network.
PATHS = [
    ("numba", 1, "per-sample"),
    ("numba", 16, "small batch"),  # plain SGD: the compiled tiles up to 16
    ("numba", 512, "BLAS"),
    ("numpy", 16, "numpy"),
    ("numpy", 512, "numpy"),
]
# condition: (busy processes, threads fixed by the user or None for the default's choice)
CONDITIONS = {
    "quiet": (0, None),
    "one-busy": (1, None),
    "two-busy": (2, None),
    "two-busy-1-thread": (2, 1),
    "two-busy-2-threads": (2, 2),
}


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes each spinning on a core for the duration."""
    if not count:
        yield
        return
    busy = [
        subprocess.Popen([sys.executable, "-c", BUSY.format(limit=BUSY_LIMIT_S)])
        for _ in range(count)
    ]
    try:
        # started, spinning, and seen: a user's load is there as training runs, and the
        # backends read the machine's load over windows of MachineLoad.WINDOW_S
        time.sleep(0.2 + 2 * MachineLoad.WINDOW_S)
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def _cases() -> list:
    usable = tinynet_backends()
    params = []
    for contender, batch, path in PATHS:
        for repeat in range(REPEATS):
            for condition in CONDITIONS:
                marks = () if contender in usable else pytest.mark.skip(reason=f"no {contender}")
                params.append(
                    pytest.param(
                        contender,
                        batch,
                        path,
                        repeat,
                        condition,
                        id=f"{contender}-b{batch}-r{repeat}-{condition}",
                        marks=marks,
                    )
                )
    return params


@pytest.mark.parametrize(("contender", "batch", "path", "repeat", "condition"), _cases())
def test_training_beside_busy_processes(
    benchmark, mnist_train, contender, batch, path, repeat, condition
):
    if THREADS < 2:
        pytest.skip("one core: busy processes beside training only divide its share")
    net = NETWORKS[TUTORIAL.name]
    n = net.samples_per_round_b1 if batch == 1 else net.samples_per_round
    x, t = mnist_train.x[:n], mnist_train.targets("float32")[:n]
    model = make_contender(contender, net, "float32", initial_weights(net))
    model.train(x[:batch], t[:batch], batch)  # compiled, allocated
    if contender == "numba":  # the path named is the path taken
        spec = model.model.epoch_spec(model.loss, model.optimizer)
        assert model.model.backend._compiled_loop(spec, batch) == (path != "BLAS"), path
    benchmark.group = f"contention {path} batch {batch}"
    busy, threads = CONDITIONS[condition]
    fixed = tn.use_threads(threads) if threads else contextlib.nullcontext()
    with fixed, busy_processes(busy):
        benchmark.pedantic(
            model.train, args=(x, t, batch), rounds=ROUNDS, warmup_rounds=1, iterations=1
        )
    benchmark.extra_info.update(
        kind="contention",
        contender=contender,
        path=path,
        batch=batch,
        condition=condition,
        repeat=repeat,
        samples_per_round=n,
        threads=THREADS,
    )
