"""How many threads a call runs on when other processes may hold the cores: the machine's
load (MachineLoad), a choice per kind of call from measured rates (TeamSizer), and the BLAS
pools sized by it (BlasThreads). Shared by the numpy and numba backends."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tinynet import backend as backend_module
from tinynet.errors import BackendError
from tinynet.system import cpu_count


class MachineLoad:
    """How busy the other processes keep the cores: the CPU time the whole machine spent busy
    (/proc/stat, steal included) minus this process's own, per second of wall time, averaged
    over the last WINDOW_S at least. Linux only; None elsewhere or before a window has passed.

    What the others *use* understates what they *want* once no core is idle: the scheduler
    shares the cores among all runnable threads, ours included. ``others_demand`` estimates the
    busy threads they run from that share (measured here with 2 cores: two busy loops beside
    one thread of ours use 1.43 cores, one beside it 1.02).

    ``stat_path``, ``clock``, ``own_cpu`` and ``cores`` are where the readings come from (the
    tests give a file and clocks of their own)."""

    WINDOW_S = 0.2
    # The first reading comes sooner, so the first call of a run already sees the load; five
    # clock ticks (at 100 a second) still tell a busy core from an idle one.
    FIRST_WINDOW_S = 0.05

    def __init__(
        self,
        stat_path: str = "/proc/stat",
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
        cores: int | None = None,
    ) -> None:
        self._stat_path, self._clock, self._own_cpu = stat_path, clock, own_cpu
        self.cores = cores or os.cpu_count() or 1  # /proc/stat counts the whole machine's
        self._last: tuple[float, float, float, float] | None = self._read()
        self._others: float | None = None
        self._idle: float | None = None

    def _read(self) -> tuple[float, float, float, float] | None:
        """(wall time, machine busy seconds, own CPU seconds, machine idle seconds), or None
        without /proc/stat."""
        try:
            with open(self._stat_path) as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            ticks = os.sysconf("SC_CLK_TCK")
            # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy
            busy = sum(fields[:3]) + sum(fields[5:8])
            idle = fields[3] + fields[4]
        except (OSError, ValueError, IndexError):
            return None
        return self._clock(), busy / ticks, self._own_cpu(), idle / ticks

    def others_busy(self) -> float | None:
        """Cores' worth of CPU time the other processes used lately (0: a quiet machine)."""
        now = self._read()
        if now is None or self._last is None:
            return self._others
        elapsed = now[0] - self._last[0]
        if elapsed >= (self.WINDOW_S if self._others is not None else self.FIRST_WINDOW_S):
            others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / elapsed
            self._idle = max(0.0, (now[3] - self._last[3]) / elapsed)
            self._others, self._last = max(0.0, others), now
        return self._others

    SATURATED_IDLE = 0.25  # less idle than this (cores' worth): every core was taken

    def others_demand(self, own_threads: int) -> float | None:
        """The busy threads the other processes run, while this process ran ``own_threads``:
        what they used where a core was left idle; else, sharing the cores fairly among all
        runnable threads, own_threads * others / (cores - others)."""
        others = self.others_busy()
        if others is None or self._idle is None:
            return None
        if self._idle >= self.SATURATED_IDLE:
            return others
        return own_threads * others / max(self.cores - others, 0.05)


class TeamSizer:
    """How many threads a kind of call runs on: the most it may use, unless fewer were measured
    faster. Another process that takes a core makes a team's members wait for each other (and
    OpenBLAS's threads too), and one thread is then faster than two; the load comes and goes,
    so each size's rate (samples per second) is re-measured as calls run.

    While the other processes leave a core free (MachineLoad, from /proc/stat), every call
    runs on the full team, without probes: a team is slower than one thread only when it must
    share its cores. When they leave none (they run ``most`` busy threads or more:
    MachineLoad.others_demand), every call runs on one thread, the first included. In between,
    and where /proc/stat cannot be read, the rates decide, per kind of call (``key``): the
    first call is not counted (it may compile), nor calls of fewer than MIN_SAMPLES; the full
    team runs, one thread is probed, and the faster runs on; the size changes only when a
    probe of the other is faster. The full team probes one thread when its rate falls below
    SLOWDOWN of its best. One thread that won under load keeps
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
        self._last_size: int | None = None  # the threads the last call ran on, for the load

    def choose(self, key: Any, most: int) -> int:
        if most <= 1:
            return 1
        fixed = backend_module.get_threads()
        if fixed is not None:  # tn.set_threads: the user's count, no probes
            return min(fixed, most)
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
        demand = self.machine.others_demand(self._last_size or most)
        if demand is not None and demand >= most - self.FREE:
            # no core is free: a team's threads would wait for each other for their share of
            # the cores (ten times slower under a heavy load), from the first call on; one
            # thread runs until the load leaves a core to share (then the rates decide)
            self._last_size = 1
            return 1
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

    @contextmanager
    def sized(self, key: Any, most: int, samples: int, adaptive: bool = True) -> Iterator[int]:
        """The size a call of kind ``key`` over ``samples`` runs on (``most`` unless
        adaptive), then its rate recorded."""
        fixed = backend_module.get_threads() is not None  # the user's count wins over both
        size = self.choose(key, most) if adaptive or fixed else most
        self._last_size = size
        start = time.perf_counter()
        yield size
        self.record(key, size, samples, time.perf_counter() - start)

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


def adaptive_threads_from_env() -> bool:
    """TINYNET_ADAPTIVE_THREADS: "0" keeps every call on the most threads it may use (OpenBLAS
    rounds differently on one thread than on two, so only then are BLAS-path runs the same bit
    for bit); "1" or unset lets TeamSizer choose."""
    value = os.environ.get("TINYNET_ADAPTIVE_THREADS", "").strip()
    if value not in ("", "0", "1"):
        raise BackendError(f"TINYNET_ADAPTIVE_THREADS must be 0 or 1, got {value!r}")
    return value != "0"


class BlasThreads:
    """The BLAS thread pools (threadpoolctl) sized per kind of call by a TeamSizer: OpenBLAS's
    threads wait for each other by spinning, so beside a busy core one thread can beat two."""

    def __init__(self, sizer: TeamSizer | None = None) -> None:
        self.adaptive = adaptive_threads_from_env()
        self.sizer = sizer if sizer is not None else TeamSizer()
        self._pools: Any = None  # threadpoolctl's handle on the loaded BLAS pools

    def most(self) -> int:
        """The threads the pools may use: their setting, at most the cores."""
        if self._pools is None:
            from threadpoolctl import ThreadpoolController

            self._pools = ThreadpoolController().select(user_api="blas")
        threads = [pool.num_threads for pool in self._pools.lib_controllers]
        return max(1, min([cpu_count(), *threads]))

    @contextmanager
    def sized(self, key: Any, samples: int) -> Iterator[None]:
        """Run the block on the BLAS threads chosen for ``key``; its rate is recorded."""
        most = self.most()
        with self.sizer.sized(key, most, samples, self.adaptive) as size:
            if size == most:
                yield
            else:
                with self._pools.limit(limits=size):
                    yield
