"""A team of threads in one compiled loop: the atomic counters they meet through (compiled),
and the pool of threads that runs a team (Python)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from tinynet.kernels.numba.compile import inner_jit

# -- a team of threads in one compiled loop ---------------------------------------------------
# A compiled epoch split over cores runs as one nogil call per thread (see ``run_team``), each
# thread owning a slice of the first layer's rows. They meet once per step: thread t publishes
# "I have written my part of step s" by storing s into progress[t * FLAG_STRIDE] (release), and
# waits until every thread's counter reaches s (acquire). Numba has no atomics on the CPU, so the
# two accesses are LLVM atomic instructions; a plain load could be hoisted out of the wait loop.
FLAG_STRIDE = 16  # int64 counters 128 bytes apart: no two threads' counters share a cache line
# A waiting thread spins this many times (a few microseconds, longer than a quiet machine's
# waits) before it starts giving its core away between checks: on a busy machine the thread it
# waits for may be off its core, and a spinning waiter would keep it off.
SPINS_BEFORE_YIELDING = 4096


def _flag_pointer(context, builder, signature, args):
    flags_type, index_type = signature.args[0], signature.args[1]
    flags = context.make_array(flags_type)(context, builder, args[0])
    index = context.cast(builder, args[1], index_type, types.intp)
    return cgutils.get_item_pointer(context, builder, flags_type, flags, [index])


@intrinsic
def _load_acquire(typingctx, flags, index):
    """flags[index], an int64 another thread stores with ``_store_release``."""

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_flag_pointer(context, builder, signature, args), "acquire", 8)

    return types.int64(flags, index), codegen


@intrinsic
def _store_release(typingctx, flags, index, value):
    """flags[index] = value, after (as other threads see it) every write this thread made."""

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, _flag_pointer(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()

    return types.void(flags, index, value), codegen


@intrinsic
def _yield_core(typingctx):
    """sched_yield(2): the core goes to another runnable thread, if there is one."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield"
        )
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@inner_jit
def publish(progress, rank, step):
    _store_release(progress, rank * FLAG_STRIDE, step)


@inner_jit
def wait_for_team(progress, step):
    """Wait until every thread has published ``step``: spin, then yield the core between
    checks (SPINS_BEFORE_YIELDING). The team never outnumbers the cores."""
    for t in range(progress.shape[0] // FLAG_STRIDE):
        spins = 0
        while _load_acquire(progress, t * FLAG_STRIDE) < step:
            spins += 1
            if spins > SPINS_BEFORE_YIELDING:
                _yield_core()


@inner_jit
def meet(progress, rank, step):
    """Publish ``step`` and wait for the team to reach it; the next step's number."""
    publish(progress, rank, step)
    wait_for_team(progress, step)
    return step + 1


_TEAM_POOL: ThreadPoolExecutor | None = None


def _forget_team_pool() -> None:
    """In a forked child the pool's threads are gone, and a team waiting for them would spin
    forever: the child starts a pool of its own."""
    global _TEAM_POOL
    _TEAM_POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_team_pool)


def argument_kind(value: Any) -> Any:
    """What of an argument Numba's dispatch depends on: an array's dtype and dimensions, a
    tuple's (or namedtuple's) type and each of its fields, a scalar's type."""
    if isinstance(value, np.ndarray):
        return value.dtype, value.ndim
    if isinstance(value, tuple):
        return type(value), tuple(argument_kind(v) for v in value)
    return type(value)


def split_rows(rows: int, parts: int) -> list[int]:
    """Bounds of ``parts`` near-equal row ranges, cut at multiples of 16 rows (no two threads
    write into one cache line of a float32 row), or of 4 (the register tiles) for small layers."""
    align = 16 if rows >= 32 * parts else 4
    cuts = [min(rows, round(rows * k / parts / align) * align) for k in range(1, parts)]
    return [0, *cuts, rows]


def run_team(compiled: set, kernel: Any, per_rank: list[tuple]) -> list[float]:
    """kernel(*per_rank[t]) for every rank t at once, rank 0 on this thread and the others on
    a pool kept for the process; their results. Every kernel takes (thread: compile.Thread,
    data: compile.Data, ...). ``compiled``: the (kernel, argument kinds) already compiled, kept
    by the caller."""
    global _TEAM_POOL
    if len(per_rank) == 1:
        return [kernel(*per_rank[0])]
    key = (kernel, *map(argument_kind, per_rank[0]))  # what Numba compiles a version for
    if key not in compiled:
        # compile on this thread first, with no samples: a thread of the team that failed
        # to compile would leave the others waiting for it forever
        thread, data, *rest = per_rank[0]
        kernel(thread, data._replace(order=data.order[:0]), *rest)
        compiled.add(key)
    if _TEAM_POOL is None or _TEAM_POOL._max_workers < len(per_rank) - 1:
        _TEAM_POOL = ThreadPoolExecutor(len(per_rank) - 1, thread_name_prefix="tinynet")
    others = [_TEAM_POOL.submit(kernel, *args) for args in per_rank[1:]]
    results = [kernel(*per_rank[0])]
    return results + [future.result() for future in others]
