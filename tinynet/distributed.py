"""Data-parallel training over MPI: ``net.fit(..., distributed=tn.distributed.MPI())`` on each
of the processes ``mpiexec -n N`` starts.

Synchronous data parallelism, as ChainerMN, Horovod and PyTorch DDP do it. Every rank holds the
whole model (rank 0's weights, broadcast at the start) and draws the same permutation of the
data each epoch. Each global batch of ``batch_size`` rows is split into contiguous shards, one
per rank. A rank computes the gradient of its shard, and one allreduce per step averages the
gradients of all parameters, packed into one buffer. Every rank then applies the same update,
so the run computes what one process would with the global batch.

Needs ``pip install "tinynet-mlp[mpi]"`` (mpi4py and MPICH); ``import tinynet`` does not
import it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tinynet.errors import InvalidInputError, positive_int

log = logging.getLogger("tinynet")

# the variables an MPI launcher sets in each process it starts (MPICH's Hydra and PMIx, Open MPI)
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
# this process's rank among the job's ranks on its node: MPICH's Hydra, Open MPI, Slurm's srun
LAUNCHER_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
TIMEOUT_VARIABLE = "TINYNET_MPI_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0  # generous: a stretch of training steps between two checks


def timeout_from_env() -> float:
    """TINYNET_MPI_TIMEOUT in seconds, else DEFAULT_TIMEOUT_S."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise InvalidInputError(
            f"{TIMEOUT_VARIABLE} must be a number of seconds > 0, got {value!r}"
        )
    return seconds


class Watchdog:
    """Ends the job, with one line, once this rank has waited longer than ``timeout`` seconds
    in a collective (or a stretch of compiled steps with collectives inside): a rank that
    stopped (SIGSTOP), hung or lost its network would otherwise keep the others waiting
    forever. A daemon thread checks once a second; the compiled epochs and mpi4py release the
    GIL while they wait, so it runs whatever the main thread is blocked in.

    ``stop_all`` is MPI_Abort: the launcher then kills every rank, a stopped one included.
    Exiting alone is not enough: MPICH's launcher stops the others when a rank exits early
    most times, but a CI run once left the stopped rank, and the job, waiting for good. If
    the abort itself hangs, this rank exits after ``ABORT_GRACE_S``."""

    ABORT_GRACE_S = 10.0

    def __init__(self, timeout: float, rank: int, size: int, stop_all: Callable[[], None]) -> None:
        self.timeout, self.rank, self.size, self.stop_all = timeout, rank, size, stop_all
        self._since: float | None = None
        self._what = ""
        thread = threading.Thread(target=self._watch, name="tinynet-mpi-watchdog", daemon=True)
        thread.start()

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """The block waits for the other ranks (``what`` names it in the message)."""
        self._what, self._since = what, time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                print(
                    f"tinynet: error: rank {self.rank} of {self.size} waited more than "
                    f"{self.timeout:g} s for the other ranks in {self._what}: a rank has "
                    f"stopped or hung; stopping all ranks (the limit: MPI(timeout=...) or "
                    f"{TIMEOUT_VARIABLE})",
                    file=sys.stderr,
                    flush=True,
                )
                threading.Timer(self.ABORT_GRACE_S, os._exit, (1,)).start()
                self.stop_all()
                os._exit(1)


def launched_size() -> int:
    """How many processes the MPI launcher started (1 outside ``mpiexec``), without importing
    MPI."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def launched_local_rank() -> int | None:
    """This process's rank among the ranks on its node, as the MPI launcher says, without
    importing MPI; None outside a job of several ranks, or where the launcher does not say."""
    if launched_size() <= 1:
        return None
    for name in LAUNCHER_LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def use_node_gpu(cupy: Any, local_rank: int) -> None:
    """Put this rank on its node's GPUs in turn: GPU local_rank % count (none: nothing). The
    cupy backend calls it when made under a launcher, MPI() when CuPy came first."""
    devices = cupy.cuda.runtime.getDeviceCount()
    if devices:
        cupy.cuda.Device(local_rank % devices).use()


def data_digest(backend: Any, X: Any, T: Any) -> str:
    """A digest of the training data (X, T): their shapes, dtypes and every byte, in order
    (BLAKE2b: one pass over the data, once a run)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (X, T):
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(np.ascontiguousarray(backend.to_numpy(array)))
    return digest.hexdigest()


