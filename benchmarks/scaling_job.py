"""One scaling measurement, run by benchmarks/test_scaling.py as a plain process or under
``mpiexec``: the default recipe's network trained on MNIST, and (under MPI) the allreduce of
one step's gradients alone. Prints one JSON line from rank 0.

python -m benchmarks.scaling_job BACKEND BATCH SAMPLES
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import tinynet as tn


def main(backend: str, batch: int, samples: int) -> None:
    tn.set_backend(backend)
    distributed = tn.distributed.MPI() if tn.distributed.launched_size() > 1 else None
    x, y = tn.datasets.mnist("train", download=False)
    x, y = x[:samples], y[:samples]
    net = tn.MLP.from_sizes([784, 256, 128, 10], "relu", "softmax", rescale=(1 / 255, 0.0),
                            seed=0)  # fmt: skip
    optimizer = tn.SGD(0.05 if batch > 1 else 0.002, 0.9)  # per sample (1 process): smaller

    def fit(n: int) -> float:
        start = time.perf_counter()
        net.fit(x[:n], y[:n], tn.CrossEntropy(), optimizer, epochs=1, batch_size=batch, seed=0,
                distributed=distributed)  # fmt: skip
        return time.perf_counter() - start

    fit(min(samples, 4 * batch))  # compile, warm up
    rounds = [fit(samples) for _ in range(3)]
    result = {
        "backend": backend,
        "batch": batch,
        "samples": samples,
        "ranks": 1 if distributed is None else distributed.size,
        "threads": tn.get_backend().team_size(net.epoch_spec(tn.CrossEntropy(), optimizer), 1)
        if hasattr(tn.get_backend(), "team_size")
        else None,
        "seconds": float(np.median(rounds)),
    }
    if distributed is not None:  # one step's allreduce alone: every gradient, one buffer
        from mpi4py import MPI

        buffer = np.zeros(sum(p.data.size for p in net.parameters()), np.float32)
        out = np.empty_like(buffer)
        distributed.comm.Barrier()
        start = time.perf_counter()
        for _ in range(200):
            distributed.comm.Allreduce(buffer, out, op=MPI.SUM)
        result["allreduce_s"] = (time.perf_counter() - start) / 200
        result["allreduce_bytes"] = int(buffer.nbytes)
    if distributed is None or distributed.is_root:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
