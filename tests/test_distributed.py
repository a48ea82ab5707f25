"""Data-parallel training over MPI, with real processes under ``mpiexec -n 2``: the same result
as one process with the global batch, faults that stop the whole job, and ranks that disagree."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinynet as tn
from tinynet import backend as backend_module

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("mpiexec not found (pip install 'tinynet-mlp[mpi]')", allow_module_level=True)

BACKENDS = [name for name in ("numpy", "numba") if backend_module.backend_status()[name] is None]
# "cupy-host": the cupy backend on the host stand-in of tests/host_cuda.py in the mpiexec jobs,
# its CUDA sources built by g++ (its one-process reference: numpy, in float64 as well)
REPO = Path(__file__).parents[1]
HOST_CUPY = {"TINYNET_HOST_CUPY": "1"}
if shutil.which("g++"):
    BACKENDS.append("cupy-host")
HANG_S = 240
OPTIMIZERS = {"momentum": lambda: tn.SGD(0.1, 0.9), "adam": lambda: tn.Adam(0.01),
              "sgd": lambda: tn.SGD(0.2)}  # fmt: skip

# Each rank builds its model from its own seed (rank 0's weights win: the run broadcasts them),
# and trains 3 epochs of global batches of 64. Modes inject faults on rank 1.
JOB = """
import logging, os, signal, sys, numpy as np
if os.environ.get("TINYNET_HOST_CUPY") == "1":  # the cupy backend on the host stand-in
    sys.path.insert(0, os.environ["TINYNET_REPO"])
    from tests.host_cuda import install_host_cupy
    install_host_cupy()
import tinynet as tn
backend, name, out, mode = sys.argv[1:5]
backend = "cupy" if backend == "cupy-host" else backend
logging.basicConfig(level=logging.INFO, format="tinynet: %(message)s")
rank = tn.distributed.MPI().rank if mode == "other-backend" else 0
tn.set_backend("numba" if mode == "other-backend" and rank == 1 else backend)
every = int(mode.removeprefix("local-every-")) if mode.startswith("local-every-") else None
every = 4 if mode == "odd-batch" else every
mpi = tn.distributed.MPI(average_every=every)
rng = np.random.default_rng(0)
X, labels = rng.normal(size=(600, 6)), rng.integers(0, 3, 600)
if mode == "other-data" and mpi.rank == 1:  # one label changed
    labels[123] = (labels[123] + 1) % 3
hidden = 17 if mode == "other-model" and mpi.rank == 1 else 16
dtype = "float32" if mode == "other-dtype" and mpi.rank == 1 else "float64"
net = tn.MLP.from_sizes([6, hidden, 3], "tanh", "softmax", dtype=dtype, seed=1 + mpi.rank)
optimizer = {"momentum": lambda: tn.SGD(0.1, 0.9), "adam": lambda: tn.Adam(0.01),
             "sgd": lambda: tn.SGD(0.2)}[name]()
if mode in ("raise", "kill") and mpi.rank == 1:  # a fault in the 5th step of the first epoch
    calls, gradients = [0], net.gradients
    def faulty(*args):
        calls[0] += 1
        if calls[0] == 5:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected fault")
        return gradients(*args)
    net.gradients = faulty
B, fused = tn.get_backend(), [0]  # count the fused, compiled stretches of epochs
train_batches_distributed = B.train_batches_distributed
def counted(*args):
    fused[0] += 1
    return train_batches_distributed(*args)
B.train_batches_distributed = counted
try:
    epochs, checkpoint, resume = (sys.argv[5:8] + ["3", "", ""][len(sys.argv[5:8]):])
    batch = {"batch-1": 1, "odd-batch": 63, "last-row": 599}.get(mode, 64)
    stop_after_first = mode == "stop" and mpi.rank == 1  # SIGSTOP: alive, but never answers
    on_end = (lambda epoch, record: epoch == 1 and os.kill(os.getpid(), signal.SIGSTOP)
              ) if stop_after_first else None  # fmt: skip
    other = mpi.rank == 1  # settings outside the model that one rank may get wrong
    epochs = int(epochs) + (mode == "other-epochs" and other)
    split = 0.25 if mode == "other-split" and other else 0.0
    schedule = tn.StepLR(1) if mode == "other-schedule" and other else None
    history = net.fit(X, labels, tn.CrossEntropy(), optimizer, epochs=epochs, batch_size=batch,
                      seed=5, distributed=mpi, checkpoint=checkpoint or None,
                      resume=resume or None, validation_split=split, schedule=schedule,
                      on_epoch_end=on_end)