def file_digest(path: Any) -> str:
    """A digest of a file's bytes (a checkpoint every rank resumes from), or why there is none."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return digest.hexdigest()


def _allreduce_handles(mpi: Any, comm: Any, dtype: np.dtype) -> tuple | None:
    """MPI.compiled_allreduce's answer, found in the library mapped into this process."""
    try:
        with open("/proc/self/maps") as f:  # Linux: the files mapped, mpi4py's library too
            path = next((line.split()[-1] for line in f if "/libmpi." in line), None)
    except OSError:
        path = None
    if path is None:
        return None
    function = ctypes.CDLL(path).MPI_Allreduce
    address = ctypes.cast(function, ctypes.c_void_p).value
    width = {4: np.int32, 8: np.int64}.get(mpi._sizeof(mpi.Comm))
    if width is None or not address:
        return None
    datatype = {"float32": mpi.FLOAT, "float64": mpi.DOUBLE}[str(dtype)]
    return address, width(comm.handle), width(datatype.handle), width(mpi.SUM.handle)


def nccl_unusable(places: list[tuple[str, str]], loaded: list[bool]) -> str | None:
    """Why NCCL cannot sum these ranks' arrays, or None where it can. ``places``: each rank's
    (host, PCI bus id of its GPU); ``loaded``: whether NCCL's library loads on each rank. NCCL
    refuses two ranks on one GPU ("Duplicate GPU detected")."""
    missing = [rank for rank, ok in enumerate(loaded) if not ok]
    if missing:
        return (
            f"CuPy finds no NCCL library on rank(s) {missing}; pip install nvidia-nccl-cu12 "
            "(or nvidia-nccl-cu13, as CuPy's CUDA) installs one"
        )
    first_on: dict[tuple[str, str], int] = {}
    for rank, place in enumerate(places):
        if place in first_on:
            host, bus = place
            return f"ranks {first_on[place]} and {rank} share the GPU at {bus} on {host}"
        first_on[place] = rank
    return None


