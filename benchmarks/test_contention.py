"""Training beside a busy process: how much slower each path gets when another process keeps
one core busy, as on a laptop or a shared server.

Each case trains the same rounds as the throughput benchmark three ways, alternating: on a
quiet machine, beside one single-threaded busy loop (a process this module starts and stops,
bounded to BUSY_LIMIT_S), and, for numba, beside the busy loop on one thread (Numba and BLAS
both limited to one), the figure a team of threads must not fall behind. The report gives
loaded / quiet per path and, for numba, loaded / loaded on one thread.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from benchmarks.conftest import NETWORKS, THREADS, make_contender, tinynet_backends
from benchmarks.contenders import TUTORIAL, initial_weights
from tinynet.kernels.threads import MachineLoad

BUSY_LIMIT_S = 300  # the busy loop ends by itself after this, even if the benchmark is killed
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
CONDITIONS = ("quiet", "loaded", "loaded-1-thread")


@contextlib.contextmanager
def busy_core(on: bool) -> Iterator[None]:
    """One process spinning on a core for the duration (nothing when ``on`` is False)."""
    if not on:
        yield
        return
    busy = subprocess.Popen([sys.executable, "-c", BUSY.format(limit=BUSY_LIMIT_S)])
    try:
        # started, spinning, and seen: a user's load is there as training runs, and the
        # backends read the machine's load over windows of MachineLoad.WINDOW_S
        time.sleep(0.2 + 2 * MachineLoad.WINDOW_S)
        yield
    finally:
        busy.kill()
        busy.wait()


@contextlib.contextmanager
def one_thread(on: bool) -> Iterator[None]:
    """Numba's threads and every BLAS pool limited to one (nothing when ``on`` is False)."""
    if not on:
        yield
        return
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        numba.set_num_threads(before)


def _cases() -> list:
    usable = tinynet_backends()
    params = []
    for contender, batch, path in PATHS:
        conditions = CONDITIONS if contender == "numba" else CONDITIONS[:2]
        for repeat in range(REPEATS):
            for condition in conditions:
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
def test_training_beside_a_busy_core(
    benchmark, mnist_train, contender, batch, path, repeat, condition
):
    if THREADS < 2:
        pytest.skip("one core: a busy process beside training only halves its share")
    net = NETWORKS[TUTORIAL.name]
    n = net.samples_per_round_b1 if batch == 1 else net.samples_per_round
    x, t = mnist_train.x[:n], mnist_train.targets("float32")[:n]
    model = make_contender(contender, net, "float32", initial_weights(net))
    model.train(x[:batch], t[:batch], batch)  # compiled, allocated
    if contender == "numba":  # the path named is the path taken
        spec = model.model.epoch_spec(model.loss, model.optimizer)
        assert model.model.backend._compiled_loop(spec, batch) == (path != "BLAS"), path
    benchmark.group = f"contention {path} batch {batch}"
    with one_thread(condition == "loaded-1-thread"), busy_core(condition != "quiet"):
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
