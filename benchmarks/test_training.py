"""Steady-state training throughput of whole networks on MNIST, per contender.

Each case trains the same number of samples per timed round (after one warm-up round) starting
from the same weights, in the same data order, and must lower the loss on a fixed probe batch,
so a fast but wrong implementation cannot look good. Contenders alternate: for each case the
parametrization runs repeat 0 of every contender, then repeat 1, ...; the report takes medians.
The first call (compilation, for compiled backends) is timed separately.
"""

from __future__ import annotations

import time
from functools import cache

import pytest

from benchmarks.conftest import (
    NETWORKS,
    THREADS,
    contender_params,
    make_contender,
    tinynet_backends,
)
from benchmarks.contenders import initial_weights

# On a GPU also 64, 1024 and 4096 (the CuPy issue's goals are at 64 and 1024).
BATCHES = (1, 32, 128, 512) + ((64, 1024, 4096) if "cupy" in tinynet_backends() else ())
REPEATS = 3
ROUNDS = 3


@cache
def _weights(net_name: str):
    return initial_weights(NETWORKS[net_name])


CASES = [
    pytest.param(name, dtype, batch, id=f"{name.split()[0]}-{net.optimizer}-{dtype}-b{batch}")
    for name, net in NETWORKS.items()
    for dtype in ("float32", "float64")
    for batch in net.batches or BATCHES
]


# Parametrize order: the decorator nearest the function varies slowest, so the contender
# (top) alternates fastest.
@pytest.mark.parametrize("contender", contender_params())
@pytest.mark.parametrize("repeat", range(REPEATS), ids=lambda r: f"r{r}")
@pytest.mark.parametrize(("net_name", "dtype", "batch"), CASES)
def test_training_throughput(benchmark, mnist_train, net_name, dtype, batch, repeat, contender):
    net = NETWORKS[net_name]
    if net.optimizer != "sgd" and contender in ("numpy-plain", "jax", "jax-scan"):
        pytest.skip(f"{contender}: written for SGD only")
    n = net.samples_per_round_b1 if batch == 1 else net.samples_per_round
    x, t = mnist_train.x[:n], mnist_train.targets(dtype)[:n]
    model = make_contender(contender, net, dtype, _weights(net_name))
    probe_x, probe_t = mnist_train.x[-1024:], mnist_train.targets(dtype)[-1024:]
    loss_before = model.mean_loss(probe_x, probe_t)

    start = time.perf_counter()
    model.train(x[:batch], t[:batch], batch)  # first call: compilation, allocation
    first_call = time.perf_counter() - start

    benchmark.group = f"train {net_name} {dtype} batch {batch}"
    benchmark.pedantic(
        model.train, args=(x, t, batch), rounds=ROUNDS, warmup_rounds=1, iterations=1
    )
    loss_after = model.mean_loss(probe_x, probe_t)
    benchmark.extra_info.update(
        kind="train",
        contender=contender,
        network=net_name,
        dtype=dtype,
        batch=batch,
        repeat=repeat,
        samples_per_round=n,
        optimizer=net.optimizer,
        baseline=net.baseline,
        first_call_s=first_call,
        threads=THREADS,
        loss_before=loss_before,
        loss_after=loss_after,
        data=mnist_train.source,
    )
    assert loss_after < loss_before, f"{contender} did not learn: {loss_before} -> {loss_after}"
