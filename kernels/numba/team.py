"""A team of threads in one compiled loop: the atomic counters they meet through (compiled),
and the pool of threads that runs a team (Python)."""

from __future__ import annotations

import os
import time
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


class MachineLoad:
    """How busy the other processes keep the cores: the CPU time the whole machine spent busy
    (/proc/stat, steal included) minus this process's own, per second of wall time, averaged
    over the last WINDOW_S at least. Linux only; None elsewhere or before a window has passed."""

    WINDOW_S = 0.2

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = self._read()
        self._others: float | None = None

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        """(wall time, machine busy seconds, own CPU seconds), or None without /proc/stat."""
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy
        busy = sum(fields[:3]) + sum(fields[5:8])
        return time.monotonic(), busy / ticks, time.process_time()

    def others_busy(self) -> float | None:
        """Cores' worth of CPU time the other processes used lately (0: a quiet machine)."""
        now = self._read()
        if now is None or self._last is None:
            return self._others
        elapsed = now[0] - self._last[0]
        if elapsed >= self.WINDOW_S:
            others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / elapsed
            self._others, self._last = max(0.0, others), now
        return self._others


class TeamSizer:
    """How many threads a kind of call runs on: the most it may use, unless fewer were measured
    faster. Another process that takes a core makes a team's members wait for each other (and
    OpenBLAS's threads too), and one thread is then faster than two; the load comes and goes,
    so each size's rate (samples per second) is re-measured as calls run.

    While the other processes leave a core free (MachineLoad, from /proc/stat), every call
    runs on the full team, without probes: a team is slower than one thread only when it must
    share its cores. Under load, and where /proc/stat cannot be read, the rates decide, per
    kind of call (``key``): the first call is not counted (it may compile), nor calls of fewer
    than MIN_SAMPLES; the full team runs, one thread is probed, and the faster runs on; the
    size changes only when a probe of the other is faster. The full team probes one thread
    when its rate falls below SLOWDOWN of its best. One thread that won under load keeps
    running until a core is free again; otherwise (no /proc/stat) it probes the team after
    ``interval`` calls, an interval that doubles (up to MAX_INTERVAL) while those probes lose.
    """

    MAX_INTERVAL = 32
    SLOWDOWN = 0.7
    MIN_SAMPLES = 1024  # a shorter call's rate is mostly its fixed cost: not counted

    FREE = 0.5  # the other processes use less than this many cores: one is free for us

    def __init__(self, machine: MachineLoad | None = None) -> None:
        self._kinds: dict[Any, dict[str, Any]] = {}
        self.machine = machine if machine is not None else MachineLoad()

    def choose(self, key: Any, most: int) -> int:
        if most <= 1:
            return 1
        kind = self._kinds.setdefault(
            key,
            {
                "rates": {},
                "best": {},
                "calls": 0,
                "interval": 1,
                "seen": False,
                "running": None,  # the size calls run on, changed only by a probe it loses
                "load_when_one_won": None,
            },
        )
        free = self.FREE * (most - 1)
        others = self.machine.others_busy()
        if others is not None and others < free:
            return most  # the cores are free: the whole team, no probes
        rates = kind["rates"]
        if not kind["seen"] or most not in rates:
            return most
        if 1 not in rates:
            return 1  # the first probe
        running = kind["running"]
        if running == most:  # one thread again only when the team slows down under load
            fell = rates[most] < self.SLOWDOWN * kind["best"][most]
            return 1 if fell else most
        # one thread won under load: the team again once the load has gone, not before
        then = kind["load_when_one_won"]
        if others is not None and then is not None and then >= free:
            return 1  # until the load goes (above)
        return most if kind["calls"] >= kind["interval"] else 1

    def record(self, key: Any, size: int, samples: int, seconds: float) -> None:
        kind = self._kinds.get(key)
        if kind is None or samples < self.MIN_SAMPLES or seconds <= 0:
            return
        if not kind["seen"]:
            kind["seen"] = True  # the first call: compilation, page faults
            return
        rates, best = kind["rates"], kind["best"]
        running = kind["running"] or size  # the size chosen until now
        rate = samples / seconds
        rates[size] = rate
        best[size] = max(best.get(size, 0.0), rate)
        kind["calls"] += 1
        if size != running and running in rates:  # a probe: sizes change only by probes
            won = rate > rates[running]
            kind["interval"] = 4 if won else min(2 * kind["interval"], self.MAX_INTERVAL)
            kind["calls"] = 0
            best[running] = rates[running]  # its best was measured under another load
            if won:
                kind["running"] = size
                if size == 1:
                    kind["load_when_one_won"] = self.machine.others_busy()
        elif kind["running"] is None:
            kind["running"] = size
