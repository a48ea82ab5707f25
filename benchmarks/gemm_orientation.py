"""The forward product Z = A W^T both ways round on the BLAS the numba backend calls: directly,
and as Z^T = W A^T (kernels/numba/blas.py, TRANSPOSED_FORWARD_ROWS), for the layer shapes of the
benchmark networks. Best of 7 repeats of 100 calls each, alternating; prints a Markdown table.

python -m benchmarks.gemm_orientation
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_info

from tinynet.kernels.numba.blas import gemm_address, product_into

SHAPES = ((32, 784, 1024), (32, 1024, 1024), (64, 784, 1024), (64, 1024, 1024), (128, 1024, 1024),
          (512, 1024, 1024), (32, 784, 128), (64, 784, 256), (64, 256, 128))  # fmt: skip


def best_of(address: int, A, B, C, repeats: int = 7, calls: int = 100) -> float:
    """The best time of C = A B^T (product_into), seconds per call."""
    product_into(address, False, True, A, B, C)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            product_into(address, False, True, A, B, C)
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    kernels = sorted({f"{pool['internal_api']} {pool.get('architecture')}" for pool in
                      threadpool_info() if pool["user_api"] == "blas"})  # fmt: skip
    print(f"BLAS: {', '.join(kernels)}\n")
    print("| dtype | rows | in | out | Z = A W^T, µs | Z^T = W A^T, µs | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for dtype in (np.float32, np.float64):
        address = gemm_address(np.dtype(dtype))
        for rows, k, n in SHAPES:
            A, W = rng.random((rows, k)).astype(dtype), rng.random((n, k)).astype(dtype)
            Z, Zt = np.empty((rows, n), dtype), np.empty((n, rows), dtype)
            direct = transposed = np.inf
            for _ in range(2):  # alternating, the best of each
                direct = min(direct, best_of(address, A, W, Z))
                transposed = min(transposed, best_of(address, W, A, Zt))
            assert np.array_equal(Z, Zt.T)  # the same sums, bit for bit
            print(f"| {np.dtype(dtype).name} | {rows} | {k} | {n} | {direct * 1e6:.1f} | "
                  f"{transposed * 1e6:.1f} | {direct / transposed:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
