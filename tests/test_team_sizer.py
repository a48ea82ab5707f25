"""The choice of threads per call (threads.TeamSizer, for the numba backend's teams and both CPU
backends' BLAS pools), fed measured rates by hand:
the full team on a quiet machine, one thread when the team slows down and one is faster, the
team again once it is faster."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

pytest.importorskip("numba")

from tinynet.kernels.threads import MachineLoad, TeamSizer

N = 4096  # samples per call


class Load:
    """A machine whose other processes use ``cores`` (None: unknown, as off Linux)."""

    def __init__(self, cores: float | None = None):
        self.cores = cores

    def others_busy(self) -> float | None:
        return self.cores

    def others_demand(self, own_threads: int) -> float | None:
        return self.cores  # as if a core were left idle: what they use is what they want


def _run(sizer: TeamSizer, rate_of, calls: int, most: int = 2) -> list[int]:
    """Sizes chosen over ``calls`` calls, each measured at rate_of(size) samples/s."""
    chosen = []
    for _ in range(calls):
        size = sizer.choose("k", most)
        sizer.record("k", size, N, N / rate_of(size))
        chosen.append(size)
    return chosen


def test_a_quiet_machine_keeps_the_full_team_after_one_probe():
    sizer = TeamSizer(Load())
    chosen = _run(sizer, {2: 2.0e6, 1: 1.2e6}.get, 40)
    # not counted (compiles), the team, the one-thread probe, then the team throughout
    assert chosen == [2, 2, 1] + [2] * 37


def test_a_slowed_team_gives_way_to_one_thread_and_returns_when_the_load_goes():
    sizer = TeamSizer(Load())
    _run(sizer, {2: 2.0e6, 1: 1.2e6}.get, 5)
    loaded = {2: 0.4e6, 1: 1.1e6}.get
    chosen = _run(sizer, loaded, 40)
    assert chosen[2:5] == [1, 1, 1]  # the team's rate fell: one thread, measured faster, runs
    tries = [i for i, size in enumerate(chosen) if size == 2][1:]
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps == sorted(gaps) and gaps[-1] <= TeamSizer.MAX_INTERVAL + 1  # backing off
    assert chosen.count(1) > 0.8 * len(chosen)
    quiet_again = _run(sizer, {2: 2.0e6, 1: 1.2e6}.get, 2 * TeamSizer.MAX_INTERVAL + 4)
    assert quiet_again[-TeamSizer.MAX_INTERVAL :] == [2] * TeamSizer.MAX_INTERVAL


def test_a_small_slowdown_keeps_the_team():
    sizer = TeamSizer(Load())
    _run(sizer, {2: 2.0e6, 1: 1.2e6}.get, 5)
    chosen = _run(sizer, {2: 0.75 * 2.0e6, 1: 1.2e6}.get, 20)  # above SLOWDOWN of its best
    assert chosen == [2] * 20


def test_short_calls_are_not_counted():
    sizer = TeamSizer(Load())
    quiet = {2: 2.0e6, 1: 1.2e6}.get
    _run(sizer, quiet, 1)  # the first call, never counted
    for _ in range(5):  # a few samples at a terrible rate: the call's fixed cost
        sizer.record("k", sizer.choose("k", 2), TeamSizer.MIN_SAMPLES - 1, 1.0)
    # as if the short calls had not been: the team, the one-thread probe, the team
    assert _run(sizer, quiet, 5) == [2, 1, 2, 2, 2]


def test_a_team_slowed_below_its_best_tries_one_thread_again():
    """One thread's last rate can be stale (measured in a bad moment): a team that falls
    below SLOWDOWN of its best measures one thread again rather than trust it."""
    sizer = TeamSizer(Load())
    _run(sizer, {2: 2.0e6, 1: 0.5e6}.get, 5)  # one thread measured slow once
    chosen = _run(sizer, {2: 0.8e6, 1: 1.1e6}.get, 10)  # still above that stale rate
    assert chosen[1:6] == [1] * 5  # after one call, then the team is tried again later


def test_one_core_is_always_one_thread():
    assert _run(TeamSizer(Load()), {1: 1.0e6}.get, 5, most=1) == [1] * 5


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_every_path_runs_on_the_size_chosen_and_gives_the_same_weights(monkeypatch, batch):
    """The backend asks the sizer, runs on its choice (a one-thread BLAS epoch under a BLAS
    limit, lifted afterwards), and the compiled paths' weights do not depend on it (the BLAS
    epoch's: within float32 rounding, OpenBLAS sums differently on one thread)."""
    import scipy.linalg.blas  # noqa: F401 - its BLAS pool loaded before the count below
    from threadpoolctl import threadpool_info

    import tinynet as tn

    x, y = tn.datasets.mnist_sample("train")
    runs = []
    for forced in (None, 1):
        with tn.use_backend("numba") as B:
            asked = []
            real = B._sizer.choose

            def choose(key, most, forced=forced, real=real, asked=asked):
                asked.append(most)
                return forced or real(key, most)

            monkeypatch.setattr(B._sizer, "choose", choose)
            before = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
            net = tn.MLP.from_sizes([784, 160, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
            net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.05, 0.9), epochs=1, batch_size=batch, seed=0)
            after = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
            assert {path: after[path] for path in before} == before
            assert asked  # every call asked
            runs.append(net.get_weights())
    for (W0, b0), (W1, b1) in zip(*runs, strict=True):
        if batch <= 32:
            np.testing.assert_array_equal(W1, W0)
            np.testing.assert_array_equal(b1, b0)
        else:
            np.testing.assert_allclose(W1, W0, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(b1, b0, rtol=1e-4, atol=1e-6)


def test_one_thread_returns_to_the_team_as_soon_as_a_core_is_free():
    load = Load(1.0)  # another process keeps a core busy
    sizer = TeamSizer(load)
    _run(sizer, {2: 2.0e6, 1: 1.2e6}.get, 5)
    loaded = _run(sizer, {2: 0.4e6, 1: 1.1e6}.get, 40)
    assert loaded[1:] == [1] * 39  # no tries of the team while the core stays busy
    load.cores = 0.05  # the other process ended
    assert _run(sizer, {2: 2.0e6, 1: 1.2e6}.get, 3) == [2, 2, 2]


class FakeStat:
    """A /proc/stat of our own: its first line's busy and idle ticks, a wall clock and this
    process's CPU clock, each moved by hand."""

    def __init__(self, path):
        self.path, self.wall, self.own = path, 100.0, 5.0
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.fields = [0] * 10  # user nice system idle iowait irq softirq steal guest guest_nice
        self.write()

    def write(self):
        line = "cpu  " + " ".join(str(v) for v in self.fields)
        self.path.write_text(line + "\ncpu0 0 0 0 0 0 0 0 0 0 0\n")

    def advance(self, seconds, busy_s, own_s, idle_s=0.0, steal_s=0.0):
        """``seconds`` of wall time in which the machine was busy ``busy_s`` CPU seconds in user
        time (``own_s`` of them this process's), stolen ``steal_s`` and idle ``idle_s``."""
        self.wall += seconds
        self.own += own_s
        self.fields[0] += round(busy_s * self.ticks)
        self.fields[3] += round(idle_s * self.ticks)
        self.fields[7] += round(steal_s * self.ticks)
        self.write()

    def load(self, cores=2):
        return MachineLoad(
            str(self.path), clock=lambda: self.wall, own_cpu=lambda: self.own, cores=cores
        )


def test_the_machine_load_counts_other_processes_not_this_one(tmp_path):
    """Busy time is the machine's minus this process's own, per second of wall time, over
    windows of at least WINDOW_S: from a /proc/stat and clocks of the test's own."""
    stat = FakeStat(tmp_path / "stat")
    machine = stat.load()
    assert machine.others_busy() is None  # no window has passed yet
    stat.advance(1.0, busy_s=1.0, own_s=1.0, idle_s=1.0)  # only this process worked
    assert machine.others_busy() == pytest.approx(0.0)
    stat.advance(1.0, busy_s=2.0, own_s=1.0)  # another process took the other core
    assert machine.others_busy() == pytest.approx(1.0)
    stat.advance(0.5, busy_s=0.5, own_s=0.5, steal_s=0.25)  # the hypervisor took a quarter
    assert machine.others_busy() == pytest.approx(0.5)
    window = MachineLoad.WINDOW_S
    stat.advance(window / 2, busy_s=1.5 * window, own_s=0.0)  # too short: the last window's
    assert machine.others_busy() == pytest.approx(0.5)
    stat.advance(window, busy_s=0.0, own_s=0.0)  # a whole window: 1.5 windows' work in 1.5
    assert machine.others_busy() == pytest.approx(1.0)
    stat.advance(1.0, busy_s=0.5, own_s=1.0, idle_s=1.5)  # ticks lag the CPU clock: never < 0
    assert machine.others_busy() == 0.0


def test_what_the_others_want_when_no_core_is_idle(tmp_path):
    """Two busy loops beside one thread of ours on 2 cores use 1.43 cores between them (the
    scheduler's fair share), one beside it 1.02: their demand is 2 and 1 threads. With a core
    idle, what they use is what they want."""
    stat = FakeStat(tmp_path / "stat")
    machine = stat.load(cores=2)
    stat.advance(1.0, busy_s=1.5, own_s=1.0, idle_s=0.5)  # half a core idle
    assert machine.others_demand(own_threads=1) == pytest.approx(0.5)
    stat.advance(1.0, busy_s=2.0, own_s=2 / 3)  # saturated: 1 of ours, 2 of theirs, 2/3 each
    assert machine.others_demand(own_threads=1) == pytest.approx(2.0)
    stat.advance(1.0, busy_s=2.0, own_s=1.0)  # saturated: 2 of ours, 2 of theirs, 1/2 each
    assert machine.others_demand(own_threads=2) == pytest.approx(2.0)
    stat.advance(1.0, busy_s=2.0, own_s=1.0)  # saturated: 1 of ours and 1 of theirs
    assert machine.others_demand(own_threads=1) == pytest.approx(1.0)


def test_the_first_reading_comes_after_a_short_window(tmp_path):
    """The first call of a run should already see the load: the first reading needs only
    FIRST_WINDOW_S, the later ones WINDOW_S."""
    stat = FakeStat(tmp_path / "stat")
    machine = stat.load()
    stat.advance(MachineLoad.FIRST_WINDOW_S * 1.2, busy_s=MachineLoad.FIRST_WINDOW_S * 2.4, own_s=0)
    assert machine.others_busy() == pytest.approx(2.0)
    stat.advance(MachineLoad.FIRST_WINDOW_S * 1.2, busy_s=0.0, own_s=0.0)  # not a whole window
    assert machine.others_busy() == pytest.approx(2.0)


def test_an_unreadable_stat_file_reads_as_unknown(tmp_path):
    assert MachineLoad(str(tmp_path / "missing")).others_busy() is None
    garbled = tmp_path / "stat"
    garbled.write_text("cpu  12 x\n")
    assert MachineLoad(str(garbled)).others_busy() is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat")
def test_a_busy_process_reads_as_at_least_its_measured_share():
    """On the real /proc/stat: a busy child's own CPU time, read from /proc/<pid>/stat over the
    same window, is part of what others_busy reports. A lower bound only: whatever else runs
    on the machine can only add to it."""
    import subprocess
    import sys
    import time

    def child_cpu_s(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the child is running
        machine, start = MachineLoad(), child_cpu_s(busy.pid)
        began = time.monotonic()
        time.sleep(1.0)
        others, used = machine.others_busy(), child_cpu_s(busy.pid) - start
        elapsed = time.monotonic() - began
    finally:
        busy.kill()
        busy.wait()
    assert used > 0.05, "the busy child never ran"
    # two clock ticks of slack for where each reading fell within its tick
    assert others >= (used - 2 / os.sysconf("SC_CLK_TCK")) / elapsed


def test_no_free_core_means_one_thread_from_the_first_call():
    """Other processes keep both cores busy: one thread from the first call on, without
    probing the team (its threads would wait for each other); the team once a core frees."""
    sizer = TeamSizer(Load(1.6))
    assert _run(sizer, {2: 2.0e6, 1: 1.0e6}.get, 6) == [1] * 6
    sizer.machine.cores = 2.5
    assert _run(sizer, {2: 2.0e6, 1: 1.0e6}.get, 3) == [1] * 3
    sizer.machine.cores = 0.1
    assert _run(sizer, {2: 2.0e6, 1: 1.0e6}.get, 3) == [2] * 3


def test_a_fixed_thread_count_holds_whatever_the_load():
    """tn.use_threads / set_threads: the user's count (at most the team), no probes."""
    import tinynet as tn

    for load, fixed, expected in ((0.0, 1, 1), (2.0, 2, 2), (0.0, 5, 2), (None, 1, 1)):
        with tn.use_threads(fixed):
            assert tn.get_threads() == fixed
            assert _run(TeamSizer(Load(load)), {2: 1e6, 1: 2e6}.get, 4) == [expected] * 4
    assert tn.get_threads() is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(tn.InvalidInputError, match="threads must be a positive integer"):
            tn.set_threads(bad)


@pytest.mark.parametrize(("backend", "batch"), [("numpy", 64), ("numba", 1), ("numba", 64)])
def test_under_a_heavy_load_every_stretch_runs_on_one_thread(monkeypatch, backend, batch):
    """The machine as /proc/stat shows it with two busy processes on two cores: both CPU
    backends run every stretch of the epoch on one thread, the first included (before, the
    first stretches ran on the team, 10-25 times slower)."""
    import tinynet as tn

    x, y = tn.datasets.mnist_sample("train")
    with tn.use_backend(backend) as B:
        sizer = B._blas.sizer
        monkeypatch.setattr(sizer, "machine", Load(2.0))
        monkeypatch.setattr(B._blas, "adaptive", True)
        sizes = []
        real_record = sizer.record

        def record(key, size, samples, seconds):
            sizes.append(size)
            real_record(key, size, samples, seconds)

        monkeypatch.setattr(sizer, "record", record)
        net = tn.MLP.from_sizes([784, 64, 10], "relu", "softmax", seed=0, rescale=(1 / 255, 0))
        net.fit(x[:2000], y[:2000], tn.CrossEntropy(), tn.SGD(0.05), batch_size=batch)
    assert sizes and set(sizes) == {1}, sizes


def test_a_fixed_count_wins_over_adaptive_threads_off(monkeypatch):
    """TINYNET_ADAPTIVE_THREADS=0 keeps calls on all their threads, unless the user fixed a
    count in code (tn.use_threads), which wins."""
    import tinynet as tn
    from tinynet.kernels.threads import BlasThreads

    monkeypatch.setenv("TINYNET_ADAPTIVE_THREADS", "0")
    pools = BlasThreads(TeamSizer(Load(0.0)))
    assert not pools.adaptive
    with tn.use_threads(1), pools.sizer.sized("k", 2, N, pools.adaptive) as size:
        assert size == 1
    with pools.sizer.sized("k", 2, N, pools.adaptive) as size:
        assert size == 2


def test_fixed_threads_on_request(monkeypatch):
    """TINYNET_ADAPTIVE_THREADS=0: the sizer is never asked; another value is an error."""
    from tinynet.errors import BackendError
    from tinynet.kernels.numba.backend import NumbaBackend

    monkeypatch.setenv("TINYNET_ADAPTIVE_THREADS", "0")
    B = NumbaBackend()

    def never(key, most):
        raise AssertionError("the sizer was asked")

    monkeypatch.setattr(B._sizer, "choose", never)
    import tinynet as tn

    x, y = tn.datasets.mnist_sample("train")
    with tn.use_backend("numba"):
        net = tn.MLP.from_sizes([784, 10], output_activation="softmax", rescale=(1 / 255, 0))
    spec = net.epoch_spec(tn.CrossEntropy(), tn.SGD(0.1))
    for batch in (1, 8, 64):
        B.train_batches(spec, x, tn.one_hot(y, 10), np.arange(2048), batch)
    monkeypatch.setenv("TINYNET_ADAPTIVE_THREADS", "yes")
    with pytest.raises(BackendError, match="TINYNET_ADAPTIVE_THREADS must be 0 or 1"):
        NumbaBackend()


@pytest.mark.slow
def test_a_compiling_first_call_says_so_once_and_a_slow_cached_one_says_nothing(tmp_path):
    """A fresh process with an empty kernel cache prints one line while it compiles (its
    logging on, as the CLI has it: still one line); the next process, with the kernels cached,
    prints nothing, even though its first call is slow (as on a busy machine: here a sleep of
    1.5 s inside it)."""
    import subprocess
    import sys

    script = (
        "import logging, time, tinynet as tn\n"
        "logging.basicConfig(level=logging.INFO)\n"  # tinynet's notes shown, as the CLI does
        "from tinynet.kernels.numba.backend import NumbaBackend\n"
        "real = NumbaBackend._compiled_batches\n"
        "def slow_first(self, *args, slept=[]):\n"
        "    if not slept:\n"
        "        slept.append(time.sleep(1.5))\n"
        "    return real(self, *args)\n"
        "NumbaBackend._compiled_batches = slow_first\n"
        "x, y = tn.datasets.mnist_sample('train')\n"
        "with tn.use_backend('numba'):\n"
        "    net = tn.MLP.from_sizes([784, 32, 10], rescale=(1 / 255, 0), seed=0)\n"
        "for _ in range(2):\n"
        "    net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.1), epochs=1, batch_size=8)\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
        )
        for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-2000:]
    cold, warm = (run.stderr for run in runs)
    assert cold.count("tinynet: compiling") == 1, cold
    assert "tinynet: compiling Numba kernels" in cold and str(tmp_path) in cold
    assert "tinynet: compiling" not in warm, warm


def test_free_cores_mean_the_whole_team_without_probes():
    """/proc/stat shows the cores free: a slow team is noise, or this process's own other
    threads (another BLAS pool still spinning), never a reason to drop to one thread."""
    sizer = TeamSizer(Load(0.0))
    assert _run(sizer, {2: 2.0e6, 1: 1.2e6}.get, 5) == [2] * 5
    assert _run(sizer, {2: 0.5e6, 1: 1.2e6}.get, 10) == [2] * 10


def test_the_numpy_backend_sizes_its_blas_pools_per_stretch_of_steps(monkeypatch):
    """The kernel-by-kernel loop asks the sizer once per stretch of steps, runs under its
    choice (a BLAS limit, lifted afterwards), and reports each stretch's samples."""
    from threadpoolctl import threadpool_info

    import tinynet as tn

    x, y = tn.datasets.mnist_sample("train")
    runs = []
    for forced in (None, 1):
        with tn.use_backend("numpy") as B:
            asked, recorded = [], []
            real_choose, real_record = B._blas.sizer.choose, B._blas.sizer.record

            def choose(key, most, forced=forced, real=real_choose, asked=asked):
                asked.append(most)
                return forced or real(key, most)

            def record(key, size, samples, seconds, real=real_record, recorded=recorded):
                recorded.append((size, samples))
                real(key, size, samples, seconds)

            monkeypatch.setattr(B._blas.sizer, "choose", choose)
            monkeypatch.setattr(B._blas.sizer, "record", record)
            before = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
            net = tn.MLP.from_sizes(
                [784, 64, 10], "relu", "softmax", seed=0, dtype="float64", rescale=(1 / 255, 0)
            )
            net.fit(x, y, tn.CrossEntropy(), tn.SGD(0.05, 0.9), epochs=1, batch_size=64, seed=0)
            after = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
            assert {path: after[path] for path in before} == before
            assert len(asked) == len(recorded) >= 1
            assert sum(samples for _, samples in recorded) == len(x)
            if forced:
                assert {size for size, _ in recorded} == {1}
            runs.append(net.get_weights())
    # OpenBLAS sums in another order on 1 thread: float64 rounding, amplified by one epoch
    for (W0, b0), (W1, b1) in zip(*runs, strict=True):
        np.testing.assert_allclose(W1, W0, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b1, b0, rtol=1e-9, atol=1e-12)


def test_a_bad_adaptive_threads_setting_is_a_clear_error_on_the_cpu_backends(monkeypatch):
    from tinynet.errors import BackendError
    from tinynet.kernels.numpy_backend import NumpyBackend

    monkeypatch.setenv("TINYNET_ADAPTIVE_THREADS", "yes")
    with pytest.raises(BackendError, match="TINYNET_ADAPTIVE_THREADS must be 0 or 1"):
        NumpyBackend()
