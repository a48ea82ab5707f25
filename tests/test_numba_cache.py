"""Numba's compiled kernels: cached under a hash of their sources, never in the package, and
every cache fault (damaged files, read-only or missing folders, a Numba without the internals
the cache uses) ends in a trained model and at most one warning, in a real child process."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tinynet as tn
from tests.faults import clean_env, make_read_only, make_writable, python
from tinynet import backend as backend_module

WHY_NOT = backend_module.backend_status()["numba"]
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"numba unavailable: {WHY_NOT}")

KERNELS = Path(tn.__file__).resolve().parents[1] / "kernels"
SOURCES = KERNELS / "numba"  # every source file of the sub-package keys the cache
# Trains the smallest net the per-sample epoch runs (one thread), prints its weights.
TRAIN = """
import json, logging, numpy as np, tinynet as tn
logging.basicConfig(level=logging.INFO)
tn.set_backend("numba")
net = tn.MLP.from_sizes([3, 2], "sigmoid", "sigmoid", seed=0)
net.fit(np.eye(3), np.eye(3)[:, :2], tn.SquaredError(), tn.SGD(0.5), epochs=2, batch_size=1,
        shuffle=False)
print("W=" + json.dumps(net.get_weights()[0][0].ravel().tolist()))
"""
DAMAGED = "damaged Numba cache entry"
COMPILING = "compiling Numba kernels"
IN_MEMORY = "kernels compile in memory"


def _weights(stdout: str) -> np.ndarray:
    line = next(line for line in stdout.splitlines() if line.startswith("W="))
    return np.array(json.loads(line[2:]))


@pytest.fixture(scope="module")
def expected_weights() -> np.ndarray:
    """The same training on the NumPy reference, in this process."""
    with tn.use_backend("numpy"):
        net = tn.MLP.from_sizes([3, 2], "sigmoid", "sigmoid", seed=0)
        net.fit(
            np.eye(3),
            np.eye(3)[:, :2],
            tn.SquaredError(),
            tn.SGD(0.5),
            epochs=2,
            batch_size=1,
            shuffle=False,
        )
        return net.get_weights()[0][0].ravel()


def _version_folder(root: Path) -> Path:
    digest = hashlib.sha256()
    for path in sorted(SOURCES.glob("*.py")):
        digest.update(path.read_bytes())
    return root / "tinynet" / "numba" / digest.hexdigest()[:16]


def _package_cache_files() -> set[Path]:
    return {p for p in KERNELS.rglob("*") if p.suffix in (".nbi", ".nbc")}


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    """An XDG_CACHE_HOME holding the kernels TRAIN needs, compiled once for this module."""
    root = tmp_path_factory.mktemp("warm")
    done = python(TRAIN, clean_env(XDG_CACHE_HOME=str(root)))
    assert done.returncode == 0, done.stderr
    assert COMPILING in done.stderr  # said while the cache is empty
    return root


def _copy(warm: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(warm, root)
    return root


def _checked_run(root: Path, expected: np.ndarray, **kwargs) -> str:
    done = python(TRAIN, clean_env(XDG_CACHE_HOME=str(root)), **kwargs)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    np.testing.assert_allclose(_weights(done.stdout), expected, rtol=1e-5, atol=1e-6)
    return done.stderr


def test_kernel_cache_lives_under_the_hash_of_its_sources(warm_cache, tmp_path, expected_weights):
    folder = _version_folder(warm_cache)
    assert {".nbi", ".nbc"} <= {p.suffix for p in folder.iterdir()}
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    stderr = _checked_run(_copy(warm_cache, tmp_path), expected_weights)
    assert COMPILING not in stderr and "Warning" not in stderr  # all loaded from the cache


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 3]
    elif how == "zeroed":
        data = bytearray(len(data))
    elif how == "random":
        data = bytearray(np.random.default_rng(0).integers(0, 256, len(data), np.uint8).tobytes())
    elif how == "bit-flip":
        data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".nbi", ".nbc"])
@pytest.mark.parametrize("how", ["truncated", "zeroed", "random", "bit-flip"])
def test_a_damaged_cache_file_is_discarded_and_recompiled(
    warm_cache, tmp_path, expected_weights, how, suffix
):
    root = _copy(warm_cache, tmp_path)
    folder = _version_folder(root)
    (target,) = folder.glob(f"per_sample.epoch_per_sample-*{suffix}")
    _damage(target, how)

    stderr = _checked_run(root, expected_weights)
    assert stderr.count(DAMAGED) == 1, stderr
    assert "epoch_per_sample" in stderr
    # the entry was rewritten: the next run loads everything without a word
    stderr = _checked_run(root, expected_weights)
    assert DAMAGED not in stderr and COMPILING not in stderr, stderr


def test_a_read_only_warm_cache_is_used_as_it_is(warm_cache, tmp_path, expected_weights):
    root = _copy(warm_cache, tmp_path)
    make_read_only(root)
    try:
        stderr = _checked_run(root, expected_weights, read_only_respected=True)
    finally:
        make_writable(root)
    assert COMPILING not in stderr and "Warning" not in stderr, stderr


def test_with_nowhere_to_write_kernels_compile_in_memory_with_one_warning(
    tmp_path, expected_weights
):
    root = tmp_path / "read-only"
    root.mkdir()
    make_read_only(root)
    before = _package_cache_files()
    try:
        stderr = _checked_run(root, expected_weights, read_only_respected=True)
    finally:
        make_writable(root)
    assert stderr.count(IN_MEMORY) == 1, stderr
    assert list(root.iterdir()) == []
    assert _package_cache_files() == before  # never into the installed package


def test_a_home_that_does_not_exist_is_not_created(tmp_path, expected_weights):
    home = tmp_path / "no-such-home"
    env = clean_env(HOME=str(home))
    done = python(TRAIN, env)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(_weights(done.stdout), expected_weights, rtol=1e-5, atol=1e-6)
    assert done.stderr.count(IN_MEMORY) == 1, done.stderr
    assert not home.exists()


def test_a_numba_without_the_caching_internals_falls_back_loudly(tmp_path, expected_weights):
    # What a Numba release that renamed its private caching classes looks like to tinynet.
    code = "import numba.core.caching as c; del c.IndexDataCacheFile\n" + TRAIN
    before = _package_cache_files()
    done = python(code, clean_env(XDG_CACHE_HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(_weights(done.stdout), expected_weights, rtol=1e-5, atol=1e-6)
    assert done.stderr.count("lacks the internals") == 1, done.stderr
    assert not (tmp_path / "tinynet").exists()
    assert _package_cache_files() == before


def test_info_says_where_the_kernel_cache_is():
    info = tn.backend._resolve("numba").info()
    assert info["kernel_cache"].endswith(_version_folder(Path("/")).name)


def test_the_compile_notice_comes_whenever_kernels_compile(warm_cache, tmp_path, expected_weights):
    # Not only when the cache folder is new: here it exists and holds every other kernel.
    root = _copy(warm_cache, tmp_path)
    for path in _version_folder(root).glob("per_sample.epoch_per_sample-*"):
        path.unlink()
    stderr = _checked_run(root, expected_weights)
    assert stderr.count(COMPILING) == 1, stderr
    assert "Warning" not in stderr


def test_a_numba_that_stops_consulting_the_cache_is_reported(tmp_path, expected_weights):
    # What a Numba release that keeps the classes but compiles without asking
    # Dispatcher._cache looks like: every compile sees Numba's own empty cache.
    code = (
        "from numba.core import caching, dispatcher\n"
        "real = dispatcher.Dispatcher.compile\n"
        "def compile_without_cache(self, sig):\n"
        "    self._cache = caching.NullCache()\n"
        "    return real(self, sig)\n"
        "dispatcher.Dispatcher.compile = compile_without_cache\n" + TRAIN
    )
    done = python(code, clean_env(XDG_CACHE_HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(_weights(done.stdout), expected_weights, rtol=1e-5, atol=1e-6)
    assert done.stderr.count("did not consult tinynet's kernel cache") == 1, done.stderr


def test_a_cache_folder_under_a_file_says_so_once(tmp_path, expected_weights):
    """N19: NUMBA_CACHE_DIR below a file: one warning naming the file, kernels in memory, and
    no talk of damaged entries (a 'damaged entry ... read-only' warning came first before)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = python(TRAIN, clean_env(NUMBA_CACHE_DIR=str(blocker / "sub")))
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(_weights(done.stdout), expected_weights, rtol=1e-5, atol=1e-6)
    (warning,) = [line for line in done.stderr.splitlines() if "Warning:" in line]
    assert f"{blocker} is a file" in warning and "compile in memory" in warning
    assert DAMAGED not in done.stderr
    assert "cache: in memory only" in done.stderr  # the compile notice says where kernels go


def test_numba_with_its_compiler_off_is_refused_saying_why():
    """N19: NUMBA_DISABLE_JIT=1 gave "'function' object has no attribute '_cache'"."""
    code = (
        "import tinynet as tn\n"
        "try:\n"
        "    tn.set_backend('numba')\n"
        "except tn.BackendError as exc:\n"
        "    print(exc)\n"
        "print('auto:', tn.backend._resolve('auto').name)\n"
    )
    done = python(code, clean_env(NUMBA_DISABLE_JIT="1"))
    assert done.returncode == 0, done.stderr
    assert "NUMBA_DISABLE_JIT is set, which turns Numba's compiler off" in done.stdout
    assert "auto: numpy" in done.stdout
    assert "lacks the internals" not in done.stderr and "_cache" not in done.stdout