except tn.InvalidInputError as exc:
    print(f"rank {mpi.rank}: {exc}", flush=True)
    sys.exit(3)
if mpi.is_root:
    np.savez(out, *[a for pair in net.get_weights() for a in pair], loss=history["loss"],
             fused=fused[0], collective=str(mpi.device_collective))
# every rank's final weights, to check they agree
flat = np.concatenate([a.ravel() for pair in net.get_weights() for a in pair])
np.save(f"{out}.rank{mpi.rank}.npy", flat)
"""


def _mpiexec(
    tmp_path: Path,
    *args: str,
    ranks: int = 2,
    env: dict | None = None,
    launcher: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """The job under ``mpiexec -n ranks`` (``launcher``: more of mpiexec's flags). A job that
    has not ended after HANG_S hung (a fault that should have stopped it left a rank waiting
    in a collective): the test kills the job's whole process group and fails saying so, with
    what the job printed. Not a measure of speed: HANG_S is many times the slowest job's time
    on a loaded machine."""
    job = tmp_path / "job.py"
    job.write_text(JOB)
    command = [MPIEXEC, *launcher, "-n", str(ranks), sys.executable, str(job), *args]
    environment = {
        **os.environ,
        "TINYNET_ADAPTIVE_THREADS": "0",
        "TINYNET_REPO": str(REPO),  # for a job on the host stand-in
        **(HOST_CUPY if args[0] == "cupy-host" else {}),
        **(env or {}),
    }
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,  # the ranks too, so that a hung job can be killed whole
    ) as job_process:
        try:
            out, err = job_process.communicate(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            os.killpg(job_process.pid, signal.SIGKILL)
            out, err = job_process.communicate()
            pytest.fail(f"the job hung (still running after {HANG_S} s): {command}\n{err[-2000:]}")
    return subprocess.CompletedProcess(command, job_process.returncode, out, err)


def _mpiexec_script(path: Path, code: str, ranks: int) -> subprocess.CompletedProcess:
    """A small job of its own (``code``) under ``mpiexec -n ranks``, hung after HANG_S."""
    path.write_text(code)
    return subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env={**os.environ, "TINYNET_ADAPTIVE_THREADS": "0"},
    )


def _one_process(backend: str, name: str, epochs: int = 3, batch: int = 64, **fit_settings):
    """The reference: one process, the same data, seed and global batch (64)."""
    backend = "numpy" if backend == "cupy-host" else backend
    rng = np.random.default_rng(0)
    X, labels = rng.normal(size=(600, 6)), rng.integers(0, 3, 600)
    with tn.use_backend(backend):
        net = tn.MLP.from_sizes([6, 16, 3], "tanh", "softmax", dtype="float64", seed=1)
        history = net.fit(X, labels, tn.CrossEntropy(), OPTIMIZERS[name](), epochs=epochs,
                          batch_size=batch, seed=5, **fit_settings)  # fmt: skip
    return [a for pair in net.get_weights() for a in pair], history["loss"]


def _assert_equals_one_process(got: Any, backend: str, name: str, batch: int = 64) -> None:
    """The job's saved weights and losses (``got``, rank 0's npz) equal one process's with the
    same global batch, within float64 rounding."""
    weights, losses = _one_process(backend, name, batch=batch)
    for i, want in enumerate(weights):
        np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["loss"], losses, rtol=1e-10)


@pytest.mark.parametrize("name", ["momentum", "adam"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path, backend, name):
    done = _mpiexec(tmp_path, backend, name, str(tmp_path / "out.npz"), "ok")
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    _assert_equals_one_process(got, backend, name)
    # numba: the compiled BLAS epoch with MPI_Allreduce inside, once per stretch of the epoch;
    # cupy: the fused GPU epoch with the allreduce between its steps
    assert (int(got["fused"]) > 0) == (backend != "numpy")


def test_an_exception_on_one_rank_stops_the_job_naming_it(tmp_path):
    done = _mpiexec(tmp_path, "numpy", "momentum", str(tmp_path / "out.npz"), "raise")
    assert done.returncode != 0
    assert "tinynet: error: rank 1 of 2 failed: RuntimeError: injected fault" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.npz").exists()


def test_a_killed_rank_stops_the_job(tmp_path):
    done = _mpiexec(tmp_path, "numpy", "momentum", str(tmp_path / "out.npz"), "kill")
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "signal 9" in said  # the launcher's report of the killed process, by its id
    (pid,) = re.findall(r"PID (\d+) RUNNING", said)
    assert f"rank 1 pid {pid} on " in said  # rank 0 logged which rank that process was
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_checkpoint_that_cannot_be_written_stops_every_rank(tmp_path, backend):
    """Rank 0 alone writes the checkpoint; a directory in its place fails the write after the
    first epoch while rank 1 goes on into the second epoch's allreduce: the job must end with
    one line naming rank 0 and the error, not wait there forever."""
    if backend not in BACKENDS:
        pytest.skip(f"{backend} unusable here")
    (tmp_path / "ckpt").mkdir()
    done = _mpiexec(
        tmp_path, backend, "momentum", str(tmp_path / "out.npz"), "ok", "3", str(tmp_path / "ckpt")
    )
    assert done.returncode != 0
    said = done.stderr
    assert re.search(r"tinynet: error: rank 0 of 2 failed: \w+Error: .*ckpt", said), said
    assert said.count("failed:") == 1, said
    assert "Traceback" not in said
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_stopped_rank_ends_the_job_after_the_timeout(tmp_path, backend):
    """N5: rank 1 stopped by SIGSTOP after the first epoch; rank 0 waits in the second epoch's
    first collective (Python's allreduce on numpy, the compiled epoch's on numba) until
    TINYNET_MPI_TIMEOUT, then ends the job with one line."""
    if backend not in BACKENDS:
        pytest.skip(f"{backend} unusable here")
    out = str(tmp_path / "out.npz")
    done = _mpiexec(
        tmp_path,
        backend,
        "momentum",
        out,
        "stop",
        env={"TINYNET_MPI_TIMEOUT": "3"},
        # only MPI_Abort ends the job, as on a launcher that leaves the others when one exits
        launcher=("-disable-auto-cleanup",),
    )
    assert done.returncode != 0
    said = done.stderr
    assert re.search(
        r"tinynet: error: rank 0 of 2 waited more than 3 s for the other ranks in (the "
        r"gradients' allreduce|a stretch of compiled steps): a rank has stopped or hung",
        said,
    ), said
    assert "Traceback" not in said
    assert not (tmp_path / "out.npz").exists()


def test_a_batch_smaller_than_the_ranks_is_a_clear_error(tmp_path):
    done = _mpiexec(tmp_path, "numpy", "momentum", str(tmp_path / "out.npz"), "batch-1")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "batch_size 1 over 2 ranks: each step needs a row for every rank" in done.stdout


@pytest.mark.parametrize(
    ("mode", "differs"),
    [
        ("other-model", "model"),
        ("other-dtype", "dtype"),
        ("other-backend", "backend"),
        ("other-data", "data"),
        ("other-epochs", "epochs"),  # N3: the job hung
        ("other-split", "validation_split"),  # N3: MPICH crashed
        ("other-schedule", "schedule"),  # N3: different weights per rank, exit 0
    ],
)
def test_ranks_that_disagree_fail_before_training(tmp_path, mode, differs):
    done = _mpiexec(tmp_path, "numpy", "momentum", str(tmp_path / "out.npz"), mode)
    assert done.returncode == 3, done.stderr[-3000:]  # the job's InvalidInputError, not a crash
    # each rank raises it (the launcher may stop one before it prints)
    said = (
        r"rank [01]: the MPI ranks train on different data: rank 1's \(X, T\) differ from "
        r"rank 0's; every rank passes the whole training set"
        if differs == "data"
        else r"rank [01]: the MPI ranks do not train the same model: "
        rf"rank 1 differs from rank 0 in {differs}[ ,]"
    )
    assert re.search(said, done.stdout), done.stdout
    assert not (tmp_path / "out.npz").exists()  # nobody trained


def test_shards_cover_each_batch_once():
    """The contiguous split of a global batch over the ranks, by hand for 3 ranks."""
    shards = []
    for rank in range(3):
        mpi = tn.distributed.MPI.__new__(tn.distributed.MPI)
        mpi.rank, mpi.size = rank, 3
        shards.append(mpi.shard(64, 128))
    assert shards == [(64, 85), (85, 106), (106, 128)]
    mpi.rank = 2
    assert mpi.shard(0, 2) == (1, 2)  # a last batch smaller than the ranks: rank 0 gets none


def test_tinynet_train_under_mpiexec_reports_once(tmp_path, mnist_dir):
    """``mpiexec -n 2 tinynet train``: both ranks train one model; rank 0 alone prints and
    saves it."""
    done = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "tinynet.cli", "train", "--epochs", "1",
         "--hidden", "32", "--batch-size", "128", "--data-dir", str(mnist_dir), "--quiet",
         "--save", str(tmp_path / "model.npz")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ranks: 2" in done.stdout
    (result,) = [line for line in done.stdout.splitlines() if line.startswith("test accuracy")]
    assert float(re.search(r"([0-9.]+)%", result).group(1)) > 90
    assert done.stdout.count("model saved") == 1 and (tmp_path / "model.npz").is_file()


@pytest.mark.parametrize("name", ["sgd", "momentum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_local_sgd_averaging_every_step_is_synchronous_sgd(tmp_path, backend, name):
    """Local SGD with K = 1 and equal shards: SGD (with momentum too) is linear in the
    gradient, so averaging the weights and velocities after each rank's own step is the step of
    the averaged gradient, which is one process with the global batch."""
    done = _mpiexec(tmp_path, backend, name, str(tmp_path / "out.npz"), "local-every-1")
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    _assert_equals_one_process(got, backend, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_sgd_every_4_steps_trains_and_ends_with_equal_ranks(tmp_path, backend):
    done = _mpiexec(tmp_path, backend, "adam", str(tmp_path / "out.npz"), "local-every-4")
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert got["loss"][-1] < got["loss"][0]
    ranks = [np.load(tmp_path / f"out.npz.rank{r}.npy") for r in range(2)]
    np.testing.assert_array_equal(ranks[0], ranks[1])  # the last average made them one
    weights, _ = _one_process(backend, "adam")
    assert not np.allclose(got["arr_0"], weights[0], rtol=1e-6)  # not synchronous Adam


def test_average_every_outside_mpiexec_is_a_clear_error():
    done = subprocess.run(
        [sys.executable, "-m", "tinynet.cli", "train", "--sample", "--average-every", "4"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--average-every is for runs under mpiexec" in done.stderr
    assert "Traceback" not in done.stderr


# cupy-host's one-process reference is numpy: resuming its checkpoint there says so
@pytest.mark.filterwarnings("ignore:.*written on backend 'cupy':RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_resumes_on_another_number_of_ranks(tmp_path, backend):
    """2 epochs on 2 ranks (rank 0 writes the checkpoint), 2 more in one process; and 2 in one
    process, 2 more on 2 ranks: both equal 4 epochs in one process."""
    straight, _ = _one_process(backend, "adam", epochs=4)
    ckpt = tmp_path / "two.ckpt"
    done = _mpiexec(tmp_path, backend, "adam", str(tmp_path / "a.npz"), "ok", "2", str(ckpt))
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_here, _ = _one_process(backend, "adam", epochs=4, resume=ckpt)
    _one_process(backend, "adam", epochs=2, checkpoint=tmp_path / "one.ckpt")
    done = _mpiexec(tmp_path, backend, "adam", str(tmp_path / "b.npz"), "ok", "4", "",
                       str(tmp_path / "one.ckpt"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_on_two = np.load(tmp_path / "b.npz")
    for i, want in enumerate(straight):
        np.testing.assert_allclose(resumed_here[i], want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(resumed_on_two[f"arr_{i}"], want, rtol=1e-10, atol=1e-12)


GPU_WHY_NOT = backend_module.backend_status()["cupy"]
if os.environ.get("TINYNET_HOST_CUPY") == "1":  # this process on the stand-in: not a GPU
    GPU_WHY_NOT = "the host stand-in for CuPy (TINYNET_HOST_CUPY=1)"


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("cupy", marks=pytest.mark.skipif(
            GPU_WHY_NOT is not None, reason=f"no usable CuPy GPU: {GPU_WHY_NOT}")),
        pytest.param("cupy-host", marks=pytest.mark.skipif(
            "cupy-host" not in BACKENDS, reason="the host stand-in needs g++")),
    ],
)  # fmt: skip
@pytest.mark.parametrize(("ranks", "mode"), [(1, "ok"), (2, "ok"), (2, "last-row")])
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_ranks_of_the_fused_gpu_epoch_equal_one_process(tmp_path, name, ranks, mode, backend):
    """The cupy backend's fused epoch under mpiexec, CUDA graphs on. On GPUs: one rank sums
    with NCCL inside the captured graphs; two ranks do too where each has a GPU of its own,
    and sum through host memory by MPI, without graphs, where they share one. On the host
    stand-in (no NCCL; it refuses no capture, so graphs off shows as no capture at all) the
    plan's shards and its MPI sum run for real. Equal to one process with the global batch: of
    64, or of 599 ("last-row": shards of 299 and 300 rows, then a last batch of one row, which
    leaves rank 0 an empty shard)."""
    out = tmp_path / "out.npz"
    done = _mpiexec(tmp_path, backend, name, str(out), mode, ranks=ranks,
                       env={"TINYNET_CUDA_GRAPHS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "could not capture" not in done.stderr
    got = np.load(out)
    assert int(got["fused"]) > 0  # the fused epoch, not the kernel-by-kernel loop
    if backend == "cupy":
        import cupy

        own_gpus = ranks <= cupy.cuda.runtime.getDeviceCount()
        assert str(got["collective"]) == ("nccl" if own_gpus else "mpi")
    else:
        assert str(got["collective"]) == "mpi"
    _assert_equals_one_process(got, backend, name, batch=599 if mode == "last-row" else 64)


def test_nccl_is_chosen_only_where_every_rank_has_a_gpu_and_nccl():
    """nccl_unusable: None for distinct GPUs (the same bus id on two hosts is two GPUs); the
    ranks sharing a GPU, or lacking NCCL, named otherwise."""
    from tinynet.distributed import nccl_unusable

    apart = [("a", "0000:01:00.0"), ("a", "0000:02:00.0"), ("b", "0000:01:00.0")]
    assert nccl_unusable(apart, [True] * 3) is None
    shared = [*apart, ("a", "0000:02:00.0")]
    assert nccl_unusable(shared, [True] * 4) == "ranks 1 and 3 share the GPU at 0000:02:00.0 on a"
    assert nccl_unusable(apart, [True, False, True]).startswith(
        "CuPy finds no NCCL library on rank(s) [1]; "
    )


def test_local_sgd_needs_a_batch_the_ranks_divide(tmp_path):
    done = _mpiexec(tmp_path, "numpy", "momentum", str(tmp_path / "out.npz"), "odd-batch")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "local SGD (average_every) needs a batch_size the 2 ranks divide evenly, got 63" in (
        done.stdout
    )


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "4"])
@pytest.mark.parametrize("setting", ["average_every", "threads"])
def test_mpi_settings_must_be_positive_integers(setting, value):
    with pytest.raises(tn.InvalidInputError, match=f"{setting} must be a positive integer"):
        tn.distributed.MPI(**{setting: value})


MPI_ERROR_JOB = """
from mpi4py import MPI as mpi
import tinynet as tn
tn.distributed.MPI().abort(mpi.Exception(mpi.ERR_OTHER))
"""


def test_an_mpi_error_from_a_lost_rank_is_named_as_such(tmp_path):
    """N4: MPICH can report a rank killed outright as an error of this rank's collective, with
    its error stack: the line says a rank was lost, with the stack's first line only."""
    done = _mpiexec_script(tmp_path / "lost.py", MPI_ERROR_JOB, ranks=1)
    assert done.returncode != 0
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("tinynet:")]
    assert line.startswith("tinynet: error: rank 0 of 1 lost contact with another rank")
    assert "MPI said: " in line
