"""A Collective (tinynet.backend.Collective) of ranks that are threads of one process.

``ThreadRanks(n).ranks`` are n rank objects; run each rank's work in its own thread. Their
allreduces meet at a barrier and sum the ranks' buffers in rank order, so a run is
reproducible. ``compiled_allreduce`` hands compiled code a C function (a ctypes callback)
with MPI_Allreduce's signature that does the same: the numba backend's distributed epoch
runs as it does under mpiexec, with no MPI library. Not MPI: no processes, no timeouts.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

# MPI_Allreduce(send, recv, count, datatype, op, comm) with 32-bit handles, as MPICH's
_ALLREDUCE = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int32,
    ctypes.c_int32,
    ctypes.c_int32,
)
_DATATYPES = {0: np.float32, 1: np.float64}  # the fake's datatype handles
SUM = 7  # the fake's MPI_SUM handle; any other op is refused


class ThreadRanks:
    """n ranks that meet at a barrier. ``calls`` counts every allreduce of each rank (host and
    compiled), for tests that must see the collective used."""

    def __init__(self, n: int) -> None:
        self.size = n
        self._barrier = threading.Barrier(n)
        self._parts: list[Any] = [None] * n
        self.calls = [0] * n
        self.ranks = [_Rank(self, r) for r in range(n)]
        self._compiled = _ALLREDUCE(self._compiled_call)  # kept alive as long as the ranks

    def sum_over_ranks(self, rank: int, buffer: np.ndarray) -> np.ndarray:
        """Every rank's buffer, summed in rank order; each rank calls this once per collective."""
        self.calls[rank] += 1
        self._parts[rank] = buffer.copy()
        self._barrier.wait()
        total = self._parts[0].copy()
        for part in self._parts[1:]:
            total += part
        self._barrier.wait()  # every rank has read the parts before any writes the next
        return total

    def _compiled_call(self, send, recv, count, datatype, op, comm) -> int:
        if op != SUM or datatype not in _DATATYPES:
            return 1
        ctype = np.ctypeslib.as_ctypes_type(_DATATYPES[datatype])
        sent = np.ctypeslib.as_array(ctypes.cast(send, ctypes.POINTER(ctype)), (count,))
        received = np.ctypeslib.as_array(ctypes.cast(recv, ctypes.POINTER(ctype)), (count,))
        received[...] = self.sum_over_ranks(comm, sent)
        return 0

    def address(self) -> int:
        return ctypes.cast(self._compiled, ctypes.c_void_p).value


class _Rank:
    """One rank: the Collective the backend is handed."""

    device_collective = "mpi"

    def __init__(self, group: ThreadRanks, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size

    def shard(self, first: int, last: int) -> tuple[int, int]:
        n = last - first
        return first + n * self.rank // self.size, first + n * (self.rank + 1) // self.size

    def allreduce(self, buffer: np.ndarray, what: str) -> None:
        buffer[...] = self.group.sum_over_ranks(self.rank, buffer)

    def allreduce_on_device(self, buffer: Any) -> None:
        host = buffer.get() if hasattr(buffer, "get") else np.asarray(buffer)
        self.allreduce(host, "the gradients' allreduce")
        buffer[...] = host

    def compiled_allreduce(self, dtype: Any) -> tuple | None:
        handle = {np.float32: 0, np.float64: 1}[np.dtype(dtype).type]
        # the communicator handle tells the callback which rank calls
        return self.group.address(), np.int32(self.rank), np.int32(handle), np.int32(SUM)


def run_ranks(work, ranks: list[_Rank]) -> list[Any]:
    """work(rank) in one thread per rank; their results in rank order, or the first error."""
    results: list[Any] = [None] * len(ranks)
    errors: list[BaseException] = []

    def run(rank: _Rank) -> None:
        try:
            results[rank.rank] = work(rank)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
            rank.group._barrier.abort()  # the other ranks stop waiting for this one

    threads = [threading.Thread(target=run, args=(rank,)) for rank in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise AssertionError("a rank is still waiting after 300 s: the ranks' collectives differ")
    return results