class MPI:
    """Synchronous data parallelism over an MPI communicator (mpi4py's ``COMM_WORLD`` by
    default). ``rank`` and ``size`` say where this process stands; ``is_root`` is rank 0, the
    one that prints, plots and writes files.

    Made before the model, it puts each rank of a node on the node's GPUs in turn when the CuPy
    backend is active. Where every rank has a GPU of its own, NCCL sums the gradients on the
    devices; ranks that share a GPU (NCCL refuses them) sum them through host memory by MPI
    (``device_collective`` says which, once training starts).

    ``threads``: the threads each rank's kernels and BLAS may use. The default is the machine's
    cores divided by the ranks on this node, so the ranks do not oversubscribe the cores.

    ``timeout``: the seconds a rank waits for the others (in a collective, or a stretch of
    compiled steps) before it ends the job with one line saying so; default TINYNET_MPI_TIMEOUT,
    else 600.

    ``average_every=K``: local SGD instead. Each rank takes its shard of every global batch as
    its own step (batch_size / ranks rows, the update from its gradient alone), and every K
    steps the ranks average their weights and optimizer state: one allreduce per K steps
    instead of one per step, and each stretch of K steps runs in the backend's fused epoch.
    Not the same computation as one process (see docs/guide/data-parallel.md for its cost).
    """

    def __init__(
        self,
        comm: Any = None,
        threads: int | None = None,
        average_every: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.average_every = (
            None if average_every is None else positive_int("average_every", average_every)
        )
        if timeout is None:
            timeout = timeout_from_env()
        elif not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
            raise InvalidInputError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        threads = None if threads is None else positive_int("threads", threads)
        self._buffers: dict = {}  # the allreduces' buffers (and host copies), per size and dtype
        self._compiled: dict = {}  # dtype -> compiled_allreduce's answer, found once
        # how device arrays are summed: "nccl" or "mpi" (through host memory), chosen by all
        # ranks together when the first CuPy model starts training
        self.device_collective: str | None = None
        self._nccl: Any = None  # the NCCL communicator
        try:
            from mpi4py import MPI as mpi
        except ImportError as exc:
            from tinynet.system import install_hint

            raise ImportError(
                f"distributed training needs mpi4py and an MPI library: {install_hint('mpi')}"
            ) from exc
        self._mpi = mpi
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.watchdog = Watchdog(
            float(timeout), self.rank, self.size, stop_all=lambda: self.comm.Abort(1)
        )
        local = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_size: int = local.Get_size()
        self.local_rank: int = local.Get_rank()
        local.Free()
        if "cupy" in sys.modules:  # CuPy was imported first: take this rank's GPU now
            import cupy

            use_node_gpu(cupy, self.local_rank)
        self.threads = threads if threads is not None else self._fair_threads()
        self._limit_threads(self.threads)
        # where each rank runs: a rank killed outright cannot say it failed, and the launcher
        # names only its process id, so rank 0 logs which rank each process id is
        with self.watchdog.waiting("the start (every rank's place)"):
            places = self.comm.allgather((os.getpid(), socket.gethostname()))
        if self.is_root:
            log.info(
                "MPI: %d ranks: %s",
                self.size,
                ", ".join(f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(places)),
            )

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def _fair_threads(self) -> int:
        from tinynet.system import cpu_count

        return max(1, cpu_count() // self.local_size)

    @staticmethod
    def _limit_threads(threads: int) -> None:
        """At most ``threads`` threads for BLAS (threadpoolctl) and Numba in this process."""
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        if "numba" in sys.modules:  # this thread's share (tinynet's teams ask get_num_threads)
            import numba

            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        else:  # read when Numba is imported; changed after, Numba refuses it
            os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))

    # -- before training ------------------------------------------------------------------------
    def start(
        self,
        model: Any,
        optimizer: Any,
        loss: Any,
        batch_size: int,
        data: tuple,
        seed: Any,
        settings: dict[str, Any] | None = None,
    ) -> int:
        """Check that every rank trains the same thing on the same data (X, T) with the same
        ``settings`` (the rest of fit's arguments that change the collectives or the result:
        epochs, schedule, validation, ...), make the weights rank 0's, and return the shuffling
        seed every rank uses (rank 0's). An InvalidInputError on every rank, before any
        training, when the ranks disagree."""
        if batch_size < self.size:
            raise InvalidInputError(
                f"batch_size {batch_size} over {self.size} ranks: each step needs a row for "
                f"every rank, so at least {self.size} (per-sample SGD has nothing to split)"
            )
        if self.average_every is not None and batch_size % self.size:
            raise InvalidInputError(
                f"local SGD (average_every) needs a batch_size the {self.size} ranks divide "
                f"evenly, got {batch_size}"
            )
        mine = self._fingerprint(model, optimizer, loss, batch_size, data)
        mine.update({key: repr(value) for key, value in (settings or {}).items()})
        with self.watchdog.waiting("the start (the ranks' settings)"):
            everyone = self.comm.allgather(mine)
        differ = [rank for rank, theirs in enumerate(everyone) if theirs != everyone[0]]
        if differ:
            keys = sorted(k for k in everyone[0] if everyone[differ[0]].get(k) != everyone[0][k])
            if keys == ["data"]:  # (a rank on another backend may also sum X differently)
                raise InvalidInputError(
                    f"the MPI ranks train on different data: rank {differ[0]}'s (X, T) differ "
                    "from rank 0's; every rank passes the whole training set (each trains on "
                    "its shard of every batch)"
                )
            keys = [key for key in keys if key != "data"]
            raise InvalidInputError(
                f"the MPI ranks do not train the same model: rank {differ[0]} differs from rank 0 "
                f"in {', '.join(keys)} ({everyone[differ[0]][keys[0]]!r} against "
                f"{everyone[0][keys[0]]!r}); ranks differing: {differ}"
            )
        B = model.backend
        if B.xp is not np and self.device_collective is None:
            self._choose_device_collective()
        with self.watchdog.waiting("the start (rank 0's weights)"):
            for p in model.parameters():
                weights = np.ascontiguousarray(B.to_numpy(p.data))
                self.comm.Bcast(weights, root=0)
                p.data[...] = B.asarray(weights)
            if seed is None:
                seed = int(np.random.SeedSequence().generate_state(1)[0])
            return self.comm.bcast(seed, root=0)

    def _fingerprint(
        self, model: Any, optimizer: Any, loss: Any, batch_size: int, data: tuple
    ) -> dict:
        layers = [layer.config() for layer in model.layers]
        return {
            "data": data_digest(model.backend, *data),
            "model": json.dumps(layers, sort_keys=True),
            "dtype": str(np.dtype(model.dtype)),
            "backend": model.backend.name,
            "optimizer": repr(optimizer),  # its class and settings
            "loss": repr(loss),
            "batch_size": batch_size,
            "average_every": self.average_every,
        }

    # -- each step ------------------------------------------------------------------------------
    def shard(self, first: int, last: int) -> tuple[int, int]:
        """This rank's contiguous rows of the global batch [first, last)."""
        n = last - first
        return first + n * self.rank // self.size, first + n * (self.rank + 1) // self.size

    def average_gradients(self, params: list[Any], weight: float, backend: Any) -> None:
        """grad <- sum over ranks of weight_r grad_r for every trainable parameter, with one
        allreduce of one buffer. ``weight``: this rank's share of the batch (its rows / the
        batch's, for a mean loss), so the result is the whole batch's gradient. On the GPU the
        buffer stays on the device (``allreduce_on_device``); on the CPU, MPI sums it."""
        grads = [p for p in params if not p.frozen and p.grad is not None]
        if not grads:
            return
        xp = backend.xp
        on_device = xp is not np
        size, dtype = sum(p.grad.size for p in grads), grads[0].grad.dtype
        key = (on_device, size, str(dtype))
        buffer = self._buffers.get(key)
        if buffer is None:  # one buffer a run, not one a step
            buffer = self._buffers[key] = xp.empty(size, dtype)
        offset = 0
        for p in grads:
            part = p.grad.reshape(-1)
            buffer[offset : offset + part.size] = part if on_device else backend.to_numpy(part)
            offset += part.size
        buffer *= buffer.dtype.type(weight)
        if on_device:
            self.allreduce_on_device(buffer)
        else:
            self.allreduce(buffer, "the gradients' allreduce")
        offset = 0
        for p in grads:
            size = p.grad.size
            p.grad = backend.asarray(buffer[offset : offset + size].reshape(p.grad.shape))
            offset += size

    def allreduce_on_device(self, buffer: Any) -> None:
        """buffer (a CuPy array) <- its sum over the ranks, in place. NCCL on the current stream
        (so a CUDA graph captures it), or MPI on a host copy where ranks share a GPU."""
        if self.device_collective == "nccl":
            from cupy import cuda
            from cupy.cuda import nccl

            kind = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[str(buffer.dtype)]
            stream = cuda.get_current_stream().ptr
            self._nccl.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, kind,
                                 nccl.NCCL_SUM, stream)  # fmt: skip
        else:
            key = ("host", buffer.size, str(buffer.dtype))
            host = self._buffers.get(key)
            if host is None:  # one host copy a run, not one a step
                host = self._buffers[key] = np.empty(buffer.size, buffer.dtype)
            buffer.get(out=host)  # waits for the kernels that wrote it
            self.allreduce(host, "the gradients' allreduce")
            buffer.set(host)

    def compiled_allreduce(self, dtype: Any) -> tuple | None:
        """MPI_Allreduce for compiled code: (its address in the MPI library mpi4py loaded, this
        communicator, the MPI datatype of ``dtype``, MPI_SUM), each handle as a NumPy integer
        of the library's handle width; None where the library cannot be found (the numba
        backend then runs kernel by kernel)."""
        dtype = np.dtype(dtype)
        if dtype not in self._compiled:
            self._compiled[dtype] = _allreduce_handles(self._mpi, self.comm, dtype)
        return self._compiled[dtype]

    def _choose_device_collective(self) -> None:
        """NCCL when it loads on every rank and no two ranks share a GPU, else MPI through host
        memory; decided by all ranks together, the NCCL communicator made here (rank 0 draws
        its unique id, MPI broadcasts it), before any CUDA graph is captured."""
        import cupy

        try:
            from cupy.cuda import nccl

            loaded = bool(getattr(nccl, "available", True))
        except ImportError:
            loaded = False
        bus = cupy.cuda.runtime.deviceGetPCIBusId(cupy.cuda.Device().id)
        everyone = self.comm.allgather(((socket.gethostname(), bus), loaded))
        why = nccl_unusable([place for place, _ in everyone], [ok for _, ok in everyone])
        if why is None:
            uid = nccl.get_unique_id() if self.is_root else None
            self._nccl = nccl.NcclCommunicator(self.size, self.comm.bcast(uid, root=0), self.rank)
            self.device_collective = "nccl"
        else:
            self.device_collective = "mpi"
            if self.is_root:
                log.warning(
                    "MPI: the gradients are summed through host memory by MPI, not by NCCL (%s); "
                    "CUDA graphs are off for the training steps",
                    why,
                )
        if self.is_root:
            log.info("MPI: device arrays summed by %s", self.device_collective.upper())

    def average_parameters(self, params: list[Any], optimizer: Any, backend: Any) -> None:
        """Every parameter and optimizer buffer <- its mean over the ranks (local SGD), with
        one allreduce of one buffer."""
        arrays = [p.data for p in params]
        arrays += [b for p in params if not p.frozen for b in optimizer.buffers(p, backend)]
        sizes = [a.size for a in arrays]
        buffer = np.empty(sum(sizes), np.dtype(arrays[0].dtype))
        offset = 0
        for a, size in zip(arrays, sizes, strict=True):
            buffer[offset : offset + size] = backend.to_numpy(a).reshape(-1)
            offset += size
        self.allreduce(buffer, "the weights' average")
        buffer /= self.size
        offset = 0
        for a, size in zip(arrays, sizes, strict=True):
            a[...] = backend.asarray(buffer[offset : offset + size].reshape(a.shape))
            offset += size

    def local_rows(self, order: Any, first: int, last: int, batch_size: int) -> Any:
        """This rank's shard of each global batch of rows first..last of ``order``, in order
        (local SGD's own rows for those steps)."""
        shards = [order[slice(*self.shard(s, min(s + batch_size, last)))]
                  for s in range(first, last, batch_size)]  # fmt: skip
        return np.concatenate(shards) if shards else order[:0]

    def sum(self, value: float) -> float:
        """The sum of ``value`` over the ranks."""
        total = np.array([float(value)])
        self.allreduce(total, "the epoch's loss")
        return float(total[0])

    def allreduce(self, buffer: np.ndarray, what: str) -> None:
        """buffer <- its sum over the ranks, in place, waiting at most the watchdog's timeout.
        MPICH's blocking call polls while it waits (a core busy): polling from Python
        instead, with or without sleeps between tests, made the numpy backend's distributed
        steps 15% to 2 times slower here (benchmarks/results/design.md)."""
        with self.watchdog.waiting(what):
            self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

    # -- faults ---------------------------------------------------------------------------------
    def abort(self, exc: BaseException) -> None:
        """Stop every rank: one line naming this rank and its error on stderr, then this
        process exits at once with status 1, and the launcher stops the others, which may be
        waiting in a collective that would never complete. Not MPI_Abort: MPICH's runs a
        collective of its own, which met the others' pending allreduce and crashed them with
        pages of internal errors."""
        what = f"failed: {type(exc).__name__}: {exc}"
        if type(exc).__module__.startswith("mpi4py"):
            # MPICH reports a rank killed outright as an error of this rank's collective, in
            # pages of its error stack: say what it means, with the stack's first line
            said = str(exc).strip().splitlines()
            what = (
                "lost contact with another rank (killed or crashed: the launcher's report "
                f"names its signal and process id); MPI said: {said[0] if said else exc!r}"
            )
        print(
            f"tinynet: error: rank {self.rank} of {self.size} {what}; stopping all ranks",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(1)


__all__ = ["MPI", "data_digest", "file_digest", "launched_size", "nccl_unusable"]
